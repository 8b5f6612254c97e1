"""Bort in PyTorch: the twin of bort_gluon.model, module for module.

Module names reproduce GluonNLP's structural names, so a state dict differs from the canonical
checkpoint names only where PyTorch's LayerNorm says `weight`/`bias` for GluonNLP's
`gamma`/`beta` (the one mapping table: `bort_core.names.canonical_name`). Computation order, masking and
dropout placement follow the 2020 model (docs/models.md): word embedding
-> dropout -> + positions 0..L-1 -> dropout -> LayerNorm -> post-LN cells; outputs beyond
`valid_length` are zeroed; the MLM decoder's LayerNorm uses eps 1e-12.

Fast paths (each switchable, parameters untouched): the fused QKV GEMM + SDPA attention
(`set_fast_paths`) and the unpadded encoder (`set_unpadded`), which runs every position-wise
op (and, on CPU, the attention) on the real tokens only (`Packing`).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bort_core import checkpoint as ckpt
from bort_core.configs import BortConfig
from bort_core.model_params import check_params, resolve_model
from bort_core.names import canonical_name


class Packing:
    """The real tokens of a padded batch as the rows of one (N, ...) matrix, and the way back.

    `pack` gathers the positions below valid_length (row-major: sequence by sequence);
    `unpack` scatters rows into a zero (B, L, ...) tensor. Both are index ops, so gradients
    flow through them.
    """

    def __init__(self, key_mask: torch.Tensor):
        self.shape = key_mask.shape                               # (B, L)
        self.key_mask_lengths = key_mask.sum(1)                   # (B,) real tokens a sequence
        flat = key_mask.flatten()                                 # True = real token
        self.index = flat.nonzero().squeeze(1)                    # (N,) into B * L
        self.pad_index = (~flat).nonzero().squeeze(1)             # the other B * L - N

    @property
    def has_padding(self) -> bool:
        return self.pad_index.numel() > 0

    def segments(self):
        """[(start, end)] of each sequence's rows; valid for prefix masks (valid_length)."""
        ends = self.key_mask_lengths.cumsum(0).tolist()
        return list(zip([0] + ends[:-1], ends))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(0, 1).index_select(0, self.index)

    def unpack(self, rows: torch.Tensor) -> torch.Tensor:
        out = rows.new_empty((self.shape.numel(),) + rows.shape[1:])
        out.index_fill_(0, self.pad_index, 0).index_copy_(0, self.index, rows)
        return out.view(*self.shape, *rows.shape[1:])


