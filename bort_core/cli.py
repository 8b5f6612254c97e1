"""`bort <command> ...`: one CLI for both frameworks.

Each command lives in a module of `bort_core.commands` exposing `register(subparsers)`, imported
here by name (COMMAND_MODULES); a command that needs a framework picks `bort_<framework>` at run
time through `bort_core.backend.load_framework`, so `bort --help` works with neither framework
installed. The arguments follow one convention (`bort_core.commands.convention`).

A command declares the folders it writes with `set_defaults(writes=lambda args: [DIR, ...])`:
`main` first removes the temp files an interrupted run left there (`bort_core.io`). Every
failure a user can cause (bad input, a missing optional package, an unwritable or full output)
ends as one line, `bort <command>: error: <file>: <reason>`, and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from bort_core import __version__
from bort_core import io as bio
from bort_core.deps import MissingDependency

# the modules whose register(subparsers) adds the commands, in the order `bort --help` lists them
COMMAND_MODULES = (
    "bort_core.commands.config",
    "bort_core.commands.data",              # create-pretraining-data, data check
    "bort_core.commands.convert",
    "bort_core.commands.reproduce",
    "bort_core.commands.export_onnx",
    "bort_core.commands.pretrain",
    "bort_core.commands.extract",
    "bort_core.commands.finetune",          # finetune, agora
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bort", description="Bort in MXNet/GluonNLP and PyTorch: models, checkpoints, "
        "pretraining, fine-tuning, extraction and parity.")
    parser.add_argument("--version", action="version", version="bort " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def _message(err: BaseException) -> str:
    """One line for a failure: an OSError names its file(s) and the system's reason; the
    lines of a multi-line message (a list of problems) are joined with "; "."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        files = [str(f) for f in (err.filename, err.filename2) if f is not None]
        text = "%s: %s" % (" -> ".join(files), err.strerror)
    elif isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    else:
        text = str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines).replace(":; ", ": ")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for directory in getattr(args, "writes", lambda a: [])(args):
            for path in bio.remove_orphans(directory):
                print("bort %s: removed %s, left by an interrupted run" % (args.command, path),
                      file=sys.stderr)
        return args.run(args) or 0
    except (ValueError, OSError, KeyError, MissingDependency) as err:
        print("bort %s: error: %s" % (args.command, _message(err)), file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m bort_core.cli`: run the importable module's main, so that the exceptions the
    # commands raise (MissingDependency) are the classes it catches
    from bort_core.cli import main as bort_main

    sys.exit(bort_main())
