"""`bort pretrain --framework {gluon,torch}`: distillation (or plain MLM) pretraining.

Without --data the run uses the embedded default: demo shards made on the fly from the
embedded corpus (cached under --output-dir) and the `bort_tiny` student. A run resumes from the
latest complete checkpoint in --output-dir (the engine refuses one written with other options);
--overwrite starts over.
"""
from __future__ import annotations

import dataclasses
import os

from bort_core.backend import load_framework
from bort_core.commands.convention import (
    add_adam_epsilon,
    add_data,
    add_output_dir,
    add_overwrite,
    deprecated,
    warn_deprecated,
)
from bort_core.data.bucketing import BATCHINGS
from bort_core.data.demo import CORPUS_PATH
from bort_core.data.pretraining import PretrainingOptions, create_pretraining_data
from bort_core.optim import LOSS_SCALERS
from bort_core.pretrain import (
    DTYPES,
    KD_LOSSES,
    TEACHER_MSES,
    PretrainOptions,
    release_values,
)
from bort_core.recipe import add_recipe_argument
from bort_core.resume import complete_steps
from bort_core.tokenizer import load_tokenizer

DEMO = {"student": "bort_tiny", "num_steps": 300, "tokens_per_batch": 4096, "warmup_ratio": 0.1,
        "lr": 1e-3, "ckpt_interval": 100, "log_interval": 50, "eval_interval": 100}


