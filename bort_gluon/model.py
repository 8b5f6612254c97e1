"""Bort on GluonNLP 0.10.0, as the 2020 release built it on GluonNLP 0.8.3.

`BortModel` is GluonNLP's `BERTModel` around its `BERTEncoder`, with the two 0.8.3 behaviours
that 0.10 changed put back (docs/models.md):
- a dropout (`embed_dropout`) right after the word embedding (0.10 dropped it);
- the MLM decoder's LayerNorm uses eps 1e-12 (`decoder_layer_norm_eps`), not the encoder's.
Parameter names are the canonical ones (`bort_core.arch.canonical_shapes`).

Fast path (switchable, parameters untouched; the twin of bort_torch's unpadded encoder):
`set_unpadded` runs every position-wise op (embeddings, projections, FFN, LayerNorm, dropout)
on the real tokens only, gathered into (N, U) rows (`Packing`); the attention scatters its
QKV rows to (L, B, 3U) for MXNet's interleaved self-attention operators and gathers back.
`hybridize_for_speed` adds static_alloc/static_shape.
"""
from __future__ import annotations

import mxnet as mx
import numpy as np
from gluonnlp.model import GELU, BERTEncoder, BERTModel
from mxnet.gluon import HybridBlock, nn

from bort_core import checkpoint as ckpt
from bort_core.configs import BortConfig
from bort_core.model_params import check_params, resolve_model


class Packing:
    """The real tokens of a padded (B, L) batch as N rows, computed on the host from
    valid_length: index arrays (int32, on valid_length's context) that gather and scatter.

    - `rows` (N,): flat batch-major position b * L + l of each real token, sequence by sequence;
    - `positions` (N,): its position l (for the position embedding);
    - `slots` (L, B): the row each time-major position reads for the attention (padding reads
      row 0: its keys are masked out and its queries' outputs dropped);
    - `order` (N,): each row's time-major position l * B + b (gathers the attention output);
    - `scatter` (B, L): each position's row, N (an appended zero row) for padding.
    """

    def __init__(self, valid_length, seq_len: int):
        lengths = np.clip(valid_length.asnumpy().astype(np.int64), 0, seq_len)
        real = np.arange(seq_len)[None, :] < lengths[:, None]            # (B, L)
        rows = np.flatnonzero(real)
        row_of = np.zeros(real.size, dtype=np.int64)
        row_of[rows] = np.arange(rows.size)
        row_of = row_of.reshape(real.shape)
        batch, positions = np.divmod(rows, seq_len)
        arrays = (rows, positions, np.where(real, row_of, 0).T,
                  positions * real.shape[0] + batch, np.where(real, row_of, rows.size))
        self.size = rows.size
        self.arrays = [host_array(a, valid_length.context, "int32") for a in arrays]


def host_array(values, ctx, dtype) -> mx.nd.NDArray:
    """`mx.nd.array(values, ctx, dtype)` without its indexing machinery (3x less Python)."""
    out = mx.nd.empty(np.shape(values), ctx=ctx, dtype=dtype)
    out._sync_copyfrom(values)
    return out


def _value(F, param, like):
    """A child block's parameter inside a parent's hybrid_forward: its variable while
    tracing, its data on `like`'s context when imperative."""
    return param.var() if F is mx.sym else param.data(like.context)


def _packed_cell(F, cell, x, key_bias, slots, order):
    """One GluonNLP BERTEncoderCell on packed (N, U) rows: the fused QKV projection on the
    rows, MXNet's interleaved self-attention on the (L, B, 3U) scatter, the rest on rows.
    Padded keys are masked by adding `key_bias` (-1e30 there) to the scores: a plain softmax
    (oneDNN's) then gives them weight 0, 4-5x faster than MXNet's softmax with lengths."""
    att = cell.attention_cell
    heads = att._num_heads
    weights = [_value(F, p, x).reshape((heads, -1, 0), reverse=True)
               for p in (att.query_weight, att.key_weight, att.value_weight)]
    biases = [_value(F, p, x).reshape((heads, -1), reverse=True)
              for p in (att.query_bias, att.key_bias, att.value_bias)]
    # per head [q; k; v]: the layout interleaved_matmul_selfatt_* reads
    weight = F.concat(*weights, dim=-2).reshape((-1, 0), reverse=True)
    bias = F.stack(*biases, axis=1).reshape((-1,))
    qkv = F.FullyConnected(x, weight, bias, num_hidden=3 * att.units, flatten=False)
    qkv = F.take(qkv, slots)                                                    # (L, B, 3U)
    scores = F.contrib.interleaved_matmul_selfatt_qk(qkv, heads=heads)
    probs = att.dropout_layer(F.softmax(scores + key_bias, axis=-1))
    context = F.contrib.interleaved_matmul_selfatt_valatt(qkv, probs, heads=heads)
    out = cell.proj(F.take(context.reshape((-1, 0), reverse=True), order))      # (N, U)
    if cell._dropout:
        out = cell.dropout_layer(out)
    return cell.ffn(cell.layer_norm(out + x))


