"""Agora against plain fine-tuning on the embedded demo tasks (issue 5).

    python scripts/bench_agora.py [--framework torch|gluon] [--out runs/bench_agora]
        [--config runs/reproduce/pretrain-torch/config.json
         --checkpoint runs/reproduce/pretrain-torch/ckpt/0000150.params]

The table in docs/benchmarks/agora.md uses the student that `tox -e reproduce` distils (the
second form): a bort_tiny pretrained here without a teacher stayed at chance on every demo task.

1. Pretraining (once, cached under OUT/pretrain; skipped with --checkpoint): masked-LM shards
   from the embedded corpus (`bort create-pretraining-data`, length 128) and a small student
   pretrained on them without a teacher (`bort pretrain`, --config, --pretrain-steps).
2. The reference (once per task, cached under OUT/<task>/reference): Agora assumes a reference
   model better than the student, as the paper's fine-tuned large models were. By default
   (--reference pool, as `bort reproduce` does) the pretrained student fine-tuned, --epochs at
   --reference-lr, seed 0, on the task's reference pool: REFERENCE_POOL_SIZE labelled examples
   the student never trains on (`make_demo_tasks(pool=True)`). --reference CONFIG fine-tunes
   that config from random initialisation, or from --reference-checkpoint (e.g. a teacher, as
   the paper's reference was its fine-tuned teacher), for --reference-epochs on the train split;
   --reference plain uses each seed's best plain run instead (a reference no better than the
   baseline it must beat).
3. Per demo task and per benchmark seed s: a grid of hyper-parameter sets (every --lrs value x
   --grid-seeds fine-tuning seeds derived from s). Plain: one fine-tuning run per set from the
   pretrained checkpoint; its score is the best dev score over the grid. Agora: the same grid,
   the same epochs and batch size, the reference above, generator seed s.
4. A markdown table per task (best plain and Agora scores on dev and held-out, the paired
   held-out gain, Agora's best round, fine-tuning runs, wall time) with the mean over seeds,
   Agora's per-round runs and seconds from its agora_log.json, then the paired held-out gain per
   task (mean over seeds, seeds with a gain) and its mean over the tasks, written to
   OUT/bench_agora.md and OUT/bench_agora.json.

Agora's round 1 is the plain grid on the unchanged train set, and Agora returns its best model
over all rounds, both chosen on dev: when fine-tuning repeats itself for a seed, Agora's dev
score cannot fall below the plain one. The table therefore also says whether round 1 repeated
the plain best and what the later rounds (trained on generated points) scored by themselves.
Agora's later rounds learn from points generated next to dev mistakes, so its dev score is not
a held-out score. The benchmark therefore also scores the best plain model, Agora's model and the
reference on the demo test split with its labels (regenerated from the embedded corpus under
OUT/heldout; the shipped test files carry none, as on GLUE).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np

from bort_core import agora
from bort_core import checkpoint as ckpt
from bort_core import finetune as ft
from bort_core.data import demo
from bort_core.data.pretraining import read_documents
from bort_core.data.tasks import featurize, get_task
from bort_core.model_params import classifier_layout, split_classifier

TASKS = ("demo-single", "demo-pair", "demo-regression")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--framework", choices=("torch", "gluon"), default="torch")
    a("--out", default="runs/bench_agora", help="output directory (the pretrained model is "
      "cached here)")
    a("--config", default="bort_tiny", help="student config: name or JSON (default %(default)s)")
    a("--checkpoint", help="a pretrained student (.params) to use instead of pretraining one, "
      "e.g. runs/reproduce/pretrain-torch/ckpt/0000150.params with its config.json as --config")
    a("--pretrain-steps", type=int, default=2000)
    a("--pretrain-lr", type=float, default=2e-3)
    a("--tokens-per-batch", type=int, default=2048)
    a("--tasks", default=",".join(TASKS))
    a("--seeds", default="0,1,2", help="benchmark seeds (default %(default)s)")
    a("--lrs", default="5e-4,1e-3", help="fine-tuning learning rates of the grid")
    a("--grid-seeds", type=int, default=2, help="fine-tuning seeds per lr in the grid")
    a("--weight-decay", type=float, default=0.01)
    a("--epochs", type=int, default=6)
    a("--batch-size", type=int, default=16)
    a("--max-len", type=int, default=128)
    a("--reference", default="pool", help="the reference: 'pool' (the student fine-tuned on "
      "the task's reference pool), a config fine-tuned once per task from random "
      "initialisation, or 'plain' for each seed's best plain run (default %(default)s)")
    a("--reference-checkpoint", help="pretrained weights of the --reference config to "
      "fine-tune from, e.g. runs/reproduce/teacher/ckpt/0000100.params (default: random "
      "initialisation)")
    a("--reference-epochs", type=int, default=5)
    a("--reference-lr", type=float, help="default: 1e-3 with --reference pool (the demo "
      "preset's fine-tuning lr), else 1e-4")
    a("--generator", default="mlm,swap")
    a("--points-per-mistake", type=int, default=2)
    a("--teachable-only", action="store_true", help="Agora generates points only near the "
      "dev mistakes its reference gets right")
    a("--max-rounds", type=int, help="Agora's round limit (default: until one set is left)")
    a("--overwrite", action="store_true", help="redo the task runs (the pretrained model and "
      "the references are kept)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.tasks.split(",")) - set(TASKS))
    if unknown:
        p.error("--tasks: %s not among the demo tasks (%s)" % (", ".join(unknown),
                                                               ", ".join(TASKS)))
    if args.reference_checkpoint and args.reference in ("plain", "pool"):
        p.error("--reference-checkpoint: --reference %s fine-tunes no config of its own; "
                "give --reference a config to fine-tune from that checkpoint" % args.reference)
    if args.reference_lr is None:
        args.reference_lr = 1e-3 if args.reference == "pool" else 1e-4
    if args.reference_checkpoint and not os.path.exists(args.reference_checkpoint):
        p.error("--reference-checkpoint %s does not exist" % args.reference_checkpoint)
    return args


def bort(*args):
    cmd = ["bort"] + [str(x) for x in args]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def cached(done, key, path_field):
    """The record in done.json when it was made with `key` and its file still exists."""
    if not os.path.exists(done):
        return None
    with open(done) as f:
        info = json.load(f)
    return info if info["key"] == key and os.path.exists(info[path_field]) else None


def pretrained(args) -> str:
    """--checkpoint, or the cached pretrained checkpoint, made on first use."""
    if args.checkpoint:
        if not os.path.exists(args.checkpoint):
            raise SystemExit("--checkpoint %s does not exist" % args.checkpoint)
        return args.checkpoint
    root = os.path.join(args.out, "pretrain")
    done = os.path.join(root, "done.json")
    key = {"framework": args.framework, "config": args.config, "steps": args.pretrain_steps,
           "lr": args.pretrain_lr, "tokens_per_batch": args.tokens_per_batch}
    info = cached(done, key, "checkpoint")
    if info:
        print("pretrained model (cached): %s" % info["checkpoint"], flush=True)
        return info["checkpoint"]
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.time()
    bort("create-pretraining-data", "--output-dir", os.path.join(root, "data"),
         "--max-seq-length", 128, "--max-predictions-per-seq", 20, "--num-outputs", 1,
         "--seed", 12345, "--quiet")
    ckpt_dir = os.path.join(root, "model")
    bort("pretrain", "--framework", args.framework, "--student", args.config,
         "--data", os.path.join(root, "data", "*.npz"), "--output-dir", ckpt_dir,
         "--num-steps", args.pretrain_steps, "--lr", args.pretrain_lr, "--warmup-ratio", 0.05,
         "--tokens-per-batch", args.tokens_per_batch, "--log-interval", 100,
         "--ckpt-interval", args.pretrain_steps, "--seed", 0, "--no-tensorboard", "--quiet")
    checkpoint = os.path.join(ckpt_dir, "%07d.params" % args.pretrain_steps)
    log = [json.loads(line) for line in open(os.path.join(ckpt_dir, "log.jsonl"))]
    last = [r for r in log if r.get("phase") == "train"][-1]
    info = {"key": key, "checkpoint": checkpoint, "seconds": time.time() - t0,
            "last_log": {k: last.get(k) for k in ("step", "mlm_loss", "mlm_acc")}}
    ft.write_json(done, info)
    return checkpoint


def heldout_sets(args, tokenizer):
    """Each demo task's test split with its labels: the embedded tasks regenerated from the
    embedded corpus (checked against the shipped files), the test split kept labelled."""
    out = os.path.join(args.out, "heldout")
    demo.make_demo_tasks(list(read_documents(demo.CORPUS_PATH)), out, labelled_test=True)
    sets = {}
    for name in args.tasks.split(","):
        for split in ("train", "dev"):
            rel = os.path.join(name, split + ".tsv")
            with open(os.path.join(out, rel), "rb") as a, \
                    open(os.path.join(demo.TASKS_DIR, rel), "rb") as b:
                if a.read() != b.read():
                    raise SystemExit("regenerating %s from %s did not give the shipped file"
                                     % (rel, demo.CORPUS_PATH))
        task = get_task(name)
        examples = task.read(task, "dev", os.path.join(out, name, "test.tsv")).examples
        sets[name] = ft.TaskData("heldout", examples,
                                 featurize(examples, task, tokenizer, args.max_len))
    return sets


def heldout_score(backend, task, config_name, model_path, data):
    """The task's selecting metric of a fine-tuned model on the labelled held-out split."""
    head = split_classifier(ckpt.load_params(model_path))[1]
    dropout = classifier_layout(head, model_path)[1]    # the head's layers depend on it
    config = ft.resolve_config(config_name, model_path, dropout)
    model = backend.load(config, model_path, ft.num_outputs(task))
    metrics = ft.score_split(backend, model, task, data, 64)["metrics"]
    return metrics[task.metrics[0]]


