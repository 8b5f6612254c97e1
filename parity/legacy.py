"""The legacy oracle: the 2020 stack (Python 3.7, mxnet 1.5.0, gluonnlp 0.8.3, numpy 1.16.2)
builds Bort as the release did, saves a checkpoint in the release's format and dumps taps.

    python -m parity.legacy make --config bort_4_8_768_1024 --out-dir DIR \
        [--inputs IN.npz] [--seed S]
        -> DIR/checkpoint.params, DIR/taps.npz, DIR/inputs.npz, DIR/config.json
    python -m parity.legacy dump --config NAME --checkpoint P --inputs IN.npz --out OUT.npz

The model is gluonnlp 0.8.3's `BERTEncoder` inside `BERTModel` with the release's arguments
(no pooler, no token types, MLM decoder tied to the word embedding, the decoder LayerNorm at
0.8.3's default eps 1e-12). Parameters are drawn from a seeded numpy stream so that every one
of them is far from its default. Taps follow `parity.io`; all are computed in inference mode.

Written for Python 3.7 and numpy 1.16; mxnet and gluonnlp are imported inside functions only,
so the module can be imported (and its docs read) anywhere.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from parity import io as pio

#: the release's legacy stack; `config.json` records what actually ran
LEGACY_VERSIONS = {"mxnet": "1.5.0", "gluonnlp": "0.8.3", "numpy": "1.16.2", "python": "3.7"}

#: 0.8.3's `BERTLayerNorm` default, which the release's decoder LayerNorm kept
DECODER_LAYER_NORM_EPS = 1e-12

INIT_SCHEME = ("numpy RandomState(seed), parameters in sorted save-name order: weights and "
               "embeddings N(0, 0.02); biases N(0, 0.1); LayerNorm gamma 1 + N(0, 0.1), "
               "beta N(0, 0.1)")


def _repo_config(name):
    """`bort_core.configs.get_config`, with the repository root importable."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from bort_core.configs import get_config
    return get_config(name)


def build_model(config, ctx=None):
    """Bort as the 2020 release built it (gluonnlp 0.8.3 API), every encoding returned.

    Returns an uninitialised `gluonnlp.model.BERTModel`.
    """
    import gluonnlp
    import mxnet as mx
    from gluonnlp.model import BERTEncoder, BERTModel

    if not gluonnlp.__version__.startswith("0.8."):
        raise RuntimeError("the legacy oracle needs gluonnlp 0.8.x (the 2020 stack), found %s; "
                           "run it with the tox `legacy` env's python" % gluonnlp.__version__)
    if config.token_type_vocab_size:
        raise ValueError("config %r has token types; the Bort release has none" % config.name)
    encoder = BERTEncoder(attention_cell="multi_head", num_layers=config.num_layers,
                          units=config.units, hidden_size=config.hidden_size,
                          max_length=config.max_length, num_heads=config.num_heads,
                          scaled=True, dropout=config.dropout, use_residual=True,
                          output_attention=False, output_all_encodings=True,
                          activation=config.activation, layer_norm_eps=config.layer_norm_eps)
    model = BERTModel(encoder, vocab_size=config.vocab_size, token_type_vocab_size=None,
                      units=config.units, embed_size=config.embed_size or config.units,
                      embed_dropout=config.embed_dropout, word_embed=None,
                      token_type_embed=None, use_pooler=False, use_decoder=True,
                      use_classifier=False, use_token_type_embed=False)
    if model.decoder[2]._epsilon != DECODER_LAYER_NORM_EPS:
        raise RuntimeError("decoder LayerNorm eps is %g, not the 2020 value %g: is this "
                           "gluonnlp 0.8.3?" % (model.decoder[2]._epsilon, DECODER_LAYER_NORM_EPS))
    model._legacy_ctx = ctx or mx.cpu()
    return model


def save_names(model):
    """Save name -> Parameter, as `save_parameters` writes them (tied weights appear twice)."""
    return model._collect_params_with_prefix()


