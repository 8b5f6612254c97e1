"""bort_core.agora without a framework: pruning, dev mistakes, the reference check, the
data-generating functions, the grid, the whole loop over the numpy backend of test_finetune on
the embedded demo tasks, and `bort agora`."""
import json
import os
import warnings

import numpy as np
import pytest
from conftest import TINY, FakeBackend

from bort_core import agora
from bort_core import checkpoint as ckpt
from bort_core import finetune as ft
from bort_core.cli import main
from bort_core.data import tasks as tk
from bort_core.data.demo import DEMO_TASK_SIZES
from bort_core.tokenizer import load_tokenizer

SPECIAL = load_tokenizer().special_ids            # (0, 1, 2, 3, 4095): <s> <pad> </s> <unk> <mask>
# <s> a b c d e </s> f g h </s>: the text tokens are 10..22
IDS = np.array([0, 10, 11, 12, 13, 14, 2, 20, 21, 22, 2], np.int32)


def _base(tmp_path, task="demo-single", **kw):
    kw.setdefault("lr", 2.0 if task == "demo-regression" else 20.0)
    kw.setdefault("output_dir", str(tmp_path / "agora"))
    kw.setdefault("batch_size", 32)
    return ft.FinetuneOptions(task=task, config="bort_tiny", max_len=32, weight_decay=0.0,
                              warmup_ratio=0.1, epochs=1, **kw)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """A plain fine-tuning run per task: the reference models (as in test_agora_log)."""
    root = tmp_path_factory.mktemp("references")
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for task in ("demo-single", "demo-regression"):
            opts = _base(root, task, output_dir=str(root / task))
            out[task] = ft.run_finetune(FakeBackend(), opts, progress=False)["model"]
    return out


def _grid(tmp_path, spec):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(spec))
    return str(path)


