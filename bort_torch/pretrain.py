"""Distillation pretraining in PyTorch: the twin of bort_gluon.pretrain.

`Engine` implements `bort_core.pretrain.Engine` (loss terms, BERTAdam, all-reduce over
torch.distributed); `pretrain(options)` runs a whole job, on one process or under `torchrun`
(gloo on CPU, NCCL on GPU). Gradients are summed over workers once per optimizer step, after the
micro-batches of gradient accumulation (what DDP's no_sync + final all-reduce amounts to).
Precision: float32; float16 (autocast + dynamic loss scaling); bfloat16 (autocast, CPU AMX or GPU).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from bort_core import losses, optim
from bort_core import pretrain as core
from bort_torch.model import BortModel, device_of, named_parameters, set_params


class BERTAdam(torch.optim.Optimizer):
    """Adam without bias correction, decoupled weight decay (bort_core.pretrain's formula)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["mean"] = torch.zeros_like(p)
                    state["var"] = torch.zeros_like(p)
                m, v, g = state["mean"], state["var"], p.grad
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = v.sqrt().add_(group["eps"])         # one temporary per tensor
                torch.div(m, update, out=update).add_(p, alpha=group["weight_decay"])
                p.sub_(update, alpha=group["lr"])


def global_norm(grads) -> float:
    """The global L2 norm of `grads`: each tensor's norm in float32, combined in float64."""
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]).double()
    return float(torch.sqrt((norms ** 2).sum()))


@torch.no_grad()
def clip_gradients(grads, clip_norm: float, scale: float = 1.0) -> float:
    """Unscale `grads` (summed at loss scale `scale`) and clip them to a global norm of
    `clip_norm` (GluonNLP's clip_grad_global_norm), in place; returns the unscaled norm, which
    leaves the gradients untouched when it is not finite (the step is to be skipped)."""
    norm = global_norm(grads) / scale
    if np.isfinite(norm):
        factor = optim.clip_factor(norm, clip_norm) / scale
        if factor != 1.0:
            for g in grads:
                g.mul_(factor)
    return norm


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX or AVX512-BF16)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def distillation_terms(logits, teacher_logits, ids, weights, normalizer, temperature, kd_loss):
    """Sums of the loss terms over these rows, each divided by the global `normalizer`; the
    softmax arithmetic runs in float64 (sums over the vocabulary)."""
    logits, weights = logits.double(), weights.double()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1).long(),
                         reduction="none").view_as(weights)
    out = {"mlm_loss": (weights * ce).sum() / normalizer,
           "mlm_acc": (weights * (logits.argmax(-1) == ids).double()).sum() / normalizer}
    if teacher_logits is not None:
        log_ps = F.log_softmax(logits / temperature, dim=-1)
        log_pt = F.log_softmax(teacher_logits.double() / temperature, dim=-1)
        ps, pt = log_ps.exp(), log_pt.exp()
        if kd_loss == "kl":
            kd = (pt * (log_pt - log_ps)).sum(-1)
        else:   # the release: KLDivLoss(from_logits=False) on probabilities, mxnet 1.5 mean
            kd = (pt * (torch.log(pt + 1e-12) - F.log_softmax(ps, dim=-1))).mean(-1)
        out["teacher_ce"] = temperature ** 2 * (weights * kd).sum() / normalizer
        out["teacher_mse"] = (weights * ((ps - pt) ** 2).mean(-1)).sum() / normalizer
    return out


class TeacherCache(torch.nn.Module):
    """A frozen teacher that remembers, per batch, its encoder output at the masked positions;
    a batch seen before runs only the MLM decoder (`Backend.cached_teacher`)."""

    def __init__(self, model: BortModel):
        super().__init__()
        self.model = model
        self.encoded: Dict[bytes, torch.Tensor] = {}

    def forward(self, inputs, valid_length, masked_positions):
        key = core.batch_key(*(t.cpu().numpy() for t in (inputs, valid_length, masked_positions)))
        encoded = self.encoded.get(key)
        if encoded is None:
            sequence = self.model(inputs, valid_length)
            rows = torch.arange(sequence.shape[0], device=sequence.device)[:, None]
            encoded = self.encoded[key] = sequence[rows, masked_positions.long()]
        return None, self.model.decoder(encoded)


