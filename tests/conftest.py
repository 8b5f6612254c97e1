"""Shared test machinery: the installed frameworks as a `backend` fixture (twin tests are written
once and run per framework; a framework that is not installed is skipped, not an error);
`missing_oracle`, the one rule for a missing legacy oracle (skip; under CI=true, fail), and the
oracle's parts that go through it (`legacy_python`, `legacy_dump`); and the numpy fakes behind
the Backend protocol that the framework-free tests share (`from conftest import FakeBackend`)."""
import importlib.util
import os
import sys

import numpy as np
import pytest

from bort_core import checkpoint as ckpt
from bort_core import finetune as ft
from bort_core import optim
from bort_core.configs import get_config
from parity import fidelity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# pytest put this folder on sys.path to import this file. Left there, its `torch` folder (the
# torch twin's tests) is importable as a namespace package named `torch` wherever PyTorch is not
# installed, which fools tensorboardX and the `framework` fixture. Test modules still reach this
# file as `conftest` (sys.modules).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

# the modules each framework package needs (what `pip install -e .[gluon|torch]` brings)
FRAMEWORK_MODULES = {"gluon": ("mxnet", "gluonnlp"), "torch": ("torch",)}


def installed(framework: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in FRAMEWORK_MODULES[framework])


@pytest.fixture(scope="session", params=[pytest.param(name, marks=getattr(pytest.mark, name))
                                         for name in FRAMEWORK_MODULES])
def framework(request):
    """"gluon" or "torch": each installed framework in turn."""
    if not installed(request.param):
        pytest.skip("%s is not installed" % " + ".join(FRAMEWORK_MODULES[request.param]))
    return request.param


@pytest.fixture(scope="session")
def backend(framework):
    """`bort_<framework>.backend.Backend()` for each installed framework."""
    from bort_core.backend import get_backend

    return get_backend(framework)


@pytest.fixture(scope="session")
def missing_oracle():
    """Call with the reason when the legacy oracle (its interpreter or its dumps) is absent:
    the test skips, except under CI=true, where it fails, so a green CI run cannot leave out
    the checks against the 2020 stack."""
    def missing(reason: str):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("%s (CI=true: the legacy oracle is required)" % reason)
        pytest.skip(reason)
    return missing


@pytest.fixture(scope="session")
def legacy_python(missing_oracle):
    """The legacy oracle's interpreter (Python 3.7, numpy 1.16.2, mxnet 1.5.0, gluonnlp 0.8.3),
    found as `python -m parity fidelity` finds it."""
    python = fidelity.find_legacy_python()
    if not python or not os.path.exists(python):
        missing_oracle("no legacy interpreter (%s): build it with `tox -e legacy` or set "
                       "BORT_LEGACY_PYTHON" % (python or fidelity.LEGACY_DEFAULT))
    return python


@pytest.fixture(scope="session")
def legacy_dump(missing_oracle):
    """`legacy_dump(config)`: artifacts/legacy/<config>/, the oracle's checkpoint and taps."""
    def folder(config: str) -> str:
        path = os.path.join(REPO, "artifacts", "legacy", config)
        if not os.path.isdir(path):
            missing_oracle("no legacy oracle dump in %s: make it with `tox -e legacy` "
                           "(scripts/run_legacy_oracle.sh on the 2020 stack)" % path)
        return path
    return folder


# ------------------------------------------------------------------ fakes behind the Backend

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tasks")


TINY = get_config("bort_tiny")
def fake_options(tmp_path, **kw):
    """FinetuneOptions for the fakes: bort_tiny, short sequences, a learning rate they learn at."""
    kw.setdefault("config", "bort_tiny")
    kw.setdefault("max_len", 32)
    kw.setdefault("lr", 5.0)
    kw.setdefault("weight_decay", 0.0)
    kw.setdefault("output_dir", str(tmp_path / "out"))
    return ft.FinetuneOptions(**kw)


