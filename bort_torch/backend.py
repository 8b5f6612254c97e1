"""The Backend protocol (bort_core.backend) on PyTorch: the twin of bort_gluon.backend.

MLM training and evaluation run the pretraining Engine (bort_torch.pretrain); classification
training and prediction are bort_torch.finetune's. Fresh models start from the numpy-drawn
release initialisation (`bort_core.arch.initial_params`), so both backends build the same
weights for a seed.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from bort_core import pretrain as core
from bort_core.arch import initial_params
from bort_core.backend import median_seconds
from bort_core.configs import BortConfig
from bort_torch import model as tm
from bort_torch.pretrain import Engine


class Backend(core.BackendBase):
    name = "torch"
    engine = Engine

    def build(self, config: BortConfig, seed: int = 0, num_classes: Optional[int] = None):
        model = tm.BortModel(config)
        tm.set_params(model, initial_params(config, seed), "initial parameters")
        if not num_classes:
            return model
        torch.manual_seed(seed)
        return tm.BortClassifier(model, num_classes, dropout=config.classifier_dropout)

    def latency(self, model, batch_size: int, seq_len: int, repeats: int = 10) -> float:
        bort = model.bort if isinstance(model, tm.BortClassifier) else model
        rng = np.random.RandomState(0)
        ids = torch.from_numpy(rng.randint(4, bort.config.vocab_size, (batch_size, seq_len)))
        valid = torch.full((batch_size,), seq_len, dtype=torch.long)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                return median_seconds(lambda: model(ids, valid), repeats)
        finally:
            model.train(was_training)
