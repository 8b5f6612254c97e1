"""The streaming `.npz` shard writer of `bort create-pretraining-data`: instances are spooled to
disk round-robin, then each `part-%03d.npz` is written from its spool one instance at a time
(np.savez_compressed's format, in the `flat` or `2020` layout of `bort_core.data.shards`), so
memory stays flat whatever the size of a shard."""
from __future__ import annotations

import io
import os
import pickle
import random
import re
import zipfile
from array import array
from typing import Iterable, Iterator, List

import numpy as np

from bort_core import io as bio
from bort_core.data.shards import COUNTS, LAYOUTS


def prepare_output_dir(output_dir: str, overwrite: bool = False) -> None:
    """Make `output_dir` ready for new shards: a killed run's spools are removed (its temporary
    shards too, by `bort_core.io.remove_orphans`); earlier shards are removed with `overwrite`,
    else refused (a glob would pick them up), as is any other file there."""
    if not os.path.isdir(output_dir):
        return
    bio.remove_orphans(output_dir)
    ours = re.compile(r"^\.part-\d{3,}\.spool$")
    shards = re.compile(r"^part-\d{3,}\.npz$")
    for name in sorted(os.listdir(output_dir)):
        if ours.match(name) or (overwrite and shards.match(name)):
            os.remove(os.path.join(output_dir, name))
    left = sorted(os.listdir(output_dir))
    if left:
        raise ValueError("%s: the output directory is not empty (%s%s); %s"
                         % (output_dir, ", ".join(left[:3]), ", ..." if len(left) > 3 else "",
                            "pass --overwrite to replace its shards"
                            if all(shards.match(n) for n in left) else "choose an empty one"))


