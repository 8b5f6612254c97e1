"""MXNet NDArray `.params` files in pure numpy, holding canonical parameters (`bort_core.names`).

The file format (what `mx.nd.save` and `Block.save_parameters` write), all little-endian:

    uint64 0x112 (list magic), uint64 0 (reserved)
    uint64 n, then n arrays, each:
        uint32 magic       V2 0xF993FAC9 (mxnet >= 1.0), V3 0xF993FACA (numpy shape
                           semantics), V1 0xF993FAC8 (older; no storage type field)
        int32  storage     0 = dense (V2/V3 only; 1 row_sparse and 2 csr are refused)
        int32  ndim, then ndim x int64 dims
                           V1/V2: ndim 0 is an empty ("none") array and ends the entry;
                           V3: ndim -1 or any dim -1 does, ndim 0 is a scalar
        int32  dev_type, int32 dev_id  (ignored when reading; written as cpu(0))
        int32  type flag   see DTYPES
        raw data, C order
    uint64 m (0 for a list file, else m == n), then m names: uint64 length + bytes

Reading gives an OrderedDict name -> numpy array (a list when the file has no names).
Writing emits V2 dense entries, which both mxnet 1.5.0 and 1.9.1 load bit-exactly.

Canonical names are those of `bort_core.arch.canonical_shapes`. The 2020 files also hold
the tied decoder weight as `decoder.3.weight` (a copy of `word_embed.0.weight`);
classifier checkpoints prefix the backbone with `bort.` and add `classifier.*`. What a file
holds is checked against a config by `bort_core.model_params`.
"""
from __future__ import annotations

import os
import struct
from collections import OrderedDict

import numpy as np

from bort_core import io as bio
from bort_core.names import DECODER_BIAS, TIED_DECODER, WORD_EMBED

LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
NDARRAY_V3_MAGIC = 0xF993FACA
_MAGIC_NAMES = {NDARRAY_V1_MAGIC: "V1", NDARRAY_V2_MAGIC: "V2", NDARRAY_V3_MAGIC: "V3"}
_STORAGE_NAMES = {-1: "undefined", 1: "row_sparse", 2: "csr"}

# MXNet type flag -> numpy dtype. Flags 0-6 load in every mxnet >= 1.0; bool (7) only in >= 1.6.
DTYPES = OrderedDict([
    (0, np.dtype("<f4")), (1, np.dtype("<f8")), (2, np.dtype("<f2")), (3, np.dtype("u1")),
    (4, np.dtype("<i4")), (5, np.dtype("i1")), (6, np.dtype("<i8")), (7, np.dtype("?")),
])
WRITABLE_FLAGS = (0, 1, 2, 3, 4, 5, 6)
_FLAG_OF = {(d.kind, d.itemsize): f for f, d in DTYPES.items()}   # any byte order

MODULE_PREFIXES = ("arg:", "aux:")   # what the Module API (mx.model.save_checkpoint) prepends
_MAX_NDIM = 32


# ----------------------------------------------------------------------------- reading

class _Reader:
    """Sequential reader over an open file that reports byte offsets in its errors."""

    def __init__(self, f, path, size):
        self.f, self.path, self.size, self.pos = f, path, size, 0

    def fail(self, what, offset=None):
        offset = self.pos if offset is None else offset
        raise ValueError("%s: not a valid MXNet NDArray file: %s (at byte offset %d of %d)"
                         % (self.path, what, offset, self.size))

    def unpack(self, fmt, what):
        n = struct.calcsize(fmt)
        data = self.f.read(n)
        if len(data) != n:
            self.fail("truncated: expected %d bytes for %s, found %d" % (n, what, len(data)))
        self.pos += n
        return struct.unpack(fmt, data)

    def bytes(self, n, what):
        if n > self.size - self.pos:
            self.fail("truncated: %s needs %d bytes, only %d remain"
                      % (what, n, self.size - self.pos))
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def array(self, shape, dtype, what):
        count = 1
        for d in shape:
            count *= d   # python ints: no overflow on garbage shapes
        nbytes = count * dtype.itemsize
        if nbytes > self.size - self.pos:
            self.fail("truncated: %s needs %d data bytes (%s %s), only %d remain"
                      % (what, nbytes, dtype.name, tuple(shape), self.size - self.pos))
        out = np.empty(shape, dtype=dtype)
        if nbytes:
            got = self.f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
            if got != nbytes:
                self.fail("truncated: %s: expected %d data bytes, found %d"
                          % (what, nbytes, got))
        self.pos += nbytes
        return out


def _read_shape(r, what):
    (ndim,) = r.unpack("<i", what + " ndim")
    if ndim == -1:
        return None
    if not 0 <= ndim <= _MAX_NDIM:
        r.fail("%s: expected ndim in [0, %d], found %d" % (what, _MAX_NDIM, ndim), r.pos - 4)
    return r.unpack("<%dq" % ndim, what + " shape") if ndim else ()


