"""Two workers on loopback CPU equal one worker on the same global batches (5 steps):
bort_gluon under horovodrun (gloo), bort_torch under torchrun (gloo). Run by `tox -e dist`
(not in the default envlist: it builds Horovod)."""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from bort_core import checkpoint as ckpt
from bort_core import resume
from bort_core.arch import initial_params
from bort_core.configs import DEMO_VOCAB_SIZE, get_config
from bort_core.data import shards as sh
from bort_core.metrics import rel_l2

STEPS = 5


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(tmp_path, framework, ckpt_dir):
    shards = str(tmp_path / "part-*.npz")
    if not os.path.exists(tmp_path / "part-000.npz"):
        for k in range(2):
            sh.write_synthetic_shard(str(tmp_path / ("part-%03d.npz" % k)), 48,
                                       DEMO_VOCAB_SIZE, seed=k)
        ckpt.save_params(str(tmp_path / "teacher.params"),
                         initial_params(get_config("roberta_tiny"), 9))
    # >= 6 rows per global batch (lengths <= 32), so both workers always get rows
    return ["-m", "bort_core.cli", "pretrain", "--framework", framework, "--student",
            "bort_tiny", "--teacher", str(tmp_path / "teacher.params"), "--teacher-config",
            "roberta_tiny", "--data", shards, "--num-steps", str(STEPS), "--tokens-per-batch",
            "200", "--accumulate", "2", "--lr", "1e-3", "--warmup-ratio", "0.2", "--dropout",
            "0", "--log-interval", "1", "--output-dir", ckpt_dir, "--quiet", "--no-tensorboard"]


def _final(ckpt_dir):
    return ckpt.load_params(resume.checkpoint_paths(ckpt_dir, STEPS)["params"])


def _steps(ckpt_dir):
    with open(os.path.join(ckpt_dir, "log.jsonl")) as f:
        return [row for row in map(json.loads, f) if row["phase"] == "train"]


def _compare(one, two, label):
    """Final parameters and every step's global loss and gradient norm, 2 workers vs 1;
    prints the measured differences (pytest -s shows them)."""
    a, b = _final(one), _final(two)
    # key-projection biases: analytically zero gradient, moved by the sign of rounding noise
    worst = max((rel_l2(b[n], a[n]), n) for n in a if not n.endswith("proj_key.bias"))
    steps_a, steps_b = _steps(one), _steps(two)
    assert [r["step"] for r in steps_a] == [r["step"] for r in steps_b] == list(
        range(1, STEPS + 1))
    rel = lambda x, y: abs(x - y) / max(abs(y), 1e-12)
    loss = max(rel(r2["loss"], r1["loss"]) for r1, r2 in zip(steps_a, steps_b))
    norm = max(rel(r2["grad_norm"], r1["grad_norm"]) for r1, r2 in zip(steps_a, steps_b))
    print("\n%s, %d steps, 2 workers vs 1: worst parameter rel L2 %.2e (%s), worst step loss "
          "rel diff %.2e, worst gradient-norm rel diff %.2e" % (label, STEPS, worst[0], worst[1],
                                                                 loss, norm))
    assert worst[0] <= 1e-5, worst
    assert loss <= 1e-5 and norm <= 1e-5, (loss, norm)


def _run(cmd, env):
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


ENV = dict(os.environ, OMP_NUM_THREADS="1")


def test_torchrun_two_workers_equal_one(tmp_path):
    pytest.importorskip("torch")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _run([sys.executable] + _args(tmp_path, "torch", one), ENV)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
          "--master_port", str(_free_port())] + _args(tmp_path, "torch", two), ENV)
    _compare(one, two, "torch (torchrun, gloo)")


def test_horovodrun_two_workers_equal_one(tmp_path):
    pytest.importorskip("horovod.mxnet")
    runner = shutil.which("horovodrun") or os.path.join(os.path.dirname(sys.executable),
                                                        "horovodrun")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _run([sys.executable] + _args(tmp_path, "gluon", one), ENV)
    _run([runner, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable]
         + _args(tmp_path, "gluon", two), ENV)
    _compare(one, two, "gluon (horovodrun, gloo)")


@pytest.mark.parametrize("framework, module", [("torch", "torch"), ("gluon", "horovod.mxnet")])
def test_release_script_two_workers_with_tensorboard(tmp_path, framework, module):
    """scripts/run_pretraining_distillation.sh 2 TEST; TensorBoard on (tensorboardX imported
    after horovod.mxnet crashed rank 0)."""
    pytest.importorskip(module)
    pytest.importorskip("tensorboardX")
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts",
                          "run_pretraining_distillation.sh")
    env = dict(ENV, FRAMEWORK=framework,
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    done = subprocess.run(["bash", script, "2", "TEST"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    model = tmp_path / "runs" / "pretraining_distillation_test" / "bort_tiny_model"
    assert [r["step"] for r in _steps(str(model))] == [2, 4]
    assert os.listdir(model / "tensorboard")
    assert ("horovodrun -np 2" if framework == "gluon" else "--nproc_per_node 2") in (
        model / "train.log").read_text()
