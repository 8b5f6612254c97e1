"""OSE: the FPTAS that extracts an optimal sub-architecture (de Wynter, arXiv 2010.08512), written
once against the Backend protocol (bort_core.backend).

Reading of the algorithm (from the OSE and Bort papers' descriptions; docs/extraction.md):

1. Search space Xi: a grid over <D, A, H, I> = (num_layers, num_heads, units, hidden_size); grid
   points with H not divisible by A are dropped (as the Bort paper did).
2. Cheap analytic surrogates for every member f: p(f) = exact trainable-parameter count
   (`bort_core.arch`; the paper's "effective" size excludes the embeddings, a flag includes them)
   and i(f) = forward FLOPs of one sequence (or, optionally, latency measured by the backend).
3. The maximum point T: the member with the most parameters, ties broken by the larger i.
4. Order Xi by p and take candidates at eps-intervals (ranks floor(k * eps), 1 <= eps <= |Xi|);
   members as large as T are left out first: their parameter saving is 0, so W = 0 whatever
   their error, and training them would be wasted.
5. Train each candidate for s steps per hyper-parameter set theta in Theta (from the same
   initial weights), evaluate the error e, keep the best theta per candidate, score W.
6. Return the argmax of W, the whole ranked table and its Pareto front over (p, i, e).

Approximation guarantee as implemented: every member of Xi lies fewer than eps ranks from a
candidate, so if W changes by at most a factor rho between p-neighbours, the returned W is at
least W* / rho**(ceil(eps) - 1) (eps = 1 is exhaustive). tests/core/test_extraction.py checks it.

Initial weights are drawn in numpy (`bort_core.arch.initial_params`) and handed to the backend as a
`.params` file, so both frameworks train every candidate from identical weights on identical
batches: with dropout off, the two rankings agree (tests/parity/test_extraction_parity.py).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from bort_core import arch
from bort_core import io as bio
from bort_core.checkpoint import save_params
from bort_core.configs import DEMO_VOCAB_SIZE, BortConfig
from bort_core.data import shards
from bort_core.data.stream import collate

AXES = ("num_layers", "num_heads", "units", "hidden_size")
AXIS_ALIASES = {"D": "num_layers", "A": "num_heads", "H": "units", "I": "hidden_size"}
ERRORS = ("kd", "mlm", "acc")
# hyper-parameters of one training run (Backend protocol names): lr, weight decay and the loss
# weights are the release's pretraining values; warm-up 0.1 and batch 8 rows are ours (the
# release's pretraining warmed up over 0.01 of its steps: `bort extract --recipe release`)
DEFAULT_HPARAMS = {"lr": 1e-4, "weight_decay": 0.01, "warmup_ratio": 0.1, "batch_size": 8,
                   "seed": 0, "clip_norm": 1.0, "temperature": 2.0, "mlm_weight": 0.1,
                   "teacher_ce_weight": 0.5}
RUN_FILE, TRIALS_FILE = "run.json", "trials.jsonl"


# ------------------------------------------------------------------------------ search spaces

@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A grid over AXES plus `base`: the BortConfig fields every member shares."""

    name: str
    axes: Dict[str, tuple]
    base: Dict = dataclasses.field(default_factory=dict)

    def members(self) -> List[BortConfig]:
        """Every grid point with units divisible by num_heads, as a BortConfig."""
        out = []
        for d, a, h, i in itertools.product(*(self.axes[k] for k in AXES)):
            if h % a == 0:
                out.append(BortConfig.from_dahi(d, a, h, i, **self.base))
        return out

    def to_dict(self) -> Dict:
        return {"name": self.name, **{k: list(v) for k, v in self.axes.items()}, "base": self.base}


# The Bort paper's grid (arXiv 2010.10499), RoBERTa vocabulary, release dropout.
BORT_SPACE = SearchSpace("bort", {"num_layers": (2, 4, 6, 8, 10, 12), "num_heads": (4, 8, 12, 16),
                                  "units": (512, 768, 1024),
                                  "hidden_size": (256, 512, 768, 1024, 3072)})
# 16 small members on the demo vocabulary; dropout off so both frameworks train identically.
TINY_SPACE = SearchSpace("tiny", {"num_layers": (1, 2), "num_heads": (2, 4), "units": (32, 64),
                                  "hidden_size": (32, 64)},
                         base={"vocab_size": DEMO_VOCAB_SIZE, "max_length": 128,
                               "dropout": 0.0, "embed_dropout": 0.0})
