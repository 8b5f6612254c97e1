"""Training parity: 20 fp32 steps of the full-size student in both frameworks (the issue's
acceptance), the release's distillation term, and checkpoints resumed across frameworks."""
import os

import numpy as np
import pytest

pytest.importorskip("mxnet")
pytest.importorskip("torch")
pytestmark = pytest.mark.parity

from bort_core import checkpoint as ckpt  # noqa: E402
from bort_core import pretrain as core  # noqa: E402
from bort_core import resume  # noqa: E402
from bort_core.arch import canonical_shapes, initial_params  # noqa: E402
from bort_core.configs import DEMO_VOCAB_SIZE, get_config  # noqa: E402
from bort_core.data import shards as sh  # noqa: E402
from bort_core.metrics import rel_l2  # noqa: E402
from parity import train_steps as ts  # noqa: E402


def test_twenty_steps_full_size_student_fp32():
    report = ts.train_steps("bort_4_8_768_1024", "bort_2_4_512_256", steps=20)
    worst = max(r["rel"] for r in report["losses"])
    assert len(report["losses"]) == 20
    assert worst <= ts.LOSS_TOLERANCE, ts.print_report(report)
    assert report["params"][0]["rel_l2"] <= ts.PARAM_TOLERANCE
    assert report["moved"] > 1e-2          # the weights did train: the comparison means something
    assert {r["param"] for r in report["params"]} == set(
        canonical_shapes(get_config("bort_4_8_768_1024")))


def test_release_distillation_term_agrees_and_differs_from_kl():
    release = ts.train_steps("bort_tiny", "roberta_tiny", steps=4, kd_loss="release")
    kl = ts.train_steps("bort_tiny", "roberta_tiny", steps=4, kd_loss="kl")
    assert release["ok"] and kl["ok"]
    assert abs(release["losses"][0]["torch"] - kl["losses"][0]["torch"]) > 1e-4


def test_a_gluon_checkpoint_resumes_in_torch(tmp_path):
    from bort_gluon import pretrain as gp
    from bort_torch import pretrain as tp

    shards = str(tmp_path / "part-000.npz")
    sh.write_synthetic_shard(shards, 60, DEMO_VOCAB_SIZE, seed=0)
    teacher = str(tmp_path / "teacher.params")
    ckpt.save_params(teacher, initial_params(get_config("roberta_tiny"), 3))
    opts = lambda d, **kw: core.PretrainOptions(**dict(dict(
        student="bort_tiny", teacher=teacher, teacher_config="roberta_tiny", data=shards,
        ckpt_dir=str(tmp_path / d), num_steps=8, warmup_ratio=0.25, lr=1e-3, dropout=0.0,
        tokens_per_batch=200, ckpt_interval=4, log_interval=4, progress=False), **kw))
    straight = tp.pretrain(opts("torch"))
    gp.pretrain(opts("mixed"))
    for path in resume.checkpoint_paths(str(tmp_path / "mixed"), 8).values():
        os.remove(path)       # keep the gluon run's step-4 checkpoint (same schedule)
    resumed = tp.pretrain(opts("mixed", start_step="4"))
    for a, b in zip(straight[4:], resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    end_a = ckpt.load_params(resume.checkpoint_paths(str(tmp_path / "torch"), 8)["params"])
    end_b = ckpt.load_params(resume.checkpoint_paths(str(tmp_path / "mixed"), 8)["params"])
    # key-projection biases have an analytically zero gradient (softmax ignores a shift shared
    # by all keys): starting from 0, Adam moves them by the sign of rounding noise
    worst = max((rel_l2(end_b[n], end_a[n]), n) for n in end_a
                if not n.endswith("proj_key.bias"))
    assert worst[0] <= 1e-4, worst
    assert np.isfinite(straight[-1]["loss"])
