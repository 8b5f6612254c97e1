"""The extraction ranks the `tiny` space identically in gluon and torch (demo corpus, same seed)."""
import pytest

pytest.importorskip("mxnet")
pytest.importorskip("torch")
pytest.importorskip("bort_gluon.backend")
pytest.importorskip("bort_torch.backend")
pytestmark = pytest.mark.parity

from bort_core import extraction as ose  # noqa: E402
from bort_core.backend import get_backend  # noqa: E402
from bort_core.data.demo import CORPUS_PATH  # noqa: E402
from bort_core.data.pretraining import PretrainingOptions, create_pretraining_data  # noqa: E402
from bort_core.extraction_plan import TINY_SPACE, make_plan  # noqa: E402
from bort_core.tokenizer import load_tokenizer  # noqa: E402

STEPS = 10


@pytest.fixture(scope="module")
def demo_instances(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    options = PretrainingOptions(max_seq_length=64, max_predictions_per_seq=10, seed=12345)
    create_pretraining_data([CORPUS_PATH], str(out), load_tokenizer(), options, progress=False)
    data = ose.load_data([str(out / "part-*.npz")], TINY_SPACE.members()[0])
    n = len(data["valid_lengths"])
    return ose.subset(data, range(n - 32)), ose.subset(data, range(n - 32, n))


def test_both_frameworks_rank_the_tiny_space_identically(tmp_path, demo_instances):
    train, held_out = demo_instances
    theta = ose.theta_grid([1e-3], [8], seed=0)
    plan = make_plan(TINY_SPACE, 1, seq_len=64, num_theta=len(theta))
    results = {}
    for framework in ("gluon", "torch"):
        settings = ose.Settings(framework, TINY_SPACE.to_dict(), 1, STEPS, theta, seq_len=64)
        results[framework] = ose.extract(get_backend(framework), plan, settings, train, held_out,
                                         str(tmp_path / framework), progress=False)
    gluon, torch_ = results["gluon"], results["torch"]
    assert len(gluon.ranking) == len(plan.candidates) == 14
    # training moved every candidate: the errors are not all equal (a ranking of ties says nothing)
    assert len({round(r["e"], 4) for r in gluon.ranking}) > 1
    parity = ose.compare_rankings(gluon.ranking, torch_.ranking)
    table = "\n".join("%-20s %.6g %.6g" % (a["name"], a["W"], b["W"])
                      for a, b in zip(gluon.ranking, torch_.ranking))
    assert parity["same_order"] and parity["spearman"] == 1.0, table
    assert parity["max_w_rel_diff"] <= 1e-3, table
    assert gluon.best["name"] == torch_.best["name"]
