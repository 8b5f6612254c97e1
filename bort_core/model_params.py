"""A checkpoint's parameters as a model's: checked against a config (names, shapes, dtypes,
finite values), a classifier's backbone and head, the architecture the shapes give, and the
loaders that read a `.params` file (bort_core.checkpoint) into what a backend builds from."""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict

import numpy as np

from bort_core import arch
from bort_core.checkpoint import drop_tied_decoder, load_params
from bort_core.configs import BortConfig, get_config, list_configs
from bort_core.names import WORD_EMBED

BACKBONE_PREFIX = "bort."            # classifier checkpoints
HEAD_PREFIX = "classifier."


# ----------------------------------------------------------------------------- validation

def _fmt(shape):
    return str(tuple(int(d) for d in shape))


def _check_finite(params, source):
    for name, value in params.items():
        a = np.asarray(value)
        if a.dtype.kind != "f":
            continue
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            warnings.warn("%s: parameter %s has %d non-finite value(s) (nan/inf) out of %d"
                          % (source, name, bad, a.size), RuntimeWarning, stacklevel=3)


def compare_params(params, expected, source, what):
    """Check `params` against `expected` (name -> shape): one ValueError naming `source`,
    `what` the names stand for, and every missing, unexpected, misshapen or non-float entry."""
    problems = []
    for name, shape in expected.items():
        if name not in params:
            problems.append("missing parameter %s (expected shape %s)" % (name, _fmt(shape)))
            continue
        a = np.asarray(params[name])
        if tuple(a.shape) != tuple(shape):
            problems.append("parameter %s: expected shape %s, found %s"
                            % (name, _fmt(shape), _fmt(a.shape)))
        elif a.dtype.kind != "f":
            problems.append("parameter %s: expected a floating-point dtype, found %s"
                            % (name, a.dtype))
    for name in params:
        if name not in expected:
            shape = np.shape(params[name])
            problems.append("unexpected parameter %s (shape %s)" % (name, _fmt(shape)))
    if problems:
        shown = problems[:25]
        if len(problems) > len(shown):
            shown.append("... and %d more" % (len(problems) - len(shown)))
        raise ValueError("%s: parameters do not match %s:\n  %s"
                         % (source, what, "\n  ".join(shown)))


def validate_params(params, config, with_decoder=None, source="<params>"):
    """Check a backbone dict against `arch.canonical_shapes(config, with_decoder)` and
    return it in canonical names and order (tied decoder duplicate dropped).

    Raises ValueError naming `source`, each parameter and expected vs found (missing,
    unexpected, shape mismatch); warns on non-finite values. `with_decoder=None` means
    "whatever the dict has" (any `decoder.*` name).
    """
    params = drop_tied_decoder(params, source=source)
    if with_decoder is None:
        with_decoder = any(name.startswith("decoder.") for name in params)
    expected = arch.canonical_shapes(config, with_decoder=with_decoder)
    compare_params(params, expected, source, "config %r (vocab_size %d%s)" % (
        config.name, config.vocab_size, ", with decoder" if with_decoder else ", no decoder"))
    _check_finite(params, source)
    return OrderedDict((name, params[name]) for name in expected)


# ----------------------------------------------------------------------------- classifier

def is_classifier(params):
    return any(n.startswith(BACKBONE_PREFIX) or n.startswith(HEAD_PREFIX) for n in params)


def split_classifier(params, source="<params>"):
    """(backbone, head) of a classifier checkpoint: `bort.`-prefixed names (prefix removed)
    and `classifier.*` names. Any other name is an error."""
    backbone, head, other = OrderedDict(), OrderedDict(), []
    for name, value in params.items():
        if name.startswith(BACKBONE_PREFIX):
            backbone[name[len(BACKBONE_PREFIX):]] = value
        elif name.startswith(HEAD_PREFIX):
            head[name] = value
        else:
            other.append(name)
    if other:
        raise ValueError("%s: a classifier checkpoint holds only %s* and %s* names; found %s"
                         % (source, BACKBONE_PREFIX, HEAD_PREFIX, ", ".join(other[:10])))
    return backbone, head