# The demo preset's: 48 members from a 1-layer, 16-unit student to a 4-layer, 128-unit one (as
# large as the demo teacher), so that the FPTAS trades size against error over a real range.
DEMO_SPACE = SearchSpace("demo", {"num_layers": (1, 2, 4), "num_heads": (2, 4),
                                  "units": (16, 32, 64, 128), "hidden_size": (32, 128)},
                         base=TINY_SPACE.base)
SPACES = {"bort": BORT_SPACE, "tiny": TINY_SPACE, "demo": DEMO_SPACE}


def search_space_from_dict(data: Dict, source: str) -> SearchSpace:
    """Validate a grid spec: the four axes (or D/A/H/I) as lists of positive integers, and an
    optional `base` dict of BortConfig fields (vocab_size, max_length, dropout, ...)."""
    if not isinstance(data, dict):
        raise ValueError("%s: a search space is a JSON object with keys %s" % (source, ", ".join(AXES)))
    axes, base = {}, data.get("base", {})
    for key, values in data.items():
        if key in ("base", "name"):
            continue
        axis = AXIS_ALIASES.get(key, key)
        if axis not in AXES:
            raise ValueError("%s: unknown search-space field %r; expected %s (or D, A, H, I), "
                             "name, base" % (source, key, ", ".join(AXES)))
        if axis in axes:
            raise ValueError("%s: field %s given twice (%r)" % (source, axis, key))
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError("%s: field %s must be a non-empty list of integers" % (source, axis))
        if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
            raise ValueError("%s: field %s must hold positive integers, got %r" % (source, axis, values))
        if len(set(values)) != len(values):
            raise ValueError("%s: field %s repeats a value: %r" % (source, axis, values))
        axes[axis] = tuple(sorted(values))
    missing = [a for a in AXES if a not in axes]
    if missing:
        raise ValueError("%s: search space lacks field(s) %s" % (source, ", ".join(missing)))
    if not isinstance(base, dict):
        raise ValueError("%s: field base must be an object of config fields" % source)
    clash = sorted(set(base) & (set(AXES) | {"name"}))
    if clash:
        raise ValueError("%s: base may not set %s (the grid does)" % (source, ", ".join(clash)))
    known = {f.name for f in dataclasses.fields(BortConfig)}
    unknown = sorted(set(base) - known)
    if unknown:
        raise ValueError("%s: base has unknown config field(s) %s" % (source, ", ".join(unknown)))
    for h in axes["units"]:
        if not any(h % a == 0 for a in axes["num_heads"]):
            raise ValueError("%s: inconsistent search space: units %d is divisible by none of "
                             "num_heads %s" % (source, h, list(axes["num_heads"])))
    space = SearchSpace(str(data.get("name", os.path.basename(source))), axes, dict(base))
    try:
        space.members()[0]
    except ValueError as err:
        raise ValueError("%s: base: %s" % (source, err)) from None
    return space


def parse_search_space(spec: str) -> SearchSpace:
    """`bort`, `tiny`, a JSON file, or an inline grid `D=2,4;A=4,8;H=512,768;I=256,512`."""
    if spec in SPACES:
        return SPACES[spec]
    if "=" in spec and not os.path.exists(spec):
        data = {}
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            key, _, values = part.partition("=")
            try:
                data[key.strip()] = [int(v) for v in values.split(",") if v.strip()]
            except ValueError:
                raise ValueError("--search-space: %r: values must be integers" % part) from None
        data["name"] = "inline"
        return search_space_from_dict(data, "--search-space")
    if not os.path.exists(spec):
        raise FileNotFoundError("--search-space: %r is neither %s, an inline grid (D=..;A=..;H=..;"
                                "I=..) nor an existing JSON file" % (spec, " nor ".join(SPACES)))
    try:
        with open(spec) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError("%s: not valid JSON (%s)" % (spec, err)) from None
    return search_space_from_dict(data, spec)


# ------------------------------------------------------------------------- surrogates and W

