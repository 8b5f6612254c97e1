"""bort_core.pretrain: data order (P1), schedule, loss oracle, loss scaling, checkpoints, errors."""
import json
import os
import sys

import numpy as np
import pytest

from bort_core import checkpoint as ckpt
from bort_core import losses, optim, resume
from bort_core import pretrain as core
from bort_core.arch import initial_params
from bort_core.configs import DEMO_VOCAB_SIZE, get_config
from bort_core.data import shards as sh
from bort_core.data.bucketing import bucket_batches
from bort_core.data.stream import PAD_ID, BatchStream, collate, worker_slice
from bort_core.model_params import validate_params


@pytest.fixture
def shards(tmp_path):
    return [sh.write_synthetic_shard(str(tmp_path / ("part-%03d.npz" % k)), 37 + 5 * k,
                                       DEMO_VOCAB_SIZE, seed=k) for k in range(3)]


def _instances(batch):
    """Each row of a collated batch as a hashable key (its ids up to valid_length)."""
    return [tuple(batch["input_ids"][r, :batch["valid_length"][r]])
            for r in range(len(batch["valid_length"]))]


def test_an_epoch_uses_every_instance_of_every_shard_once(shards):
    # release bug P1: only the first batch of each file was ever used
    stream = BatchStream(shards, tokens_per_batch=96, num_buckets=4, seed=3)
    per_epoch = stream.validate()
    seen = [key for b in stream.batches(0, epochs=1) for key in _instances(b)]
    expected = [tuple(ids) for path in shards for ids in sh.load_shard(path)["input_ids"]]
    assert sorted(seen) == sorted(expected)
    assert per_epoch == len(list(stream.batches(0, epochs=1))) > len(shards)


def test_stream_resumes_at_any_position_and_epochs_differ(shards):
    stream = BatchStream(shards, tokens_per_batch=96, num_buckets=4, seed=3)
    n = stream.validate()
    full = list(stream.batches(0, epochs=2))
    tail = list(stream.batches(n - 2, epochs=2))
    assert len(tail) == len(full) - (n - 2)
    for a, b in zip(full[n - 2:], tail):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert [_instances(b) for b in full[:n]] != [_instances(b) for b in full[n:]]


def test_bucket_batches_respect_the_token_budget_without_avg_len():
    lengths = np.random.RandomState(0).randint(5, 100, size=500)
    batches = bucket_batches(lengths, 400, 10, np.random.RandomState(1), use_avg_len=False)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    assert all(len(b) * lengths[b].max() <= 400 or len(b) == 1 for b in batches)
    avg = bucket_batches(lengths, 400, 10, np.random.RandomState(1), use_avg_len=True)
    assert sorted(np.concatenate(avg).tolist()) == list(range(500))
    assert len(avg) < len(batches)     # the mean length packs more rows than the bucket key


def test_worker_slices_partition_the_global_batch(shards):
    batch = next(BatchStream(shards, 200, 2).batches())
    parts = [worker_slice(batch, r, 3) for r in range(3)]
    for key in batch:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key])
    assert worker_slice({k: v[:1] for k, v in batch.items()}, 1, 2) is None


def test_collate_pads_and_keeps_weights(shards):
    shard = sh.load_shard(shards[0])
    batch = collate(shard, np.array([0, 1, 2]))
    for k, r in enumerate((0, 1, 2)):
        n = len(shard["masked_lm_ids"][r])
        np.testing.assert_array_equal(batch["masked_ids"][k, :n], shard["masked_lm_ids"][r])
        assert batch["masked_weights"][k, n:].sum() == 0
        assert (batch["input_ids"][k, shard["valid_lengths"][r]:] == PAD_ID).all()


def test_learning_rate_schedule_is_the_releases():
    o = core.PretrainOptions(num_steps=100, warmup_ratio=0.1, lr=1.0)
    assert optim.pretraining_lr(1, o) == pytest.approx(0.1)
    assert optim.pretraining_lr(10, o) == pytest.approx(1.0)
    assert optim.pretraining_lr(11, o) == pytest.approx(0.89)
    assert optim.pretraining_lr(100, o) == 0.0