def _bag(batch, vocab):
    x = np.zeros((len(batch["valid_length"]), vocab))
    for i, (ids, n) in enumerate(zip(batch["input_ids"], batch["valid_length"])):
        np.add.at(x[i], ids[:n], 1.0 / n)
    return x


class FakeTrainer:
    """One run on a FakeBackend: the step count; the steps themselves are the backend's `fit`."""

    def __init__(self, backend, model, hparams):
        self.backend, self.model, self.hparams, self.step = backend, model, hparams, 0

    def train(self, batches, steps):
        return self.backend.fit(self, batches, steps)


class FakeBackend:
    """A bag-of-token-ids linear model in numpy behind the Backend protocol: it really learns,
    saves and loads classifier-shaped .params files, and follows the fine-tuning schedule."""
    name = "fake"

    def load(self, config, path, num_classes=None):
        params = ckpt.load_params(path)
        w = params.get("classifier.0.weight")
        shape = (num_classes, config.vocab_size)
        w = np.array(w, np.float64) if w is not None and w.shape == shape else np.zeros(shape)
        return {"W": w, "vocab": config.vocab_size}

    def save(self, model, path):
        c, v = model["W"].shape
        ckpt.save_params(path, {"bort.word_embed.0.weight": np.zeros((v, 1), np.float32),
                                "classifier.0.weight": model["W"].astype(np.float32),
                                "classifier.1.weight": np.zeros((c, 1), np.float32)})

    def trainer(self, model, hparams):
        return FakeTrainer(self, model, hparams)

    def train_classifier(self, model, batches, steps, hparams):
        return self.trainer(model, hparams).train(batches, steps)

    def fit(self, trainer, batches, steps):
        """`steps` of softmax (or least-squares) SGD on the bag features."""
        model, rows = trainer.model, []
        for batch in ft.take_steps(batches, steps):
            lr = optim.finetuning_lr(trainer.step, trainer.hparams)
            x, y = _bag(batch, model["vocab"]), batch["labels"]
            logits = x @ model["W"].T
            if model["W"].shape[0] == 1:
                err = logits[:, 0] - y
                loss, grad = 0.5 * float((err ** 2).mean()), err[:, None]
            else:
                p = np.exp(logits - logits.max(1, keepdims=True))
                p /= p.sum(1, keepdims=True)
                loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
                grad = p.copy()
                grad[np.arange(len(y)), y] -= 1
            step = grad.T @ x / len(y)
            model["W"] -= lr * step
            trainer.step += 1
            rows.append(ft.step_row(trainer.step, loss, lr, float(np.linalg.norm(step)),
                                       trainer.hparams))
        return rows

    def predict(self, model, batches):
        return np.concatenate([_bag(b, model["vocab"]) @ model["W"].T for b in batches])


class ScriptedBackend(FakeBackend):
    """Dev accuracy 1 after epoch 1, 0 afterwards; the model remembers its epoch."""

    def load(self, config, path, num_classes=None):
        model = super().load(config, path, num_classes)
        model["epoch"] = int(ckpt.load_params(path).get("classifier.1.weight", [[0]])[0][0])
        return model

    def save(self, model, path):
        ckpt.save_params(path, {"bort.word_embed.0.weight": np.zeros((4096, 1), np.float32),
                                "classifier.0.weight": model["W"].astype(np.float32),
                                "classifier.1.weight": np.full((2, 1), model.get("epoch", 0),
                                                               np.float32)})

    def fit(self, trainer, batches, steps):
        trainer.model["epoch"] = trainer.model.get("epoch", 0) + 1
        return super().fit(trainer, batches, steps)

    def predict(self, model, batches):
        n = sum(len(b["valid_length"]) for b in batches)
        gold = np.concatenate([b["labels"] for b in batches]) if "labels" in batches[0] \
            else np.zeros(n, int)
        good = gold if model.get("epoch") == 1 else 1 - gold
        return np.stack([1 - good, good], 1).astype(np.float32)
