import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
pytest.importorskip("gluonnlp")
pytestmark = pytest.mark.gluon

from bort_core import arch  # noqa: E402
from bort_core import checkpoint as ckpt  # noqa: E402
from bort_core.configs import get_config  # noqa: E402
from bort_gluon import model as gm  # noqa: E402
from parity.io import make_inputs, random_params  # noqa: E402


def _batch(config, seed=0):
    inputs = make_inputs(3, 16, config.vocab_size, 4, seed)
    return [mx.nd.array(inputs[k]) for k in ("input_ids", "valid_length", "masked_positions")]


def test_the_2020_behaviours_are_restored():
    model = gm.BortModel(get_config("bort_4_8_768_1024"))
    assert model.decoder[2]._epsilon == 1e-12          # 0.10 would use the encoder's 1e-5
    assert model.encoder.layer_norm._epsilon == 1e-5
    assert isinstance(model.word_embed[1], mx.gluon.nn.Dropout)   # 0.10 dropped embed_dropout
    assert model.decoder[3].weight is model.word_embed[0].weight


def test_hybridized_equals_imperative_and_dropout_is_train_only():
    config = get_config("bort_tiny")
    model = gm.BortModel(config)
    gm.set_params(model, random_params(config, seed=2))
    ids, valid, positions = _batch(config)
    seq, logits = model(ids, valid, positions)
    with mx.autograd.train_mode():
        noisy, _ = model(ids, valid, positions)
    assert not np.allclose(seq.asnumpy(), noisy.asnumpy())
    model.hybridize(static_alloc=True, static_shape=True)
    seq2, logits2 = model(ids, valid, positions)
    assert np.abs(seq.asnumpy() - seq2.asnumpy()).max() < 1e-6
    assert np.abs(logits.asnumpy() - logits2.asnumpy()).max() < 1e-5
    for b, n in enumerate(valid.asnumpy().astype(int)):
        assert (seq2.asnumpy()[b, n:] == 0).all()


def test_checkpoint_is_the_2020_format_and_round_trips(tmp_path):
    config = get_config("bort_tiny").replace(vocab_size=999)
    model = gm.BortModel(config)
    gm.set_params(model, random_params(config, seed=4))
    path = str(tmp_path / "m.params")
    gm.save_checkpoint(model, path)
    loaded = mx.nd.load(path)                       # MXNet's own reader
    assert np.array_equal(loaded["decoder.3.weight"].asnumpy(), loaded["word_embed.0.weight"].asnumpy())
    back = gm.get_bort_model("bort_tiny", checkpoint=path)
    assert back.config.vocab_size == 999
    a, b = gm.get_params(model), gm.get_params(back)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    bare = gm.get_bort_model("bort_tiny", checkpoint=path, use_decoder=False)
    assert not any(n.startswith("decoder.") for n in gm.get_params(bare))


def test_a_decoderless_file_cannot_fill_a_decoder(tmp_path):
    config = get_config("bort_tiny")
    params = {k: v for k, v in random_params(config).items() if not k.startswith("decoder.")}
    path = str(tmp_path / "bare.params")
    ckpt.save_params(path, params)
    with pytest.raises(ValueError, match="no MLM decoder"):
        gm.get_bort_model("bort_tiny", checkpoint=path)


def test_token_types_default_to_zero():
    config = get_config("bert_12_768_12").replace(num_layers=1, vocab_size=100)
    model = gm.BortModel(config)
    ids = mx.nd.array([[5, 6, 7]])
    assert np.array_equal(model(ids).asnumpy(), model(ids, token_types=mx.nd.zeros((1, 3))).asnumpy())


def test_a_classifier_over_a_decoder_backbone_is_fully_initialised():
    config = get_config("bort_tiny")
    clf = gm.BortClassifier(gm.BortModel(config), 2, dropout=0.0)
    params = gm.get_params(clf)      # raises if any parameter were still deferred
    expected = {"bort." + n for n in arch.canonical_shapes(config)} | \
        set(arch.classifier_shapes(config, 2, dropout=0.0))
    assert set(params) == expected