def _draw(rng, name, shape):
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "gamma":
        return 1.0 + rng.normal(0.0, 0.1, size=shape)
    if leaf in ("beta", "bias"):
        return rng.normal(0.0, 0.1, size=shape)
    if leaf in ("weight", "position_weight"):
        return rng.normal(0.0, 0.02, size=shape)
    raise ValueError("no initialiser for parameter %s" % name)


def initialize(model, seed):
    """Give every parameter a seeded, non-default value (see INIT_SCHEME)."""
    import mxnet as mx

    mx.random.seed(seed)
    ctx = model._legacy_ctx
    model.initialize(mx.init.Zero(), ctx=ctx)
    # the attention projections infer their input width: one tiny forward settles every shape
    with mx.autograd.predict_mode():
        model(mx.nd.zeros((1, 2), ctx=ctx, dtype="int32"), [],
              mx.nd.array([2], ctx=ctx), mx.nd.zeros((1, 1), ctx=ctx, dtype="int32"))
    rng = np.random.RandomState(seed)
    done = set()
    for name, param in sorted(save_names(model).items()):
        if id(param) in done:   # the decoder's output weight is the word embedding
            continue
        done.add(id(param))
        if 0 in param.shape:
            raise RuntimeError("parameter %s has an unresolved shape %s" % (name, param.shape))
        param.set_data(mx.nd.array(_draw(rng, name, param.shape), dtype="float32"))


def load(model, checkpoint):
    """Load a 2020-format `.params` file strictly (no missing, no extra names), as the release
    loaded its weights. The tied weight must be stored under both of its names, with equal
    values: mxnet would otherwise keep whichever name comes later in the file."""
    import mxnet as mx

    arrays = mx.nd.load(checkpoint)
    tied = [arrays.get(n) for n in ("word_embed.0.weight", "decoder.3.weight")]
    both = all(a is not None for a in tied)
    if both and not np.array_equal(tied[0].asnumpy(), tied[1].asnumpy()):
        raise ValueError("%s: word_embed.0.weight and decoder.3.weight differ; they are one "
                         "tied parameter" % checkpoint)
    model.load_parameters(checkpoint, ctx=model._legacy_ctx)


def compute_taps(model, inputs):
    """Forward `inputs` (a `parity.io` dict) in inference mode; returns the tap dict.

    `embed` is recomputed from the model's own blocks (word_embed, encoder.position_weight,
    encoder.layer_norm) and checked bit-for-bit against what the encoder's LayerNorm returned
    inside the real forward (a forward hook).
    """
    import mxnet as mx

    ctx = model._legacy_ctx
    ids = mx.nd.array(inputs["input_ids"], ctx=ctx, dtype="int32")
    # 0.8.3 compares valid_length with float32 steps: the release cast it to float32 too
    valid_length = mx.nd.array(inputs["valid_length"], ctx=ctx, dtype="float32")
    positions = mx.nd.array(inputs["masked_positions"], ctx=ctx, dtype="int32")
    seq_len = ids.shape[1]
    max_length = model.encoder._max_length
    if seq_len > max_length:
        raise ValueError("inputs have length %d > max_length %d" % (seq_len, max_length))

    seen = []
    hook = model.encoder.layer_norm.register_forward_hook(
        lambda block, args, out: seen.append(out.asnumpy()))
    try:
        with mx.autograd.predict_mode():
            # the release calls BERTModel with an empty list for the (unused) token types
            encodings, mlm_logits = model(ids, [], valid_length, positions)
            words = model.word_embed(ids)
            pos = model.encoder.position_weight.data(ctx)[:seq_len]
            embed = model.encoder.layer_norm(mx.nd.broadcast_add(words, pos.expand_dims(0)))
    finally:
        hook.detach()
    embed = embed.asnumpy()
    if len(seen) != 2 or not np.array_equal(seen[0], embed):
        raise RuntimeError("the embed tap disagrees with the encoder's own LayerNorm output")

    taps = {"embed": embed}
    for i, enc in enumerate(encodings):
        taps["layer%d" % i] = enc.asnumpy()
    taps["sequence_output"] = taps["layer%d" % (len(encodings) - 1)]
    taps["mlm_logits"] = mlm_logits.asnumpy()
    return taps


