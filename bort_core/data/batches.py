"""Fine-tuning batches as numpy arrays, the same for both frameworks: padded rows, length
buckets (equal-count, or the release's equal-width), seeded shuffled training epochs and
evaluation batches in file order."""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np


def pad_rows(rows: Sequence[np.ndarray], pad_id: int) -> np.ndarray:
    """(B, longest) int32 rows padded with `pad_id`."""
    out = np.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def make_batch(features: Dict, rows: Sequence[int], pad_id: int = 1) -> Dict[str, np.ndarray]:
    """One batch of `rows`, padded to its longest row with `pad_id`."""
    batch = {"input_ids": pad_rows([features["input_ids"][i] for i in rows], pad_id),
             "valid_length": np.asarray(features["valid_length"], np.int32)[list(rows)]}
    if "label" in features:
        labels = np.asarray(features["label"])[list(rows)]
        batch["labels"] = labels.astype(np.float32 if labels.dtype.kind == "f" else np.int64)
    return batch


def length_buckets(lengths, num_buckets: int, scheme: str = "count") -> List[np.ndarray]:
    """Row indices per length bucket, shortest first, empty buckets dropped. "count": the rows
    sorted by length cut into `num_buckets` near-equal parts; "width" (the release's GluonNLP
    FixedBucketSampler): keys max, max - w, ... (w = (1 + max - min) // num_buckets, at least
    1, none below min), each row in the smallest key not below its length."""
    lengths = np.asarray(lengths)
    if scheme == "count":
        order = np.argsort(lengths, kind="mergesort")
        return [b for b in np.array_split(order, min(num_buckets, len(order))) if len(b)]
    keys = width_keys(lengths, num_buckets)
    slot = np.searchsorted(keys, lengths)
    return [b for b in (np.flatnonzero(slot == k) for k in range(len(keys))) if len(b)]


def width_keys(lengths, num_buckets: int) -> np.ndarray:
    """The equal-width bucket keys (longest length each bucket takes), ascending."""
    top, low = int(np.max(lengths)), int(np.min(lengths))
    width = max((1 + top - low) // num_buckets, 1)
    return np.array(sorted({max(top - i * width, low) for i in range(num_buckets)}))


def train_batches(features: Dict, batch_size: int, seed: int, num_buckets: int = 15,
                  pad_id: int = 1, scheme: str = "count") -> List[Dict[str, np.ndarray]]:
    """One epoch: rows grouped into `num_buckets` length buckets (`length_buckets`), shuffled
    inside each bucket, cut into batches, batches shuffled (a seeded numpy RNG: the same
    batches in both frameworks)."""
    rng = np.random.RandomState(seed)
    batches = []
    for bucket in length_buckets(features["valid_length"], num_buckets, scheme):
        bucket = bucket[rng.permutation(len(bucket))]
        batches += [bucket[i:i + batch_size] for i in range(0, len(bucket), batch_size)]
    return [make_batch(features, batches[i], pad_id) for i in rng.permutation(len(batches))]


def eval_batches(features: Dict, batch_size: int, pad_id: int = 1) -> List[Dict[str, np.ndarray]]:
    """The split in file order, `batch_size` rows a batch."""
    n = len(features["valid_length"])
    return [make_batch(features, range(i, min(n, i + batch_size)), pad_id)
            for i in range(0, n, batch_size)]
