"""bort_core.finetune without a framework: schedule, batching, heads, the loop over a numpy
backend, the release's D1-D5 / F1-F4 bugs, bad input."""
import json
import os
import shutil
import warnings

import numpy as np
import pytest
from conftest import FIXTURES, TINY, FakeBackend, ScriptedBackend, fake_options

from bort_core import checkpoint as ckpt
from bort_core import finetune as ft
from bort_core import optim
from bort_core.cli import build_parser, main
from bort_core.data import tasks as tk
from bort_core.data.leaderboard import submission_path
from bort_core.metrics import f1
from bort_core.tokenizer import load_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:no --checkpoint")


# ------------------------------------------------------------------------------- schedule

def test_learning_rate_warms_up_from_zero_then_decays_to_the_floor():
    hp = ft.make_hparams(1.0, 0, 0.4, 8, 0, total_steps=10)   # 4 warm-up steps
    lrs = [optim.finetuning_lr(s, hp) for s in range(12)]
    assert lrs[0] == 0.0                       # the release's first update has lr 0
    assert lrs[1:5] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[7] == pytest.approx(0.5)
    assert lrs[10] == lrs[11] == optim.LR_FLOOR   # floored, never 0 or negative


def test_schedule_horizon_is_all_epochs_and_training_steps_stop(tmp_path):
    """F3: the release's horizon came from ramp_up_epochs alone and --training_steps did
    not stop training."""
    assert ft.FinetuneOptions(epochs=3, batch_size=1).schedule_steps(10) == 30
    assert ft.FinetuneOptions(epochs=3, batch_size=1, ramp_up_epochs=1).schedule_steps(10) == 10
    assert ft.FinetuneOptions(epochs=3, batch_size=1, training_steps=7).schedule_steps(10) == 7
    result = ft.run_finetune(FakeBackend(), fake_options(
        tmp_path, task="sst-2", data_dir=FIXTURES, epochs=5, batch_size=2, training_steps=3),
        progress=False)
    assert [h["steps"] for h in result["history"]][-1] == 3
    assert len(result["history"]) < 5


def test_bool_flags_read_false_as_false():
    """F4: the release's type=bool flags turned "False" into True."""
    assert ft.str2bool("False") is False and ft.str2bool("true") is True
    args = build_parser().parse_args(["finetune", "--framework", "torch", "--task", "rte",
                                      "--only-inference", "False"])
    assert args.only_inference is False
    args = build_parser().parse_args(["finetune", "--framework", "torch", "--task", "rte",
                                      "--only-inference"])
    assert args.only_inference is True
    with pytest.raises(ValueError):
        ft.str2bool("maybe")


# -------------------------------------------------------------------------------- heads

@pytest.mark.parametrize("scheme", ft.CLASSIFIER_INITS)
def test_classifier_init_schemes(scheme):
    head = ft.classifier_init(TINY, 3, scheme, seed=1, dropout=0.1)
    assert list(head) == ["classifier.1.weight", "classifier.1.bias", "classifier.3.weight",
                          "classifier.3.bias"]
    w, out = head["classifier.1.weight"], head["classifier.3.weight"]
    assert w.shape == (128, 128) and out.shape == (3, 128) and w.dtype == np.float32
    assert not head["classifier.1.bias"].any() and not head["classifier.3.bias"].any()
    if scheme == "uniform":
        assert np.abs(w).max() <= 0.5 and np.abs(w).max() > 0.45
    elif scheme == "gaussian":
        assert abs(w.std() - 0.01) < 1e-3
    elif scheme == "orthogonal":
        np.testing.assert_allclose(w @ w.T, 1.414 ** 2 * np.eye(128), atol=1e-4)
    else:
        bound = np.sqrt(3.0 / 128)
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    again = ft.classifier_init(TINY, 3, scheme, seed=1, dropout=0.1)
    assert all(np.array_equal(head[k], again[k]) for k in head)
    assert list(ft.classifier_init(TINY, 2, scheme, dropout=0.0)) == [
        "classifier.0.weight", "classifier.0.bias", "classifier.1.weight", "classifier.1.bias"]


def test_initial_classifier_takes_the_checkpoint_backbone(tmp_path):
    from bort_core.arch import initial_params

    path = str(tmp_path / "mlm.params")
    params = initial_params(TINY, seed=5)
    ckpt.save_params(path, params)
    out = ft.initial_classifier(TINY, 2, path, "uniform", 0)
    assert np.array_equal(out["bort.word_embed.0.weight"], params["word_embed.0.weight"])
    assert not any(n.startswith("bort.decoder.") for n in out)
    assert "classifier.3.weight" in out


# ------------------------------------------------------------------------------ batches