class BortEncoder(BERTEncoder):
    """GluonNLP's BERTEncoder, plus the unpadded path: given `packing` (Packing.arrays but
    `rows`), `inputs` are the real tokens' embedding rows (N, U) and the result is the
    batch-major (B, L, U) output, zero at padding. Without it, GluonNLP's own forward runs."""

    unpadded = True

    def __call__(self, inputs, states=None, valid_length=None, packing=None):
        return HybridBlock.__call__(self, inputs, states, valid_length, packing)

    def hybrid_forward(self, F, inputs, states=None, valid_length=None, packing=None,
                       position_weight=None):
        if packing is None:
            return super().hybrid_forward(F, inputs, states, valid_length,
                                          position_weight=position_weight)
        positions, slots, order, scatter = packing
        x = inputs + F.take(position_weight, positions)
        if self._dropout:
            x = self.dropout_layer(x)
        x = self.layer_norm(x)
        heads = self.transformer_cells[0].attention_cell._num_heads
        steps = F.contrib.arange_like(slots, axis=0).reshape((1, -1))               # (1, L)
        real = F.broadcast_lesser(steps, F.cast(valid_length, "int32").reshape((-1, 1)))
        bias = ((F.cast(real, "float32") - 1) * 1e30).reshape((0, 1, 1, -1))      # (B, 1, 1, L)
        bias = F.broadcast_like(bias, slots, lhs_axes=(2,), rhs_axes=(0,))         # (B, 1, L, L)
        bias = F.broadcast_axis(bias, axis=1, size=heads).reshape((-3, -2))       # (B*heads, L, L)
        for cell in self.transformer_cells:
            x = _packed_cell(F, cell, x, bias, slots, order)
        zero = F.zeros_like(F.slice_axis(x, axis=0, begin=0, end=1))
        return F.take(F.concat(x, zero, dim=0), scatter), []