def join_classifier(backbone, head):
    """The reverse of `split_classifier`."""
    out = OrderedDict((BACKBONE_PREFIX + n, v) for n, v in backbone.items())
    out.update(head)
    return out


def classifier_layout(head, source="<params>"):
    """(num_classes, dropout) of a head: `classifier.1/.3` means dropout layers are present
    (dropout=0.1 stands for any non-zero rate), `classifier.0/.1` means dropout was 0."""
    if "classifier.3.weight" in head:
        dropout, last = 0.1, "classifier.3.weight"
    elif "classifier.1.weight" in head and "classifier.0.weight" in head:
        dropout, last = 0.0, "classifier.1.weight"
    else:
        raise ValueError("%s: cannot recognise the classifier head: expected classifier.1.* and "
                         "classifier.3.* (or classifier.0.* and classifier.1.*), found %s"
                         % (source, ", ".join(head) or "no classifier parameters"))
    shape = np.shape(head[last])
    if len(shape) != 2:
        raise ValueError("%s: parameter %s: expected a 2-d weight, found shape %s"
                         % (source, last, _fmt(shape)))
    return int(shape[0]), dropout


def validate_classifier_head(head, config, num_classes=None, source="<params>"):
    """Check a head against `arch.classifier_shapes`; returns (head, num_classes, dropout)."""
    found, dropout = classifier_layout(head, source)
    num_classes = found if num_classes is None else num_classes
    expected = arch.classifier_shapes(config, num_classes, dropout=dropout)
    compare_params(head, expected, source, "a %d-class classifier head for config %r"
                   % (num_classes, config.name))
    _check_finite(head, source)
    return OrderedDict((n, head[n]) for n in expected), num_classes, dropout


# ----------------------------------------------------------------------------- inference

def infer_vocab_size(params):
    """Vocabulary size: the word embedding's first dimension (`bort.` prefix allowed)."""
    for name in (WORD_EMBED, BACKBONE_PREFIX + WORD_EMBED):
        if name in params:
            shape = np.shape(params[name])
            if len(shape) != 2:
                raise ValueError("parameter %s: expected a 2-d embedding, found shape %s"
                                 % (name, _fmt(shape)))
            return int(shape[0])
    raise ValueError("cannot infer the vocabulary size: no %s parameter" % WORD_EMBED)


def infer_architecture(params):
    """The config fields a backbone's shapes determine: num_layers, units, hidden_size,
    vocab_size, max_length, token_type_vocab_size. (num_heads cannot be inferred.)"""
    vocab_size = infer_vocab_size(params)
    units = int(np.shape(params[WORD_EMBED])[1])
    layers = set()
    prefix = "encoder.transformer_cells."
    for name in params:
        if name.startswith(prefix):
            layers.add(int(name[len(prefix):].split(".", 1)[0]))
    out = {"vocab_size": vocab_size, "units": units, "num_layers": len(layers)}
    ffn = prefix + "0.ffn.ffn_1.weight"
    if ffn in params:
        out["hidden_size"] = int(np.shape(params[ffn])[0])
    if "encoder.position_weight" in params:
        out["max_length"] = int(np.shape(params["encoder.position_weight"])[0])
    tt = "token_type_embed.0.weight"
    out["token_type_vocab_size"] = int(np.shape(params[tt])[0]) if tt in params else 0
    return out


def _matching_configs(found):
    names = []
    for name in list_configs():
        c = get_config(name)
        if all(getattr(c, k) == v for k, v in found.items() if k != "vocab_size"):
            names.append(name)
    return names


def load_checkpoint(path, config=None):
    """Read, canonicalise and validate a backbone or classifier checkpoint.

    `config`: a BortConfig (used as given), a config name or JSON path (resolved with
    `get_config(config, vocab_size=<from the file>)`), or None (the shapes are checked for
    consistency, but num_heads cannot be inferred, so a ValueError asks for a name).
    Returns (config, params): params in the file's names (`arg:`/`aux:` stripped, tied
    decoder duplicate dropped), in canonical order.
    """
    path = os.fspath(path)
    return resolve_checkpoint(load_params(path), path, config)


