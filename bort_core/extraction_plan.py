"""OSE's analytic part (steps 1-4 of the algorithm in bort_core.extraction): search spaces, the
surrogates p and i, the W-coefficient, the eps-schedule of candidates (the Plan) and the Pareto
front; nothing here trains."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from typing import Dict, List, Sequence

from bort_core import arch
from bort_core import io as bio
from bort_core.configs import DEMO_VOCAB_SIZE, BortConfig

AXES = ("num_layers", "num_heads", "units", "hidden_size")
AXIS_ALIASES = {"D": "num_layers", "A": "num_heads", "H": "units", "I": "hidden_size"}


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
# The demo preset's: 72 members from a 1-layer, 16-unit student up to the demo teacher's own
# shape (4 layers, 128 units, feed-forward 512), which is the maximum point T, so W's savings are
# savings against the network the student replaces.
DEMO_SPACE = SearchSpace("demo", {"num_layers": (1, 2, 4), "num_heads": (2, 4),
                                  "units": (16, 32, 64, 128), "hidden_size": (32, 128, 512)},
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


# ---------------------------------------------------------------------------------- outputs

def candidate_table(plan: Plan) -> List[Dict]:
    """Every member of the space with its analytic surrogates (the --dry-run table)."""
    keys = ("name",) + AXES + ("p", "i", "rank", "scheduled")
    return [{k: r[k] for k in keys} for r in plan.members]


def write_candidates(plan: Plan, out_dir: str) -> str:
    bio.ensure_dir(out_dir)
    path = os.path.join(out_dir, "candidates.json")
    bio.write_text(path, json.dumps(candidate_table(plan), indent=1) + "\n")
    return path
