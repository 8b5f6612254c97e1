"""bort_gluon's fast paths: the static hybridized graph and GluonNLP's own BERTModel compute
what the imperative BortModel does; MXNet AMP bfloat16 stays close or says why not."""
import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
pytest.importorskip("gluonnlp")
pytestmark = pytest.mark.gluon

from bort_core.configs import get_config  # noqa: E402
from bort_gluon import model as gm  # noqa: E402
from parity.io import make_inputs, random_params  # noqa: E402


def _setup(use_decoder=False):
    config = get_config("bort_tiny").without_dropout()
    params = {k: v for k, v in random_params(config, 0).items()
              if use_decoder or not k.startswith("decoder.")}
    model = gm.BortModel(config, use_decoder=use_decoder)
    gm.initialize_like_release(model)
    gm.set_params(model, params)
    inputs = make_inputs(3, 16, config.vocab_size, 4, 0)
    return config, params, model, mx.nd.array(inputs["input_ids"]), mx.nd.array(inputs["valid_length"])


def test_static_hybridized_graph_matches_imperative():
    _, _, model, x, vl = _setup()
    want = model(x, vl).asnumpy()
    gm.hybridize_for_speed(model)
    for _ in range(2):   # first call builds the static graph, the second reuses it
        got = model(x, vl).asnumpy()
        assert np.abs(got - want).max() < 1e-5
    assert model._cached_op is not None


def test_plain_gluonnlp_model_takes_the_same_weights_and_agrees():
    config, params, model, x, vl = _setup()
    plain = gm.plain_bert_model(config, use_decoder=False)
    gm.set_params(plain, params)
    assert set(gm.get_params(plain)) == set(params)
    assert np.abs(plain(x, None, vl).asnumpy() - model(x, vl).asnumpy()).max() < 1e-6


def test_amp_bfloat16_is_close_or_explains():
    _, _, model, x, vl = _setup()
    want = model(x, vl).asnumpy()
    with pytest.raises(ValueError, match="hybridize"):
        gm.to_low_precision(model, "bfloat16")
    with pytest.raises(ValueError, match="float16 AMP needs a GPU"):
        gm.to_low_precision(model, "float16")
    gm.hybridize_for_speed(model)
    model(x, vl).wait_to_read()
    try:
        low = gm.to_low_precision(model, "bfloat16")
    except ValueError as err:   # an MXNet build without bfloat16 support says so
        assert "bfloat16" in str(err)
        return
    out = low(x, vl)
    got = (out[0] if isinstance(out, (list, tuple)) else out).astype("float32").asnumpy()
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert 0 < rel < 0.05


def test_gluon_worker_names_a_missing_gpu():
    from parity import throughput as tp

    if mx.context.num_gpus():
        pytest.skip("this MXNet sees a GPU")
    with pytest.raises(RuntimeError, match="MXNet .* has no GPU"):
        tp.GluonRunner({"device": "cuda", "dtype": "float32"})
