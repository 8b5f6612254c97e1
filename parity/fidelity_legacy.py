"""The release's side of `python -m parity fidelity`, computed on the 2020 stack (Python 3.7,
mxnet 1.5.0, gluonnlp 0.8.3): reads one JSON request on stdin, writes one JSON answer on stdout.

    .tox/legacy/bin/python -m parity.fidelity_legacy < request.json > answer.json

Request keys name a computation by their last `_` part (`steps_sampler` is a `sampler`):
`sampler` {lengths, tokens, num_buckets}; `scaler` {overflows, scale, window, tolerance};
`schedule` {lr, num_steps, warmup_ratio, steps}; `kd` {student, teacher, weights,
temperature}; `bertadam` {weight, bias, grads, lrs, wd, eps, beta1, beta2}.
What lives in gluonnlp/mxnet (sampler, losses, BERTAdam) is computed by them; what lives in
the release's own scripts (the loss scaler, the schedule) is `release_scale_trace` and
`release_learning_rate`, written here from their description (bort_core.optim's
docstring) and tested on worked examples. Python 3.7 syntax: this file runs on both stacks.
"""
import json
import sys

import numpy as np


def release_scale_trace(overflows, scale, window, tolerance):
    """Loss scale after each step of the release's DynamicLossScaler for a scripted sequence
    of overflow flags (True = the step's gradient overflowed)."""
    step, last_overflow, last_rescale, count = 0, -1, -1, 0
    trace = []
    for overflow in overflows:
        if overflow:
            last_overflow, count = step, count + 1
            if count / float(step - last_rescale) >= tolerance:
                scale, last_rescale, count = scale / 2.0, step, 0
        elif (step - last_overflow) % window == 0:
            scale, last_rescale = scale * 2.0, step
        trace.append(scale)
        step += 1
    return trace


def release_learning_rate(step, lr, num_steps, warmup_ratio):
    """run_pretraining_distillation_hvd.py's rate at optimizer step `step` (1-based)."""
    warmup = int(num_steps * warmup_ratio)
    if step <= warmup:
        return lr * step / warmup
    return lr - lr * step / num_steps


def sampler_batches(lengths, tokens, num_buckets):
    """gluonnlp 0.8.3's FixedBucketSampler as the release built it (use_average_length, one
    shard per worker), unshuffled: its keys, per-bucket batch sizes and batches."""
    from gluonnlp.data import FixedBucketSampler

    sampler = FixedBucketSampler(lengths=lengths, batch_size=tokens, num_buckets=num_buckets,
                                 shuffle=False, use_average_length=True, num_shards=1)
    batches = [[int(i) for i in shard[0]] for shard in sampler]
    return {"keys": [int(k) for k in sampler._bucket_keys],
            "batch_sizes": [int(b) for b in sampler._bucket_batch_sizes], "batches": batches}


def kd_terms(student, teacher, weights, temperature):
    """The release's teacher_ce and teacher_mse (utils/pretraining_distillation_utils.forward)
    with mxnet 1.5's KLDivLoss(from_logits=False) and L2Loss."""
    import mxnet as mx

    s, t = mx.nd.array(student), mx.nd.array(teacher)
    w = mx.nd.array(weights).reshape((-1, 1))
    num_masks = w.sum() + 1e-8
    ps = mx.nd.softmax(s, temperature=temperature)
    pt = mx.nd.softmax(t, temperature=temperature)
    ce = mx.gluon.loss.KLDivLoss(from_logits=False)(ps, pt, w)
    mse = mx.gluon.loss.L2Loss()(ps, pt, w)
    return {"teacher_ce": float((temperature ** 2 * ce.sum() / num_masks).asscalar()),
            "teacher_mse": float((temperature ** 2 * mse.sum() / num_masks).asscalar())}


def bertadam(weight, bias, grads, lrs, wd, eps, beta1, beta2):
    """gluonnlp 0.8.3's BERTAdam through an mxnet 1.5 updater: a weight with decay and a bias
    without (wd_mult 0, as the release set for beta|gamma|bias), one step per gradient pair."""
    import mxnet as mx
    from gluonnlp.optimizer import BERTAdam

    opt = BERTAdam(learning_rate=lrs[0], beta1=beta1, beta2=beta2, epsilon=eps, wd=wd)
    opt.wd_mult = {1: 0.0}
    updater = mx.optimizer.get_updater(opt)
    arrays = [mx.nd.array(weight), mx.nd.array(bias)]
    for lr, (gw, gb) in zip(lrs, grads):
        opt.set_learning_rate(lr)
        for index, g in enumerate((gw, gb)):
            updater(index, mx.nd.array(g), arrays[index])
    return {"weight": arrays[0].asnumpy().tolist(), "bias": arrays[1].asnumpy().tolist()}


def schedule(lr, num_steps, warmup_ratio, steps):
    return [release_learning_rate(s, lr, num_steps, warmup_ratio) for s in steps]


#: request key (its last `_` part) -> what computes it
KINDS = {"sampler": sampler_batches, "scaler": release_scale_trace, "schedule": schedule,
         "kd": kd_terms, "bertadam": bertadam}


def answer(request):
    """One result per request key; `steps_sampler` is computed like `sampler`, and so on."""
    import gluonnlp
    import mxnet

    out = {"versions": {"python": sys.version.split()[0], "mxnet": mxnet.__version__,
                        "gluonnlp": gluonnlp.__version__, "numpy": np.__version__}}
    for key, kwargs in request.items():
        out[key] = KINDS[key.rsplit("_", 1)[-1]](**kwargs)
    return out


if __name__ == "__main__":
    json.dump(answer(json.load(sys.stdin)), sys.stdout)
