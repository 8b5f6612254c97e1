"""Backend.cached_teacher: extraction's candidates share their batches, so the teacher's encoder
runs once a batch; training and evaluating through the cache must equal the plain teacher."""
import numpy as np
import pytest

from bort_core.arch import initial_params
from bort_core.checkpoint import save_params
from bort_core.configs import BortConfig

STUDENT = BortConfig.from_dahi(1, 2, 16, 32, vocab_size=64, max_length=16, dropout=0.0,
                               embed_dropout=0.0)
TEACHER = BortConfig.from_dahi(2, 2, 32, 64, vocab_size=64, max_length=16, dropout=0.0,
                               embed_dropout=0.0)
HPARAMS = {"lr": 1e-3, "warmup_ratio": 0.2, "seed": 0, "temperature": 1.0}


def batches(n=4, rows=3, length=12, masks=3):
    rng = np.random.RandomState(0)
    out = []
    for _ in range(n):
        valid = rng.randint(masks + 2, length + 1, rows).astype(np.int32)
        ids = rng.randint(4, 64, (rows, length)).astype(np.int32)
        positions = np.stack([rng.choice(v, masks, replace=False) for v in valid]).astype(np.int32)
        out.append({"input_ids": ids, "valid_length": valid, "masked_positions": positions,
                    "masked_ids": rng.randint(4, 64, (rows, masks)).astype(np.int32),
                    "masked_weights": np.ones((rows, masks), np.float32)})
    return out


@pytest.fixture
def models(backend, tmp_path):
    def load(config, name):
        path = str(tmp_path / name)
        save_params(path, initial_params(config, seed=1 if name == "teacher" else 0))
        return backend.load(config, path)
    return load


def test_cached_teacher_trains_and_evaluates_as_the_plain_one(backend, models):
    data = batches()
    plain_teacher = models(TEACHER, "teacher")
    cached = backend.cached_teacher(models(TEACHER, "teacher"))
    results = []
    for teacher in (plain_teacher, cached, cached):   # the second cached run reads the cache
        student = models(STUDENT, "student")
        history = backend.train_mlm(student, data, 2 * len(data), dict(HPARAMS), teacher=teacher)
        metrics = backend.evaluate_mlm(student, data, teacher=teacher)
        results.append(([row["loss"] for row in history], metrics))
    assert len(cached.encoded) == len(data)
    for losses, metrics in results[1:]:
        np.testing.assert_allclose(losses, results[0][0], rtol=1e-6)
        assert metrics.keys() == results[0][1].keys() and "kd_loss" in metrics
        for key, value in metrics.items():
            assert value == pytest.approx(results[0][1][key], rel=1e-6), key
