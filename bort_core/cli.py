"""`bort <command> ...`: one CLI for both frameworks.

Each command lives in its own module exposing `register(subparsers)`; the module is imported
here by name, and a command that needs a framework picks `bort_<framework>` at run time through
`load_framework`, so `bort --help` works with neither framework installed.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module that registers it (kept in the order `bort --help` lists them)
COMMANDS = {
    "config": "bort_core.commands.config",
    "create-pretraining-data": "bort_core.commands.data",
    "data": "bort_core.commands.data",
    "convert": "bort_core.convert",
    "reproduce": "bort_core.reproduce",
    "export-onnx": "bort_core.commands.export_onnx",
    "pretrain": "bort_core.commands.pretrain",
    "extract": "bort_core.commands.extract",
    "finetune": "bort_core.commands.finetune",
    "agora": "bort_core.commands.finetune",
}

FRAMEWORKS = ("gluon", "torch")


def load_framework(name: str, module: str = ""):
    """Import `bort_<name>[.module]`, with an install hint when the framework is missing."""
    if name not in FRAMEWORKS:
        raise SystemExit("unknown framework %r; choose one of: %s" % (name, ", ".join(FRAMEWORKS)))
    target = "bort_%s%s" % (name, "." + module if module else "")
    try:
        return importlib.import_module(target)
    except ImportError as err:
        extra = {"gluon": "gluon", "torch": "torch"}[name]
        raise SystemExit("--framework %s needs %s (%s); install it with: pip install -e '.[%s]'"
                         % (name, "MXNet + GluonNLP" if name == "gluon" else "PyTorch", err,
                            extra)) from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bort", description="Bort in MXNet/GluonNLP and PyTorch: models, checkpoints, "
        "pretraining, fine-tuning, extraction and parity.")
    from bort_core import __version__
    parser.add_argument("--version", action="version", version="bort " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print("bort %s: error: %s" % (args.command, message), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
