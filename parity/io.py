"""The on-disk formats the parity suite exchanges between Python environments.

Inputs (`.npz`): `input_ids` (B, L) int32, `valid_length` (B,) int32, `masked_positions`
(B, M) int32. Taps (`.npz`): one float32 array per tap name: `embed` (B, L, H) the embedding
LayerNorm output; `layer{i}` (B, L, H) the output of transformer cell i with positions beyond
valid_length zeroed (as GluonNLP returns them); `sequence_output` (= the last layer);
`mlm_logits` (B, M, V); optionally `classifier_logits` (B, C).
Kept Python-3.7 / numpy-1.16 compatible: the legacy (2020) environment writes these too.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

INPUT_KEYS = ("input_ids", "valid_length", "masked_positions")


def make_inputs(batch_size=4, seq_len=32, vocab_size=50265, num_masked=5, seed=0):
    """A padded batch with distinct valid lengths (the longest one unpadded), special tokens
    `<s>`=0 / `</s>`=2 / `<pad>`=1 placed as RoBERTa's vocabulary has them."""
    if seq_len < 4 or num_masked < 1:
        raise ValueError("make_inputs needs seq_len >= 4 and num_masked >= 1")
    rng = np.random.RandomState(seed)
    lengths = np.linspace(seq_len, max(4, seq_len // 3), batch_size).astype(np.int32)
    ids = rng.randint(4, vocab_size, size=(batch_size, seq_len)).astype(np.int32)
    positions = np.zeros((batch_size, num_masked), dtype=np.int32)
    for b, n in enumerate(lengths):
        ids[b, 0], ids[b, n - 1], ids[b, n:] = 0, 2, 1
        positions[b] = np.sort(rng.choice(np.arange(1, n - 1), size=num_masked, replace=n - 2 < num_masked))
    return {"input_ids": ids, "valid_length": lengths, "masked_positions": positions}


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path to write in place of `path`: it replaces `path` with one rename once
    the block ends without error, and is removed otherwise. The temp is named as by
    `bort_core.io.temp_name` (`.<name>.<pid>-<8 hex>.tmp`, which its `remove_orphans`
    recognises): the parity package's writers also run under the legacy Python 3.7, which
    cannot import bort_core."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, ".%s.%d-%s.tmp" % (name, os.getpid(), os.urandom(4).hex()))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _atomic_savez(path, arrays):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def save_inputs(path, inputs):
    missing = [k for k in INPUT_KEYS if k not in inputs]
    if missing:
        raise ValueError("inputs lack %s" % ", ".join(missing))
    _atomic_savez(path, {k: np.asarray(inputs[k], dtype=np.int32) for k in INPUT_KEYS})


def load_inputs(path):
    if not os.path.exists(path):
        raise FileNotFoundError("inputs file %s does not exist (make one with "
                                "`python -m parity inputs --out %s`)" % (path, path))
    with np.load(path) as data:
        missing = [k for k in INPUT_KEYS if k not in data.files]
        if missing:
            raise ValueError("%s: missing array(s) %s; an inputs file holds %s"
                             % (path, ", ".join(missing), ", ".join(INPUT_KEYS)))
        inputs = {k: data[k].astype(np.int32) for k in INPUT_KEYS}
    b, length = inputs["input_ids"].shape
    if inputs["valid_length"].shape != (b,) or inputs["masked_positions"].shape[0] != b:
        raise ValueError("%s: valid_length must be (%d,) and masked_positions (%d, M)" % (path, b, b))
    if (inputs["valid_length"] < 1).any() or (inputs["valid_length"] > length).any():
        raise ValueError("%s: valid_length must lie in [1, %d]" % (path, length))
    return inputs


def save_taps(path, taps):
    _atomic_savez(path, {k: np.asarray(v, dtype=np.float32) for k, v in taps.items()})


def load_taps(path):
    if not os.path.exists(path):
        raise FileNotFoundError("tap dump %s does not exist" % path)
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def random_params(config, seed=0, num_classes=None, sigma=0.02):
    """Non-trivial canonical parameters: normal(0, sigma) weights, normal(0, 0.1) biases and
    betas, 1 + normal(0, 0.1) gammas. With `num_classes`, a dropout-free BortClassifier's
    parameters (backbone names prefixed `bort.`)."""
    from bort_core.arch import canonical_shapes, classifier_shapes

    rng = np.random.RandomState(seed)
    shapes = canonical_shapes(config)
    if num_classes:
        shapes = dict([("bort." + k, v) for k, v in shapes.items()]
                      + list(classifier_shapes(config, num_classes, dropout=0.0).items()))
    params = {}
    for name, shape in shapes.items():
        if name.endswith(".gamma"):
            value = 1.0 + rng.normal(0.0, 0.1, shape)
        elif name.endswith((".beta", ".bias")):
            value = rng.normal(0.0, 0.1, shape)
        else:
            value = rng.normal(0.0, sigma, shape)
        params[name] = value.astype(np.float32)
    return params
