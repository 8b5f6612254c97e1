"""Length-bucketed batches of pretraining instances: this project's balanced split and the
2020 release's (gluonnlp 0.8.3's `FixedBucketSampler` with `use_average_length=True`).

Both return index arrays that cover every instance exactly once; `BatchStream` turns them into
padded batches. `--batching {balanced,release}` picks one (`--recipe release` picks `release`).
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from bort_core.data.batches import width_keys

BATCHINGS = ("balanced", "release")


def bucket_batches(lengths: np.ndarray, tokens_per_batch: int, num_buckets: int,
                   rng: np.random.RandomState, use_avg_len: bool = True) -> List[np.ndarray]:
    """Our batches, grouped by length.

    Bucket keys are `num_buckets` evenly spaced lengths up to the longest; an instance goes to
    the first bucket whose key is >= its length. A bucket is cut into balanced batches of at
    most max(1, tokens_per_batch // L) rows, L the bucket's mean length (`use_avg_len`) or its
    key (so a padded batch never exceeds the budget). Rows are shuffled inside buckets and
    batches across buckets.
    """
    lengths = np.asarray(lengths)
    if len(lengths) == 0:
        return []
    top, low = int(lengths.max()), int(lengths.min())
    keys = np.unique(np.linspace(low, top, num=max(1, num_buckets)).round().astype(np.int64))
    keys[-1] = top
    which = np.searchsorted(keys, lengths, side="left")
    batches = []
    for b, key in enumerate(keys):
        members = np.flatnonzero(which == b)
        if not len(members):
            continue
        rng.shuffle(members)
        size = float(lengths[members].mean()) if use_avg_len else float(key)
        rows = max(1, int(tokens_per_batch // max(size, 1.0)))
        batches.extend(np.array_split(members, -(-len(members) // rows)))   # balanced sizes
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def release_bucket_keys(lengths: np.ndarray, num_buckets: int) -> np.ndarray:
    """The release's bucket keys: gluonnlp 0.8.3's equal-width keys, the same rule as the
    fine-tuning sampler's (`bort_core.data.batches.width_keys`)."""
    return width_keys(lengths, num_buckets)


def release_batch_sizes(lengths: np.ndarray, members: List[np.ndarray],
                        tokens_per_batch: int) -> List[int]:
    """Rows per batch of each bucket: max(int(tokens / (mean + std)), 1), mean and population
    std of the bucket's lengths."""
    sizes = []
    for rows in members:
        bucket = np.asarray(lengths)[rows].astype(np.float64)
        sizes.append(max(int(tokens_per_batch / (bucket.mean() + bucket.std())), 1))
    return sizes


def release_bucket_batches(lengths: np.ndarray, tokens_per_batch: int, num_buckets: int,
                           rng: Optional[np.random.RandomState] = None) -> List[np.ndarray]:
    """The release's batches: each instance in the bucket with the smallest key >= its length
    (empty buckets dropped); a bucket is cut, in order, into chunks of its batch size (the last
    chunk holds the rest). Without `rng`: the longest bucket first, rows in index order (the
    sampler unshuffled); with it, rows are shuffled inside buckets and the batch order is
    permuted, as the sampler's shuffle does (with its own random stream)."""
    lengths = np.asarray(lengths)
    if len(lengths) == 0:
        return []
    keys = release_bucket_keys(lengths, num_buckets)
    which = np.searchsorted(keys, lengths, side="left")
    members = [np.flatnonzero(which == b) for b in range(len(keys))]
    members = [m for m in members if len(m)]
    sizes = release_batch_sizes(lengths, members, tokens_per_batch)
    batches = []
    for rows, size in zip(members[::-1], sizes[::-1]):
        if rng is not None:
            rng.shuffle(rows)
        batches.extend(rows[i:i + size] for i in range(0, len(rows), size))
    if rng is None:
        return batches
    return [batches[i] for i in rng.permutation(len(batches))]
