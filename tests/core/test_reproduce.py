"""bort reproduce without a framework: the output-directory contract, the paper preset's missing
files message, the held-out corpus split."""
import json
import os

import pytest

from bort_core.cli import main
from bort_core.reproduce.presets import PAPER_FILES
from bort_core.reproduce.report import stage_speed
from bort_core.reproduce.runner import Run, stage
from bort_core.reproduce.stages import split_corpus


def test_paper_preset_lists_every_missing_file(tmp_path, capsys):
    code = main(["reproduce", "--preset", "paper", "--files-dir", str(tmp_path / "real"),
                 "--output-dir", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    for _, rel, _ in PAPER_FILES:
        assert os.path.join(str(tmp_path / "real"), rel) in err
    assert "get it from" in err
    assert not (tmp_path / "out").exists()    # nothing written before the files are there


def test_output_dir_resumes_refuses_or_overwrites(tmp_path):
    out = str(tmp_path / "run")
    settings = {"preset": "demo", "seed": 0}
    run = Run(out, settings, overwrite=False)
    run.finish("data", {"train": "x"})
    assert Run(out, settings, overwrite=False).done("data") == {"train": "x"}   # resume
    with pytest.raises(ValueError, match="seed.*--overwrite"):
        Run(out, dict(settings, seed=1), overwrite=False)
    assert Run(out, dict(settings, seed=1), overwrite=True).done("data") is None
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="not empty.*--overwrite"):
        Run(str(other), settings, overwrite=False)
    assert (other / "keep.txt").read_text() == "precious"


def test_stage_runs_once_and_records_its_result(tmp_path):
    run = Run(str(tmp_path / "run"), {"seed": 0}, overwrite=False)
    calls = []

    def body(x):
        calls.append(x)
        return {"value": x}

    assert stage(run, "s", body, 3)["value"] == 3
    assert stage(run, "s", body, 4)["value"] == 3     # done before: not run again
    assert calls == [3]
    with open(tmp_path / "run" / "s" / "done.json") as f:
        assert json.load(f)["value"] == 3


def test_split_corpus_holds_out_every_tenth_document(tmp_path):
    docs = ["doc %d line a\ndoc %d line b\n" % (i, i) for i in range(25)]
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(docs))
    paths = split_corpus([str(src)], str(tmp_path))
    train, held = open(paths["train"]).read(), open(paths["eval"]).read()
    held_ids = sorted({int(w) for w in held.split() if w.isdigit()})
    assert held_ids == [9, 19]
    for i in range(25):
        assert (("doc %d line a" % i) in train) != (i in held_ids)


def test_stage_speed_compares_each_stage_both_frameworks_ran():
    seconds = {"data": 4.0, "extract-gluon": 300.0, "pretrain-gluon": 150.0, "finetune-gluon": 90.0,
               "extract-torch": 200.0, "pretrain-torch": 100.0, "scratch-torch": 30.0,
               "finetune-torch": None}
    speed = stage_speed(seconds, ["gluon", "torch"])
    # scratch ran in torch only and finetune-torch was resumed (no time): neither counts
    assert speed == {"ratio": "gluon/torch",
                     "by_stage": {"extract": 1.5, "pretrain": 1.5, "all": 1.5}}
    assert stage_speed({"data": 1.0}, ["gluon", "torch"])["by_stage"] == {}