def param_count(config: BortConfig, include_embeddings: bool = False) -> int:
    """p(f): the encoder's trainable parameters (the paper's effective size), or the whole
    backbone (embeddings + encoder, MLM decoder excluded) with `include_embeddings`."""
    counts = arch.param_counts(config)
    return counts["total_without_decoder" if include_embeddings else "effective"]


def flops(config: BortConfig, seq_len: int) -> int:
    """i(f): forward FLOPs of one sequence of `seq_len` tokens (arch.forward_flops, total)."""
    return arch.forward_flops(config, seq_len)["total"]


def w_coefficient(p: float, i: float, e: float, p_max: float, i_max: float) -> float:
    """W(T, f) = ((p(T) - p(f)) / p(T)) * ((i(T) - i(f)) / i(T)) / e(f), to be maximised.

    Source: the OSE paper's W-coefficient as transcribed by a reimplementation (papers.md, 1).
    Reading: relative parameter saving x relative inference saving x inverse error, all
    against the maximum point T (p_max = p(T), i_max = i(T)); T itself scores 0.
    """
    if not e > 0:
        raise ValueError("the error surrogate must be positive to score W, got %r" % e)
    return ((p_max - p) / p_max) * ((i_max - i) / i_max) / e


def schedule(n: int, eps: float) -> List[int]:
    """Ranks (0-based, in p-order) of the candidates: floor(k * eps) for k = 0, 1, ... below n."""
    if not 1 <= eps <= max(n, 1):
        raise ValueError("--epsilon must be in [1, %d] (the number of members that can be "
                         "scored), got %r" % (n, eps))
    return sorted({int(math.floor(k * eps + 1e-9)) for k in range(int(math.ceil(n / eps)) + 1)
                   if k * eps < n})


@dataclasses.dataclass
class Plan:
    """The analytic part: every member with p and i, the maximum point and the candidates."""

    space: SearchSpace
    members: List[Dict]         # p-order; rows: name, D/A/H/I, p, i, rank, scheduled
    maximum: Dict               # T's row
    candidates: List[Dict]      # the scheduled rows, in p-order
    eps: float
    num_theta: int

    @property
    def trainings(self) -> int:
        return len(self.candidates) * self.num_theta

    def config(self, row: Dict) -> BortConfig:
        return BortConfig.from_dahi(*(row[k] for k in AXES), **self.space.base)


def make_plan(space: SearchSpace, eps: float = 1.0, seq_len: int = 128,
              include_embeddings: bool = False, num_theta: int = 1) -> Plan:
    """T, p and i for every member of `space`, and the eps-schedule of candidates."""
    members = space.members()
    if not members:
        raise ValueError("search space %r is empty" % space.name)
    too_short = [c.name for c in members if c.max_length < seq_len]
    if seq_len <= 0 or too_short:
        raise ValueError("--seq-len %d must be in [1, max_length] of every member (%s has %d)"
                         % (seq_len, (too_short or [members[0].name])[0], members[0].max_length))
    rows = [dict(name=c.name, **{k: getattr(c, k) for k in AXES},
                 p=param_count(c, include_embeddings), i=flops(c, seq_len)) for c in members]
    rows.sort(key=lambda r: (r["p"], r["i"]) + tuple(r[k] for k in AXES))
    maximum = rows[-1]
    scorable = [r for r in rows if r["p"] < maximum["p"]]
    if not scorable:
        raise ValueError("search space %r: every member has as many parameters as the maximum "
                         "point %s, so none can score above 0" % (space.name, maximum["name"]))
    chosen = set(schedule(len(scorable), eps))
    for rank, row in enumerate(rows):
        row["rank"] = rank
        row["scheduled"] = False
    for k, row in enumerate(scorable):
        row["scheduled"] = k in chosen
    return Plan(space, rows, maximum, [r for r in scorable if r["scheduled"]], eps, num_theta)


def pareto_front(rows: Sequence[Dict], keys=("p", "i", "e")) -> List[Dict]:
    """Rows no other row dominates (<= on every key, < on one): all keys are minimised."""
    front = []
    for r in rows:
        dominated = any(all(o[k] <= r[k] for k in keys) and any(o[k] < r[k] for k in keys)
                        for o in rows if o is not r)
        if not dominated:
            front.append(r)
    return front


# ------------------------------------------------------------------------------------ data

