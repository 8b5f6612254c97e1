"""Leaderboard submission files in the official formats.

GLUE (and the demo tasks): `<Task>.tsv` with a header `index\tprediction` (MNLI: MNLI-m.tsv and
MNLI-mm.tsv). SuperGLUE: `<Task>.jsonl`, one `{"idx": ..., "label": ...}` per line; MultiRC
nested per passage (`{"idx", "passage": {"questions": [{"idx", "answers": [{"idx", "label"}]}]}}`),
ReCoRD one `{"idx": query, "label": entity}` per query. RACE: `RACE-H.jsonl` / `RACE-M.jsonl`,
one `{"id": file, "answers": ["A", ...]}` per article.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np

from bort_core import io as bio
from bort_core.data.tasks import Example, Task
from bort_core.metrics import choose_record_answers


def submission_path(task: Task, out_dir: str, split: str = "test") -> str:
    stem = task.submission
    if task.name == "mnli":
        stem += "-mm" if split.endswith("mismatched") else "-m"
    ext = ".tsv" if task.benchmark in ("GLUE", "demo") else ".jsonl"
    return os.path.join(out_dir, stem + ext)


def write_submission(task: Task, examples: Sequence[Example], predictions, out_dir: str,
                     split: str = "test", scores: Optional[Sequence[float]] = None) -> str:
    """Write the predictions for `examples` (one per example: class index, or score for
    regression; ReCoRD takes per-candidate `scores`) and return the file's path."""
    if len(predictions) != len(examples):
        raise ValueError("%d predictions for %d examples" % (len(predictions), len(examples)))
    os.makedirs(out_dir, exist_ok=True)
    path = submission_path(task, out_dir, split)
    values = np.asarray(predictions).tolist()
    if task.benchmark in ("GLUE", "demo"):
        lines = ["index\tprediction"] + ["%s\t%s" % (e.idx, _label(task, v))
                                         for e, v in zip(examples, values)]
    elif task.name == "multirc":
        lines = [json.dumps(p) for p in _multirc_nested(examples, values)]
    elif task.name == "record":
        chosen = choose_record_answers(examples, scores if scores is not None else values)
        lines = [json.dumps({"idx": q, "label": ent}) for q, ent in chosen.items()]
    elif task.benchmark == "RACE":
        articles = OrderedDict()
        for e, v in zip(examples, values):
            articles.setdefault(e.group, []).append("ABCD"[int(v)])
        lines = [json.dumps({"id": k, "answers": a}) for k, a in articles.items()]
    else:
        lines = [json.dumps({"idx": e.idx, "label": int(v) if task.name == "copa"
                             else _label(task, v)}) for e, v in zip(examples, values)]
    with bio.atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _label(task: Task, value) -> str:
    if task.class_labels is None:
        return "%.3f" % float(value)
    return task.class_labels[int(value)]


def _multirc_nested(examples, values):
    passages: "OrderedDict" = OrderedDict()
    for e, v in zip(examples, values):
        p, q, a = e.idx
        questions = passages.setdefault(p, OrderedDict())
        questions.setdefault(q, []).append({"idx": a, "label": int(v)})
    return [{"idx": p, "passage": {"questions": [{"idx": q, "answers": answers}
                                                 for q, answers in qs.items()]}}
            for p, qs in passages.items()]
