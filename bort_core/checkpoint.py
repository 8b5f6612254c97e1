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
classifier checkpoints prefix the backbone with `bort.` and add `classifier.*`.
"""
from __future__ import annotations

import os
import struct
import warnings
from collections import OrderedDict

import numpy as np

from bort_core import arch
from bort_core import io as bio
from bort_core.configs import BortConfig, get_config, list_configs
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
BACKBONE_PREFIX = "bort."            # classifier checkpoints
HEAD_PREFIX = "classifier."
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
                             "%s, found %s %s" % (source, decoder, embed, _fmt(a.shape), a.dtype,
                                                  _fmt(b.shape), b.dtype))
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


# ----------------------------------------------------------------------------- validation

def _fmt(shape):
    return str(tuple(int(d) for d in shape))


def _check_finite(params, source):
    for name, value in params.items():
        a = np.asarray(value)
        if a.dtype.kind != "f":
            continue
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            warnings.warn("%s: parameter %s has %d non-finite value(s) (nan/inf) out of %d"
                          % (source, name, bad, a.size), RuntimeWarning, stacklevel=3)


def compare_params(params, expected, source, what):
    """Check `params` against `expected` (name -> shape): one ValueError naming `source`,
    `what` the names stand for, and every missing, unexpected, misshapen or non-float entry."""
    problems = []
    for name, shape in expected.items():
        if name not in params:
            problems.append("missing parameter %s (expected shape %s)" % (name, _fmt(shape)))
            continue
        a = np.asarray(params[name])
        if tuple(a.shape) != tuple(shape):
            problems.append("parameter %s: expected shape %s, found %s"
                            % (name, _fmt(shape), _fmt(a.shape)))
        elif a.dtype.kind != "f":
            problems.append("parameter %s: expected a floating-point dtype, found %s"
                            % (name, a.dtype))
    for name in params:
        if name not in expected:
            shape = np.shape(params[name])
            problems.append("unexpected parameter %s (shape %s)" % (name, _fmt(shape)))
    if problems:
        shown = problems[:25]
        if len(problems) > len(shown):
            shown.append("... and %d more" % (len(problems) - len(shown)))
        raise ValueError("%s: parameters do not match %s:\n  %s"
                         % (source, what, "\n  ".join(shown)))


def validate_params(params, config, with_decoder=None, source="<params>"):
    """Check a backbone dict against `arch.canonical_shapes(config, with_decoder)` and
    return it in canonical names and order (tied decoder duplicate dropped).

    Raises ValueError naming `source`, each parameter and expected vs found (missing,
    unexpected, shape mismatch); warns on non-finite values. `with_decoder=None` means
    "whatever the dict has" (any `decoder.*` name).
    """
    params = drop_tied_decoder(params, source=source)
    if with_decoder is None:
        with_decoder = any(name.startswith("decoder.") for name in params)
    expected = arch.canonical_shapes(config, with_decoder=with_decoder)
    compare_params(params, expected, source, "config %r (vocab_size %d%s)" % (
        config.name, config.vocab_size, ", with decoder" if with_decoder else ", no decoder"))
    _check_finite(params, source)
    return OrderedDict((name, params[name]) for name in expected)


# ----------------------------------------------------------------------------- classifier

def is_classifier(params):
    return any(n.startswith(BACKBONE_PREFIX) or n.startswith(HEAD_PREFIX) for n in params)


def split_classifier(params, source="<params>"):
    """(backbone, head) of a classifier checkpoint: `bort.`-prefixed names (prefix removed)
    and `classifier.*` names. Any other name is an error."""
    backbone, head, other = OrderedDict(), OrderedDict(), []
    for name, value in params.items():
        if name.startswith(BACKBONE_PREFIX):
            backbone[name[len(BACKBONE_PREFIX):]] = value
        elif name.startswith(HEAD_PREFIX):
            head[name] = value
        else:
            other.append(name)
    if other:
        raise ValueError("%s: a classifier checkpoint holds only %s* and %s* names; found %s"
                         % (source, BACKBONE_PREFIX, HEAD_PREFIX, ", ".join(other[:10])))
    return backbone, head


def join_classifier(backbone, head):
    """The reverse of `split_classifier`."""
    out = OrderedDict((BACKBONE_PREFIX + n, v) for n, v in backbone.items())
    out.update(head)
    return out


def classifier_layout(head, source="<params>"):
    """(num_classes, dropout) of a head: `classifier.1/.3` means dropout layers are present
    (dropout=0.1 stands for any non-zero rate), `classifier.0/.1` means dropout was 0."""
    if "classifier.3.weight" in head:
        dropout, last = 0.1, "classifier.3.weight"
    elif "classifier.1.weight" in head and "classifier.0.weight" in head:
        dropout, last = 0.0, "classifier.1.weight"
    else:
        raise ValueError("%s: cannot recognise the classifier head: expected classifier.1.* and "
                         "classifier.3.* (or classifier.0.* and classifier.1.*), found %s"
                         % (source, ", ".join(head) or "no classifier parameters"))
    shape = np.shape(head[last])
    if len(shape) != 2:
        raise ValueError("%s: parameter %s: expected a 2-d weight, found shape %s"
                         % (source, last, _fmt(shape)))
    return int(shape[0]), dropout


def validate_classifier_head(head, config, num_classes=None, source="<params>"):
    """Check a head against `arch.classifier_shapes`; returns (head, num_classes, dropout)."""
    found, dropout = classifier_layout(head, source)
    num_classes = found if num_classes is None else num_classes
    expected = arch.classifier_shapes(config, num_classes, dropout=dropout)
    compare_params(head, expected, source, "a %d-class classifier head for config %r"
                   % (num_classes, config.name))
    _check_finite(head, source)
    return OrderedDict((n, head[n]) for n in expected), num_classes, dropout


# ----------------------------------------------------------------------------- inference

def infer_vocab_size(params):
    """Vocabulary size: the word embedding's first dimension (`bort.` prefix allowed)."""
    for name in (WORD_EMBED, BACKBONE_PREFIX + WORD_EMBED):
        if name in params:
            shape = np.shape(params[name])
            if len(shape) != 2:
                raise ValueError("parameter %s: expected a 2-d embedding, found shape %s"
                                 % (name, _fmt(shape)))
            return int(shape[0])
    raise ValueError("cannot infer the vocabulary size: no %s parameter" % WORD_EMBED)


