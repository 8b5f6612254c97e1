"""Compare two tap dumps tap by tap against the tolerances of DESIGN.md."""
from __future__ import annotations

import re

import numpy as np

HIDDEN_TOLERANCE = 1e-5   # max abs, hidden states (embed, layer{i}, sequence_output)
LOGIT_TOLERANCE = 2e-5    # max abs, logits (mlm_logits, classifier_logits)


def tolerance(tap: str) -> float:
    return LOGIT_TOLERANCE if tap.endswith("logits") else HIDDEN_TOLERANCE


def _order(tap: str):
    layer = re.match(r"layer(\d+)$", tap)
    rank = {"embed": 0, "sequence_output": 2, "mlm_logits": 3, "classifier_logits": 4}
    return (rank.get(tap, 1), int(layer.group(1)) if layer else 0, tap)


def compare_taps(a, b, tolerances=None):
    """One row per tap present in both dumps: max abs / max rel error and the verdict.
    Taps present in only one dump, or of different shapes, are rows that fail."""
    rows = []
    for tap in sorted(set(a) | set(b), key=_order):
        tol = (tolerances or {}).get(tap, tolerance(tap))
        row = {"tap": tap, "tolerance": tol}
        if tap not in a or tap not in b:
            row.update(ok=False, error="only in %s" % ("first" if tap in a else "second"))
        elif a[tap].shape != b[tap].shape:
            row.update(ok=False, error="shapes differ: %s vs %s" % (a[tap].shape, b[tap].shape))
        else:
            diff = np.abs(a[tap].astype(np.float64) - b[tap].astype(np.float64))
            scale = np.abs(b[tap]).max()
            row.update(shape=list(a[tap].shape), max_abs=float(diff.max()),
                       max_rel=float(diff.max() / scale) if scale else 0.0,
                       ok=bool(np.isfinite(diff).all() and diff.max() <= tol))
        rows.append(row)
    return rows


def format_table(rows) -> str:
    lines = ["%-18s %-18s %12s %12s %10s  %s" % ("tap", "shape", "max_abs", "max_rel", "tol", "ok")]
    for r in rows:
        if "error" in r:
            lines.append("%-18s %-18s %12s %12s %10.0e  FAIL (%s)"
                         % (r["tap"], "-", "-", "-", r["tolerance"], r["error"]))
        else:
            lines.append("%-18s %-18s %12.3e %12.3e %10.0e  %s"
                         % (r["tap"], "x".join(map(str, r["shape"])), r["max_abs"], r["max_rel"],
                            r["tolerance"], "ok" if r["ok"] else "FAIL"))
    return "\n".join(lines)