def grid_sets(args, seed):
    lrs = [float(x) for x in args.lrs.split(",")]
    return [{"seed": 100 * seed + k, "lr": lr} for k in range(args.grid_seeds) for lr in lrs]


def base_options(args, task, checkpoint, out, **kw):
    return ft.FinetuneOptions(task=task, config=args.config, checkpoint=checkpoint,
                              output_dir=out, overwrite=True, epochs=args.epochs,
                              batch_size=args.batch_size, dev_batch_size=64,
                              weight_decay=args.weight_decay, max_len=args.max_len,
                              warmup_ratio=0.1, **kw)


def plain_grid(backend, args, task, checkpoint, grid, out, tokenizer):
    """One plain run per set; the best by dev score (first in grid order on ties)."""
    runs, t0 = [], time.time()
    for i, theta in enumerate(grid):
        opts = base_options(args, task, checkpoint, os.path.join(out, "set%d" % i), **theta)
        result = ft.run_finetune(backend, opts, tokenizer, progress=False)
        score = max(h["score"] for h in result["history"])
        runs.append({"set": i, "theta": theta, "score": score, "dev": result["dev"],
                     "model": result["model"]})
    best = max(runs, key=lambda r: (r["score"], -r["set"]))
    for r in runs:      # keep only the best model (the reference under --reference plain)
        for f in glob.glob(os.path.join(out, "set%d" % r["set"], "*.params")):
            if f != best["model"]:
                os.remove(f)
    return {"runs": runs, "best": best, "seconds": time.time() - t0}


