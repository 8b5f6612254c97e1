"""`bort agora` end to end on each framework's real Backend with point generation: three rounds
over a 3-set grid, the mlm (the real MLM head), dropout and swap generators, every added point
labelled with the reference model's prediction, pruning, and the outputs."""
import json
import os
import re
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("mxnet")
pytestmark = [pytest.mark.parity, pytest.mark.slow, pytest.mark.e2e,
              pytest.mark.filterwarnings("ignore:the reference model")]

from bort_core import agora  # noqa: E402
from bort_core import backend as bk  # noqa: E402
from bort_core import checkpoint as ckpt  # noqa: E402
from bort_core.arch import initial_params  # noqa: E402
from bort_core.cli import main  # noqa: E402
from bort_core.commands import finetune as commands  # noqa: E402
from bort_core.configs import get_config  # noqa: E402
from bort_core.data.demo import TASKS_DIR  # noqa: E402
from bort_core.model_params import is_classifier  # noqa: E402

N_TRAIN, N_DEV, N_TEST = 32, 12, 4
COMMON = ["--task", "demo-single", "--config", "bort_tiny",
          "--max-len", "32", "--epochs", "1", "--batch-size", "8", "--quiet"]


def _rows(batches):
    return [(tuple(ids[:n].tolist()), int(y)) for b in batches
            for ids, n, y in zip(b["input_ids"], b["valid_length"], b["labels"])]


class Recorder:
    """The real backend, recording each fine-tuning run's training rows and every prediction
    of the reference model (the one loaded from `reference`)."""

    def __init__(self, inner, reference):
        self.inner, self.reference, self.refs = inner, reference, []
        self.runs, self.ref_labels, self.mlm_calls = [], {}, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def load(self, config, path, num_classes=None):
        model = self.inner.load(config, path, num_classes)
        if path == self.reference:
            self.refs.append(model)
        return model

    def trainer(self, model, hparams):
        trainer = self.inner.trainer(model, hparams)
        train = trainer.train

        def recorded(batches, steps):
            self.runs.append(_rows(batches))
            return train(batches, steps)

        trainer.train = recorded
        return trainer

    def predict_mlm(self, model, batches):
        self.mlm_calls.append(batches)
        return self.inner.predict_mlm(model, batches)

    def predict(self, model, batches):
        logits = self.inner.predict(model, batches)
        if any(model is r for r in self.refs):
            seqs = [tuple(ids[:n].tolist()) for b in batches
                    for ids, n in zip(b["input_ids"], b["valid_length"])]
            self.ref_labels.update(zip(seqs, np.argmax(logits, 1).tolist()))
        return logits


def _setup(root, framework):
    """A small demo-single copy, a pretrained checkpoint with its MLM head, a reference."""
    os.makedirs(root / "data" / "demo-single")
    for split, n in (("train", N_TRAIN), ("dev", N_DEV), ("test", N_TEST)):
        with open(os.path.join(TASKS_DIR, "demo-single", split + ".tsv")) as f:
            lines = f.readlines()[:n + 1]
        (root / "data" / "demo-single" / (split + ".tsv")).write_text("".join(lines))
    pre = str(root / "pretrained.params")
    ckpt.save_params(pre, initial_params(get_config("bort_tiny"), seed=0))
    data = ["--data-dir", str(root / "data")]
    assert main(["finetune", "--framework", framework] + COMMON + data + ["--checkpoint", pre, "--lr", "1e-3",
                                                "--output-dir", str(root / "ref")]) == 0
    ref = json.load(open(root / "ref" / "result.json"))["model"]
    (root / "grid.json").write_text(json.dumps({"seed": [0, 1, 2], "lr": [1e-3]}))
    return root, data + ["--checkpoint", pre, "--reference-checkpoint", ref,
                         "--grid", str(root / "grid.json")], ref