def check_taps(taps, inputs, config):
    """Raise if the taps are malformed: shapes, finiteness, zeroed padding."""
    b, length = inputs["input_ids"].shape
    m = inputs["masked_positions"].shape[1]
    expected = {"embed": (b, length, config.units), "sequence_output": (b, length, config.units),
                "mlm_logits": (b, m, config.vocab_size)}
    for i in range(config.num_layers):
        expected["layer%d" % i] = (b, length, config.units)
    if set(taps) != set(expected):
        raise RuntimeError("taps %s, expected %s" % (sorted(taps), sorted(expected)))
    for name, shape in expected.items():
        if taps[name].shape != shape or not np.isfinite(taps[name]).all():
            raise RuntimeError("tap %s: shape %s (expected %s) or not finite"
                               % (name, taps[name].shape, shape))
    pad = np.arange(length)[None, :] >= inputs["valid_length"][:, None]
    for name in expected:
        if name.startswith("layer") or name == "sequence_output":
            if np.abs(taps[name][pad]).max(initial=0.0) != 0.0:
                raise RuntimeError("tap %s is not zero beyond valid_length" % name)


def _versions():
    import gluonnlp
    import mxnet
    return {"mxnet": mxnet.__version__, "gluonnlp": gluonnlp.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def make(config_name, out_dir, inputs_path=None, seed=0):
    """Build, initialise and save a 2020-format checkpoint, plus its inputs, taps and metadata."""
    config = _repo_config(config_name)
    os.makedirs(out_dir, exist_ok=True)
    if inputs_path and os.path.exists(inputs_path):
        inputs = pio.load_inputs(inputs_path)
    else:
        inputs = pio.make_inputs(batch_size=4, seq_len=32, vocab_size=config.vocab_size,
                                 num_masked=5, seed=0)
    pio.save_inputs(os.path.join(out_dir, "inputs.npz"), inputs)

    start = time.time()
    model = build_model(config)
    initialize(model, seed)
    checkpoint = os.path.join(out_dir, "checkpoint.params")
    model.save_parameters(checkpoint)
    # the taps come from the saved file, read back through the 2020 loader
    model = build_model(config)
    load(model, checkpoint)
    taps = compute_taps(model, inputs)
    check_taps(taps, inputs, config)
    pio.save_taps(os.path.join(out_dir, "taps.npz"), taps)

    meta = {"config": config.name, "config_fields": config.to_dict(), "seed": seed,
            "versions": _versions(), "init": INIT_SCHEME,
            "decoder_layer_norm_eps": DECODER_LAYER_NORM_EPS,
            "files": {"checkpoint": "checkpoint.params", "taps": "taps.npz",
                      "inputs": "inputs.npz"},
            "taps": sorted(taps), "seconds": round(time.time() - start, 2)}
    with pio.atomic_path(os.path.join(out_dir, "config.json")) as tmp, open(tmp, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    return meta


def dump(config_name, checkpoint, inputs_path, out):
    """Load any 2020-format checkpoint into the 2020 model and write its taps."""
    config = _repo_config(config_name)
    inputs = pio.load_inputs(inputs_path)
    model = build_model(config)
    load(model, checkpoint)
    taps = compute_taps(model, inputs)
    check_taps(taps, inputs, config)
    pio.save_taps(out, taps)
    return taps


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m parity.legacy",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("make", help="build + initialise + save a 2020 checkpoint and its taps")
    p.add_argument("--config", required=True, help="a bort_core config name or JSON path")
    p.add_argument("--inputs", help="parity inputs .npz (made into OUT_DIR/inputs.npz if absent)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("dump", help="taps of a 2020-format checkpoint")
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.command == "make":
        meta = make(args.config, args.out_dir, args.inputs, args.seed)
        print("wrote %s (%s, seed %d, %.1fs)" % (args.out_dir, meta["config"], meta["seed"],
                                                 meta["seconds"]))
    elif args.command == "dump":
        dump(args.config, args.checkpoint, args.inputs, args.out)
        print("wrote %s" % args.out)
    else:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
