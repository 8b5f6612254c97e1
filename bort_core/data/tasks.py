"""Fine-tuning tasks: readers for the official file layouts, and features as the 2020 release made them.

Every task the release fine-tuned on (plus GLUE AX, which it lacked, and the embedded demo tasks)
is one `Task` entry in `TASKS`. Under `--data-dir` each task reads its official layout:

    GLUE       CoLA/ SST-2/ MRPC/ STS-B/ QQP/ MNLI/ QNLI/ RTE/ WNLI/   {train,dev,test}.tsv
               (MNLI: train, dev_matched, dev_mismatched, test_matched, test_mismatched;
               AX: diagnostic/diagnostic.tsv)
    SuperGLUE  BoolQ/ CB/ COPA/ MultiRC/ ReCoRD/ RTE/ WiC/ WSC/   {train,val,test}.jsonl
               AX-b/AX-b.jsonl  AX-g/AX-g.jsonl
    RACE       RACE/{train,dev,test}/{high,middle}/*.txt
    demo       demo-pair/ demo-single/ demo-regression/   (default: the embedded copies)

Task files are UTF-8 text; a GLUE .tsv starts with its official header line (CoLA train/dev
have none), checked against the task's `Columns`. A reader yields `Example`s: the texts fed to
the model, the label normalised to a class-label string (bool -> "true"/"false", int -> "0"/"1",
as the release did), the label as written in the file, and the ids a leaderboard file needs.
`featurize` turns them into `<s> A </s> [B </s>]` ids with the release's equal truncation.
Deviations from the release (each a release bug) are marked FIX.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from bort_core.data.demo import TASKS_DIR
from bort_core.data.shards import object_array
from bort_core.data.textfiles import JsonRow, jsonl_rows, read_lines
from bort_core.tokenizer import load_tokenizer

GLUE_URL = "https://gluebenchmark.com/tasks"
SUPERGLUE_URL = "https://super.gluebenchmark.com/tasks"
RACE_URL = "https://www.cs.cmu.edu/~glai1/data/race/"
DEMO_URL = "the embedded demo tasks (regenerate with scripts/make_demo_data.py)"


@dataclasses.dataclass(frozen=True)
class Example:
    texts: Tuple[str, ...]
    label: Optional[str] = None      # normalised class label / score string; None if unlabelled
    raw_label: Optional[str] = None  # the label as it appears in the file (for `bort data check`)
    idx: object = None               # the id a submission file uses for this row
    group: object = None             # MultiRC question, ReCoRD query, AX-g pair, RACE file
    candidate: Optional[str] = None  # ReCoRD: the entity filled into @placeholder


@dataclasses.dataclass(frozen=True)
class Columns:
    """A GLUE .tsv layout: the official column names (its header line, unless `header` is
    False), the text columns, the label column and the row id column read from it."""
    names: Tuple[str, ...]
    texts: Tuple[str, ...]
    label: Optional[str] = None
    idx: Optional[str] = None
    header: bool = True

    def positions(self) -> Dict[str, int]:
        """Column index of every column read."""
        read = self.texts + tuple(c for c in (self.label, self.idx) if c is not None)
        return {name: self.names.index(name) for name in read}


@dataclasses.dataclass(frozen=True)
class Task:
    name: str                                   # CLI name, e.g. "mnli"
    benchmark: str                              # GLUE, SuperGLUE, RACE or demo
    subdir: str                                 # directory under --data-dir
    files: Dict[str, str]                       # split -> file (or directory) under subdir
    class_labels: Optional[Tuple[str, ...]]     # None: regression
    is_pair: bool
    metrics: Tuple[str, ...]                    # bort_core.metrics names; the first selects
    read: Callable[["Task", str, str], "SplitData"]
    submission: str                             # leaderboard file stem, e.g. "MNLI-m"
    url: str
    columns: Dict[str, Columns] = dataclasses.field(default_factory=dict)  # TSV layouts
    aliases: Tuple[str, ...] = ()
    train_task: Optional[str] = None            # diagnostics: the task whose model predicts
                                                # them (class_labels in that task's order)

    @property
    def splits(self) -> Tuple[str, ...]:
        return tuple(self.files)

    def path(self, data_dir: str, split: str) -> str:
        if split not in self.files:
            raise ValueError("task %s has no split %r; splits: %s"
                             % (self.name, split, ", ".join(self.files)))
        return os.path.join(data_dir, self.subdir, self.files[split])


@dataclasses.dataclass
class SplitData:
    examples: List[Example]
    path: str
    skipped: int = 0     # rows dropped where the official data is known to have broken rows

    def label_counts(self) -> Dict[str, int]:
        return dict(sorted(Counter(e.raw_label for e in self.examples
                                   if e.raw_label is not None).items()))


# ------------------------------------------------------------------------------------ GLUE (TSV)

def _check_header(path: str, fields: List[str], layout: Columns, where: str) -> None:
    """The first line must name the columns read at their official positions."""
    for name, col in layout.positions().items():
        found = fields[col].strip() if col < len(fields) else None
        if found != name:
            raise ValueError("%s:1: missing or wrong header: %s files start with the line %r; "
                             "column %d here is %s, not %r"
                             % (path, where, "\t".join(layout.names), col + 1,
                                "missing" if found is None else repr(found[:40]), name))


def read_tsv(task: Task, split: str, path: str) -> SplitData:
    """Rows of a GLUE-layout .tsv (tab-split, no quoting, blank lines skipped); columns per split
    from `task.columns`, the header line checked against them."""
    layout = task.columns[split]
    col = layout.positions()
    examples, skipped = [], 0
    needed = max(col.values()) + 1
    for lineno, line in read_lines(path):
        fields = line.rstrip("\r\n").split("\t")
        if lineno == 1 and layout.header:
            _check_header(path, fields, layout, "%s %s" % (task.name, split))
            continue
        if not line.strip():
            continue
        if len(fields) < needed:
            if task.name == "qqp":          # QQP ships rows with missing fields: skip, count
                skipped += 1
                continue
            raise ValueError("%s:%d: expected at least %d tab-separated fields, got %d"
                             % (path, lineno, needed, len(fields)))
        raw = fields[col[layout.label]].strip() if layout.label else None
        examples.append(Example(
            texts=tuple(fields[col[c]] for c in layout.texts), raw_label=raw,
            label=_check_label(task, raw, path, lineno) if raw is not None else None,
            idx=fields[col[layout.idx]].strip() if layout.idx else len(examples)))
    if skipped:
        warnings.warn("%s: skipped %d rows with missing fields" % (path, skipped), stacklevel=2)
    return SplitData(examples, path, skipped)


def _check_label(task: Task, label: str, path: str, lineno: int) -> str:
    if task.class_labels is None:
        try:
            score = float(label)
        except ValueError:
            raise ValueError("%s:%d: score %r is not a number" % (path, lineno, label)) from None
        if not math.isfinite(score):
            raise ValueError("%s:%d: score %r is not a finite number" % (path, lineno, label))
    elif label not in task.class_labels:
        raise ValueError("%s:%d: label %r is not one of %s"
                         % (path, lineno, label, ", ".join(task.class_labels)))
    return label


# ------------------------------------------------------------------------------ SuperGLUE (JSONL)

def _norm_label(value) -> str:
    """The release's label normalisation: bool -> "true"/"false", int -> "0"/"1"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return "0" if value == 0 else "1"
    return str(value)


