"""`--recipe release` on pretrain and extract: the release's batching, loss scaler, logged
teacher_mse and defaults, each on a worked example computed by hand."""
import numpy as np
import pytest

from bort_core import losses
from bort_core import pretrain as core
from bort_core.cli import build_parser
from bort_core.commands import extract
from bort_core.commands.pretrain import options_from_args
from bort_core.data.bucketing import (
    bucket_batches,
    release_batch_sizes,
    release_bucket_batches,
    release_bucket_keys,
)
from bort_core.optim import ReleaseLossScaler, make_scaler

LENGTHS = np.array([5, 6, 7, 30, 31, 60, 61, 62, 63, 10])


def pretrain_options(*flags):
    return options_from_args(build_parser().parse_args(
        ["pretrain", "--framework", "torch", "--data", "x.npz", "--output-dir", ""] + list(flags)))


def test_release_bucket_keys_and_sizes_worked_example():
    # width (1 + 63 - 5) // 4 = 14: keys 63, 49, 35, 21; 49 stays empty and is dropped
    assert release_bucket_keys(LENGTHS, 4).tolist() == [21, 35, 49, 63]
    members = [np.array([0, 1, 2, 9]), np.array([3, 4]), np.array([5, 6, 7, 8])]
    # means 7, 30.5, 61.5; population stds 1.87..., 0.5, 1.118...
    assert release_batch_sizes(LENGTHS, members, 100) == [11, 3, 1]
    batches = release_bucket_batches(LENGTHS, 100, 4)
    assert [b.tolist() for b in batches] == [[5], [6], [7], [8], [3, 4], [0, 1, 2, 9]]


def test_release_batches_shuffled_cover_every_instance_once_with_the_same_sizes():
    lengths = np.random.RandomState(0).randint(8, 129, size=300)
    plain = release_bucket_batches(lengths, 1024, 20)
    mixed = release_bucket_batches(lengths, 1024, 20, np.random.RandomState(1))
    assert sorted(np.concatenate(mixed).tolist()) == list(range(300))
    assert sorted(map(len, mixed)) == sorted(map(len, plain))
    assert [b.tolist() for b in mixed] != [b.tolist() for b in plain]


def test_release_batches_hold_fewer_tokens_than_ours():
    # issue 19 item 1: mean + std per bucket, not the mean alone
    lengths = np.random.RandomState(2).randint(8, 129, size=2000)
    ours = bucket_batches(lengths, 1024, 20, np.random.RandomState(0))
    release = release_bucket_batches(lengths, 1024, 20)
    assert len(release) > len(ours)


def test_release_loss_scaler_worked_example():
    # window 3: growth at steps 2 and 6 (3 steps after the last overflow); every overflow in the
    # first 100 steps is >= 1% of the steps since the last rescale, so it halves the scale
    flags = [False, False, False, True, False, False, False, True, True]
    want = [8.0, 8.0, 16.0, 8.0, 8.0, 8.0, 16.0, 8.0, 4.0]
    scaler = ReleaseLossScaler(8.0, 3)
    trace = []
    for overflow in flags:
        scaler.update(not overflow)
        trace.append(scaler.scale)
    assert trace == want
    assert scaler.skipped == 3


def test_release_loss_scaler_tolerates_rare_overflows():
    # 1 overflow in 200 steps since the last rescale is 0.5% < 1%: skipped, scale kept
    scaler = ReleaseLossScaler(8.0, 10 ** 6)
    for _ in range(199):
        scaler.update(True)
    scaler.update(False)
    assert scaler.scale == 8.0 and scaler.skipped == 1
    ours = make_scaler("halve", 8.0, 10 ** 6, True)
    ours.update(False)
    assert ours.scale == 4.0


def test_release_loss_scaler_state_round_trips():
    a = ReleaseLossScaler(8.0, 3)
    for finite in (True, False, True, True):
        a.update(finite)
    b = ReleaseLossScaler(1.0, 3)     # the window is an option (checked on resume)
    b.load(a.state())
    for finite in (True, True, False, True):
        a.update(finite)
        b.update(finite)
        assert (a.scale, a.state()) == (b.scale, b.state())


def test_release_window_is_divided_by_the_workers():
    assert [make_scaler("release", 1.0, 2000, True, w).window for w in (1, 3, 4)] == [2000, 666, 500]


def test_recipe_release_sets_the_release_values_and_explicit_flags_win():
    default, release = pretrain_options(), pretrain_options("--recipe", "release")
    assert (default.batching, default.loss_scaler, default.teacher_mse, default.kd_loss,
            default.loss_scale, default.clip_norm) == ("balanced", "halve", "plain", "kl",
                                                       2.0 ** 15, 1.0)
    assert (release.batching, release.loss_scaler, release.teacher_mse, release.kd_loss,
            release.loss_scale, release.clip_norm, release.recipe) == (
        "release", "release", "release", "release", 1.5 ** 15, 0.0, "release")
    assert pretrain_options("--recipe", "release", "--dtype", "float16").clip_norm == 1.0
    mixed = pretrain_options("--recipe", "release", "--clip-norm", "0.5", "--kd-loss", "kl",
                             "--batching", "balanced", "--loss-scale", "8")
    assert (mixed.clip_norm, mixed.kd_loss, mixed.batching, mixed.loss_scale) == (
        0.5, "kl", "balanced", 8.0)


def test_logged_teacher_mse_on_the_release_scale():
    plain, release = pretrain_options(), pretrain_options("--recipe", "release")
    assert losses.logged_mse(0.25, plain) == 0.25
    assert losses.logged_mse(0.25, release) == pytest.approx(0.25 * 2.0 ** 2 / 2)


def test_bad_choices_name_the_flag():
    with pytest.raises(ValueError, match="--loss-scaler"):
        core.PretrainOptions(loss_scaler="sometimes")
    with pytest.raises(ValueError, match="--batching"):
        core.PretrainOptions(batching="greedy")


def test_extract_warmup_default_and_recipe():
    def theta(*flags):
        args = build_parser().parse_args(["extract", "--output-dir", "o", "--dry-run"] + list(flags))
        return extract._theta(args)[0]

    assert theta()["warmup_ratio"] == 0.1
    assert theta("--recipe", "release")["warmup_ratio"] == 0.01
    assert theta("--recipe", "release", "--warmup-ratio", "0.2")["warmup_ratio"] == 0.2
    with pytest.raises(ValueError, match="--warmup-ratio"):
        theta("--warmup-ratio", "2")