class MultiHeadSelfAttention(nn.Module):
    """Separate q/k/v projections with bias, query scaled by 1/sqrt(head_dim), keys at or
    beyond valid_length masked out, dropout on the attention weights.

    With `fused` (the default) the three projections run as one GEMM on their concatenated
    weights and the attention as `F.scaled_dot_product_attention` with the padding mask; the
    parameters stay the three canonical ones. Without grad the concatenation is cached and
    rebuilt whenever a projection's weights change; with grad, or inside torch.compile (which
    folds it into a constant when freezing), it is rebuilt each call.
    """

    def __init__(self, units: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.proj_query = nn.Linear(units, units)
        self.proj_key = nn.Linear(units, units)
        self.proj_value = nn.Linear(units, units)
        self.fused = True
        self._qkv_cache = None

    def _projections(self):
        return (self.proj_query.weight, self.proj_key.weight, self.proj_value.weight,
                self.proj_query.bias, self.proj_key.bias, self.proj_value.bias)

    def fused_qkv(self):
        """(weight (3U, U), bias (3U,)): query, key and value projections stacked."""
        tensors = self._projections()
        if torch.compiler.is_compiling() or (
                torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
            return torch.cat(tensors[:3]), torch.cat(tensors[3:])
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        if self._qkv_cache is None or self._qkv_cache[0] != key:
            with torch.no_grad():
                self._qkv_cache = (key, torch.cat(tensors[:3]), torch.cat(tensors[3:]))
        return self._qkv_cache[1], self._qkv_cache[2]

    def _packed_attention(self, qkv: torch.Tensor, packing: Packing) -> torch.Tensor:
        """SDPA sequence by sequence on the packed (N, 3U) rows: no padded query or key is
        computed, and nothing is scattered to (B, L). Used on CPU, where this saves about a
        third of the attention time at the benchmark's valid lengths; on CUDA one padded
        SDPA call is kept (a kernel launch per sequence would cost more than it saves)."""
        rows = qkv.shape[0]
        q, k, v = qkv.view(1, rows, 3, self.num_heads, -1).unbind(2)      # (1, N, H, D) each
        heads = lambda t, s, e: t[:, s:e].transpose(1, 2)                 # noqa: E731
        dropout = self.dropout if self.training else 0.0
        out = torch.cat([F.scaled_dot_product_attention(heads(q, s, e), heads(k, s, e),
                                                        heads(v, s, e), dropout_p=dropout
                                                        ).transpose(1, 2)
                         for s, e in packing.segments()], dim=1)
        return out.reshape(rows, -1)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor],
                packing: Optional[Packing] = None) -> torch.Tensor:
        """x: (B, L, U); or, with `packing`, the real tokens' rows (N, U), and so is the result.
        Packed rows are projected as they are and scattered to (B, L) for the attention only."""
        if self.fused and not torch.jit.is_scripting():
            weight, bias = self.fused_qkv()
            qkv = F.linear(x, weight, bias)
            if packing is not None and qkv.device.type == "cpu":
                return self._packed_attention(qkv, packing)
            if packing is not None:
                qkv = packing.unpack(qkv)   # zeros at padding: finite keys for the mask to drop
            b, length, _ = qkv.shape
            q, k, v = qkv.view(b, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            mask = None if key_mask is None else key_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 dropout_p=self.dropout if self.training else 0.0)
        else:
            if packing is not None:
                x = packing.unpack(x)
            b, length, units = x.shape
            heads = lambda t: t.view(b, length, self.num_heads, -1).transpose(1, 2)
            q = heads(self.proj_query(x)) * (1.0 / math.sqrt(units // self.num_heads))
            k, v = heads(self.proj_key(x)), heads(self.proj_value(x))
            scores = q @ k.transpose(-1, -2)
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
            out = F.dropout(scores.softmax(dim=-1), self.dropout, self.training) @ v
        out = out.transpose(1, 2).reshape(b, length, -1)
        return out if packing is None else packing.pack(out)


class PositionwiseFFN(nn.Module):
    """ffn_1 -> GELU -> ffn_2 -> dropout -> residual -> LayerNorm."""

    def __init__(self, units: int, hidden_size: int, dropout: float, eps: float):
        super().__init__()
        self.ffn_1 = nn.Linear(units, hidden_size)
        self.ffn_2 = nn.Linear(hidden_size, units)
        self.dropout_layer = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(units, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x + self.dropout_layer(self.ffn_2(F.gelu(self.ffn_1(x)))))


class BortEncoderCell(nn.Module):
    """Post-LN transformer cell: attention -> proj -> dropout -> residual -> LN -> FFN."""

    def __init__(self, config: BortConfig):
        super().__init__()
        self.attention_cell = MultiHeadSelfAttention(config.units, config.num_heads, config.dropout)
        self.proj = nn.Linear(config.units, config.units)
        self.dropout_layer = nn.Dropout(config.dropout)
        self.layer_norm = nn.LayerNorm(config.units, eps=config.layer_norm_eps)
        self.ffn = PositionwiseFFN(config.units, config.hidden_size, config.dropout,
                                   config.layer_norm_eps)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor],
                packing: Optional[Packing] = None) -> torch.Tensor:
        attended = self.dropout_layer(self.proj(self.attention_cell(x, key_mask, packing)))
        return self.ffn(self.layer_norm(x + attended))