def _read_ndarray(r, what):
    start = r.pos
    (magic,) = r.unpack("<I", what + " magic")
    if magic not in _MAGIC_NAMES:
        r.fail("%s: expected an NDArray magic (V1 0x%08X, V2 0x%08X or V3 0x%08X), found 0x%08X"
               % (what, NDARRAY_V1_MAGIC, NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC, magic), start)
    if magic != NDARRAY_V1_MAGIC:
        (stype,) = r.unpack("<i", what + " storage type")
        if stype != 0:
            r.fail("%s: %s storage (type %d) is not supported; only dense arrays are: "
                   "convert it with .tostype('default') before saving"
                   % (what, _STORAGE_NAMES.get(stype, "unknown"), stype), r.pos - 4)
    shape = _read_shape(r, what)
    # An uninitialised ("none") array ends here: no context, type flag or data follow.
    if shape is None or (shape == () and magic != NDARRAY_V3_MAGIC):
        return None
    if any(d < 0 for d in shape):
        if magic == NDARRAY_V3_MAGIC and all(d >= -1 for d in shape):
            return None   # V3 marks unknown dims with -1
        r.fail("%s: negative dimension in shape %s" % (what, shape), start)
    r.unpack("<ii", what + " context")
    flag_at = r.pos
    (flag,) = r.unpack("<i", what + " type flag")
    if flag not in DTYPES:
        extra = " (bfloat16 has no numpy dtype)" if flag == 12 else ""
        r.fail("%s: expected a dense type flag in %s, found %d%s"
               % (what, sorted(DTYPES), flag, extra), flag_at)
    return r.array(shape, DTYPES[flag], what)


def load_ndarrays(path):
    """Read an MXNet NDArray file: an OrderedDict name -> array (file order), or a list
    when the file holds no names (as `mx.nd.load`). Arrays are fresh, writable, native C
    order. An uninitialised ("none") entry reads as None."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError("checkpoint file %s does not exist" % path)
    with open(path, "rb") as f:
        r = _Reader(f, path, os.fstat(f.fileno()).st_size)
        if r.size < 16:
            r.fail("expected at least a 16-byte header, the file has %d bytes" % r.size, 0)
        magic, reserved = r.unpack("<QQ", "header")
        if magic != LIST_MAGIC:
            r.fail("expected list magic 0x%X, found 0x%X" % (LIST_MAGIC, magic), 0)
        if reserved != 0:
            r.fail("expected a zero reserved field, found 0x%X" % reserved, 8)
        (count,) = r.unpack("<Q", "array count")
        if count > (r.size - r.pos) // 4:   # every entry takes at least a 4-byte magic
            r.fail("array count %d cannot fit in the remaining %d bytes"
                   % (count, r.size - r.pos), r.pos - 8)
        arrays = [_read_ndarray(r, "array %d" % i) for i in range(count)]
        (nnames,) = r.unpack("<Q", "name count")
        if nnames not in (0, count):
            r.fail("expected 0 or %d names (one per array), found %d" % (count, nnames), r.pos - 8)
        names = []
        for i in range(nnames):
            (length,) = r.unpack("<Q", "name %d length" % i)
            raw = r.bytes(length, "name %d" % i)
            try:
                names.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                r.fail("name %d is not valid UTF-8: %r" % (i, raw[:40]), r.pos - length)
        if r.pos != r.size:
            r.fail("expected end of file, found %d trailing bytes" % (r.size - r.pos))
    if not nnames:
        return arrays
    out = OrderedDict()
    for name, array in zip(names, arrays):
        if name in out:
            raise ValueError("%s: parameter name %r occurs twice in the file" % (path, name))
        out[name] = array
    return out


def load_params(path, strip_module_prefixes=True):
    """Read a parameter file that has names (a dict). With `strip_module_prefixes`, the
    Module API's `arg:`/`aux:` prefixes are removed."""
    params = load_ndarrays(path)
    if not isinstance(params, dict):
        raise ValueError("%s: expected named parameters, found an unnamed list of %d arrays"
                         % (path, len(params)))
    for name, value in params.items():
        if value is None:
            raise ValueError("%s: parameter %r is an uninitialised (none) array" % (path, name))
    return strip_prefixes(params, source=path) if strip_module_prefixes else params


def strip_prefixes(params, prefixes=MODULE_PREFIXES, source="<params>"):
    """Drop the first matching prefix (default `arg:`/`aux:`) from every name."""
    out, origin = OrderedDict(), {}
    for name, value in params.items():
        new = name
        for prefix in prefixes:
            if name.startswith(prefix):
                new = name[len(prefix):]
                break
        if new in out:
            raise ValueError("%s: names %r and %r both become %r once %s is stripped"
                             % (source, origin[new], name, new, "/".join(prefixes)))
        out[new], origin[new] = value, name
    return out


# ----------------------------------------------------------------------------- writing

