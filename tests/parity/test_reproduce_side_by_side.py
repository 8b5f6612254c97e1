"""`bort reproduce` with both frameworks: side by side (one process each, the cores split) gives the
summary that one after the other gives, with each framework's output in its log; a failing
framework stops the run with its log named."""
import json
import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("mxnet")
pytestmark = [pytest.mark.parity, pytest.mark.slow, pytest.mark.e2e,
              pytest.mark.filterwarnings("ignore:the reference model scores")]

from bort_core.reproduce.pipeline import reproduce, run_framework  # noqa: E402
from bort_core.reproduce.presets import PRESETS  # noqa: E402
from bort_core.reproduce.runner import FRAMEWORK_STAGES, Run, run_side_by_side  # noqa: E402

SMALL = dict(PRESETS["demo"], dupe_factor=1, search_space="tiny", extract_steps=2, epsilon=8.0,
             pretrain_steps=6, tokens_per_batch=1024, tasks=["demo-single"], finetune_epochs=1,
             agora_grid={"seed": [0, 1]}, agora_epochs=1, agora_rounds=1)


def test_side_by_side_equals_sequential(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(PRESETS, "small", SMALL)
    both = ["gluon", "torch"]
    side = reproduce(both, "small", str(tmp_path / "side"), seed=3, overwrite=False)
    out = capsys.readouterr().out
    assert "side by side" in out
    for fw in both:
        for name in FRAMEWORK_STAGES:
            assert "stage %s-%s: done in" % (name, fw) in out
        log = open(tmp_path / "side" / ("%s.log" % fw)).read()
        assert "$ bort finetune --framework %s" % fw in log
    assert "$ bort extract" not in out and "$ bort finetune" not in out   # in the logs only
    seq = reproduce(both, "small", str(tmp_path / "seq"), seed=3, overwrite=False,
                       sequential=True)
    assert "side by side" not in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "seq" / "gluon.log")
    assert json.dumps(side["results"], sort_keys=True) == json.dumps(seq["results"],
                                                                     sort_keys=True)
    assert side["results"]["parity"]["ok"]
    teacher = side["results"]["teacher"]          # the shipped one, evaluated by both
    assert not teacher["trained"]
    assert teacher["heldout_by_framework"]["gluon"] == pytest.approx(
        teacher["heldout_by_framework"]["torch"], rel=1e-5)


def test_a_failing_framework_names_its_log(tmp_path):
    run = Run(str(tmp_path / "run"), {"frameworks": ["gluon", "torch"]}, overwrite=False)
    data = {"train": str(tmp_path / "missing" / "*.npz"), "eval": str(tmp_path / "none.npz")}
    records = {"data": data, "teacher": {"checkpoint": str(tmp_path / "t.params"),
                                         "config_name": "roberta_tiny"}}
    with pytest.raises(RuntimeError, match="the gluon and torch stages failed; see .*gluon.log"):
        run_side_by_side(run, ["gluon", "torch"], run_framework, SMALL, data, 0, records)
    for fw in ("gluon", "torch"):
        assert "Error" in open(tmp_path / "run" / ("%s.log" % fw)).read()
