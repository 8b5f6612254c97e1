"""scripts/run_extraction.sh on its small default (the `tiny` space on the demo corpus),
shortened through its environment knobs (STEPS, EPS, FRAMEWORKS, OUT) to torch alone: the four
outputs, a best_config.json that loads as a config, and RESUME=1. (Both frameworks' rankings
agree: tests/parity/test_extraction_parity.py.)"""
import csv
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from bort_core.configs import get_config  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "run_extraction.sh")
OUTPUTS = ("ranking.csv", "ranking.json", "best_config.json", "pareto.png")


def _run(out, cwd, frameworks="torch", **env):
    env = dict(os.environ, OUT=str(out), FRAMEWORKS=frameworks, STEPS="2", EPSILON="8",
               OMP_NUM_THREADS="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], **env)
    done = subprocess.run(["bash", SCRIPT], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def _check_outputs(run):
    for name in OUTPUTS:
        assert (run / name).stat().st_size > 0, name
    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ranking = json.load(open(run / "ranking.json"))
    rows = list(csv.DictReader(open(run / "ranking.csv")))
    assert [r["name"] for r in rows] == [r["name"] for r in ranking["ranking"]]
    assert rows[0]["name"] == ranking["best"] and len(rows) == 2      # eps 8: 2 candidates
    config = get_config(str(run / "best_config.json"))                # loads as a config
    assert config.name == ranking["best"] and config.vocab_size == 4096
    named = get_config(ranking["best"])                               # bort_D_A_I_H
    assert [getattr(config, k) for k in ("num_layers", "num_heads", "units", "hidden_size")] == \
        [getattr(named, k) for k in ("num_layers", "num_heads", "units", "hidden_size")]
    return ranking


def test_run_extraction_writes_the_outputs_and_resumes(tmp_path):
    out = tmp_path / "out"
    log = _run(out, tmp_path)
    assert "pretraining shards from the embedded demo corpus" in log
    assert "tiny space, eps 8, 2 steps" in log and "extraction done: %s" % out in log
    ranking = _check_outputs(out / "torch")
    assert not (out / "gluon").exists()
    trials = (out / "torch" / "trials.jsonl").read_text()

    again = _run(out, tmp_path, RESUME="1")                       # nothing retrained
    assert "pretraining shards" not in again and "gluon" not in again
    assert (out / "torch" / "trials.jsonl").read_text() == trials
    assert json.load(open(out / "torch" / "ranking.json"))["ranking"] == ranking["ranking"]

