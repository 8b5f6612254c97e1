"""Integrity of the legacy oracle's artifacts (scripts/run_legacy_oracle.sh, run on the 2020
stack): metadata, tap names and shapes, zeroed padding, and a checkpoint that mxnet reads, holds
the release's parameter names and agrees with the taps it produced.

Needs none of our models; without artifacts/legacy/<config>/ it skips (fails under CI=true).
"""
import json
import math
import os

import numpy as np
import pytest

from bort_core.configs import get_config
from parity import io as pio

pytestmark = pytest.mark.parity

CONFIGS = ("bort_4_8_768_1024", "bort_tiny")


def expected_parameters(config):
    """Save name -> shape of the 2020 model (gluonnlp 0.8.3 BERTModel, decoder tied)."""
    h, i, v = config.units, config.hidden_size, config.vocab_size
    shapes = {"word_embed.0.weight": (v, h), "encoder.position_weight": (config.max_length, h),
              "encoder.layer_norm.gamma": (h,), "encoder.layer_norm.beta": (h,),
              "decoder.0.weight": (h, h), "decoder.0.bias": (h,),
              "decoder.2.gamma": (h,), "decoder.2.beta": (h,),
              "decoder.3.weight": (v, h), "decoder.3.bias": (v,)}
    for layer in range(config.num_layers):
        cell = "encoder.transformer_cells.%d." % layer
        for proj in ("query", "key", "value"):
            shapes[cell + "attention_cell.proj_%s.weight" % proj] = (h, h)
            shapes[cell + "attention_cell.proj_%s.bias" % proj] = (h,)
        shapes.update({cell + "proj.weight": (h, h), cell + "proj.bias": (h,),
                       cell + "ffn.ffn_1.weight": (i, h), cell + "ffn.ffn_1.bias": (i,),
                       cell + "ffn.ffn_2.weight": (h, i), cell + "ffn.ffn_2.bias": (h,)})
        for norm in ("layer_norm", "ffn.layer_norm"):
            shapes[cell + norm + ".gamma"] = (h,)
            shapes[cell + norm + ".beta"] = (h,)
    return shapes


class Artifacts(object):
    def __init__(self, folder):
        self.dir = folder
        with open(os.path.join(self.dir, "config.json")) as f:
            self.meta = json.load(f)
        self.config = get_config(self.meta["config"])
        self.inputs = pio.load_inputs(os.path.join(self.dir, "inputs.npz"))
        self.taps = pio.load_taps(os.path.join(self.dir, "taps.npz"))
        self.checkpoint = os.path.join(self.dir, "checkpoint.params")
        self._params = None

    def params(self):
        """The checkpoint as numpy arrays (read once, by mxnet)."""
        if self._params is None:
            mx = pytest.importorskip("mxnet")
            self._params = {k: v.asnumpy() for k, v in mx.nd.load(self.checkpoint).items()}
        return self._params


@pytest.fixture(scope="module", params=CONFIGS)
def art(request, legacy_dump):
    return Artifacts(legacy_dump(request.param))


def _layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def test_metadata_names_the_2020_stack(art):
    versions = art.meta["versions"]
    assert art.meta["config"] == art.config.name
    stack = (versions["mxnet"], versions["gluonnlp"], versions["numpy"])
    assert stack == ("1.5.0", "0.8.3", "1.16.2")
    assert versions["python"].startswith("3.7.")
    assert set(art.meta["files"].values()) <= set(os.listdir(art.dir))


def test_taps_are_complete_and_shaped(art):
    c, ids = art.config, art.inputs["input_ids"]
    b, length = ids.shape
    m = art.inputs["masked_positions"].shape[1]
    layers = ["layer%d" % i for i in range(c.num_layers)]
    names = ["embed", "sequence_output", "mlm_logits"] + layers
    assert sorted(art.taps) == sorted(names)
    for name in names:
        want = (b, m, c.vocab_size) if name == "mlm_logits" else (b, length, c.units)
        assert art.taps[name].shape == want, name
        assert art.taps[name].dtype == np.float32, name
        assert np.isfinite(art.taps[name]).all(), name
    np.testing.assert_array_equal(art.taps["sequence_output"], art.taps[layers[-1]])


def test_padding_is_zero_in_layer_taps_only(art):
    valid = art.inputs["valid_length"]
    pad = np.arange(art.inputs["input_ids"].shape[1])[None, :] >= valid[:, None]
    assert pad.any() and (~pad).all(axis=1).any(), "the inputs should mix padded and full rows"
    for name, tap in art.taps.items():
        if name.startswith("layer") or name == "sequence_output":
            assert not tap[pad].any(), "%s is not zero beyond valid_length" % name
            assert np.abs(tap[~pad]).min(axis=-1).max() > 0, name
    # the embedding tap is taken before any masking
    assert np.abs(art.taps["embed"][pad]).sum(axis=-1).min() > 0


def test_checkpoint_holds_the_release_names_and_a_tied_copy(art):
    params = art.params()
    want = expected_parameters(art.config)
    assert sorted(params) == sorted(want)
    for name, shape in want.items():
        assert params[name].shape == shape, name
        assert params[name].dtype == np.float32, name
    # save_parameters writes the tied decoder weight under both names, equal
    np.testing.assert_array_equal(params["decoder.3.weight"], params["word_embed.0.weight"])
    # every parameter was initialised away from its default
    for name, value in params.items():
        default = 1.0 if name.endswith("gamma") else 0.0
        assert np.abs(value - default).max() > 1e-3, name


def test_embed_tap_follows_from_the_checkpoint(art):
    p = {k: v.astype(np.float64) for k, v in art.params().items()}
    ids = art.inputs["input_ids"]
    summed = p["word_embed.0.weight"][ids] + p["encoder.position_weight"][: ids.shape[1]]
    embed = _layer_norm(summed, p["encoder.layer_norm.gamma"], p["encoder.layer_norm.beta"],
                        art.config.layer_norm_eps)
    np.testing.assert_allclose(art.taps["embed"], embed, rtol=0, atol=1e-5)


def test_mlm_logits_follow_from_the_last_layer(art):
    """The decoder applied to the sequence_output tap, with the 2020 LayerNorm eps (1e-12)."""
    p = {k: v.astype(np.float64) for k, v in art.params().items()}
    seq = art.taps["sequence_output"].astype(np.float64)
    positions = art.inputs["masked_positions"]
    picked = seq[np.arange(seq.shape[0])[:, None], positions]
    hidden = picked.dot(p["decoder.0.weight"].T) + p["decoder.0.bias"]
    erf = np.vectorize(math.erf)
    hidden = 0.5 * hidden * (1.0 + erf(hidden / math.sqrt(2.0)))
    hidden = _layer_norm(hidden, p["decoder.2.gamma"], p["decoder.2.beta"], 1e-12)
    logits = hidden.dot(p["word_embed.0.weight"].T) + p["decoder.3.bias"]
    np.testing.assert_allclose(art.taps["mlm_logits"], logits, rtol=0, atol=2e-5)