class ShardWriter:
    """Spools instances round-robin to `num_outputs` shards on disk, then streams each
    `part-%03d.npz` from its spool in the shard's shuffled order, in `layout` (`flat`, ours,
    or `2020`, the release's object arrays; see `bort_core.data.shards`). Memory holds one
    instance and a per-instance index (9 bytes an instance, about 50 while its shard is
    written), whatever the size of the shard. Shards appear only by `close()`, each atomically;
    `discard()` leaves nothing behind."""

    def __init__(self, output_dir: str, num_outputs: int, seed: int, layout: str = "flat"):
        if num_outputs < 1:
            raise ValueError("num_outputs must be at least 1")
        if layout not in LAYOUTS:
            raise ValueError("unknown shard layout %r; choose one of: %s"
                             % (layout, ", ".join(LAYOUTS)))
        self._made_dir = not os.path.isdir(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        self.output_dir, self.seed, self.layout, self.count = output_dir, seed, layout, 0
        self._spools = [open(self._spool(k), "wb") for k in range(num_outputs)]
        # per shard, in spool order: len(input_ids), len(masked_lm_ids), next_sentence_label
        self._index = [(array("i"), array("i"), array("b")) for _ in range(num_outputs)]

    def _spool(self, k):
        return os.path.join(self.output_dir, ".part-%03d.spool" % k)

    def add(self, inst: dict) -> None:
        k = self.count % len(self._spools)
        for arr in (inst["input_ids"], inst["segment_ids"], inst["masked_lm_positions"],
                    inst["masked_lm_ids"]):
            self._spools[k].write(np.asarray(arr, dtype=np.int32).tobytes())
        lengths, masked, labels = self._index[k]
        lengths.append(len(inst["input_ids"]))
        masked.append(len(inst["masked_lm_ids"]))
        labels.append(inst["next_sentence_labels"])
        self.count += 1

    def close(self) -> List[str]:
        for f in self._spools:
            f.close()
        try:
            return [self._write_shard(k) for k in range(len(self._spools))]
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Remove the spools, every shard this writer wrote, and the output directory if this
        writer made it (a shard being written is removed by `bort_core.io.atomic_path`)."""
        for k, f in enumerate(self._spools):
            f.close()
            for path in (self._spool(k), self._part(k)):
                if os.path.exists(path):
                    os.remove(path)
        if self._made_dir and not os.listdir(self.output_dir):
            os.rmdir(self.output_dir)

    def _part(self, k):
        return os.path.join(self.output_dir, "part-%03d.npz" % k)

    def _shuffled_index(self, k):
        """Shard k's records in the shard's shuffled order (`random.shuffle` of them with the
        shard's seed): their starts in the spool (in int32s), lengths, masked counts and labels."""
        lengths, masked, labels = (np.frombuffer(c, dtype=c.typecode) for c in self._index[k])
        starts = np.cumsum(lengths + masked, dtype=np.int64)
        starts -= lengths + masked
        starts *= 2                     # four fields of lengths (n, n, m, m) a record
        order = array("q", range(len(lengths)))
        random.Random("%d/shard/%d" % (self.seed, k)).shuffle(order)
        order = np.frombuffer(order, dtype=np.int64)
        return starts[order], lengths[order], masked[order], labels[order]

    def _write_shard(self, k) -> str:
        starts, n, m, labels = self._shuffled_index(k)
        numeric = {"next_sentence_labels": labels.astype(np.int32),
                   "valid_lengths": n.astype(np.int32)}
        if self.layout == "flat":
            numeric[COUNTS] = m.astype(np.int32)
        # each field of a record in the spool: (start in the record, length) in int32s
        spans = {"input_ids": (0, n), "segment_ids": (n, n), "masked_lm_positions": (2 * n, m),
                 "masked_lm_ids": (2 * n + m, m)}
        path = self._part(k)
        with bio.atomic_path(path) as tmp, open(self._spool(k), "rb") as spool:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
                for name in sorted(list(numeric) + list(spans) + ["masked_lm_weights"]):
                    # np.savez_compressed's layout, at zlib level 1 (about three times faster)
                    with zf.open(name + ".npy", "w", force_zip64=True) as f:
                        if name in numeric:
                            np.lib.format.write_array(f, numeric[name])
                        elif self.layout == "flat":
                            _write_flat_field(f, spool, name, starts, spans, m)
                        else:
                            _write_object_field(f, spool, name, starts, spans, m)
        os.remove(self._spool(k))
        return path


def _write_flat_field(f, spool, name, starts, spans, m) -> None:
    """A per-instance field of the flat layout: one 1-D array, the records' values in order."""
    weights = name == "masked_lm_weights"
    offset, sizes = (0, m) if weights else spans[name]
    np.lib.format.write_array_header_1_0(f, {"descr": "<f4" if weights else "<i4",
                                             "fortran_order": False, "shape": (int(sizes.sum()),)})
    if weights:
        for i in range(0, len(m), 256):
            f.write(np.ones(int(m[i:i + 256].sum()), dtype="<f4").tobytes())
        return
    for at, size in _rows(starts + offset, sizes):
        f.write(_read_int32(spool, at, size).astype("<i4").tobytes())


def _write_object_field(f, spool, name, starts, spans, m) -> None:
    """A per-instance field of the 2020 layout: an object array of per-record arrays."""
    item_pickle = _ItemPickler()
    if name == "masked_lm_weights":
        weights = {c: item_pickle(np.ones(c, dtype=np.float32)) for c in np.unique(m).tolist()}
        _write_object_array(f, len(m), (weights[c] for c, in _rows(m)))
        return
    offset, sizes = spans[name]
    _write_object_array(f, len(m), (item_pickle(_read_int32(spool, at, size))
                                    for at, size in _rows(starts + offset, sizes)))


def _rows(*columns: np.ndarray, chunk: int = 256) -> Iterator[tuple]:
    """zip(*columns) as Python ints, converting `chunk` rows at a time."""
    for i in range(0, len(columns[0]), chunk):
        yield from zip(*(c[i:i + chunk].tolist() for c in columns))


def _read_int32(f, at: int, count: int) -> np.ndarray:
    f.seek(4 * at)
    return np.frombuffer(f.read(4 * count), dtype=np.int32)


class _ItemPickler:
    """Pickles arrays one at a time (protocol 3) in fast mode, so without memo: pieces that
    neither define nor refer to memo entries, less the PROTO and STOP that frame a pickle."""

    def __init__(self):
        self._buf = io.BytesIO()
        self._pickler = pickle.Pickler(self._buf, protocol=3)
        self._pickler.fast = True

    def __call__(self, arr: np.ndarray) -> bytes:
        self._buf.seek(0)
        self._buf.truncate()
        self._pickler.dump(arr)
        return self._buf.getvalue()[2:-1]


def _write_object_array(f, count: int, items: Iterable[bytes]) -> None:
    """Write the .npy file of a 1-D object array of `count` items, each given pickled by
    `_ItemPickler`, as np.save would (header 1.0, then a protocol-3 pickle of the array) but one
    item at a time: np.save pickles the whole array in memory first."""
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(
        np.dtype(object)), "fortran_order": False, "shape": (count,)})
    func, args, state = np.empty(0, dtype=object).__reduce__()
    # ndarray's state: (version, shape, dtype, is_fortran, list of the items)
    state = state[:1] + ((count,),) + state[2:4] + (_PickledItems(items),)
    _ArrayPickler(f, protocol=3).dump(_Reduced((func, args, state)))


class _Reduced:
    """Pickles as the given __reduce__ value (here: an object array's)."""

    def __init__(self, reduced):
        self.reduced = reduced

    def __reduce_ex__(self, protocol):
        return self.reduced


class _PickledItems:
    """The items of a list, already pickled, for `_ArrayPickler`."""

    def __init__(self, items: Iterable[bytes]):
        self.items = items


class _ArrayPickler(pickle._Pickler):
    """The pure-Python pickler (which writes as it goes; the C one buffers a whole protocol-3
    pickle) that saves `_PickledItems` as a list: EMPTY_LIST, then the items in batches of 1000
    between MARK and APPENDS, as pickle does. The items use no memo, so they cannot clash with
    the entries this pickler defines around them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_pickled_items(self, obj):
        self.write(pickle.EMPTY_LIST)
        self.memoize(obj)
        count = 0
        for item in obj.items:
            if count % 1000 == 0:
                self.write(pickle.APPENDS + pickle.MARK if count else pickle.MARK)
            self.write(item)
            count += 1
        if count:
            self.write(pickle.APPENDS)

    dispatch[_PickledItems] = _save_pickled_items