class BortEncoder(nn.Module):
    """Learned positions + dropout + LayerNorm, then the cells; padded outputs zeroed.

    With `unpadded` (the default) and a batch that has padding, the real tokens are gathered
    into one (N, U) matrix right after the positions are added: dropout, LayerNorms,
    projections, residuals and FFNs then run on N rows instead of B * L; the fused attention
    runs sequence by sequence on those rows on CPU, and on the (B, L) layout elsewhere. The
    result is scattered into zeros at the end. Same outputs and gradients as the padded path;
    in training the dropout masks are drawn for the N rows, so a seed gives other masks than on
    the padded path. The padded path is kept
    while tracing (an exported graph must not bake in one batch's token count) and while a
    forward hook sits on the embedding LayerNorm or a cell (hooks such as parity.dump's taps
    read (B, L, U) outputs there).
    """

    def __init__(self, config: BortConfig):
        super().__init__()
        self.position_weight = nn.Parameter(torch.empty(config.max_length, config.units))
        self.dropout_layer = nn.Dropout(config.dropout)
        self.layer_norm = nn.LayerNorm(config.units, eps=config.layer_norm_eps)
        self.transformer_cells = nn.ModuleList(BortEncoderCell(config)
                                               for _ in range(config.num_layers))
        self.unpadded = True

    def _packing(self, key_mask: Optional[torch.Tensor]) -> Optional[Packing]:
        if key_mask is None or not self.unpadded or torch.jit.is_tracing() \
                or torch.jit.is_scripting():
            return None
        if any(m._forward_hooks for m in (self.layer_norm, *self.transformer_cells)):
            return None
        packing = Packing(key_mask)
        return packing if packing.has_padding else None

    def forward(self, embedding: torch.Tensor, valid_length: Optional[torch.Tensor]) -> torch.Tensor:
        length = embedding.shape[1]
        key_mask = None
        if valid_length is not None:
            key_mask = torch.arange(length, device=embedding.device)[None, :] < valid_length[:, None]
        packing = self._packing(key_mask)
        x = embedding + self.position_weight[:length]
        if packing is not None:
            x = packing.pack(x)
        x = self.layer_norm(self.dropout_layer(x))
        for cell in self.transformer_cells:
            x = cell(x, key_mask, packing)
        if packing is not None:
            return packing.unpack(x)
        return x if key_mask is None else x * key_mask[..., None].to(x.dtype)


class TanhLinear(nn.Linear):
    """Dense(units, activation='tanh') as one module, so the head's indices match GluonNLP's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(x))


class BortModel(nn.Module):
    """Bort/BERT/RoBERTa backbone: embeddings, post-LN encoder, optional tied MLM decoder.

    `model(inputs, valid_length=None, masked_positions=None, token_types=None)` returns the
    sequence output (B, L, H), plus the MLM logits (B, M, V) when `masked_positions` is given
    to a model built with `use_decoder=True`. Initialised as the release did, on `device`
    (default: the CPU).
    """

    def __init__(self, config: BortConfig, use_decoder: bool = True, device=None):
        super().__init__()
        self.config = config
        u = config.units
        self.word_embed = nn.Sequential(nn.Embedding(config.vocab_size, u))
        if config.embed_dropout:
            self.word_embed.append(nn.Dropout(config.embed_dropout))
        if config.token_type_vocab_size:
            self.token_type_embed = nn.Sequential(nn.Embedding(config.token_type_vocab_size, u))
        self.encoder = BortEncoder(config)
        self.use_decoder = use_decoder
        if use_decoder:
            self.decoder = nn.Sequential(nn.Linear(u, u), nn.GELU(),
                                         nn.LayerNorm(u, eps=config.decoder_layer_norm_eps),
                                         nn.Linear(u, config.vocab_size))
            self.decoder[3].weight = self.word_embed[0].weight
        initialize_like_release(self)
        if device is not None:
            self.to(device)

    def forward(self, inputs, valid_length=None, masked_positions=None, token_types=None):
        embedding = self.word_embed(inputs)
        if self.config.token_type_vocab_size:
            if token_types is None:
                token_types = torch.zeros_like(inputs)
            embedding = embedding + self.token_type_embed(token_types)
        sequence = self.encoder(embedding, valid_length)
        if masked_positions is None or not self.use_decoder:
            return sequence
        rows = torch.arange(sequence.shape[0], device=sequence.device)[:, None]
        return sequence, self.decoder(sequence[rows, masked_positions.long()])


class BortClassifier(nn.Module):
    """The release's sentence classifier: first token -> Dropout -> Dense(units, tanh) ->
    Dropout -> Dense(num_classes); without dropout the head is `classifier.{0,1}`. The head is
    initialised as the release did, on `bort`'s device."""

    def __init__(self, bort: BortModel, num_classes: int = 2, dropout: float = 0.0):
        super().__init__()
        self.bort = bort
        u = bort.config.units
        layers = [nn.Dropout(dropout)] if dropout else []
        layers.append(TanhLinear(u, u))
        layers += [nn.Dropout(dropout)] if dropout else []
        layers.append(nn.Linear(u, num_classes))
        self.classifier = nn.Sequential(*layers)
        initialize_like_release(self.classifier)
        self.classifier.to(device_of(bort))

    def forward(self, inputs, valid_length=None):
        return self.classifier(self.bort(inputs, valid_length)[:, 0])


