"""bort_gluon.pretrain: loss terms vs the numpy oracle, GluonNLP's BERTAdam semantics, exact
resume (also after kill -9), teacherless MLM, precision errors, NaN stop."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
pytestmark = pytest.mark.gluon

from bort_core import checkpoint as ckpt  # noqa: E402
from bort_core import losses, optim, resume  # noqa: E402
from bort_core import pretrain as core  # noqa: E402
from bort_core.arch import initial_params  # noqa: E402
from bort_core.configs import DEMO_VOCAB_SIZE, get_config  # noqa: E402
from bort_core.data import shards as sh  # noqa: E402
from bort_core.data.stream import BatchStream  # noqa: E402
from bort_gluon import pretrain as gp  # noqa: E402


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
    got = gp.distillation_terms(mx.nd.array(s), mx.nd.array(t), mx.nd.array(ids),
                                mx.nd.array(w), n, 2.0, kd_loss)
    want = losses.reference_losses(s.astype(np.float32), ids, w, t.astype(np.float32), 2.0, kd_loss)
    for key, value in want.items():
        assert float(got[key].asscalar()) == pytest.approx(value, rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("kd_loss", core.KD_LOSSES)
def test_distillation_gradient_through_autograd_matches_differences(kd_loss):
    """The loss node's gradient reaches the logits with the weights of losses.total_loss and the
    loss scale (central differences of the float64 oracle)."""
    rng = np.random.RandomState(1)
    s, t = rng.normal(size=(2, 3, 17)).astype(np.float32), rng.normal(size=(2, 3, 17))
    ids, w = rng.randint(0, 17, (2, 3)), np.array([[1, 1, 0], [1, 1, 1]], np.float32)
    n, o, scale = float(w.sum()) + 1e-8, core.PretrainOptions(kd_loss=kd_loss), 3.0
    logits = mx.nd.array(s)
    logits.attach_grad()
    with mx.autograd.record():
        terms = gp.distillation_terms(logits, mx.nd.array(t), mx.nd.array(ids), mx.nd.array(w),
                                      n, o.temperature, kd_loss)
        loss = losses.total_loss(terms, o) * scale
    loss.backward()

    def value(x):
        return scale * losses.total_loss(losses.reference_losses(x, ids, w, t, o.temperature,
                                                             kd_loss, n), o)

    h, numeric, x = 1e-5, np.zeros(s.shape), s.astype(np.float64)
    for i in np.ndindex(s.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        numeric[i] = (value(up) - value(down)) / (2 * h)
    assert logits.grad.dtype == np.float32 and np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(logits.grad.asnumpy(), numeric, rtol=1e-4, atol=1e-7)


def test_one_update_is_bertadam_without_decay_on_layer_norm_and_bias(shards):
    o = _options(shards, None, "", lr=0.1, warmup_ratio=0.0, clip_norm=0.0, num_steps=1)
    student, params, _, _ = core.resolve_models(o)
    engine = gp.Engine(o, gp.build_model(student, params))
    batch = next(BatchStream(sh.expand_shards(shards), 160).batches())
    engine.backward(batch, losses.normalizer(batch), 1.0)
    grads = {n: p.grad().asnumpy().astype(np.float64) for n, p in engine.named.items()}
    engine.update(0.1, 1.0)
    after = engine.params()
    for name in ("encoder.layer_norm.gamma", "decoder.0.weight"):
        g, w0 = grads[name], params[name].astype(np.float64)
        m, v = 0.1 * g, 0.001 * g * g
        wd = 0.01 if optim.decays(name) else 0.0
        step = -0.1 * (m / (np.sqrt(v) + 1e-6) + wd * w0)
        # the update (a sign-like ~0.316 per element) to 0.1%: bias correction would scale it
        # by ~30, decay on a gain of 1 would add 1e-3
        np.testing.assert_allclose(after[name] - w0, step, rtol=1e-3, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_gradients_written_for_one_micro_batch_summed_for_more(shards, accumulate):
    """One micro-batch a step: each backward writes the gradients (no zeroing pass); with
    accumulation they add up and the update clears them."""
    o = _options(shards, None, "", dropout=0.0, accumulate=accumulate)
    student, params, _, _ = core.resolve_models(o)
    engine = gp.Engine(o, gp.build_model(student, params))
    batch = next(BatchStream(sh.expand_shards(shards), 160).batches())
    grads = lambda: np.concatenate([p.grad().asnumpy().ravel() for p in engine.named.values()])
    engine.backward(batch, losses.normalizer(batch), 1.0)
    once = grads()
    engine.backward(batch, losses.normalizer(batch), 1.0)
    assert np.abs(once).max() > 0
    np.testing.assert_allclose(grads(), accumulate * once, rtol=1e-5, atol=1e-9)
    engine.update(0.0, 1.0)
    assert (np.abs(grads()).max() == 0) == (accumulate > 1)


def _train(options):
    return gp.pretrain(options), ckpt.load_params(resume.checkpoint_paths(
        options.ckpt_dir, options.num_steps)["params"])


def test_resume_is_exact_with_dropout_on(shards, teacher, tmp_path):
    straight_rows, straight = _train(_options(shards, teacher, str(tmp_path / "a")))
    _train(_options(shards, teacher, str(tmp_path / "b")))
    os.remove(resume.checkpoint_paths(str(tmp_path / "b"), 6)["meta"])   # forget the end
    rows, resumed = _train(_options(shards, teacher, str(tmp_path / "b"), start_step="latest"))
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight_rows[3:]]
    for name, value in straight.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def test_kill_9_then_resume_equals_an_uninterrupted_run(shards, teacher, tmp_path):
    args = ["--framework", "gluon", "--student", "bort_tiny", "--teacher", teacher,
            "--teacher-config", "roberta_tiny", "--data", shards, "--num-steps", "30",
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
    deadline = time.time() + 90
    while time.time() < deadline and not [s for s in resume.complete_steps(victim) if s >= 4]:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = resume.complete_steps(victim)
    assert done and done[-1] < 30, "the run was not interrupted"
    again = subprocess.run(run(victim), env=env, capture_output=True, text=True)   # resumes
    assert again.returncode == 0, again.stderr
    a = ckpt.load_params(resume.checkpoint_paths(str(tmp_path / "ref"), 30)["params"])
    b = ckpt.load_params(resume.checkpoint_paths(victim, 30)["params"])
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_teacherless_mlm(shards, tmp_path):
    rows = gp.pretrain(_options(shards, None, str(tmp_path / "c"), num_steps=3))
    assert all(np.isfinite(r["loss"]) and "teacher_ce" not in r for r in rows)
    assert rows[0]["loss"] == pytest.approx(rows[0]["mlm_loss"])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_is_refused_with_a_pointer(shards, tmp_path, dtype):
    with pytest.raises(ValueError, match="--framework torch"):
        gp.pretrain(_options(shards, None, str(tmp_path / "d"), dtype=dtype))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(shards, teacher, tmp_path):
    o = _options(shards, teacher, str(tmp_path / "e"), lr=1e30, clip_norm=0.0, ckpt_interval=1)
    with pytest.raises(FloatingPointError, match=r"non-finite.*last good checkpoint") as err:
        gp.pretrain(o)
    bad = int(str(err.value).split(":")[0].split()[1])
    steps = resume.complete_steps(o.ckpt_dir)
    assert bad > 1 and steps[-1] == bad - 1
    assert "is step %d in %s" % (bad - 1, o.ckpt_dir) in str(err.value)
    params = ckpt.load_params(resume.checkpoint_paths(o.ckpt_dir, steps[-1])["params"])
    assert all(np.isfinite(v).all() for v in params.values())
