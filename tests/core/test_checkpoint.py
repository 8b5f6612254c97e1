"""bort_core.checkpoint without MXNet: format, names, validation, bad input, atomic writes."""
import importlib.util
import os
import pathlib
import struct
from collections import OrderedDict

import numpy as np
import pytest

from bort_core import arch
from bort_core import checkpoint as ckpt
from bort_core.configs import get_config
from bort_core.model_params import (
    classifier_layout,
    infer_architecture,
    infer_vocab_size,
    is_classifier,
    join_classifier,
    load_checkpoint,
    load_model_params,
    resolve_checkpoint,
    split_classifier,
    validate_classifier_head,
    validate_params,
)

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
V1, V2, V3 = ckpt.NDARRAY_V1_MAGIC, ckpt.NDARRAY_V2_MAGIC, ckpt.NDARRAY_V3_MAGIC


def _fixture_module():
    spec = importlib.util.spec_from_file_location(
        "make_mxnet150_fixture", str(FIXTURES / "make_mxnet150_fixture.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return (a.dtype == b.dtype and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


# ---- hand-built files: the format, independently of our writer

def _entry(shape, flag=0, data=b"", magic=V2, stype=0, ndim=None):
    out = struct.pack("<I", magic)
    if magic != V1:
        out += struct.pack("<i", stype)
    out += struct.pack("<i", len(shape) if ndim is None else ndim)
    out += struct.pack("<%dq" % len(shape), *shape)
    if data is None:   # a "none" entry stops after its shape
        return out
    return out + struct.pack("<iii", 1, 0, flag) + data


def _file(entries, names=(), head=(ckpt.LIST_MAGIC, 0)):
    out = struct.pack("<QQQ", head[0], head[1], len(entries)) + b"".join(entries)
    out += struct.pack("<Q", len(names))
    for name in names:
        raw = name.encode("utf-8")
        out += struct.pack("<Q", len(raw)) + raw
    return out


def _write(tmp_path, data, name="f.params"):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _small_file():
    data = np.arange(6, dtype="<f4").tobytes()
    return _file([_entry((2, 3), 0, data), _entry((2,), 2, np.array([1.5, -2], "<f2").tobytes())],
                 names=["a.b", "h"])


def test_reads_hand_built_v2_file(tmp_path):
    got = ckpt.load_ndarrays(_write(tmp_path, _small_file()))
    assert list(got) == ["a.b", "h"]
    assert _bits_equal(got["a.b"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert _bits_equal(got["h"], np.array([1.5, -2], np.float16))
    assert got["a.b"].flags.writeable and got["a.b"].flags.c_contiguous


def test_writer_emits_exactly_the_format(tmp_path):
    path = str(tmp_path / "w.params")
    ckpt.save_ndarrays(path, OrderedDict([("a.b", np.arange(6, dtype=np.float32).reshape(2, 3)),
                                          ("h", np.array([1.5, -2], np.float16))]))
    assert pathlib.Path(path).read_bytes() == _small_file()


def test_v1_and_v3_magics_and_none_entries(tmp_path):
    one = np.array([7.0], "<f8").tobytes()
    entries = [
        _entry((1,), 1, one, magic=V1),
        _entry((), 0, np.array(2.5, "<f4").tobytes(), magic=V3),    # a V3 scalar
        _entry((0, 3), 0, b"", magic=V3),                           # V3 zero-size
        _entry((2,), 7, b"\x01\x00", magic=V3),                     # bool (mxnet >= 1.6)
        _entry((), data=None),                                      # V2 ndim 0: none
        _entry((), data=None, magic=V3, ndim=-1),                   # V3 unknown ndim: none
        _entry((-1, 2), data=None, magic=V3),                       # V3 unknown dim: none
    ]
    got = ckpt.load_ndarrays(_write(tmp_path, _file(entries)))
    assert isinstance(got, list) and len(got) == 7
    assert _bits_equal(got[0], np.array([7.0]))
    assert _bits_equal(got[1], np.array(2.5, np.float32))
    assert got[2].shape == (0, 3)
    assert _bits_equal(got[3], np.array([True, False]))
    assert got[4:] == [None, None, None]


def test_load_params_refuses_lists_and_none(tmp_path):
    with pytest.raises(ValueError, match="unnamed list of 1 arrays"):
        ckpt.load_params(_write(tmp_path, _file([_entry((1,), 0, b"\0" * 4)])))
    path = _write(tmp_path, _file([_entry((), data=None)], names=["w"]), "none.params")
    with pytest.raises(ValueError, match="none.params.*'w' is an uninitialised"):
        ckpt.load_params(path)


# ---- round trips

@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "uint8", "int8", "int32",
                                   "int64"])
def test_round_trip_dtypes(tmp_path, dtype):
    rng = np.random.RandomState(0)
    value = (rng.standard_normal((3, 5, 2)) * 50).astype(dtype)
    path = str(tmp_path / "rt.params")
    ckpt.save_ndarrays(path, {"encoder.transformer_cells.0.proj.weight": value, "x": value[0, 0]})
    got = ckpt.load_ndarrays(path)
    assert _bits_equal(got["encoder.transformer_cells.0.proj.weight"], value)
    assert _bits_equal(got["x"], value[0, 0])


def test_round_trip_special_floats_order_names_and_lists(tmp_path):
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 6e-8, 65504], np.float16)
    params = OrderedDict([("z.last", special), ("a.first", special.astype(np.float32)),
                          ("ünïcode name", np.ones((1,), np.float32))])
    path = str(tmp_path / "rt.params")
    ckpt.save_ndarrays(path, params)
    got = ckpt.load_ndarrays(path)
    assert list(got) == list(params)
    for name in params:
        assert _bits_equal(got[name], params[name])
    ckpt.save_ndarrays(pathlib.Path(path), [special, special[::2]])   # list, pathlib, strided
    got = ckpt.load_ndarrays(pathlib.Path(path))
    assert isinstance(got, list) and _bits_equal(got[1], special[::2])


