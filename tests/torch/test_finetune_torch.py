"""bort_torch.finetune's own behaviour (the twin behaviours are tests/twins): float16 clips the
unscaled gradient (F5)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore:no --checkpoint")]

from bort_core import finetune as ft  # noqa: E402
from bort_core.backend import get_backend  # noqa: E402
from bort_core.configs import get_config  # noqa: E402


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
        trainer = backend.trainer(model, hp)
        norms[dtype] = trainer.train([_batch()], 1)[0]["grad_norm"]
        assert trainer.scaler.is_enabled() == (dtype == "float16")
    assert norms["float16"] == pytest.approx(norms["float32"], rel=0.05)