def _raw(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


_CB_FILLERS = ("Uh,", "uh,", "Um,", "um,", "you know", "I mean,")


def _cb_text(text: str) -> str:
    """The release's CB clean-up: long dialogues keep their last four '.'-pieces (joined by
    spaces, first character dropped); fillers removed (FIX D3: the release's removal was a no-op)."""
    if len(text.split(".")) > 3:
        text = " ".join(text.split(".")[-4:])[1:]
    for filler in _CB_FILLERS:
        text = text.replace(filler, "")
    return text


def _multirc_passage(text: str) -> str:
    """Passage text without the `<b>Sent N: </b>` / `<br>` markup, sentences joined by spaces
    (FIX D2: the release passed the list of raw pieces as the text)."""
    text = text.replace("<br>", " ").replace("</br>", " ").replace("_", "").replace("\xad", "")
    pieces = re.split(r"<b>\s*Sent\s*\d+\s*:\s*</b>", text)
    return " ".join(" ".join(p.split()) for p in pieces if p.strip())


def read_jsonl(task: Task, split: str, path: str) -> SplitData:
    """One SuperGLUE .jsonl split, unrolled into pair examples as the release did (FIX D1: the
    release crashed loading every SuperGLUE task)."""
    examples: List[Example] = []
    for row in jsonl_rows(path):
        try:
            examples.extend(_jsonl_examples(task, split, row, len(examples)))
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError("%s: malformed %s row: %r" % (row.where, task.name, err)) from None
    return SplitData(examples, path)


_JSONL_FIELDS = {"boolq": ("passage", "question"), "wic": ("sentence1", "sentence2"),
                 "superglue-rte": ("premise", "hypothesis"), "ax-b": ("sentence1", "sentence2"),
                 "ax-g": ("premise", "hypothesis")}


def _jsonl_examples(task: Task, split: str, row: JsonRow, count: int) -> List[Example]:
    get = row.need
    raw = row.get("label")
    if task.name == "multirc":
        return list(_multirc(row, split))
    if task.name == "record":
        return list(_record(row, split))
    if task.name == "copa":
        sep = " because " if get("question") == "cause" else " so "
        texts = (get("premise") + sep + get("choice1"), get("premise") + sep + get("choice2"))
    elif task.name == "wsc":
        target = get("target")
        texts = (get("text"), target["span2_text"] + " means " + target["span1_text"])
    elif task.name == "cb":
        texts = (_cb_text(get("premise")), _cb_text(get("hypothesis")))
    else:
        texts = tuple(get(k) for k in _JSONL_FIELDS[task.name])
    label = None
    if raw is not None:
        label = _norm_label(raw)
        if label not in task.class_labels:
            raise ValueError("%s: label %r is not one of %s"
                             % (row.where, raw, ", ".join(task.class_labels)))
    return [Example(texts, label, None if raw is None else _raw(raw),
                    idx=row.get("idx", count), group=row.get("pair_id"))]


def _multirc(row, split):
    """One example per answer option: (passage, question + " " + answer), label 0/1."""
    passage = row.get("passage") or row.need("paragraph")   # SuperGLUE names it "passage"
    text = _multirc_passage(passage["text"])
    for question in passage["questions"]:
        for answer in question["answers"]:
            raw = answer.get("label", answer.get("isAnswer"))
            yield Example((text, question["question"] + " " + answer["text"]),
                          None if raw is None else ("1" if raw else "0"),
                          None if raw is None else _raw(raw),
                          idx=(row.get("idx"), question.get("idx"), answer.get("idx")),
                          group=(row.get("idx"), question.get("idx")))


def _record(row, split):
    """One example per (query, candidate entity): @placeholder filled with the entity, label 1
    when it is an answer. Training data is balanced as the release did; dev and test keep every
    candidate so a query's best entity can be chosen (FIX D4)."""
    passage = row.need("passage")
    text = passage["text"]
    entities = sorted({text[e["start"]:e["end"] + 1] for e in passage["entities"]})
    context = text.replace("\n", " ")
    for qa in row.need("qas"):
        answers = {a["text"] for a in qa.get("answers", [])}
        rows = [Example((context, qa["query"].replace("@placeholder", ent)),
                        None if not answers else ("1" if ent in answers else "0"),
                        None if not answers else ("1" if ent in answers else "0"),
                        idx=qa.get("idx"), group=qa.get("idx"), candidate=ent)
                for ent in entities]
        if split == "train" and answers:
            pos = [r for r in rows if r.label == "1"]
            neg = [r for r in rows if r.label == "0"]
            if len(pos) > len(neg):
                rows = pos + neg
            else:
                rows = [r for pair in zip(pos, neg) for r in pair]
        yield from rows


# ---------------------------------------------------------------------------------------- RACE

def read_race(task: Task, split: str, path: str) -> SplitData:
    """Every *.txt of RACE/<split>/<high|middle>, sorted by name; one 4-way example per question:
    (article + " " + question, the options joined by " </sep> "), label "0".."3"."""
    examples = []
    for name in sorted(n for n in os.listdir(path) if n.endswith(".txt")):
        file_path = os.path.join(path, name)
        for row in jsonl_rows(file_path):
            get = row.need
            answers = row.get("answers")
            for q, (question, options) in enumerate(zip(get("questions"), get("options"))):
                raw = answers[q] if answers else None
                if raw is not None and raw not in ("A", "B", "C", "D"):
                    raise ValueError("%s: answer %r is not one of A, B, C, D"
                                     % (row.where, raw))
                examples.append(Example(
                    (get("article") + " " + question, " </sep> ".join(options)),
                    None if raw is None else str("ABCD".index(raw)), raw,
                    idx=(row.get("id", name), q), group=row.get("id", name)))
    return SplitData(examples, path)


# ------------------------------------------------------------------------------------ registry

def _glue(name, subdir, labels, metrics, cols, submission, **kw):
    files = {s: s + ".tsv" for s in cols}
    return Task(name, "GLUE", subdir, files, labels, len(cols["train"].texts) == 2, metrics,
                read_tsv, submission, GLUE_URL, cols, **kw)


def _cols(names, texts, label, test=None, idx="index", header=True):
    """Layouts of train and dev (header `names`, reading `texts` and `label`) and test (header
    `test`, default `names` without the label, reading `texts` and the row id `idx`)."""
    labelled = Columns(names, texts, label, header=header)
    test = Columns(test or tuple(n for n in names if n != label), texts, idx=idx)
    return {"train": labelled, "dev": labelled, "test": test}


def _sg(name, subdir, labels, metrics, submission, splits=("train", "val", "test"), **kw):
    files = {("dev" if s == "val" else s): s + ".jsonl" for s in splits}
    return Task(name, "SuperGLUE", subdir, files, labels, True, metrics, read_jsonl,
                submission, SUPERGLUE_URL, **kw)


def _demo(name, is_pair, labels, metrics, cols):
    return Task(name, "demo", name, {s: s + ".tsv" for s in cols}, labels, is_pair, metrics,
                read_tsv, name, DEMO_URL, cols)


_BINARY, _NLI2 = ("0", "1"), ("not_entailment", "entailment")
_NLI3 = ("neutral", "entailment", "contradiction")     # the release's MNLI/CB order
_BOOL = ("false", "true")

# the official header lines (column names) of the GLUE files
_PAIR, _PAIR_TEXTS = ("index", "sentence1", "sentence2", "label"), ("sentence1", "sentence2")
_SINGLE_TEST = ("index", "sentence")
_STSB = ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
         "sentence2", "score")
