"""The pretraining loss: its terms, the float64 oracle both frameworks are tested against
(`reference_losses`), and the arithmetic the loop applies to them.

Loss (per micro-batch; i runs over masked positions, w_i their weights, n = sum_i w_i + 1e-8
taken over the GLOBAL micro-batch, i.e. over every worker's rows):
    mlm        = sum_i w_i * CE(s_i, y_i) / n                       (student logits s, fp32)
    ps, pt     = softmax(s_i / T), softmax(t_i / T)                  (teacher t: eval, no grad)
    kd (kl)    = T^2 * sum_i w_i * KL(pt_i || ps_i) / n              (textbook; the default)
    kd (release, `--kd-loss release`): the 2020 term with mxnet 1.5 semantics: Gluon's
                 KLDivLoss(from_logits=False) applied to the PROBABILITIES ps (so a second
                 softmax is taken) and averaged over the vocabulary:
                 T^2 * sum_i w_i * mean_v[pt_iv * (log(pt_iv + 1e-12) - log_softmax(ps_i)_v)] / n
    mse        = sum_i w_i * mean_v (ps_iv - pt_iv)^2 / n            (logged, never optimised;
                 `--teacher-mse release` logs the release's T^2 / 2 * mse: its L2Loss halves)
    loss       = (mlm_weight * mlm + teacher_ce_weight * kd) / accumulate     with a teacher
    loss       = mlm / accumulate                                           teacherless

`forward`/`backward` give the terms and their gradient with respect to the student's logits in
float64 numpy: a framework can run them as one custom autograd node instead of a chain of
vocabulary-sized tensor operations (bort_gluon does: MXNet's float64 CPU kernels are several
times slower than numpy's and torch's).

`forward` returns the terms {mlm_loss, mlm_acc[, teacher_ce, teacher_mse]} and what `backward`
needs; `backward(cache, d)` maps the upstream gradient of each term (a dict of floats, missing
terms 0) to d(sum_k d[k] * term_k)/d(student logits), float64, the logits' shape.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

TERMS = ("mlm_loss", "mlm_acc", "teacher_ce", "teacher_mse")


def _softmax(x, shifted=False):
    """(log_softmax, softmax) of `x` along the last axis; `x` is overwritten by the first
    (with `shifted`, x holds x - max already). Vocabulary-sized float64 arrays cost more to
    allocate (page faults) than to compute on, so the work is done in place."""
    if not shifted:
        x -= x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    total = e.sum(axis=-1, keepdims=True)
    e /= total
    x -= np.log(total)
    return x, e


def _rowdot(a, b):
    return np.einsum("...v,...v->...", a, b)


def forward(student_logits, masked_ids, masked_weights, normalizer: float,
            teacher_logits=None, temperature: float = 2.0,
            kd_loss: str = "kl") -> Tuple[Dict[str, float], Dict]:
    """(terms, cache): each term a sum over the masked positions divided by `normalizer`."""
    s = np.asarray(student_logits)
    w = np.asarray(masked_weights, np.float64)
    ids = np.asarray(masked_ids).astype(np.int64)[..., None]
    shifted = np.subtract(s, s.max(axis=-1, keepdims=True), dtype=np.float64)
    log_p, p = _softmax(shifted, shifted=True)
    ce = -np.take_along_axis(log_p, ids, -1)[..., 0]
    terms = {"mlm_loss": float((w * ce).sum() / normalizer),
             "mlm_acc": float((w * (s.argmax(-1) == ids[..., 0])).sum() / normalizer)}
    cache = {"p": p, "ids": ids, "w": w, "n": normalizer, "T": temperature, "kd": kd_loss}
    if teacher_logits is None:
        return terms, cache
    log_ps, ps = _softmax(np.divide(s, temperature, dtype=np.float64))
    log_pt, pt = _softmax(np.divide(teacher_logits, temperature, dtype=np.float64))
    diff = np.subtract(ps, pt)
    mse = _rowdot(diff, diff) / ps.shape[-1]
    if kd_loss == "kl":
        kd = _rowdot(pt, np.subtract(log_pt, log_ps, out=log_pt))
    else:   # the release: a second softmax over ps, the mean over the vocabulary
        log_q, q = _softmax(ps.copy())
        log_pt = np.log(np.add(pt, 1e-12, out=log_pt), out=log_pt)
        kd = _rowdot(pt, np.subtract(log_pt, log_q, out=log_pt)) / ps.shape[-1]
        cache["q"] = q
    terms["teacher_ce"] = float(temperature ** 2 * (w * kd).sum() / normalizer)
    terms["teacher_mse"] = float((w * mse).sum() / normalizer)
    cache.update(ps=ps, pt=pt, diff=diff)
    return terms, cache


def backward(cache: Dict, d: Dict[str, float]) -> np.ndarray:
    """d(sum_k d[k] * term_k) / d(student logits); mlm_acc has no gradient. The cache's
    arrays are overwritten (call once per `forward`)."""
    grad, ids, T = cache["p"], cache["ids"], cache["T"]
    np.put_along_axis(grad, ids, np.take_along_axis(grad, ids, -1) - 1.0, -1)
    grad *= d.get("mlm_loss", 0.0)
    d_ce, d_mse = d.get("teacher_ce", 0.0), d.get("teacher_mse", 0.0)
    if "ps" in cache and (d_ce or d_mse):
        ps, pt, diff = cache["ps"], cache["pt"], cache["diff"]
        vocab = ps.shape[-1]
        mass = pt.sum(-1, keepdims=True)
        g_ps = diff
        g_ps *= 2.0 * d_mse / vocab                     # d/d ps, then through softmax(s / T)
        if cache["kd"] == "kl":                         # d KL / d(s / T), directly
            kl = np.multiply(ps, mass)
            kl -= pt
            kl *= d_ce * T                              # T^2 for the term, 1/T inside
            grad += kl
        else:
            q = cache["q"]
            q *= mass
            q -= pt
            q *= d_ce * T * T / vocab
            g_ps += q
        g_ps -= _rowdot(ps, g_ps)[..., None]
        g_ps *= ps
        g_ps /= T
        grad += g_ps
    grad *= (cache["w"] / cache["n"])[..., None]           # each position's share
    return grad


# ------------------------------------------------------------- the oracle and the loop's arithmetic

def _log_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))



def reference_losses(student_logits, masked_ids, masked_weights, teacher_logits=None,
                     temperature=2.0, kd_loss="kl", normalizer=None) -> Dict[str, float]:
    """The loss terms of the module docstring in float64 numpy (the test oracle)."""
    s = np.asarray(student_logits, np.float64)
    w = np.asarray(masked_weights, np.float64)
    n = w.sum() + 1e-8 if normalizer is None else normalizer
    logp = _log_softmax(s)
    ce = -np.take_along_axis(logp, np.asarray(masked_ids)[..., None].astype(np.int64), -1)[..., 0]
    out = {"mlm_loss": float((w * ce).sum() / n),
           "mlm_acc": float((w * (s.argmax(-1) == masked_ids)).sum() / n)}
    if teacher_logits is not None:
        t = np.asarray(teacher_logits, np.float64)
        log_ps, log_pt = _log_softmax(s / temperature), _log_softmax(t / temperature)
        ps, pt = np.exp(log_ps), np.exp(log_pt)
        if kd_loss == "kl":
            kd = (pt * (log_pt - log_ps)).sum(-1)
        else:
            kd = (pt * (np.log(pt + 1e-12) - _log_softmax(ps))).mean(-1)
        out["teacher_ce"] = float(temperature ** 2 * (w * kd).sum() / n)
        out["teacher_mse"] = float((w * ((ps - pt) ** 2).mean(-1)).sum() / n)
    return out



def total_loss(terms: Dict, options):
    """The optimised loss from the terms (numbers or framework tensors alike)."""
    if "teacher_ce" not in terms:
        return terms["mlm_loss"]
    return options.mlm_weight * terms["mlm_loss"] + options.teacher_ce_weight * terms["teacher_ce"]



def logged_mse(mse, options):
    """teacher_mse as logged: ours is sum_i w_i mean_v (ps - pt)^2 / n; the release's L2Loss
    halves that and the release then multiplies by T^2 (`--teacher-mse release`)."""
    if options.teacher_mse == "release":
        return mse * options.temperature ** 2 / 2.0
    return mse



def normalizer(batch: Dict[str, np.ndarray]) -> float:
    """n = sum of masked weights of the GLOBAL batch + 1e-8."""
    return float(batch["masked_weights"].astype(np.float64).sum()) + 1e-8