def test_weight_decay_exclusions():
    assert optim.decays("encoder.transformer_cells.0.ffn.ffn_1.weight")
    assert optim.decays("word_embed.0.weight")
    for name in ("encoder.layer_norm.gamma", "decoder.2.beta", "decoder.3.bias"):
        assert not optim.decays(name)


def test_reference_losses():
    rng = np.random.RandomState(0)
    s, t = rng.normal(size=(2, 3, 11)), rng.normal(size=(2, 3, 11))
    ids, w = rng.randint(0, 11, (2, 3)), np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    kl = losses.reference_losses(s, ids, w, t, 2.0, "kl")
    rel = losses.reference_losses(s, ids, w, t, 2.0, "release")
    same = losses.reference_losses(s, ids, w, s, 2.0, "kl")
    assert kl["teacher_ce"] > 0 and abs(same["teacher_ce"]) < 1e-12
    assert abs(rel["teacher_ce"] - kl["teacher_ce"]) > 1e-3     # the release's term differs
    logp = s - np.log(np.exp(s).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, ids[..., None], -1)[..., 0]
    assert kl["mlm_loss"] == pytest.approx((w * ce).sum() / (w.sum() + 1e-8))


def test_loss_scaler_skips_halves_and_grows_by_an_integer_window():
    s = optim.LossScaler(8.0, window=2)
    s.update(False)
    assert (s.scale, s.skipped) == (4.0, 1)
    s.update(True)
    s.update(True)
    assert s.scale == 8.0 and isinstance(s.window, int)     # P7
    off = optim.LossScaler(8.0, enabled=False)
    off.update(False)
    assert off.scale == 1.0 and off.skipped == 0


def test_checkpoints_are_complete_only_with_their_marker(tmp_path):
    params = initial_params(get_config("bort_tiny"), 0)
    states = {"mean:" + k: np.zeros_like(v) for k, v in params.items()}
    resume.save_checkpoint(str(tmp_path), 4, params, states, {"step": 4, "loss_scaler": {}})
    resume.save_checkpoint(str(tmp_path), 8, params, states, {"step": 8})
    os.remove(resume.checkpoint_paths(str(tmp_path), 8)["meta"])
    assert resume.complete_steps(str(tmp_path)) == [4]
    assert resume.resolve_start(str(tmp_path), "latest") == 4
    loaded, st, meta = resume.load_checkpoint(str(tmp_path), 4)
    assert meta["step"] == 4 and set(loaded) == set(params)
    np.testing.assert_array_equal(loaded["word_embed.0.weight"], params["word_embed.0.weight"])
    # the params file is a canonical checkpoint any framework loads
    validate_params(loaded, get_config("bort_tiny"))
    with pytest.raises(FileNotFoundError, match="--start-step 8: no complete checkpoint"):
        resume.resolve_start(str(tmp_path), 8)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resume.resolve_start(str(tmp_path / "empty"), "latest")


def test_a_resume_under_other_trajectory_options_is_refused():
    saved = core.PretrainOptions(teacher="t.params", lr=1e-3, num_steps=40, ckpt_dir="a")
    meta = {"options": json.loads(json.dumps(vars(saved)))}     # as the checkpoint stores them
    # paths, logging and intervals may change: the run moved
    resume.check_resume_options(core.PretrainOptions(
        teacher="/elsewhere/t.params", lr=1e-3, num_steps=40, ckpt_dir="/b", log_interval=7,
        ckpt_interval=3, progress=False, tensorboard=False, start_step="latest"), meta, "m.json")
    with pytest.raises(ValueError, match=r"m.json was written with other options.*--num-steps "
                       r"80 \(saved 40\); --lr 0.002 \(saved 0.001\)"):
        resume.check_resume_options(core.PretrainOptions(teacher="t.params", lr=2e-3, num_steps=80),
                                  meta, "m.json")
    with pytest.raises(ValueError, match=r"--teacher absent \(saved t.params\)"):
        resume.check_resume_options(core.PretrainOptions(lr=1e-3, num_steps=40), meta, "m.json")


