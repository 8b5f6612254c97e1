"""Task fine-tuning steps in MXNet/GluonNLP, as the 2020 release ran them.

`Trainer` and `predict` are what `bort_gluon.backend.Backend` delegates to; the loop around them
(epochs, schedule, dev evaluation, test files) is `bort_core.finetune`. A `Trainer` holds one
run's GluonNLP BERTAdam (weight decay except LayerNorm/bias) and step count, so a run split into
epochs follows one schedule, and a new run (new hparams) starts a new Trainer; gradients are
clipped to a global norm (`clip_norm`, 1 by default) through the optimizer's `rescale_grad`.
float32 only: the float16 option is the torch twin's (see docs/fidelity.md).

Speed: training and both predictions hybridize the model (`_hybridized`: the unpadded path as
one cached graph instead of ~140 imperative operator calls a step) and BERTAdam updates every
parameter in one multi-tensor call; the results are bit-identical to the imperative run.
"""
from __future__ import annotations

from typing import Dict, Iterable, List

import mxnet as mx
import numpy as np
from gluonnlp.optimizer import BERTAdam
from mxnet import autograd

from bort_core import finetune as core
from bort_core import optim
from bort_gluon.model import device_of, host_array, named_parameters
from bort_gluon.pretrain import clip_and_update, global_norm

MULTI_TENSOR = 50   # the most arrays MXNet's multi_adamw_update takes in one call


def _hybridized(model):
    """The model as one cached MXNet graph (static_alloc: memory planned once; shapes stay
    free, as buckets and packed-token counts vary); the packing indices are graph inputs, so the
    unpadded path, its results and its dropout draws are those of the imperative run."""
    if not model._active:
        model.hybridize(static_alloc=True)
    return model


def _arrays(batch, ctx):
    return (host_array(batch["input_ids"], ctx, "float32"),
            host_array(batch["valid_length"], ctx, "float32"))


def loss_fn(logits, labels):
    """Mean softmax cross-entropy, or 0.5 * mean squared error for one output (regression,
    GluonNLP's L2Loss)."""
    if logits.shape[-1] == 1 and labels.dtype == np.float32:
        return 0.5 * ((logits[:, 0] - labels) ** 2).mean()
    return -mx.nd.pick(mx.nd.log_softmax(logits, axis=-1), labels, axis=-1).mean()


class Trainer:
    """One fine-tuning run of `model` under `hparams`: BERTAdam, its updater and the step
    count, kept across `train` calls."""

    def __init__(self, model, hparams: Dict):
        if hparams.get("dtype", "float32") != "float32":
            raise ValueError("--dtype %s: bort_gluon fine-tunes in float32; use --framework torch "
                             "for float16" % hparams["dtype"])
        mx.random.seed(hparams.get("seed", 0))
        self.model, self.hparams = model, hparams
        self.named = named_parameters(model)
        order = list(self.named)
        for name, p in self.named.items():
            p.wd_mult = 1.0 if optim.decays(name) else 0.0
        optimizer = BERTAdam(learning_rate=hparams["lr"], epsilon=hparams.get("epsilon", 1e-6),
                             wd=hparams["weight_decay"],
                             param_dict={i: self.named[n] for i, n in enumerate(order)})
        # one multi_adamw_update per MULTI_TENSOR parameters instead of one per parameter
        optimizer.aggregate_num = MULTI_TENSOR
        self.updater = mx.optimizer.get_updater(optimizer)
        # the parameters' own buffers (written in place every step) and 1-D views of the grads
        ctx = device_of(model)
        self.weights = [self.named[n].data(ctx) for n in order]
        self.grads = [self.named[n].grad(ctx) for n in order]
        self.flat_grads = [g.reshape((-1,)) for g in self.grads]
        self.step = 0

    def train(self, batches: Iterable[Dict], steps: int) -> List[Dict]:
        """`steps` BERTAdam updates (dropout on); per-step rows {step, loss, lr, grad_norm}."""
        model, hparams = _hybridized(self.model), self.hparams
        ctx = device_of(model)
        rows = []
        for batch in core.take_steps(batches, steps):
            lr = optim.finetuning_lr(self.step, hparams)
            inputs, valid = _arrays(batch, ctx)
            labels = host_array(batch["labels"], ctx, batch["labels"].dtype
                                if batch["labels"].dtype == np.float32 else "int32")
            with autograd.record():
                loss = loss_fn(model(inputs, valid), labels)
            loss.backward()
            norm = global_norm(self.flat_grads)
            clip_and_update(self.updater, self.grads, self.weights, lr, norm,
                            hparams.get("clip_norm", 1.0))
            self.step += 1
            rows.append(core.step_row(self.step, float(loss.asscalar()), lr, norm, hparams))
        return rows


def predict(model, batches: Iterable[Dict]) -> np.ndarray:
    """Logits (N, C) in batch order, inference mode (dropout off), float32."""
    ctx = device_of(model)
    _hybridized(model)
    out = [model(*_arrays(b, ctx)).asnumpy() for b in batches]
    return np.concatenate(out, axis=0).astype(np.float32)


def predict_mlm(model, batches: Iterable[Dict]) -> List[np.ndarray]:
    """MLM logits (B, M, V) at each batch's `masked_positions`, inference mode, one array a
    batch (what Agora's masked-LM resampling draws replacement tokens from)."""
    ctx = device_of(model)
    _hybridized(model)
    out = []
    for b in batches:
        inputs, valid = _arrays(b, ctx)
        positions = host_array(b["masked_positions"], ctx, "float32")
        _, logits = model(inputs, valid, positions)
        out.append(logits.asnumpy())
    return out
