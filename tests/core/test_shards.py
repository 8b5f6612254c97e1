"""Shards: both layouts read alike, object arrays rebuilt without running code, bad shards named."""
import os
import pickle

import numpy as np
import pytest

from bort_core.data import shards as sh

VOCAB = 100


@pytest.fixture(params=sh.LAYOUTS)
def layout(request):
    return request.param


@pytest.fixture
def shard(tmp_path, layout):
    return sh.write_synthetic_shard(str(tmp_path / ("%s.npz" % layout)), 12, VOCAB, layout=layout)


def _fields(path):
    with np.load(path, allow_pickle=True) as data:     # our own test files
        return dict(data)


def _write(path, **fields):
    np.savez(str(path), **fields)
    return str(path)


def _same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert len(a[k]) == len(b[k]) and all(np.array_equal(x, y) for x, y in zip(a[k], b[k])), k


def test_both_layouts_load_the_same_instances(tmp_path):
    flat, old = (sh.load_shard(sh.write_synthetic_shard(str(tmp_path / ("%s.npz" % k)), 30, VOCAB,
                                                        layout=k)) for k in sh.LAYOUTS)
    _same(flat, old)
    assert all(r.dtype == np.int32 for r in flat["input_ids"])
    assert all(r.dtype == np.float32 for r in flat["masked_lm_weights"])


def test_the_flat_layout_needs_no_pickle(tmp_path):
    path = sh.write_synthetic_shard(str(tmp_path / "a.npz"), 5, VOCAB)
    with np.load(path, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)


def test_a_release_shard_with_equal_lengths_loads_from_2d_arrays(tmp_path):
    """The release saved 2-D arrays when every instance had the same lengths (its bug B4)."""
    n = 12
    path = _write(tmp_path / "b4.npz", input_ids=np.tile(np.array([0, 5, 2], np.int32), (n, 1)),
                  segment_ids=np.zeros((n, 3), np.int32),
                  masked_lm_positions=np.ones((n, 1), np.int32),
                  masked_lm_ids=np.full((n, 1), 5, np.int32),
                  masked_lm_weights=np.ones((n, 1), np.float32),
                  next_sentence_labels=np.zeros(n, np.int32), valid_lengths=np.full(n, 3, np.int32))
    loaded = sh.load_shard(path, VOCAB, max_length=3)
    assert len(loaded["input_ids"]) == n and loaded["input_ids"][0].tolist() == [0, 5, 2]


class _Payload:
    """Unpickled, it would create a file named PWNED."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("field", sh.TOKEN_FIELDS + sh.MASKED_FIELDS)
def test_a_hostile_pickle_is_refused_before_it_runs(tmp_path, field):
    data = _fields(sh.write_synthetic_shard(str(tmp_path / "a.npz"), 4, VOCAB, layout="2020"))
    target = str(tmp_path / "PWNED")
    data[field] = data[field].copy()
    data[field][1] = _Payload(target)
    path = _write(tmp_path / "evil.npz", **data)
    with pytest.raises(ValueError, match=r"evil\.npz: field %s cannot be read: it refers to "
                       r"io\.open" % field):
        sh.load_shard(path)
    assert not os.path.exists(target)


def test_pickles_that_name_numpy_2s_module_load(tmp_path):
    """numpy 2 may name its array rebuilder numpy._core.multiarray; both names are admitted."""
    path = sh.write_synthetic_shard(str(tmp_path / "a.npz"), 4, VOCAB, layout="2020")
    data = _fields(path)
    blob = b"\x93NUMPY" + bytes([1, 0])
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (4,), }"
    header += " " * (63 - (len(blob) + 2 + len(header)) % 64) + "\n"
    body = pickle.dumps(data["input_ids"], protocol=2)
    renamed = body.replace(b"numpy.core.multiarray", b"numpy._core.multiarray")
    assert renamed != body
    import zipfile
    out = str(tmp_path / "numpy2.npz")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name) if name != "input_ids.npy" else
                         blob + len(header).to_bytes(2, "little") + header.encode() + renamed)
    _same(sh.load_shard(out), sh.load_shard(path))


def _bad(tmp_path, shard, layout):
    """(file name, fields, error pattern) of shards broken in one way each."""
    data = _fields(shard)
    flat = layout == "flat"
    to_int = (data["masked_lm_weights"].astype(np.int32) if flat else
              sh.object_array([w.astype(np.int32) for w in data["masked_lm_weights"]]))
    yield "missing", {k: v for k, v in data.items() if k != "masked_lm_ids"}, \
        r"lacks field.*masked_lm_ids"
    yield "dtype", dict(data, masked_lm_weights=to_int), \
        r"masked_lm_weights\[0\] must be a 1-D float"
    yield "length", dict(data, valid_lengths=data["valid_lengths"] + (0 if flat else 1)) if not flat \
        else dict(data, input_ids=data["input_ids"][:-1]), \
        r"instance 0 has|input_ids holds \d+ values, its lengths add up to"
    yield "empty", {k: v[:0] for k, v in data.items()}, r"holds no instances"
    weights = data["masked_lm_weights"].copy()
    if flat:
        weights[0] = np.nan
    else:
        weights[0] = np.full(len(weights[0]), np.nan, np.float32)
    yield "nan", dict(data, masked_lm_weights=weights), r"instance 0: masked_lm_weights holds a " \
        r"non-finite value"
    if flat:
        yield "counts", dict(data, masked_lm_counts=data["masked_lm_counts"][:-1]), \
            r"masked_lm_counts must hold 12 non-negative integers"


def test_bad_shards_are_named(tmp_path, shard, layout):
    for name, fields, pattern in _bad(tmp_path, shard, layout):
        path = _write(tmp_path / (name + ".npz"), **fields)
        with pytest.raises(ValueError, match=pattern):
            sh.load_shard(path)
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 10\)"):
        sh.load_shard(shard, vocab_size=10)
    with pytest.raises(ValueError, match=r"instance \d+ has \d+ tokens, more than the model's "
                       r"max_length 9"):
        sh.load_shard(shard, max_length=9)
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        sh.expand_shards(str(tmp_path / "nothing-*.npz"))


@pytest.mark.parametrize("damage", ["truncated", "not-a-zip", "corrupt-member"])
def test_unreadable_files_are_named(tmp_path, shard, damage):
    raw = open(shard, "rb").read()
    if damage == "truncated":
        raw = raw[:len(raw) // 2]
    elif damage == "not-a-zip":
        raw = b"this is text, not a shard\n"
    else:                   # flip bytes inside the compressed data of the first member
        raw = raw[:60] + bytes(b ^ 0xFF for b in raw[60:120]) + raw[120:]
    path = tmp_path / "bad.npz"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=r"bad\.npz: (not a readable \.npz shard|field \w+ "
                       r"cannot be read)"):
        sh.load_shard(str(path))