class BortModel(BERTModel):
    """Bort/BERT/RoBERTa backbone: embeddings, post-LN encoder, optional tied MLM decoder.

    Call as `model(inputs, valid_length=None, masked_positions=None, token_types=None)`:
    returns the sequence output (B, L, H), plus the MLM logits (B, M, V) when
    `masked_positions` is given to a model built with `use_decoder=True`. Positions beyond
    `valid_length` are zero in the output. With a `valid_length` NDArray the unpadded path
    runs (see `set_unpadded`), except while a forward hook sits on the embedding LayerNorm or
    a cell (hooks such as parity.dump's taps read GluonNLP's (L, B, U) outputs there).
    Initialised as the release did, on `device` (an MXNet context; default: the CPU).
    """

    def __init__(self, config: BortConfig, use_decoder: bool = True, device=None):
        self.config = config
        encoder = BortEncoder(num_layers=config.num_layers, units=config.units,
                              hidden_size=config.hidden_size, max_length=config.max_length,
                              num_heads=config.num_heads, dropout=config.dropout,
                              activation=config.activation, layer_norm_eps=config.layer_norm_eps)
        super().__init__(encoder, vocab_size=config.vocab_size,
                         token_type_vocab_size=config.token_type_vocab_size or None,
                         units=config.units, embed_size=config.units, use_pooler=False,
                         use_decoder=use_decoder, use_classifier=False,
                         use_token_type_embed=bool(config.token_type_vocab_size))
        _initialize(self, device or mx.cpu())

    def _get_embed(self, embed, vocab_size, embed_size, initializer, prefix):
        embed = super()._get_embed(embed, vocab_size, embed_size, initializer, prefix)
        if prefix == "word_embed_" and self.config.embed_dropout:
            embed.add(nn.Dropout(rate=self.config.embed_dropout))
        return embed

    def _get_decoder(self, units, vocab_size, embed, prefix):
        # Dense -> GELU -> LayerNorm(decoder eps) -> Dense tied to the word embedding: sharing
        # the embedding's ParameterDict makes the last Dense's `weight` that embedding's.
        with self.name_scope():
            decoder = nn.HybridSequential(prefix=prefix)
            decoder.add(nn.Dense(units, flatten=False))
            decoder.add(GELU())
            decoder.add(nn.LayerNorm(in_channels=units, epsilon=self.config.decoder_layer_norm_eps))
            decoder.add(nn.Dense(vocab_size, flatten=False, params=embed.collect_params()))
        return decoder

    def packing(self, inputs, valid_length):
        """Packing.arrays for an imperative call on the unpadded path, else None."""
        encoder = self.encoder
        if not encoder.unpadded or not isinstance(valid_length, mx.nd.NDArray) or any(
                b._forward_hooks for b in (encoder.layer_norm, *encoder.transformer_cells)):
            return None
        packing = Packing(valid_length, inputs.shape[1])
        return packing.arrays if packing.size else None

    def __call__(self, inputs, valid_length=None, masked_positions=None, token_types=None,
                 packing=None):
        # BERTModel's slot order is (inputs, token_types, ...); an empty list stands for "none",
        # and a model with token types reads all-zero types unless told otherwise. `packing`
        # is passed in by a parent block that traces this one (BortClassifier).
        if token_types is None:
            token_types = inputs.zeros_like() if self._use_token_type_embed else []
        if packing is None:
            packing = self.packing(inputs, valid_length)
        return HybridBlock.__call__(self, inputs, token_types, valid_length, masked_positions,
                                    packing)

    def hybrid_forward(self, F, inputs, token_types, valid_length=None, masked_positions=None,
                       packing=None):
        if packing is None:
            sequence, _ = self._encode_sequence(inputs, token_types, valid_length)
        else:
            rows = packing[0]
            embedding = self.word_embed(F.take(inputs.reshape((-1,)), rows))
            if self._use_token_type_embed:
                embedding = embedding + self.token_type_embed(
                    F.take(token_types.reshape((-1,)), rows))
            sequence, _ = self.encoder(embedding, None, valid_length, packing[1:])
        if masked_positions is None or not self._use_decoder:
            return sequence
        return sequence, self._decode(F, sequence, masked_positions)


class BortClassifier(HybridBlock):
    """The release's sentence classifier: first token -> Dropout -> Dense(units, tanh) ->
    Dropout -> Dense(num_classes). With dropout 0 the Dropout layers are absent, which shifts
    the head's parameter names from `classifier.{1,3}` to `classifier.{0,1}` (as in 2020).
    The head is initialised as the release did, on `bort`'s context."""

    def __init__(self, bort: BortModel, num_classes: int = 2, dropout: float = 0.0):
        super().__init__()
        self.bort = bort
        self._units = bort.config.units
        with self.name_scope():
            self.classifier = nn.HybridSequential(prefix="classifier_")
            if dropout:
                self.classifier.add(nn.Dropout(rate=dropout))
            self.classifier.add(nn.Dense(units=self._units, activation="tanh", flatten=False))
            if dropout:
                self.classifier.add(nn.Dropout(rate=dropout))
            self.classifier.add(nn.Dense(units=num_classes, flatten=False))
        device = device_of(bort)
        self.classifier.initialize(init=mx.init.Normal(0.02), ctx=device)
        self.classifier(mx.nd.zeros((1, self._units), ctx=device))   # settles deferred shapes

    def __call__(self, inputs, valid_length=None):
        return super().__call__(inputs, valid_length, self.bort.packing(inputs, valid_length))

    def hybrid_forward(self, F, inputs, valid_length=None, packing=None):
        sequence = self.bort(inputs, valid_length, packing=packing)
        first = F.squeeze(F.slice_axis(sequence, axis=1, begin=0, end=1), axis=1)
        return self.classifier(first)


