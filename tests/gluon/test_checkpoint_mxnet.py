"""bort_core.checkpoint against MXNet itself: our files load in mx.nd.load bit-exactly, and
mx.nd.save / GluonNLP's save_parameters files read bit-exactly (mxnet 1.9.1 here; mxnet
1.5.0 through the legacy oracle's Python 3.7 interpreter)."""
import os
import pathlib
import subprocess
import sys
import textwrap
from collections import OrderedDict

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
pytestmark = pytest.mark.gluon

from bort_core import arch  # noqa: E402
from bort_core import checkpoint as ckpt  # noqa: E402
from bort_core.configs import BortConfig  # noqa: E402
from bort_core.model_params import validate_params  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
DTYPES = ["float16", "float32", "float64", "uint8", "int8", "int32", "int64"]


def _bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return (a.dtype == b.dtype and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


def _arrays(seed=0):
    rng = np.random.RandomState(seed)
    out = OrderedDict()
    for i, dtype in enumerate(DTYPES):
        shape = [(7,), (3, 4), (2, 3, 5), (1,)][i % 4]
        out["layer.%d.%s" % (i, dtype)] = (rng.standard_normal(shape) * 40).astype(dtype)
    out["special.float16"] = np.array([np.nan, np.inf, -np.inf, -0.0, 6e-8, 65504], np.float16)
    out["special.float32"] = np.array([np.nan, -np.inf, -0.0, 1e-45, 3.4e38], np.float32)
    return out


def test_our_writer_loads_in_mxnet_bit_exact(tmp_path):
    params = _arrays()
    path = str(tmp_path / "ours.params")
    ckpt.save_ndarrays(path, params)
    loaded = mx.nd.load(path)
    assert sorted(loaded) == sorted(params)
    for name, value in params.items():
        assert _bits_equal(loaded[name].asnumpy(), value), name
    ckpt.save_ndarrays(path, list(params.values()))
    loaded = mx.nd.load(path)
    assert isinstance(loaded, list)
    for got, value in zip(loaded, params.values()):
        assert _bits_equal(got.asnumpy(), value)


def test_mxnet_save_reads_bit_exact(tmp_path):
    params = _arrays(1)
    path = str(tmp_path / "mx.params")
    mx.nd.save(path, {n: mx.nd.array(v, dtype=v.dtype) for n, v in params.items()})
    got = ckpt.load_ndarrays(path)
    assert sorted(got) == sorted(params)
    for name, value in params.items():
        assert _bits_equal(got[name], value), name
    mx.nd.save(path, [mx.nd.array(v, dtype=v.dtype) for v in params.values()])
    got = ckpt.load_ndarrays(path)
    assert all(_bits_equal(g, v) for g, v in zip(got, params.values()))
    # our writer reproduces mxnet's bytes exactly
    ours = str(tmp_path / "ours.params")
    ckpt.save_ndarrays(ours, list(params.values()))
    assert pathlib.Path(ours).read_bytes() == pathlib.Path(path).read_bytes()


def test_numpy_shape_semantics_files(tmp_path):
    path = str(tmp_path / "v3.params")
    with mx.util.np_shape(True):
        mx.nd.save(path, OrderedDict([
            ("scalar", mx.nd.array(np.array(2.5, np.float32))),
            ("empty", mx.nd.zeros((0, 3))),
            ("h", mx.nd.array(np.arange(4).reshape(2, 2), dtype="float16")),
            ("flags", mx.nd.array(np.array([1, 0]), dtype="bool")),
        ]))
    got = ckpt.load_ndarrays(path)
    assert _bits_equal(got["scalar"], np.array(2.5, np.float32))
    assert got["empty"].shape == (0, 3) and got["empty"].dtype == np.float32
    assert _bits_equal(got["h"], np.arange(4, dtype=np.float16).reshape(2, 2))
    assert _bits_equal(got["flags"], np.array([True, False]))


def _gluonnlp_bert(config):
    nlp = pytest.importorskip("gluonnlp")
    encoder = nlp.model.BERTEncoder(
        num_layers=config.num_layers, units=config.units, hidden_size=config.hidden_size,
        max_length=config.max_length, num_heads=config.num_heads, dropout=0.0,
        layer_norm_eps=config.layer_norm_eps)
    model = nlp.model.BERTModel(encoder, vocab_size=config.vocab_size, units=config.units,
                                embed_size=config.units, use_pooler=False, use_decoder=True,
                                use_classifier=False, use_token_type_embed=False)
    model.initialize(mx.init.Normal(0.5))
    model(mx.nd.array([[1, 2, 3, 4]]), None, mx.nd.array([4]), mx.nd.array([[0, 1]]))
    return model


def test_gluonnlp_save_parameters_round_trip(tmp_path):
    config = BortConfig.from_dahi(2, 2, 16, 12, vocab_size=20, max_length=8)
    model = _gluonnlp_bert(config)
    model.cast("float16")
    path = str(tmp_path / "gluon.params")
    model.save_parameters(path)
    raw = ckpt.load_ndarrays(path)
    assert "decoder.3.weight" in raw   # the tied weight is stored twice
    canonical = validate_params(raw, config, source=path)
    assert list(canonical) == list(arch.canonical_shapes(config))
    mine = {n: p.data().asnumpy() for n, p in model._collect_params_with_prefix().items()}
    for name, value in canonical.items():
        assert value.dtype == np.float16 and _bits_equal(value, mine[name]), name

    # canonical dict -> our writer -> gluon load_parameters, duplicate stored or not
    for twice in (True, False):
        ours = str(tmp_path / "ours.params")
        ckpt.save_params(ours, canonical, store_tied_decoder=twice)
        fresh = _gluonnlp_bert(config)
        fresh.cast("float16")
        fresh.load_parameters(ours)
        for name, p in fresh._collect_params_with_prefix().items():
            assert _bits_equal(p.data().asnumpy(), mine[name]), name
    ckpt.save_params(ours, canonical, store_tied_decoder=True)
    assert pathlib.Path(ours).stat().st_size == pathlib.Path(path).stat().st_size


_LEGACY_SCRIPT = textwrap.dedent("""
    import sys
    import mxnet as mx
    import numpy as np
    from bort_core import checkpoint as ckpt
    ours, expected_npz, legacy_out = sys.argv[1:4]
    expected = np.load(expected_npz)
    loaded = mx.nd.load(ours)
    assert sorted(loaded) == sorted(expected.files), (sorted(loaded), expected.files)
    for name in expected.files:
        got, want = loaded[name].asnumpy(), expected[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name
    # our writer under Python 3.7 / numpy 1.16, read back by mxnet 1.5.0
    ckpt.save_ndarrays(legacy_out, [expected[n] for n in sorted(expected.files)])
    back = mx.nd.load(legacy_out)
    for got, name in zip(back, sorted(expected.files)):
        assert got.asnumpy().tobytes() == expected[name].tobytes(), name
    print("ok", mx.__version__)
""")


def test_our_files_load_in_mxnet150(tmp_path, legacy_python):
    params = _arrays(2)
    ours, npz = str(tmp_path / "ours.params"), str(tmp_path / "expected.npz")
    ckpt.save_ndarrays(ours, params)
    np.savez(npz, **params)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([legacy_python, "-c", _LEGACY_SCRIPT, ours, npz,
                             str(tmp_path / "legacy.params")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith("ok 1.5.0"), result.stdout
    back = ckpt.load_ndarrays(str(tmp_path / "legacy.params"))
    assert all(_bits_equal(b, params[n]) for b, n in zip(back, sorted(params)))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
