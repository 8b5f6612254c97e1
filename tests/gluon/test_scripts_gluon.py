"""The release-style scripts' smoke modes with FRAMEWORK=gluon, from another directory (usage and
error paths: tests/torch/test_scripts_torch.py; 2 workers under horovodrun: tests/dist)."""
import json
import os
import subprocess
import sys

from bort_core import resume
from bort_core.configs import DEMO_VOCAB_SIZE
from bort_core.data import shards as sh

SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "..", "scripts")


def _run(script, args, cwd, rc=0, **env):
    env = dict(os.environ, FRAMEWORK="gluon", OMP_NUM_THREADS="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], **env)
    done = subprocess.run(["bash", os.path.join(SCRIPTS, script)] + args, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == rc, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def test_run_finetune_glue_and_superglue_smoke_modes(tmp_path):
    _run("run_finetune.sh", ["TEST1"], tmp_path)
    _run("run_finetune.sh", ["TEST2"], tmp_path)
    out = tmp_path / "runs" / "finetune"
    assert (out / "test-WNLI" / "WNLI.tsv").stat().st_size > 0
    assert (out / "test-WSC" / "WSC.jsonl").stat().st_size > 0


def test_run_pretraining_distillation_test_mode(tmp_path):
    _run("run_pretraining_distillation.sh", ["1", "TEST"], tmp_path)
    model = tmp_path / "runs" / "pretraining_distillation_test" / "bort_tiny_model"
    rows = [json.loads(line) for line in open(model / "log.jsonl")]
    assert [r["step"] for r in rows if r["phase"] == "train"] == [2, 4]
    assert all(r["teacher_ce"] > 0 for r in rows)
    assert (model / "0000004.params").exists() and "horovodrun" not in (
        model / "train.log").read_text()


def test_run_pretraining_distillation_defaults_to_float32_and_refuses_float16(tmp_path):
    # the release's command line (no TEST), shortened to 2 steps of a tiny student
    for k in range(2):
        sh.write_synthetic_shard(str(tmp_path / ("part-%03d.npz" % k)), 20, DEMO_VOCAB_SIZE,
                                   seed=k)
    args = ["1", "part-*.npz", "part-001.npz"]
    short = dict(NUM_STEPS="2", MODEL_NAME="bort_tiny", BS="160")
    _run("run_pretraining_distillation.sh", args, tmp_path, **short)
    model = tmp_path / "bort_tiny_model"
    assert "--dtype float32" in (model / "train.log").read_text()
    assert resume.complete_steps(str(model)) == [2]
    done = _run("run_pretraining_distillation.sh", args, tmp_path, rc=2, DTYPE="float16",
                DIR_NAME="fp16", **short)
    assert "error: --dtype float16: bort_gluon pretrains in float32" in done.stdout
    assert not resume.complete_steps(str(tmp_path / "fp16"))