def device_of(model: HybridBlock):
    """The context an initialised model's parameters live on."""
    return next(iter(model.collect_params().values())).list_ctx()[0]


def _initialize(block: HybridBlock, device, sigma: float = 0.02) -> None:
    """Normal(0, sigma) weights, zero biases, unit LayerNorm gains on `device`; a one-token
    forward then settles GluonNLP's deferred shapes, so every parameter exists."""
    block.initialize(init=mx.init.Normal(sigma), ctx=device, force_reinit=True)
    one = mx.nd.zeros((1, 1), ctx=device)
    valid = mx.nd.ones((1,), ctx=device)
    if isinstance(block, BortClassifier):
        block(one, valid)
        block = block.bort   # its MLM decoder, if any, only runs with masked positions
    if isinstance(block, BortModel):
        block(one, valid, one if block._use_decoder else None)


def initialize_like_release(model: HybridBlock, sigma: float = 0.02) -> None:
    """Normal(0, sigma) weights, zero biases, unit LayerNorm gains (what the release did; done
    at construction, call again to redraw), on the model's context."""
    _initialize(model, device_of(model), sigma)


def named_parameters(model: HybridBlock):
    """Canonical (structural) name -> Parameter, the names `save_parameters` writes (tied
    ones once)."""
    seen, named = set(), {}
    for name, param in model._collect_params_with_prefix().items():
        if id(param) not in seen:
            seen.add(id(param))
            named[name] = param
    return named


def get_params(model: HybridBlock):
    """Canonical name -> numpy array (float32 as stored)."""
    return {name: p.data().asnumpy() for name, p in named_parameters(model).items()}


def set_params(model: HybridBlock, params, source: str = "<params>") -> None:
    """Copy a canonical dict into the model; names and shapes must match exactly."""
    named = named_parameters(model)
    check_params({name: p.shape for name, p in named.items()}, params, source)
    for name, param in named.items():
        param.set_data(mx.nd.array(np.asarray(params[name]), dtype=param.dtype))


def get_bort_model(name: str = "bort_4_8_768_1024", checkpoint: str = None,
                   use_decoder: bool = True, dropout: float = None, device=None,
                   seed: int = None):
    """Build a registry config (or `bort_D_A_I_H`, or a JSON path) as a BortModel on `device`
    (an MXNet context; default: the CPU).

    With `checkpoint` (a `.params` file) the vocabulary size is taken from its word embedding
    and its weights are loaded (a decoder file into a decoder-less model drops the decoder);
    otherwise the model is initialised as the release did. `dropout` overrides both dropout
    rates (0 for deterministic parity runs).
    """
    config, params = resolve_model(name, checkpoint, use_decoder, dropout)
    if seed is not None:
        mx.random.seed(seed)
        np.random.seed(seed)
    model = BortModel(config, use_decoder=use_decoder, device=device)
    if params is not None:
        set_params(model, params, checkpoint)
    return model


def set_fast_paths(model: HybridBlock, enabled: bool = True) -> HybridBlock:
    """Switch every fast path on (the default) or off; here that is the unpadded encoder
    (`set_unpadded`, MXNet's interleaved self-attention included). Parameters are untouched."""
    return set_unpadded(model, enabled)


def set_unpadded(model: HybridBlock, enabled: bool = True) -> HybridBlock:
    """Switch the encoders between running position-wise ops on the real tokens only (the
    default) and GluonNLP's padded (B, L) forward. Parameters are untouched; a hybridized
    block is re-traced at its next call."""
    for child in _blocks(model):
        if isinstance(child, BortEncoder):
            child.unpadded = enabled
    if isinstance(model, HybridBlock) and model._active:
        model._clear_cached_op()
    return model


def _blocks(block):
    yield block
    for child in block._children.values():
        yield from _blocks(child)


def hybridize_for_speed(model: HybridBlock, static: bool = True) -> HybridBlock:
    """Hybridize with `static_alloc`/`static_shape`: one cached graph whose memory is planned
    once (recompiled only when input shapes change). Numerics are unchanged."""
    model.hybridize(static_alloc=static, static_shape=static)
    return model


