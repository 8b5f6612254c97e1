"""HuggingFace `BertForMaskedLM` directories <-> canonical Bort parameters (numpy only).

Bort's computation is BERT's (post-LN cells, learned absolute positions from 0, GELU), so a
Bort checkpoint is an HF BERT with: a one-row all-zero token-type embedding (Bort has none),
and the MLM head mapped too (`cls.predictions.*`). One thing HF cannot express: its config has
one `layer_norm_eps` for the whole model, while the 2020 MLM head's LayerNorm used 1e-12; the
export keeps the encoder's eps and records the head's in `config.json` (`bort_notes`).
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from collections import OrderedDict

import numpy as np

from bort_core import arch
from bort_core import io as bio
from bort_core.configs import BortConfig, embedded_config
from bort_core.model_params import compare_params
from bort_core.names import hf_name

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

_TOKEN_TYPE = "bert.embeddings.token_type_embeddings.weight"
# What an HF BERT file may hold beyond Bort's weights: buffers HF derives (transformers < 4.31
# saved them), copies of the tied decoder (checked equal) and BertForPreTraining's pooler and
# next-sentence head, which Bort has no place for (dropped with a warning, as HF's
# BertForMaskedLM does). Anything else is an error.
_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")
_TIED = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
         "cls.predictions.decoder.bias": "cls.predictions.bias"}
_UNUSED_HEADS = ("bert.pooler.", "cls.seq_relationship.")
# config.json fields that `hf_config` derives from the BortConfig (checked on reading)
_DERIVED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "hidden_act", "hidden_dropout_prob",
            "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
            "layer_norm_eps", "position_embedding_type")


def hf_config(config: BortConfig) -> dict:
    return {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.units,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.hidden_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.dropout,
        "max_position_embeddings": config.max_length,
        "type_vocab_size": max(1, config.token_type_vocab_size),
        "layer_norm_eps": config.layer_norm_eps,
        "position_embedding_type": "absolute",
        "initializer_range": 0.02,
        "pad_token_id": 1,
        "tie_word_embeddings": True,
        "bort_config": config.to_dict(),
        "bort_notes": ("Exported by bort from a Bort/GluonNLP checkpoint. HF BERT has one "
                       "layer_norm_eps for the whole model; the 2020 MLM head's LayerNorm used "
                       "eps %g, so MLM logits differ slightly (~1e-4) from the original. "
                       "Bort has no token-type embedding: type_vocab_size=1 with zero weights."
                       % config.decoder_layer_norm_eps),
    }


def save_hf(directory: str, config: BortConfig, params) -> None:
    """Write `config.json` + `model.safetensors` as one atomic, durable step: both go to a
    fresh temp folder (`bort_core.io.atomic_path`) that then takes `directory`'s place (see
    `_swap_in` for an existing one), so a reader never sees new weights with an old config."""
    from safetensors.numpy import save

    tensors = OrderedDict((hf_name(n), np.ascontiguousarray(v)) for n, v in params.items())
    if not config.token_type_vocab_size:
        tensors[_TOKEN_TYPE] = np.zeros((1, config.units), dtype=params["word_embed.0.weight"].dtype)
    bio.ensure_dir(os.path.dirname(os.path.realpath(directory)))
    install = _swap_in if os.path.isdir(directory) else os.rename
    with bio.atomic_path(directory, directory=True, install=install) as staging:
        with open(os.path.join(staging, WEIGHTS_NAME), "wb") as f:
            f.write(save(tensors, metadata={"format": "pt"}))
        with open(os.path.join(staging, CONFIG_NAME), "w") as f:
            json.dump(hf_config(config), f, indent=2)


def _swap_in(staging, directory):
    """Put the folder `staging` in the place of its sibling `directory`, moving across every
    entry of `directory` but the HF pair (tokenizer files, say). Meanwhile `directory` is
    briefly absent, never a mixed pair; on a failure everything goes back where it was (a kill
    in between leaves it at `<staging>.old`, which `bort_core.io.remove_orphans` keeps)."""
    old = staging + ".old"
    os.rename(directory, old)
    moved = []
    try:
        for name in os.listdir(old):
            if name not in (WEIGHTS_NAME, CONFIG_NAME):
                os.rename(os.path.join(old, name), os.path.join(staging, name))
                moved.append(name)
        os.rename(staging, directory)
    except BaseException:
        for name in moved:
            os.rename(os.path.join(staging, name), os.path.join(old, name))
        os.rename(old, directory)
        raise
    shutil.rmtree(old)


def check_agreement(hf: dict, config: BortConfig, config_path: str) -> None:
    """A `config.json` field that contradicts its own `bort_config` (an edit to one of them) is
    an error naming both values: Bort would read one model and transformers another."""
    derived = hf_config(config)
    wrong = ["%s is %r but bort_config gives %r" % (key, hf[key], derived[key])
             for key in _DERIVED if key in hf and hf[key] != derived[key]]
    if wrong:
        raise ValueError("%s: contradicts its own bort_config: %s; make the two agree"
                         % (config_path, "; ".join(wrong)))


def load_hf(directory: str):
    """(BortConfig, canonical params) from an HF BERT directory (ours or any BertForMaskedLM
    or BertForPreTraining); a tensor Bort has no place for, or a missing one, is an error."""
    config_path = os.path.join(directory, CONFIG_NAME)
    weights_path = os.path.join(directory, WEIGHTS_NAME)
    for path in (config_path, weights_path):
        if not os.path.exists(path):
            raise FileNotFoundError("%s: an HF model directory needs %s" % (directory, path))
    with open(config_path) as f:
        try:
            hf = json.load(f)
        except ValueError as err:
            raise ValueError("%s: not valid JSON: %s" % (config_path, err)) from err
    if hf.get("model_type", "bert") != "bert":
        raise ValueError("%s: model_type %r is not BERT" % (config_path, hf.get("model_type")))
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError("%s: hidden_act %r: Bort uses exact GELU" % (config_path, hf["hidden_act"]))
    if "bort_config" in hf:
        config = embedded_config(hf["bort_config"], "%s: bort_config" % config_path)
        check_agreement(hf, config, config_path)
    else:
        config = BortConfig(num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                            units=hf["hidden_size"], hidden_size=hf["intermediate_size"],
                            vocab_size=hf["vocab_size"], max_length=hf["max_position_embeddings"],
                            token_type_vocab_size=hf.get("type_vocab_size", 2),
                            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                            decoder_layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                            name=os.path.basename(os.path.normpath(directory)))
    tensors, _ = bio.read_safetensors(weights_path)
    for name in _BUFFERS:
        tensors.pop(name, None)
    for alias, target in _TIED.items():
        if alias in tensors and target in tensors:
            if not np.array_equal(tensors.pop(alias), tensors[target], equal_nan=True):
                raise ValueError("%s: %s differs from %s, but Bort ties the two"
                                 % (weights_path, alias, target))
    unused = [name for name in tensors if name.startswith(_UNUSED_HEADS)]
    if unused:
        warnings.warn("%s: dropping %s: Bort has no pooler or next-sentence head"
                      % (weights_path, ", ".join(unused)), RuntimeWarning, stacklevel=2)
        for name in unused:
            del tensors[name]
    if not config.token_type_vocab_size:
        token_type = tensors.pop(_TOKEN_TYPE, None)
        if token_type is not None and token_type.any():
            raise ValueError("%s: %s is non-zero but config %r has no token types"
                             % (weights_path, _TOKEN_TYPE, config.name))
    shapes = arch.canonical_shapes(config)
    compare_params(tensors, OrderedDict((hf_name(n), s) for n, s in shapes.items()),
                        weights_path, "config %r in HF BertForMaskedLM names" % config.name)
    return config, OrderedDict((name, tensors[hf_name(name)]) for name in shapes)