def reference_model(backend, args, task, checkpoint, out, tokenizer):
    """The task's reference (cached): the student `checkpoint` fine-tuned on the task's
    reference pool (--reference pool), or --reference fine-tuned from --reference-checkpoint or
    from random initialisation."""
    done = os.path.join(out, "done.json")
    pool = args.reference == "pool"
    key = {"config": args.config if pool else args.reference,
           "checkpoint": checkpoint if pool else args.reference_checkpoint,
           "epochs": args.epochs if pool else args.reference_epochs, "lr": args.reference_lr,
           "batch_size": args.batch_size, "max_len": args.max_len,
           "data_dir": os.path.join(args.out, "pool") if pool else None}
    info = cached(done, key, "model")
    if info:
        return info
    t0 = time.time()
    if pool:
        demo.make_demo_tasks(list(read_documents(demo.CORPUS_PATH)), key["data_dir"], pool=True)
    opts = ft.FinetuneOptions(task=task, config=key["config"], checkpoint=key["checkpoint"],
                              data_dir=key["data_dir"], output_dir=out, overwrite=True,
                              epochs=key["epochs"], batch_size=args.batch_size,
                              dev_batch_size=64, lr=args.reference_lr,
                              weight_decay=args.weight_decay, max_len=args.max_len,
                              warmup_ratio=0.1, seed=0)
    with warnings.catch_warnings():     # random initialisation is meant when no checkpoint
        warnings.filterwarnings("ignore", message="no --checkpoint")
        result = ft.run_finetune(backend, opts, tokenizer, progress=False)
    info = {"key": key, "model": result["model"], "dev": result["dev"],
            "score": max(h["score"] for h in result["history"]), "seconds": time.time() - t0}
    ft.write_json(done, info)
    print("%s reference %s: dev %.4f, %.0fs" % (task, args.reference, info["score"],
                                                info["seconds"]), flush=True)
    return info


