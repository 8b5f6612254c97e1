"""bort_gluon.finetune through the gluon Backend: each task of the hand-made fixtures runs end to
end (train, dev metric, test file), the CLI (train, then --only-inference), the float32-only
refusal, the schedule and weight-decay mask kept on the model, MLM logits."""
import json
import os

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
pytestmark = [pytest.mark.gluon, pytest.mark.filterwarnings("ignore:no --checkpoint")]

from bort_core import finetune as ft  # noqa: E402
from bort_core.backend import get_backend  # noqa: E402
from bort_core.cli import main  # noqa: E402
from bort_core.configs import get_config  # noqa: E402
from bort_core.data import tasks as tk  # noqa: E402
from bort_core.data.leaderboard import submission_path  # noqa: E402
from bort_gluon import finetune as gf  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "tasks")
TASK_NAMES = sorted(n for n, t in tk.TASKS.items() if t.benchmark != "demo")


@pytest.fixture(scope="module")
def gluon():
    return get_backend("gluon")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_fixture_task_trains_scores_and_writes_test_files(tmp_path, gluon, name):
    task = tk.get_task(name)
    scorer = tk.get_task(task.train_task) if task.train_task else task
    options = ft.FinetuneOptions(task=name, data_dir=FIXTURES, config="bort_tiny", max_len=32,
                                 batch_size=4, training_steps=2, output_dir=str(tmp_path))
    result = ft.run_finetune(gluon, options, progress=False)
    assert result["framework"] == "gluon"
    assert [h["steps"] for h in result["history"]][-1] == 2
    assert all(np.isfinite(h["loss"]) for h in result["history"])
    assert result["dev"], "no dev split scored"
    for split, metrics in result["dev"].items():
        assert sorted(metrics) == sorted(scorer.metrics), split
        assert all(np.isfinite(v) for v in metrics.values()), (split, metrics)
    tests = [s for s in task.splits if s.startswith("test")]
    assert sorted(result["test"]) == sorted(tests)
    for split in tests:
        written = submission_path(task, str(tmp_path), split)
        assert result["test"][split]["file"] == written
        assert os.path.getsize(written) > 0
    assert os.path.isfile(result["model"])


def _cli(*args):
    return main(["finetune", "--framework", "gluon", "--task", "demo-single", "--config",
                 "bort_tiny", "--max-len", "24"] + list(args))


def test_cli_trains_then_reproduces_dev_with_only_inference(tmp_path, capsys):
    first = str(tmp_path / "train")
    assert _cli("--training-steps", "3", "--batch-size", "8", "--output-dir", first,
                "--quiet") == 0
    printed = capsys.readouterr().out
    assert "dev dev: accuracy=" in printed and "demo-single.tsv" in printed
    with open(os.path.join(first, "result.json")) as f:
        trained = json.load(f)
    assert trained["framework"] == "gluon" and trained["history"][-1]["steps"] == 3

    second = str(tmp_path / "infer")
    assert _cli("--model-parameters", trained["model"], "--only-inference", "--output-dir",
                second, "--quiet") == 0
    with open(os.path.join(second, "result.json")) as f:
        inferred = json.load(f)
    assert inferred["history"] == []
    assert inferred["dev"] == trained["dev"]

    # a second run into the used directory is refused, with the way out named
    assert _cli("--output-dir", first) == 2
    assert "--overwrite" in capsys.readouterr().err


def _batch(rows=4, length=12, seed=0):
    rng = np.random.RandomState(seed)
    return {"input_ids": rng.randint(4, 4000, (rows, length)).astype(np.int32),
            "valid_length": np.full(rows, length, np.int32),
            "labels": rng.randint(0, 2, rows).astype(np.int64)}


def test_float16_is_refused_with_a_pointer_to_torch(gluon):
    model = gluon.build(get_config("bort_tiny"), seed=0, num_classes=2)
    hp = ft.make_hparams(1e-3, 0.0, 0.0, 4, 0, total_steps=1, dtype="float16")
    with pytest.raises(ValueError, match="--framework torch"):
        gf.train_classifier(model, [_batch()], 1, hp)
    assert getattr(model, "_bort_finetune", None) is None


def test_cli_float16_fails_cleanly_and_leaves_the_directory_usable(tmp_path, capsys):
    out = str(tmp_path / "fp16")
    assert _cli("--training-steps", "1", "--dtype", "float16", "--output-dir", out,
                "--quiet") == 2
    assert "--framework torch" in capsys.readouterr().err
    assert os.listdir(out) == []


def test_schedule_and_weight_decay_mask_live_on_the_model(gluon):
    model = gluon.build(get_config("bort_tiny"), seed=0, num_classes=2)
    hp = ft.make_hparams(1e-3, 0.01, 0.5, 4, 0, total_steps=4)
    rows = gf.train_classifier(model, [_batch()], 2, hp)
    rows += gf.train_classifier(model, [_batch(seed=1)], 2, hp)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["lr"] for r in rows] == pytest.approx([ft.learning_rate(s, hp) for s in range(4)])
    assert all(r["grad_norm"] > 0 and np.isfinite(r["loss"]) for r in rows)
    mults = {n: p.wd_mult for n, p in model._bort_finetune.named.items()}
    assert {m for n, m in mults.items() if ft.decays(n)} == {1.0}
    assert {m for n, m in mults.items() if not ft.decays(n)} == {0.0}


def test_hybridized_training_is_bit_identical_to_the_imperative_run(gluon, monkeypatch):
    """The cached graph (unpadded path, dropout on) draws and computes exactly what the
    imperative operators do: same rows, weights and logits."""
    config = get_config("bort_tiny").replace(dropout=0.1, embed_dropout=0.1)
    batches = [dict(_batch(seed=s), valid_length=np.array([12, 5, 9, 1], np.int32))
               for s in range(3)]
    hp = ft.make_hparams(1e-3, 0.01, 0.3, 4, 0, total_steps=3)
    runs = []
    for hybridize in (True, False):
        if not hybridize:
            monkeypatch.setattr(gf, "_hybridized", lambda model: model)
        model = gluon.build(config, seed=0, num_classes=2)
        rows = gf.train_classifier(model, batches, 3, hp)
        runs.append((model._active, rows, gf.predict(model, batches),
                     {n: p.data().asnumpy() for n, p in model._bort_finetune.named.items()}))
    (active, rows, logits, params), (plain, want_rows, want_logits, want_params) = runs
    assert active and not plain
    assert rows == want_rows
    np.testing.assert_array_equal(logits, want_logits)
    for name, value in want_params.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)


def test_predict_is_deterministic_float32_logits(gluon):
    model = gluon.build(get_config("bort_tiny"), seed=0, num_classes=3)
    batches = [_batch(3), _batch(2, seed=1)]
    logits = gf.predict(model, batches)
    assert logits.shape == (5, 3) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits, gf.predict(model, batches))


def test_predict_mlm_gives_vocabulary_logits(gluon):
    model = gluon.build(get_config("bort_tiny"), seed=0)
    batch = dict(_batch(2), masked_positions=np.array([[1, 3, 0], [2, 5, 7]], np.int32))
    (logits,) = gf.predict_mlm(model, [batch])
    assert logits.shape == (2, 3, 4096) and np.isfinite(logits).all()
    assert model._active   # a cached graph, giving the imperative operators' logits
    imperative = gluon.build(get_config("bort_tiny"), seed=0)
    _, want = imperative(*(mx.nd.array(batch[k]) for k in ("input_ids", "valid_length",
                                                            "masked_positions")))
    np.testing.assert_array_equal(logits, want.asnumpy())
