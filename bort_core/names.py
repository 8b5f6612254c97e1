"""Parameter names: the canonical (GluonNLP) names and their one mapping to each other naming.

Canonical names are those of `bort_core.arch.canonical_shapes` (the 2020 model's). bort_torch's
state dict uses them too, except that PyTorch's LayerNorm calls gamma/beta `weight`/`bias`
(`torch_name`, `canonical_name`); HuggingFace's BertForMaskedLM has names of its own (`hf_name`).
"""
from __future__ import annotations

import re

WORD_EMBED = "word_embed.0.weight"
TIED_DECODER = "decoder.3.weight"    # the MLM decoder's weight, tied to WORD_EMBED
DECODER_BIAS = "decoder.3.bias"

# ------------------------------------------------------------------------------------- torch

# LayerNorms are the blocks named `layer_norm` and the decoder's third layer.
CANONICAL_TO_TORCH_LEAF = {"gamma": "weight", "beta": "bias"}
_TORCH_LAYER_NORM = re.compile(r"(^|\.)(layer_norm|decoder\.2)\.(weight|bias)$")
_TORCH_TO_CANONICAL_LEAF = {v: k for k, v in CANONICAL_TO_TORCH_LEAF.items()}


def torch_name(name: str) -> str:
    """Canonical name -> bort_torch state-dict name."""
    owner, _, leaf = name.rpartition(".")
    return "%s.%s" % (owner, CANONICAL_TO_TORCH_LEAF.get(leaf, leaf))


def canonical_name(name: str) -> str:
    """bort_torch state-dict (or `named_parameters`) name -> canonical name."""
    if _TORCH_LAYER_NORM.search(name):
        owner, _, leaf = name.rpartition(".")
        return "%s.%s" % (owner, _TORCH_TO_CANONICAL_LEAF[leaf])
    return name


# ---------------------------------------------------------------------------------- HuggingFace

_HF_CELL = {
    "attention_cell.proj_query": "attention.self.query",
    "attention_cell.proj_key": "attention.self.key",
    "attention_cell.proj_value": "attention.self.value",
    "proj": "attention.output.dense",
    "layer_norm": "attention.output.LayerNorm",
    "ffn.ffn_1": "intermediate.dense",
    "ffn.ffn_2": "output.dense",
    "ffn.layer_norm": "output.LayerNorm",
}
_HF_FIXED = {
    WORD_EMBED: "bert.embeddings.word_embeddings.weight",
    "token_type_embed.0.weight": "bert.embeddings.token_type_embeddings.weight",
    "encoder.position_weight": "bert.embeddings.position_embeddings.weight",
    "encoder.layer_norm": "bert.embeddings.LayerNorm",
    "decoder.0": "cls.predictions.transform.dense",
    "decoder.2": "cls.predictions.transform.LayerNorm",
    DECODER_BIAS: "cls.predictions.bias",
}
_HF_LEAF = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias"}
_CELL_NAME = re.compile(r"^encoder\.transformer_cells\.(\d+)\.(.+)\.(weight|bias|gamma|beta)$")


def hf_name(name: str) -> str:
    """Canonical name -> HF BertForMaskedLM name."""
    if name in _HF_FIXED:
        return _HF_FIXED[name]
    match = _CELL_NAME.match(name)
    if match:
        layer, block, leaf = match.groups()
        if block in _HF_CELL:
            return "bert.encoder.layer.%s.%s.%s" % (layer, _HF_CELL[block], _HF_LEAF[leaf])
    owner, _, leaf = name.rpartition(".")
    if owner in _HF_FIXED and leaf in _HF_LEAF:
        return "%s.%s" % (_HF_FIXED[owner], _HF_LEAF[leaf])
    raise ValueError("parameter %s has no HuggingFace BERT counterpart" % name)
