"""Task fine-tuning steps in PyTorch: the twin of bort_gluon.finetune.

`Trainer` and `predict` are what `bort_torch.backend.Backend` delegates to; the loop around them
(epochs, schedule, dev evaluation, test files) is `bort_core.finetune`. A `Trainer` holds one
run's optimizer (BERTAdam, weight decay except LayerNorm/bias) and step count, so a run split
into epochs follows one schedule, and a new run (new hparams) starts a new Trainer. float16:
autocast + dynamic loss scaling; gradients are unscaled BEFORE the global-norm clip (FIX F5: the
release clipped the scaled gradients).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, List

import numpy as np
import torch
import torch.nn.functional as F

from bort_core import finetune as core
from bort_core import optim
from bort_torch.model import device_of, named_parameters
from bort_torch.pretrain import BERTAdam, clip_gradients


def _tensors(batch, device):
    return (torch.from_numpy(np.ascontiguousarray(batch["input_ids"])).long().to(device),
            torch.from_numpy(np.ascontiguousarray(batch["valid_length"])).long().to(device))


def loss_fn(logits, labels):
    """Mean softmax cross-entropy, or 0.5 * mean squared error for one output (regression,
    GluonNLP's L2Loss)."""
    if logits.shape[-1] == 1 and labels.dtype.is_floating_point:
        return 0.5 * ((logits[:, 0].float() - labels) ** 2).mean()
    return F.cross_entropy(logits.float(), labels.long())


class Trainer:
    """One fine-tuning run of `model` under `hparams`: BERTAdam, loss scaler and step count,
    kept across `train` calls."""

    def __init__(self, model, hparams: Dict):
        torch.manual_seed(hparams.get("seed", 0))
        self.model, self.hparams = model, hparams
        named = named_parameters(model)
        groups = [{"params": [p for n, p in named.items() if optim.decays(n)]},
                  {"params": [p for n, p in named.items() if not optim.decays(n)],
                   "weight_decay": 0.0}]
        self.params = list(named.values())
        self.optimizer = BERTAdam(groups, lr=hparams["lr"], eps=hparams.get("epsilon", 1e-6),
                                  weight_decay=hparams["weight_decay"])
        self.step = 0
        self.fp16 = hparams.get("dtype", "float32") == "float16"
        self.scaler = torch.amp.GradScaler(device_of(model).type, enabled=self.fp16)

    def train(self, batches: Iterable[Dict], steps: int) -> List[Dict]:
        """`steps` BERTAdam updates (dropout on); per-step rows {step, loss, lr, grad_norm}."""
        model, hparams = self.model, self.hparams
        device = device_of(model)
        model.train()
        rows = []
        autocast = torch.autocast(device.type, dtype=torch.float16) if self.fp16 \
            else contextlib.nullcontext()
        for batch in core.take_steps(batches, steps):
            lr = optim.finetuning_lr(self.step, hparams)
            inputs, valid = _tensors(batch, device)
            labels = torch.from_numpy(np.ascontiguousarray(batch["labels"])).to(device)
            with autocast:
                logits = model(inputs, valid)
            loss = loss_fn(logits, labels)
            self.optimizer.zero_grad(set_to_none=False)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            grads = [p.grad for p in self.params if p.grad is not None]
            norm = clip_gradients(grads, hparams.get("clip_norm", 1.0))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            rows.append(core.step_row(self.step, float(loss.detach()), lr, norm, hparams))
        return rows


@torch.no_grad()
def predict(model, batches: Iterable[Dict]) -> np.ndarray:
    """Logits (N, C) in batch order, eval mode (dropout off), float32."""
    device = device_of(model)
    was_training = model.training
    model.eval()
    try:
        out = [model(*_tensors(b, device)).float().cpu().numpy() for b in batches]
    finally:
        model.train(was_training)
    return np.concatenate(out, axis=0).astype(np.float32)


@torch.no_grad()
def predict_mlm(model, batches: Iterable[Dict]) -> List[np.ndarray]:
    """MLM logits (B, M, V) at each batch's `masked_positions`, eval mode, one array a batch
    (what Agora's masked-LM resampling draws replacement tokens from)."""
    device = device_of(model)
    model.eval()
    out = []
    for b in batches:
        inputs, valid = _tensors(b, device)
        positions = torch.from_numpy(np.ascontiguousarray(b["masked_positions"])).long()
        _, logits = model(inputs, valid, positions.to(device))
        out.append(logits.float().cpu().numpy())
    return out
