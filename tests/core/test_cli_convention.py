"""Every `bort` and `python -m parity` subcommand follows the CLI convention
(bort_core/commands/convention.py), and docs/cli.md is what scripts/make_cli_docs.py generates."""
import argparse
import importlib.util
import pathlib

import pytest

from bort_core.cli import build_parser
from bort_core.commands.convention import DeprecatedAlias
from parity.__main__ import build_parser as build_parity_parser

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("make_cli_docs", ROOT / "scripts" / "make_cli_docs.py")
make_cli_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_cli_docs)

BORT = list(make_cli_docs.walk(build_parser(), "bort"))
PARITY = list(make_cli_docs.walk(build_parity_parser(), "python -m parity"))
LONG_JOBS = ("bort pretrain", "bort extract", "bort finetune", "bort agora", "bort reproduce")
# these turn one file into another, `bort convert SRC DST`, like cp: the output is a positional
FILE_TO_FILE = {"bort convert": "dst", "bort export-onnx": "out"}


def current(parser):
    """option string -> action, the deprecated spellings left out."""
    return {s: a for a in parser._actions if not isinstance(a, DeprecatedAlias)
            for s in a.option_strings}


def aliases(commands):
    return [(prog, parser, a) for prog, parser, _ in commands for a in parser._actions
            if isinstance(a, DeprecatedAlias)]


def names(commands):
    return [prog for prog, _, _ in commands]


def test_the_walk_sees_every_command():
    assert {"bort pretrain", "bort data check", "bort reproduce", "bort agora"} <= set(names(BORT))
    assert {"python -m parity throughput", "python -m parity grads"} <= set(names(PARITY))


@pytest.mark.parametrize("prog, parser, help", BORT, ids=names(BORT))
def test_what_a_command_writes_goes_to_output_dir(prog, parser, help):
    options = current(parser)
    assert not {"--out", "--ckpt-dir", "--output", "--out-dir"} & set(options), \
        "%s: name the output --output-dir" % prog
    writes = parser.get_default("writes") is not None
    if prog in FILE_TO_FILE:
        assert FILE_TO_FILE[prog] in [a.dest for a in parser._actions if not a.option_strings]
    elif writes or prog in LONG_JOBS:
        assert "--output-dir" in options, "%s writes but takes no --output-dir" % prog


@pytest.mark.parametrize("prog", LONG_JOBS)
def test_a_long_job_can_start_over(prog):
    parser = dict((p, parser) for p, parser, _ in BORT)[prog]
    assert "--overwrite" in current(parser)


@pytest.mark.parametrize("prog, parser, help", BORT, ids=names(BORT))
def test_data_inputs_are_data_globs(prog, parser, help):
    options = current(parser)
    assert not {"--input", "--inputs", "--data-files"} & set(options), "%s: use --data" % prog
    for flag in ("--data", "--eval-data"):
        if flag in options:
            assert options[flag].nargs == "+" and options[flag].metavar == "GLOB", (prog, flag)
            ns = parser.parse_args(required_argv(parser) + [flag, "a*.npz,b.npz", "c.npz"])
            assert getattr(ns, options[flag].dest) == ["a*.npz", "b.npz", "c.npz"]


@pytest.mark.parametrize("prog, parser, help", BORT, ids=names(BORT))
def test_adam_epsilon_is_adam_epsilon(prog, parser, help):
    options = current(parser)
    assert "--eps" not in options, prog
    for flag, action in options.items():
        if "epsilon" in flag or "epsilon" in (action.help or "").lower():
            about_adam = "adam" in (action.help or "").lower()
            assert (flag == "--adam-epsilon") == about_adam, "%s %s: %s" % (prog, flag, action.help)
    if "--epsilon" in options:      # only extract's FPTAS interval keeps the name
        assert prog == "bort extract"


@pytest.mark.parametrize("prog, parser, help", PARITY, ids=names(PARITY))
def test_parity_sizes_are_batch_size_and_seq_len(prog, parser, help):
    options = current(parser)
    assert not {"--batch", "--seq", "--seq-length", "--max-seq-len"} & set(options), prog
    for flag, action in options.items():
        if action.dest in ("batch", "seq"):
            raise AssertionError("%s %s: dest %s" % (prog, flag, action.dest))


def required_argv(parser):
    """The least argv the parser accepts: a value for every required argument."""
    argv = []
    for action in parser._actions:
        if action.required and not isinstance(action, argparse._SubParsersAction):
            value = str(action.choices[0]) if action.choices else "1"
            argv += ([action.option_strings[0]] if action.option_strings else []) + [value]
    return argv


def sample(action):
    """Arguments that `action` accepts."""
    if action.nargs == 0:
        return []
    value = str(list(action.choices)[0]) if action.choices else "7"
    return [value, value] if action.nargs == "+" else [value]


@pytest.mark.parametrize("prog, parser, alias", aliases(BORT + PARITY),
                         ids=["%s %s" % (p, a.option_strings[0]) for p, _, a in aliases(BORT + PARITY)])
def test_a_deprecated_spelling_warns_and_sets_the_new_dest(prog, parser, alias, capsys):
    old, target = alias.option_strings[0], alias.target
    base = required_argv(parser)
    got = parser.parse_args(base + [old] + sample(alias))
    err = capsys.readouterr().err
    assert "%s: %s is deprecated" % (prog, old) in err
    if alias.value is DeprecatedAlias.NOTHING:
        assert target.option_strings[0] in err
        want = parser.parse_args(base + [target.option_strings[0]] + sample(target))
        assert vars(got) == vars(want)
        assert capsys.readouterr().err == ""
    else:
        assert getattr(got, target.dest) == alias.value


def test_every_old_spelling_the_convention_replaced_is_an_alias():
    have = {(prog, a.option_strings[0], a.target.option_strings[0]) for prog, _, a in
            aliases(BORT + PARITY)}
    assert {("bort pretrain", "--ckpt-dir", "--output-dir"), ("bort pretrain", "--eps", "--adam-epsilon"),
            ("bort extract", "--out", "--output-dir"), ("bort extract", "--resume", "--overwrite"),
            ("bort finetune", "--epsilon", "--adam-epsilon"),
            ("bort agora", "--epsilon", "--adam-epsilon"),
            ("bort create-pretraining-data", "--input", "--data"),
            ("bort reproduce", "--out", "--output-dir"),
            ("python -m parity throughput", "--batch", "--batch-size"),
            ("python -m parity throughput", "--seq", "--seq-len")} <= have


def test_pretrain_start_step_latest_warns_and_resumes_by_default(tmp_path, capsys):
    from bort_core.commands.pretrain import start_step

    parser = dict((p, parser) for p, parser, _ in BORT)["bort pretrain"]
    args = parser.parse_args(["--framework", "torch", "--output-dir", str(tmp_path),
                              "--start-step", "latest"])
    assert start_step(args) is None            # nothing to resume in an empty folder
    assert "--start-step latest is deprecated" in capsys.readouterr().err
    (tmp_path / "0000004.json").write_text("{}")
    for suffix in ("params", "states"):
        (tmp_path / ("0000004." + suffix)).write_text("")
    args = parser.parse_args(["--framework", "torch", "--output-dir", str(tmp_path)])
    assert start_step(args) == "latest"
    args = parser.parse_args(["--framework", "torch", "--output-dir", str(tmp_path), "--overwrite"])
    assert start_step(args) is None


def test_docs_cli_md_is_generated_from_the_parsers():
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == make_cli_docs.render(), "docs/cli.md is stale: python scripts/make_cli_docs.py"