def to_low_precision(model: HybridBlock, dtype: str = "bfloat16", device=None) -> HybridBlock:
    """MXNet AMP conversion of a hybridized block that has run once (a SymbolBlock comes
    back; call it with the same positional inputs). AMP has no rule for GluonNLP's fused
    self-attention operators, so those nodes stay float32. The block must run padded
    (`set_unpadded(block, False)`): a SymbolBlock cannot compute the packing indices.
    bfloat16 needs an MKLDNN CPU build, float16 a GPU; anything else raises a ValueError that
    says so."""
    from mxnet.contrib import amp

    ctx = device or mx.cpu()
    if dtype not in ("float16", "bfloat16"):
        raise ValueError("to_low_precision: dtype must be float16 or bfloat16, got %r" % dtype)
    if dtype == "float16" and ctx.device_type != "gpu":
        raise ValueError("float16 AMP needs a GPU context; on CPU use bfloat16")
    if not model._cached_graph:
        raise ValueError("to_low_precision: hybridize the block and run it once first")
    if any(isinstance(b, BortEncoder) and b.unpadded for b in _blocks(model)):
        raise ValueError("to_low_precision: switch the unpadded path off first "
                         "(set_unpadded(block, False)), then run the block once")
    if dtype == "bfloat16" and ctx.device_type == "cpu":
        _check_cpu_bfloat16(ctx)
    keep = [name for name in model._cached_graph[1].get_internals().list_outputs()
            if "interleaved_matmul" in name]
    keep = [name[: -len("_output")] if name.endswith("_output") else name for name in keep]
    try:
        return amp.convert_hybrid_block(model, target_dtype=dtype, excluded_sym_names=keep, ctx=ctx)
    except (mx.base.MXNetError, AssertionError) as err:
        raise ValueError("MXNet %s AMP cannot convert this model to %s: %s"
                         % (mx.__version__, dtype, str(err).strip().splitlines()[0])) from err


def _check_cpu_bfloat16(ctx) -> None:
    """MKL-DNN builds bfloat16 FullyConnected only on CPUs with AVX-512 (BF16 or AMX); elsewhere
    the converted graph would fail at its first run, so convert and run one tiny Dense now."""
    from mxnet.contrib import amp

    probe = mx.gluon.nn.Dense(16, in_units=16)
    probe.initialize(ctx=ctx)
    probe.hybridize()
    x = mx.nd.ones((1, 16), ctx=ctx)
    probe(x).wait_to_read()
    try:
        amp.convert_hybrid_block(probe, target_dtype="bfloat16", ctx=ctx)(x).wait_to_read()
    except mx.base.MXNetError as err:
        raise ValueError("MXNet %s has no bfloat16 FullyConnected on this CPU (MKL-DNN needs "
                         "AVX-512): %s" % (mx.__version__, str(err).strip().splitlines()[0])) from err


def plain_bert_model(config: BortConfig, use_decoder: bool = True, device=None) -> BERTModel:
    """GluonNLP's own BERTModel with the config's shapes and none of Bort's changes (the speed
    baseline); same parameter names as BortModel, initialised and shape-settled. Call it as
    `model(inputs, None, valid_length[, masked_positions])` (masked positions required with a
    decoder)."""
    ctx = device or mx.cpu()
    encoder = BERTEncoder(num_layers=config.num_layers, units=config.units,
                          hidden_size=config.hidden_size, max_length=config.max_length,
                          num_heads=config.num_heads, dropout=config.dropout,
                          activation=config.activation, layer_norm_eps=config.layer_norm_eps)
    model = BERTModel(encoder, vocab_size=config.vocab_size, units=config.units,
                      embed_size=config.units, use_pooler=False, use_decoder=use_decoder,
                      use_classifier=False, use_token_type_embed=False)
    model.initialize(init=mx.init.Normal(0.02), ctx=ctx)
    one = mx.nd.zeros((1, 1), ctx=ctx)
    model(one, None, mx.nd.ones((1,), ctx=ctx), one if use_decoder else None)
    return model


def save_checkpoint(model: HybridBlock, path: str, tied_twice: bool = True) -> None:
    """Write a `.params` file atomically; by default the tied decoder weight is stored under
    both names, as GluonNLP's `save_parameters` (and so every 2020 file) does."""
    ckpt.save_params(path, get_params(model), store_tied_decoder=tied_twice)