@torch.no_grad()
def initialize_like_release(model: nn.Module, sigma: float = 0.02) -> None:
    """Normal(0, sigma) weights and embeddings, zero biases, unit LayerNorm gains (done at
    construction; call again to redraw)."""
    for sub in model.modules():
        if isinstance(sub, nn.LayerNorm):
            sub.weight.fill_(1.0)
            sub.bias.zero_()
        elif isinstance(sub, (nn.Linear, nn.Embedding)):
            sub.weight.normal_(0.0, sigma)
            if getattr(sub, "bias", None) is not None:
                sub.bias.zero_()
        elif isinstance(sub, BortEncoder):
            sub.position_weight.normal_(0.0, sigma)


def named_parameters(model: nn.Module) -> Dict[str, nn.Parameter]:
    """Canonical name -> Parameter; the tied decoder weight is listed once (as the word
    embedding)."""
    return {canonical_name(name): p for name, p in model.named_parameters()}


def device_of(model: nn.Module) -> torch.device:
    """The device the model's parameters live on."""
    return next(model.parameters()).device


def get_params(model: nn.Module) -> Dict[str, np.ndarray]:
    """Canonical name -> numpy array (a copy)."""
    return {name: p.detach().cpu().numpy().copy() for name, p in named_parameters(model).items()}


@torch.no_grad()
def set_params(model: nn.Module, params, source: str = "<params>") -> None:
    """Copy a canonical dict into the model; names and shapes must match exactly."""
    named = named_parameters(model)
    check_params({name: p.shape for name, p in named.items()}, params, source)
    for name, p in named.items():
        p.copy_(torch.from_numpy(np.ascontiguousarray(params[name])).to(p.dtype))


def get_bort_model(name: str = "bort_4_8_768_1024", checkpoint: str = None,
                   use_decoder: bool = True, dropout: float = None, device=None,
                   seed: int = None) -> BortModel:
    """The twin of bort_gluon.model.get_bort_model (a torch device for `device`)."""
    config, params = resolve_model(name, checkpoint, use_decoder, dropout)
    if seed is not None:
        torch.manual_seed(seed)
    model = BortModel(config, use_decoder=use_decoder, device=device)
    if params is not None:
        set_params(model, params, checkpoint)
    return model


def set_fast_paths(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every fast path on (the default) or off: the fused attention (one QKV GEMM + SDPA,
    else three projections and an explicit softmax) and the unpadded encoder (else every
    position, padding included, is computed). Parameters are untouched."""
    for sub in model.modules():
        if isinstance(sub, MultiHeadSelfAttention):
            sub.fused = enabled
    return set_unpadded(model, enabled)


def set_unpadded(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch the encoders between running position-wise ops on the real tokens only (the
    default) and on the whole padded (B, L) batch; the attention path is left as it is."""
    for sub in model.modules():
        if isinstance(sub, BortEncoder):
            sub.unpadded = enabled
    return model


def save_checkpoint(model: nn.Module, path: str, tied_twice: bool = True) -> None:
    """Write a `.params` file (MXNet format, no MXNet needed) atomically."""
    ckpt.save_params(path, get_params(model), store_tied_decoder=tied_twice)
