"""Exact parameter arithmetic and forward FLOPs of any BortConfig (the OSE surrogates p and i).

`canonical_shapes` is the single table of parameter names and shapes, in the names GluonNLP
gives the 2020 model; counts are derived from it, and both frameworks' models are tested
against it.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Tuple

import numpy as np

from bort_core.configs import BortConfig

# Elementwise operations counted per element (a documented convention, not a measurement):
# LayerNorm = mean, variance, subtract, divide, scale, shift; softmax = max, subtract, exp,
# sum, divide; GELU (erf form) = erf + 4 arithmetic ops.
LAYER_NORM_OPS = 7
SOFTMAX_OPS = 5
GELU_OPS = 5


def canonical_shapes(config: BortConfig, with_decoder: bool = True) -> "OrderedDict[str, Tuple[int, ...]]":
    """Parameter name -> shape, in the order a model defines them. The tied decoder weight
    (`decoder.3.weight`) is the word embedding and is not listed separately."""
    u, i, v = config.units, config.hidden_size, config.vocab_size
    shapes = OrderedDict()
    shapes["word_embed.0.weight"] = (v, u)
    if config.token_type_vocab_size:
        shapes["token_type_embed.0.weight"] = (config.token_type_vocab_size, u)
    shapes["encoder.position_weight"] = (config.max_length, u)
    shapes["encoder.layer_norm.gamma"] = (u,)
    shapes["encoder.layer_norm.beta"] = (u,)
    for layer in range(config.num_layers):
        cell = "encoder.transformer_cells.%d." % layer
        for proj in ("query", "key", "value"):
            shapes[cell + "attention_cell.proj_%s.weight" % proj] = (u, u)
            shapes[cell + "attention_cell.proj_%s.bias" % proj] = (u,)
        shapes[cell + "proj.weight"] = (u, u)
        shapes[cell + "proj.bias"] = (u,)
        shapes[cell + "layer_norm.gamma"] = (u,)
        shapes[cell + "layer_norm.beta"] = (u,)
        shapes[cell + "ffn.ffn_1.weight"] = (i, u)
        shapes[cell + "ffn.ffn_1.bias"] = (i,)
        shapes[cell + "ffn.ffn_2.weight"] = (u, i)
        shapes[cell + "ffn.ffn_2.bias"] = (u,)
        shapes[cell + "ffn.layer_norm.gamma"] = (u,)
        shapes[cell + "ffn.layer_norm.beta"] = (u,)
    if with_decoder:
        shapes["decoder.0.weight"] = (u, u)
        shapes["decoder.0.bias"] = (u,)
        shapes["decoder.2.gamma"] = (u,)
        shapes["decoder.2.beta"] = (u,)
        shapes["decoder.3.bias"] = (v,)
    return shapes


def classifier_shapes(config: BortConfig, num_classes: int, dropout: float = 0.1):
    """Head of BortClassifier: Dense(units, tanh) then Dense(num_classes). The release's
    HybridSequential numbers its children, so the indices shift when dropout is 0."""
    first, second = ("classifier.1.", "classifier.3.") if dropout else ("classifier.0.", "classifier.1.")
    u = config.units
    return OrderedDict([(first + "weight", (u, u)), (first + "bias", (u,)),
                        (second + "weight", (num_classes, u)), (second + "bias", (num_classes,))])


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def param_counts(config: BortConfig) -> Dict[str, int]:
    """Exact trainable-parameter counts (the tied decoder weight counted once).

    total = embedding + encoder + decoder; `total_without_decoder` is the backbone; `effective`
    (the OSE paper's size, embeddings excluded) is the encoder alone.
    """
    groups = {"word_embedding": 0, "token_type_embedding": 0, "position_embedding": 0,
              "encoder": 0, "transformer_cells": 0, "decoder": 0}
    for name, shape in canonical_shapes(config).items():
        n = _numel(shape)
        if name.startswith("word_embed."):
            groups["word_embedding"] += n
        elif name.startswith("token_type_embed."):
            groups["token_type_embedding"] += n
        elif name == "encoder.position_weight":
            groups["position_embedding"] += n
        elif name.startswith("decoder."):
            groups["decoder"] += n
        else:
            groups["encoder"] += n   # embedding LayerNorm + transformer cells
            if name.startswith("encoder.transformer_cells."):
                groups["transformer_cells"] += n
    groups["embedding"] = (groups["word_embedding"] + groups["token_type_embedding"]
                           + groups["position_embedding"])
    groups["total_without_decoder"] = groups["embedding"] + groups["encoder"]
    groups["total"] = groups["total_without_decoder"] + groups["decoder"]
    groups["effective"] = groups["encoder"]
    return groups


def forward_flops(config: BortConfig, seq_len: int, num_masked: int = 0) -> Dict[str, int]:
    """Forward FLOPs for ONE sequence of `seq_len` tokens (2 FLOPs per multiply-add).

    `matmul` counts dense layers and attention products (the convention model-FLOP
    utilisation uses); `elementwise` counts bias adds, residuals, LayerNorm, softmax, GELU and
    the attention scaling with the per-element constants above; `num_masked` positions go
    through the MLM decoder. A training step costs about 3x the forward.
    """
    if seq_len <= 0 or seq_len > config.max_length:
        raise ValueError("seq_len must be in [1, %d] for config %r, got %d"
                         % (config.max_length, config.name, seq_len))
    L, u, i, v, a = seq_len, config.units, config.hidden_size, config.vocab_size, config.num_heads
    per_layer_mm = 2 * L * u * (3 * u) + 2 * 2 * L * L * u + 2 * L * u * u + 2 * 2 * L * u * i
    per_layer_ew = (L * (3 * u + u + i + u)          # biases
                    + 2 * L * u                      # two residual adds
                    + 2 * LAYER_NORM_OPS * L * u     # two LayerNorms
                    + L * u                          # query scaling
                    + SOFTMAX_OPS * a * L * L        # attention softmax
                    + GELU_OPS * L * i)
    embed_ew = L * u * (1 + (1 if config.token_type_vocab_size else 0)) + LAYER_NORM_OPS * L * u
    matmul = config.num_layers * per_layer_mm
    elementwise = config.num_layers * per_layer_ew + embed_ew
    if num_masked:
        m = num_masked
        matmul += 2 * m * u * u + 2 * m * u * v
        elementwise += m * (u + GELU_OPS * u + LAYER_NORM_OPS * u + v)
    return {"matmul": matmul, "elementwise": elementwise, "total": matmul + elementwise}


def initial_params(config, seed: int = 0) -> Dict[str, np.ndarray]:
    """The release's initialisation drawn in numpy (N(0, 0.02) weights, zero biases, unit
    gains), so both frameworks start from the same weights for a seed."""
    rng = np.random.RandomState(seed)
    params = {}
    for name, shape in canonical_shapes(config).items():
        if name.endswith(".gamma"):
            params[name] = np.ones(shape, np.float32)
        elif name.endswith((".beta", ".bias")):
            params[name] = np.zeros(shape, np.float32)
        else:
            params[name] = rng.normal(0.0, 0.02, shape).astype(np.float32)
    return params
