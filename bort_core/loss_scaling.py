"""Dynamic loss scaling for float16 pretraining: ours and the 2020 release's.

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
