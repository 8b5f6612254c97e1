"""Masked-LM shards on disk: both layouts read without running code, ours written without pickle.

A shard is an `.npz` file (a zip of `.npy` members) holding, per instance i,

    input_ids[i], segment_ids[i], masked_lm_positions[i], masked_lm_ids[i]   int32
    masked_lm_weights[i]                                                     float32

and, per shard, `next_sentence_labels` and `valid_lengths` (int32, shape (N,)). Two layouts:

- `flat` (ours, the default): every per-instance field is ONE 1-D numeric array, the instances
  concatenated; `valid_lengths` cuts `input_ids`/`segment_ids` and `masked_lm_counts` cuts the
  three masked fields. Plain arrays only, so `np.load` reads it with pickling off (numpy 1.16
  included).
- `2020` (the release's, for its `NumpyDataset(allow_pickle=True)` loader): per-instance fields
  are 1-D object arrays of arrays, stored as pickles (2-D numeric arrays when every length is
  equal).

`load_shard` reads either layout and never calls `np.load(allow_pickle=True)`: an object array
is rebuilt by `_NumpyOnlyUnpickler`, which admits the few numpy globals an array of arrays needs
and refuses any other (a crafted `__reduce__` names some other callable) before it is called,
naming the file and field. Everything read is then validated (fields, dtypes, lengths, ids
against the vocabulary, lengths against the model's `max_length`).
"""
from __future__ import annotations

import codecs
import glob
import os
import pickle
import zipfile
import zlib
from typing import Dict, List, Optional

import numpy as np

from bort_core import io as bio

FIELDS = ("input_ids", "masked_lm_ids", "masked_lm_positions", "masked_lm_weights",
          "next_sentence_labels", "segment_ids", "valid_lengths")
REQUIRED_FIELDS = ("input_ids", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights",
                   "valid_lengths")
TOKEN_FIELDS = ("input_ids", "segment_ids")                       # cut by valid_lengths
MASKED_FIELDS = ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights")  # by the counts
COUNTS = "masked_lm_counts"                                       # present in the flat layout only
LAYOUTS = ("flat", "2020")


def expand_shards(patterns: str) -> List[str]:
    """Sorted files matching comma-separated globs; an error names a pattern without matches."""
    files = []
    for part in filter(None, (patterns or "").split(",")):
        found = sorted(glob.glob(os.path.expanduser(part)))
        if not found:
            raise FileNotFoundError("no shard matches %s" % part)
        files.extend(found)
    return files


# ------------------------------------------------------------------------------------ reading

# The globals a pickled numpy array of arrays refers to: numpy's array rebuilder (whatever module
# the running numpy keeps it in: the one that pickled it may have named another), ndarray, dtype,
# and codecs.encode (Python 3's protocol-2 pickles of bytes).
_REBUILD = np.empty(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _REBUILD,
    ("numpy._core.multiarray", "_reconstruct"): _REBUILD,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: any other global is refused unimported."""

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                "it refers to %s.%s, and a shard may hold only numpy arrays" % (module, name)) \
                from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it holds a persistent reference, and a shard may hold only "
                                     "numpy arrays")


def _read_member(zf: zipfile.ZipFile, field: str) -> np.ndarray:
    """One `.npy` member of a zip, object arrays through `_NumpyOnlyUnpickler`."""
    fmt = np.lib.format
    with zf.open(field + ".npy") as f:
        version = fmt.read_magic(f)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject:
            if dtype != np.dtype(object):
                raise ValueError("a %s array, and a shard holds numbers or arrays of them" % dtype)
            arr = _NumpyOnlyUnpickler(f, encoding="latin1").load()
            if not isinstance(arr, np.ndarray) or arr.shape != tuple(shape):
                raise ValueError("its pickle is not the object array of shape %s its header "
                                 "announces" % (tuple(shape),))
            return arr
        count = int(np.prod(shape, dtype=np.int64))
        data = f.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise ValueError("truncated: %d of %d bytes" % (len(data), count * dtype.itemsize))
        return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def read_fields(path: str) -> Dict[str, np.ndarray]:
    """The shard's fields (and the flat layout's counts) as arrays, unchecked but safely read;
    an error names the file and the field."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError("%s: not a readable .npz shard (%s)" % (path, err)) from None
    with zf:
        names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        missing = [f for f in REQUIRED_FIELDS if f not in names]
        if missing:
            raise ValueError("%s: shard lacks field(s) %s (a shard holds %s)"
                             % (path, ", ".join(missing), ", ".join(REQUIRED_FIELDS)))
        out = {}
        for field in [f for f in FIELDS + (COUNTS,) if f in names]:
            try:
                out[field] = _read_member(zf, field)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
                    pickle.UnpicklingError, AttributeError, TypeError, IndexError) as err:
                raise ValueError("%s: field %s cannot be read: %s" % (path, field, err)) from None
    return out