_MRPC = ("#1 ID", "#2 ID", "#1 String", "#2 String")
_QQP = ("id", "qid1", "qid2", "question1", "question2", "is_duplicate")
_MNLI = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
         "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1", "sentence2")
_MNLI_DEV = Columns(_MNLI + ("label1", "label2", "label3", "label4", "label5", "gold_label"),
                    _PAIR_TEXTS, "gold_label")
_MNLI_COLS = {"train": Columns(_MNLI + ("label1", "gold_label"), _PAIR_TEXTS, "gold_label"),
              "dev_matched": _MNLI_DEV, "dev_mismatched": _MNLI_DEV,
              "test_matched": Columns(_MNLI, _PAIR_TEXTS, idx="index"),
              "test_mismatched": Columns(_MNLI, _PAIR_TEXTS, idx="index")}

TASKS: Dict[str, Task] = {t.name: t for t in (
    _glue("cola", "CoLA", _BINARY, ("mcc",), _cols(("source", "label", "original_label",
          "sentence"), ("sentence",), "label", _SINGLE_TEST, header=False), "CoLA"),
    _glue("sst-2", "SST-2", _BINARY, ("accuracy",), _cols(("sentence", "label"), ("sentence",),
          "label", _SINGLE_TEST), "SST-2", aliases=("sst",)),
    _glue("mrpc", "MRPC", _BINARY, ("f1", "accuracy"), _cols(("Quality",) + _MRPC, (
          "#1 String", "#2 String"), "Quality", ("index",) + _MRPC), "MRPC"),
    _glue("sts-b", "STS-B", None, ("pearson", "spearman"), _cols(_STSB, _PAIR_TEXTS, "score"),
          "STS-B", aliases=("stsb",)),
    _glue("qqp", "QQP", _BINARY, ("f1", "accuracy"), _cols(_QQP, ("question1", "question2"),
          "is_duplicate", ("id", "question1", "question2"), idx="id"), "QQP"),
    _glue("mnli", "MNLI", _NLI3, ("accuracy",), _MNLI_COLS, "MNLI"),
    _glue("qnli", "QNLI", _NLI2, ("accuracy",), _cols(("index", "question", "sentence",
          "label"), ("question", "sentence"), "label"), "QNLI"),
    _glue("rte", "RTE", _NLI2, ("accuracy",), _cols(_PAIR, _PAIR_TEXTS, "label"), "RTE"),
    _glue("wnli", "WNLI", _BINARY, ("accuracy",), _cols(_PAIR, _PAIR_TEXTS, "label"), "WNLI"),
    Task("ax", "GLUE", "diagnostic", {"test": "diagnostic.tsv"}, _NLI3, True, ("mcc",), read_tsv,
         "AX", GLUE_URL, {"test": Columns(_PAIR[:3], _PAIR_TEXTS, idx="index")},
         train_task="mnli"),
    _sg("boolq", "BoolQ", _BOOL, ("accuracy",), "BoolQ"),
    _sg("cb", "CB", _NLI3, ("accuracy", "macro_f1"), "CB"),
    _sg("copa", "COPA", _BINARY, ("accuracy",), "COPA"),
    _sg("multirc", "MultiRC", _BINARY, ("f1", "multirc_em"), "MultiRC"),
    _sg("record", "ReCoRD", _BINARY, ("record_f1", "record_em"), "ReCoRD"),
    _sg("superglue-rte", "RTE", _NLI2, ("accuracy",), "RTE", aliases=("superglue_rte",
        "supergluerte", "rte-superglue")),
    _sg("wic", "WiC", _BOOL, ("accuracy",), "WiC"),
    _sg("wsc", "WSC", _BOOL, ("accuracy",), "WSC"),
    Task("ax-b", "SuperGLUE", "AX-b", {"test": "AX-b.jsonl"}, _NLI2, True, ("mcc",), read_jsonl,
         "AX-b", SUPERGLUE_URL, aliases=("axb",), train_task="superglue-rte"),
    Task("ax-g", "SuperGLUE", "AX-g", {"test": "AX-g.jsonl"}, _NLI2, True,
         ("accuracy", "gender_parity"), read_jsonl, "AX-g", SUPERGLUE_URL, aliases=("axg",),
         train_task="superglue-rte"),
    Task("race-h", "RACE", "RACE", {s: os.path.join(s, "high") for s in ("train", "dev", "test")},
         ("0", "1", "2", "3"), True, ("accuracy",), read_race, "RACE-H", RACE_URL),
    Task("race-m", "RACE", "RACE", {s: os.path.join(s, "middle") for s in ("train", "dev",
         "test")}, ("0", "1", "2", "3"), True, ("accuracy",), read_race, "RACE-M", RACE_URL),
    _demo("demo-pair", True, _BINARY, ("accuracy", "f1"), _cols(_PAIR, _PAIR_TEXTS, "label")),
    _demo("demo-single", False, _BINARY, ("accuracy",), _cols(("sentence", "label"),
          ("sentence",), "label", _SINGLE_TEST)),
    _demo("demo-regression", True, None, ("pearson", "spearman"), _cols(_STSB, _PAIR_TEXTS,
          "score")),
)}