def _header(array, name):
    flag = _FLAG_OF.get((array.dtype.kind, array.dtype.itemsize))
    if flag not in WRITABLE_FLAGS:
        raise ValueError("array %s: dtype %s cannot be written; supported: %s" % (
            name, array.dtype, ", ".join(DTYPES[f].name for f in WRITABLE_FLAGS)))
    if array.ndim == 0 or array.size == 0:
        raise ValueError("array %s: shape %s cannot be written: mxnet's default (non-numpy) "
                         "shape semantics read 0-d and zero-size arrays as uninitialised; "
                         "reshape 0-d arrays to (1,)" % (name, array.shape))
    return (struct.pack("<Iii", NDARRAY_V2_MAGIC, 0, array.ndim)
            + struct.pack("<%dq" % array.ndim, *array.shape)
            + struct.pack("<iii", 1, 0, flag)), DTYPES[flag]


def _write_entries(f, entries):
    for header, array in entries:
        f.write(header)
        f.write(memoryview(array.reshape(-1).view(np.uint8)))


def save_ndarrays(path, arrays):
    """Write a dict name -> array (or a list) as an MXNet NDArray file, atomically
    (`bort_core.io.atomic_path`). The dict's order is kept."""
    path = os.fspath(path)
    if isinstance(arrays, dict):
        names = [str(k) for k in arrays]
        values = list(arrays.values())
    else:
        names, values = [], list(arrays)
    entries = []
    for i, value in enumerate(values):
        label = repr(names[i]) if names else str(i)
        array = np.asarray(value)
        header, dtype = _header(array, label)
        entries.append((header, np.ascontiguousarray(array, dtype=dtype)))
    encoded = [n.encode("utf-8") for n in names]

    with bio.atomic_open(path, "wb") as f:
        f.write(struct.pack("<QQQ", LIST_MAGIC, 0, len(entries)))
        _write_entries(f, entries)
        f.write(struct.pack("<Q", len(encoded)))
        for raw in encoded:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)


def save_params(path, params, store_tied_decoder=False):
    """Write named parameters. `store_tied_decoder=True` also stores the word embedding as
    `decoder.3.weight` (before `decoder.3.bias`), as the 2020 files do: mxnet 1.5.0's
    `Block.load_parameters` requires it (1.9.1 does not)."""
    if store_tied_decoder:
        params = add_tied_decoder(params)
    save_ndarrays(path, params)


# ----------------------------------------------------------------------------- tied weight

def _tied_pairs(params):
    """(embedding name, decoder name) for every prefix that has a decoder."""
    pairs = []
    for name in params:
        for suffix in (TIED_DECODER, DECODER_BIAS):
            if name.endswith(suffix) and (name == suffix or name[:-len(suffix)].endswith(".")):
                prefix = name[:-len(suffix)]
                pair = (prefix + WORD_EMBED, prefix + TIED_DECODER)
                if pair not in pairs:
                    pairs.append(pair)
    return pairs


def _count_differing(a, b):
    """How many elements differ bit for bit (a copied NaN equals itself)."""
    if a.dtype.itemsize in (2, 4, 8):
        kind = np.dtype("u%d" % a.dtype.itemsize)
        a, b = np.ascontiguousarray(a).view(kind), np.ascontiguousarray(b).view(kind)
    return int(np.count_nonzero(a != b))


def drop_tied_decoder(params, source="<params>"):
    """Remove `decoder.3.weight` where it duplicates `word_embed.0.weight` (any prefix);
    a copy that differs from the embedding is an error."""
    out = OrderedDict(params)
    for embed, decoder in _tied_pairs(params):
        if decoder not in out:
            continue
        if embed not in out:
            raise ValueError("%s: parameter %s is present but %s, the embedding it is tied to, "
                             "is missing" % (source, decoder, embed))
        a, b = np.asarray(out[embed]), np.asarray(out[decoder])
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError("%s: parameter %s must be a copy of the tied %s: expected shape %s "
                             "%s, found %s %s" % (source, decoder, embed, a.shape, a.dtype,
                                                  b.shape, b.dtype))
        differing = _count_differing(a, b)
        if differing:
            raise ValueError("%s: parameter %s must be a copy of the tied %s, but %d of its %d "
                             "values differ" % (source, decoder, embed, differing, a.size))
        del out[decoder]
    return out


def add_tied_decoder(params):
    """The reverse of `drop_tied_decoder`: store the embedding again as `decoder.3.weight`,
    just before `decoder.3.bias` (for every prefix that has a decoder bias)."""
    targets = {}
    for embed, decoder in _tied_pairs(params):
        if decoder not in params and embed in params:
            targets[decoder[:-len(TIED_DECODER)] + DECODER_BIAS] = (decoder, params[embed])
    out = OrderedDict()
    for name, value in params.items():
        if name in targets:
            out[targets[name][0]] = targets[name][1]
        out[name] = value
    return out
