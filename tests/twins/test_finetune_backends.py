"""Fine-tuning through each installed framework's Backend: every task of the hand-made
fixtures end to end (train, dev metric, test file), the CLI (train, then --only-inference), one
run's schedule kept by its Trainer, a new run under its own hparams, predictions."""
import json
import os

import numpy as np
import pytest

from bort_core import checkpoint as ckpt
from bort_core import finetune as ft
from bort_core import optim
from bort_core.cli import main
from bort_core.configs import get_config
from bort_core.data import tasks as tk
from bort_core.data.leaderboard import submission_path

pytestmark = pytest.mark.filterwarnings("ignore:no --checkpoint")

FIXTURES = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "tasks")
FIXTURE_TASKS = sorted(n for n, t in tk.TASKS.items() if t.benchmark != "demo")


def _batch(rows=4, length=12, seed=0):
    rng = np.random.RandomState(seed)
    return {"input_ids": rng.randint(4, 4000, (rows, length)).astype(np.int32),
            "valid_length": np.full(rows, length, np.int32),
            "labels": rng.randint(0, 2, rows).astype(np.int64)}


@pytest.mark.parametrize("name", FIXTURE_TASKS)
def test_every_fixture_task_trains_scores_and_writes_test_files(tmp_path, backend, name):
    task = tk.get_task(name)
    scorer = tk.get_task(task.train_task) if task.train_task else task
    options = ft.FinetuneOptions(task=name, data_dir=FIXTURES, config="bort_tiny", max_len=32,
                                 batch_size=4, training_steps=2, output_dir=str(tmp_path))
    result = ft.run_finetune(backend, options, progress=False)
    assert result["framework"] == backend.name
    assert result["history"][-1]["steps"] == 2
    assert all(np.isfinite(h["loss"]) for h in result["history"])
    assert result["dev"], "no dev split scored"
    for split, metrics in result["dev"].items():
        assert sorted(metrics) == sorted(scorer.metrics), split
        assert all(np.isfinite(v) for v in metrics.values()), (split, metrics)
    tests = [s for s in task.splits if s.startswith("test")]
    assert sorted(result["test"]) == sorted(tests)
    for split in tests:
        written = submission_path(task, str(tmp_path), split)
        assert result["test"][split]["file"] == written and os.path.getsize(written) > 0
    assert os.path.isfile(result["model"])


def test_cli_trains_then_reproduces_dev_with_only_inference(tmp_path, framework, capsys):
    def cli(*args):
        return main(["finetune", "--framework", framework, "--task", "demo-single", "--config",
                     "bort_tiny", "--max-len", "24"] + list(args))

    first = str(tmp_path / "train")
    assert cli("--training-steps", "3", "--batch-size", "8", "--output-dir", first,
               "--quiet") == 0
    printed = capsys.readouterr().out
    assert "dev dev: accuracy=" in printed and "demo-single.tsv" in printed
    with open(os.path.join(first, "result.json")) as f:
        trained = json.load(f)
    assert trained["framework"] == framework and trained["history"][-1]["steps"] == 3

    second = str(tmp_path / "infer")
    assert cli("--model-parameters", trained["model"], "--only-inference", "--output-dir",
               second, "--quiet") == 0
    with open(os.path.join(second, "result.json")) as f:
        inferred = json.load(f)
    assert inferred["history"] == [] and inferred["dev"] == trained["dev"]

    # a second run into the used directory is refused, with the way out named
    assert cli("--output-dir", first) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_a_trainer_carries_the_schedule_across_calls(backend):
    model = backend.build(get_config("bort_tiny"), seed=0, num_classes=2)
    hp = ft.make_hparams(1e-3, 0.01, 0.5, 4, 0, total_steps=4)
    trainer = backend.trainer(model, hp)
    rows = trainer.train([_batch()], 2) + trainer.train([_batch(seed=1)], 2)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["lr"] for r in rows] == pytest.approx([optim.finetuning_lr(s, hp) for s in range(4)])
    assert all(r["grad_norm"] > 0 and np.isfinite(r["loss"]) for r in rows)


def test_a_second_run_uses_its_own_hparams(tmp_path, backend):
    """No optimizer state survives a run: a second train_classifier call with another weight
    decay and epsilon trains exactly as a new run on the same weights does (the state once
    hid on the model and kept the first call's settings)."""
    config = get_config("bort_tiny").without_dropout()
    first = ft.make_hparams(1e-3, 0.0, 0.0, 4, 0, total_steps=2)
    second = ft.make_hparams(1e-3, 50.0, 0.0, 4, 0, total_steps=2, epsilon=1e-2)
    model = backend.build(config, seed=0, num_classes=2)
    backend.train_classifier(model, [_batch()], 2, first)
    after_first = str(tmp_path / "first.params")
    backend.save(model, after_first)
    rows = backend.train_classifier(model, [_batch(seed=1)], 2, second)
    trained = str(tmp_path / "second.params")
    backend.save(model, trained)

    def new_run(hparams, name):
        fresh = backend.load(config, after_first, num_classes=2)
        out = backend.trainer(fresh, hparams).train([_batch(seed=1)], 2)
        backend.save(fresh, str(tmp_path / name))
        return out, ckpt.load_params(str(tmp_path / name))

    want_rows, want = new_run(second, "want.params")
    _, stale = new_run(first, "stale.params")
    got = ckpt.load_params(trained)
    assert [r["step"] for r in rows] == [1, 2]
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in want_rows],
                               rtol=1e-6)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert any(not np.allclose(got[n], stale[n]) for n in want)


def test_predict_is_deterministic_float32_logits(backend):
    model = backend.build(get_config("bort_tiny"), seed=0, num_classes=3)
    batches = [_batch(3), _batch(2, seed=1)]
    logits = backend.predict(model, batches)
    assert logits.shape == (5, 3) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits, backend.predict(model, batches))


def test_predict_mlm_gives_vocabulary_logits(backend):
    model = backend.build(get_config("bort_tiny"), seed=0)
    batch = dict(_batch(2), masked_positions=np.array([[1, 3, 0], [2, 5, 7]], np.int32))
    (logits,) = backend.predict_mlm(model, [batch])
    assert logits.shape == (2, 3, 4096) and np.isfinite(logits).all()