def test_non_writable_checkpoint_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        resume.check_writable(str(blocker / "ckpt"))


def test_models_are_checked_before_training(tmp_path, shards):
    with pytest.raises(ValueError, match="unknown config"):
        core.resolve_models(core.PretrainOptions(student="no_such_config"))
    teacher = str(tmp_path / "teacher.params")
    ckpt.save_params(teacher, initial_params(get_config("roberta_tiny"), 1))
    student = core.PretrainOptions(student="bort_4_8_768_1024", teacher=teacher,
                                   teacher_config="roberta_tiny")
    with pytest.raises(ValueError, match="4096-entry vocabulary"):
        core.resolve_models(student)
    with pytest.raises(FileNotFoundError, match="teacher checkpoint"):
        core.resolve_models(core.PretrainOptions(student="bort_tiny", teacher=teacher + "x"))
    s, params, t, tp = core.resolve_models(core.PretrainOptions(
        student="bort_tiny", teacher=teacher, teacher_config="roberta_tiny", dropout=0.0))
    assert s.dropout == 0 and t.name == "roberta_tiny" and set(tp) >= {"decoder.0.weight"}
    with pytest.raises(ValueError, match="--data"):
        core.make_streams(core.PretrainOptions(), DEMO_VOCAB_SIZE)


def test_options_are_validated():
    with pytest.raises(ValueError, match="--kd-loss"):
        core.PretrainOptions(kd_loss="mse")
    with pytest.raises(ValueError, match="--accumulate"):
        core.PretrainOptions(accumulate=0)
    with pytest.raises(ValueError, match="--dtype"):
        core.PretrainOptions(dtype="int8")


def test_event_log_writes_jsonl_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboardX")
    log = core.EventLog(str(tmp_path))
    log.write("train", 3, {"mlm_loss": 1.5, "lr": 1e-4})
    log.close()
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert rows == [{"mlm_loss": 1.5, "lr": 1e-4, "phase": "train", "step": 3}]
    events = os.listdir(tmp_path / "tensorboard")
    assert events and events[0].startswith("events.out.tfevents")