def infer_architecture(params):
    """The config fields a backbone's shapes determine: num_layers, units, hidden_size,
    vocab_size, max_length, token_type_vocab_size. (num_heads cannot be inferred.)"""
    vocab_size = infer_vocab_size(params)
    units = int(np.shape(params[WORD_EMBED])[1])
    layers = set()
    prefix = "encoder.transformer_cells."
    for name in params:
        if name.startswith(prefix):
            layers.add(int(name[len(prefix):].split(".", 1)[0]))
    out = {"vocab_size": vocab_size, "units": units, "num_layers": len(layers)}
    ffn = prefix + "0.ffn.ffn_1.weight"
    if ffn in params:
        out["hidden_size"] = int(np.shape(params[ffn])[0])
    if "encoder.position_weight" in params:
        out["max_length"] = int(np.shape(params["encoder.position_weight"])[0])
    tt = "token_type_embed.0.weight"
    out["token_type_vocab_size"] = int(np.shape(params[tt])[0]) if tt in params else 0
    return out


def _matching_configs(found):
    names = []
    for name in list_configs():
        c = get_config(name)
        if all(getattr(c, k) == v for k, v in found.items() if k != "vocab_size"):
            names.append(name)
    return names


def load_checkpoint(path, config=None):
    """Read, canonicalise and validate a backbone or classifier checkpoint.

    `config`: a BortConfig (used as given), a config name or JSON path (resolved with
    `get_config(config, vocab_size=<from the file>)`), or None (the shapes are checked for
    consistency, but num_heads cannot be inferred, so a ValueError asks for a name).
    Returns (config, params): params in the file's names (`arg:`/`aux:` stripped, tied
    decoder duplicate dropped), in canonical order.
    """
    path = os.fspath(path)
    return resolve_checkpoint(load_params(path), path, config)


