"""The Backend protocol's MLM side agrees across frameworks: same built weights for a seed,
same training rows, same evaluation, checkpoints exchanged."""
import numpy as np
import pytest

pytest.importorskip("mxnet")
pytest.importorskip("torch")
pytestmark = pytest.mark.parity

from bort_core.backend import get_backend  # noqa: E402
from bort_core.configs import get_config  # noqa: E402
from bort_core.metrics import rel_l2  # noqa: E402
from parity.train_steps import make_batches  # noqa: E402


def test_backends_build_train_and_evaluate_alike(tmp_path):
    config = get_config("bort_tiny").without_dropout()
    teacher_config = get_config("roberta_tiny").without_dropout()
    batches = make_batches(3, 4, 24, 5, config.vocab_size, seed=2)
    hparams = {"lr": 1e-3, "warmup_ratio": 0.0, "seed": 0, "weight_decay": 0.01}
    rows, evals, params = {}, {}, {}
    for name in ("gluon", "torch"):
        b = get_backend(name)
        model, teacher = b.build(config, seed=4), b.build(teacher_config, seed=5)
        before = b.evaluate_mlm(model, batches, teacher)
        rows[name] = b.train_mlm(model, batches, 6, hparams, teacher)
        evals[name] = (before, b.evaluate_mlm(model, batches, teacher))
        b.save(model, str(tmp_path / (name + ".params")))
        params[name] = b.load(config, str(tmp_path / (name + ".params")))
        assert b.latency(model, 2, 16, repeats=2) > 0
    assert [r["loss"] for r in rows["gluon"]] == pytest.approx(
        [r["loss"] for r in rows["torch"]], rel=1e-5)
    for (g, t) in zip(evals["gluon"], evals["torch"]):
        assert set(g) == {"mlm_loss", "mlm_acc", "kd_loss"}
        assert g == pytest.approx(t, rel=1e-5)
    assert evals["torch"][1]["mlm_loss"] < evals["torch"][0]["mlm_loss"]   # it learned
    from bort_gluon.model import get_params as gluon_params
    from bort_torch.model import get_params as torch_params
    a, b = gluon_params(params["gluon"]), torch_params(params["torch"])
    assert max(rel_l2(a[n], b[n]) for n in b if not n.endswith("proj_key.bias")) < 1e-4
    np.testing.assert_array_equal(gluon_params(get_backend("gluon").build(config, seed=4))[
        "word_embed.0.weight"], torch_params(get_backend("torch").build(config, seed=4))[
        "word_embed.0.weight"])