def test_event_log_without_tensorboardx_warns_and_keeps_the_jsonl(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # makes the import fail
    with pytest.warns(UserWarning, match="tensorboardX is not installed"):
        log = core.EventLog(str(tmp_path))
    log.write("eval", 7, {"mlm_loss": 2.0})
    log.close()
    assert [json.loads(line) for line in open(tmp_path / "log.jsonl")] == [
        {"mlm_loss": 2.0, "phase": "eval", "step": 7}]
    assert not (tmp_path / "tensorboard").exists()


COUNTER = "encoder.position_weight"     # FakeEngine fills it with its count of updates


class FakeEngine(core.Engine):
    """A numpy stand-in for a framework engine: step k's statistics are known functions of k,
    one parameter counts the applied updates, the steps in `overflow` are non-finite."""

    def __init__(self, teacher=False, overflow=(), rank=0, world=1):
        self.weights = initial_params(get_config("bort_tiny"), 0)
        self.teacher = object() if teacher else None
        self.overflow, self.rank, self.world = set(overflow), rank, world
        self.step = self.applied = 0

    def params(self):
        return dict(self.weights)

    def states(self):
        return {"%s:%s" % (k, n): np.zeros_like(v) for n, v in self.weights.items()
                for k in ("mean", "var")}

    def backward(self, batch, normalizer, scale):
        k = self.step + 1
        stats = {"loss": 1.0 / k, "mlm_loss": 2.0 / k, "mlm_acc": 0.1 * k,
                 "tokens": float(batch["valid_length"].sum())}
        if self.teacher is not None:
            stats.update(teacher_ce=3.0 / k, teacher_mse=0.01 * k * k)
        return stats

    def update(self, lr, scale):
        self.step += 1
        finite = self.step not in self.overflow
        if finite:
            self.applied += 1
            self.weights[COUNTER] = np.full_like(self.weights[COUNTER], self.applied)
        return {"finite": finite, "grad_norm": float(self.step) if finite else float("inf")}

    def allreduce(self, values):
        return list(values)


def _fake_run(engine, shards, ckpt_dir, **kw):
    kw = dict(dict(num_steps=6, log_interval=3, ckpt_interval=4), **kw)
    o = core.PretrainOptions(data=",".join(shards), ckpt_dir=ckpt_dir, warmup_ratio=0.5,
                             tensorboard=False, **kw)
    rows = core.run_pretraining(engine, o, BatchStream(shards, 96, 4))
    log = os.path.join(ckpt_dir, "log.jsonl")
    return o, rows, [json.loads(line) for line in open(log)] if os.path.exists(log) else None


def test_the_log_shows_the_running_skipped_count_and_loss_scale_at_the_step(
        shards, tmp_path, capsys):
    engine = FakeEngine(overflow=(2, 3, 5))
    o, rows, log = _fake_run(engine, shards, str(tmp_path / "run"), dtype="float16")
    assert [r["skipped"] for r in rows] == [0, 1, 2, 2, 3, 3]
    # the window means would be 1 and 2.67, and a mean of the halving scales
    assert [(r["step"], r["skipped"], r["loss_scale"]) for r in log] == [
        (3, 2, 2.0 ** 13), (6, 3, 2.0 ** 12)]
    assert [r["lr"] for r in log] == [optim.pretraining_lr(s, o) for s in (3, 6)]
    assert [r["loss"] for r in log] == pytest.approx([np.mean([1, 1 / 2, 1 / 3]),
                                                      np.mean([1 / 4, 1 / 5, 1 / 6])])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    assert [line.split("skipped ")[1] for line in lines] == ["2", "3"]


def test_logged_distillation_terms_are_window_means_like_the_loss(shards, tmp_path):
    # release bug P4: the distillation terms were logged without averaging
    _, _, log = _fake_run(FakeEngine(teacher=True), shards, str(tmp_path / "run"),
                          progress=False)
    for row, steps in zip(log, ((1, 2, 3), (4, 5, 6))):
        want = {"loss": [1 / k for k in steps], "teacher_ce": [3 / k for k in steps],
                "teacher_mse": [0.01 * k * k for k in steps], "grad_norm": steps}
        for key, values in want.items():
            assert row[key] == pytest.approx(np.mean(values)), (row["step"], key)


def test_the_final_step_is_checkpointed_off_the_interval(shards, tmp_path):
    # release bug P6: the final step's parameters were missing from the last checkpoint
    engine = FakeEngine()
    o, _, _ = _fake_run(engine, shards, str(tmp_path / "run"), num_steps=5, ckpt_interval=2,
                        progress=False)
    assert resume.complete_steps(o.ckpt_dir) == [2, 4, 5]
    params, states, meta = resume.load_checkpoint(o.ckpt_dir, 5)
    assert meta["step"] == 5 and set(states) == set(engine.states())
    validate_params(params, get_config("bort_tiny"))
    assert (params[COUNTER] == 5).all()                   # step 5's update included


def test_only_rank_0_logs_and_writes(shards, tmp_path, capsys):
    # release bug P5: every process on the first host acted as master
    worker = str(tmp_path / "worker")
    _, rows, log = _fake_run(FakeEngine(rank=1, world=2), shards, worker)
    assert len(rows) == 6 and log is None and not os.path.exists(worker)
    assert capsys.readouterr() == ("", "")
    _, _, log = _fake_run(FakeEngine(rank=0, world=2), shards, str(tmp_path / "master"))
    assert [r["step"] for r in log] == [3, 6] and "step 6:" in capsys.readouterr().out