def _flat_fields(path: str, data: Dict[str, np.ndarray], n: int) -> Dict[str, tuple]:
    """Each per-instance field of either layout as (one flat typed array, per-instance lengths),
    checked on the way: float32 for masked_lm_weights, int32 for the rest."""
    out = {}
    if COUNTS in data:                                          # flat
        counts = data[COUNTS]
        if counts.ndim != 1 or counts.dtype.kind not in "iu" or len(counts) != n \
                or (n and counts.min() < 0):
            raise ValueError("%s: %s must hold %d non-negative integers, got %s %s"
                             % (path, COUNTS, n, counts.dtype, counts.shape))
        for fields, cuts in ((TOKEN_FIELDS, data["valid_lengths"]), (MASKED_FIELDS, counts)):
            for field in [f for f in fields if f in data]:
                flat = data[field]
                if flat.ndim != 1 or flat.dtype == object:
                    raise ValueError("%s: %s must be a 1-D numeric array in the flat layout, "
                                     "got %s %s" % (path, field, flat.dtype, flat.shape))
                if len(flat) != int(cuts.sum()):
                    raise ValueError("%s: %s holds %d values, its lengths add up to %d"
                                     % (path, field, len(flat), int(cuts.sum())))
                kind = _kind(field)
                if flat.dtype.kind not in kind and len(flat):
                    raise ValueError("%s: %s[%d] must be a 1-D %s array, got %s %s"
                                     % (path, field, int(np.argmax(cuts > 0)), _kind_name(kind),
                                        flat.dtype, (int(cuts[np.argmax(cuts > 0)]),)))
                out[field] = (flat.astype(_dtype(field)), cuts.astype(np.int64))
        return out
    for field in [f for f in TOKEN_FIELDS + MASKED_FIELDS if f in data]:   # 2020 layout
        arr = data[field]
        if arr.ndim == 2 and arr.dtype != object:   # 2-D when every length is equal (B4)
            arr = list(arr)
        elif arr.ndim != 1 or arr.dtype != object:
            raise ValueError("%s: %s must be an object array of per-instance arrays (or a 2-D "
                             "array), got %s %s" % (path, field, arr.dtype, np.shape(arr)))
        if len(arr) != n:
            raise ValueError("%s: field %s has %d instances, valid_lengths has %d"
                             % (path, field, len(arr), n))
        kind, rows = _kind(field), []
        for i, row in enumerate(arr):
            row = np.asarray(row)
            if row.ndim != 1 or row.dtype.kind not in kind:
                raise ValueError("%s: %s[%d] must be a 1-D %s array, got %s %s"
                                 % (path, field, i, _kind_name(kind), row.dtype, row.shape))
            rows.append(row)
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        flat = np.concatenate(rows).astype(_dtype(field)) if n else np.zeros(0, _dtype(field))
        out[field] = (flat, lengths)
    return out


def _kind(field: str) -> str:
    return "f" if field == "masked_lm_weights" else "iu"


def _kind_name(kind: str) -> str:
    return "float" if kind == "f" else "integer"


def _dtype(field: str):
    return np.float32 if field == "masked_lm_weights" else np.int32


def _first_instance(bad: np.ndarray, lengths: np.ndarray) -> int:
    """The instance holding the first flagged value of a flat field cut by `lengths`."""
    return int(np.searchsorted(np.cumsum(lengths), np.argmax(bad), side="right"))


