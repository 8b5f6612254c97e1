"""bort_core.metrics against hand-computed values and textbook definitions."""
import numpy as np
import pytest

from bort_core import metrics as M
from bort_core.data import tasks as T


def test_accuracy_and_binary_f1():
    pred, gold = [1, 1, 0, 1, 0], [1, 0, 0, 1, 1]
    assert M.accuracy(pred, gold) == pytest.approx(0.6)
    assert M.f1(pred, gold) == pytest.approx(2 * 2 / (3 + 3))      # tp=2, 3 predicted, 3 gold
    assert M.f1([0, 0], [0, 0]) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        M.accuracy([1], [1, 0])


def test_f1_is_over_the_dataset_not_averaged_per_batch():
    pred, gold = [1, 0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 1, 1]
    per_batch = np.mean([M.f1(pred[:4], gold[:4]), M.f1(pred[4:], gold[4:])])
    assert M.f1(pred, gold) == pytest.approx(2 * 3 / (5 + 6))
    assert M.f1(pred, gold) != pytest.approx(per_batch)


def test_macro_f1_for_cb():
    pred, gold = [0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2]
    per_class = [M.f1(pred, gold, c) for c in (0, 1, 2)]
    assert per_class == pytest.approx([2 / 3, 0.8, 0.5])
    assert M.macro_f1(pred, gold) == pytest.approx(np.mean(per_class))


def test_mcc_binary_and_multiclass():
    pred, gold = [1, 1, 0, 1, 0, 0, 1], [1, 0, 0, 1, 1, 0, 1]
    tp, tn, fp, fn = 3, 2, 1, 1
    expected = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert M.mcc(pred, gold) == pytest.approx(expected)
    assert M.mcc([0, 1, 2, 0], [0, 1, 2, 0]) == pytest.approx(1.0)
    assert M.mcc([0, 0, 0], [0, 1, 1]) == 0.0
    # R_K for 3 classes from the confusion-matrix formula, computed by hand
    pred, gold = [0, 1, 2, 1, 2, 0], [0, 1, 2, 2, 2, 1]
    c, s = 4, 6
    t, p = np.array([1, 2, 3]), np.array([2, 2, 2])
    ref = (c * s - t @ p) / np.sqrt((s * s - p @ p) * (s * s - t @ t))
    assert M.mcc(pred, gold) == pytest.approx(ref)


def test_pearson_and_spearman():
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 7.0]
    assert M.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert M.spearman(x, y) == pytest.approx(0.8)             # 1 - 6*4/(5*24)
    # ties share their average rank
    assert M._ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert M.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(
        np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])


def test_gender_parity_and_multirc_em():
    assert M.gender_parity([1, 1, 0, 1, 0, 0], ["a", "a", "b", "b", "c", "c"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="pairs"):
        M.gender_parity([1, 0], ["a", "b"])
    questions = [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0)]
    assert M.multirc_em([1, 0, 1, 1, 0], [1, 0, 1, 0, 0], questions) == pytest.approx(2 / 3)


def test_record_em_and_token_f1():
    assert M.token_f1("the Eiffel Tower!", "Eiffel tower") == 1.0
    assert M.token_f1("Paris France", "Paris") == pytest.approx(2 * 0.5 * 1 / 1.5)
    em, f1 = M.record_scores({0: "Bob", 1: "New York"}, {0: ["Bob", "Robert"], 1: ["York"]})
    assert em == pytest.approx(0.5) and f1 == pytest.approx((1 + 2 / 3) / 2)


def test_evaluate_uses_the_task_metrics():
    task = T.get_task("mrpc")
    ex = [T.Example(("a", "b"), lab) for lab in ["1", "0", "1", "1"]]
    out = M.evaluate(task, ex, [1, 0, 0, 1])
    assert out == pytest.approx({"f1": 0.8, "accuracy": 0.75})
    cb = M.evaluate(T.get_task("cb"), [T.Example(("a", "b"), lab) for lab in
                                       ["neutral", "entailment", "contradiction"]], [0, 1, 1])
    assert set(cb) == {"accuracy", "macro_f1"} and cb["accuracy"] == pytest.approx(2 / 3)
    rec = T.get_task("record")
    cands = [T.Example(("p", "q"), lab, idx=0, group=0, candidate=c)
             for c, lab in [("Bob", "1"), ("Ann", "0")]]
    assert M.evaluate(rec, cands, None, scores=[0.2, 0.9]) == {"record_em": 0.0, "record_f1": 0.0}
    assert M.evaluate(rec, cands, None, scores=[0.9, 0.2]) == {"record_em": 1.0, "record_f1": 1.0}
