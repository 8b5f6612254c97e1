"""`bort convert SRC DST`: move a checkpoint between every format both frameworks use.

Formats, picked by the path:
  *.params          MXNet/GluonNLP NDArray file, canonical names (the 2020 format)
  *.pt              PyTorch state dict of bort_torch.BortModel (loaded with weights_only)
  *.safetensors     the same state dict as safetensors (no PyTorch needed), config in metadata
  DIR/ (or no ext)  HuggingFace BertForMaskedLM directory: config.json + model.safetensors

Everything passes through the canonical dict (numpy arrays), so conversions are bit-exact.
The PyTorch state-dict names are the canonical ones except LayerNorm leaves: the table below.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
from collections import OrderedDict

import numpy as np

from bort_core import checkpoint as ckpt
from bort_core import io as bio
from bort_core.deps import require
from bort_core.configs import BortConfig, get_config

# The one table between bort_torch's state-dict names and the canonical (GluonNLP) names:
# PyTorch's LayerNorm calls gamma/beta `weight`/`bias`. LayerNorms are the blocks named
# `layer_norm` and the decoder's third layer.
CANONICAL_TO_TORCH_LEAF = {"gamma": "weight", "beta": "bias"}
_TORCH_LAYER_NORM = re.compile(r"(^|\.)(layer_norm|decoder\.2)\.(weight|bias)$")
_TORCH_TO_CANONICAL_LEAF = {v: k for k, v in CANONICAL_TO_TORCH_LEAF.items()}


def torch_name(name: str) -> str:
    owner, _, leaf = name.rpartition(".")
    return "%s.%s" % (owner, CANONICAL_TO_TORCH_LEAF.get(leaf, leaf))


def canonical_name(name: str) -> str:
    if _TORCH_LAYER_NORM.search(name):
        owner, _, leaf = name.rpartition(".")
        return "%s.%s" % (owner, _TORCH_TO_CANONICAL_LEAF[leaf])
    return name


def to_torch_state(params):
    """Canonical dict -> bort_torch state-dict names (the tied decoder weight included, as
    `BortModel.state_dict()` lists it)."""
    return OrderedDict((torch_name(n), v) for n, v in ckpt.add_tied_decoder(params).items())


def from_torch_state(state):
    """bort_torch state-dict names -> canonical dict (tied decoder copy kept for validation)."""
    return OrderedDict((canonical_name(n), v) for n, v in state.items())


def detect_format(path: str) -> str:
    if path.endswith(".params"):
        return "params"
    if path.endswith(".pt") or path.endswith(".pth"):
        return "pt"
    if path.endswith(".safetensors"):
        return "safetensors"
    if os.path.isdir(path) or not os.path.splitext(path)[1]:
        return "hf"
    raise ValueError("%s: unknown checkpoint format; use .params, .pt, .safetensors or an "
                     "HF directory" % path)


def read_checkpoint(path: str, config=None):
    """(config, canonical params) from any supported format; `config` (a name or JSON path)
    is needed only where the file cannot tell the number of heads."""
    fmt = detect_format(path)
    if fmt != "hf" and not os.path.exists(path):
        raise FileNotFoundError("checkpoint %s does not exist" % path)
    if fmt == "params":
        return ckpt.load_checkpoint(path, config)
    if fmt == "hf":
        from bort_core import hf

        hf_config, params = hf.load_hf(path)
        if config is not None:
            hf_config = get_config(config, vocab_size=hf_config.vocab_size)
        return hf_config, ckpt.validate_params(params, hf_config, source=path)
    if fmt == "safetensors":
        state, metadata = read_safetensors(path)
        if config is None and "bort_config" in metadata:
            config = embedded_config(metadata["bort_config"], "%s: metadata bort_config" % path)
    else:
        state = _read_torch_state(path)
    return ckpt.resolve_checkpoint(from_torch_state(state), path, config)


def embedded_config(data, source: str) -> BortConfig:
    """The BortConfig a checkpoint carries (a JSON text or an already parsed object); a
    ValueError naming `source` (file and field) when it is not a valid config."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as err:
            raise ValueError("%s is not valid JSON (%s)" % (source, err)) from None
    if not isinstance(data, dict):
        raise ValueError("%s must be a JSON object of config fields, found %s"
                         % (source, type(data).__name__))
    try:
        return BortConfig.from_dict(data, source=source)
    except (TypeError, ValueError) as err:
        text = str(err)
        raise ValueError(text if text.startswith(source) else "%s: %s" % (source, text)) from None


def _unreadable(path, what, err):
    cause = type(err).__name__ + (": %s" % err if str(err) else "")
    return ValueError("%s (%d bytes): not a readable %s; the file may be truncated or corrupt "
                      "(%s)" % (path, os.path.getsize(path), what, cause))


def read_safetensors(path: str):
    """(tensors, metadata) of a safetensors file; a ValueError naming it if it is unreadable."""
    require("safetensors", "torch", "reading %s" % path)
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    try:
        tensors = load_file(path)
        with safe_open(path, framework="numpy") as f:
            return tensors, f.metadata() or {}
    except SafetensorError as err:
        raise _unreadable(path, "safetensors file", err) from err


