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
import re
import shutil
import tempfile
from collections import OrderedDict

import numpy as np

from bort_core.configs import BortConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

_CELL = {
    "attention_cell.proj_query": "attention.self.query",
    "attention_cell.proj_key": "attention.self.key",
    "attention_cell.proj_value": "attention.self.value",
    "proj": "attention.output.dense",
    "layer_norm": "attention.output.LayerNorm",
    "ffn.ffn_1": "intermediate.dense",
    "ffn.ffn_2": "output.dense",
    "ffn.layer_norm": "output.LayerNorm",
}
_FIXED = {
    "word_embed.0.weight": "bert.embeddings.word_embeddings.weight",
    "token_type_embed.0.weight": "bert.embeddings.token_type_embeddings.weight",
    "encoder.position_weight": "bert.embeddings.position_embeddings.weight",
    "encoder.layer_norm": "bert.embeddings.LayerNorm",
    "decoder.0": "cls.predictions.transform.dense",
    "decoder.2": "cls.predictions.transform.LayerNorm",
    "decoder.3.bias": "cls.predictions.bias",
}
_LEAF = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias"}
_CELL_NAME = re.compile(r"^encoder\.transformer_cells\.(\d+)\.(.+)\.(weight|bias|gamma|beta)$")
_TOKEN_TYPE = "bert.embeddings.token_type_embeddings.weight"


def hf_name(name: str) -> str:
    """Canonical name -> HF BertForMaskedLM name."""
    if name in _FIXED:
        return _FIXED[name]
    match = _CELL_NAME.match(name)
    if match:
        layer, block, leaf = match.groups()
        if block in _CELL:
            return "bert.encoder.layer.%s.%s.%s" % (layer, _CELL[block], _LEAF[leaf])
    owner, _, leaf = name.rpartition(".")
    if owner in _FIXED and leaf in _LEAF:
        return "%s.%s" % (_FIXED[owner], _LEAF[leaf])
    raise ValueError("parameter %s has no HuggingFace BERT counterpart" % name)


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
    """Write `config.json` + `model.safetensors` (written to a temp dir, then moved in)."""
    from safetensors.numpy import save_file

    from bort_core.convert import readable_by_all

    tensors = OrderedDict((hf_name(n), np.ascontiguousarray(v)) for n, v in params.items())
    if not config.token_type_vocab_size:
        tensors[_TOKEN_TYPE] = np.zeros((1, config.units), dtype=params["word_embed.0.weight"].dtype)
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-hf-", dir=parent)
    try:
        save_file(tensors, os.path.join(staging, WEIGHTS_NAME), metadata={"format": "pt"})
        with open(os.path.join(staging, CONFIG_NAME), "w") as f:
            json.dump(hf_config(config), f, indent=2)
        for path in (staging, os.path.join(staging, WEIGHTS_NAME)):
            readable_by_all(path)
        if os.path.isdir(directory):
            for name in (WEIGHTS_NAME, CONFIG_NAME):
                os.replace(os.path.join(staging, name), os.path.join(directory, name))
        else:
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_hf(directory: str):
    """(BortConfig, canonical params) from an HF BERT directory (ours or any BertForMaskedLM)."""
    from safetensors.numpy import load_file

    config_path = os.path.join(directory, CONFIG_NAME)
    weights_path = os.path.join(directory, WEIGHTS_NAME)
    for path in (config_path, weights_path):
        if not os.path.exists(path):
            raise FileNotFoundError("%s: an HF model directory needs %s" % (directory, path))
    with open(config_path) as f:
        hf = json.load(f)
    if hf.get("model_type", "bert") != "bert":
        raise ValueError("%s: model_type %r is not BERT" % (config_path, hf.get("model_type")))
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError("%s: hidden_act %r: Bort uses exact GELU" % (config_path, hf["hidden_act"]))
    if "bort_config" in hf:
        config = BortConfig.from_dict(hf["bort_config"], source=config_path)
    else:
        config = BortConfig(num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                            units=hf["hidden_size"], hidden_size=hf["intermediate_size"],
                            vocab_size=hf["vocab_size"], max_length=hf["max_position_embeddings"],
                            token_type_vocab_size=hf.get("type_vocab_size", 2),
                            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                            decoder_layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                            name=os.path.basename(os.path.normpath(directory)))
    tensors = load_file(weights_path)
    from bort_core.arch import canonical_shapes

    params = OrderedDict()
    for name in canonical_shapes(config):
        key = hf_name(name)
        if key not in tensors:
            raise ValueError("%s: missing tensor %s (for %s)" % (weights_path, key, name))
        params[name] = tensors[key]
    if not config.token_type_vocab_size and _TOKEN_TYPE in tensors and tensors[_TOKEN_TYPE].any():
        raise ValueError("%s: %s is non-zero but config %r has no token types"
                         % (weights_path, _TOKEN_TYPE, config.name))
    return config, params
