"""bort_gluon's fast paths: the unpadded encoder, the static hybridized graph and GluonNLP's own
BERTModel compute what GluonNLP's padded BortModel does (forward and gradients, and against the
2020 stack's dump); MXNet AMP bfloat16 stays close or says why not."""
import os

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
pytest.importorskip("gluonnlp")
pytestmark = pytest.mark.gluon

from bort_core.configs import get_config  # noqa: E402
from bort_gluon import model as gm  # noqa: E402
from parity import io  # noqa: E402
from parity.grads import compare_grads  # noqa: E402
from parity.io import make_inputs, random_params  # noqa: E402


def _setup(use_decoder=False):
    config = get_config("bort_tiny").without_dropout()
    params = {k: v for k, v in random_params(config, 0).items()
              if use_decoder or not k.startswith("decoder.")}
    model = gm.BortModel(config, use_decoder=use_decoder)
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
    with pytest.raises(ValueError, match="set_unpadded"):
        gm.to_low_precision(model, "bfloat16")
    gm.set_unpadded(model, False)
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
    from parity.throughput.worker import GluonRunner

    if mx.context.num_gpus():
        pytest.skip("this MXNet sees a GPU")
    with pytest.raises(RuntimeError, match="MXNet .* has no GPU"):
        GluonRunner({"device": "cuda", "dtype": "float32"})


def _forward_backward(block, args, train=False):
    """Outputs and every parameter's gradient of a scalar that reads all outputs."""
    named = gm.named_parameters(block)
    for p in named.values():
        p.grad_req = "write"
    with mx.autograd.record(train_mode=train):
        out = block(*args)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        loss = sum((o * o).sum() for o in out)
    loss.backward()
    return [o.asnumpy() for o in out], {n: p.grad().asnumpy() for n, p in named.items()}


@pytest.mark.parametrize("token_types", [0, 2])
@pytest.mark.parametrize("hybridize", [False, True])
def test_unpadded_encoder_matches_the_padded_path_forward_and_backward(token_types, hybridize):
    config = get_config("bort_tiny").without_dropout().replace(token_type_vocab_size=token_types)
    model = gm.BortModel(config)
    gm.set_params(model, random_params(config, 0))
    inputs = make_inputs(3, 16, config.vocab_size, 4, 0)
    args = [mx.nd.array(inputs[k]) for k in io.INPUT_KEYS]
    if config.token_type_vocab_size:
        types = np.random.RandomState(0).randint(0, config.token_type_vocab_size, (3, 16))
        args.append(mx.nd.array(types))
    ref, ref_grads = _forward_backward(gm.set_unpadded(model, False), args)
    gm.set_unpadded(model, True)
    if hybridize:
        gm.hybridize_for_speed(model)
    calls = []
    real = gm.Packing.__init__

    def counting(self, valid_length, seq_len):
        real(self, valid_length, seq_len)
        calls.append(self.size)

    gm.Packing.__init__ = counting
    try:
        out, grads = _forward_backward(model, args)
    finally:
        gm.Packing.__init__ = real
    assert calls == [int(inputs["valid_length"].sum())]
    for a, b in zip(out, ref):
        assert np.abs(a - b).max() < 1e-5
    assert (out[0][2, inputs["valid_length"][2]:] == 0).all()
    rows = compare_grads(grads, ref_grads)     # relative L2 <= 1e-4, floored (key biases: ~0)
    assert len(rows) == len(ref_grads) and all(r["ok"] for r in rows), rows[:3]


def test_unpadded_classifier_hybridized_and_in_training_mode():
    config = get_config("bort_tiny")
    params = random_params(config, 0, num_classes=2)
    clf = gm.BortClassifier(gm.BortModel(config, use_decoder=False), 2, dropout=0.0)
    gm.set_params(clf, {k: v for k, v in params.items() if not k.startswith("bort.decoder.")})
    inputs = make_inputs(4, 12, config.vocab_size, 2, 1)
    args = [mx.nd.array(inputs[k]) for k in ("input_ids", "valid_length")]
    want = gm.set_unpadded(clf, False)(*args).asnumpy()
    gm.hybridize_for_speed(gm.set_unpadded(clf, True))
    assert np.abs(clf(*args).asnumpy() - want).max() < 1e-5
    (noisy,), grads = _forward_backward(clf, args, train=True)   # dropout on the packed rows
    assert np.isfinite(noisy).all() and not np.allclose(noisy, want)
    assert all(np.isfinite(g).all() for g in grads.values())


def test_hooks_keep_the_padded_path():
    _, _, model, x, vl = _setup()
    seen = []
    handle = model.encoder.transformer_cells[0].register_forward_hook(
        lambda block, args, out: seen.append(out[0].shape))
    model(x, vl)
    handle.detach()
    assert seen == [(16, 3, model.config.units)]        # GluonNLP's (L, B, U)
    assert model.packing(x, vl) is not None and gm.set_unpadded(model, False).packing(x, vl) is None


@pytest.mark.parametrize("name", ["bort_4_8_768_1024", "bort_tiny"])
def test_unpadded_gluon_matches_the_2020_stack(name, legacy_dump):
    from parity.__main__ import build_model
    from parity.compare import compare_taps, format_table

    folder = legacy_dump(name)
    inputs = io.load_inputs(os.path.join(folder, "inputs.npz"))
    backbone, _ = build_model("gluon", name, os.path.join(folder, "checkpoint.params"), 0)
    gm.hybridize_for_speed(backbone)
    sequence, logits = backbone(*[mx.nd.array(inputs[k]) for k in io.INPUT_KEYS])
    legacy = io.load_taps(os.path.join(folder, "taps.npz"))
    rows = compare_taps({"sequence_output": sequence.asnumpy(), "mlm_logits": logits.asnumpy()},
                        {k: legacy[k] for k in ("sequence_output", "mlm_logits")})
    assert all(r["ok"] for r in rows), format_table(rows)
