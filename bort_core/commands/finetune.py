"""`bort finetune` (the release's fine-tuning loop) and `bort agora` (Agora over a grid).

Both are written once in bort_core (`bort_core.finetune`, `bort_core.agora`) and reach the
framework only through `bort_core.backend.get_backend(--framework)`.
"""
from __future__ import annotations

import dataclasses

from bort_core import agora, finetune
from bort_core.agora import GENERATORS, PRUNE_RULES, AgoraOptions
from bort_core.backend import get_backend
from bort_core.commands.convention import (
    add_adam_epsilon,
    add_output_dir,
    add_overwrite,
    deprecated,
)
from bort_core.data.tasks import get_task
from bort_core.finetune import (
    BUCKET_SCHEMES,
    CLASSIFIER_INITS,
    DROPOUT_SCOPES,
    DTYPES,
    HORIZONS,
    FinetuneOptions,
    resolve_config,
    str2bool,
)
from bort_core.recipe import add_recipe_argument


def _common(p, d: FinetuneOptions):
    a = p.add_argument
    a("--framework", required=True, choices=("gluon", "torch"), help="the engine")
    a("--task", required=True, help="task name: cola, sst-2, mrpc, sts-b, qqp, mnli, qnli, rte, "
      "wnli, ax, boolq, cb, copa, multirc, record, superglue-rte, wic, wsc, ax-b, ax-g, race-h, "
      "race-m, demo-pair, demo-single, demo-regression (case-insensitive)")
    a("--data-dir", help="root of the official data layout (GLUE/SuperGLUE/RACE task "
      "directories); default for demo tasks: the embedded copies")
    a("--config", default=d.config, help="model config: registry name, bort_D_A_I_H or JSON "
      "(default %(default)s)")
    a("--checkpoint", help="pretrained backbone (.params); without it the model is randomly "
      "initialised (with a warning)")
    a("--vocab", help="tokenizer files (directory or vocab.json; default: the embedded demo "
      "vocabulary, which fits the demo-sized configs only)")
    add_output_dir(p, default=d.output_dir, help="models, test files and logs (default "
                   "%(default)s)")
    add_overwrite(p, help="start over, replacing the files in --output-dir (a fine-tuning run "
                  "does not resume: without this flag a non-empty --output-dir is refused)")
    a("--epochs", type=int, default=d.epochs, help="training epochs (default %(default)s)")
    a("--ramp-up-epochs", type=float, help="schedule horizon in epochs (default: --epochs)")
    a("--training-steps", type=int, help="stop after this many updates (ends the schedule)")
    a("--batch-size", type=int, default=d.batch_size, help="training batch (default %(default)s)")
    a("--dev-batch-size", type=int, default=d.dev_batch_size, help="evaluation batch (default "
      "%(default)s)")
    a("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
    a("--weight-decay", type=float, default=d.weight_decay, help="BERTAdam decoupled weight decay, "
      "not on LayerNorm/bias (default %(default)s)")
    a("--warmup-ratio", type=float, default=d.warmup_ratio, help="share of the schedule spent "
      "warming up from lr 0 (default %(default)s)")
    deprecated(p, "--epsilon", add_adam_epsilon(p, d.epsilon))
    a("--clip-norm", type=float, default=d.clip_norm, help="global gradient-norm clip, 0 = off "
      "(default %(default)s)")
    a("--early-stop", type=int, default=d.early_stop, help="stop after this many epochs without "
      "a better dev score (default %(default)s)")
    a("--tie-resets-patience", nargs="?", const=True, type=str2bool, help="a dev score equal to "
      "the best resets the early-stop wait (the release's >=; default: no, release recipe: yes)")
    a("--dropout", type=float, default=d.dropout, help="dropout rate (default %(default)s), on "
      "what --dropout-scope says")
    a("--dropout-scope", choices=DROPOUT_SCOPES, help="all: backbone and head (default); head: "
      "the head only, the backbone keeps its config's 0.1 (release recipe)")
    a("--classifier-init", "--init", dest="classifier_init", choices=CLASSIFIER_INITS,
      default=d.classifier_init, help="head initialisation (default %(default)s)")
    a("--prob", type=float, help="the head init's scale: U(-p, p), N(0, p), orthogonal times p; "
      "xavier ignores it (default: uniform 0.5, gaussian 0.01, orthogonal 1.414; release "
      "recipe: 0.5)")
    a("--horizon", choices=HORIZONS, help="schedule steps: ceil (default: ceil(ceil(N / batch) "
      "* ramp-up epochs)) or floor (release recipe: int(N / batch * ramp-up epochs))")
    a("--buckets", choices=BUCKET_SCHEMES, help="length buckets: count (default: equal "
      "numbers of rows) or width (release recipe: GluonNLP's equal-width keys)")
    a("--dtype", choices=DTYPES, default=d.dtype, help="float32, or float16 (torch: autocast + "
      "loss scaling; clipping on unscaled gradients)")
    a("--seed", type=int, default=d.seed, help="batch order, head initialisation and dropout "
      "seed (default %(default)s)")
    a("--max-len", type=int, default=d.max_len, help="maximum tokens per example, capped at the "
      "config's max_length (default %(default)s)")
    a("--num-buckets", type=int, default=d.num_buckets, help="length buckets of the training "
      "sampler (default %(default)s)")
    a("--quiet", action="store_true", help="no per-epoch lines")
    add_recipe_argument(p)


def register(sub):
    """Add `finetune` and `agora`."""
    d = FinetuneOptions()
    p = sub.add_parser("finetune", help="fine-tune on a GLUE/SuperGLUE/RACE/demo task",
                       description="The release's fine-tuning loop: BERTAdam, warm-up + linear "
                       "decay, clip 1, per-epoch dev evaluation with the task's metrics, best "
                       "epoch, early stopping, and the leaderboard file of each test split.")
    _common(p, d)
    p.add_argument("--model-parameters", help="a fine-tuned classifier (.params) to start from "
                   "(with --only-inference: to evaluate)")
    p.add_argument("--only-inference", nargs="?", const=True, default=False, type=str2bool,
                   help="no training: score dev and write the test files with "
                   "--model-parameters (accepts true/false)")
    p.set_defaults(run=run_finetune, writes=lambda args: [args.output_dir])

    d = FinetuneOptions(epochs=3)
    g = sub.add_parser("agora", help="Agora: fine-tune over a grid, grow train near dev mistakes",
                       description="Agora (arXiv 2010.07990): fine-tune one student per "
                       "hyper-parameter set, generate points near the best model's dev mistakes, "
                       "label them with the reference model, append them to train, prune the "
                       "weakest sets, repeat. Writes agora_log.json/.md, the best model and the "
                       "test files.")
    _common(g, d)
    a, o = g.add_argument, AgoraOptions
    a("--reference-checkpoint", required=True, help="the reference model: a classifier already "
      "fine-tuned on the task (.params), same vocabulary")
    a("--reference-config", help="the reference's config (default: --config)")
    a("--grid", default=o.grid, help="'release' (the 480-set grid the release's README "
      "suggests: seeds 0-4, lr {1e-4,1e-5,9e-6}, wd {0,10,100,350}, warmup "
      "{.35,.40,.45,.50}, batch {8,16}) or a JSON "
      "file: an object of lists (product) or a list of objects; keys seed, lr, weight_decay, "
      "warmup_ratio, batch_size, epochs")
    a("--generator", default=o.generator, help="data-generating functions, comma-separated, "
      "used in turn: %s (default %%(default)s)" % ", ".join(GENERATORS))
    a("--points-per-mistake", type=int, default=o.points_per_mistake, help="new points per dev "
      "mistake per round (default %(default)s)")
    a("--mask-prob", type=float, default=o.mask_prob, help="mlm: share of tokens resampled "
      "(default %(default)s)")
    a("--drop-prob", type=float, default=o.drop_prob, help="dropout: token deletion "
      "probability (default %(default)s)")
    a("--swap-prob", type=float, default=o.swap_prob, help="swap: adjacent-swap probability "
      "(default %(default)s)")
    a("--keep", type=float, default=o.keep, help="share of sets kept after each round "
      "(default %(default)s)")
    a("--prune", choices=PRUNE_RULES, default=o.prune, help="after each round keep the best "
      "--keep share (half, default) or drop the weakest set (one: |Theta| rounds, as the "
      "paper's runtime bound implies)")
    a("--replays", type=int, default=o.replays, help="extra runs of each round before pruning "
      "(default %(default)s)")
    a("--max-rounds", type=int, help="stop after this many rounds")
    a("--regression-tolerance", type=float, help="regression: absolute error counted as a "
      "mistake (default: half the dev scores' standard deviation)")
    a("--teachable-only", action="store_true", help="generate points only near the dev mistakes "
      "that the reference gets right (near the others its labels repeat its own error)")
    g.set_defaults(run=run_agora, writes=lambda args: [args.output_dir])


def finetune_options(args) -> FinetuneOptions:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneOptions)
              if getattr(args, f.name, None) is not None}
    return FinetuneOptions(**values, epsilon=args.adam_epsilon)


