"""OSE extraction against a fake backend whose error is a known function of the config."""
import json
import math
import os

import numpy as np
import pytest

from bort_core import arch
from bort_core import extraction as ose
from bort_core.arch import initial_params
from bort_core.checkpoint import load_params, save_params
from bort_core.cli import main
from bort_core.configs import get_config
from bort_core.data.shards import object_array
from bort_core.extraction_plan import (
    AXES,
    BORT_SPACE,
    flops,
    make_plan,
    param_count,
    search_space_from_dict,
    w_coefficient,
)

GRID = search_space_from_dict(
    {"D": [1, 2, 3, 4], "A": [2, 4], "H": [32, 64, 128], "I": [32, 64, 128],
     "base": {"vocab_size": 50, "max_length": 16}}, "test-grid")


def known_error(config, lr):
    """Smooth in size, best at lr = 1e-3: the objective the FPTAS must approximate."""
    p = param_count(config)
    return 1.0 + 40.0 / math.sqrt(p) + 0.2 * abs(math.log10(lr) + 3.0)


class FakeBackend:
    name = "fake"

    def __init__(self, crash_after=None):
        self.trainings, self.crash_after = [], crash_after

    def build(self, config, seed=0, num_classes=None):
        return {"config": config}

    def load(self, config, path, num_classes=None):
        params = load_params(path)   # the shared initial weights, in canonical names and shapes
        assert {k: v.shape for k, v in params.items()} == dict(arch.canonical_shapes(config))
        return {"config": config}

    def train_mlm(self, model, batches, steps, hparams, teacher=None):
        if self.crash_after is not None and len(self.trainings) == self.crash_after:
            raise RuntimeError("simulated crash")
        batches = list(batches)
        assert len(batches) == steps and batches[0]["input_ids"].shape[0] == hparams["batch_size"]
        self.trainings.append((model["config"].name, hparams["lr"]))
        model["lr"] = hparams["lr"]
        return [{"loss": 1.0}] * steps

    def evaluate_mlm(self, model, batches, teacher=None):
        e = known_error(model["config"], model["lr"])
        return {"mlm_loss": e, "mlm_acc": 1.0 - e / 10.0}

    def latency(self, model, batch_size, seq_len, repeats=10):
        return 1e-9 * flops(model["config"], seq_len)


def shard(n=40, vocab=50, length=12, masks=3, seed=0):
    """A shard dict (bort_core.data.shards.load_shard's layout) of random instances."""
    rng = np.random.RandomState(seed)
    lengths = rng.randint(4, length + 1, n).astype(np.int32)
    return {"input_ids": [rng.randint(0, vocab, k).astype(np.int32) for k in lengths],
            "masked_lm_positions": [np.arange(1, masks + 1, dtype=np.int32)] * n,
            "masked_lm_ids": [rng.randint(0, vocab, masks).astype(np.int32) for _ in lengths],
            "masked_lm_weights": [np.ones(masks, np.float32)] * n, "valid_lengths": lengths}


def settings(eps, **kw):
    kw.setdefault("theta", ose.theta_grid([1e-4, 1e-3, 1e-2], [4], seed=0))
    kw.setdefault("seq_len", 16)
    return ose.Settings(framework="fake", space=GRID.to_dict(), eps=eps, steps=3, **kw)


def run(tmp_path, eps, backend=None, resume=False, **kw):
    s = settings(eps, **kw)
    plan = make_plan(GRID, eps, seq_len=16, num_theta=len(s.theta))
    backend = backend or FakeBackend()
    data = shard()
    result = ose.extract(backend, plan, s, ose.subset(data, range(32)), ose.subset(data, range(32, 40)),
                         str(tmp_path), resume=resume, progress=False)
    return result, backend, plan


