"""Task metrics in numpy: what GLUE, SuperGLUE and RACE report, computed over a whole split.

All functions take predictions and gold labels as sequences (class indices, scores or strings)
and return a float. `evaluate(task, ...)` computes a task's metrics by name (the names in
`bort_core.data.tasks.TASKS[...].metrics`). Unlike the release, F1 is computed over the whole
dataset, never averaged per batch (release bug F1). `NonFiniteError` and `check_finite` are the
guard against NaN/infinite numbers that the training loops and their options share.
"""
from __future__ import annotations

import dataclasses
import math
import re
import string
from collections import Counter, defaultdict
from typing import Dict, Hashable, Optional, Sequence

import numpy as np


class NonFiniteError(FloatingPointError, ValueError):
    """A NaN or infinite hyper-parameter, label, loss, output or score (a ValueError, so the CLI
    reports it in one line)."""


def check_finite(options) -> None:
    """Refuse a dataclass of options with a NaN or infinite float field, by its --flag name
    (the field's metadata "flag" where it differs from the field's name)."""
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            flag = field.metadata.get("flag", "--" + field.name.replace("_", "-"))
            raise NonFiniteError("%s must be a finite number, got %r" % (flag, value))


def accuracy(pred, gold) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    _same_length(pred, gold)
    return float((pred == gold).mean()) if len(gold) else 0.0


def f1(pred, gold, positive=1) -> float:
    """Binary F1 of the `positive` class (0 when it is never predicted nor gold)."""
    pred, gold = np.asarray(pred) == positive, np.asarray(gold) == positive
    _same_length(pred, gold)
    tp = float((pred & gold).sum())
    denom = float(pred.sum() + gold.sum())
    return 2.0 * tp / denom if denom else 0.0


def macro_f1(pred, gold, labels: Optional[Sequence] = None) -> float:
    """Unweighted mean of per-class F1 (SuperGLUE CB's "avg F1")."""
    labels = sorted(set(np.asarray(gold).tolist())) if labels is None else labels
    return float(np.mean([f1(pred, gold, positive=c) for c in labels]))


def mcc(pred, gold) -> float:
    """Matthews correlation coefficient; the multi-class (R_K) form when there are > 2 classes."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    _same_length(pred, gold)
    classes = sorted(set(pred.tolist()) | set(gold.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    conf = np.zeros((len(classes), len(classes)))
    for p, g in zip(pred.tolist(), gold.tolist()):
        conf[index[g], index[p]] += 1
    t, p, c, s = conf.sum(axis=1), conf.sum(axis=0), np.trace(conf), conf.sum()
    denom = np.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return float((c * s - (t * p).sum()) / denom) if denom else 0.0


def pearson(pred, gold) -> float:
    pred, gold = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    _same_length(pred, gold)
    pc, gc = pred - pred.mean(), gold - gold.mean()
    denom = np.sqrt((pc * pc).sum() * (gc * gc).sum())
    return float((pc * gc).sum() / denom) if denom else 0.0


def _ranks(x) -> np.ndarray:
    """Ranks starting at 1, ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman(pred, gold) -> float:
    return pearson(_ranks(pred), _ranks(gold))


def gender_parity(pred, pairs: Sequence[Hashable]) -> float:
    """Share of AX-g pairs (examples with the same `pair_id`) predicted identically."""
    groups = defaultdict(list)
    for p, key in zip(np.asarray(pred).tolist(), pairs):
        groups[key].append(p)
    full = [g for g in groups.values() if len(g) > 1]
    if not full:
        raise ValueError("gender parity needs pairs of examples sharing a pair_id")
    return float(np.mean([len(set(g)) == 1 for g in full]))


def multirc_em(pred, gold, questions: Sequence[Hashable]) -> float:
    """Share of MultiRC questions whose every answer option is labelled correctly."""
    right = defaultdict(lambda: True)
    for p, g, q in zip(np.asarray(pred).tolist(), np.asarray(gold).tolist(), questions):
        right[q] = right[q] and p == g
    return float(np.mean(list(right.values()))) if right else 0.0


_PUNCTUATION = frozenset(string.punctuation)


def _normalize_answer(text: str) -> str:
    """SQuAD/ReCoRD answer normalisation: lower case, no punctuation, articles or extra spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, answer: str) -> float:
    p, a = _normalize_answer(prediction).split(), _normalize_answer(answer).split()
    common = sum((Counter(p) & Counter(a)).values())
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(a)
    return 2 * precision * recall / (precision + recall)


def record_scores(predictions: Dict[Hashable, str], answers: Dict[Hashable, Sequence[str]]):
    """ReCoRD (EM, F1): per query the max over its gold answers, averaged over queries."""
    if not answers:
        return 0.0, 0.0
    em, f = [], []
    for query, golds in answers.items():
        guess = predictions.get(query, "")
        em.append(max(float(_normalize_answer(guess) == _normalize_answer(g)) for g in golds))
        f.append(max(token_f1(guess, g) for g in golds))
    return float(np.mean(em)), float(np.mean(f))


def _same_length(a, b):
    if len(a) != len(b):
        raise ValueError("predictions (%d) and labels (%d) differ in length" % (len(a), len(b)))


def evaluate(task, examples, predictions, scores=None) -> Dict[str, float]:
    """A task's metrics on labelled `examples` (bort_core.data.tasks.Example).

    predictions: class indices (classification) or scores (regression), one per example.
    scores: ReCoRD only, the positive-class score of each candidate (the best per query wins).
    """
    metrics = {}
    if task.name == "record":
        chosen = choose_record_answers(examples, scores if scores is not None else predictions)
        answers = defaultdict(list)
        for e in examples:
            if e.label == "1":
                answers[e.group].append(e.candidate)
        metrics["record_em"], metrics["record_f1"] = record_scores(chosen, answers)
        return metrics
    if task.class_labels is None:
        gold = np.array([float(e.label) for e in examples])
    else:
        index = {label: i for i, label in enumerate(task.class_labels)}
        gold = np.array([index[e.label] for e in examples])
    for name in task.metrics:
        if name == "multirc_em":
            metrics[name] = multirc_em(predictions, gold, [e.group for e in examples])
        elif name == "gender_parity":
            metrics[name] = gender_parity(predictions, [e.group for e in examples])
        elif name == "f1":
            metrics[name] = f1(predictions, gold, positive=1)
        else:
            metrics[name] = METRICS[name](predictions, gold)
    return metrics


def choose_record_answers(examples, scores) -> Dict[Hashable, str]:
    """Per ReCoRD query, the candidate entity with the highest score (first one on ties)."""
    best: Dict[Hashable, tuple] = {}
    for e, s in zip(examples, np.asarray(scores, dtype=np.float64).tolist()):
        if e.group not in best or s > best[e.group][0]:
            best[e.group] = (s, e.candidate)
    return {q: c for q, (_, c) in best.items()}


METRICS = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "mcc": mcc, "pearson": pearson,
           "spearman": spearman}


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| in float64 (0 when both vanish)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = float(np.linalg.norm(b))
    num = float(np.linalg.norm(a - b))
    return num / den if den else num