def _run(tmp_path, reference, task="demo-single", grid=None, mlm_logits=None, base=None,
         backend=None, **kw):
    """run_agora over a 4-set grid (2 seeds x 2 lrs); (result, log, recorded warnings)."""
    kw.setdefault("generator", "dropout,swap")
    kw.setdefault("points_per_mistake", 1)
    lr = 2.0 if task == "demo-regression" else 20.0
    grid = _grid(tmp_path, grid or {"seed": [0, 1], "lr": [lr / 2, lr]})
    base = base or _base(tmp_path, task)
    options = agora.AgoraOptions(reference_checkpoint=reference, grid=grid, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = agora.run_agora(backend or FakeBackend(), base, options, mlm_logits=mlm_logits,
                                 progress=False)
    log = json.load(open(os.path.join(base.output_dir, "agora_log.json")))
    return result, log, [str(w.message) for w in caught]


# ---------------------------------------------------------------------------------- prune

def test_prune_keeps_the_best_share_ties_in_grid_order():
    assert agora.prune([0.1, 0.9, 0.5, 0.7], 0.5) == [1, 3]            # best 2, grid order
    assert agora.prune([0.2, 0.8, 0.8, 0.8], 0.5) == [1, 2]            # ties: the earlier sets
    assert agora.prune([0.5] * 4, 0.5) == [0, 1]
    assert agora.prune([5, 4, 3, 2, 1], 0.5) == [0, 1, 2]              # ceil(2.5) = 3
    assert agora.prune([1, 2, 3], 0.01) == [2]                         # at least one
    assert agora.prune([3, 2, 1], 0.9) == [0, 1]                       # at most n - 1
    assert agora.prune([1, 2], 0.99) == [1]
    assert agora.prune([0.7], 0.5) == [] and agora.prune([], 0.5) == []   # one set: stop


def test_prune_one_drops_only_the_weakest_set():
    assert agora.prune([0.1, 0.9, 0.5, 0.7], 0.5, "one") == [1, 2, 3]
    assert agora.prune([0.8, 0.2, 0.2, 0.9], 0.5, "one") == [0, 1, 3]  # ties: the later set goes
    assert agora.prune([1, 2], 0.5, "one") == [1]
    assert agora.prune([0.7], 0.5, "one") == []
    with pytest.raises(ValueError, match="--prune"):
        agora.AgoraOptions(reference_checkpoint="r.params", prune="third")


@pytest.mark.parametrize("rule, alive", [("half", [4, 2, 1]), ("one", [4, 3, 2, 1])])
def test_run_agora_prunes_by_the_rule(tmp_path, references, rule, alive):
    """--prune half: log2|Theta| + 1 rounds; --prune one: |Theta| rounds, each round's sets
    those of the previous round less its weakest."""
    _, log, _ = _run(tmp_path, references["demo-single"], prune=rule)
    rounds = log["rounds"]
    assert [len(r["sets"]) for r in rounds] == alive
    for before, after in zip(rounds, rounds[1:]):
        scores = [before["scores"][str(s)] for s in before["sets"]]
        assert after["sets"] == [before["sets"][i] for i in agora.prune(scores, 0.5, rule)]


# ------------------------------------------------------------------- mistakes / reference

def _examples(labels):
    return [tk.Example(("text",), str(label)) for label in labels]


def test_mistakes_for_classification_and_regression():
    single, mnli, sts = tk.get_task("demo-single"), tk.get_task("mnli"), tk.get_task("demo-regression")
    assert agora.mistakes(single, _examples("0101"), np.array([0, 1, 1, 0])).tolist() == [2, 3]
    gold = ["neutral", "entailment", "contradiction", "entailment"]       # class ids 0 1 2 1
    assert agora.mistakes(mnli, _examples(gold), np.array([0, 2, 2, 1])).tolist() == [1]
    gold = np.arange(5.0)                                  # std sqrt(2): default tol 0.707
    pred = gold + np.array([0.0, 0.7, -0.72, 1.0, 0.0])
    assert agora.mistakes(sts, _examples(gold), pred).tolist() == [2, 3]
    assert agora.mistakes(sts, _examples(gold), pred, tolerance=0.9).tolist() == [3]
    assert agora.mistakes(sts, _examples(gold), pred, tolerance=0.0).tolist() == [1, 2, 3]


def test_check_reference_warns_at_or_below_chance():
    single, sts = tk.get_task("demo-single"), tk.get_task("demo-regression")
    examples = _examples("0001")                                          # majority rate 0.75
    with pytest.warns(UserWarning, match="accuracy is 0.7500, not above chance") as rec:
        info = agora.check_reference(single, examples, np.zeros(4, int))   # always the majority
    assert info == {"accuracy": 0.75, "chance": 0.75}
    assert "correlation" not in str(rec[0].message)
    gold = _examples([0.0, 1.0, 2.0, 3.0])
    for pred in ([3.0, 2.0, 1.0, 0.0], [1.0] * 4):                        # negative, constant
        with pytest.warns(UserWarning, match="pearson") as rec:
            info = agora.check_reference(sts, gold, np.array(pred))
        message = str(rec[0].message)
        assert "correlation" in message and "accuracy" not in message
        assert info["pearson"] <= 0.0 and info["chance"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                    # a good reference
        assert agora.check_reference(single, examples, np.array([0, 0, 0, 1]))["accuracy"] == 1.0
        good = agora.check_reference(sts, gold, np.array([0.1, 0.9, 2.2, 2.8]))
        assert good["pearson"] > 0.9


# ----------------------------------------------------------------------------- generators

def _specials_kept(before, after):
    """The special tokens of `after` are those of `before`, in order, none added."""
    return [t for t in after if t in SPECIAL] == [t for t in before if t in SPECIAL]


def test_dropout_and_swap_keep_special_tokens_and_change_something():
    rng = np.random.RandomState(0)
    for _ in range(20):
        out = agora.token_dropout(IDS, rng, SPECIAL, prob=0.5)
        assert _specials_kept(IDS, out) and 0 < len(IDS) - len(out) <= 8
        assert out[0] == 0 and out[-1] == 2
        it = iter(IDS.tolist())
        assert all(t in it for t in out.tolist())                         # a subsequence
        low = agora.token_dropout(IDS, rng, SPECIAL, prob=1e-9)           # still one deletion
        assert len(low) == len(IDS) - 1 and _specials_kept(IDS, low)
        swapped = agora.token_swap(IDS, rng, SPECIAL, prob=0.9)
        special_pos = np.isin(IDS, SPECIAL)
        assert (swapped[special_pos] == IDS[special_pos]).all()            # specials stay put
        assert sorted(swapped.tolist()) == sorted(IDS.tolist()) and (swapped != IDS).any()
        one = agora.token_swap(IDS, rng, SPECIAL, prob=1e-9)               # exactly one swap
        assert (one != IDS).sum() == 2 and (one[special_pos] == IDS[special_pos]).all()
    short = np.array([0, 10, 2], np.int32)                                 # one text token
    assert agora.token_dropout(short, rng, SPECIAL).tolist() == [0, 10, 2]


def _fake_mlm(vocab, favourite, calls):
    """(B, M, vocab) logits: huge on `favourite` (a list of ids, tried in order) and, as a
    trap, on <s>: special ids must never be sampled."""
    def mlm_logits(batches):
        calls.extend(batches)
        shape = batches[0]["masked_positions"].shape + (vocab,)
        logits = np.zeros(shape, np.float32)
        logits[..., 0] = 1e4
        logits[..., favourite] = 50.0
        return [logits]
    return mlm_logits


def test_masked_lm_resample_masks_text_only_and_never_samples_special_ids():
    calls = []
    mask = SPECIAL[-1]
    mlm = agora.MaskedLMResample(_fake_mlm(4096, [7], calls), mask, SPECIAL, prob=1.0)
    seqs = [IDS, IDS[:6]]
    out = mlm(seqs, np.random.RandomState(0))
    batch = calls[0]
    assert batch["input_ids"].shape == (2, len(IDS)) and batch["valid_length"].tolist() == [11, 6]
    assert (batch["input_ids"][1, 6:] == 1).all()                          # padded with <pad>
    assert (batch["input_ids"][0][np.isin(IDS, SPECIAL)] == IDS[np.isin(IDS, SPECIAL)]).all()
    assert (batch["input_ids"][0][~np.isin(IDS, SPECIAL)] == mask).all()   # prob 1: all text
    assert batch["masked_positions"][0].tolist() == [1, 2, 3, 4, 5, 7, 8, 9]
    for before, after in zip(seqs, out):
        text = ~np.isin(before, SPECIAL)
        assert (after[~text] == before[~text]).all() and (after[text] == 7).all()
    assert (IDS == [0, 10, 11, 12, 13, 14, 2, 20, 21, 22, 2]).all()        # input untouched

    few = agora.MaskedLMResample(_fake_mlm(4096, [7], []), mask, SPECIAL, prob=0.15)
    changed = (few([IDS], np.random.RandomState(1))[0] != IDS).sum()
    assert changed == 1                                                    # round(8 * 0.15)


def test_masked_lm_resample_calls_the_head_in_batches_with_the_same_draws():
    """A round can hold thousands of points: the MLM head sees `batch_size` rows at a time,
    and the chunking changes no sample."""
    seqs = [IDS[:n] for n in (3, 4, 5, 6, 8, 9, 10, 11)] * 3               # 24 sequences
    favourite = list(range(5, 4000))
    calls, whole = [], []
    chunked = agora.MaskedLMResample(_fake_mlm(4096, favourite, calls), SPECIAL[-1], SPECIAL,
                                     prob=0.5, batch_size=5)
    one = agora.MaskedLMResample(_fake_mlm(4096, favourite, whole), SPECIAL[-1], SPECIAL,
                                 prob=0.5, batch_size=100)
    a, b = chunked(seqs, np.random.RandomState(2)), one(seqs, np.random.RandomState(2))
    assert [len(c["valid_length"]) for c in calls] == [5, 5, 5, 5, 4] and len(whole) == 1
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(c["input_ids"].shape[1] == c["valid_length"].max() for c in calls)


def test_make_generator_is_seeded_and_rejects_unknown_names():
    mlm = agora.MaskedLMResample(_fake_mlm(4096, list(range(5, 4000)), []), SPECIAL[-1],
                                 SPECIAL, prob=0.5)
    generate = agora.make_generator("mlm,dropout,swap", SPECIAL, mlm, 0.3, 0.3)
    seqs = [IDS] * 9
    first = generate(seqs, np.random.RandomState(3))
    again = generate(seqs, np.random.RandomState(3))
    other = generate(seqs, np.random.RandomState(4))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    for k, out in enumerate(first):
        assert out[0] == 0 and out[-1] == 2 and _specials_kept(IDS, out)
        assert not np.array_equal(out, IDS)
        assert (len(out) < len(IDS)) == (k % 3 == 1)                       # dropout: k = 1 mod 3
    with pytest.raises(ValueError, match="--generator: unknown bogus"):
        agora.make_generator("dropout,bogus", SPECIAL)
    with pytest.raises(ValueError, match="--generator"):
        agora.make_generator(" , ", SPECIAL)
    with pytest.raises(ValueError, match="--generator mlm needs .*--checkpoint"):
        agora.make_generator("swap,mlm", SPECIAL)


# ----------------------------------------------------------------------------------- grid

def test_load_grid_release_product_and_list(tmp_path):
    release = agora.load_grid("release")
    assert len(release) == 480 and len({json.dumps(s, sort_keys=True) for s in release}) == 480
    assert release[0] == {"seed": 0, "lr": 1e-4, "weight_decay": 0.0, "warmup_ratio": 0.35,
                          "batch_size": 8}
    product = agora.load_grid(_grid(tmp_path, {"lr": [1.0, 2.0], "seed": [0, 1, 2]}))
    assert product == [{"seed": s, "lr": lr} for s in (0, 1, 2) for lr in (1.0, 2.0)]
    listed = [{"lr": 3.0}, {"seed": 4, "epochs": 2}]
    assert agora.load_grid(_grid(tmp_path, listed)) == listed


@pytest.mark.parametrize("spec, match", [
    ([], "the grid is empty"),
    ({"lr": []}, "'lr' must be a non-empty list"),
    ({"lr": 1e-4}, "'lr' must be a non-empty list"),
    ({"lr": [1.0], "learning_rate": [2.0]}, "unknown key\\(s\\) learning_rate"),
    ([{"seed": 0}, {"momentum": 0.9}], "unknown key\\(s\\) momentum"),
    ([{"seed": 0}, 3], "a list grid holds objects"),
    ("lr", "expected an object of lists or a list of objects"),
])
def test_load_grid_bad_specs(tmp_path, spec, match):
    with pytest.raises(ValueError, match="--grid .*grid.json: grid: " + match):
        agora.load_grid(_grid(tmp_path, spec))


def test_load_grid_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="use 'release'"):
        agora.load_grid(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{lr: [1]")
    with pytest.raises(ValueError, match="not JSON"):
        agora.load_grid(str(tmp_path / "bad.json"))


def test_an_empty_object_grid_is_refused(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        agora.load_grid(_grid(tmp_path, {}))


def test_agora_options_validation():
    good = {"reference_checkpoint": "ref.params"}
    for bad, match in (({"reference_checkpoint": ""}, "--reference-checkpoint is required"),
                       ({"points_per_mistake": 0}, "--points-per-mistake"),
                       ({"keep": 1.0}, "--keep"), ({"keep": 0.0}, "--keep"),
                       ({"replays": -1}, "--replays"), ({"mask_prob": 0.0}, "--mask-prob"),
                       ({"swap_prob": 1.5}, "--swap-prob")):
        with pytest.raises(ValueError, match=match):
            agora.AgoraOptions(**dict(good, **bad))


# ------------------------------------------------------------------------------- the loop

def _runs(log):
    return [r["runs"] for r in log["rounds"]]


def test_run_agora_halves_the_grid_grows_train_and_writes_outputs(tmp_path, references):
    result, log, caught = _run(tmp_path, references["demo-single"])
    rounds = log["rounds"]
    assert _runs(log) == [4, 2, 1] and [len(r["sets"]) for r in rounds] == [4, 2, 1]
    assert set(rounds[1]["sets"]) <= set(rounds[0]["sets"])
    assert rounds[1]["sets"] == agora.prune([rounds[0]["scores"][str(s)] for s in range(4)], 0.5)
    assert rounds[0]["dev_mistakes"] > 0
    for r in rounds[:-1]:                                 # one point per mistake, appended
        assert r["points_added"] == r["dev_mistakes"] > 0
    assert rounds[-1]["points_added"] == 0 and rounds[-1]["dev_mistakes"] > 0   # none after
    sizes = [r["train_size"] for r in rounds]
    assert sizes[0] == DEMO_TASK_SIZES["train"] + rounds[0]["points_added"]
    assert sizes[1] - sizes[0] == rounds[1]["points_added"] and sizes[2] == sizes[1]

    out = tmp_path / "agora"
    model = out / "model_bort_demo-single_agora.params"
    for name in ("agora_log.json", "agora_log.md", "result.json", model.name):
        assert (out / name).is_file(), name
    assert not [p for p in os.listdir(out) if p.startswith("agora-")]    # work dir removed
    assert result["model"] == str(model) and os.path.isfile(result["test"]["test"]["file"])
    assert len(open(result["test"]["test"]["file"]).read().splitlines()) == 401
    assert result["rounds"] == 3 and result["runs"] == 7
    best = max(r["best_score"] for r in rounds)
    assert result["best"]["score"] == best                                # the best model kept
    assert result["dev"]["dev"]["accuracy"] == pytest.approx(best)
    saved = json.load(open(out / "result.json"))
    assert saved["best"] == result["best"] and saved["dev"] == result["dev"]
    assert log["reference"]["accuracy"] > log["reference"]["chance"]
    assert any("no --checkpoint" in m for m in caught)
    assert not any("reference model" in m for m in caught)              # a good reference


def test_a_diverging_set_stops_agora_naming_it_and_publishes_nothing(tmp_path, references):
    with pytest.raises(ft.NonFiniteError, match=r'round 1, set 1 \{"lr": 1e\+300\}: fine-tuning '
                       r"step [0-9]+: the loss is"):
        _run(tmp_path, references["demo-regression"], "demo-regression",
             grid=[{"lr": 1.0}, {"lr": 1e300}])
    assert os.listdir(str(tmp_path / "agora")) == []     # no model, log, test file, work dir


def test_a_non_finite_grid_value_is_refused_before_any_run(tmp_path, references):
    with pytest.raises(ValueError, match=r"grid.json: set 1 \{\"lr\": NaN\}: --lr must be a "
                       r"finite number, got nan"):
        _run(tmp_path, references["demo-single"], grid=[{"lr": 1.0}, {"lr": float("nan")}])
    assert not os.path.exists(str(tmp_path / "agora"))


def test_replays_repeat_each_round_before_pruning(tmp_path, references):
    _, log, _ = _run(tmp_path, references["demo-single"], replays=1)
    rounds = log["rounds"]
    assert _runs(log) == [4, 4, 2, 2, 1, 1]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5, 6]
    assert rounds[0]["sets"] == rounds[1]["sets"] and rounds[2]["sets"] == rounds[3]["sets"]
    assert rounds[4]["points_added"] == rounds[4]["dev_mistakes"] > 0    # the first 1-set run
    assert rounds[5]["points_added"] == 0
    assert rounds[1]["train_size"] == rounds[0]["train_size"] + rounds[1]["points_added"]


def test_teachable_only_mines_the_mistakes_the_reference_gets_right(tmp_path, references,
                                                                    monkeypatch):
    found = []                         # what `mistakes` returned: the reference's first

    def recording(*args, **kw):
        found.append(real(*args, **kw))
        return found[-1]
    real = agora.mistakes
    monkeypatch.setattr(agora, "mistakes", recording)
    _, log, _ = _run(tmp_path, references["demo-single"], teachable_only=True,
                     points_per_mistake=2)
    ref_wrong, per_round = found[0], found[1:]
    assert log["reference"]["dev_mistakes"] == len(ref_wrong) > 0
    rounds = log["rounds"]
    assert len(per_round) == len(rounds) == 3
    for r, wrong in zip(rounds, per_round):
        assert r["dev_mistakes"] == len(wrong)
        assert r["mistakes_mined"] == len(np.setdiff1d(wrong, ref_wrong))
    assert any(r["mistakes_mined"] < r["dev_mistakes"] for r in rounds)  # some shared errors
    for r in rounds[:-1]:
        assert r["points_added"] == 2 * r["mistakes_mined"]
    assert rounds[-1]["points_added"] == 0
    monkeypatch.setattr(agora, "mistakes", real)
    _, log, _ = _run(tmp_path / "all", references["demo-single"], points_per_mistake=2)
    assert all(r["mistakes_mined"] == r["dev_mistakes"] for r in log["rounds"])   # the default


def test_max_rounds_stops_early_without_generating(tmp_path, references):
    _, log, _ = _run(tmp_path / "a", references["demo-single"], max_rounds=2)
    assert _runs(log) == [4, 2]
    assert log["rounds"][0]["points_added"] > 0 and log["rounds"][1]["points_added"] == 0
    result, log, _ = _run(tmp_path / "b", references["demo-single"], max_rounds=1, replays=1)
    assert _runs(log) == [4] and log["rounds"][0]["points_added"] == 0
    assert result["rounds"] == 1 and result["runs"] == 4


def test_regression_task_and_its_tolerance(tmp_path, references):
    result, log, caught = _run(tmp_path / "a", references["demo-regression"], "demo-regression",
                               points_per_mistake=2)
    rounds = log["rounds"]
    assert _runs(log) == [4, 2, 1] and set(result["dev"]["dev"]) == {"pearson", "spearman"}
    assert rounds[0]["points_added"] == 2 * rounds[0]["dev_mistakes"] > 0
    assert rounds[-1]["points_added"] == 0
    assert "pearson" in log["reference"] and "accuracy" not in log["reference"]
    assert os.path.isfile(result["test"]["test"]["file"])
    _, log, _ = _run(tmp_path / "b", references["demo-regression"], "demo-regression",
                     regression_tolerance=100.0, max_rounds=2)
    assert [r["dev_mistakes"] for r in log["rounds"]] == [0, 0]
    assert [r["points_added"] for r in log["rounds"]] == [0, 0]


def test_mlm_generator_in_the_loop(tmp_path, references):
    calls = []
    _, log, _ = _run(tmp_path, references["demo-single"], grid=[{"seed": 0}, {"seed": 1}],
                     mlm_logits=_fake_mlm(4096, [7], calls), generator="mlm")
    assert _runs(log) == [2, 1] and log["rounds"][0]["points_added"] > 0
    masked = sum(len(b["valid_length"]) for b in calls)
    assert masked == log["rounds"][0]["points_added"]                    # every point resampled
    assert max(len(b["valid_length"]) for b in calls) <= 8               # --dev-batch-size
    assert all((b["input_ids"] == SPECIAL[-1]).sum() >= len(b["valid_length"]) for b in calls)


KEYWORD = {"neutral": "list", "entailment": "module", "contradiction": "string"}
FILLER = "the a of to and in is it that for on with as was by at from this are be".split()
MNLI_HEAD = ("index\tpromptID\tpairID\tgenre\tb1\tb2\tp1\tp2\tsentence1\tsentence2\t"
             "label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")


@pytest.fixture(scope="module")
def mnli(tmp_path_factory):
    """An MNLI-layout dir (3 classes) whose hypothesis names its label by a keyword; 6 of the
    30 dev examples carry another gold label (mistakes a keyword reader must make). Returns
    (data dir, a reference fine-tuned on it, the dev examples' token ids, those 6 indices)."""
    root = tmp_path_factory.mktemp("mnli")
    rng = np.random.RandomState(0)
    labels = list(KEYWORD)

    def rows(n, noisy=()):
        out = []
        for i in range(n):
            label = labels[i % 3]
            gold = labels[(i + 1) % 3] if i in noisy else label
            out.append([str(i), "0", "0", "x"] + ["( x )"] * 4 + [
                " ".join(rng.choice(FILLER, 3)),
                " ".join(list(rng.choice(FILLER, 3)) + [KEYWORD[label]])] + [gold] * 6)
        return out

    noisy = (2, 7, 11, 15, 22, 27)
    (root / "MNLI").mkdir()
    for name, table in (("train", rows(150)), ("dev_matched", rows(30, noisy)),
                        ("test_matched", rows(10)), ("test_mismatched", rows(10))):
        cols = 12 if name == "train" else 16 if name.startswith("dev") else 10
        head = MNLI_HEAD.split("\t")[:cols - 1] + ["gold_label"] if cols > 10 \
            else MNLI_HEAD.split("\t")[:10]
        lines = ["\t".join(head)] + ["\t".join(r[:cols - 1] + [r[-1]]) if cols > 10
                                    else "\t".join(r[:10]) for r in table]
        (root / "MNLI" / (name + ".tsv")).write_text("\n".join(lines) + "\n")
    # mismatched = matched, so a round's best score is its matched accuracy
    (root / "MNLI" / "dev_mismatched.tsv").write_text((root / "MNLI" / "dev_matched.tsv").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opts = _base(root, "mnli", data_dir=str(root), output_dir=str(root / "ref"), lr=50.0,
                     batch_size=8)
        reference = ft.run_finetune(FakeBackend(), opts, progress=False)["model"]
    data = ft.load_task(tk.get_task("mnli"), str(root), load_tokenizer(), 32, TINY.vocab_size)
    return str(root), reference, data["dev"][0].features["input_ids"], noisy


class RecordingBackend(FakeBackend):
    """FakeBackend keeping each fine-tuning run's training rows as (token ids, label)."""

    def __init__(self):
        self.runs = []

    def fit(self, trainer, batches, steps):
        self.runs.append([(tuple(ids[:n].tolist()), int(y)) for b in batches for ids, n, y in
                          zip(b["input_ids"], b["valid_length"], b["labels"])])
        return super().fit(trainer, batches, steps)


def _near(seq, src):
    """`seq` is `src` with tokens swapped (same multiset) or deleted (a shorter subsequence)."""
    if len(seq) == len(src):
        return sorted(seq) == sorted(src)
    it = iter(src)
    return len(seq) < len(src) and all(t in it for t in seq)


def test_multiclass_loop_mistakes_reference_labels_and_pruning(tmp_path, mnli):
    from collections import Counter

    data_dir, reference, dev_ids, noisy = mnli
    backend = RecordingBackend()
    base = _base(tmp_path, "mnli", data_dir=data_dir, batch_size=8)
    result, log, caught = _run(tmp_path, reference, "mnli", {"seed": [0, 1], "lr": [50.0, 100.0]},
                               base=base, backend=backend, points_per_mistake=2)
    rounds = log["rounds"]
    assert log["reference"]["chance"] == pytest.approx(10 / 30)          # majority rate
    assert log["reference"]["accuracy"] == pytest.approx(24 / 30)        # the keyword reader
    assert not any("reference model" in m for m in caught)
    assert _runs(log) == [4, 2, 1]
    for before, after in zip(rounds, rounds[1:]):
        kept = agora.prune([before["scores"][str(s)] for s in before["sets"]], 0.5)
        assert after["sets"] == [before["sets"][i] for i in kept]
    for r in rounds:                                   # argmax != gold on dev_matched
        assert r["dev_mistakes"] == round(30 * (1 - r["best_score"])) == len(noisy)
    assert [r["points_added"] for r in rounds] == [12, 12, 0]
    assert [r["train_size"] for r in rounds] == [162, 174, 174]
    assert set(result["dev"]) == {"dev_matched", "dev_mismatched"}
    assert set(result["test"]) == {"test_matched", "test_mismatched"}

    runs = backend.runs
    assert [len(rows) for rows in runs] == [150] * 4 + [162] * 2 + [174]
    original = Counter(runs[0])
    ref = FakeBackend().load(TINY, reference, 3)
    for run in (4, 6):
        new = list((Counter(runs[run]) - original).elements())
        assert len(new) == (12 if run == 4 else 24)
        seqs = [np.array(s, np.int32) for s, _ in new]
        expected = FakeBackend().predict(ref, ft.eval_batches(
            {"input_ids": seqs, "valid_length": np.array([len(s) for s in seqs])}, 8)).argmax(1)
        assert [label for _, label in new] == expected.tolist()           # the reference's
        assert len(set(expected.tolist())) == 3                           # all three classes
        assert all(any(_near(s, tuple(dev_ids[i])) for i in noisy) for s, _ in new)


def test_a_bad_reference_is_reported(tmp_path):
    reference = str(tmp_path / "zero.params")                             # always class 0
    FakeBackend().save({"W": np.zeros((2, TINY.vocab_size))}, reference)
    _, log, caught = _run(tmp_path, reference, grid=[{"seed": 0}])
    assert _runs(log) == [1] and log["rounds"][0]["points_added"] == 0
    assert log["reference"]["accuracy"] <= log["reference"]["chance"]
    assert any("reference model's dev accuracy" in m for m in caught)


def test_bad_input_fails_before_anything_is_written(tmp_path, references):
    out = tmp_path / "agora"
    ref = references["demo-single"]

    def refused(exc, match, reference=ref, **kw):
        task = kw.pop("task", "demo-single")
        with pytest.raises(exc, match=match):
            _run(tmp_path, reference, task, **kw)
        assert not out.exists()

    pretrained = str(tmp_path / "pretrained.params")
    from bort_core.arch import initial_params
    ckpt.save_params(pretrained, initial_params(TINY))
    refused(ValueError, "is not a fine-tuned classifier", pretrained)
    other_vocab = str(tmp_path / "vocab5000.params")
    FakeBackend().save({"W": np.zeros((2, 5000))}, other_vocab)
    refused(ValueError, "vocabulary of 5000, the student 4096", other_vocab)
    refused(FileNotFoundError, "--reference-checkpoint .* does not exist",
            str(tmp_path / "missing.params"))
    refused(ValueError, r"2 output\(s\), task demo-regression needs 1", task="demo-regression")
    refused(ValueError, "ax-b is a diagnostic", task="ax-b")
    refused(ValueError, "--generator mlm needs", generator="mlm")        # no MLM head given
    refused(ValueError, "--generator: unknown shuffle", generator="shuffle")
    refused(ValueError, "unknown key", grid={"learning_rate": [1.0]})

    out.mkdir()
    (out / "previous.txt").write_text("a previous run")
    with pytest.raises(ValueError, match="--overwrite"):
        _run(tmp_path, ref, max_rounds=1)
    assert os.listdir(out) == ["previous.txt"]
    _, log, _ = _run(tmp_path, ref, max_rounds=1, base=_base(tmp_path, overwrite=True))
    assert _runs(log) == [4]


# ------------------------------------------------------------------------------------ CLI

@pytest.fixture
def fake_backend(monkeypatch):
    monkeypatch.setattr("bort_core.commands.finetune.get_backend", lambda name: FakeBackend())


def test_cli_agora(tmp_path, references, fake_backend, capsys):
    assert main(["agora", "--framework", "torch", "--task", "nope",
                 "--reference-checkpoint", references["demo-single"]]) == 2
    assert "unknown task" in capsys.readouterr().err
    out = tmp_path / "cli"
    common = ["agora", "--framework", "torch", "--task", "demo-single", "--config", "bort_tiny",
              "--reference-checkpoint", references["demo-single"], "--output-dir", str(out),
              "--max-len", "32", "--epochs", "1", "--batch-size", "32", "--lr", "20"]
    assert main(common) == 2                                   # default generator: mlm,...
    err = capsys.readouterr().err
    assert "--generator mlm needs --checkpoint" in err and not out.exists()
    grid = _grid(tmp_path, {"seed": [0, 1, 2]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(common + ["--generator", "swap", "--grid", grid, "--max-rounds", "1",
                              "--quiet"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "agora: 1 rounds, 3 fine-tuning runs" in stdout and "dev dev: accuracy=" in stdout
    log = json.load(open(out / "agora_log.json"))
    assert _runs(log) == [3] and len(log["grid"]) == 3