class Engine(core.Engine):
    """Student (+ frozen teacher) and BERTAdam on one worker; see bort_core.pretrain.Engine."""

    def __init__(self, options: core.PretrainOptions, model: BortModel,
                 teacher: Optional[BortModel] = None, rank: int = 0, world: int = 1):
        self.opt_, self.rank, self.world = options, rank, world
        self.device = device_of(model)
        self.model = model.train()
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.named = named_parameters(self.model)
        groups = [{"params": [p for n, p in self.named.items() if optim.decays(n)]},
                  {"params": [p for n, p in self.named.items() if not optim.decays(n)],
                   "weight_decay": 0.0}]
        self.optimizer = BERTAdam(groups, lr=options.lr, betas=(options.beta1, options.beta2),
                                  eps=options.eps, weight_decay=options.weight_decay)
        self.autocast_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(
            options.dtype)
        if self.autocast_dtype is torch.bfloat16 and self.device.type == "cpu" \
                and not cpu_has_bf16_matmul():
            warnings.warn("--dtype bfloat16 on a CPU without AMX or AVX512-BF16: bfloat16 "
                          "matrix products are emulated and run several times slower than "
                          "float32; use --dtype float32 here", stacklevel=2)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _tensors(self, batch):
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
                for k, v in batch.items()}

    def _terms(self, model, b, normalizer):
        o = self.opt_
        with self._autocast():
            _, logits = model(b["input_ids"].long(), b["valid_length"].long(),
                              b["masked_positions"].long())
            teacher_logits = None
            if self.teacher is not None:
                with torch.no_grad():
                    _, teacher_logits = self.teacher(b["input_ids"].long(),
                                                     b["valid_length"].long(),
                                                     b["masked_positions"].long())
        terms = distillation_terms(logits, teacher_logits, b["masked_ids"], b["masked_weights"],
                                   normalizer, o.temperature, o.kd_loss)
        terms["loss"] = losses.total_loss(terms, o)
        return terms

    def _stats(self, terms, b):
        stats = {k: float(v.detach()) for k, v in terms.items()}
        stats["tokens"] = float(b["valid_length"].sum())
        return stats

    def backward(self, batch, normalizer, scale):
        b = self._tensors(batch)
        terms = self._terms(self.model, b, normalizer)
        (terms["loss"] * scale).backward()
        return self._stats(terms, b)

    @torch.no_grad()
    def evaluate(self, batch, normalizer):
        b = self._tensors(batch)
        self.model.eval()
        try:
            return self._stats(self._terms(self.model, b, normalizer), b)
        finally:
            self.model.train()

    @torch.no_grad()
    def update(self, lr, scale):
        for p in self.named.values():   # a worker that got no rows still all-reduces (zeros)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in self.named.values()]
        if self.world > 1:
            flat = torch._utils._flatten_dense_tensors(grads)
            torch.distributed.all_reduce(flat)
            for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                g.copy_(synced)
        norm = clip_gradients(grads, self.opt_.clip_norm, scale)
        finite = bool(np.isfinite(norm))
        if finite:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        return {"finite": finite, "grad_norm": norm}

    def seed(self, value):
        torch.manual_seed(value)

    def params(self) -> Dict[str, np.ndarray]:
        return {n: p.detach().cpu().numpy().copy() for n, p in self.named.items()}

    def states(self) -> Dict[str, np.ndarray]:
        out = {}
        for name, p in self.named.items():
            state = self.optimizer.state.get(p) or {"mean": torch.zeros_like(p),
                                                     "var": torch.zeros_like(p)}
            out["mean:" + name] = state["mean"].cpu().numpy().copy()
            out["var:" + name] = state["var"].cpu().numpy().copy()
        return out

    @torch.no_grad()
    def load(self, params, states=None):
        set_params(self.model, params, "checkpoint")
        if states is None:
            return
        for name, p in self.named.items():
            self.optimizer.state[p] = {
                k: torch.from_numpy(np.ascontiguousarray(states["%s:%s" % (k, name)])).to(p)
                for k in ("mean", "var")}

    def allreduce(self, values: List[float]) -> List[float]:
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()


def init_distributed():
    """(rank, world, device) from torchrun's environment; one process when absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, "cuda" if torch.cuda.is_available() else "cpu"
    rank = int(os.environ["RANK"])
    cuda = torch.cuda.is_available()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, "cuda:%d" % local
    return rank, world, "cpu"


def build_model(config, params, device=None, source: str = "<params>") -> BortModel:
    """A BortModel holding canonical `params`, on `device`."""
    model = BortModel(config, device=device)
    set_params(model, params, source)
    return model


def build_engine(options: core.PretrainOptions, rank: int = 0, world: int = 1,
                 device: Optional[str] = None):
    """(engine, student config): models resolved and checked by bort_core.pretrain."""
    student, params, teacher, teacher_params = core.resolve_models(options)
    model = build_model(student, params, device, options.init or "initial parameters")
    teacher_model = None
    if teacher is not None:
        teacher_model = build_model(teacher, teacher_params, device, options.teacher)
    return Engine(options, model, teacher_model, rank, world), student


def pretrain(options: core.PretrainOptions, device: Optional[str] = None) -> List[Dict]:
    """Run a whole pretraining job (one process, or one torchrun worker)."""
    rank, world, auto = init_distributed()
    engine, student = build_engine(options, rank, world, device or auto)
    stream, eval_stream = core.make_streams(options, student)
    return core.run_pretraining(engine, options, stream, eval_stream,
                                meta={"framework": "torch", "workers": world})
