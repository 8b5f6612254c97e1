"""bort_gluon.finetune's own behaviours (the twin behaviours are tests/twins): the float32-only
refusal, the weight-decay mask, the hybridized run equal to the imperative one bit for bit."""
import os

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
pytestmark = [pytest.mark.gluon, pytest.mark.filterwarnings("ignore:no --checkpoint")]

from bort_core import finetune as ft  # noqa: E402
from bort_core import optim  # noqa: E402
from bort_core.backend import get_backend  # noqa: E402
from bort_core.cli import main  # noqa: E402
from bort_core.configs import get_config  # noqa: E402
from bort_gluon import finetune as gf  # noqa: E402


@pytest.fixture(scope="module")
def gluon():
    return get_backend("gluon")


def _batch(rows=4, length=12, seed=0):
    rng = np.random.RandomState(seed)
    return {"input_ids": rng.randint(4, 4000, (rows, length)).astype(np.int32),
            "valid_length": np.full(rows, length, np.int32),
            "labels": rng.randint(0, 2, rows).astype(np.int64)}


def test_float16_is_refused_with_a_pointer_to_torch(gluon):
    model = gluon.build(get_config("bort_tiny"), seed=0, num_classes=2)
    hp = ft.make_hparams(1e-3, 0.0, 0.0, 4, 0, total_steps=1, dtype="float16")
    with pytest.raises(ValueError, match="--framework torch"):
        gluon.trainer(model, hp)


def test_cli_float16_fails_cleanly_and_leaves_the_directory_usable(tmp_path, capsys):
    out = str(tmp_path / "fp16")
    assert main(["finetune", "--framework", "gluon", "--task", "demo-single", "--config",
                 "bort_tiny", "--max-len", "24", "--training-steps", "1", "--dtype", "float16",
                 "--output-dir", out, "--quiet"]) == 2
    assert "--framework torch" in capsys.readouterr().err
    assert os.listdir(out) == []


def test_weight_decay_spares_layer_norms_and_biases(gluon):
    model = gluon.build(get_config("bort_tiny"), seed=0, num_classes=2)
    trainer = gluon.trainer(model, ft.make_hparams(1e-3, 0.01, 0.5, 4, 0, total_steps=4))
    mults = {n: p.wd_mult for n, p in trainer.named.items()}
    assert {m for n, m in mults.items() if optim.decays(n)} == {1.0}
    assert {m for n, m in mults.items() if not optim.decays(n)} == {0.0}


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
        trainer = gluon.trainer(model, hp)
        rows = trainer.train(batches, 3)
        runs.append((model._active, rows, gf.predict(model, batches),
                     {n: p.data().asnumpy() for n, p in trainer.named.items()}))
    (active, rows, logits, params), (plain, want_rows, want_logits, want_params) = runs
    assert active and not plain
    assert rows == want_rows
    np.testing.assert_array_equal(logits, want_logits)
    for name, value in want_params.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)


def test_predict_mlm_runs_a_cached_graph_with_the_imperative_logits(gluon):
    model = gluon.build(get_config("bort_tiny"), seed=0)
    batch = dict(_batch(2), masked_positions=np.array([[1, 3, 0], [2, 5, 7]], np.int32))
    (logits,) = gluon.predict_mlm(model, [batch])
    assert model._active
    imperative = gluon.build(get_config("bort_tiny"), seed=0)
    _, want = imperative(*(mx.nd.array(batch[k]) for k in ("input_ids", "valid_length",
                                                            "masked_positions")))
    np.testing.assert_array_equal(logits, want.asnumpy())