def load_data(patterns: Sequence[str], config: BortConfig, flag: str = "--data") -> Dict:
    """Masked-LM instances of `.npz` shards (globs, sorted), validated against the vocabulary
    and longest sequence of `config` by `bort_core.data.shards.load_shard`, merged into one
    shard dict."""
    try:
        files = shards.expand_shards(",".join(patterns))
    except FileNotFoundError as err:
        raise FileNotFoundError("%s: %s" % (flag, err)) from None
    loaded = [shards.load_shard(path, config.vocab_size, config.max_length) for path in files]
    data = {k: [x for shard in loaded for x in shard[k]] for k in shards.REQUIRED_FIELDS[:-1]}
    data["valid_lengths"] = np.concatenate([shard["valid_lengths"] for shard in loaded])
    return data


def subset(data: Dict, rows) -> Dict:
    """The instances `rows` of a shard dict, as a shard dict."""
    rows = np.asarray(rows)
    out = {k: [data[k][r] for r in rows] for k in shards.REQUIRED_FIELDS[:-1]}
    out["valid_lengths"] = data["valid_lengths"][rows]
    return out


def train_batches(data: Dict, batch_size: int, steps: int, seed: int) -> List[Dict]:
    """`steps` MLM batches (Backend protocol layout): passes over the instances, each in a
    seeded random order."""
    rng = np.random.RandomState(seed)
    order, out = [], []
    for _ in range(steps):
        while len(order) < batch_size:
            order.extend(rng.permutation(len(data["valid_lengths"])).tolist())
        out.append(collate(data, np.array(order[:batch_size])))
        del order[:batch_size]
    return out


def eval_batches(data: Dict, batch_size: int = 32) -> List[Dict]:
    n = len(data["valid_lengths"])
    return [collate(data, np.arange(k, min(k + batch_size, n))) for k in range(0, n, batch_size)]


# ------------------------------------------------------------------------------ the search

def error_of(metrics: Dict[str, float], kind: str) -> float:
    """e from `Backend.evaluate_mlm`: distillation loss (kd), MLM cross-entropy (mlm) or
    1 - MLM accuracy (acc)."""
    key = {"kd": "kd_loss", "mlm": "mlm_loss", "acc": "mlm_acc"}[kind]
    if key not in metrics:
        raise ValueError("the backend's evaluate_mlm returned no %r (got %s); --error %s needs it"
                         % (key, ", ".join(sorted(metrics)), kind))
    value = float(metrics[key])
    return 1.0 - value if kind == "acc" else value


@dataclasses.dataclass
class Settings:
    """Everything that decides a run's results (stored in run.json; a resume must match)."""

    framework: str
    space: Dict
    eps: float
    steps: int
    theta: List[Dict]
    error: str = "mlm"
    seq_len: int = 128
    include_embeddings: bool = False
    latency: bool = False
    latency_batch: int = 1
    seed: int = 0
    data: List[str] = dataclasses.field(default_factory=list)
    eval_data: List[str] = dataclasses.field(default_factory=list)
    teacher: Optional[str] = None

    def validate(self) -> None:
        if self.steps <= 0:
            raise ValueError("--steps must be a positive number of training steps, got %d" % self.steps)
        if self.error not in ERRORS:
            raise ValueError("--error must be one of %s, got %r" % (", ".join(ERRORS), self.error))
        if self.error == "kd" and not self.teacher:
            raise ValueError("--error kd needs a --teacher")
        if not self.theta:
            raise ValueError("--theta: no hyper-parameter sets")
        for k, theta in enumerate(self.theta):
            bad = [key for key in ("lr", "batch_size") if not (isinstance(theta.get(key), (int, float))
                                                                and theta[key] > 0)]
            if bad:
                raise ValueError("--theta: set %d needs positive %s" % (k, ", ".join(bad)))


def theta_grid(lrs: Sequence[float], batch_sizes: Sequence[int], seed: int,
               base: Optional[Dict] = None) -> List[Dict]:
    """Theta: one hyper-parameter set per (lr, batch_size), other values from `base`."""
    base = dict(DEFAULT_HPARAMS, **(base or {}), seed=seed)
    return [dict(base, lr=lr, batch_size=bs) for lr in lrs for bs in batch_sizes]


REFUSE_OUT = "--output-dir %s already holds an extraction run; resume it, or pass --overwrite"