def test_writer_converts_byte_order_and_layout(tmp_path):
    value = np.arange(12, dtype=">f4").reshape(3, 4).T
    path = str(tmp_path / "be.params")
    ckpt.save_ndarrays(path, {"w": value})
    got = ckpt.load_ndarrays(path)["w"]
    assert got.dtype == np.float32 and np.array_equal(got, value)


@pytest.mark.parametrize("value, message", [
    (np.array(1.0, np.float32), "shape \\(\\) cannot be written"),
    (np.zeros((0, 3), np.float32), "shape \\(0, 3\\) cannot be written"),
    (np.array([True]), "dtype bool cannot be written"),
    (np.array([1 + 2j]), "dtype complex128 cannot be written"),
    (np.array(["s"]), "dtype <U1 cannot be written"),
])
def test_writer_refuses_what_mxnet_cannot_load(tmp_path, value, message):
    path = tmp_path / "bad.params"
    with pytest.raises(ValueError, match="array 'w': " + message):
        ckpt.save_ndarrays(str(path), {"w": value})
    assert not path.exists() and os.listdir(str(tmp_path)) == []


# ---- the 2020 stack's own file

def test_reads_mxnet150_fixture_exactly():
    expected = _fixture_module().expected_arrays()
    path = str(FIXTURES / "mxnet150_small.params")
    raw = ckpt.load_ndarrays(path)
    assert list(raw) == list(expected)
    for name, value in expected.items():
        assert _bits_equal(raw[name], value), name
    stripped = ckpt.load_params(path)
    assert "fc.weight" in stripped and "bn.moving_var" in stripped
    assert "arg:fc.weight" not in stripped
    assert list(ckpt.load_params(path, strip_module_prefixes=False)) == list(expected)


