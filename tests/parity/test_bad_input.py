"""Bad input, table-driven: every command x every class of bad input, through the real CLI.

Each row of `CASES` builds one bad input under a temporary directory and names the command line
that must refuse it. Every row is held to the same contract:
- the command exits with status 2;
- stderr is exactly one line, `bort <command>: error: ...`, that names the offending file (and
  the field or line where there is one), with no traceback;
- nothing is left half-written: the temporary directory holds, afterwards, only what it held
  before (plus what the row declares it may keep);
- a hostile file runs no code: its payload would create `PWNED` in the directory, which must not
  exist afterwards.
A new command, or a new class of bad input, gets the same treatment by adding a row.

Classes (`kind`): missing, empty, truncated, wrong-type, wrong-shape, non-finite, hostile,
unwritable, stale.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Callable, List, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass
class Bad:
    command: str                  # the bort subcommand
    kind: str                     # the class of bad input (module docstring)
    what: str                     # short id of the case
    # tmp_path -> (argv after `bort`, text the error line must contain: the file, field or line)
    build: Callable[[str], Tuple[List[str], List[str]]]
    keeps: Tuple[str, ...] = ()   # paths (relative to tmp_path) the run may create and keep

    @property
    def id(self):
        return "%s-%s-%s" % (self.command, self.kind, self.what)


CASES: List[Bad] = []


def case(command: str, kind: str, what: str, keeps: Tuple[str, ...] = ()):
    """Register the decorated builder as a row of the table."""
    def register(build):
        CASES.append(Bad(command, kind, what, build, keeps))
        return build
    return register


def _snapshot(root: str) -> set:
    out = set()
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(base, name), root))
    return out


def run_bort(argv: List[str], cwd: str, **popen) -> subprocess.CompletedProcess:
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=ROOT, PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "bort_core.cli"] + argv, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, **popen)


# ------------------------------------------------------------------------------------ the table
# (rows live in one place: add yours below, grouped by command)


# ---- convert, export-onnx, finetune, extract, create-pretraining-data: outputs and metadata
# An unwritable output, as root too: /sys refuses new entries (EACCES/EPERM) whatever the
# mode bits, and a regular file where a folder is expected fails everywhere. A full disk
# needs a resource limit, so it lives in test_full_disk_is_one_line below.
UNWRITABLE = "/sys/bort-bad-input-test"


def _tiny_params(root: str, name: str = "src.params", dtypes=None) -> str:
    """A bort_tiny checkpoint (tied decoder stored, as convert writes it); `dtypes` maps
    parameter names to another dtype."""
    from bort_core import checkpoint as ckpt
    from bort_core.configs import get_config
    from parity.io import random_params

    params = random_params(get_config("bort_tiny"), seed=1)
    for key, dtype in (dtypes or {}).items():
        params[key] = params[key].astype(dtype)
    path = os.path.join(root, name)
    ckpt.save_params(path, params, store_tied_decoder=True)
    return path


def _a_file(root: str, name: str = "a-file") -> str:
    path = os.path.join(root, name)
    with open(path, "w") as f:
        f.write("not a folder\n")
    return path


def _safetensors_with_config(root: str, text: str) -> str:
    """A genuine bort_tiny safetensors file whose `bort_config` metadata is `text`."""
    from safetensors.numpy import load_file, save_file

    good = os.path.join(root, "good.safetensors")
    run_ok(["convert", _tiny_params(root), good, "--config", "bort_tiny"], root)
    path = os.path.join(root, "bad.safetensors")
    save_file(load_file(good), path, metadata={"format": "pt", "bort_config": text})
    return path


def run_ok(argv: List[str], cwd: str) -> None:
    done = run_bort(argv, cwd)
    assert done.returncode == 0, done.stderr


for _command, _out in (("convert", "out.params"), ("export-onnx", "out.onnx")):
    @case(_command, "unwritable", "read-only-filesystem")
    def _(root, command=_command, out=_out):
        dst = "%s-%s" % (UNWRITABLE, out)
        return [command, _tiny_params(root), dst, "--config", "bort_tiny"], [dst, "denied"]

    @case(_command, "unwritable", "destination-is-a-folder")
    def _(root, command=_command, out=_out):
        dst = os.path.join(root, out)
        os.mkdir(dst)
        return [command, _tiny_params(root), dst, "--config", "bort_tiny", "--overwrite"], \
            [dst, "is a directory"]


@case("convert", "unwritable", "hf-dir-under-read-only-filesystem")
def _(root):
    return ["convert", _tiny_params(root), UNWRITABLE, "--config", "bort_tiny"], [UNWRITABLE]


@case("convert", "unwritable", "parent-is-a-file")
def _(root):
    dst = os.path.join(_a_file(root), "out.pt")
    return ["convert", _tiny_params(root), dst, "--config", "bort_tiny"], [dst, "Not a directory"]


@case("convert", "unwritable", "hf-parent-is-a-file")
def _(root):
    parent = _a_file(root)
    return ["convert", _tiny_params(root), os.path.join(parent, "hf"), "--config", "bort_tiny"], \
        [parent, "not a directory"]


@case("convert", "unwritable", "destination-is-a-device")
def _(root):
    return ["convert", _tiny_params(root), "/dev/null", "--config", "bort_tiny", "--overwrite"], \
        ["/dev/null", "not a directory"]


@case("convert", "wrong-type", "safetensors-config-bad-json")
def _(root):
    path = _safetensors_with_config(root, '{"num_layers": 2,')
    return ["convert", path, os.path.join(root, "out.params")], \
        [path, "metadata bort_config", "not valid JSON"]


@case("convert", "wrong-type", "safetensors-config-not-an-object")
def _(root):
    path = _safetensors_with_config(root, "[2, 4, 128, 96]")
    return ["convert", path, os.path.join(root, "out.params")], \
        [path, "metadata bort_config", "JSON object", "list"]


@case("convert", "wrong-type", "safetensors-config-bad-value")
def _(root):
    path = _safetensors_with_config(
        root, '{"num_layers": 2, "num_heads": 5, "units": 128, "hidden_size": 96}')
    return ["convert", path, os.path.join(root, "out.params")], \
        [path, "metadata bort_config", "divisible by num_heads"]


@case("convert", "wrong-shape", "hf-config-contradicts-bort-config")
def _(root):
    import json

    hf = os.path.join(root, "hf")
    run_ok(["convert", _tiny_params(root), hf, "--config", "bort_tiny"], root)
    path = os.path.join(hf, "config.json")
    with open(path) as f:
        data = json.load(f)
    data["num_attention_heads"] = 8     # bort_config says 4
    with open(path, "w") as f:
        json.dump(data, f)
    return ["convert", hf, os.path.join(root, "out.params")], \
        [path, "num_attention_heads is 8", "gives 4"]


@case("convert", "wrong-type", "mixed-dtypes")
def _(root):
    name = "encoder.transformer_cells.1.proj.weight"
    src = _tiny_params(root, dtypes={name: "float16"})
    return ["convert", src, os.path.join(root, "out.pt"), "--config", "bort_tiny"], \
        [src, name, "float16", "--dtype"]


def _not_installed(root: str, module: str) -> None:
    """Make `import module` fail in the bort run as it does where the package is not installed:
    `python -m` puts the working directory first on sys.path, so this module is all it finds."""
    with open(os.path.join(root, module + ".py"), "w") as f:
        f.write("raise ModuleNotFoundError(\"No module named '%s'\", name='%s')\n" % (module, module))


def _its_bytecode(module: str) -> Tuple[str, ...]:
    return ("__pycache__", "__pycache__/%s.%s.pyc" % (module, sys.implementation.cache_tag))


@case("convert", "missing", "torch-not-installed", keeps=_its_bytecode("torch"))
def _(root):
    _not_installed(root, "torch")
    dst = os.path.join(root, "out.pt")
    return ["convert", _tiny_params(root), dst, "--config", "bort_tiny"], \
        [dst, "needs torch", "pip install -e '.[torch]'"]


@case("convert", "missing", "torch-not-installed-reading", keeps=_its_bytecode("torch"))
def _(root):
    src = os.path.join(root, "src.pt")
    run_ok(["convert", _tiny_params(root), src, "--config", "bort_tiny"], root)
    _not_installed(root, "torch")
    return ["convert", src, os.path.join(root, "out.params"), "--config", "bort_tiny"], \
        [src, "needs torch", "pip install -e '.[torch]'"]


@case("export-onnx", "missing", "torch-not-installed", keeps=_its_bytecode("torch"))
def _(root):
    _not_installed(root, "torch")
    return ["export-onnx", _tiny_params(root), os.path.join(root, "out.onnx"), "--config",
            "bort_tiny"], ["export-onnx needs torch", "pip install -e '.[torch]'"]


@case("export-onnx", "missing", "onnx-not-installed", keeps=_its_bytecode("onnx"))
def _(root):
    _not_installed(root, "onnx")
    return ["export-onnx", _tiny_params(root), os.path.join(root, "out.onnx"), "--config",
            "bort_tiny"], ["export-onnx needs onnx", "pip install -e '.[onnx]'"]


@case("finetune", "unwritable", "read-only-filesystem")
def _(root):
    return ["finetune", "--framework", "torch", "--task", "demo-single", "--config", "bort_tiny",
            "--output-dir", UNWRITABLE], [UNWRITABLE]


@case("finetune", "unwritable", "output-dir-is-a-file")
def _(root):
    path = _a_file(root)
    return ["finetune", "--framework", "torch", "--task", "demo-single", "--config", "bort_tiny",
            "--output-dir", path, "--overwrite"], [path]


@case("extract", "unwritable", "read-only-filesystem")
def _(root):
    return ["extract", "--search-space", "tiny", "--dry-run", "--output-dir", UNWRITABLE], [UNWRITABLE]


@case("extract", "unwritable", "out-is-a-file")
def _(root):
    path = _a_file(root)
    return ["extract", "--search-space", "tiny", "--dry-run", "--output-dir", path], \
        [path, "not a directory"]


@case("create-pretraining-data", "unwritable", "read-only-filesystem")
def _(root):
    return ["create-pretraining-data", "--output-dir", UNWRITABLE], [UNWRITABLE]


@case("create-pretraining-data", "unwritable", "output-dir-is-a-file")
def _(root):
    path = _a_file(root)
    return ["create-pretraining-data", "--output-dir", path], [path]


# ---- pretraining shards (pretrain in both frameworks, extract) and create-pretraining-data input
FRAMEWORKS = ("gluon", "torch")


class _Payload:
    """Unpickled, it would create PWNED in the working directory."""

    def __reduce__(self):
        return (open, ("PWNED", "w"))


def _release_shard(root: str, name: str = "part-000.npz") -> str:
    """A genuine shard in the 2020 layout (object arrays, as the release wrote them)."""
    from bort_core.configs import DEMO_VOCAB_SIZE
    from bort_core.data import shards as sh

    return sh.write_synthetic_shard(os.path.join(root, name), 24, DEMO_VOCAB_SIZE, layout="2020")


def _edited_shard(root: str, edit) -> str:
    """A release-layout shard whose fields `edit(fields)` changed, saved as `bad.npz`."""
    import numpy as np

    with np.load(_release_shard(root, "src.npz"), allow_pickle=True) as data:   # our own file
        fields = dict(data)
    os.remove(os.path.join(root, "src.npz"))
    edit(fields)
    path = os.path.join(root, "bad.npz")
    np.savez(path, **fields)
    return path


def _hostile(fields):
    fields["input_ids"] = fields["input_ids"].copy()
    fields["input_ids"][3] = _Payload()


def _empty(fields):
    for key in fields:
        fields[key] = fields[key][:0]


def _nan_weight(fields):
    fields["masked_lm_weights"] = fields["masked_lm_weights"].copy()
    fields["masked_lm_weights"][2] = fields["masked_lm_weights"][2] * float("nan")


def _too_long(fields):
    import numpy as np

    fields["input_ids"] = fields["input_ids"].copy()
    fields["input_ids"][5] = np.full(300, 5, np.int32)        # bort_tiny's max_length: 128
    fields["segment_ids"] = fields["segment_ids"].copy()
    fields["segment_ids"][5] = np.zeros(300, np.int32)
    fields["valid_lengths"] = fields["valid_lengths"].copy()
    fields["valid_lengths"][5] = 300


def _truncated(root: str) -> str:
    path = _release_shard(root, "bad.npz")
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[:len(raw) // 2])
    return path


def _text_file(root: str, data: bytes, name: str = "bad.txt") -> str:
    path = os.path.join(root, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


BAD_SHARDS = {   # kind, what -> (builder of the bad shard, what the error line names)
    ("hostile", "pickle-runs-code"): (lambda r: _edited_shard(r, _hostile),
                                      ["field input_ids", "io.open"]),
    ("empty", "no-instances"): (lambda r: _edited_shard(r, _empty), ["holds no instances"]),
    ("truncated", "half-a-zip"): (_truncated, ["not a readable .npz shard"]),
    ("wrong-type", "not-a-zip"): (lambda r: _text_file(r, b"hello\n", "bad.npz"),
                                  ["not a readable .npz shard"]),
    ("non-finite", "nan-weight"): (lambda r: _edited_shard(r, _nan_weight),
                                   ["instance 2", "non-finite"]),
    ("wrong-shape", "longer-than-max-length"): (lambda r: _edited_shard(r, _too_long),
                                               ["instance 5", "300 tokens", "max_length 128"]),
}


def _pretrain_argv(root: str, framework: str, data: str) -> List[str]:
    return ["pretrain", "--framework", framework, "--student", "bort_tiny", "--data", data,
            "--output-dir", os.path.join(root, "ckpt"), "--num-steps", "2", "--tokens-per-batch",
            "256", "--no-tensorboard", "--quiet"]


def _shard_rows():
    for (kind, what), (build, named) in BAD_SHARDS.items():
        for framework in FRAMEWORKS:
            @case("pretrain", kind, "%s-%s" % (what, framework))
            def _(root, build=build, named=named, framework=framework):
                path = build(root)
                return _pretrain_argv(root, framework, path), [path] + named

        @case("extract", kind, what)
        def _(root, build=build, named=named):
            path = build(root)
            return ["extract", "--framework", "torch", "--search-space", "tiny", "--data", path,
                    "--steps", "1", "--output-dir", os.path.join(root, "out"), "--quiet"], [path] + named


_shard_rows()


@case("pretrain", "missing", "no-shard-matches")
def _(root):
    pattern = os.path.join(root, "nothing-*.npz")
    return _pretrain_argv(root, "torch", pattern), [pattern]


@case("create-pretraining-data", "missing", "no-input-matches")
def _(root):
    pattern = os.path.join(root, "nothing-*.txt")
    return ["create-pretraining-data", "--data", pattern, "--output-dir",
            os.path.join(root, "out"), "--quiet"], [pattern]


@case("create-pretraining-data", "wrong-type", "binary-input")
def _(root):
    path = _text_file(root, b"PK\x03\x04\x00\x00binary\xff\xfe\n")
    return ["create-pretraining-data", "--data", path, "--output-dir",
            os.path.join(root, "out"), "--quiet"], [path, "line 1", "NUL byte"]


@case("create-pretraining-data", "wrong-type", "latin-1-input")
def _(root):
    path = _text_file(root, "First line.\nCaf\u00e9 au lait.\n".encode("latin-1"))
    return ["create-pretraining-data", "--data", path, "--output-dir",
            os.path.join(root, "out"), "--quiet"], [path, "line 2", "not UTF-8", "0xe9"]


@case("create-pretraining-data", "wrong-type", "directory-input")
def _(root):
    folder = os.path.join(root, "texts")
    os.mkdir(folder)
    return ["create-pretraining-data", "--data", folder, "--output-dir",
            os.path.join(root, "out"), "--quiet"], [folder, "a directory"]


@case("create-pretraining-data", "empty", "no-instances")
def _(root):
    path = _text_file(root, b"One lonely sentence.\n")
    return ["create-pretraining-data", "--data", path, "--output-dir",
            os.path.join(root, "out"), "--quiet"], [path, "no instance"]


@case("create-pretraining-data", "stale", "earlier-shards-in-output")
def _(root):
    out = os.path.join(root, "out")
    os.mkdir(out)
    _release_shard(out, "part-003.npz")
    path = _text_file(root, b"A sentence.\nAnother one.\n\nA second document.\nIts end.\n")
    return ["create-pretraining-data", "--data", path, "--output-dir", out, "--quiet"], \
        [out, "not empty", "part-003.npz", "--overwrite"]


# ---- finetune, agora, pretrain: non-finite numbers; task files' headers and encodings
DEMO_TASKS = os.path.join(ROOT, "bort_core", "data", "demo", "tasks")
TASK_FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tasks")


def _task_file(root: str, source: str, name: str, edit) -> Tuple[str, str]:
    """(data dir, path): a copy of task folder `source` under root/tasks whose file `name` is
    changed by `edit(lines)` (a list of byte lines, edited in place)."""
    import shutil

    data_dir = os.path.join(root, "tasks")
    folder = os.path.join(data_dir, os.path.basename(source))
    shutil.copytree(source, folder)
    path = os.path.join(folder, name)
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    edit(lines)
    with open(path, "wb") as f:
        f.writelines(lines)
    return data_dir, path


def _write(root: str, name: str, data: bytes) -> str:
    path = os.path.join(root, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _set_line(number: int, text: bytes):
    def edit(lines):
        lines[number - 1] = text
    return edit


def _drop_header(lines):
    del lines[0]


def _finetune_argv(root: str, framework: str, task: str, *extra: str) -> List[str]:
    return ["finetune", "--framework", framework, "--task", task, "--config", "bort_tiny",
            "--max-len", "24", "--training-steps", "3", "--batch-size", "8", "--quiet",
            "--output-dir", os.path.join(root, "out")] + list(extra)


def _nan_classifier(root: str) -> str:
    """A bort_tiny regression classifier whose every weight is NaN."""
    from bort_core import checkpoint as ckpt
    from bort_core import finetune as ft
    from bort_core.configs import get_config

    params = ft.initial_classifier(get_config("bort_tiny"), 1, None, "uniform", 0)
    path = os.path.join(root, "nan.params")
    ckpt.save_params(path, {k: v * float("nan") for k, v in params.items()})
    return path


def _agora_argv(root: str, framework: str, grid: str, reference: str, *extra: str) -> List[str]:
    return ["agora", "--framework", framework, "--task", "demo-regression", "--config",
            "bort_tiny", "--max-len", "24", "--training-steps", "3", "--generator", "dropout",
            "--grid", grid, "--reference-checkpoint", reference, "--quiet", "--output-dir",
            os.path.join(root, "ag")] + list(extra)


def _finetune_rows():
    pair, single = os.path.join(DEMO_TASKS, "demo-pair"), os.path.join(DEMO_TASKS, "demo-single")
    regression = os.path.join(DEMO_TASKS, "demo-regression")
    tables = {   # kind, what -> (task, folder, file, edit, what the error line names)
        ("non-finite", "regression-label-nan"): (
            "demo-regression", regression, "train.tsv",
            _set_line(3, b"1\tdemo\tstdlib\tnone\t1\tstdlib\tstdlib\tA cat.\tA dog.\tnan\n"),
            [":3: score 'nan' is not a finite number"]),
        ("missing", "tsv-header-train"): (
            "demo-pair", pair, "train.tsv", _drop_header,
            ["missing or wrong header", "'index\\tsentence1\\tsentence2\\tlabel'"]),
        ("missing", "tsv-header-test"): (
            "demo-single", single, "test.tsv", _drop_header,
            ["missing or wrong header", "'index\\tsentence'"]),
        ("wrong-shape", "tsv-header-columns-swapped"): (
            "demo-pair", pair, "dev.tsv", _set_line(1, b"index\tsentence2\tsentence1\tlabel\n"),
            ["missing or wrong header", "column 2 here is 'sentence2', not 'sentence1'"]),
        ("wrong-type", "latin-1-byte-tsv"): (
            "demo-single", single, "train.tsv", _set_line(4, "caf\u00e9 noir\t1\n".encode(
                "latin-1")), [":4: not UTF-8", "0xe9"]),
        ("wrong-type", "latin-1-byte-jsonl"): (
            "boolq", os.path.join(TASK_FIXTURES, "BoolQ"), "train.jsonl", _set_line(
                2, b'{"question": "caf\xe9?", "passage": "p", "idx": 1, "label": true}\n'),
            [":2: not UTF-8", "0xe9"]),
    }
    for framework in ("gluon", "torch"):
        for (kind, what), (task, folder, name, edit, named) in tables.items():
            @case("finetune", kind, "%s-%s" % (what, framework))
            def _(root, task=task, folder=folder, name=name, edit=edit, named=named,
                  framework=framework):
                data_dir, path = _task_file(root, folder, name, edit)
                return _finetune_argv(root, framework, task, "--data-dir", data_dir), \
                    [path] + named

        @case("finetune", "non-finite", "lr-nan-%s" % framework)
        def _(root, framework=framework):
            return _finetune_argv(root, framework, "demo-regression", "--lr", "nan"), \
                ["--lr must be a finite number, got nan"]

        @case("finetune", "non-finite", "diverging-loss-%s" % framework, keeps=("out",))
        def _(root, framework=framework):
            return _finetune_argv(root, framework, "demo-regression", "--lr", "1e30",
                                  "--warmup-ratio", "0", "--clip-norm", "0"), \
                ["fine-tuning step 2: the loss is", "diverged (lower --lr)"]

        @case("finetune", "non-finite", "nan-weights-only-inference-%s" % framework,
              keeps=("out",))
        def _(root, framework=framework):
            path = _nan_classifier(root)
            return _finetune_argv(root, framework, "demo-regression", "--model-parameters", path,
                                  "--only-inference"), ["demo-regression dev", "NaN or infinite"]

        @case("agora", "non-finite", "grid-nan-%s" % framework)
        def _(root, framework=framework):
            grid = _write(root, "grid.json", b'{"lr": [1e-4, NaN]}')
            return _agora_argv(root, framework, grid, "ref.params"), \
                [grid, "set 1", "--lr must be a finite number, got nan"]

        @case("agora", "non-finite", "weight-decay-inf-%s" % framework)
        def _(root, framework=framework):
            return _agora_argv(root, framework, "release", "ref.params", "--weight-decay", "inf"), \
                ["--weight-decay must be a finite number, got inf"]

        @case("agora", "non-finite", "diverging-set-%s" % framework, keeps=("ag",))
        def _(root, framework=framework):
            done = run_bort(_finetune_argv(root, "torch", "demo-regression", "--output-dir", "ref"),
                            root)
            assert done.returncode == 0, done.stderr
            grid = _write(root, "grid.json", b'{"lr": [1e30], "warmup_ratio": [0.0]}')
            return _agora_argv(root, framework, grid, "ref/model_bort_demo-regression_best.params",
                               "--clip-norm", "0"), \
                ["round 1, set 0", "fine-tuning step 2: the loss is", "diverged (lower --lr)"]

        @case("pretrain", "non-finite", "lr-nan-%s" % framework)
        def _(root, framework=framework):
            return ["pretrain", "--framework", framework, "--data", "none.npz", "--output-dir",
                    "ckpt", "--lr", "nan"], ["--lr must be a finite number, got nan"]

        @case("pretrain", "non-finite", "lr-nan-demo-run-%s" % framework)
        def _(root, framework=framework):      # the embedded demo run: no shard made first
            return ["pretrain", "--framework", framework, "--output-dir", "ckpt", "--lr", "nan"], \
                ["--lr must be a finite number, got nan"]

        @case("pretrain", "non-finite", "diverging-loss-%s" % framework)
        def _(root, framework=framework):
            from bort_core.commands.pretrain import demo_shards

            return ["pretrain", "--framework", framework, "--student", "bort_tiny", "--data",
                    demo_shards(os.path.join(root, "shards")), "--output-dir", "", "--num-steps",
                    "4", "--tokens-per-batch", "512", "--lr", "1e30", "--clip-norm", "0",
                    "--warmup-ratio", "0", "--quiet"], \
                ["non-finite loss/gradient", "diverged (lower --lr); no checkpoint was written"]


_finetune_rows()


# -------------------------------------------------------------------------------------- the test

@pytest.mark.parametrize("bad", CASES, ids=lambda b: b.id)
def test_bad_input_is_refused_in_one_line(bad: Bad, tmp_path):
    root = str(tmp_path)
    argv, named = bad.build(root)
    before = _snapshot(root)
    done = run_bort(argv, cwd=root)
    err = done.stderr
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, "expected one line on stderr, got:\n" + err
    assert lines[0].startswith("bort %s: error: " % bad.command), lines[0]
    for text in named:
        assert text in lines[0], "error line does not name %r: %s" % (text, lines[0])
    assert done.returncode == 2, (done.returncode, err)
    assert not os.path.exists(os.path.join(root, "PWNED")), "a hostile file ran code"
    left = _snapshot(root) - before - {os.path.normpath(k) for k in bad.keeps}
    assert not left, "left behind: %s" % sorted(left)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_release_layout_shard_still_trains(framework, tmp_path):
    """The hostile-shard rows' counterpart: a genuine object-array shard of the 2020 layout."""
    root = str(tmp_path)
    done = run_bort(_pretrain_argv(root, framework, _release_shard(root)), cwd=root)
    assert done.returncode == 0, done.stderr
    assert os.path.exists(os.path.join(root, "ckpt", "0000002.params"))


def _small_disk():
    """In the child: files may not grow past 64 KiB. A write beyond fails with EFBIG ("File too
    large"), as one on a full disk fails with ENOSPC: the same failure mid-file, without root."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))


@pytest.mark.parametrize("command,out,needs", [
    ("convert", "out.params", ()), ("convert", "out.pt", ("torch",)),
    ("convert", "out.safetensors", ("safetensors",)), ("convert", "hf", ("safetensors",)),
    ("export-onnx", "out.onnx", ("torch", "onnx"))])
def test_full_disk_is_one_line(command, out, needs, tmp_path):
    for module in needs:
        pytest.importorskip(module)
    root = str(tmp_path)
    src, dst = _tiny_params(root), os.path.join(root, out)
    before = _snapshot(root)
    done = run_bort([command, src, dst, "--config", "bort_tiny"], root, preexec_fn=_small_disk)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "bort %s: error: %s: File too large\n" % (command, dst)
    assert _snapshot(root) == before     # no temp file, no half-written output