def get_task(name: str) -> Task:
    """A task by CLI name or alias, case-insensitive (`MNLI`, `SST`, `AXb`, `RACE-H`, ...)."""
    key = name.lower().replace("_", "-")
    for task in TASKS.values():
        if key == task.name or key in task.aliases or key == task.name.replace("-", ""):
            return task
    raise KeyError("unknown task %r; tasks: %s" % (name, ", ".join(TASKS)))


def default_data_dir(task: Task) -> Optional[str]:
    """The embedded directory for demo tasks; None for tasks that need --data-dir."""
    return TASKS_DIR if task.benchmark == "demo" else None


def read_split(task: Task, split: str, data_dir: Optional[str] = None) -> SplitData:
    """Examples of one split; a missing file names the expected path and the download page."""
    data_dir = data_dir or default_data_dir(task)
    if data_dir is None:
        raise ValueError("task %s needs --data-dir (the official data, from %s)"
                         % (task.name, task.url))
    path = task.path(data_dir, split)
    if not os.path.exists(path):
        raise FileNotFoundError("%s %s: expected %s; download %s from %s and extract it under %s"
                                % (task.name, split, path, task.benchmark, task.url, data_dir))
    return task.read(task, split, path)


# ------------------------------------------------------------------------------------- features

def truncate_equal(seqs: Sequence[List[int]], max_len: int) -> List[List[int]]:
    """Cut sequences to a total of max_len as evenly as possible: sequences shorter than their
    fair share keep every token, the others share the rest, earlier ones taking the remainder."""
    lens = [len(s) for s in seqs]
    if sum(lens) <= max_len:
        return [list(s) for s in seqs]
    active, budget = list(range(len(seqs))), max_len
    while True:
        quotient, remainder = divmod(budget, len(active))
        shortest = min(active, key=lambda i: lens[i])
        if lens[shortest] <= quotient:
            budget -= lens[shortest]
            active.remove(shortest)
            continue
        for rank, i in enumerate(active):
            lens[i] = quotient + 1 if rank < remainder else quotient
        return [list(s[:n]) for s, n in zip(seqs, lens)]