def exhaustive():
    """W of every scorable member computed straight from the known error (no FPTAS code)."""
    members = GRID.members()
    p = {c.name: param_count(c) for c in members}
    i = {c.name: arch.forward_flops(c, 16)["total"] for c in members}
    top = max(members, key=lambda c: (p[c.name], i[c.name]))
    out = {}
    for c in members:
        if p[c.name] < p[top.name]:
            e = min(known_error(c, lr) for lr in (1e-4, 1e-3, 1e-2))
            out[c.name] = (1 - p[c.name] / p[top.name]) * (1 - i[c.name] / i[top.name]) / e
    return out


@pytest.mark.parametrize("eps", [1, 2, 3, 5, 8, 2.5])
def test_returned_w_is_within_the_approximation_bound_of_the_exhaustive_optimum(tmp_path, eps):
    truth = exhaustive()
    order = [r["name"] for r in make_plan(GRID, 1, seq_len=16).members if r["name"] in truth]
    w_star = max(truth.values())
    rho = max(max(truth[a] / truth[b], truth[b] / truth[a]) for a, b in zip(order, order[1:]))
    result, _, _ = run(tmp_path, eps)
    w = result.best["W"]
    assert w == pytest.approx(truth[result.best["name"]], rel=1e-12)
    assert w <= w_star * (1 + 1e-12)
    assert w >= w_star / rho ** (math.ceil(eps) - 1) * (1 - 1e-12)
    if eps == 1:
        assert result.best["name"] == max(truth, key=truth.get)
    # the bound is not vacuous here: a coarse schedule does lose the optimum on this grid
    if eps == 8:
        assert w < w_star


@pytest.mark.parametrize("eps", [1, 2, 3, 7, 2.5, 60])
def test_number_of_trainings_follows_the_eps_schedule(tmp_path, eps):
    n = len(exhaustive())
    ranks = sorted({math.floor(k * eps) for k in range(n + 1) if k * eps < n})
    result, backend, plan = run(tmp_path, eps)
    assert len(backend.trainings) == len(ranks) * 3 == plan.trainings
    assert [r["rank"] for r in plan.candidates] == [plan.members[k]["rank"] for k in ranks]
    assert len(result.ranking) == len(ranks)
    assert [r["best_theta"] for r in result.ranking] == [1] * len(ranks)   # lr 1e-3 wins


def test_p_and_i_equal_the_arch_counts():
    for include in (False, True):
        plan = make_plan(GRID, 1, seq_len=16, include_embeddings=include)
        for row in plan.members:
            config = plan.config(row)
            shapes = arch.canonical_shapes(config, with_decoder=False)
            embedding = ("word_embed.0.weight", "encoder.position_weight")
            expected = sum(int(np.prod(s)) for name, s in shapes.items()
                           if include or name not in embedding)
            assert row["p"] == expected
            assert row["i"] == arch.forward_flops(config, 16)["total"]


def test_maximum_point_is_computed_and_the_ranking_is_sorted(tmp_path):
    plan = make_plan(BORT_SPACE, 1)
    t = plan.maximum
    assert (t["num_layers"], t["units"], t["hidden_size"]) == (12, 1024, 3072)
    assert plan.maximum["i"] == max(r["i"] for r in plan.members if r["p"] == plan.maximum["p"])
    assert len(plan.members) == 300 and all(r["units"] % r["num_heads"] == 0 for r in plan.members)
    result, _, _ = run(tmp_path, 1)
    ws = [r["W"] for r in result.ranking]
    assert ws == sorted(ws, reverse=True) and result.best is result.ranking[0]
    front = {r["name"] for r in result.pareto}
    for r in result.ranking:   # no front member is dominated; every other row is
        dominated = any(all(o[k] <= r[k] for k in "pie") and any(o[k] < r[k] for k in "pie")
                        for o in result.ranking)
        assert dominated == (r["name"] not in front)


def test_w_coefficient_formula():
    assert w_coefficient(25, 50, 2.0, 100, 200) == pytest.approx(0.75 * 0.75 / 2.0)
    assert w_coefficient(100, 200, 1.0, 100, 200) == 0.0
    with pytest.raises(ValueError, match="positive"):
        w_coefficient(1, 1, 0.0, 2, 2)


