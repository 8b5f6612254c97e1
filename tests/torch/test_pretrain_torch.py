"""bort_torch.pretrain: loss terms vs the numpy oracle, BERTAdam, exact resume (also after
kill -9), precision modes, NaN stop, `bort pretrain --config`."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from bort_core import checkpoint as ckpt  # noqa: E402
from bort_core import losses, resume  # noqa: E402
from bort_core import pretrain as core  # noqa: E402
from bort_core.arch import initial_params  # noqa: E402
from bort_core.configs import DEMO_VOCAB_SIZE, get_config  # noqa: E402
from bort_core.data import shards as sh  # noqa: E402
from bort_core.model_params import validate_params  # noqa: E402
from bort_torch import pretrain as tp  # noqa: E402


@pytest.fixture
def shards(tmp_path):
    for k in range(2):
        sh.write_synthetic_shard(str(tmp_path / ("part-%03d.npz" % k)), 40, DEMO_VOCAB_SIZE,
                                   seed=k)
    return str(tmp_path / "part-*.npz")


@pytest.fixture
def teacher(tmp_path):
    path = str(tmp_path / "teacher.params")
    ckpt.save_params(path, initial_params(get_config("roberta_tiny"), 7))
    return path


def _options(shards, teacher, ckpt_dir, **kw):
    base = dict(student="bort_tiny", teacher=teacher, teacher_config="roberta_tiny", data=shards,
                ckpt_dir=ckpt_dir, num_steps=6, warmup_ratio=0.3, lr=1e-3, tokens_per_batch=160,
                num_buckets=3, ckpt_interval=3, log_interval=3, progress=False, seed=5)
    base.update(kw)
    return core.PretrainOptions(**base)


@pytest.mark.parametrize("kd_loss", core.KD_LOSSES)
def test_distillation_terms_match_the_oracle(kd_loss):
    rng = np.random.RandomState(0)
    s, t = rng.normal(size=(2, 3, 17)), rng.normal(size=(2, 3, 17))
    ids, w = rng.randint(0, 17, (2, 3)), np.array([[1, 1, 0], [1, 1, 1]], np.float32)
    n = float(w.sum()) + 1e-8
    got = tp.distillation_terms(torch.tensor(s), torch.tensor(t), torch.tensor(ids),
                                torch.tensor(w, dtype=torch.float64), n, 2.0, kd_loss)
    want = losses.reference_losses(s.astype(np.float32), ids, w, t.astype(np.float32), 2.0, kd_loss)
    for key, value in want.items():
        assert float(got[key]) == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_bertadam_is_adam_without_bias_correction_and_decoupled_decay():
    w0, g = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = tp.BERTAdam([p], lr=0.1, eps=1e-6, weight_decay=0.01)
    p.grad = torch.tensor(g)
    opt.step()
    m, v = 0.1 * g, 0.001 * g * g
    np.testing.assert_allclose(p.detach().numpy(), w0 - 0.1 * (m / (np.sqrt(v) + 1e-6) + 0.01 * w0))


def _train(options):
    return tp.pretrain(options), ckpt.load_params(resume.checkpoint_paths(
        options.ckpt_dir, options.num_steps)["params"])


def test_resume_is_exact_with_dropout_on(shards, teacher, tmp_path):
    straight_rows, straight = _train(_options(shards, teacher, str(tmp_path / "a")))
    _train(_options(shards, teacher, str(tmp_path / "b"), num_steps=6))
    os.remove(resume.checkpoint_paths(str(tmp_path / "b"), 6)["meta"])   # forget the end
    rows, resumed = _train(_options(shards, teacher, str(tmp_path / "b"), start_step="latest"))
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight_rows[3:]]
    for name, value in straight.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)
    assert straight_rows[-1]["loss"] < straight_rows[0]["loss"] * 1.5   # finite, trains
    with pytest.raises(ValueError, match=r"already holds checkpoints \(steps 3, 6\).*"
                       "--overwrite"):
        tp.pretrain(_options(shards, teacher, str(tmp_path / "b")))     # a fresh start
    log = os.path.join(str(tmp_path / "b"), "log.jsonl")
    size = os.path.getsize(log)
    with pytest.raises(ValueError, match=r"0000003.json was written with other options than "
                       r"this resume: --lr 0.002 \(saved 0.001\)"):
        tp.pretrain(_options(shards, teacher, str(tmp_path / "b"), start_step="3", lr=2e-3))
    assert os.path.getsize(log) == size                             # nothing written


def test_kill_9_then_resume_equals_an_uninterrupted_run(shards, teacher, tmp_path):
    args = ["--framework", "torch", "--student", "bort_tiny", "--teacher", teacher,
            "--teacher-config", "roberta_tiny", "--data", shards, "--num-steps", "40",
            "--tokens-per-batch", "160", "--ckpt-interval", "2", "--log-interval", "10",
            "--lr", "1e-3", "--seed", "1", "--quiet", "--no-tensorboard"]
    run = lambda d, *extra: [sys.executable, "-m", "bort_core.cli", "pretrain", *args,
                             "--output-dir", d, *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = subprocess.run(run(str(tmp_path / "ref")), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    victim = str(tmp_path / "victim")
    proc = subprocess.Popen(run(victim), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not [s for s in resume.complete_steps(victim) if s >= 4]:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = resume.complete_steps(victim)
    assert done and done[-1] < 40, "the run was not interrupted"
    again = subprocess.run(run(victim), env=env, capture_output=True, text=True)   # resumes
    assert again.returncode == 0, again.stderr
    a = ckpt.load_params(resume.checkpoint_paths(str(tmp_path / "ref"), 40)["params"])
    b = ckpt.load_params(resume.checkpoint_paths(victim, 40)["params"])
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("distil", [False, True], ids=["teacherless", "teacher"])
def test_bfloat16_autocast_runs_and_stays_close_to_float32(shards, teacher, tmp_path, distil):
    run = lambda dtype: tp.pretrain(_options(shards, teacher if distil else None,
                                             str(tmp_path / dtype), dtype=dtype, num_steps=3,
                                             dropout=0.0))
    full, half = run("float32"), run("bfloat16")
    keys = ("loss", "mlm_loss") + (("teacher_ce",) if distil else ())
    for key in keys:
        a, b = np.array([r[key] for r in full]), np.array([r[key] for r in half])
        assert np.isfinite(b).all() and (a != b).all(), key        # bfloat16 arithmetic ran
        np.testing.assert_allclose(b, a, rtol=1e-3, err_msg=key)
    assert ("teacher_ce" in half[0]) == distil
    if not distil:
        assert half[0]["loss"] == pytest.approx(half[0]["mlm_loss"])


@pytest.mark.parametrize("hardware", [False, True])
def test_bfloat16_on_a_cpu_without_bf16_matmul_warns(shards, tmp_path, monkeypatch, hardware):
    monkeypatch.setattr(tp, "cpu_has_bf16_matmul", lambda: hardware)
    options = _options(shards, None, str(tmp_path / "d"), dtype="bfloat16", num_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tp.build_engine(options)
    slow = [w for w in caught if "AMX or AVX512-BF16" in str(w.message)]
    assert len(slow) == (0 if hardware else 1)


def test_float16_overflow_skips_and_counts(shards, teacher, tmp_path):
    o = _options(shards, teacher, str(tmp_path / "d"), dtype="float16", num_steps=3,
                 loss_scale=2.0 ** 200)
    rows = tp.pretrain(o)
    assert rows[0]["skipped"] >= 1 and rows[-1]["loss_scale"] < 2.0 ** 200
    # the log line of step 3 holds the running count and the scale at step 3, not window means
    logged = [json.loads(line) for line in open(os.path.join(o.ckpt_dir, "log.jsonl"))]
    assert [(r["step"], r["skipped"], r["loss_scale"]) for r in logged] == [
        (3, rows[-1]["skipped"], rows[-1]["loss_scale"])]
    start = initial_params(get_config("bort_tiny"), o.seed)
    end = ckpt.load_params(resume.checkpoint_paths(o.ckpt_dir, 3)["params"])
    if rows[-1]["skipped"] == 3:     # every step skipped: the weights must not have moved
        np.testing.assert_array_equal(end["encoder.position_weight"],
                                      start["encoder.position_weight"])


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(shards, teacher, tmp_path):
    o = _options(shards, teacher, str(tmp_path / "e"), lr=1e30, clip_norm=0.0, ckpt_interval=1)
    with pytest.raises(FloatingPointError, match=r"non-finite.*last good checkpoint") as err:
        tp.pretrain(o)
    bad = int(str(err.value).split(":")[0].split()[1])
    steps = resume.complete_steps(o.ckpt_dir)
    assert bad > 1 and steps[-1] == bad - 1
    params = ckpt.load_params(resume.checkpoint_paths(o.ckpt_dir, steps[-1])["params"])
    assert all(np.isfinite(v).all() for v in params.values())


def test_pretrain_from_an_extracted_config_file(shards, tmp_path):
    from bort_core.cli import main
    from bort_core.configs import BortConfig

    path = str(tmp_path / "best_config.json")      # as `bort extract` writes it
    BortConfig.from_dahi(1, 2, 48, 32, vocab_size=DEMO_VOCAB_SIZE, max_length=128).to_json(path)
    out = str(tmp_path / "f")
    assert main(["pretrain", "--framework", "torch", "--config", path, "--data", shards,
                 "--num-steps", "2", "--tokens-per-batch", "160", "--output-dir", out,
                 "--quiet", "--no-tensorboard"]) == 0
    params, _, meta = resume.load_checkpoint(out, 2)
    assert meta["options"]["student"] == path
    validate_params(params, get_config(path))    # the extracted architecture was trained