def run_agora(backend, args, task, checkpoint, grid, reference, reference_config, seed, out,
              tokenizer):
    os.makedirs(out, exist_ok=True)
    grid_path = os.path.join(out, "grid.json")
    ft.write_json(grid_path, grid)
    base = base_options(args, task, checkpoint, os.path.join(out, "run"), seed=seed)
    options = agora.AgoraOptions(reference_checkpoint=reference,
                                 reference_config=reference_config, grid=grid_path,
                                 generator=args.generator,
                                 points_per_mistake=args.points_per_mistake,
                                 max_rounds=args.max_rounds,
                                 teachable_only=args.teachable_only)
    mlm_logits = None
    if "mlm" in args.generator:
        config = ft.resolve_config(args.config, checkpoint, 0.0)
        mlm_model = backend.load(config, checkpoint)
        mlm_logits = lambda batches: backend.predict_mlm(mlm_model, batches)  # noqa: E731
    result = agora.run_agora(backend, base, options, mlm_logits, tokenizer, progress=False)
    with open(os.path.join(base.output_dir, "agora_log.json")) as f:
        log = json.load(f)
    result["per_round"] = [{k: r[k] for k in ("round", "runs", "seconds", "generate_seconds",
                                               "best_score", "best_set", "dev_mistakes",
                                               "points_added", "train_size")}
                           for r in log["rounds"]]
    result["reference"] = log["reference"]
    return result