def test_strip_prefixes_collision():
    params = OrderedDict([("arg:w", 1), ("aux:w", 2)])
    with pytest.raises(ValueError, match="'arg:w' and 'aux:w' both become 'w'"):
        ckpt.strip_prefixes(params, source="m.params")
    assert list(ckpt.strip_prefixes({"bort.x": 1}, prefixes=("bort.",))) == ["x"]


# ---- canonical names against a config

def _params(config, with_decoder=True, dtype=np.float32, seed=0):
    rng = np.random.RandomState(seed)
    return OrderedDict((name, rng.standard_normal(shape).astype(dtype))
                       for name, shape in arch.canonical_shapes(config, with_decoder).items())


TINY = get_config("bort_tiny").replace(vocab_size=50, max_length=16)


def test_tied_decoder_stored_twice_and_dropped(tmp_path):
    params = _params(TINY, dtype=np.float16)
    path = str(tmp_path / "tied.params")
    ckpt.save_params(path, params, store_tied_decoder=True)
    raw = ckpt.load_ndarrays(path)
    names = list(raw)
    assert names.index("decoder.3.weight") == names.index("decoder.3.bias") - 1
    assert _bits_equal(raw["decoder.3.weight"], params["word_embed.0.weight"])
    canonical = validate_params(raw, TINY, source=path)
    assert list(canonical) == list(arch.canonical_shapes(TINY))
    for name in params:
        assert _bits_equal(canonical[name], params[name])
    ckpt.save_params(path, params)   # default: stored once
    assert "decoder.3.weight" not in ckpt.load_ndarrays(path)


def test_tied_decoder_copy_must_match():
    params = ckpt.add_tied_decoder(_params(TINY))
    params["decoder.3.weight"] = params["decoder.3.weight"].copy()
    params["decoder.3.weight"][0, :3] += 1
    with pytest.raises(ValueError, match="f.params: parameter decoder.3.weight must be a copy of "
                                         "the tied word_embed.0.weight, but 3 of its"):
        validate_params(params, TINY, source="f.params")
    params["decoder.3.weight"] = params["decoder.3.weight"][:, :2]
    with pytest.raises(ValueError, match="expected shape \\(50, 128\\) float32, found \\(50, 2\\)"):
        ckpt.drop_tied_decoder(params)
    nan = ckpt.add_tied_decoder(_params(TINY))
    nan["word_embed.0.weight"][0, 0] = np.nan   # the same object: a NaN copy is still a copy
    assert "decoder.3.weight" not in ckpt.drop_tied_decoder(nan)