def holds_run(out_dir: str) -> bool:
    return any(os.path.exists(os.path.join(out_dir, f)) for f in (RUN_FILE, TRIALS_FILE))


def check_resumable(out_dir: str, settings: Settings) -> None:
    """Refuse to resume the run in `out_dir` under other settings, naming those that differ."""
    with open(os.path.join(out_dir, RUN_FILE)) as f:
        stored = json.load(f)
    wanted = json.loads(json.dumps(dataclasses.asdict(settings)))
    diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    if diff:
        raise ValueError("%s holds an extraction run with different settings (%s); resume it "
                         "with the same flags, or pass --overwrite to start over"
                         % (out_dir, ", ".join(diff)))


class TrialLog:
    """Append-only record of finished trainings (one JSON line each, fsync'd): a crash keeps
    every finished one, and a half-written last line is ignored on resume."""

    def __init__(self, out_dir: str, settings: Settings, resume: bool):
        bio.ensure_dir(out_dir)
        self.path = os.path.join(out_dir, TRIALS_FILE)
        run_path = os.path.join(out_dir, RUN_FILE)
        wanted = json.loads(json.dumps(dataclasses.asdict(settings)))
        self.records = []
        if holds_run(out_dir):
            if not resume:
                raise ValueError(REFUSE_OUT % out_dir)
            check_resumable(out_dir, settings)
            self.records = self._read()
        else:
            bio.write_text(run_path, json.dumps(wanted, indent=2, sort_keys=True) + "\n")

    def _read(self) -> List[Dict]:
        if not os.path.exists(self.path):
            return []
        out = []
        with open(self.path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break   # the line a crash cut short; everything before it is intact
        # drop a torn tail so later appends stay parseable
        bio.write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in out))
        return out

    def find(self, kind: str, name: str, theta: int = 0) -> Optional[Dict]:
        for r in self.records:
            if r["kind"] == kind and r["name"] == name and r.get("theta", 0) == theta:
                return r
        return None

    def add(self, record: Dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)


@dataclasses.dataclass
class Result:
    plan: Plan
    ranking: List[Dict]         # candidates by W, best first: p, i, e, W, best_theta, pareto
    pareto: List[Dict]
    best: Dict
    i_max: float

    def best_config(self) -> BortConfig:
        return self.plan.config(self.best)


def extract(backend, plan: Plan, settings: Settings, train_data: Dict, eval_data: Dict,
            out_dir: str, teacher=None, resume: bool = False, progress: bool = True) -> Result:
    """Train every candidate of `plan` for settings.steps steps per theta, score and rank.

    `train_data`, `eval_data`: shard dicts (`load_data`). Finished trainings are logged in
    `out_dir` as they complete; with `resume` they are read back instead of retrained. The
    backend sees only configs, numpy batches and paths.
    """
    from tqdm import tqdm

    settings.validate()
    log = TrialLog(out_dir, settings, resume)
    init_path = os.path.join(out_dir, "init.params")
    if os.path.exists(init_path):   # left by a crash: may belong to another candidate
        os.remove(init_path)
    eval_b = eval_batches(eval_data)
    batches = {}

    def measured_latency(row):
        done = log.find("latency", row["name"])
        if done is None:
            model = backend.build(plan.config(row), seed=settings.seed)   # weights do not matter
            seconds = backend.latency(model, settings.latency_batch, settings.seq_len)
            done = {"kind": "latency", "name": row["name"], "seconds": float(seconds)}
            log.add(done)
        return done["seconds"]

    i_of = {r["name"]: r["i"] for r in plan.members}
    if settings.latency:
        for row in [plan.maximum] + plan.candidates:
            i_of[row["name"]] = measured_latency(row)
    i_max = max(i_of[r["name"]] for r in [plan.maximum] + plan.candidates)
    p_max = plan.maximum["p"]

    rows = []
    bar = tqdm(plan.candidates, desc="extract (%s)" % backend.name, unit="candidate",
               disable=not progress)
    for row in bar:
        bar.set_postfix_str(row["name"])
        trials, config = [], plan.config(row)
        for k, theta in enumerate(settings.theta):
            done = log.find("trial", row["name"], k)
            if done is None:
                key = (theta["batch_size"], theta.get("seed", settings.seed))
                if key not in batches:
                    batches[key] = train_batches(train_data, key[0], settings.steps, key[1])
                if not os.path.exists(init_path):   # one initial state per candidate
                    save_params(init_path, arch.initial_params(config, settings.seed))
                model = backend.load(config, init_path)
                start = time.time()
                history = backend.train_mlm(model, batches[key], settings.steps, dict(theta),
                                            teacher=teacher)
                metrics = backend.evaluate_mlm(model, eval_b, teacher=teacher)
                done = {"kind": "trial", "name": row["name"], "theta": k,
                        "e": error_of(metrics, settings.error),
                        "metrics": {m: float(v) for m, v in metrics.items()},
                        "final_train_loss": _last_loss(history),
                        "seconds": round(time.time() - start, 3)}
                log.add(done)
            trials.append(done)
        if os.path.exists(init_path):
            os.remove(init_path)
        best = min(trials, key=lambda t: (t["e"], t["theta"]))
        i = i_of[row["name"]]
        rows.append(dict(row, i=i, e=best["e"], best_theta=best["theta"],
                         W=w_coefficient(row["p"], i, best["e"], p_max, i_max),
                         metrics=best["metrics"]))
    ranking = sorted(rows, key=lambda r: (-r["W"], r["rank"]))
    front = pareto_front(ranking)
    for position, r in enumerate(ranking, 1):
        r["position"] = position
        r["pareto"] = any(r is f for f in front)
    return Result(plan, ranking, front, ranking[0], i_max)


