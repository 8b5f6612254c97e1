"""Write docs/cli.md from the `bort` and `python -m parity` parsers (tests/core/test_cli_convention.py
checks that the committed page is what this prints).

    python scripts/make_cli_docs.py            # rewrite docs/cli.md
    python scripts/make_cli_docs.py --check    # exit 1 when docs/cli.md is stale
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "cli.md")

# the guide page of each `bort` command (docs/)
GUIDES = {"config": "models.md", "create-pretraining-data": "data.md", "data": "data.md",
          "convert": "models.md", "reproduce": "reproduce.md", "export-onnx": "models.md",
          "pretrain": "pretraining.md", "extract": "extraction.md", "finetune": "finetuning.md",
          "agora": "finetuning.md"}

INTRO = """# Command line: `bort` and `python -m parity`

Generated from the parsers by `python scripts/make_cli_docs.py`; `bort --help`, `bort COMMAND
--help` and `python -m parity COMMAND --help` give the same text. The guides explain what each
command does and show runs: [docs/README.md](README.md). Every failure is one line
`bort COMMAND: error: ...` with exit status 2 ([input-files.md](input-files.md)).

Every command follows one convention (`bort_core/commands/convention.py`): what it writes goes to
`--output-dir` (a command turning one file into another takes `SRC DST`); data inputs are
`--data GLOB [GLOB ...]` (a comma-separated value is split); Adam's epsilon is `--adam-epsilon`;
a long job (`pretrain`, `extract`, `reproduce`) resumes the compatible run its `--output-dir`
holds, refuses an incompatible one naming the settings that differ, and starts over with
`--overwrite` (`finetune` and `agora` do not resume: they refuse a non-empty `--output-dir`
without `--overwrite`); sizes are `--batch-size` and `--seq-len`. An old spelling still works for
one release, with a deprecation line on stderr: the rows marked "deprecated" below.
"""


def subcommands(parser):
    """(name, parser, help) of each subcommand of `parser`, in the order --help lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name, "")


def walk(parser, prog):
    """(prog, parser, help) of every command below `parser`, depth first."""
    for name, sub, help in subcommands(parser):
        yield "%s %s" % (prog, name), sub, help
        yield from walk(sub, "%s %s" % (prog, name))


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def argument_rows(parser):
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            name = ", ".join("`%s`" % s for s in action.option_strings)
            if action.nargs != 0:
                name += " `%s`" % formatter._format_args(action, action.dest.upper())
        else:
            name = "`%s`" % action.dest
        if action.required and action.option_strings:
            name += " (required)"
        if action.help:
            meaning = formatter._expand_help(action)
        elif not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            meaning = "default %s" % action.default
        else:
            meaning = ""
        rows.append("| %s | %s |" % (name, cell(meaning)))
    return rows


def section(prog, parser, help):
    out = ["### `%s`" % prog, "", cell(parser.description or help or "")]
    rows = argument_rows(parser)
    if rows:
        out += ["", "| argument | meaning |", "|---|---|"] + rows
    return out + [""]


def anchor(prog: str) -> str:
    return "#" + prog.replace(" ", "-")


def render() -> str:
    sys.path.insert(0, ROOT)
    from bort_core.cli import build_parser
    from parity.__main__ import build_parser as build_parity_parser

    bort = build_parser()
    lines = [INTRO, "## `bort`", "", "`bort --help` lists the commands; `bort COMMAND --help` gives "
             "each one's flags, as below. `--version` prints the version.", "",
             "| command | what | guide |", "|---|---|---|"]
    for name, _, help in subcommands(bort):
        lines.append("| [`bort %s`](%s) | %s | [%s](%s) |" % (
            name, anchor("bort " + name), cell(help), GUIDES[name], GUIDES[name]))
    lines.append("")
    for prog, parser, help in walk(bort, "bort"):
        lines += section(prog, parser, help)
    lines += ["## `python -m parity`", "", "The parity suite's command line "
              "([parity.md](parity.md)); `python -m parity COMMAND --help`.", ""]
    for prog, parser, help in walk(build_parity_parser(), "python -m parity"):
        lines += section(prog, parser, help)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/cli.md is stale")
    args = parser.parse_args(argv)
    text = render()
    with open(PAGE, encoding="utf-8") as f:
        current = f.read()
    if args.check:
        print("docs/cli.md is %s" % ("up to date" if current == text else
                                      "stale: run python scripts/make_cli_docs.py"))
        return 0 if current == text else 1
    with open(PAGE, "w", encoding="utf-8") as f:
        f.write(text)
    print("wrote %s" % PAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
