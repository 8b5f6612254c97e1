"""bort_core.losses: the terms equal the float64 oracle and the analytic gradient equals
central differences, for both distillation terms, with and without a teacher."""
import numpy as np
import pytest

from bort_core import losses
from bort_core import pretrain as core


def _inputs(seed=0, shape=(2, 3, 13)):
    rng = np.random.RandomState(seed)
    s, t = rng.normal(size=shape) * 2, rng.normal(size=shape) * 2
    ids = rng.randint(0, shape[-1], shape[:2])
    w = np.array([[1, 1, 0], [1, 0, 1]], np.float32)
    return s, t, ids, w, float(w.sum()) + 1e-8


def _weighted(s, t, ids, w, n, d, kd_loss):
    terms, _ = losses.forward(s, ids, w, n, t, 2.0, kd_loss)
    return sum(v * terms[k] for k, v in d.items())


@pytest.mark.parametrize("kd_loss", core.KD_LOSSES)
def test_terms_equal_the_oracle(kd_loss):
    s, t, ids, w, n = _inputs()
    got, _ = losses.forward(s, ids, w, n, t, 2.0, kd_loss)
    want = losses.reference_losses(s, ids, w, t, 2.0, kd_loss, normalizer=n)
    assert set(got) == set(want) == set(losses.TERMS)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15), key
    alone, _ = losses.forward(s, ids, w, n)
    assert set(alone) == {"mlm_loss", "mlm_acc"} and alone["mlm_loss"] == got["mlm_loss"]


@pytest.mark.parametrize("kd_loss", core.KD_LOSSES)
@pytest.mark.parametrize("d", [{"mlm_loss": 0.1, "teacher_ce": 0.5},
                               {"mlm_loss": 0.3, "teacher_ce": 0.2, "teacher_mse": 7.0},
                               {"teacher_mse": 1.0}, {"mlm_loss": 2.0}])
def test_gradient_equals_central_differences(kd_loss, d):
    s, t, ids, w, n = _inputs(1)
    _, cache = losses.forward(s, ids, w, n, t, 2.0, kd_loss)
    grad = losses.backward(cache, d)
    h, numeric = 1e-5, np.zeros_like(s)
    for i in np.ndindex(s.shape):
        up, down = s.copy(), s.copy()
        up[i] += h
        down[i] -= h
        numeric[i] = (_weighted(up, t, ids, w, n, d, kd_loss)
                      - _weighted(down, t, ids, w, n, d, kd_loss)) / (2 * h)
    assert np.abs(grad).max() > 1e-3                   # something to compare
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    assert not grad[1, 1].any()                        # a weight-0 position gets nothing


def test_gradient_without_a_teacher_is_the_cross_entropy_one():
    s, _, ids, w, n = _inputs(2)
    _, cache = losses.forward(s, ids, w, n)
    grad = losses.backward(cache, {"mlm_loss": 1.0})
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.put_along_axis(p, ids[..., None], np.take_along_axis(p, ids[..., None], -1) - 1, -1)
    np.testing.assert_allclose(grad, p * (w.astype(np.float64) / n)[..., None], rtol=1e-12,
                               atol=1e-15)
