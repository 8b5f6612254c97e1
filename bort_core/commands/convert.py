"""`bort convert SRC DST`: move a checkpoint between every format both frameworks use
(`bort_core.convert`)."""
from __future__ import annotations

import os

from bort_core import io as bio
from bort_core.convert import detect_format, one_dtype, read_checkpoint, write_checkpoint
from bort_core.deps import require

# what each format needs beyond numpy: (module, extra)
_NEEDS = {"pt": ("torch", "torch"), "safetensors": ("safetensors", "torch"),
          "hf": ("safetensors", "hf")}


def register(sub):
    p = sub.add_parser("convert", help="convert a checkpoint between .params, .pt, "
                       ".safetensors and HuggingFace directories",
                       description="Move a checkpoint between every format both frameworks "
                       "use. Formats: .params (MXNet), .pt / .safetensors (PyTorch), a directory "
                       "(HuggingFace BertForMaskedLM).")
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