def _last_loss(history) -> Optional[float]:
    for row in reversed(list(history or [])):
        for key in ("loss", "total_loss", "mlm_loss"):
            if key in row:
                return float(row[key])
    return None


def compare_rankings(a: Sequence[Dict], b: Sequence[Dict]) -> Dict[str, float]:
    """Two rankings of the same candidates: Spearman rank correlation of their positions and the
    largest relative W difference (the cross-framework parity measure)."""
    names = [r["name"] for r in a]
    if sorted(names) != sorted(r["name"] for r in b):
        raise ValueError("the two rankings hold different candidates")
    pos_b = {r["name"]: k for k, r in enumerate(b)}
    w_b = {r["name"]: r["W"] for r in b}
    n = len(names)
    d2 = sum((k - pos_b[name]) ** 2 for k, name in enumerate(names))
    rho = 1.0 - 6.0 * d2 / (n * (n * n - 1)) if n > 1 else 1.0
    rel = max(abs(r["W"] - w_b[r["name"]]) / max(abs(r["W"]), abs(w_b[r["name"]]), 1e-30) for r in a)
    return {"spearman": rho, "max_w_rel_diff": rel, "same_order": d2 == 0}


# ---------------------------------------------------------------------------------- outputs

CSV_FIELDS = ("position", "name", "num_layers", "num_heads", "units", "hidden_size", "p", "i",
              "e", "W", "best_theta", "pareto")


def candidate_table(plan: Plan) -> List[Dict]:
    """Every member of the space with its analytic surrogates (the --dry-run table)."""
    keys = ("name",) + AXES + ("p", "i", "rank", "scheduled")
    return [{k: r[k] for k in keys} for r in plan.members]


def write_candidates(plan: Plan, out_dir: str) -> str:
    bio.ensure_dir(out_dir)
    path = os.path.join(out_dir, "candidates.json")
    bio.write_text(path, json.dumps(candidate_table(plan), indent=1) + "\n")
    return path


def write_results(result: Result, settings: Settings, out_dir: str) -> Dict[str, str]:
    """ranking.csv, ranking.json and best_config.json (registry JSON for `--config`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.ranking)
    paths = {k: os.path.join(out_dir, k) for k in ("ranking.csv", "ranking.json", "best_config.json")}
    bio.write_text(paths["ranking.csv"], buf.getvalue())
    maximum = {k: result.plan.maximum[k] for k in ("name",) + AXES + ("p",)}
    maximum["i"] = result.i_max
    report = {"settings": dataclasses.asdict(settings), "maximum_point": maximum,
              "members": len(result.plan.members), "trainings": result.plan.trainings,
              "best": result.best["name"], "pareto": [r["name"] for r in result.pareto],
              "ranking": result.ranking}
    bio.write_text(paths["ranking.json"], json.dumps(report, indent=1) + "\n")
    result.best_config().to_json(paths["best_config.json"])
    return paths