def test_outputs_and_best_config_loads_as_a_registry_config(tmp_path):
    result, _, _ = run(tmp_path, 2, latency=True)
    paths = ose.write_results(result, settings(2, latency=True), str(tmp_path))
    config = get_config(paths["best_config.json"])
    assert config.dahi == tuple(result.best[k] for k in AXES) and config.vocab_size == 50
    report = json.load(open(paths["ranking.json"]))
    assert report["best"] == result.best["name"] and len(report["ranking"]) == len(result.ranking)
    lines = open(paths["ranking.csv"]).read().splitlines()
    assert lines[0].startswith("position,name") and len(lines) == len(result.ranking) + 1


def test_resume_keeps_finished_trainings_and_skips_them(tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path, 3, backend=FakeBackend(crash_after=7))
    with open(tmp_path / ose.TRIALS_FILE, "a") as f:
        f.write('{"kind": "trial", "na')            # a line the crash cut short
    with pytest.raises(ValueError, match="--overwrite"):
        run(tmp_path, 3)
    with pytest.raises(ValueError, match="different settings.*eps"):
        run(tmp_path, 2, resume=True)
    result, backend, plan = run(tmp_path, 3, resume=True)
    assert len(backend.trainings) == plan.trainings - 7
    fresh, _, _ = run(tmp_path / "fresh", 3)
    assert [(r["name"], r["W"]) for r in result.ranking] == [(r["name"], r["W"]) for r in fresh.ranking]


def test_batches_follow_the_backend_protocol():
    batches = ose.train_batches(shard(), 4, 20, seed=1)
    assert len(batches) == 20
    b = batches[0]
    assert b["input_ids"].dtype == np.int32 and b["masked_weights"].dtype == np.float32
    assert b["input_ids"].shape[1] == b["valid_length"].max()
    again = ose.train_batches(shard(), 4, 20, seed=1)
    assert again[7]["input_ids"].tolist() == batches[7]["input_ids"].tolist()


@pytest.mark.parametrize("spec, message", [
    ({"D": [], "A": [2], "H": [8], "I": [8]}, "non-empty"),
    ({"D": [1], "A": [3], "H": [8], "I": [8]}, "units 8 is divisible by none"),
    ({"D": [1], "A": [2], "H": [8]}, "lacks field.*hidden_size"),
    ({"D": [1], "A": [2], "H": [8], "I": [8], "depth": [2]}, "unknown search-space field 'depth'"),
    ({"D": [1, 1], "A": [2], "H": [8], "I": [8]}, "repeats"),
    ({"D": [0], "A": [2], "H": [8], "I": [8]}, "positive integers"),
    ({"D": [1], "A": [2], "H": [8], "I": [8], "base": {"vocab": 3}}, "unknown config field"),
])
def test_bad_search_spaces_are_rejected(spec, message):
    with pytest.raises(ValueError, match=message):
        search_space_from_dict(spec, "space.json")


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="--epsilon must be in"):
        make_plan(GRID, 0.5, seq_len=16)
    with pytest.raises(ValueError, match="--epsilon must be in"):
        make_plan(GRID, 10_000, seq_len=16)
    with pytest.raises(ValueError, match="--steps must be a positive"):
        ose.Settings("fake", {}, 1, 0, [dict(ose.DEFAULT_HPARAMS)]).validate()
    with pytest.raises(ValueError, match="every member has as many parameters"):
        make_plan(search_space_from_dict({"D": [1], "A": [2, 4], "H": [8], "I": [8]}, "s"))


