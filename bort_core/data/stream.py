"""The pretraining batch stream: shards -> global padded MLM batches, a pure function of
(files, options, position), so a run resumes at any batch without replaying.

Data: every batch of every shard, every epoch (the release used only the first batch of each
file: bug P1). Per epoch the shards are visited in a seeded order; each shard is cut into
length buckets and bucket batches (`bucket_batches`), shuffled with the same seed. A batch is a
GLOBAL batch: worker r of W trains on `np.array_split(rows, W)[r]` (a worker left without rows
adds nothing but still takes part in the all-reduce), so W workers see the same batches as one
worker and compute the same update (the release's per-file split made the data depend on W).

Batches follow `--batching` (bort_core.data.bucketing): `balanced` (ours) or `release`
(gluonnlp 0.8.3's FixedBucketSampler with use_average_length).
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence

import numpy as np

from bort_core.data.bucketing import bucket_batches, release_bucket_batches
from bort_core.data.shards import load_shard

PAD_ID = 1      # RoBERTa's <pad>; padded ids never reach the output


def collate(shard: Dict[str, list], rows: np.ndarray) -> Dict[str, np.ndarray]:
    """A padded MLM batch (the Backend protocol's layout) from instances `rows` of a shard."""
    lengths = shard["valid_lengths"][rows]
    length, m = int(lengths.max()), max(1, max(len(shard["masked_lm_ids"][r]) for r in rows))
    ids = np.full((len(rows), length), PAD_ID, dtype=np.int32)
    pos = np.zeros((len(rows), m), dtype=np.int32)
    mids = np.zeros((len(rows), m), dtype=np.int32)
    weights = np.zeros((len(rows), m), dtype=np.float32)
    for k, r in enumerate(rows):
        ids[k, :lengths[k]] = shard["input_ids"][r]
        n = len(shard["masked_lm_ids"][r])
        pos[k, :n] = shard["masked_lm_positions"][r]
        mids[k, :n] = shard["masked_lm_ids"][r]
        weights[k, :n] = shard["masked_lm_weights"][r]
    return {"input_ids": ids, "valid_length": lengths.astype(np.int32), "masked_positions": pos,
            "masked_ids": mids, "masked_weights": weights}



class BatchStream:
    """The global batches of a run, a pure function of (files, options, epoch): every batch of
    every shard (P1 fixed). `batches(start)` resumes at any position without replaying.

    Shards are read lazily and one at a time (the current one stays cached). `batching`
    "release" cuts buckets as the release's sampler did (bort_core.data.bucketing); `shuffle=False`
    keeps the shard order and the unshuffled batch order (the fidelity check's fixed order)."""

    def __init__(self, files: Sequence[str], tokens_per_batch: int, num_buckets: int = 20,
                 use_avg_len: bool = True, seed: int = 0, vocab_size: Optional[int] = None,
                 max_length: Optional[int] = None, batching: str = "balanced",
                 shuffle: bool = True):
        if not files:
            raise ValueError("no shard files given")
        self.files, self.seed = list(files), seed
        self.limits = {"vocab_size": vocab_size, "max_length": max_length}
        self.tokens, self.buckets, self.avg = tokens_per_batch, num_buckets, use_avg_len
        self.batching, self.shuffle = batching, shuffle
        self._cache = (None, None)
        self._counts = None

    def shard(self, path):
        if self._cache[0] != path:
            self._cache = (path, load_shard(path, **self.limits))
        return self._cache[1]

    def _plan(self, epoch, path):
        rng = np.random.RandomState([self.seed, epoch, self.files.index(path)])
        lengths = self.shard(path)["valid_lengths"]
        if self.batching == "release" and self.avg:
            return release_bucket_batches(lengths, self.tokens, self.buckets,
                                          rng if self.shuffle else None)
        return bucket_batches(lengths, self.tokens, self.buckets, rng, self.avg)

    def epoch_files(self, epoch):
        if not self.shuffle:
            return list(self.files)
        order = np.random.RandomState([self.seed, epoch]).permutation(len(self.files))
        return [self.files[i] for i in order]

    def validate(self):
        """Load (and so check) every shard once; returns the batch count of one epoch."""
        self._counts = {path: len(self._plan(0, path)) for path in self.files}
        return sum(self._counts.values())

    def batches(self, start: int = 0, epochs: Optional[int] = None) -> Iterator[Dict]:
        """Global batches from position `start` on (endlessly unless `epochs` is given)."""
        if self._counts is None:
            self.validate()
        per_epoch = sum(self._counts.values())
        epoch, skip = divmod(start, per_epoch)
        while epochs is None or epoch < epochs:
            for path in self.epoch_files(epoch):
                if skip >= self._counts[path]:
                    skip -= self._counts[path]
                    continue
                shard = self.shard(path)
                for rows in self._plan(epoch, path)[skip:]:
                    yield collate(shard, rows)
                skip = 0
            epoch += 1



class BatchList:
    """Given batches as a stream (cycled), for callers that bring their own (parity, Backend)."""

    def __init__(self, batches: Sequence[Dict[str, np.ndarray]]):
        self.items = list(batches)
        if not self.items:
            raise ValueError("no batches given")

    def batches(self, start: int = 0, epochs: Optional[int] = None) -> Iterator[Dict]:
        end = None if epochs is None else epochs * len(self.items)
        position = start
        while end is None or position < end:
            yield self.items[position % len(self.items)]
            position += 1



def worker_slice(batch: Dict[str, np.ndarray], rank: int, world: int):
    """Worker `rank`'s rows of a global batch (`np.array_split` order); None when a batch has
    fewer rows than workers and this one gets none (it then adds nothing but still syncs)."""
    if world == 1:
        return batch
    rows = np.array_split(np.arange(len(batch["valid_length"])), world)[rank]
    return {k: v[rows] for k, v in batch.items()} if len(rows) else None
