"""`bort export-onnx SRC OUT.onnx`: the backbone as an ONNX graph (for ONNX Runtime).

Inputs `input_ids` (batch, seq) and `valid_length` (batch,), int64; output `sequence`
(batch, seq, units), padded positions zero. Batch and sequence length are dynamic. The graph is
traced from bort_torch's model (fused QKV + SDPA), so PyTorch is needed here and imported only
when the command runs.
"""
from __future__ import annotations

import io
import os
import warnings

from bort_core import io as bio
from bort_core.backend import load_framework
from bort_core.convert import read_checkpoint
from bort_core.deps import require
from bort_core.model_params import is_classifier, split_classifier

INPUT_NAMES = ["input_ids", "valid_length"]
OUTPUT_NAMES = ["sequence"]


def export_onnx(model, path: str, opset: int = 17) -> None:
    """Trace a bort_torch BortModel (eval mode) into `path`, atomically: the graph is built in
    memory and written by `bort_core.io`, so a failed write is an OSError naming `path`."""
    import torch

    seq = min(16, model.config.max_length)
    ids = torch.zeros(2, seq, dtype=torch.long)
    valid = torch.tensor([seq, max(1, seq // 2)])
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter (no onnxscript needed) warns that it is the legacy one
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), (ids, valid), buf, dynamo=False, opset_version=opset,
                          input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                        "valid_length": {0: "batch"},
                                        "sequence": {0: "batch", 1: "seq"}})
    bio.write_bytes(path, buf.getvalue())


def check_with_onnxruntime(model, path: str, batch: int = 3, seq: int = 24, seed: int = 0) -> float:
    """Max abs difference between ONNX Runtime on `path` and the torch model on a padded batch."""
    import numpy as np
    import onnxruntime as ort
    import torch

    rng = np.random.RandomState(seed)
    seq = min(seq, model.config.max_length)
    ids = rng.randint(0, model.config.vocab_size, size=(batch, seq)).astype(np.int64)
    valid = np.linspace(seq, max(1, seq // 3), batch).astype(np.int64)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids, "valid_length": valid})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(ids), torch.from_numpy(valid)).numpy()
    return float(np.abs(got - want).max())


def register(sub):
    p = sub.add_parser("export-onnx", help="export the backbone as ONNX (needs PyTorch)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="checkpoint: .params, .pt, .safetensors or an HF directory")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--config", help="config name or JSON (when SRC cannot tell the heads)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument("--check", action="store_true",
                   help="run ONNX Runtime on a padded batch and print the max abs difference "
                   "from PyTorch (needs onnxruntime)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(run=run, writes=lambda args: [os.path.dirname(os.path.abspath(args.out))])


def run(args):
    if not args.out.endswith(".onnx"):
        raise ValueError("%s: the output must be a .onnx file" % args.out)
    if os.path.exists(args.out) and not args.overwrite:
        raise ValueError("%s exists; pass --overwrite to replace it" % args.out)
    bio.check_writable(args.out)
    for module, extra in (("torch", "torch"), ("onnx", "onnx")):
        require(module, extra, "bort export-onnx")
    tm = load_framework("torch", "model")
    if args.check:
        require("onnxruntime", "onnx", "--check")
    config, params = read_checkpoint(args.src, args.config)
    if is_classifier(params):      # a fine-tuned classifier: its backbone, head left out
        params, _ = split_classifier(params, args.src)
    params = {k: v for k, v in params.items() if not k.startswith("decoder.")}
    model = tm.BortModel(config.without_dropout(), use_decoder=False)
    tm.set_params(model, params, args.src)
    export_onnx(model.eval(), args.out, args.opset)
    print("%s -> %s: %s backbone, opset %d, dynamic batch and length"
          % (args.src, args.out, config.name, args.opset))
    if args.check:
        print("onnxruntime vs torch: max abs difference %.3e" % check_with_onnxruntime(model, args.out))
    return 0
