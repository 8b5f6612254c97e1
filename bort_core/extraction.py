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

Steps 1-4, the analytic part, are bort_core.extraction_plan; the training steps 5-6 are here.

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
import json
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from bort_core import arch
from bort_core import io as bio
from bort_core.checkpoint import save_params
from bort_core.configs import BortConfig
from bort_core.data import shards
from bort_core.data.stream import collate
from bort_core.extraction_plan import AXES, Plan, pareto_front, w_coefficient

ERRORS = ("kd", "mlm", "acc")
# hyper-parameters of one training run (Backend protocol names): lr, weight decay and the loss
# weights are the release's pretraining values; warm-up 0.1 and batch 8 rows are ours (the
# release's pretraining warmed up over 0.01 of its steps: `bort extract --recipe release`)
DEFAULT_HPARAMS = {"lr": 1e-4, "weight_decay": 0.01, "warmup_ratio": 0.1, "batch_size": 8,
                   "seed": 0, "clip_norm": 1.0, "temperature": 2.0, "mlm_weight": 0.1,
                   "teacher_ce_weight": 0.5}
RUN_FILE, TRIALS_FILE = "run.json", "trials.jsonl"


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
    backend sees only configs, numpy batches and paths. Every candidate sees the same batches,
    so the teacher's encoder runs once a batch (`Backend.cached_teacher`).
    """
    from tqdm import tqdm

    settings.validate()
    if teacher is not None:
        teacher = backend.cached_teacher(teacher)
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
