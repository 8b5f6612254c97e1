"""The CLI convention every `bort` command (and `python -m parity`) follows, as argument builders.

- what a command writes goes to `--output-dir DIR` (a command turning one file into another
  takes `SRC DST`);
- data inputs are `--data GLOB [GLOB ...]` (a comma-separated value is split, the 2020 syntax);
- Adam's epsilon is `--adam-epsilon`;
- a long job resumes the compatible run its `--output-dir` holds, refuses an incompatible one
  naming the settings that differ, and starts over with `--overwrite`;
- sizes are `--batch-size` and `--seq-len`.

An old spelling stays one release as a `deprecated` alias: it prints a line on stderr naming the
new flag, then does what the new flag does. tests/core/test_cli_convention.py checks all of it.
"""
from __future__ import annotations

import argparse
import sys


def warn_deprecated(prog: str, old: str, use: str) -> None:
    """The deprecation line: `prog: OLD is deprecated and goes in the next release; use USE`."""
    print("%s: %s is deprecated and goes in the next release; use %s" % (prog, old, use),
          file=sys.stderr)


class DeprecatedAlias(argparse.Action):
    """An old option string of `target` (an action of the same parser): warns, then acts as
    `target` does, or, given `value`, stores `value` in `target.dest` and takes no argument."""

    NOTHING = object()

    def __init__(self, option_strings, dest, target, value=NOTHING, help=None):
        self.target, self.value = target, value
        takes_value = value is self.NOTHING
        super().__init__(option_strings, target.dest,
                         nargs=target.nargs if takes_value else 0,
                         type=target.type if takes_value else None,
                         choices=target.choices if takes_value else None,
                         metavar=target.metavar, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        warn_deprecated(parser.prog, option_string, self.target.option_strings[0])
        if self.value is self.NOTHING:
            self.target(parser, namespace, values, option_string)
        else:
            setattr(namespace, self.target.dest, self.value)


def deprecated(parser, old: str, target: argparse.Action, value=DeprecatedAlias.NOTHING,
               meaning: str = ""):
    """Accept `old` for one release as a spelling of `target` (what add_argument returned)."""
    new = target.option_strings[0]
    return parser.add_argument(old, action=DeprecatedAlias, target=target, value=value,
                               help="deprecated: %s" % (meaning or "use " + new))


class GlobList(argparse.Action):
    """`--data GLOB [GLOB ...]`: the globs as a list, comma-separated values split."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [g for v in values for g in v.split(",") if g])


def add_data(parser, flag: str = "--data", help: str = "", **kw) -> argparse.Action:
    """A data input: one or more globs (or comma-separated lists of them)."""
    return parser.add_argument(flag, nargs="+", action=GlobList, metavar="GLOB", help=help, **kw)


def add_output_dir(parser, help: str, **kw) -> argparse.Action:
    return parser.add_argument("--output-dir", metavar="DIR", help=help, **kw)


def add_overwrite(parser, help: str = "start over: discard the run --output-dir holds instead "
                  "of resuming it") -> argparse.Action:
    return parser.add_argument("--overwrite", action="store_true", help=help)


def add_adam_epsilon(parser, default: float) -> argparse.Action:
    return parser.add_argument("--adam-epsilon", type=float, default=default, metavar="EPS",
                               help="BERTAdam epsilon (default %(default)s)")
