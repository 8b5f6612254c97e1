"""`--recipe release` on fine-tuning (issue 19, items 4-6): the options it sets, explicit
options winning, the head initialisation's scale, head-only dropout, the floored horizon,
equal-width buckets and patience kept on ties."""
import numpy as np
import pytest
from conftest import FIXTURES, TINY, ScriptedBackend, fake_options

from bort_core import finetune as ft
from bort_core.cli import build_parser
from bort_core.commands.finetune import finetune_options
from bort_core.data.batches import length_buckets, train_batches

pytestmark = pytest.mark.filterwarnings("ignore:no --checkpoint")


def test_each_recipe_fills_the_options_left_unset():
    default, release = ft.FinetuneOptions(), ft.FinetuneOptions(recipe="release")
    assert (default.prob, default.dropout_scope, default.horizon, default.buckets,
            default.tie_resets_patience) == (None, "all", "ceil", "count", False)
    assert (release.prob, release.dropout_scope, release.horizon, release.buckets,
            release.tie_resets_patience) == (0.5, "head", "floor", "width", True)
    mixed = ft.FinetuneOptions(recipe="release", buckets="count", prob=0.2)
    assert (mixed.buckets, mixed.prob, mixed.horizon) == ("count", 0.2, "floor")
    for bad, match in (({"recipe": "2020"}, "--recipe"), ({"buckets": "exp"}, "--buckets"),
                       ({"horizon": "round"}, "--horizon"), ({"prob": 0.0}, "--prob"),
                       ({"dropout_scope": "ffn"}, "--dropout-scope")):
        with pytest.raises(ValueError, match=match):
            ft.FinetuneOptions(**bad)


@pytest.mark.parametrize("command", ["finetune", "agora"])
def test_cli_recipe_and_explicit_flags(command):
    extra = ["--reference-checkpoint", "r.params"] if command == "agora" else []
    base = [command, "--framework", "torch", "--task", "sst-2"] + extra
    parse = build_parser().parse_args
    opts = finetune_options(parse(base + ["--recipe", "release"]))
    assert (opts.recipe, opts.buckets, opts.tie_resets_patience) == ("release", "width", True)
    opts = finetune_options(parse(base + ["--recipe", "release", "--buckets", "count",
                                          "--tie-resets-patience", "false", "--init",
                                          "gaussian", "--dropout-scope", "all"]))
    assert (opts.buckets, opts.tie_resets_patience, opts.classifier_init,
            opts.dropout_scope, opts.prob) == ("count", False, "gaussian", "all", 0.5)
    opts = finetune_options(parse(base + ["--tie-resets-patience", "--horizon", "floor"]))
    assert (opts.tie_resets_patience, opts.horizon, opts.buckets) == (True, "floor", "count")


def test_head_init_scale():
    """The release drew heads with MXNet's Uniform(prob), Normal(prob), Orthogonal(prob) and
    Xavier(); unset, our scales are uniform 0.5, gaussian 0.01, orthogonal 1.414."""
    def weights(scheme, prob=None, seed=0):
        head = ft.classifier_init(TINY, 3, scheme, seed, 0.1, prob)
        assert all(not v.any() for n, v in head.items() if n.endswith(".bias"))
        return [v for n, v in head.items() if n.endswith(".weight")]

    for w in weights("uniform", 0.5):
        assert np.abs(w).max() <= 0.5 and np.abs(w).max() > 0.45
    for prob, sigma in ((None, 0.01), (0.5, 0.5)):
        w = weights("gaussian", prob)[0]
        assert w.std() == pytest.approx(sigma, rel=0.05)
    for prob, scale in ((None, 1.414), (0.5, 0.5)):
        for w in weights("orthogonal", prob):
            assert np.linalg.svd(w, compute_uv=False) == pytest.approx(scale, rel=1e-5)
    assert [np.array_equal(a, b) for a, b in zip(weights("xavier"), weights("xavier", 0.5))] \
        == [True, True]
    assert not np.array_equal(weights("uniform", 0.5, 0)[0], weights("uniform", 0.5, 1)[0])