def resolve_checkpoint(params, path, config=None):
    """`load_checkpoint` for a dict already in memory (read from any format); `path` names
    its source in errors."""
    classifier = is_classifier(params)
    backbone, head = split_classifier(params, source=path) if classifier else (params, None)
    try:
        vocab_size = infer_vocab_size(backbone)
    except ValueError as err:
        raise ValueError("%s: %s" % (path, err)) from None
    if config is None:
        found = infer_architecture(drop_tied_decoder(backbone, source=path))
        desc = ", ".join("%s=%d" % kv for kv in sorted(found.items()))
        candidates = _matching_configs(found)
        hint = ("; configs with these shapes: %s" % ", ".join(candidates)) if candidates else ""
        raise ValueError("%s: a config is required: the shapes give %s, but num_heads cannot be "
                         "inferred from parameter shapes; pass a config name (e.g. bort_D_A_I_H) "
                         "or a JSON path%s" % (path, desc, hint))
    if not isinstance(config, BortConfig):
        config = get_config(config, vocab_size=vocab_size)
    backbone = validate_params(backbone, config, source=path)
    if not classifier:
        return config, backbone
    head, _, _ = validate_classifier_head(head, config, source=path)
    return config, join_classifier(backbone, head)


def load_model_params(path, config=None, with_decoder=True):
    """(config, backbone params) to build a BortModel from a backbone or classifier
    checkpoint: a classifier's head is left out, `with_decoder=False` leaves the MLM decoder
    out, and a file without a decoder cannot fill a model that has one."""
    config, params = load_checkpoint(path, config)
    if is_classifier(params):
        params, _ = split_classifier(params, source=path)
    has_decoder = any(name.startswith("decoder.") for name in params)
    if with_decoder and not has_decoder:
        raise ValueError("%s: the checkpoint has no MLM decoder (decoder.*); build the model "
                         "without one (use_decoder=False)" % path)
    if not with_decoder:
        params = OrderedDict((n, v) for n, v in params.items() if not n.startswith("decoder."))
    return config, params


def resolve_model(name, checkpoint=None, use_decoder=True, dropout=None):
    """(config, params or None) for the twins' `get_bort_model`: a registry name, `bort_D_A_I_H`
    or JSON path, with the vocabulary size and weights of `checkpoint` when given (see
    `load_model_params`); `dropout` overrides both dropout rates."""
    params = None
    if checkpoint is not None:
        config, params = load_model_params(checkpoint, name, with_decoder=use_decoder)
    else:
        config = get_config(name)
    if dropout is not None:
        config = config.replace(dropout=dropout, embed_dropout=dropout)
    return config, params


def load_backbone_and_head(path, config=None):
    """(config, backbone params, head params or None) of a backbone or classifier checkpoint,
    for a backend building a model (with an MLM decoder when the backbone has one)."""
    config, params = load_checkpoint(path, config)
    head = None
    if is_classifier(params):
        params, head = split_classifier(params, source=path)
    return config, params, head


def check_params(shapes, params, source="<params>"):
    """A model's parameters (canonical name -> shape) must be filled by `params` exactly:
    the same names, the same shapes; a ValueError names the differences."""
    missing = sorted(set(shapes) - set(params))
    unexpected = sorted(set(params) - set(shapes))
    if missing or unexpected:
        raise ValueError("%s: parameters do not match the model: missing %s; unexpected %s"
                         % (source, missing[:8] or "none", unexpected[:8] or "none"))
    for name, shape in shapes.items():
        if tuple(shape) != np.shape(params[name]):
            raise ValueError("%s: parameter %s has shape %s, the model expects %s"
                             % (source, name, np.shape(params[name]), tuple(shape)))