def featurize(examples: Sequence[Example], task: Task, tokenizer, max_len: int = 512) -> dict:
    """Model inputs for `examples`: `<s> A </s> [B </s>]` after equal truncation to max_len
    (segment ids 0 for `<s> A </s>`, 1 after), valid lengths, and labels when present (class
    index int32 in `task.class_labels` order, or float32 score)."""
    limit = max_len - 3 if task.is_pair else max_len - 2
    counts = [len(e.texts) for e in examples]
    flat = tokenizer.encode_batch([t for e in examples for t in e.texts])
    input_ids, segment_ids, at = [], [], 0
    for n in counts:
        parts = truncate_equal(flat[at:at + n], limit)
        at += n
        ids, seg = [tokenizer.bos_id], [0]
        for k, part in enumerate(parts):
            ids += part + [tokenizer.eos_id]
            seg += [k] * (len(part) + 1)
        input_ids.append(np.asarray(ids, dtype=np.int32))
        segment_ids.append(np.asarray(seg, dtype=np.int32))
    out = {"input_ids": object_array(input_ids), "segment_ids": object_array(segment_ids),
           "valid_length": np.array([len(a) for a in input_ids], dtype=np.int32)}
    if examples and all(e.label is not None for e in examples):
        if task.class_labels is None:
            out["label"] = np.array([float(e.label) for e in examples], dtype=np.float32)
        else:
            index = {label: i for i, label in enumerate(task.class_labels)}
            out["label"] = np.array([index[e.label] for e in examples], dtype=np.int32)
    return out




def load_features(task_name: str, split: str, data_dir: Optional[str] = None, tokenizer=None,
                  max_len: int = 512):
    """(examples, features) of one split: `read_split` then `featurize` (demo vocabulary when no
    tokenizer is given) -- what a fine-tuning loop needs, in one call."""
    task = get_task(task_name)
    data = read_split(task, split, data_dir)
    return data.examples, featurize(data.examples, task, tokenizer or load_tokenizer(), max_len)
