"""What is measured: the frameworks, dtypes, modes and devices the harness knows, workload
presets, and the model FLOPs of one timed step."""
from __future__ import annotations

from bort_core.arch import forward_flops
from parity import io

FRAMEWORKS = ("torch", "torch-compile", "torch-plain", "gluon", "gluonnlp", "hf", "onnx")
DTYPES = ("float32", "float16", "bfloat16")
MODES = ("inference", "train")
DEVICES = ("cpu", "cuda")
# GluonNLP's backbone benchmark (scripts/benchmarks/benchmark_gluonnlp.py): its (batch, seq)
# pairs from (1, 128) to (32, 512).
PRESETS = {
    "gluonnlp-inference": [(1, 128), (1, 384), (1, 512), (8, 32), (8, 128), (8, 512), (32, 512)],
    "gluonnlp-train": [(4, 128), (8, 128), (16, 128), (32, 128), (1, 512), (2, 512), (4, 512),
                       (8, 512)],
}
MASKED_FRACTION = 0.15
TRAIN_FLOPS_FACTOR = 3   # forward + backward ~ 3x forward


def parse_list(text, allowed, what):
    """'a,b' -> ['a', 'b'], every item in `allowed` (a clear error naming the flag)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if allowed is not None and t not in allowed]
    if not items or bad:
        raise ValueError("%s: unknown %s; choose from %s" % (what, ", ".join(bad) or "(empty)",
                                                            ", ".join(allowed)))
    return items


def workloads(preset=None, batch=None, seq=None):
    """[(batch, seq), ...] from a preset name, or the single pair given."""
    if preset:
        if preset not in PRESETS:
            raise ValueError("--preset: unknown %r; choose from %s" % (preset, ", ".join(PRESETS)))
        return list(PRESETS[preset])
    if not batch or not seq or batch < 1 or seq < 4:
        raise ValueError("--batch-size must be >= 1 and --seq-len >= 4 (got %s, %s)" % (batch, seq))
    return [(batch, seq)]


def num_masked(seq):
    return max(1, int(round(MASKED_FRACTION * seq)))


def step_flops(config, batch, seq, mode):
    """Model FLOPs (matmuls, 2 per multiply-add) of one timed step: the backbone forward for
    inference; forward + backward (3x) of backbone and MLM decoder for training."""
    if mode == "inference":
        return batch * forward_flops(config, seq)["matmul"]
    return TRAIN_FLOPS_FACTOR * batch * forward_flops(config, seq, num_masked(seq))["matmul"]


def make_batch(config, batch, seq, seed):
    """The timed inputs: `parity.io.make_inputs` with the masked share of the workload."""
    return io.make_inputs(batch, seq, config.vocab_size, num_masked(seq), seed)