def check_agora_end_to_end(framework, root, monkeypatch):
    """Three rounds over a 3-set grid with the mlm (the real MLM head), dropout and swap
    generators: pruning, points near each dev mistake labelled with the reference model's
    prediction, what each run trained on, and the outputs."""
    root, args, ref = _setup(root, framework)
    real = bk.get_backend(framework)
    rec = Recorder(real, ref)
    monkeypatch.setattr(commands, "get_backend", lambda name: rec)
    out = root / "out"
    assert main(["agora", "--framework", framework] + COMMON + args + ["--generator", "mlm,dropout,swap",
                                             "--points-per-mistake", "3",
                                             "--output-dir", str(out)]) == 0
    log = json.load(open(out / "agora_log.json"))
    rounds = log["rounds"]

    # pruning: 3 -> ceil(1.5) = 2 -> 1 set, each survivor among the best of the last round
    assert [r["sets"] for r in rounds][0] == [0, 1, 2] and [len(r["sets"]) for r in rounds] == [3, 2, 1]
    for before, after in zip(rounds, rounds[1:]):
        kept = agora.prune([before["scores"][str(s)] for s in before["sets"]], 0.5)
        assert after["sets"] == [before["sets"][i] for i in kept]
    # points near every dev mistake of rounds 1 and 2 (3 each, one per generator), none after
    for r in rounds:
        assert r["dev_mistakes"] == round(N_DEV * (1 - r["best_score"]))
    assert rounds[0]["dev_mistakes"] > 0 and rounds[1]["dev_mistakes"] > 0
    assert [r["points_added"] for r in rounds] == [3 * rounds[0]["dev_mistakes"],
                                                   3 * rounds[1]["dev_mistakes"], 0]
    added = np.cumsum([0] + [r["points_added"] for r in rounds])
    assert [r["train_size"] for r in rounds] == (N_TRAIN + added[1:]).tolist()
    # the real MLM head resampled a third of the points, at most --dev-batch-size (8) a call
    sizes = [len(b[0]["valid_length"]) for b in rec.mlm_calls]
    assert sum(sizes) == rounds[0]["dev_mistakes"] + rounds[1]["dev_mistakes"]
    assert max(sizes) <= 8 and all(len(b) == 1 for b in rec.mlm_calls)

    # what each fine-tuning run trained on: the original train, then + the points, each
    # labelled with the reference model's prediction on that very sequence
    assert [len(rows) for rows in rec.runs] == [N_TRAIN] * 3 + [N_TRAIN + added[1]] * 2 + [
        N_TRAIN + added[2]]
    original = Counter(rec.runs[0])
    assert all(Counter(rows) == original for rows in rec.runs[:3])
    for run, total in ((3, added[1]), (5, added[2])):
        new = Counter(rec.runs[run]) - original
        assert sum(new.values()) == total
        assert all(label == rec.ref_labels[seq] for seq, label in new)
        assert len({len(seq) for seq, _ in new}) > 1                 # dropout shortened some

    # outputs
    result = json.load(open(out / "result.json"))
    model = out / "model_bort_demo-single_agora.params"
    assert result["model"] == str(model) and result["framework"] == framework
    assert result["rounds"] == 3 and result["runs"] == 6
    assert result["best"]["score"] == max(r["best_score"] for r in rounds)
    assert result["dev"]["dev"]["accuracy"] == pytest.approx(result["best"]["score"])
    assert len(open(result["test"]["test"]["file"]).read().splitlines()) == N_TEST + 1
    table = [line for line in open(out / "agora_log.md") if re.match(r"\| \d", line)]
    assert len(table) == 3
    assert is_classifier(ckpt.load_params(str(model)))
    assert not [p for p in os.listdir(out) if p.startswith("agora-")]



@pytest.mark.parametrize("framework", ["gluon", "torch"])
def test_agora_generates_reference_labelled_points_and_prunes(framework, tmp_path, monkeypatch):
    check_agora_end_to_end(framework, tmp_path, monkeypatch)
