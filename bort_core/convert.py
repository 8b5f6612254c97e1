"""Checkpoints in every format both frameworks use (`bort convert SRC DST` writes them).

Formats, picked by the path:
  *.params          MXNet/GluonNLP NDArray file, canonical names (the 2020 format)
  *.pt              PyTorch state dict of bort_torch.BortModel (loaded with weights_only)
  *.safetensors     the same state dict as safetensors (no PyTorch needed), config in metadata
  DIR/ (or no ext)  HuggingFace BertForMaskedLM directory: config.json + model.safetensors

Everything passes through the canonical dict (numpy arrays), so conversions are bit-exact.
The PyTorch state-dict names are the canonical ones except LayerNorm leaves (`bort_core.names`).
"""
from __future__ import annotations

import io
import json
import os
import pickle
from collections import OrderedDict

import numpy as np

from bort_core import checkpoint as ckpt
from bort_core import hf
from bort_core import io as bio
from bort_core.configs import embedded_config, get_config
from bort_core.deps import require
from bort_core.model_params import load_checkpoint, resolve_checkpoint, validate_params
from bort_core.names import DECODER_BIAS, TIED_DECODER, WORD_EMBED, canonical_name, torch_name


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
        return load_checkpoint(path, config)
    if fmt == "hf":
        hf_config, params = hf.load_hf(path)
        if config is not None:
            hf_config = get_config(config, vocab_size=hf_config.vocab_size)
        return hf_config, validate_params(params, hf_config, source=path)
    if fmt == "safetensors":
        state, metadata = bio.read_safetensors(path)
        if config is None and "bort_config" in metadata:
            config = embedded_config(metadata["bort_config"], "%s: metadata bort_config" % path)
    else:
        state = _read_torch_state(path)
    return resolve_checkpoint(from_torch_state(state), path, config)


def _read_torch_state(path):
    torch = require("torch", "torch", "reading %s" % path)

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise bio.unreadable(path, "PyTorch state dict", err) from err
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
        hf.save_hf(path, config, params)
    elif fmt == "safetensors":
        from safetensors.numpy import save

        state = OrderedDict((k, np.ascontiguousarray(v)) for k, v in to_torch_state(params).items()
                            if not k.endswith(TIED_DECODER))   # safetensors stores no aliases
        metadata = {"format": "pt", "bort_config": json.dumps(config.to_dict())}
        bio.write_bytes(path, save(state, metadata=metadata))
    else:
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()}
        state = OrderedDict((torch_name(k), t) for k, t in tensors.items())
        if DECODER_BIAS in params:   # the tied weight is one tensor under two names
            state[torch_name(TIED_DECODER)] = tensors[WORD_EMBED]
        buf = io.BytesIO()
        torch.save(state, buf)
        bio.write_bytes(path, buf.getvalue())


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