def test_dropout_scope():
    every = ft.resolve_config("bort_tiny", None, 0.3)
    head = ft.resolve_config("bort_tiny", None, 0.3, "head")
    assert (every.dropout, every.embed_dropout, every.classifier_dropout) == (0.3, 0.3, 0.3)
    assert (head.dropout, head.embed_dropout, head.classifier_dropout) == (0.1, 0.1, 0.3)
    assert head.without_dropout().classifier_dropout == 0.0
    # a head without dropout has the 2020 names classifier.0/.1, the backbone keeps 0.1
    names = list(ft.initial_classifier(ft.resolve_config("bort_tiny", None, 0.0, "head"), 2,
                                       None, "uniform", 0))
    assert "classifier.0.weight" in names and "classifier.1.weight" in names


def test_schedule_horizon_rounding():
    """The release: int(N / batch * ramp_up_epochs); ours: ceil(N / batch) batches a ramp-up
    epoch, rounded up."""
    for n, batch, epochs, ceil, floor in ((1000, 32, 3, 96, 93), (10, 3, 1, 4, 3),
                                          (64, 32, 2, 4, 4)):
        assert ft.FinetuneOptions(batch_size=batch, epochs=epochs).schedule_steps(n) == ceil
        assert ft.FinetuneOptions(batch_size=batch, epochs=epochs,
                                  horizon="floor").schedule_steps(n) == floor
    assert ft.FinetuneOptions(batch_size=32, horizon="floor").schedule_steps(5) == 1


def test_length_buckets():
    lengths = [3, 3, 3, 3, 20, 21]
    # width (1 + 21 - 3) // 2 = 9: keys 12 and 21
    assert [b.tolist() for b in length_buckets(lengths, 2, "width")] == [[0, 1, 2, 3], [4, 5]]
    assert [b.tolist() for b in length_buckets(lengths, 2, "count")] == [[0, 1, 2], [3, 4, 5]]
    # keys 21, 20, 19 (width 1), 18 ... none below 3; empty ones dropped
    assert [b.tolist() for b in length_buckets(lengths, 20, "width")] == [[0, 1, 2, 3], [4],
                                                                          [5]]
    rng = np.random.RandomState(0)
    lengths = rng.randint(5, 300, 500)
    buckets = length_buckets(lengths, 15, "width")
    assert sorted(np.concatenate(buckets).tolist()) == list(range(500))
    tops = [lengths[b].max() for b in buckets]
    width = (1 + lengths.max() - lengths.min()) // 15           # all but the lowest this wide
    assert tops == sorted(tops) and max(np.ptp(lengths[b]) for b in buckets[1:]) < width
    feats = {"input_ids": [np.zeros(n, np.int32) for n in lengths], "valid_length": lengths}
    batches = train_batches(feats, 8, 0, 15, scheme="width")
    assert sum(len(b["valid_length"]) for b in batches) == 500
    assert len(batches) == sum(-(-len(b) // 8) for b in buckets)


def test_patience_on_ties():
    def run(scores, ties):
        p = ft.Patience(2, ties)
        for epoch, score in enumerate(scores, 1):
            if p.update(epoch, score):
                break
        return epoch, p.best_epoch

    scores = [0.5, 0.7, 0.7, 0.7, 0.6, 0.6, 0.8]
    assert run(scores, False) == (4, 2)
    assert run(scores, True) == (6, 2)


class _Plateau(ScriptedBackend):
    """Dev accuracy 1 for epochs 1-3, then 0."""

    def predict(self, model, batches):
        epoch = model.get("epoch")
        model["epoch"] = 1 if epoch <= 3 else 2
        try:
            return super().predict(model, batches)
        finally:
            model["epoch"] = epoch


@pytest.mark.parametrize("ties, epochs", [(False, 3), (True, 5)])
def test_early_stop_ties_in_the_loop(tmp_path, ties, epochs):
    result = ft.run_finetune(_Plateau(), fake_options(
        tmp_path, task="sst-2", data_dir=FIXTURES, epochs=8, early_stop=2,
        tie_resets_patience=ties), progress=False)
    assert [h["score"] for h in result["history"]] == [1.0, 1.0, 1.0, 0.0, 0.0][:epochs]
    assert result["dev"]["dev"]["accuracy"] == 1.0