def resolve_checkpoint(params, path, config=None):
    """`load_checkpoint` for a dict already in memory (read from any format); `path` names
    its source in errors."""
    classifier = is_classifier(params)
    backbone, head = split_classifier(params, source=path) if classifier else (params, None)
    try:
        vocab_size = infer_vocab_size(backbone)
    except ValueError as err:
        raise ValueError("%s: %s" % (path, err)) from None
    if config is None:
        found = infer_architecture(drop_tied_decoder(backbone, source=path))
        desc = ", ".join("%s=%d" % kv for kv in sorted(found.items()))
        candidates = _matching_configs(found)
        hint = ("; configs with these shapes: %s" % ", ".join(candidates)) if candidates else ""
        raise ValueError("%s: a config is required: the shapes give %s, but num_heads cannot be "
                         "inferred from parameter shapes; pass a config name (e.g. bort_D_A_I_H) "
                         "or a JSON path%s" % (path, desc, hint))
    if not isinstance(config, BortConfig):
        config = get_config(config, vocab_size=vocab_size)
    backbone = validate_params(backbone, config, source=path)
    if not classifier:
        return config, backbone
    head, _, _ = validate_classifier_head(head, config, source=path)
    return config, join_classifier(backbone, head)


def load_model_params(path, config=None, with_decoder=True):
    """(config, backbone params) to build a BortModel from a backbone or classifier
    checkpoint: a classifier's head is left out, `with_decoder=False` leaves the MLM decoder
    out, and a file without a decoder cannot fill a model that has one."""
    config, params = load_checkpoint(path, config)
    if is_classifier(params):
        params, _ = split_classifier(params, source=path)
    has_decoder = any(name.startswith("decoder.") for name in params)
    if with_decoder and not has_decoder:
        raise ValueError("%s: the checkpoint has no MLM decoder (decoder.*); build the model "
                         "without one (use_decoder=False)" % path)
    if not with_decoder:
        params = OrderedDict((n, v) for n, v in params.items() if not n.startswith("decoder."))
    return config, params



def resolve_model(name, checkpoint=None, use_decoder=True, dropout=None):
    """(config, params or None) for the twins' `get_bort_model`: a registry name, `bort_D_A_I_H`
    or JSON path, with the vocabulary size and weights of `checkpoint` when given (see
    `load_model_params`); `dropout` overrides both dropout rates."""
    params = None
    if checkpoint is not None:
        config, params = load_model_params(checkpoint, name, with_decoder=use_decoder)
    else:
        config = get_config(name)
    if dropout is not None:
        config = config.replace(dropout=dropout, embed_dropout=dropout)
    return config, params


def load_backbone_and_head(path, config=None):
    """(config, backbone params, head params or None) of a backbone or classifier checkpoint,
    for a backend building a model (with an MLM decoder when the backbone has one)."""
    config, params = load_checkpoint(path, config)
    head = None
    if is_classifier(params):
        params, head = split_classifier(params, source=path)
    return config, params, head


def check_params(shapes, params, source="<params>"):
    """A model's parameters (canonical name -> shape) must be filled by `params` exactly:
    the same names, the same shapes; a ValueError names the differences."""
    missing = sorted(set(shapes) - set(params))
    unexpected = sorted(set(params) - set(shapes))
    if missing or unexpected:
        raise ValueError("%s: parameters do not match the model: missing %s; unexpected %s"
                         % (source, missing[:8] or "none", unexpected[:8] or "none"))
    for name, shape in shapes.items():
        if tuple(shape) != np.shape(params[name]):
            raise ValueError("%s: parameter %s has shape %s, the model expects %s"
                             % (source, name, np.shape(params[name]), tuple(shape)))