def load_shard(path: str, vocab_size: Optional[int] = None,
               max_length: Optional[int] = None) -> Dict[str, list]:
    """A validated shard of either layout: lists of int32/float32 arrays per instance (the
    required fields, and `segment_ids` when present), plus `valid_lengths` (and
    `next_sentence_labels` when present). Every field and instance is checked, against the
    vocabulary and the model's longest sequence when given; an error names the file, field and
    instance."""
    data = read_fields(path)
    lengths = data["valid_lengths"]
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
        raise ValueError("%s: valid_lengths must be a 1-D integer array, got %s %s"
                         % (path, lengths.dtype, lengths.shape))
    n = len(lengths)
    if not n:
        raise ValueError("%s: the shard holds no instances" % path)
    if max_length is not None and lengths.max() > max_length:
        i = int(np.argmax(lengths > max_length))
        raise ValueError("%s: instance %d has %d tokens, more than the model's max_length %d "
                         "(make the shards with --max-seq-length %d or less)"
                         % (path, i, int(lengths[i]), max_length, max_length))
    out = {"valid_lengths": lengths.astype(np.int32)}
    if "next_sentence_labels" in data:
        labels = data["next_sentence_labels"]
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise ValueError("%s: next_sentence_labels must hold %d integers, got %s %s"
                             % (path, n, labels.dtype, labels.shape))
        out["next_sentence_labels"] = labels.astype(np.int32)
    fields = _flat_fields(path, data, n)
    valid = lengths.astype(np.int64)
    for field in [f for f in TOKEN_FIELDS if f in fields]:
        bad = (fields[field][1] != valid) | (valid < 1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError("%s: instance %d has %d %s but valid_length %d"
                             % (path, i, int(fields[field][1][i]), field, int(valid[i])))
    masked = fields["masked_lm_ids"][1]
    bad = (fields["masked_lm_positions"][1] != masked) | (fields["masked_lm_weights"][1] != masked)
    if bad.any():
        raise ValueError("%s: instance %d: masked_lm_positions/ids/weights lengths differ"
                         % (path, int(np.argmax(bad))))
    pos = fields["masked_lm_positions"][0]
    bad = (pos < 0) | (pos >= np.repeat(valid, masked))
    if bad.any():
        i = _first_instance(bad, masked)
        raise ValueError("%s: instance %d: a masked position lies outside [0, %d)"
                         % (path, i, int(valid[i])))
    bad = ~np.isfinite(fields["masked_lm_weights"][0])
    if bad.any():
        raise ValueError("%s: instance %d: masked_lm_weights holds a non-finite value"
                         % (path, _first_instance(bad, masked)))
    if vocab_size is not None:
        for field in ("input_ids", "masked_lm_ids"):
            ids, cuts = fields[field]
            bad = (ids < 0) | (ids >= vocab_size)
            if bad.any():
                raise ValueError("%s: instance %d: %s has ids outside the vocabulary [0, %d)"
                                 % (path, _first_instance(bad, cuts), field, vocab_size))
    for field, (flat, cuts) in fields.items():
        ends = np.cumsum(cuts).tolist()
        out[field] = [flat[a:b] for a, b in zip([0] + ends[:-1], ends)]
    return out


# ------------------------------------------------------------------------------------ writing

def object_array(arrays) -> np.ndarray:
    """A 1-D object array of the given arrays, even when they all have the same length (B4)."""
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def save_shard(path: str, instances: Dict[str, list], layout: str = "flat") -> str:
    """Write a shard held in memory (per-instance lists for the per-instance fields, arrays for
    `next_sentence_labels`/`valid_lengths`) in `layout`, atomically. `create-pretraining-data`
    streams instead (`bort_core.data.shard_writer.ShardWriter`); this serves small shards."""
    if layout not in LAYOUTS:
        raise ValueError("unknown shard layout %r; choose one of: %s" % (layout, ", ".join(LAYOUTS)))
    per_instance = TOKEN_FIELDS + MASKED_FIELDS
    fields = {k: np.asarray(v, dtype=np.int32) for k, v in instances.items()
              if k not in per_instance}
    for k in per_instance:
        dtype = np.float32 if k == "masked_lm_weights" else np.int32
        rows = [np.asarray(r, dtype=dtype) for r in instances[k]]
        fields[k] = object_array(rows) if layout == "2020" else \
            np.concatenate(rows) if rows else np.zeros(0, dtype)
    if layout == "flat":
        fields[COUNTS] = np.array([len(r) for r in instances["masked_lm_ids"]], dtype=np.int32)
    with bio.atomic_open(path, "wb") as f:
        np.savez_compressed(f, **fields)
    return path


def write_synthetic_shard(path: str, num: int, vocab_size: int, seed: int = 0,
                          max_len: int = 32, max_predictions: int = 5,
                          layout: str = "flat") -> str:
    """A valid random shard (for tests and throughput benchmarks)."""
    rng = np.random.RandomState(seed)
    lengths = rng.randint(8, max_len + 1, size=num).astype(np.int32)
    ids, pos, mids = [], [], []
    for n in lengths:
        row = rng.randint(4, vocab_size, size=n).astype(np.int32)
        row[0], row[-1] = 0, 2
        m = int(rng.randint(1, min(max_predictions, n - 2) + 1))
        ids.append(row)
        pos.append(np.sort(rng.choice(np.arange(1, n - 1), m, replace=False)))
        mids.append(rng.randint(4, vocab_size, size=m))
    return save_shard(path, {
        "input_ids": ids, "segment_ids": [0 * r for r in ids], "masked_lm_positions": pos,
        "masked_lm_ids": mids, "masked_lm_weights": [np.ones(len(m)) for m in mids],
        "next_sentence_labels": np.zeros(num, np.int32), "valid_lengths": lengths}, layout)
