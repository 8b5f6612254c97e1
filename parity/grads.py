"""Gradient parity: the same loss, weights and batch in both frameworks, gradients compared.

The loss is MLM cross-entropy at the masked positions (targets: the original ids there) plus
the classifier's cross-entropy (targets: example index mod num_classes), both averaged, on a
dropout-free BortClassifier whose backbone keeps its MLM decoder.
"""
from __future__ import annotations

import numpy as np

GRAD_TOLERANCE = 1e-4   # relative L2 error per parameter
# The denominator of the relative error is floored at this share of the global gradient norm:
# some gradients are analytically zero (the key-projection biases: softmax ignores a shift
# shared by every key), and their "relative" error would be rounding noise over rounding noise.
NORM_FLOOR = 1e-4


def targets(inputs, num_classes):
    rows = np.arange(inputs["input_ids"].shape[0])[:, None]
    mlm = inputs["input_ids"][rows, inputs["masked_positions"]]
    return mlm.astype(np.int64), (np.arange(len(mlm)) % num_classes).astype(np.int64)


def gluon_grads(classifier, inputs, num_classes):
    import mxnet as mx
    from mxnet import autograd

    from bort_gluon.model import named_parameters

    mlm_target, cls_target = (mx.nd.array(t) for t in targets(inputs, num_classes))
    ids = mx.nd.array(inputs["input_ids"])
    valid = mx.nd.array(inputs["valid_length"])
    positions = mx.nd.array(inputs["masked_positions"])
    named = named_parameters(classifier)
    for p in named.values():
        p.grad_req = "write"
    with autograd.record():
        _, mlm_logits = classifier.bort(ids, valid, positions)
        cls_logits = classifier(ids, valid)
        mlm = -mx.nd.pick(mx.nd.log_softmax(mlm_logits), mlm_target, axis=-1).mean()
        cls = -mx.nd.pick(mx.nd.log_softmax(cls_logits), cls_target, axis=-1).mean()
        loss = mlm + cls
    loss.backward()
    return float(loss.asscalar()), {n: p.grad().asnumpy() for n, p in named.items()}


def torch_grads(classifier, inputs, num_classes):
    import torch
    import torch.nn.functional as F

    from bort_core.names import canonical_name

    mlm_target, cls_target = (torch.from_numpy(t) for t in targets(inputs, num_classes))
    ids = torch.from_numpy(inputs["input_ids"]).long()
    valid = torch.from_numpy(inputs["valid_length"]).long()
    positions = torch.from_numpy(inputs["masked_positions"]).long()
    classifier.zero_grad()
    _, mlm_logits = classifier.bort(ids, valid, positions)
    cls_logits = classifier(ids, valid)
    loss = (F.cross_entropy(mlm_logits.reshape(-1, mlm_logits.shape[-1]), mlm_target.reshape(-1))
            + F.cross_entropy(cls_logits, cls_target))
    loss.backward()
    grads = {canonical_name(n): p.grad.numpy().copy()
             for n, p in classifier.named_parameters()}   # named_parameters lists tied ones once
    return loss.item(), grads


def compare_grads(a, b):
    """Per-parameter relative L2 error ||a - b|| / max(||b||, NORM_FLOOR * ||all of b||);
    rows sorted worst first."""
    floor = NORM_FLOOR * float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in b.values())))
    rows = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            rows.append({"param": name, "ok": False, "error": "missing on one side"})
            continue
        norm = float(np.linalg.norm(b[name].astype(np.float64)))
        err = float(np.linalg.norm(a[name].astype(np.float64) - b[name].astype(np.float64)))
        rel = err / max(norm, floor) if max(norm, floor) else err
        rows.append({"param": name, "rel_l2": rel, "norm": norm, "ok": bool(rel <= GRAD_TOLERANCE)})
    return sorted(rows, key=lambda r: -r.get("rel_l2", np.inf))
