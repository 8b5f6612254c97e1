"""The Backend protocol: the only way extraction (OSE) and Agora touch a framework.

`bort_gluon.backend.Backend` and `bort_torch.backend.Backend` implement it; `get_backend(name)`
picks one at run time. Everything crossing this boundary is framework-neutral: configs, numpy
batches (dicts of arrays in the parity/pretraining formats), paths, floats and dicts of floats.
A "model" is an opaque handle owned by the backend.
`load_framework` imports a framework package by name: the one place bort_core reaches one.

Batches
- MLM batch: `input_ids` (B, L) int32, `valid_length` (B,) int32, `masked_positions` (B, M)
  int32, `masked_ids` (B, M) int32, `masked_weights` (B, M) float32 (0 for padding slots).
- Classification batch: `input_ids`, `valid_length`, `labels` (B,) int64 or float32 (regression).

Hyper-parameters (`hparams`, a dict): `lr`, `weight_decay`, `warmup_ratio`, `batch_size`,
`seed`, `clip_norm`, and, for distillation, `temperature`, `mlm_weight`, `teacher_ce_weight`.
"""
from __future__ import annotations

import importlib
import time
from typing import Dict, Iterable, List, Optional

import numpy as np

from bort_core.configs import BortConfig
from bort_core.deps import MissingDependency

try:  # Protocol is 3.8+; the legacy (3.7) env never needs this module's typing
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object

FRAMEWORKS = ("gluon", "torch")


def load_framework(name: str, module: str = ""):
    """Import `bort_<name>[.module]`, with an install hint when the framework is missing."""
    if name not in FRAMEWORKS:
        raise SystemExit("unknown framework %r; choose one of: %s" % (name, ", ".join(FRAMEWORKS)))
    target = "bort_%s%s" % (name, "." + module if module else "")
    try:
        return importlib.import_module(target)
    except ImportError as err:
        raise MissingDependency("--framework %s needs %s (%s); install it with: pip install -e "
                                "'.[%s]'" % (name, "MXNet + GluonNLP" if name == "gluon"
                                             else "PyTorch", err, name)) from err


class Backend(Protocol):
    name: str   # "gluon" or "torch"

    def build(self, config: BortConfig, seed: int = 0, num_classes: Optional[int] = None):
        """A freshly initialised model: MLM (backbone + tied decoder), or a BortClassifier."""

    def load(self, config: BortConfig, path: str, num_classes: Optional[int] = None):
        """A model from a canonical `.params` checkpoint."""

    def save(self, model, path: str) -> None:
        """Write the model as a canonical `.params` checkpoint, atomically."""

    def train_mlm(self, model, batches: Iterable[Dict], steps: int, hparams: Dict,
                  teacher=None) -> List[Dict[str, float]]:
        """`steps` optimizer steps of MLM (+ distillation from `teacher`); per-step log rows."""

    def evaluate_mlm(self, model, batches: Iterable[Dict], teacher=None) -> Dict[str, float]:
        """`mlm_loss`, `mlm_acc` (and `kd_loss` with a teacher) over the batches, eval mode."""

    def cached_teacher(self, teacher):
        """`teacher` for `train_mlm`/`evaluate_mlm`, remembering each batch's encoder output
        at the masked positions: a batch seen before runs only the MLM decoder again. For
        trainings over the same batches (extraction's candidates), where the teacher's encoder
        would otherwise be most of every step; memory grows with the batches seen."""

    def trainer(self, model, hparams: Dict) -> "Trainer":
        """A new classification/regression fine-tuning run of `model` under `hparams`."""

    def train_classifier(self, model, batches: Iterable[Dict], steps: int,
                         hparams: Dict) -> List[Dict[str, float]]:
        """`trainer(model, hparams).train(batches, steps)`: a run of `steps` updates."""

    def predict(self, model, batches: Iterable[Dict]):
        """Logits (N, C) as one numpy array, in batch order, eval mode."""

    def predict_mlm(self, model, batches: Iterable[Dict]) -> List:
        """MLM logits (B, M, V) at each MLM batch's `masked_positions` (numpy, one array a
        batch), eval mode: what Agora's masked-LM resampling draws replacement tokens from."""

    def latency(self, model, batch_size: int, seq_len: int, repeats: int = 10) -> float:
        """Median seconds per forward of a (batch_size, seq_len) batch, warm-up excluded."""


class Trainer(Protocol):
    """One fine-tuning run: its optimizer state and step count live here, across `train` calls
    (a run split into epochs follows one schedule); a run with other hparams is a new Trainer."""

    def train(self, batches: Iterable[Dict], steps: int) -> List[Dict[str, float]]:
        """`steps` optimizer steps (dropout on); per-step rows {step, loss, lr, grad_norm}."""


def get_backend(name: str) -> Backend:
    """`bort_<name>.backend.Backend()`, with an install hint when the framework is missing."""
    return load_framework(name, "backend").Backend()


def median_seconds(fn, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return float(np.median(times))
