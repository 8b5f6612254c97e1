"""`bort extract`: the OSE FPTAS over a search space, in either framework (bort_core.extraction)."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from bort_core import extraction as ose
from bort_core import io as bio
from bort_core.backend import get_backend
from bort_core.commands.convention import (
    add_data,
    add_output_dir,
    add_overwrite,
    deprecated,
)
from bort_core.extraction_plan import make_plan, parse_search_space, write_candidates
from bort_core.model_params import load_checkpoint
from bort_core.recipe import add_recipe_argument

# what `--recipe release` sets in every hyper-parameter set: the release's pretraining values
# (run_pretraining_distillation_hvd.py: --warmup_ratio 0.01, its KD term, no clipping in float32)
RELEASE_HPARAMS = {"warmup_ratio": 0.01, "kd_loss": "release", "clip_norm": 0.0}


def register(sub):
    p = sub.add_parser("extract", help="OSE: extract the best sub-architecture (FPTAS)",
                       description="Score every eps-th member of a <D, A, H, I> search space by "
                       "the OSE W-coefficient (parameter saving x inference saving / error after "
                       "--steps training steps) and write ranking.csv, ranking.json, pareto.png, "
                       "best_config.json and candidates.json to --output-dir. A run resumes the "
                       "compatible run --output-dir holds (finished trainings are read back, not "
                       "redone); --overwrite starts over.")
    p.add_argument("--framework", choices=("gluon", "torch"),
                   help="backend that trains the candidates (required unless --dry-run)")
    p.add_argument("--search-space", default="bort", metavar="{bort,tiny,demo,PATH,GRID}",
                   help="bort (the Bort paper's grid, default), tiny (16 small members on the "
                   "demo vocabulary), demo (72 members up to the demo teacher's shape: the demo preset's), a "
                   "JSON file {num_layers: [..], num_heads: [..], units: [..], "
                   "hidden_size: [..], base: {config fields}}, or inline 'D=2,4;A=4,8;H=512;I=256,512'")
    p.add_argument("--epsilon", type=float, default=1.0,
                   help="interval between candidates in parameter order, 1 <= eps <= |space| "
                   "(1 = train every member; default 1)")
    p.add_argument("--steps", type=int, default=100,
                   help="training steps per candidate and hyper-parameter set (default 100)")
    add_data(p, help="pretraining .npz shards (bort create-pretraining-data); required unless "
             "--dry-run")
    add_data(p, "--eval-data", help="held-out .npz shards for the error e (default: the last "
             "--eval-size instances of --data, which training then leaves out)")
    p.add_argument("--eval-size", type=int, default=64,
                   help="instances held out of --data when no --eval-data is given (default 64)")
    p.add_argument("--teacher", metavar="PATH", help="teacher .params checkpoint: candidates are "
                   "distilled from it and --error defaults to kd")
    p.add_argument("--teacher-config", metavar="NAME",
                   help="teacher's config (registry name, bort_D_A_I_H or JSON path)")
    p.add_argument("--error", choices=ose.ERRORS,
                   help="error surrogate e: kd (distillation loss, needs --teacher), mlm (MLM "
                   "cross-entropy) or acc (1 - MLM accuracy); default kd with a teacher, else mlm")
    p.add_argument("--inference", choices=("flops", "latency"), default="flops",
                   help="inference surrogate i: analytic FLOPs at --seq-len (default) or the "
                   "median forward latency the backend measures on this device")
    p.add_argument("--seq-len", type=int, default=128,
                   help="sequence length for FLOPs and latency (default 128)")
    p.add_argument("--latency-batch", type=int, default=1,
                   help="batch size of the latency measurement (default 1)")
    p.add_argument("--include-embeddings", action="store_true",
                   help="p counts embeddings too (default: the encoder only, the paper's "
                   "effective size)")
    p.add_argument("--lr", type=float, nargs="+", default=[ose.DEFAULT_HPARAMS["lr"]],
                   help="learning rates of Theta (default 1e-4)")
    p.add_argument("--warmup-ratio", type=float, help="share of each training's steps with "
                   "linear warm-up (default %g, ours; release recipe 0.01, the release's "
                   "pretraining value)" % ose.DEFAULT_HPARAMS["warmup_ratio"])
    add_recipe_argument(p)
    p.add_argument("--batch-size", type=int, nargs="+", default=[ose.DEFAULT_HPARAMS["batch_size"]],
                   help="batch sizes of Theta (default 8); Theta = every (lr, batch size)")
    p.add_argument("--theta", metavar="PATH",
                   help="JSON list of hyper-parameter dicts (Backend names: lr, batch_size, "
                   "weight_decay, warmup_ratio, ...); replaces --lr/--batch-size")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of initial weights and batch order (default 0)")
    output_dir = add_output_dir(p, default="runs/extract", help="rankings, plot, best config "
                                "and the record of finished trainings (default %(default)s)")
    deprecated(p, "--out", output_dir)
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (members, maximum point, planned trainings), write "
                   "candidates.json and stop: nothing is trained")
    overwrite = add_overwrite(p)
    deprecated(p, "--resume", overwrite, value=False, meaning="resuming is the default")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run, writes=lambda args: [args.output_dir])


def recipe_hparams(args) -> dict:
    """Hyper-parameters the recipe and explicit flags set on top of DEFAULT_HPARAMS."""
    base = dict(RELEASE_HPARAMS) if args.recipe == "release" else {}
    if args.warmup_ratio is not None:
        if not 0.0 <= args.warmup_ratio <= 1.0:
            raise ValueError("--warmup-ratio must be in [0, 1], got %r" % args.warmup_ratio)
        base["warmup_ratio"] = args.warmup_ratio
    return base


def _theta(args):
    base = recipe_hparams(args)
    if not args.theta:
        if any(lr <= 0 for lr in args.lr) or any(b <= 0 for b in args.batch_size):
            raise ValueError("--lr and --batch-size must be positive")
        return ose.theta_grid(args.lr, args.batch_size, args.seed, base)
    try:
        with open(args.theta) as f:
            sets = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError("--theta: %s does not exist" % args.theta) from None
    except json.JSONDecodeError as err:
        raise ValueError("--theta: %s is not valid JSON (%s)" % (args.theta, err)) from None
    if not isinstance(sets, list) or not all(isinstance(s, dict) for s in sets):
        raise ValueError("--theta: %s must hold a JSON list of objects" % args.theta)
    return [{**ose.DEFAULT_HPARAMS, **base, "seed": args.seed, **s} for s in sets]


def run(args):
    space = parse_search_space(args.search_space)
    theta = _theta(args)
    start = time.time()
    plan = make_plan(space, args.epsilon, args.seq_len, args.include_embeddings, len(theta))
    analytic = time.time() - start
    settings = ose.Settings(
        framework=args.framework or "", space=space.to_dict(), eps=args.epsilon, steps=args.steps,
        theta=theta, error=args.error or ("kd" if args.teacher else "mlm"), seq_len=args.seq_len,
        include_embeddings=args.include_embeddings, latency=args.inference == "latency",
        latency_batch=args.latency_batch, seed=args.seed, data=list(args.data or []),
        eval_data=list(args.eval_data or []), teacher=args.teacher)
    settings.validate()
    t = plan.maximum
    print("search space %s: %d members; maximum point T = %s (p=%d, i=%d); %d candidates at "
          "eps=%g x %d hyper-parameter set(s) = %d planned trainings of %d steps (analytic part "
          "%.3f s)" % (space.name, len(plan.members), t["name"], t["p"], t["i"],
                       len(plan.candidates), args.epsilon, len(theta), plan.trainings,
                       args.steps, analytic))
    resume = not args.overwrite and ose.holds_run(args.output_dir)
    if resume and not args.dry_run:
        ose.check_resumable(args.output_dir, settings)     # before anything there changes
    if args.dry_run:
        print("candidate table: %s" % write_candidates(plan, args.output_dir))
        return 0
    if not args.framework:
        raise ValueError("--framework is required unless --dry-run")
    if not args.data:
        raise ValueError("--data is required unless --dry-run")
    vocab = plan.config(t).vocab_size
    teacher_config = None
    if args.teacher:
        if not os.path.exists(args.teacher):
            raise FileNotFoundError("--teacher: %s does not exist" % args.teacher)
        teacher_config, _ = load_checkpoint(args.teacher, args.teacher_config)
        if teacher_config.vocab_size != vocab:
            raise ValueError("--teacher: %s has a vocabulary of %d entries, the search space's "
                             "students %d" % (args.teacher, teacher_config.vocab_size, vocab))
    train = ose.load_data(args.data, plan.config(t), "--data")
    if args.eval_data:
        held_out = ose.load_data(args.eval_data, plan.config(t), "--eval-data")
    else:
        n = len(train["valid_lengths"])
        if not 0 < args.eval_size < n:
            raise ValueError("--eval-size must be in [1, %d) for --data with %d instances" % (n, n))
        train, held_out = ose.subset(train, np.arange(n - args.eval_size)), \
            ose.subset(train, np.arange(n - args.eval_size, n))
    for name in (ose.RUN_FILE, ose.TRIALS_FILE) if args.overwrite else ():
        path = os.path.join(args.output_dir, name)
        if os.path.exists(path):
            os.remove(path)
    write_candidates(plan, args.output_dir)     # once the inputs are known to be good

    backend = get_backend(args.framework)
    teacher = backend.load(teacher_config, args.teacher) if args.teacher else None
    result = ose.extract(backend, plan, settings, train, held_out, args.output_dir,
                         teacher=teacher, resume=resume, progress=not args.quiet)
    paths = ose.write_results(result, settings, args.output_dir)
    plot = write_pareto_plot(result, os.path.join(args.output_dir, "pareto.png"))
    best = result.best
    print("best: %s (W=%.6g, p=%d, i=%.6g, e=%.6g); Pareto front: %s"
          % (best["name"], best["W"], best["p"], best["i"], best["e"],
             ", ".join(r["name"] for r in result.pareto)))
    print("wrote %s" % ", ".join(sorted(list(paths.values()) + ([plot] if plot else []))))
    return 0


def write_pareto_plot(result, path):
    """p against e, coloured by i, the Pareto front and the best candidate marked; None (with a
    message) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("pareto.png skipped: matplotlib is not installed (pip install -e '.[plot]')",
              file=sys.stderr)
        return None
    rows = result.ranking
    fig, ax = plt.subplots(figsize=(7, 5))
    points = ax.scatter([r["p"] for r in rows], [r["e"] for r in rows], c=[r["i"] for r in rows],
                        cmap="viridis", s=30)
    fig.colorbar(points, ax=ax, label="i (inference cost)")
    front = sorted(result.pareto, key=lambda r: r["p"])
    ax.scatter([r["p"] for r in front], [r["e"] for r in front], facecolors="none",
               edgecolors="red", s=90, label="Pareto front over (p, i, e)")
    best = result.best
    ax.scatter([best["p"]], [best["e"]], marker="*", color="orange", s=250, zorder=3,
               label="max W: %s" % best["name"])
    ax.set_xlabel("p (parameters)")
    ax.set_ylabel("e (error after training)")
    ax.set_xscale("log")
    ax.legend(loc="best", fontsize="small")
    ax.set_title("OSE extraction: %d candidates" % len(rows))
    fig.tight_layout()
    bio.save_figure(fig, path, dpi=100)
    return path