def register(sub):
    p = sub.add_parser("pretrain", help="distillation pretraining (gluon or torch)",
                       description="Pretrain a student config by masked-LM + knowledge "
                       "distillation from a teacher checkpoint (teacherless MLM without "
                       "--teacher), on .npz shards from `bort create-pretraining-data`. Under "
                       "horovodrun (gluon) or torchrun (torch) each worker trains on its share "
                       "of every global batch. Without --data: the embedded demo run.")
    d = PretrainOptions()
    a = p.add_argument
    a("--framework", required=True, choices=("gluon", "torch"), help="the engine")
    add_recipe_argument(p)
    a("--student", "--config", dest="student", default=None, help="student config: registry "
      "name, bort_D_A_I_H or JSON such as `bort extract`'s best_config.json; --config is an "
      "alias (default %s; bort_tiny for the embedded demo run)" % d.student)
    a("--init", help="initial student weights (.params) instead of the seeded initialisation")
    a("--teacher", help="teacher checkpoint (.params); none: teacherless MLM pretraining")
    a("--teacher-config", default=d.teacher_config, help="the teacher's config (default %(default)s)")
    add_data(p, help="training shards: globs of .npz files (default: demo shards from the "
             "embedded corpus)")
    add_data(p, "--eval-data", help="evaluation shards; evaluated every --eval-interval steps "
             "and at the end")
    output_dir = add_output_dir(p, default=d.ckpt_dir, help="checkpoints, log.jsonl and "
                                "TensorBoard events (default %(default)s)")
    deprecated(p, "--ckpt-dir", output_dir)
    add_overwrite(p, help="start over: delete the checkpoints and logs of the run in "
                  "--output-dir (default: resume it from its latest checkpoint)")
    a("--num-steps", type=int, help="optimizer steps (default %d; demo run %d)"
      % (d.num_steps, DEMO["num_steps"]))
    a("--warmup-ratio", type=float, help="share of steps with linear warm-up (default %g)"
      % d.warmup_ratio)
    a("--lr", type=float, help="peak learning rate (default %g)" % d.lr)
    a("--weight-decay", type=float, default=d.weight_decay, help="BERTAdam decoupled weight "
      "decay, not on LayerNorm/bias (default %(default)s)")
    deprecated(p, "--eps", add_adam_epsilon(p, d.eps))
    a("--clip-norm", type=float, help="global gradient-norm clip, 0 = off (default %g; "
      "release recipe: 0 in float32, 1 in float16, as the release)" % d.clip_norm)
    a("--accumulate", type=int, default=d.accumulate, help="micro-batches per optimizer step "
      "(default %(default)s)")
    a("--tokens-per-batch", type=int, help="tokens of one global batch, all workers together "
      "(default %d)" % d.tokens_per_batch)
    a("--num-buckets", type=int, default=d.num_buckets, help="length buckets (default %(default)s)")
    a("--no-avg-len", dest="use_avg_len", action="store_false", help="size batches by the "
      "bucket's longest length instead of its mean")
    a("--batching", choices=BATCHINGS, help="balanced: tokens // mean length rows, balanced "
      "split (default); release: gluonnlp 0.8.3's FixedBucketSampler, tokens // (mean + std)")
    a("--temperature", type=float, default=d.temperature, help="distillation T (default %(default)s)")
    a("--mlm-weight", type=float, default=d.mlm_weight, help="weight of the MLM term when "
      "distilling (default %(default)s)")
    a("--teacher-ce-weight", type=float, default=d.teacher_ce_weight, help="weight of the "
      "distillation term (default %(default)s)")
    a("--kd-loss", choices=KD_LOSSES, help="kl: textbook T^2 KL (default); "
      "release: the 2020 term with mxnet 1.5 semantics")
    a("--teacher-mse", choices=TEACHER_MSES, help="logged teacher_mse: plain (default) or "
      "release (T^2/2 times plain, the release's scale)")
    a("--dtype", choices=DTYPES, default=d.dtype, help="float32; float16 (dynamic loss "
      "scaling); bfloat16 (torch autocast)")
    a("--dropout", type=float, help="override the student's dropout rates (0: deterministic)")
    a("--seed", type=int, default=d.seed, help="data order, initialisation and dropout seed")
    a("--ckpt-interval", type=int, help="steps between checkpoints (default %d)" % d.ckpt_interval)
    a("--log-interval", type=int, help="steps between log lines (default %d)" % d.log_interval)
    a("--eval-interval", type=int, help="steps between evaluations, 0 = at the end only")
    a("--start-step", metavar="STEP", help="resume from the checkpoint of this step instead of "
      "the latest ('latest': deprecated, the default)")
    a("--loss-scale", type=float, help="initial float16 loss scale (default 2**15; release "
      "recipe 1.5**15)")
    a("--scale-window", type=int, help="finite steps before the loss scale doubles (default "
      "%d; the release scaler divides it by the workers)" % d.scale_window)
    a("--loss-scaler", choices=LOSS_SCALERS, help="halve: halve on every overflow (default); "
      "release: cut only when overflows reach 1%% of the steps since the last rescale")
    a("--no-tensorboard", dest="tensorboard", action="store_false", help="no event files")
    a("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run, writes=lambda args: [args.output_dir])


DEMO_TRAIN, DEMO_EVAL = "part-00[01].npz", "part-002.npz"     # globs in the demo shard folder


def demo_shards(directory: str) -> str:
    """Train and eval shards from the embedded corpus, made once in `directory`; returns the
    train glob."""

    if not os.path.exists(os.path.join(directory, DEMO_EVAL)):
        create_pretraining_data([CORPUS_PATH], directory, load_tokenizer(),
                                PretrainingOptions(max_seq_length=128, max_predictions_per_seq=20),
                                num_outputs=3, progress=False, overwrite=True)
    return os.path.join(directory, DEMO_TRAIN)


def start_step(args):
    """The step to resume from: --start-step, else the latest complete checkpoint in
    --output-dir (None: a fresh run, as with --overwrite)."""
    if args.start_step == "latest":
        warn_deprecated("bort pretrain", "--start-step latest",
                        "no flag: resuming from the latest checkpoint is the default")
        args.start_step = None
    if args.overwrite:
        if args.start_step is not None:
            raise ValueError("--overwrite starts over and --start-step resumes; pass one of them")
        return None
    if args.start_step is not None:
        return args.start_step
    return "latest" if complete_steps(args.output_dir) else None


def options_from_args(args) -> PretrainOptions:
    demo = args.data is None
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainOptions)
              if getattr(args, f.name, None) is not None}
    values.update(ckpt_dir=args.output_dir, eps=args.adam_epsilon, start_step=start_step(args),
                  overwrite=args.overwrite, progress=not args.quiet)
    for key in ("data", "eval_data"):         # the engine takes comma-separated globs
        if getattr(args, key):
            values[key] = ",".join(getattr(args, key))
    if args.recipe == "release":
        for key, value in release_values(values.get("dtype", "float32")).items():
            values.setdefault(key, value)
    values["recipe"] = args.recipe
    if demo:
        for key, value in DEMO.items():
            values.setdefault(key, value)
        shards = os.path.join(args.output_dir, "demo-shards")
        values["data"] = os.path.join(shards, DEMO_TRAIN)
        if not args.eval_data:
            values["eval_data"] = os.path.join(shards, DEMO_EVAL)
    options = PretrainOptions(**values)     # checked before the demo shards are written
    if demo:
        demo_shards(shards)
    return options


def run(args):
    options = options_from_args(args)
    rows = load_framework(args.framework, "pretrain").pretrain(options)
    last = rows[-1] if rows else {}
    if "eval_mlm_loss" in last:
        print("final eval mlm_loss %.4f mlm_acc %.4f" % (last["eval_mlm_loss"], last["eval_mlm_acc"]))
    print("checkpoints in %s" % options.ckpt_dir)
    return 0
