"""Fine-tuning parity: 30 steps from the same checkpoint and batches, dropout off, in gluon and
torch: per-step loss relative difference <= 1e-5 and identical dev predictions."""
import numpy as np
import pytest

pytest.importorskip("mxnet")
pytest.importorskip("torch")
pytestmark = pytest.mark.parity

from bort_core import checkpoint as ckpt  # noqa: E402
from bort_core import finetune as ft  # noqa: E402
from bort_core.configs import get_config  # noqa: E402
from bort_core.data.tasks import get_task  # noqa: E402
from bort_core.tokenizer import load_tokenizer  # noqa: E402
from bort_gluon.backend import Backend as GluonBackend  # noqa: E402
from bort_torch.backend import Backend as TorchBackend  # noqa: E402

STEPS = 30


def _run(backend, path, config, batches, hparams, dev):
    model = backend.load(config, path, 2)
    rows = backend.train_classifier(model, batches, STEPS, hparams)
    return np.array([r["loss"] for r in rows]), backend.predict(model, dev)


@pytest.mark.parametrize("fast_attention", [False, True])
def test_thirty_steps_agree(tmp_path, fast_attention):
    from bort_torch.model import set_fast_paths

    task = get_task("demo-pair")
    config = get_config("bort_tiny").without_dropout()
    data = ft.load_task(task, None, load_tokenizer(), 64)
    path = str(tmp_path / "init.params")
    # gaussian head: the release's uniform(0.5) head starts at loss ~5, where float32 noise
    # between the frameworks reaches 2e-4 relative within 30 steps
    ckpt.save_params(path, ft.initial_classifier(config, 2, None, "gaussian", 0))
    batches = ft.train_batches(data["train"][0].features, 8, seed=0)[:STEPS]
    dev = ft.eval_batches(data["dev"][0].features, 32)
    hparams = ft.make_hparams(5e-5, 110.0, 0.45, 8, 0, total_steps=STEPS)
    gluon_loss, gluon_logits = _run(GluonBackend(), path, config, batches, hparams, dev)
    torch_backend = TorchBackend()
    model = torch_backend.load(config, path, 2)
    set_fast_paths(model, fast_attention)
    rows = torch_backend.train_classifier(model, batches, STEPS, hparams)
    torch_loss = np.array([r["loss"] for r in rows])
    torch_logits = torch_backend.predict(model, dev)
    assert len(gluon_loss) == len(torch_loss) == STEPS
    rel = np.abs(gluon_loss - torch_loss) / np.abs(gluon_loss)
    assert rel.max() <= 1e-5, rel
    assert np.array_equal(gluon_logits.argmax(1), torch_logits.argmax(1))
    assert gluon_loss[-1] != gluon_loss[0]     # the model did train
