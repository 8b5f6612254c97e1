"""The release-style scripts' smoke modes with FRAMEWORK=gluon, from another directory (usage and
error paths: tests/torch/test_scripts_torch.py; 2 workers under horovodrun: tests/dist)."""
import json
import os
import subprocess
import sys

SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "..", "scripts")


def _run(script, args, cwd):
    env = dict(os.environ, FRAMEWORK="gluon", OMP_NUM_THREADS="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    done = subprocess.run(["bash", os.path.join(SCRIPTS, script)] + args, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


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