def table(task, rows):
    lines = ["## %s (%s)" % (task, get_task(task).metrics[0]), "",
             "| seed | best plain dev | Agora dev | plain held-out | Agora held-out | Agora best "
             "round | round 1 = plain best | best of rounds >= 2 | plain runs | Agora runs (per "
             "round) | plain s | Agora s (per round) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        later = [p["best_score"] for p in r["per_round"][1:]]
        lines.append("| %d | %.4f | %.4f | %.4f | %.4f | %s | %s | %s | %d | %d (%s) | %.0f | "
                     "%.0f (%s) |" % (
            r["seed"], r["plain"], r["agora"], r["plain_heldout"], r["agora_heldout"],
            r["agora_best_round"],
            "yes" if r["round1_repeats_plain"] else "no",
            "%.4f" % max(later) if later else "-", r["plain_runs"], r["agora_runs"],
            ", ".join(str(p["runs"]) for p in r["per_round"]), r["plain_seconds"],
            r["agora_seconds"],
            ", ".join("%.0f" % (p["seconds"] + p["generate_seconds"]) for p in r["per_round"])))
    mean = {k: float(np.mean([r[k] for r in rows])) for k in
            ("plain", "agora", "plain_heldout", "agora_heldout", "plain_runs", "agora_runs",
             "plain_seconds", "agora_seconds")}
    lines.append("| mean | %.4f | %.4f | %.4f | %.4f | | | | %.1f | %.1f | %.0f | %.0f |" % (
        mean["plain"], mean["agora"], mean["plain_heldout"], mean["agora_heldout"],
        mean["plain_runs"], mean["agora_runs"], mean["plain_seconds"], mean["agora_seconds"]))
    lines.append("")
    for split, key in (("dev", ""), ("held-out", "_heldout")):
        wins = sum(r["agora" + key] > r["plain" + key] for r in rows)
        lines.append("Agora above the best plain run on %s: %d of %d seeds; mean difference "
                     "%+.4f." % (split, wins, len(rows), mean["agora" + key] - mean["plain" + key]))
    lines.append("")
    return lines, mean


def main(argv=None):
    args = parse_args(argv)
    from bort_core.backend import get_backend
    from bort_core.tokenizer import load_tokenizer

    start = time.time()
    os.makedirs(args.out, exist_ok=True)
    checkpoint = pretrained(args)
    backend = get_backend(args.framework)
    tokenizer = load_tokenizer(None)
    heldout = heldout_sets(args, tokenizer)
    seeds = [int(s) for s in args.seeds.split(",")]
    report = {"settings": vars(args), "checkpoint": checkpoint, "tasks": {}}
    md = ["# Agora vs plain fine-tuning (%s, %s)" % (args.framework, args.config), ""]
    settings = {k: v for k, v in vars(args).items()
                if k not in ("out", "tasks", "seeds", "overwrite")}
    for task in args.tasks.split(","):
        rows, ref = [], None
        if args.reference != "plain":
            ref = reference_model(backend, args, task, checkpoint,
                                  os.path.join(args.out, task, "reference"), tokenizer)
        for seed in seeds:
            out = os.path.join(args.out, task, "seed%d" % seed)
            if os.path.exists(out) and args.overwrite:
                shutil.rmtree(out)
            done = os.path.join(out, "row.json")
            if os.path.exists(done):
                with open(done) as f:
                    row = json.load(f)
                if row.get("settings") != settings:
                    raise SystemExit("%s holds a run with other settings; use --overwrite or "
                                     "another --out" % out)
                rows.append(row)
                continue
            grid = grid_sets(args, seed)
            plain = plain_grid(backend, args, task, checkpoint, grid,
                               os.path.join(out, "plain"), tokenizer)
            if ref is None:
                reference, reference_config = plain["best"]["model"], None
            else:
                reference, reference_config = ref["model"], ref["key"]["config"]
            result = run_agora(backend, args, task, checkpoint, grid, reference,
                               reference_config, seed, os.path.join(out, "agora"), tokenizer)
            first = result["per_round"][0]
            row = {"seed": seed, "settings": settings, "grid": grid, "plain": plain["best"]["score"],
                   "plain_set": plain["best"]["set"], "plain_scores": [r["score"] for r in
                                                                       plain["runs"]],
                   "plain_runs": len(grid), "plain_seconds": plain["seconds"],
                   "agora": result["best"]["score"], "agora_best_round": result["best"]["round"],
                   "agora_best_set": result["best"]["set"], "agora_runs": result["runs"],
                   "agora_rounds": result["rounds"], "agora_seconds": result["seconds"],
                   "agora_dev": result["dev"], "reference": result["reference"],
                   "round1_repeats_plain": bool(abs(first["best_score"] - plain["best"]["score"])
                                                < 1e-9),
                   "per_round": result["per_round"], "plain_model": plain["best"]["model"],
                   "agora_model": result["model"]}
            ft.write_json(done, row)
            rows.append(row)
            print("%s seed %d: best plain %.4f, Agora %.4f (round %s), %d + %d runs, %.0fs + %.0fs"
                  % (task, seed, row["plain"], row["agora"], row["agora_best_round"],
                     row["plain_runs"], row["agora_runs"], row["plain_seconds"],
                     row["agora_seconds"]), flush=True)
        t = get_task(task)
        for row in rows:        # scored from the kept models, cached rows included
            for key in ("plain", "agora"):
                row[key + "_heldout"] = heldout_score(backend, t, args.config,
                                                      row[key + "_model"], heldout[task])
        lines, mean = table(task, rows)
        md += lines
        if ref is not None:
            ref["heldout"] = heldout_score(backend, t, ref["key"]["config"], ref["model"],
                                           heldout[task])
            source = ("the student on the reference pool" if args.reference == "pool" else
                      "%s from %s" % (args.reference, args.reference_checkpoint
                                      or "random initialisation"))
            md += ["Reference: %s, dev %.4f, held-out %.4f (%.0fs)." % (
                source, ref["score"], ref["heldout"], ref["seconds"]), ""]
        report["tasks"][task] = {"rows": rows, "mean": mean, "reference": ref}
    gains = {task: [r["agora_heldout"] - r["plain_heldout"] for r in info["rows"]]
             for task, info in report["tasks"].items()}
    md += ["## Agora's paired held-out gain over the best plain run", "",
           "| task | gain per seed | mean gain | seeds with a gain |", "|---|---|---|---|"]
    md += ["| %s | %s | %+.4f | %d of %d |" % (task, ", ".join("%+.4f" % g for g in gain),
                                                np.mean(gain), sum(g > 0 for g in gain), len(gain))
           for task, gain in gains.items()]
    report["heldout_gain"] = {task: {"per_seed": gain, "mean": float(np.mean(gain)),
                                     "seeds_gaining": int(sum(g > 0 for g in gain))}
                              for task, gain in gains.items()}
    report["mean_heldout_gain"] = float(np.mean([g["mean"] for g in
                                                 report["heldout_gain"].values()]))
    md += ["", "Mean over the tasks: %+.4f." % report["mean_heldout_gain"], ""]
    report["seconds"] = time.time() - start
    md += ["Settings: %s" % json.dumps({k: v for k, v in vars(args).items() if k != "out"}),
           "", "Wall time of this invocation: %.0fs" % report["seconds"], ""]
    ft.write_json(os.path.join(args.out, "bench_agora.json"), report)
    with open(os.path.join(args.out, "bench_agora.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
