"""bort_torch.finetune through the torch Backend: every task end to end on the hand-made
fixtures (train, dev metric, test file), the CLI, float16 clipping (F5), MLM logits."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore:no --checkpoint")]

from bort_core import finetune as ft  # noqa: E402
from bort_core.backend import get_backend  # noqa: E402
from bort_core.cli import main  # noqa: E402
from bort_core.configs import get_config  # noqa: E402
from bort_core.data import tasks as tk  # noqa: E402
from bort_core.data.leaderboard import submission_path  # noqa: E402
from bort_torch import finetune as tf  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "tasks")
FIXTURE_TASKS = [n for n, t in tk.TASKS.items() if t.benchmark != "demo"]


@pytest.mark.parametrize("name", FIXTURE_TASKS)
def test_every_task_end_to_end(tmp_path, name):
    task = tk.get_task(name)
    trainer = tk.get_task(task.train_task) if task.train_task else task
    opts = ft.FinetuneOptions(task=name, data_dir=FIXTURES, config="bort_tiny", max_len=32,
                              batch_size=4, training_steps=2, output_dir=str(tmp_path))
    result = ft.run_finetune(get_backend("torch"), opts, progress=False)
    assert result["history"][-1]["steps"] == 2
    assert result["dev"] and all(set(m) == set(trainer.metrics) for m in result["dev"].values())
    assert all(np.isfinite(v) for m in result["dev"].values() for v in m.values())
    for split in (s for s in task.splits if s.startswith("test")):
        path = submission_path(task, str(tmp_path), split)
        assert result["test"][split]["file"] == path and os.path.getsize(path) > 0


def test_cli_finetune_then_only_inference(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["finetune", "--framework", "torch", "--task", "demo-single", "--config",
                 "bort_tiny", "--max-len", "24", "--training-steps", "3", "--batch-size", "8",
                 "--output-dir", out, "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "dev dev: accuracy=" in text and "demo-single.tsv" in text
    result = json.load(open(os.path.join(out, "result.json")))
    again = str(tmp_path / "again")
    assert main(["finetune", "--framework", "torch", "--task", "demo-single", "--config",
                 "bort_tiny", "--max-len", "24", "--model-parameters", result["model"],
                 "--only-inference", "--output-dir", again, "--quiet"]) == 0
    assert json.load(open(os.path.join(again, "result.json")))["dev"] == result["dev"]
    assert main(["finetune", "--framework", "torch", "--task", "demo-single", "--config",
                 "bort_tiny", "--output-dir", out]) == 2
    assert "--overwrite" in capsys.readouterr().err


def _batch(n=4, length=12, seed=0):
    rng = np.random.RandomState(seed)
    return {"input_ids": rng.randint(4, 4000, (n, length)).astype(np.int32),
            "valid_length": np.full(n, length, np.int32),
            "labels": rng.randint(0, 2, n).astype(np.int64)}


def test_float16_clips_the_unscaled_gradient():
    """F5: the release clipped the loss-scaled gradients under AMP."""
    backend = get_backend("torch")
    config = get_config("bort_tiny").without_dropout()
    norms = {}
    for dtype in ("float32", "float16"):
        model = backend.build(config, seed=0, num_classes=2)
        hp = ft.make_hparams(1e-3, 0.0, 0.0, 4, 0, total_steps=2, clip_norm=1e-3, dtype=dtype)
        rows = tf.train_classifier(model, [_batch()], 1, hp)
        norms[dtype] = rows[0]["grad_norm"]
        assert model._bort_finetune.scaler.is_enabled() == (dtype == "float16")
    assert norms["float16"] == pytest.approx(norms["float32"], rel=0.05)


def test_state_carries_the_schedule_across_calls():
    backend = get_backend("torch")
    model = backend.build(get_config("bort_tiny"), seed=0, num_classes=2)
    hp = ft.make_hparams(1e-3, 0.01, 0.5, 4, 0, total_steps=4)
    rows = tf.train_classifier(model, [_batch()], 2, hp) + tf.train_classifier(
        model, [_batch(seed=1)], 2, hp)
    assert [r["lr"] for r in rows] == pytest.approx([ft.learning_rate(s, hp) for s in range(4)])
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_predict_mlm_gives_vocabulary_logits():
    backend = get_backend("torch")
    model = backend.build(get_config("bort_tiny"), seed=0)
    batch = dict(_batch(2), masked_positions=np.array([[1, 3, 0], [2, 5, 7]], np.int32))
    (logits,) = tf.predict_mlm(model, [batch])
    assert logits.shape == (2, 3, 4096) and np.isfinite(logits).all()