def _read_torch_state(path):
    torch = require("torch", "torch", "reading %s" % path)

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise _unreadable(path, "PyTorch state dict", err) from err
    if not isinstance(state, dict):
        raise ValueError("%s: expected a state dict (name -> tensor), found a %s"
                         % (path, type(state).__name__))
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError("%s: expected a state dict (name -> tensor), but %s is a %s"
                             % (path, name, type(value).__name__))
    return {k: v.numpy() for k, v in state.items()}


def write_checkpoint(path: str, config, params) -> None:
    """Write canonical params in the format `path` names, atomically (`bort_core.io`). The
    .pt and .safetensors bytes are built in memory and written by us, so a full disk is an
    OSError naming `path` (torch.save reports it as a bare RuntimeError)."""
    fmt = detect_format(path)
    if fmt == "params":
        ckpt.save_params(path, params, store_tied_decoder=True)
    elif fmt == "hf":
        from bort_core import hf

        hf.save_hf(path, config, params)
    elif fmt == "safetensors":
        from safetensors.numpy import save

        state = OrderedDict((k, np.ascontiguousarray(v)) for k, v in to_torch_state(params).items()
                            if not k.endswith(ckpt.TIED_DECODER))   # safetensors stores no aliases
        metadata = {"format": "pt", "bort_config": json.dumps(config.to_dict())}
        bio.write_bytes(path, save(state, metadata=metadata))
    else:
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()}
        state = OrderedDict((torch_name(k), t) for k, t in tensors.items())
        if ckpt.DECODER_BIAS in params:   # the tied weight is one tensor under two names
            state[torch_name(ckpt.TIED_DECODER)] = tensors[ckpt.WORD_EMBED]
        buf = io.BytesIO()
        torch.save(state, buf)
        bio.write_bytes(path, buf.getvalue())


# what each format needs beyond numpy: (module, extra)
_NEEDS = {"pt": ("torch", "torch"), "safetensors": ("safetensors", "torch"),
          "hf": ("safetensors", "hf")}


def one_dtype(params, source: str, dtype=None):
    """`params` with every tensor of one floating dtype: `dtype` (a cast, refused where it
    overflows), or the file's own when it has only one (mixed dtypes are refused, naming the
    tensors that differ, since a mixed checkpoint loads differently in each framework)."""
    if dtype is None:
        kinds = OrderedDict()
        for name, value in params.items():
            kinds.setdefault(np.dtype(value.dtype).name, []).append(name)
        if len(kinds) > 1:
            common = max(kinds, key=lambda k: len(kinds[k]))
            odd = ["%s (%s)" % (n, k) for k, names in kinds.items() if k != common for n in names]
            raise ValueError("%s: mixed dtypes: %s while the other %d tensors are %s; pass "
                             "--dtype to convert every tensor to one dtype"
                             % (source, ", ".join(odd[:5] + (["..."] if len(odd) > 5 else [])),
                                len(kinds[common]), common))
        return params
    out = OrderedDict()
    for name, value in params.items():
        cast = value.astype(dtype, copy=False)
        if not np.isfinite(cast).all() and np.isfinite(value).all():
            raise ValueError("%s: parameter %s does not fit in %s (max |value| %g)"
                             % (source, name, dtype, float(np.abs(value).max())))
        out[name] = cast
    return out


def register(sub):
    p = sub.add_parser("convert", help="convert a checkpoint between .params, .pt, "
                       ".safetensors and HuggingFace directories",
                       description=__doc__.split("\n\n")[0] + " Formats: .params (MXNet), "
                       ".pt / .safetensors (PyTorch), a directory (HuggingFace BertForMaskedLM).")
    p.add_argument("src", help="checkpoint to read")
    p.add_argument("dst", help="where to write; the format follows the extension")
    p.add_argument("--config", help="config name or JSON (needed when SRC cannot tell the "
                   "number of heads; the vocabulary size always comes from SRC)")
    p.add_argument("--dtype", choices=("float32", "float16", "float64"),
                   help="cast every tensor to this dtype (default: keep SRC's, which must be "
                   "one dtype throughout)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(run=run, writes=lambda args: [os.path.dirname(os.path.abspath(args.dst))])


def run(args):
    fmts = (detect_format(args.src), detect_format(args.dst))
    for fmt, verb, path in zip(fmts, ("reading", "writing"), (args.src, args.dst)):
        if fmt in _NEEDS:
            require(_NEEDS[fmt][0], _NEEDS[fmt][1], "%s %s" % (verb, path))
    if os.path.exists(args.dst) and not args.overwrite:
        raise ValueError("%s exists; pass --overwrite to replace it" % args.dst)
    bio.check_writable(args.dst, directory=fmts[1] == "hf")
    config, params = read_checkpoint(args.src, args.config)
    params = one_dtype(params, args.src, args.dtype)
    write_checkpoint(args.dst, config, params)
    print("%s -> %s: %s, %d tensors" % (args.src, args.dst, config.name, len(params)))
    return 0