def test_validate_reports_file_parameter_expected_and_found():
    params = _params(TINY)
    del params["encoder.layer_norm.beta"]
    params["encoder.transformer_cells.1.ffn.ffn_1.weight"] = np.zeros((7, 128), np.float32)
    params["pooler.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError) as err:
        validate_params(params, TINY, source="/ckpt/x.params")
    text = str(err.value)
    assert text.startswith("/ckpt/x.params: parameters do not match config 'bort_tiny'")
    assert "missing parameter encoder.layer_norm.beta (expected shape (128,))" in text
    assert ("parameter encoder.transformer_cells.1.ffn.ffn_1.weight: expected shape (96, 128), "
            "found (7, 128)") in text
    assert "unexpected parameter pooler.weight (shape (2, 2))" in text


def test_validate_decoder_presence_and_dtype():
    backbone = _params(TINY, with_decoder=False)
    assert list(validate_params(backbone, TINY)) == list(arch.canonical_shapes(TINY, False))
    with pytest.raises(ValueError, match="missing parameter decoder.0.weight"):
        validate_params(backbone, TINY, with_decoder=True)
    backbone["encoder.layer_norm.gamma"] = backbone["encoder.layer_norm.gamma"].astype(np.int32)
    with pytest.raises(ValueError, match="encoder.layer_norm.gamma: expected a floating-point"):
        validate_params(backbone, TINY)


def test_validate_warns_on_non_finite():
    params = _params(TINY)
    params["decoder.2.gamma"][3] = np.inf
    params["encoder.position_weight"][0, :2] = np.nan
    with pytest.warns(RuntimeWarning) as record:
        validate_params(params, TINY, source="w.params")
    messages = sorted(str(w.message) for w in record)
    assert messages == ["w.params: parameter decoder.2.gamma has 1 non-finite value(s) (nan/inf) "
                        "out of 128",
                        "w.params: parameter encoder.position_weight has 2 non-finite value(s) "
                        "(nan/inf) out of 2048"]


def test_infer_vocab_size_and_architecture():
    params = _params(TINY)
    assert infer_vocab_size(params) == 50
    assert infer_vocab_size({"bort.word_embed.0.weight": np.zeros((9, 2))}) == 9
    with pytest.raises(ValueError, match="no word_embed.0.weight"):
        infer_vocab_size({"x": np.zeros(1)})
    assert infer_architecture(params) == {
        "vocab_size": 50, "units": 128, "num_layers": 2, "hidden_size": 96, "max_length": 16,
        "token_type_vocab_size": 0}


# ---- classifier checkpoints

@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_classifier_split_validate_and_load(tmp_path, dropout):
    backbone = _params(TINY, with_decoder=False)
    rng = np.random.RandomState(1)
    head = OrderedDict((n, rng.standard_normal(s).astype(np.float32))
                       for n, s in arch.classifier_shapes(TINY, 3, dropout=dropout).items())
    joined = join_classifier(backbone, head)
    assert next(iter(joined)) == "bort.word_embed.0.weight" and is_classifier(joined)
    b, h = split_classifier(joined)
    assert list(b) == list(backbone) and list(h) == list(head)
    assert classifier_layout(h) == (3, dropout)
    path = str(tmp_path / "model_bort_MRPC_0.params")
    ckpt.save_params(path, joined)
    config, params = load_checkpoint(path, TINY)
    assert config is TINY and list(params) == list(joined)
    assert all(_bits_equal(params[n], joined[n]) for n in joined)
    with pytest.raises(ValueError, match="expected shape \\(5,\\), found \\(3,\\)"):
        validate_classifier_head(head, TINY, num_classes=5, source=path)


def test_classifier_bad_names():
    with pytest.raises(ValueError, match="x.params: a classifier checkpoint holds only bort.\\* "
                                         "and classifier.\\* names; found pooler.weight"):
        split_classifier({"bort.a": 1, "pooler.weight": 2}, source="x.params")
    with pytest.raises(ValueError, match="cannot recognise the classifier head"):
        classifier_layout({"classifier.2.weight": np.zeros((2, 2))})


# ---- load_checkpoint

def test_load_checkpoint_module_prefixes_and_json_config(tmp_path):
    path = str(tmp_path / "tiny.params")
    params = ckpt.add_tied_decoder(_params(TINY))
    ckpt.save_params(path, OrderedDict(("arg:" + n, v) for n, v in params.items()))
    json_path = str(tmp_path / "tiny.json")
    TINY.to_json(json_path)
    config, loaded = load_checkpoint(path, json_path)
    assert config == TINY
    assert list(loaded) == list(arch.canonical_shapes(TINY))
    assert all(_bits_equal(loaded[n], params[n]) for n in loaded)


def test_load_checkpoint_name_config_object_and_none(tmp_path):
    config = get_config("bort_tiny").replace(vocab_size=50)
    path = str(tmp_path / "tiny.params")
    ckpt.save_params(path, _params(config), store_tied_decoder=True)
    got_config, loaded = load_checkpoint(path, "bort_tiny")
    assert got_config == config and list(loaded) == list(arch.canonical_shapes(config))
    assert load_checkpoint(pathlib.Path(path), config)[0] is config
    with pytest.raises(ValueError, match="tiny.params: parameters do not match config "
                                         "'bort_4_8_768_1024'"):
        load_checkpoint(path, "bort_4_8_768_1024")
    with pytest.raises(ValueError, match="tiny.params: parameters do not match config 'bort_tiny' "
                                         "\\(vocab_size 4096"):
        load_checkpoint(path, get_config("bort_tiny"))
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert "num_heads cannot be inferred" in text and "num_layers=2" in text
    assert "units=128" in text and "hidden_size=96" in text and "bort_tiny" in text


def test_load_checkpoint_without_embedding(tmp_path):
    path = str(tmp_path / "x.params")
    ckpt.save_params(path, {"foo": np.ones(2, np.float32)})
    with pytest.raises(ValueError, match="x.params: cannot infer the vocabulary size"):
        load_checkpoint(path, "bort_tiny")


# ---- bad input

def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.params")
    with pytest.raises(FileNotFoundError, match="nope.params"):
        ckpt.load_ndarrays(path)
    with pytest.raises(FileNotFoundError, match="nope.params"):
        load_checkpoint(path, "bort_tiny")


@pytest.mark.parametrize("data, message", [
    (b"", "expected at least a 16-byte header, the file has 0 bytes"),
    (b"PK\x03\x04" + b"\0" * 40, "expected list magic 0x112, found 0x4034B50 .at byte offset 0"),
    (b"\x93NUMPY\x01\x00" + b"\0" * 40, "expected list magic 0x112"),
    (struct.pack("<QQQ", 0x112, 5, 0) + b"\0" * 8, "expected a zero reserved field, found 0x5"),
    (_file([_entry((1,), 0, b"\0" * 4, magic=0xDEADBEEF)]),
     "array 0: expected an NDArray magic .* found 0xDEADBEEF .at byte offset 24"),
    (_file([_entry((1,), 9, b"\0" * 4)]),
     "array 0: expected a dense type flag in \\[0, 1, 2, 3, 4, 5, 6, 7\\], found 9 "
     ".at byte offset 52"),
    (_file([_entry((1,), 12, b"\0" * 2)]), "found 12 \\(bfloat16 has no numpy dtype\\)"),
    (_file([_entry((1,), -1, b"\0" * 2)]), "found -1"),
    (_file([_entry((4,), 0, b"\0" * 16, stype=1)]), "array 0: row_sparse storage \\(type 1\\)"),
    (_file([_entry((4,), 0, b"\0" * 16, stype=2)]), "csr storage"),
    (_file([_entry((2, -3), 0, b"")]), "array 0: negative dimension in shape \\(2, -3\\)"),
    (_file([_entry((1,), 0, b"", ndim=99)]), "expected ndim in \\[0, 32\\], found 99"),
    (_file([_entry((1 << 40, 1 << 40), 0, b"")]), "truncated: array 0 needs"),
    (struct.pack("<QQQ", 0x112, 0, 1 << 60), "array count 1152921504606846976 cannot fit"),
    (_small_file() + b"\0",
     "expected end of file, found 1 trailing bytes .at byte offset 152 of 153"),
    (_small_file() + b"garbage!" * 4, "found 32 trailing bytes"),
    (_file([_entry((1,), 0, b"\0" * 4)] * 2, names=["a"]), "expected 0 or 2 names .* found 1"),
    (_file([_entry((1,), 0, b"\0" * 4)])[:-8] + struct.pack("<QQ", 1, 1) + b"\xff",
     "name 0 is not valid UTF-8"),
], ids=[
    "empty", "zip-file", "npy-file", "reserved", "ndarray-magic", "dtype-flag-9", "bfloat16",
    "dtype-flag-neg", "row-sparse", "csr", "negative-dim", "ndim-99", "huge-shape", "huge-count",
    "trailing-byte", "trailing-garbage", "name-count", "bad-utf8"
])
def test_bad_input(tmp_path, data, message):
    path = _write(tmp_path, data, "bad.params")
    prefix = "bad.params: not a valid MXNet NDArray file: .*"
    with pytest.raises(ValueError, match=prefix + message):
        ckpt.load_ndarrays(path)


def test_duplicate_names(tmp_path):
    path = _write(tmp_path, _file([_entry((1,), 0, b"\0" * 4)] * 2, names=["w", "w"]))
    with pytest.raises(ValueError, match="f.params: parameter name 'w' occurs twice"):
        ckpt.load_ndarrays(path)


def test_every_truncation_is_a_clear_error(tmp_path):
    data = _small_file()
    for n in range(len(data)):
        path = _write(tmp_path, data[:n], "cut.params")
        with pytest.raises(ValueError, match="cut.params: not a valid MXNet NDArray file: .*"
                                             "(truncated|header|cannot fit).*byte offset"):
            ckpt.load_ndarrays(path)


def test_truncated_real_fixture(tmp_path):
    data = (FIXTURES / "mxnet150_small.params").read_bytes()
    for n in (len(data) - 1, len(data) // 2, 100):
        path = _write(tmp_path, data[:n], "cut.params")
        with pytest.raises(ValueError, match="cut.params: .*truncated"):
            ckpt.load_ndarrays(path)


# ---- atomic writes

def _old_file(tmp_path):
    path = str(tmp_path / "model.params")
    ckpt.save_ndarrays(path, {"old": np.ones(3, np.float32)})
    return path, pathlib.Path(path).read_bytes()


def test_failure_mid_write_keeps_old_content(tmp_path, monkeypatch):
    path, before = _old_file(tmp_path)

    def write_half_then_fail(f, entries):
        header, array = entries[0]
        f.write(header)
        f.write(memoryview(array.reshape(-1).view(np.uint8))[:10])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt, "_write_entries", write_half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_ndarrays(path, {"new": np.zeros((100, 100), np.float32)})
    assert pathlib.Path(path).read_bytes() == before
    assert os.listdir(str(tmp_path)) == ["model.params"]   # no temp file left behind


def test_failure_at_fsync_keeps_old_content(tmp_path, monkeypatch):
    path, before = _old_file(tmp_path)

    def fail(fd):
        raise OSError("fsync failed (simulated)")

    monkeypatch.setattr(ckpt.os, "fsync", fail)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_ndarrays(path, {"new": np.zeros(4, np.float32)})
    assert pathlib.Path(path).read_bytes() == before
    assert os.listdir(str(tmp_path)) == ["model.params"]


def test_interrupt_leaves_no_file(tmp_path, monkeypatch):
    def interrupt(f, entries):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "_write_entries", interrupt)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_ndarrays(str(tmp_path / "new.params"), {"w": np.zeros(2, np.float32)})
    assert os.listdir(str(tmp_path)) == []


def test_load_model_params_and_resolve_checkpoint(tmp_path):
    full = _params(TINY)
    path = str(tmp_path / "full.params")
    ckpt.save_params(path, full, store_tied_decoder=True)
    config, params = load_model_params(path, TINY)
    assert config is TINY and list(params) == list(arch.canonical_shapes(TINY))
    _, params = load_model_params(path, TINY, with_decoder=False)
    assert list(params) == list(arch.canonical_shapes(TINY, with_decoder=False))
    head = OrderedDict((n, np.zeros(s, np.float32))
                       for n, s in arch.classifier_shapes(TINY, 2).items())
    cls_path = str(tmp_path / "cls.params")
    ckpt.save_params(cls_path, join_classifier(_params(TINY, with_decoder=False), head))
    _, params = load_model_params(cls_path, TINY, with_decoder=False)
    assert list(params) == list(arch.canonical_shapes(TINY, with_decoder=False))
    with pytest.raises(ValueError, match="cls.params: the checkpoint has no MLM decoder"):
        load_model_params(cls_path, TINY)
    config, params = resolve_checkpoint(full, "<memory>", TINY)
    assert list(params) == list(arch.canonical_shapes(TINY))