def run_finetune(args):
    options = finetune_options(args)
    get_task(options.task)    # bad names and values fail before a framework is imported
    result = finetune.run_finetune(get_backend(args.framework), options, progress=not args.quiet)
    for split, metrics in result["dev"].items():
        print("dev %s: %s" % (split, _fmt(metrics)))
    for split, info in result["test"].items():
        print("test %s: %s%s" % (split, info["file"], (" " + _fmt(info["metrics"]))
                                 if info["metrics"] else ""))
    print("model: %s" % result["model"])
    return 0


def run_agora(args):
    base = finetune_options(args)
    options = AgoraOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AgoraOptions)
                              if getattr(args, f.name, None) is not None})
    get_task(base.task)
    uses_mlm = "mlm" in [name.strip() for name in options.generator.split(",")]
    if uses_mlm and base.checkpoint is None:     # checked before a framework is imported
        raise ValueError("--generator mlm needs --checkpoint (the pretrained MLM head); or "
                         "choose --generator dropout,swap")
    backend = get_backend(args.framework)
    mlm_logits = None
    if uses_mlm:
        config = resolve_config(base.config, base.checkpoint, 0.0)
        mlm_model = backend.load(config, base.checkpoint)
        mlm_logits = lambda batches: backend.predict_mlm(mlm_model, batches)  # noqa: E731
    result = agora.run_agora(backend, base, options, mlm_logits, progress=not args.quiet)
    print("agora: %d rounds, %d fine-tuning runs, %.1fs; best dev %.4f (round %s, set %s)"
          % (result["rounds"], result["runs"], result["seconds"], result["best"]["score"],
             result["best"].get("round"), result["best"].get("set")))
    for split, metrics in result["dev"].items():
        print("dev %s: %s" % (split, _fmt(metrics)))
    for split, info in result["test"].items():
        print("test %s: %s" % (split, info["file"]))
    print("log: %s/agora_log.md" % base.output_dir)
    return 0


def _fmt(metrics):
    return " ".join("%s=%.4f" % kv for kv in metrics.items())
