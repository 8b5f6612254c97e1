"""The Backend protocol (bort_core.backend) on MXNet/GluonNLP: the twin of bort_torch.backend.

MLM training and evaluation run the pretraining Engine (bort_gluon.pretrain); classification
training and prediction are bort_gluon.finetune's. Fresh models start from the numpy-drawn
release initialisation (`bort_core.arch.initial_params`), so both backends build the same
weights for a seed.
"""
from __future__ import annotations

from typing import Optional

import mxnet as mx
import numpy as np

from bort_core import pretrain as core
from bort_core.arch import initial_params
from bort_core.backend import median_seconds
from bort_core.configs import BortConfig
from bort_gluon import model as gm
from bort_gluon.pretrain import Engine


class Backend(core.BackendBase):
    name = "gluon"
    engine = Engine

    def build(self, config: BortConfig, seed: int = 0, num_classes: Optional[int] = None):
        mx.random.seed(seed)
        model = gm.BortModel(config)
        block = gm.BortClassifier(model, num_classes, dropout=config.classifier_dropout) \
            if num_classes else model
        gm.set_params(model, initial_params(config, seed), "initial parameters")
        return block

    def latency(self, model, batch_size: int, seq_len: int, repeats: int = 10) -> float:
        bort = model.bort if isinstance(model, gm.BortClassifier) else model
        rng = np.random.RandomState(0)
        ids = mx.nd.array(rng.randint(4, bort.config.vocab_size, (batch_size, seq_len)))
        valid = mx.nd.full((batch_size,), seq_len)

        def forward():
            out = model(ids, valid)
            (out[0] if isinstance(out, (list, tuple)) else out).wait_to_read()

        return median_seconds(forward, repeats)