def test_train_batches_cover_every_row_once_and_repeat_for_a_seed():
    rng = np.random.RandomState(0)
    ids = [rng.randint(4, 100, n).astype(np.int32) for n in rng.randint(3, 40, 37)]
    feats = {"input_ids": ids, "valid_length": np.array([len(a) for a in ids], np.int32),
             "label": rng.randint(0, 2, 37).astype(np.int32)}
    batches = ft.train_batches(feats, 4, seed=3, num_buckets=5)
    assert sum(len(b["valid_length"]) for b in batches) == 37
    rows = sorted(tuple(b["input_ids"][i, :n]) for b in batches
                  for i, n in enumerate(b["valid_length"]))
    assert rows == sorted(tuple(a) for a in ids)
    for b in batches:
        assert b["input_ids"].shape[1] == b["valid_length"].max()
        for row, n in zip(b["input_ids"], b["valid_length"]):
            assert (row[n:] == 1).all()             # the pad id
        assert b["labels"].dtype == np.int64
    again = ft.train_batches(feats, 4, seed=3, num_buckets=5)
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    other = ft.train_batches(feats, 4, seed=4, num_buckets=5)
    assert any(not np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, other))


# ------------------------------------------------------------------- metrics and selection

class _Fixed(FakeBackend):
    def __init__(self, logits):
        self.logits = logits

    def predict(self, model, batches):
        return self.logits


def test_f1_is_computed_over_the_whole_split():
    """F1: the release averaged F1 over batches."""
    task = tk.get_task("mrpc")
    examples = [tk.Example(("a", "b"), label) for label in "1100100011"]
    pred = np.array([1, 0, 0, 0, 1, 0, 0, 1, 1, 1])
    logits = np.stack([1 - pred, pred], 1).astype(np.float32)
    feats = {"input_ids": [np.array([0, 5, 2])] * 10, "valid_length": np.full(10, 3, np.int32)}
    scored = ft.score_split(_Fixed(logits), None, task, ft.TaskData("dev", examples, feats), 2)
    gold = np.array([int(c) for c in "1100100011"])
    assert scored["metrics"]["f1"] == pytest.approx(f1(pred, gold))
    per_batch = np.mean([f1(pred[i:i + 2], gold[i:i + 2]) for i in range(0, 10, 2)])
    assert scored["metrics"]["f1"] != pytest.approx(per_batch)


def test_best_epoch_uses_every_dev_segment():
    """F2: the release selected on the last dev segment (MNLI mismatched) only."""
    task = tk.get_task("mnli")
    assert ft.selection_score(task, [{"accuracy": 0.9}, {"accuracy": 0.5}]) == pytest.approx(0.7)


def test_early_stopping_and_best_epoch_reload(tmp_path):
    result = ft.run_finetune(ScriptedBackend(), fake_options(tmp_path, task="sst-2", data_dir=FIXTURES,
                                                   epochs=6, early_stop=2), progress=False)
    assert [h["score"] for h in result["history"]] == [1.0, 0.0, 0.0]   # stopped after 2 bad
    assert result["dev"]["dev"]["accuracy"] == 1.0                      # epoch 1 reloaded
    for epoch in (1, 2, 3):
        assert os.path.exists(tmp_path / "out" / ("model_bort_sst-2_%d.params" % epoch))


# ---------------------------------------------------------------------------- the loop

def test_run_finetune_learns_and_writes_outputs(tmp_path):
    # typos make rare BPE pieces, which token counts see (word order, demo-single's cue, they
    # do not): 0.6525 dev accuracy after 4 epochs
    opts = fake_options(tmp_path, task="demo-pair", epochs=4, batch_size=32, lr=50.0,
                    warmup_ratio=0.1)
    with pytest.warns(UserWarning, match="RANDOMLY"):
        result = ft.run_finetune(FakeBackend(), opts, progress=False)
    assert result["dev"]["dev"]["accuracy"] > 0.6      # a linear bag of words learns the task
    path = submission_path(tk.get_task("demo-pair"), opts.output_dir)
    lines = open(path).read().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 401
    saved = json.load(open(os.path.join(opts.output_dir, "result.json")))
    assert saved["dev"] == result["dev"] and len(saved["history"]) == 4
    with pytest.raises(ValueError, match="--overwrite"):
        ft.run_finetune(FakeBackend(), opts, progress=False)


def test_only_inference_reuses_a_finetuned_model(tmp_path):
    first = ft.run_finetune(FakeBackend(), fake_options(tmp_path, task="demo-regression", epochs=1,
                                                    batch_size=32, lr=2.0), progress=False)
    again = ft.run_finetune(FakeBackend(), fake_options(
        tmp_path, task="demo-regression", model_parameters=first["model"], only_inference=True,
        output_dir=str(tmp_path / "inference")), progress=False)
    assert again["history"] == []
    assert again["dev"]["dev"] == pytest.approx(first["dev"]["dev"])
    with pytest.raises(ValueError, match="--model-parameters"):
        ft.run_finetune(FakeBackend(), fake_options(tmp_path, task="demo-single", only_inference=True,
                                                output_dir=str(tmp_path / "x")), progress=False)
    assert not os.path.exists(tmp_path / "x")        # refused before anything is written


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_a_diverging_run_stops_and_writes_no_result(tmp_path):
    opts = fake_options(tmp_path, task="demo-regression", lr=1e300, batch_size=32)
    with pytest.raises(ft.NonFiniteError, match="fine-tuning step [0-9]+: the loss is"):
        ft.run_finetune(FakeBackend(), opts, progress=False)
    assert os.listdir(opts.output_dir) == []     # no epoch model, best model, test file, result


