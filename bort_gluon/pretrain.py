"""Distillation pretraining in MXNet/GluonNLP, as the 2020 release ran it.

`Engine` implements `bort_core.pretrain.Engine`: the student accumulates gradients
(grad_req='add'; 'write' for one micro-batch on one worker), GluonNLP's BERTAdam updates it
through an MXNet updater, and Horovod sums the gradients over workers once per optimizer step
(`horovodrun`, gloo on CPU, NCCL on GPU). `pretrain(options)` runs a whole job. Precision:
float32 (float16 and bfloat16 are offered by the torch twin only; see docs/fidelity.md).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import mxnet as mx
import numpy as np
from gluonnlp.optimizer import BERTAdam
from mxnet import autograd

from bort_core import losses, optim
from bort_core import pretrain as core
from bort_gluon.model import BortModel, device_of, named_parameters, set_params


class _DistillationTerms(mx.autograd.Function):
    """The loss terms as one autograd node over the student's logits: `bort_core.losses`'
    float64 numpy forward and analytic gradient (the same float32 gradient as autograd through
    MXNet's float64 operators, 4-5x faster on the CPU: those kernels are slow)."""

    def __init__(self, ids, weights, teacher_logits, normalizer, temperature, kd_loss):
        super().__init__()
        self.args = (ids, weights, normalizer, teacher_logits, temperature, kd_loss)
        self.names = losses.TERMS if teacher_logits is not None else losses.TERMS[:2]

    def forward(self, logits):
        terms, self.cache = losses.forward(logits.asnumpy(), *self.args)
        return tuple(mx.nd.array([terms[k]], ctx=logits.context, dtype="float64")
                     for k in self.names)

    def backward(self, *grads):
        d = {k: float(g.asscalar()) for k, g in zip(self.names, grads)}
        grad = losses.backward(self.cache, d)
        self.cache = None
        return mx.nd.array(grad, ctx=grads[0].context, dtype="float32")


def distillation_terms(logits, teacher_logits, ids, weights, normalizer, temperature, kd_loss):
    """Sums of the loss terms over these rows, each divided by the global `normalizer`; the
    softmax arithmetic runs in float64 (sums over the vocabulary)."""
    host = lambda x: x.asnumpy() if isinstance(x, mx.nd.NDArray) else np.asarray(x)
    teacher = None if teacher_logits is None else host(teacher_logits)
    node = _DistillationTerms(host(ids), host(weights), teacher, normalizer, temperature,
                              kd_loss)
    return dict(zip(node.names, node(logits)))


def global_norm(grads) -> float:
    """The global L2 norm of `grads` as GluonNLP's clip_grad_global_norm takes it: each
    array's dot(g, g) (BLAS, float32), summed on the host in float64. MXNet's CPU `norm` is
    ~20x slower and accumulates worse (-7.5% on a 51M-element random array against -0.05%)."""
    squares = [mx.nd.dot(g.reshape((-1,)), g.reshape((-1,))) for g in grads]
    return float(np.sqrt(np.sum(mx.nd.concat(*squares, dim=0).asnumpy().astype(np.float64))))


def clip_and_update(updater, grads, weights, lr: float, norm: float, clip_norm: float,
                    scale: float = 1.0) -> None:
    """One optimizer step of `updater` on `grads` (summed at loss scale `scale`, of global
    norm `norm` once unscaled), clipped to `clip_norm` as GluonNLP's clip_grad_global_norm
    does, through the optimizer's `rescale_grad`."""
    updater.optimizer.set_learning_rate(lr)
    updater.optimizer.rescale_grad = optim.clip_factor(norm, clip_norm) / scale
    updater(list(range(len(grads))), grads, weights)


class TeacherCache:
    """A frozen teacher that remembers, per batch, its encoder output at the masked positions;
    a batch seen before runs only the MLM decoder (`Backend.cached_teacher`)."""

    def __init__(self, model: BortModel):
        self.model = model
        self.encoded: Dict[bytes, mx.nd.NDArray] = {}

    def collect_params(self):
        return self.model.collect_params()

    def __call__(self, inputs, valid_length, masked_positions):
        key = core.batch_key(*(a.asnumpy() for a in (inputs, valid_length, masked_positions)))
        encoded = self.encoded.get(key)
        if encoded is None:
            sequence = self.model(inputs, valid_length)
            rows = mx.nd.arange(sequence.shape[0], ctx=sequence.context, dtype="int32")
            rows = mx.nd.broadcast_to(rows.reshape((-1, 1)), masked_positions.shape)
            encoded = self.encoded[key] = mx.nd.gather_nd(
                sequence, mx.nd.stack(rows, masked_positions.astype("int32")))
        return None, self.model.decoder(encoded)


class Engine(core.Engine):
    """Student (+ frozen teacher) and BERTAdam on one worker; see bort_core.pretrain.Engine."""

    def __init__(self, options: core.PretrainOptions, model: BortModel,
                 teacher: Optional[BortModel] = None, rank: int = 0, world: int = 1):
        if options.dtype != "float32":
            raise ValueError("--dtype %s: bort_gluon pretrains in float32; float16/bfloat16 "
                             "runs use --framework torch" % options.dtype)
        self.opt_, self.rank, self.world = options, rank, world
        self.model, self.teacher = model, teacher
        self.ctx = device_of(model)
        if teacher is not None:
            teacher.collect_params().setattr("grad_req", "null")
        self.named = named_parameters(self.model)
        self.order = list(self.named)
        # one backward per step on one worker: gradients written, not accumulated into
        # buffers that each step then zeroes (same sums; saves two passes over the parameters)
        self.accumulating = options.accumulate > 1 or world > 1
        for name, p in self.named.items():
            p.grad_req = "add" if self.accumulating else "write"
            p.wd_mult = 1.0 if optim.decays(name) else 0.0
        self.optimizer = BERTAdam(learning_rate=options.lr, beta1=options.beta1,
                                  beta2=options.beta2, epsilon=options.eps,
                                  wd=options.weight_decay,
                                  param_dict={i: self.named[n] for i, n in enumerate(self.order)})
        self.updater = mx.optimizer.get_updater(self.optimizer)
        self.model.collect_params().zero_grad()

    def _arrays(self, batch):
        return {k: mx.nd.array(v, ctx=self.ctx, dtype="float32") for k, v in batch.items()}

    def _terms(self, b, normalizer):
        o = self.opt_
        _, logits = self.model(b["input_ids"], b["valid_length"], b["masked_positions"])
        teacher_logits = None
        if self.teacher is not None:
            with autograd.pause():
                _, teacher_logits = self.teacher(b["input_ids"], b["valid_length"],
                                                 b["masked_positions"])
        terms = distillation_terms(logits, teacher_logits, b["masked_ids"], b["masked_weights"],
                                   normalizer, o.temperature, o.kd_loss)
        terms["loss"] = losses.total_loss(terms, o)
        return terms

    def _stats(self, terms, batch):
        stats = {k: float(v.asscalar()) for k, v in terms.items()}
        stats["tokens"] = float(batch["valid_length"].sum())
        return stats

    def backward(self, batch, normalizer, scale):
        b = self._arrays(batch)
        with autograd.record():
            terms = self._terms(b, normalizer)
            scaled = terms["loss"] * scale
        scaled.backward()
        return self._stats(terms, batch)

    def evaluate(self, batch, normalizer):
        return self._stats(self._terms(self._arrays(batch), normalizer), batch)

    def update(self, lr, scale):
        grads = [self.named[n].grad(self.ctx) for n in self.order]
        if self.world > 1:
            import horovod.mxnet as hvd
            for i, g in enumerate(grads):
                hvd.allreduce_(g, op=hvd.Sum, name="grad.%d" % i)
        norm = global_norm(grads) / scale
        finite = bool(np.isfinite(norm))
        if finite:
            clip_and_update(self.updater, grads, [self.named[n].data(self.ctx) for n in self.order],
                            lr, norm, self.opt_.clip_norm, scale)
        if self.accumulating:
            for g in grads:
                g[:] = 0
        return {"finite": finite, "grad_norm": norm}

    def seed(self, value):
        mx.random.seed(value)

    def params(self) -> Dict[str, np.ndarray]:
        return {n: p.data(self.ctx).asnumpy() for n, p in self.named.items()}

    def states(self) -> Dict[str, np.ndarray]:
        out = {}
        for i, name in enumerate(self.order):
            if i in self.updater.states:
                mean, var = (s.asnumpy() for s in self.updater.states[i])
            else:
                mean = var = np.zeros(self.named[name].shape, np.float32)
            out["mean:" + name], out["var:" + name] = mean, var
        return out

    def load(self, params, states=None):
        set_params(self.model, params, "checkpoint")
        if states is None:
            return
        for i, name in enumerate(self.order):
            self.updater.states[i] = tuple(mx.nd.array(states["%s:%s" % (k, name)], ctx=self.ctx)
                                           for k in ("mean", "var"))
            self.updater.states_synced[i] = True

    def allreduce(self, values: List[float]) -> List[float]:
        if self.world == 1:
            return list(values)
        import horovod.mxnet as hvd
        out = hvd.allreduce(mx.nd.array(values, dtype="float64"), op=hvd.Sum, name="stats")
        return [float(v) for v in out.asnumpy()]


def init_distributed():
    """(rank, world, ctx): Horovod when launched by horovodrun, else one process."""
    if "HOROVOD_RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:
        return 0, 1, mx.cpu()
    try:    # imported after horovod.mxnet, tensorboardX corrupts the heap (free(): invalid size)
        import tensorboardX  # noqa: F401
    except ImportError:
        pass
    import horovod.mxnet as hvd
    hvd.init()
    gpu = mx.context.num_gpus() > 0
    return hvd.rank(), hvd.size(), mx.gpu(hvd.local_rank()) if gpu else mx.cpu()


def build_model(config, params, device=None, source: str = "<params>") -> BortModel:
    """A BortModel holding canonical `params`, on `device` (an MXNet context), hybridized for the
    Engine's calls: one cached graph (static_alloc: memory planned once; shapes stay free as
    buckets vary; the unpadded path's packing indices are graph inputs, so results equal the
    imperative run's), ~7% less time per pretraining step."""
    model = BortModel(config, device=device)
    set_params(model, params, source)
    model.hybridize(static_alloc=True)
    return model


def build_engine(options: core.PretrainOptions, rank: int = 0, world: int = 1, device=None):
    """(engine, student config): models resolved and checked by bort_core.pretrain."""
    student, params, teacher, teacher_params = core.resolve_models(options)
    model = build_model(student, params, device, options.init or "initial parameters")
    teacher_model = None
    if teacher is not None:
        teacher_model = build_model(teacher, teacher_params, device, options.teacher)
    return Engine(options, model, teacher_model, rank, world), student


def pretrain(options: core.PretrainOptions, device=None) -> List[Dict]:
    """Run a whole pretraining job (one process, or one horovodrun worker)."""
    rank, world, auto = init_distributed()
    engine, student = build_engine(options, rank, world, device or auto)
    stream, eval_stream = core.make_streams(options, student)
    return core.run_pretraining(engine, options, stream, eval_stream,
                                meta={"framework": "gluon", "workers": world})