def test_cli_dry_run_on_the_bort_grid(tmp_path, capsys):
    assert main(["extract", "--dry-run", "--epsilon", "4", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "300 members" in out and "75 candidates" in out and "75 planned trainings" in out
    table = json.load(open(tmp_path / "candidates.json"))
    assert len(table) == 300 and sum(r["scheduled"] for r in table) == 75
    assert {"num_layers", "num_heads", "units", "hidden_size", "p", "i"} <= set(table[0])
    assert not os.path.exists(tmp_path / "ranking.csv")


def test_cli_inline_grid_and_errors_name_the_flag(tmp_path, capsys):
    assert main(["extract", "--dry-run", "--search-space", "D=1,2;A=2;H=8,16;I=8", "--output-dir",
                 str(tmp_path)]) == 0
    assert "search space inline: 4 members" in capsys.readouterr().out
    assert main(["extract", "--dry-run", "--steps", "0", "--output-dir", str(tmp_path)]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["extract", "--dry-run", "--search-space", "nope.json", "--output-dir", str(tmp_path)]) == 2
    assert "--search-space" in capsys.readouterr().err
    assert main(["extract", "--framework", "torch", "--output-dir", str(tmp_path)]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_data_beyond_the_vocabulary_is_rejected_naming_the_file(tmp_path):
    path = str(tmp_path / "part-000.npz")
    np.savez(path, **{k: object_array(v) if isinstance(v, list) else v
                      for k, v in shard(vocab=60).items()})
    tiny = get_config("bort_tiny")
    with pytest.raises(ValueError, match="part-000.npz.*outside the vocabulary"):
        ose.load_data([path], tiny.replace(vocab_size=50))
    with pytest.raises(ValueError, match="part-000.npz: instance .* more than the model's "
                       "max_length 4"):
        ose.load_data([path], tiny.replace(vocab_size=60, max_length=4))
    with pytest.raises(FileNotFoundError, match="--eval-data"):
        ose.load_data([str(tmp_path / "none-*.npz")], tiny, "--eval-data")
    assert len(ose.load_data([path], tiny.replace(vocab_size=60))["input_ids"]) == 40


def test_cli_teacher_vocabulary_mismatch_fails_before_training(tmp_path, capsys):
    teacher = get_config("bort_tiny").replace(vocab_size=100)
    path = str(tmp_path / "teacher.params")
    save_params(path, initial_params(teacher, 0))
    code = main(["extract", "--framework", "torch", "--search-space", "tiny", "--data", "x.npz",
                 "--teacher", path, "--teacher-config", "bort_tiny", "--output-dir", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--teacher" in err and "100" in err and "4096" in err


def test_compare_rankings():
    a = [{"name": "x", "W": 2.0}, {"name": "y", "W": 1.0}, {"name": "z", "W": 0.5}]
    same = ose.compare_rankings(a, [dict(r, W=r["W"] * (1 + 1e-4)) for r in a])
    assert same["same_order"] and same["spearman"] == 1.0
    assert same["max_w_rel_diff"] == pytest.approx(1e-4, rel=1e-3)
    flipped = ose.compare_rankings(a, [a[1], a[0], a[2]])
    assert not flipped["same_order"] and flipped["spearman"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different candidates"):
        ose.compare_rankings(a, a[:2])


def test_cli_full_run_with_the_fake_backend(tmp_path, monkeypatch, capsys):
    import bort_core.commands.extract

    data = tmp_path / "part-000.npz"
    fields = {k: object_array(v) if isinstance(v, list) else v for k, v in shard(vocab=4096).items()}
    np.savez(data, **fields)
    monkeypatch.setattr(bort_core.commands.extract, "get_backend", lambda name: FakeBackend())
    out = tmp_path / "out"
    args = ["extract", "--framework", "torch", "--search-space", "tiny", "--epsilon", "3",
            "--steps", "2", "--lr", "1e-3", "1e-2", "--batch-size", "4", "--eval-size", "8",
            "--data", str(data), "--output-dir", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "16 members" in printed and "5 candidates" in printed and "10 planned" in printed
    for name in ("ranking.csv", "ranking.json", "best_config.json", "candidates.json", "pareto.png"):
        assert (out / name).stat().st_size > 0, name
    assert get_config(str(out / "best_config.json")).vocab_size == 4096
    before = (out / "candidates.json").stat().st_mtime_ns
    other = [a if a != "3" else "8" for a in args]      # another eps: another candidate table
    assert main(other) == 2 and "different settings (eps" in capsys.readouterr().err
    assert (out / "candidates.json").stat().st_mtime_ns == before     # refused, untouched
    assert main(args) == 0                                          # resumes