def test_a_non_finite_score_in_the_data_stops_before_any_output(tmp_path):
    data = tmp_path / "data" / "demo-regression"
    shutil.copytree(os.path.join(tk.default_data_dir(tk.get_task("demo-regression")),
                                 "demo-regression"), str(data))
    lines = (data / "dev.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[5] = "\t".join(lines[5].split("\t")[:-1] + ["inf\n"])
    (data / "dev.tsv").write_text("".join(lines), encoding="utf-8")
    opts = fake_options(tmp_path, task="demo-regression", data_dir=str(tmp_path / "data"))
    with pytest.raises(ValueError, match=r"dev.tsv:6: score 'inf' is not a finite number"):
        ft.run_finetune(FakeBackend(), opts, progress=False)
    assert not os.path.exists(opts.output_dir)


def test_diagnostics_train_on_their_task(tmp_path):
    """D5: the release raised on AX-b/AX-g training and crashed computing gender parity."""
    for name, metrics in (("ax-g", {"accuracy", "gender_parity"}), ("ax-b", {"mcc"})):
        result = ft.run_finetune(FakeBackend(), fake_options(
            tmp_path, task=name, data_dir=FIXTURES, training_steps=2, batch_size=2,
            output_dir=str(tmp_path / name)), progress=False)
        assert set(result["dev"]) == {"dev"} and result["history"]       # superglue-rte's dev
        assert set(result["test"]["test"]["metrics"]) == metrics
        assert os.path.exists(result["test"]["test"]["file"])


# ------------------------------------------------------------------- the release's D bugs

@pytest.mark.parametrize("name", ["boolq", "cb", "copa", "multirc", "record", "superglue-rte",
                                  "wic", "wsc"])
def test_every_superglue_task_loads(name):
    """D1: every SuperGLUE task crashed on load in the release."""
    data = ft.load_task(tk.get_task(name), FIXTURES, load_tokenizer(), 64)
    assert all(data[k] for k in ("train", "dev", "test"))
    for split in data["train"] + data["dev"]:
        assert "label" in split.features


def test_multirc_text_is_a_string():
    """D2: the release passed MultiRC's passage as a list."""
    data = tk.read_split(tk.get_task("multirc"), "train", FIXTURES)
    assert all(isinstance(t, str) for e in data.examples for t in e.texts)
    assert not any("<b>" in e.texts[0] for e in data.examples)


def test_cb_fillers_are_removed():
    """D3: the release's filler removal was a no-op."""
    out = tk._cb_text("Uh, it rained. um, I mean, yes")
    assert out.split() == ["it", "rained.", "yes"]


def test_record_dev_keeps_every_candidate_and_scores_per_query():
    """D4: ReCoRD dev/answer bookkeeping was broken in the release."""
    task = tk.get_task("record")
    dev = tk.read_split(task, "dev", FIXTURES).examples
    queries = {e.group for e in dev}
    assert len(dev) > len(queries)                 # several candidates per query
    scores = np.array([1.0 if e.label == "1" else 0.0 for e in dev])
    from bort_core.metrics import evaluate
    assert evaluate(task, dev, scores > 0, scores)["record_em"] == 1.0
    assert evaluate(task, dev, scores > 0, -scores)["record_em"] < 1.0


# ---------------------------------------------------------------------------- bad input

def test_bad_input_messages(tmp_path, capsys):
    with pytest.raises(KeyError, match="unknown task"):
        ft.run_finetune(FakeBackend(), fake_options(tmp_path, task="nope"), progress=False)
    with pytest.raises(FileNotFoundError, match="train.tsv"):
        ft.run_finetune(FakeBackend(), fake_options(tmp_path, task="sst-2",
                                                data_dir=str(tmp_path)), progress=False)
    bad = tmp_path / "SST-2"
    bad.mkdir()
    for split in ("train", "dev", "test"):
        (bad / (split + ".tsv")).write_text("sentence\tlabel\nfine\t7\n")
    with pytest.raises(ValueError, match="label '7'"):
        ft.run_finetune(FakeBackend(), fake_options(tmp_path, task="sst-2", data_dir=str(tmp_path)),
                        progress=False)
    big = tmp_path / "big.params"
    from bort_core.arch import initial_params
    ckpt.save_params(str(big), initial_params(TINY.replace(vocab_size=5000)))
    with pytest.raises(ValueError, match="vocabulary"):
        ft.run_finetune(FakeBackend(), fake_options(tmp_path, task="demo-single",
                                                checkpoint=str(big)), progress=False)
    assert not os.path.exists(tmp_path / "out")    # nothing written
    assert main(["finetune", "--framework", "torch", "--task", "nope"]) == 2
    assert "unknown task" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--batch-size"):
        ft.FinetuneOptions(batch_size=0)
    with pytest.raises(ValueError, match="--classifier-init"):
        ft.FinetuneOptions(classifier_init="zeros")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ft.FinetuneOptions()
