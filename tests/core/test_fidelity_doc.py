"""docs/fidelity.md's table matches the CLI: every option its last column names exists on the
command it names (the parser bort_core.cli builds), with a valid value where it has choices,
and the table covers items 1-9 of issue 19 (other rows are numbered "—")."""
import argparse
import os
import re

import pytest

from bort_core.cli import build_parser

DOC = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "docs", "fidelity.md")


def _table():
    """The rows of the table under '## The table': lists of cells (escaped pipes kept)."""
    text = open(DOC, encoding="utf-8").read().split("## The table", 1)[1]
    rows = []
    for line in text.splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells[0] not in ("#", "---"):
            rows.append(cells)
    return rows


def _commands():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _named(cell):
    """(command, [(option, value or None)]) for each `bort <command> --option [value]` span."""
    out = []
    for command, args in re.findall(r"`bort ([\w-]+) ([^`]+)`", cell):
        tokens = args.split()
        pairs = [(t, tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
                  else None) for i, t in enumerate(tokens) if t.startswith("--")]
        out.append((command, pairs))
    return out


def test_the_table_covers_every_item_of_the_issue():
    rows = _table()
    assert all(len(r) == 6 for r in rows)
    assert {r[0] for r in rows} == {str(i) for i in range(1, 10)} | {"—"}


def test_every_option_the_table_names_exists_in_the_cli():
    commands, checked = _commands(), 0
    for row in _table():
        named = _named(row[-1])
        if not named:
            assert row[-1].startswith("—"), "row %s names no option: %r" % (row[0], row[-1])
            continue
        for command, pairs in named:
            assert command in commands, "row %s: no command %r" % (row[0], command)
            options = commands[command]._option_string_actions
            assert pairs, "row %s: `bort %s` without an option" % (row[0], command)
            for option, value in pairs:
                assert option in options, "row %s: bort %s has no %s" % (row[0], command, option)
                choices = options[option].choices
                if value is not None and choices is not None:
                    assert value in choices, "row %s: %s %s" % (row[0], option, value)
                checked += 1
    assert checked >= 15


@pytest.mark.parametrize("command", ["pretrain", "extract", "finetune", "agora"])
def test_every_recipe_command_takes_the_switch(command):
    action = _commands()[command]._option_string_actions["--recipe"]
    assert tuple(action.choices) == ("default", "release")
