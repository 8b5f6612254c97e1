"""The optimizer's arithmetic, framework-neutral: BERTAdam's formula and decay mask, the
learning-rate schedules, gradient clipping and float16 loss scaling.

BERTAdam (both frameworks): Adam without bias correction, decoupled weight decay:
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  w -= lr * (m / (sqrt(v) + eps) + wd * w)
b1 0.9, b2 0.999, eps 1e-6, wd 0.01; no decay for LayerNorm gains/shifts and biases (`decays`).
The gradient g is clipped to a global L2 norm (`clip_factor`, 0 = off) after loss-scale removal.

Learning rates (the release's): pretraining at 1-based step s of N with W warm-up steps:
lr * s / W while s <= W, then lr * (1 - s / N); fine-tuning in `finetuning_lr`.

Dynamic loss scaling for float16 pretraining, ours and the 2020 release's:
`--loss-scaler halve` (ours): the scale halves on every non-finite gradient and doubles after
`window` finite steps in a row. `--loss-scaler release` (set by `--recipe release`): the
release's `DynamicLossScaler` (utils/fp16_utils.py), described here in our words:

* a step counter n (0 for the first step), the step of the last overflow (initially -1), of
  the last rescale (initially -1) and the overflows counted since that rescale;
* on an overflow at step n: count it; when overflows / (n - last rescale) >= tolerance (0.01)
  the scale is divided by 2, the rescale step becomes n and the count restarts at 0 (below
  that share the step is skipped and the scale kept);
* on a finite step n: when (n - last overflow) is a multiple of the window the scale doubles
  and the rescale step becomes n (so without overflows it grows at n = window - 1,
  2 * window - 1, ...);
* the release starts at 1.5 ** 15 with a window of 2000 / workers. Its window was a float
  when the workers did not divide 2000, and then the scale never grew (bug P7): ours is the
  integer max(1, window // workers). The release let the scale fall below 1 with a warning;
  our loop stops with an error when a step overflows at a scale of 1 or less.
Either way an overflowing step is skipped (no update) and counted in `skipped`.
"""
from __future__ import annotations

from typing import Dict

NO_DECAY = (".gamma", ".beta", ".bias")    # suffixes of canonical names without weight decay
LR_FLOOR = 1e-7                            # fine-tuning's schedule never goes below


def decays(name: str) -> bool:
    """Whether BERTAdam applies weight decay to the canonical parameter `name` (`bort.`-prefixed
    or not): all but LayerNorm gains/shifts and biases."""
    return not name.endswith(NO_DECAY)


def pretraining_lr(step: int, options) -> float:
    """The release's pretraining schedule at optimizer step `step` (1-based) of a run's options
    (`lr`, `warmup_steps`, `num_steps`)."""
    warm = options.warmup_steps
    if step <= warm:
        return options.lr * step / warm
    return options.lr * max(0.0, 1.0 - step / options.num_steps)


def finetuning_lr(step: int, hparams: Dict) -> float:
    """The release's fine-tuning schedule at 0-based update `step`: lr * step / W during the
    W = int(total * warmup_ratio) warm-up steps (so update 0 has lr 0), then a linear decay
    to 0 at `total_steps`, never below LR_FLOOR."""
    lr, total = hparams["lr"], max(1, int(hparams["total_steps"]))
    warm = int(total * hparams["warmup_ratio"])
    if step < warm:
        return lr * step / warm
    return max(lr * (1.0 - (step - warm) / max(1, total - warm)), LR_FLOOR)


def clip_factor(norm: float, clip_norm: float) -> float:
    """GluonNLP's clip_grad_global_norm factor: min(1, clip / (norm + 1e-8)); 1 when off."""
    return min(1.0, clip_norm / (norm + 1e-8)) if clip_norm > 0 else 1.0


# ------------------------------------------------------------------------------ loss scaling

LOSS_SCALERS = ("halve", "release")
RELEASE_INITIAL_SCALE = 1.5 ** 15
RELEASE_TOLERANCE = 0.01
RELEASE_WINDOW = 2000         # optimizer steps, divided by the number of workers


class LossScaler:
    """Ours: halve on a non-finite gradient (the step is skipped and counted), double after
    `window` finite steps in a row (an integer: P7)."""

    def __init__(self, scale: float = 2.0 ** 15, window: int = 2000, enabled: bool = True):
        self.scale = float(scale) if enabled else 1.0
        self.window, self.enabled = int(window), enabled
        self.good, self.skipped = 0, 0

    def update(self, finite: bool) -> None:
        if not self.enabled:
            return
        if not finite:
            self.scale, self.good = max(self.scale / 2.0, 1.0), 0
            self.skipped += 1
            return
        self.good += 1
        if self.good % self.window == 0:
            self.scale *= 2.0

    def state(self) -> Dict:
        return {"scale": self.scale, "good": self.good, "skipped": self.skipped}

    def load(self, state: Dict) -> None:
        self.scale, self.good, self.skipped = state["scale"], state["good"], state["skipped"]


class ReleaseLossScaler(LossScaler):
    """The release's tolerant scaler (module docstring)."""

    def __init__(self, scale: float = RELEASE_INITIAL_SCALE, window: int = RELEASE_WINDOW,
                 enabled: bool = True, tolerance: float = RELEASE_TOLERANCE):
        super().__init__(scale, window, enabled)
        self.tolerance = tolerance
        self.step, self.last_overflow, self.last_rescale, self.overflows = 0, -1, -1, 0

    def update(self, finite: bool) -> None:
        if not self.enabled:
            return
        if not finite:
            self.skipped += 1
            self.last_overflow = self.step
            self.overflows += 1
            if self.overflows / float(self.step - self.last_rescale) >= self.tolerance:
                self.scale /= 2.0
                self.last_rescale, self.overflows = self.step, 0
        elif (self.step - self.last_overflow) % self.window == 0:
            self.scale *= 2.0
            self.last_rescale = self.step
        self.step += 1

    def state(self) -> Dict:
        return dict(super().state(), step=self.step, last_overflow=self.last_overflow,
                    last_rescale=self.last_rescale, overflows=self.overflows)

    def load(self, state: Dict) -> None:
        super().load(state)
        self.step, self.last_overflow = state["step"], state["last_overflow"]
        self.last_rescale, self.overflows = state["last_rescale"], state["overflows"]


def make_scaler(kind: str, scale: float, window: int, enabled: bool,
                workers: int = 1) -> LossScaler:
    """The scaler `--loss-scaler kind` names; the release's window is per run, divided by the
    number of workers as the release did (an integer, at least 1)."""
    if kind == "release":
        return ReleaseLossScaler(scale, max(1, int(window) // max(1, workers)), enabled)
    return LossScaler(scale, window, enabled)
