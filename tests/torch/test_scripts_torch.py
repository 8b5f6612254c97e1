"""The release-style scripts' smoke modes (scripts/run_finetune.sh TEST1/TEST2,
scripts/run_pretraining_distillation.sh 1 TEST, and its release command line shortened) with
FRAMEWORK=torch, from another directory."""
import json
import os
import subprocess
import sys

import pytest

from bort_core import resume
from bort_core.configs import DEMO_VOCAB_SIZE
from bort_core.data import shards as sh

SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "..", "scripts")
FRAMEWORK = "torch"


def _run(script, args, cwd, **env):
    env = dict(os.environ, FRAMEWORK=FRAMEWORK, OMP_NUM_THREADS="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], **env)
    return subprocess.run(["bash", os.path.join(SCRIPTS, script)] + args, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("mode, task, test_file", [("TEST1", "WNLI", "WNLI.tsv"),
                                                   ("TEST2", "WSC", "WSC.jsonl")])
def test_run_finetune_smoke_modes(tmp_path, mode, task, test_file):
    done = _run("run_finetune.sh", [mode], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "runs" / "finetune" / ("test-" + task)
    assert "--weight-decay 110.0" in done.stderr and "--lr 5e-5" in done.stderr   # set -x echo
    assert (out / test_file).stat().st_size > 0
    assert (out / ("model_bort_%s_best.params" % task.lower())).exists()


def test_run_finetune_without_a_checkpoint_says_so(tmp_path):
    done = _run("run_finetune.sh", ["RTE"], tmp_path)
    assert done.returncode == 2 and "no checkpoint at model/bort.params" in done.stderr
    done = _run("run_finetune.sh", [], tmp_path)
    assert done.returncode == 2 and "TEST1" in done.stdout


def test_run_pretraining_distillation_test_mode(tmp_path):
    done = _run("run_pretraining_distillation.sh", ["1", "TEST"], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    model = tmp_path / "runs" / "pretraining_distillation_test" / "bort_tiny_model"
    assert {"0000002.params", "0000004.params", "train.log"} <= set(os.listdir(model))
    rows = [json.loads(line) for line in open(model / "log.jsonl")]
    assert [r["step"] for r in rows if r["phase"] == "train"] == [2, 4]
    assert all(r["teacher_ce"] > 0 for r in rows)            # distilled from the teacher
    assert "--kd-loss kl" in (model / "train.log").read_text()
    usage = _run("run_pretraining_distillation.sh", ["1"], tmp_path)
    assert usage.returncode == 2 and "NUMPROC TEST" in usage.stdout


def test_run_pretraining_distillation_defaults_to_the_releases_float16(tmp_path):
    # the release's command line (no TEST), shortened to 2 steps of a tiny student
    for k in range(2):
        sh.write_synthetic_shard(str(tmp_path / ("part-%03d.npz" % k)), 20, DEMO_VOCAB_SIZE,
                                   seed=k)
    done = _run("run_pretraining_distillation.sh", ["1", "part-*.npz", "part-001.npz", "--seed", "3"],
                tmp_path, NUM_STEPS="2", MODEL_NAME="bort_tiny", BS="160")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    model = tmp_path / "bort_tiny_model"
    log = (model / "train.log").read_text()
    assert "--dtype float16" in log
    assert "--seed 3" in log and "--teacher " not in log   # a flag after EVAL_GLOB is no teacher
    assert resume.complete_steps(str(model)) == [2]
