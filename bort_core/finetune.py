"""Task fine-tuning, written once over the Backend protocol (bort_core.backend).

The release's loop (alexa/bort finetune_bort.py; docs/fidelity.md), with its bugs fixed:
- schedule: warm-up from step 0 (the first update has lr 0), then linear decay floored at 1e-7,
  over `total_steps` (`bort_core.optim.finetuning_lr`);
- epochs of bucketed, shuffled batches (`train_batches`), dev evaluation with the task's metrics
  after each epoch over the whole split (FIX F1), best epoch chosen on the mean of the selecting
  metric over every dev segment (FIX F2: the release looked at the last segment only), early
  stopping after `early_stop` epochs without improvement, best-epoch reload, leaderboard files
  for every test segment;
- FIX F3: the schedule's horizon is `ramp_up_epochs` (default: all epochs) and `training_steps`
  really stops training;
- `recipe="release"` (docs/fidelity.md) restores the release's head initialisation (`prob` 0.5),
  head-only dropout, floored horizon, equal-width buckets and patience kept on ties; each has
  its own option, and an explicitly set one wins over the recipe;
- diagnostics (AX, AX-b, AX-g) train on their `train_task` and predict the diagnostic set
  (FIX D5: the release raised); labelled diagnostics are scored too (AX-g gender parity).

Framework code receives numpy batches (`input_ids` (B, L) int32 padded with the pad id,
`valid_length` (B,) int32, `labels` (B,) int64 or float32) and the `hparams` dict documented in
`make_hparams`; one run's optimizer state lives in the Trainer the backend returns.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np

from bort_core import arch
from bort_core import checkpoint as ckpt
from bort_core import io as bio
from bort_core.arch import initial_params
from bort_core.configs import BortConfig, get_config
from bort_core.data.batches import eval_batches, train_batches
from bort_core.data.leaderboard import write_submission
from bort_core.data.tasks import Example, Task, featurize, get_task, read_split
from bort_core.metrics import NonFiniteError, check_finite, evaluate
from bort_core.model_params import infer_vocab_size, join_classifier, load_model_params
from bort_core.tokenizer import load_tokenizer

CLASSIFIER_INITS = ("uniform", "gaussian", "orthogonal", "xavier")
DTYPES = ("float32", "float16")
# the scale each init draws with when `prob` is unset (our default recipe): the release's
# uniform 0.5, MXNet's Normal() and Orthogonal() defaults; xavier has none
INIT_SCALES = {"uniform": 0.5, "gaussian": 0.01, "orthogonal": 1.414, "xavier": None}
DROPOUT_SCOPES = ("all", "head")
HORIZONS = ("ceil", "floor")
BUCKET_SCHEMES = ("count", "width")
# what each recipe sets for the options left unset (None)
RECIPE_VALUES = {
    "default": {"prob": None, "dropout_scope": "all", "horizon": "ceil", "buckets": "count",
                "tie_resets_patience": False},
    "release": {"prob": 0.5, "dropout_scope": "head", "horizon": "floor", "buckets": "width",
                "tie_resets_patience": True}}


# --------------------------------------------------------------------------------- options

@dataclasses.dataclass
class FinetuneOptions:
    """One fine-tuning job; defaults are those of the release's run_finetune.sh."""
    task: str = "demo-pair"
    data_dir: Optional[str] = None
    config: str = "bort_4_8_768_1024"
    checkpoint: Optional[str] = None        # pretrained backbone (.params); None: random
    model_parameters: Optional[str] = None  # a fine-tuned classifier (.params) to start from
    vocab: Optional[str] = None             # tokenizer files; None: the embedded demo vocabulary
    output_dir: str = "runs/finetune"
    only_inference: bool = False
    epochs: int = 1
    ramp_up_epochs: Optional[float] = None   # schedule horizon in epochs; None: `epochs` (FIX F3)
    training_steps: Optional[int] = None    # stop after this many steps (and end the schedule)
    batch_size: int = 8
    dev_batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 110.0
    warmup_ratio: float = 0.45
    epsilon: float = dataclasses.field(default=1e-6, metadata={"flag": "--adam-epsilon"})
    clip_norm: float = 1.0
    early_stop: int = 200                   # patience in epochs
    dropout: float = 0.1
    classifier_init: str = "uniform"
    dtype: str = "float32"
    seed: int = 2
    max_len: int = 512
    num_buckets: int = 15
    overwrite: bool = False
    recipe: str = "default"
    prob: Optional[float] = None            # the head init's scale; None: INIT_SCALES
    dropout_scope: Optional[str] = None     # "all": backbone and head; "head": the head only
    horizon: Optional[str] = None           # schedule steps rounded up per epoch, or floored
    buckets: Optional[str] = None           # "count": equal-count buckets; "width": equal-width
    tie_resets_patience: Optional[bool] = None  # a dev score equal to the best resets patience

    def __post_init__(self):
        if self.recipe not in RECIPE_VALUES:
            raise ValueError("--recipe must be one of %s, got %r"
                             % (", ".join(RECIPE_VALUES), self.recipe))
        for name, value in RECIPE_VALUES[self.recipe].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        check_finite(self)
        for name, choices in (("dropout_scope", DROPOUT_SCOPES), ("horizon", HORIZONS),
                              ("buckets", BUCKET_SCHEMES)):
            if getattr(self, name) not in choices:
                raise ValueError("--%s must be one of %s, got %r" % (
                    name.replace("_", "-"), ", ".join(choices), getattr(self, name)))
        if self.prob is not None and self.prob <= 0:
            raise ValueError("--prob must be positive, got %r" % self.prob)
        for name in ("epochs", "batch_size", "dev_batch_size", "max_len", "num_buckets"):
            if getattr(self, name) < 1:
                raise ValueError("--%s must be at least 1, got %r"
                                 % (name.replace("_", "-"), getattr(self, name)))
        if self.ramp_up_epochs is not None and self.ramp_up_epochs <= 0:
            raise ValueError("--ramp-up-epochs must be positive, got %r" % self.ramp_up_epochs)
        if self.training_steps is not None and self.training_steps < 1:
            raise ValueError("--training-steps must be at least 1, got %r" % self.training_steps)
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError("--warmup-ratio must be in [0, 1], got %r" % self.warmup_ratio)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("--dropout must be in [0, 1), got %r" % self.dropout)
        if self.lr < 0 or self.weight_decay < 0 or self.clip_norm < 0:
            raise ValueError("--lr, --weight-decay and --clip-norm must be non-negative")
        if self.epsilon <= 0:
            raise ValueError("--adam-epsilon must be positive, got %r" % self.epsilon)
        if self.classifier_init not in CLASSIFIER_INITS:
            raise ValueError("--classifier-init must be one of %s, got %r"
                             % (", ".join(CLASSIFIER_INITS), self.classifier_init))
        if self.dtype not in DTYPES:
            raise ValueError("--dtype must be one of %s, got %r" % (", ".join(DTYPES), self.dtype))
        if self.only_inference and not self.model_parameters:
            raise ValueError("--only-inference needs --model-parameters (a fine-tuned classifier)")
        if self.max_len < 4:
            raise ValueError("--max-len must be at least 4, got %r" % self.max_len)

    def hparams(self, num_examples: int) -> Dict:
        """The framework-facing hyper-parameters for a run over `num_examples` training rows."""
        return make_hparams(self.lr, self.weight_decay, self.warmup_ratio, self.batch_size,
                            self.seed, total_steps=self.schedule_steps(num_examples),
                            clip_norm=self.clip_norm, epsilon=self.epsilon,
                            classifier_init=self.classifier_init, dtype=self.dtype)

    def schedule_steps(self, num_examples: int) -> int:
        """The schedule's horizon: ceil(ceil(N / batch) * ramp) (`horizon` "ceil"), or the
        release's int(N / batch * ramp) ("floor"); capped by `training_steps`."""
        ramp = self.epochs if self.ramp_up_epochs is None else self.ramp_up_epochs
        if self.horizon == "floor":
            total = int(num_examples / self.batch_size * ramp)
        else:
            total = int(math.ceil(math.ceil(num_examples / self.batch_size) * ramp))
        total = max(1, total)
        return min(total, self.training_steps) if self.training_steps else total


def make_hparams(lr, weight_decay, warmup_ratio, batch_size, seed, total_steps, clip_norm=1.0,
                 epsilon=1e-6, classifier_init="uniform", dtype="float32") -> Dict:
    """`hparams` for `train_classifier`: lr, weight_decay, warmup_ratio, batch_size, seed,
    clip_norm, epsilon, total_steps (the schedule's horizon across calls), dtype."""
    return {"lr": float(lr), "weight_decay": float(weight_decay),
            "warmup_ratio": float(warmup_ratio), "batch_size": int(batch_size), "seed": int(seed),
            "total_steps": int(total_steps), "clip_norm": float(clip_norm),
            "epsilon": float(epsilon), "classifier_init": classifier_init, "dtype": dtype}


def step_row(step: int, loss: float, lr: float, grad_norm: float, hparams: Dict) -> Dict:
    """A training step's row {step, loss, lr, grad_norm}; a non-finite loss, or a non-finite
    gradient norm that no float16 loss scaler skips, stops the run (NonFiniteError)."""
    scaled = hparams.get("dtype", "float32") == "float16"
    if not math.isfinite(loss) or not (scaled or math.isfinite(grad_norm)):
        raise NonFiniteError("fine-tuning step %d: the loss is %r, the gradient norm %r (lr %g): "
                             "the run diverged (lower --lr) or its starting weights are not "
                             "finite; stopped, no best model or test file written"
                             % (step, loss, grad_norm, lr))
    return {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm}


def take_steps(batches, steps: int) -> list:
    """The first `steps` batches, cycling through them when there are fewer."""
    batches = list(batches)
    if not batches and steps:
        raise ValueError("train_classifier: %d steps requested but no batches given" % steps)
    return [batches[i % len(batches)] for i in range(steps)]


def str2bool(text: str) -> bool:
    """An argparse type that reads "False" as False (the release's type=bool did not; F4)."""
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "y", "on"):
        return True
    if low in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError("expected a boolean (true/false), got %r" % text)


# ------------------------------------------------------------------------------ parameters

def classifier_init(config: BortConfig, num_classes: int, scheme: str = "uniform",
                    seed: int = 0, dropout: float = 0.1,
                    prob: Optional[float] = None) -> "OrderedDict[str, np.ndarray]":
    """A fresh head (canonical names) drawn in numpy, so both frameworks start alike.

    Biases are zero; weights, with s = `prob` (None: INIT_SCALES[scheme]), as the release's
    `--init`/`--prob` chose MXNet initialisers: uniform U(-s, s); gaussian N(0, s);
    orthogonal (an orthonormal factor of a U(-1, 1) matrix times s); xavier (Xavier():
    U(+-sqrt(3 / mean fan)), no scale)."""
    if scheme not in CLASSIFIER_INITS:
        raise ValueError("unknown classifier init %r; choose one of %s"
                         % (scheme, ", ".join(CLASSIFIER_INITS)))
    scale = INIT_SCALES[scheme] if prob is None else prob
    rng = np.random.RandomState(seed)
    head = OrderedDict()
    for name, shape in arch.classifier_shapes(config, num_classes, dropout=dropout).items():
        if name.endswith(".bias"):
            head[name] = np.zeros(shape, np.float32)
            continue
        fan_out, fan_in = shape
        if scheme == "uniform":
            w = rng.uniform(-scale, scale, shape)
        elif scheme == "gaussian":
            w = rng.normal(0.0, scale, shape)
        elif scheme == "orthogonal":
            u, _, v = np.linalg.svd(rng.uniform(-1.0, 1.0, shape), full_matrices=False)
            w = scale * (u if u.shape == shape else v)
        else:
            scale = math.sqrt(3.0 / ((fan_in + fan_out) / 2.0))
            w = rng.uniform(-scale, scale, shape)
        head[name] = w.astype(np.float32)
    return head


def initial_classifier(config: BortConfig, num_classes: int, checkpoint: Optional[str],
                       scheme: str, seed: int,
                       prob: Optional[float] = None) -> "OrderedDict[str, np.ndarray]":
    """Classifier parameters: the checkpoint's backbone (decoder dropped) or, without one, the
    release's random initialisation, plus a fresh head."""
    if checkpoint is None:
        backbone = initial_params(config, seed)
        backbone = OrderedDict((n, v) for n, v in backbone.items() if not n.startswith("decoder."))
    else:
        _, backbone = load_model_params(checkpoint, config, with_decoder=False)
    head = classifier_init(config, num_classes, scheme, seed, config.classifier_dropout, prob)
    return join_classifier(backbone, head)


def resolve_config(config: str, checkpoint: Optional[str], dropout: float,
                   scope: str = "all") -> BortConfig:
    """The config (vocabulary size from the checkpoint when given) with the run's dropout on
    backbone and head (`scope` "all"), or on the head only ("head": the release's `--dropout`,
    the backbone keeps the config's own)."""
    vocab = None
    if checkpoint is not None:
        if not os.path.exists(checkpoint):
            raise FileNotFoundError("--checkpoint %s does not exist" % checkpoint)
        vocab = infer_vocab_size(ckpt.load_params(checkpoint))
    base = get_config(config, vocab_size=vocab)
    if scope == "head":
        return base.replace(head_dropout=dropout)
    return base.replace(dropout=dropout, embed_dropout=dropout)


# ---------------------------------------------------------------------------------- data

@dataclasses.dataclass
class TaskData:
    """Examples and features of one split (`features` as `featurize` returns them)."""
    split: str
    examples: List[Example]
    features: Dict


def num_outputs(task: Task) -> int:
    return 1 if task.class_labels is None else len(task.class_labels)


def load_task(task: Task, data_dir: Optional[str], tokenizer, max_len: int,
              vocab_size: Optional[int] = None) -> Dict[str, List[TaskData]]:
    """{"train": [...], "dev": [...], "test": [...]}: every split of the task (a diagnostic:
    its train task's train and dev splits, and its own file as test)."""
    trainer = get_task(task.train_task) if task.train_task else task
    out = {"train": [], "dev": [], "test": []}
    for t, role in ((trainer, ("train", "dev")), (task, ("test",))):
        for split in t.splits:
            kind = "dev" if split.startswith("dev") else split.split("_")[0]
            if kind not in role:
                continue
            examples = read_split(t, split, data_dir).examples
            if not examples:
                raise ValueError("%s %s (%s) has no examples" % (t.name, split, t.path(
                    data_dir or "", split)))
            feats = featurize(examples, t, tokenizer, max_len)
            if vocab_size is not None:
                _check_ids(feats, vocab_size, t.name, split)
            out[kind].append(TaskData(split, examples, feats))
    if task.train_task is None and not out["train"]:
        raise ValueError("task %s has no train split" % task.name)
    return out


def _check_ids(feats, vocab_size, task, split):
    top = max(int(a.max()) for a in feats["input_ids"])
    if top >= vocab_size:
        raise ValueError("%s %s: token id %d does not fit the model's vocabulary of %d; does "
                         "--vocab match the checkpoint?" % (task, split, top, vocab_size))


def predictions(task: Task, logits: np.ndarray, what: str = "the model"):
    """(predictions, scores): class index (argmax) or the regression score; scores are the
    positive-class margins a ReCoRD query's candidates are ranked by. Non-finite logits (the
    output of broken weights) raise NonFiniteError naming `what` was predicted."""
    logits = np.asarray(logits, dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(logits).all(axis=1)))
    if bad:
        raise NonFiniteError("%s: the model's outputs are NaN or infinite for %d of %d rows (its "
                             "weights are broken: a diverged run or a damaged checkpoint)"
                             % (what, bad, len(logits)))
    if task.class_labels is None:
        return logits[:, 0], None
    scores = logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else None
    return logits.argmax(axis=1), scores


def score_split(backend, model, task: Task, data: TaskData, batch_size: int,
                pad_id: int = 1) -> Dict:
    """Predict a split; metrics when labelled. {"metrics", "predictions", "scores"}."""
    logits = backend.predict(model, eval_batches(data.features, batch_size, pad_id))
    pred, scores = predictions(task, logits, "%s %s" % (task.name, data.split))
    labelled = all(e.label is not None for e in data.examples)
    metrics = evaluate(task, data.examples, pred, scores) if labelled else {}
    return {"metrics": metrics, "predictions": pred, "scores": scores}


def selection_score(task: Task, dev_metrics: Sequence[Dict[str, float]]) -> float:
    """The mean over dev segments of the task's selecting metric (FIX F2)."""
    key = task.metrics[0]
    return float(np.mean([m[key] for m in dev_metrics]))


# ---------------------------------------------------------------------------------- loop

def check_output_dir(path: str, overwrite: bool) -> None:
    """Refuse a directory holding a previous run unless `overwrite`."""
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise ValueError("--output-dir %s is not empty; pass --overwrite to replace its files"
                         % path)
    bio.ensure_dir(path)


def write_json(path: str, data) -> None:
    bio.write_text(path, json.dumps(data, indent=1, default=float))


class Patience:
    """Best epoch and early stopping: a better score makes its epoch the best and resets the
    wait; with `ties` (the release's `>=`) an equal one resets the wait too, the best epoch
    staying the earliest; `update` says when `patience` epochs passed without either."""

    def __init__(self, patience: int, ties: bool = False):
        self.patience, self.ties = patience, ties
        self.best, self.best_epoch, self.waited = -math.inf, 0, 0

    def update(self, epoch: int, score: float) -> bool:
        if score > self.best:
            self.best, self.best_epoch, self.waited = score, epoch, 0
        elif self.ties and score == self.best:
            self.waited = 0
        else:
            self.waited += 1
        return self.waited >= self.patience


def train_and_select(backend, model, config: BortConfig, num_classes: int, task: Task,
                     train: Dict, dev: Sequence[TaskData], options: FinetuneOptions,
                     save_dir: str, progress: bool = True):
    """Epochs of training with dev evaluation; returns (best model, history, best score).

    Each epoch's model is saved as `model_bort_<task>_<epoch>.params` under `save_dir` (as the
    release did); when the last epoch is not the best, the best one is reloaded."""
    hparams = options.hparams(len(train["valid_length"]))
    history, done, patience = [], 0, Patience(options.early_stop, options.tie_resets_patience)
    limit = options.training_steps
    trainer = backend.trainer(model, hparams)
    for epoch in range(1, options.epochs + 1):
        batches = train_batches(train, options.batch_size, options.seed + epoch,
                                options.num_buckets, scheme=options.buckets)
        steps = len(batches) if limit is None else min(len(batches), limit - done)
        rows = trainer.train(batches[:steps], steps)
        done += steps
        dev_metrics = [score_split(backend, model, task, d, options.dev_batch_size)["metrics"]
                       for d in dev]
        score = selection_score(task, dev_metrics)
        entry = {"epoch": epoch, "steps": done, "score": score,
                 "loss": float(np.mean([r["loss"] for r in rows])) if rows else float("nan"),
                 "dev": {d.split: m for d, m in zip(dev, dev_metrics)}}
        history.append(entry)
        if progress:
            print("epoch %d: steps %d loss %.4f dev %s" % (epoch, done, entry["loss"], json.dumps(
                {split: {k: round(float(v), 4) for k, v in m.items()}
                 for split, m in entry["dev"].items()})), flush=True)
        backend.save(model, epoch_path(save_dir, task, epoch))
        if patience.update(epoch, score) or (limit is not None and done >= limit):
            break
    if patience.best_epoch != history[-1]["epoch"]:
        model = backend.load(config, epoch_path(save_dir, task, patience.best_epoch),
                             num_classes)
    return model, history, patience.best


def score_and_submit(backend, model, task: Task, data: Dict[str, List[TaskData]],
                     batch_size: int, output_dir: str):
    """(dev metrics, test records) of the final model, as result.json holds them; every split is
    scored before the first leaderboard file is written."""
    trainer = get_task(task.train_task) if task.train_task else task
    dev = {d.split: score_split(backend, model, trainer, d, batch_size)["metrics"]
           for d in data["dev"]}
    scored = [(d, score_split(backend, model, task, d, batch_size)) for d in data["test"]]
    test = {}
    for d, s in scored:
        path = write_submission(task, d.examples, s["predictions"], output_dir, d.split,
                                scores=s["scores"])
        test[d.split] = {"file": path, "metrics": s["metrics"]}
    return dev, test


def epoch_path(save_dir: str, task: Task, epoch: int) -> str:
    return os.path.join(save_dir, "model_bort_%s_%d.params" % (task.name, epoch))


def run_finetune(backend, options: FinetuneOptions, tokenizer=None, progress: bool = True) -> Dict:
    """The whole job: read the task, build or load the classifier, train with per-epoch dev
    evaluation (unless `only_inference`), score dev with the best model, write the test files
    and `result.json` into the output directory. Returns the result dict."""

    task = get_task(options.task)
    source = options.model_parameters or options.checkpoint
    config = resolve_config(options.config, source, options.dropout, options.dropout_scope)
    tokenizer = tokenizer or load_tokenizer(options.vocab)
    if len(tokenizer) != config.vocab_size:
        raise ValueError("the tokenizer has %d entries but the model's vocabulary has %d; pass "
                         "the matching --vocab (or --config)" % (len(tokenizer), config.vocab_size))
    data = load_task(task, options.data_dir, tokenizer, min(options.max_len, config.max_length),
                     config.vocab_size)
    trainer = get_task(task.train_task) if task.train_task else task
    num_classes = num_outputs(trainer)
    check_output_dir(options.output_dir, options.overwrite)
    if options.model_parameters:
        model = backend.load(config, options.model_parameters, num_classes)
    else:
        if options.checkpoint is None:
            warnings.warn("no --checkpoint: fine-tuning a RANDOMLY initialised %s (scores will be "
                          "near chance)" % config.name, stacklevel=2)
        init = os.path.join(options.output_dir, "init.params")
        ckpt.save_params(init, initial_classifier(config, num_classes, options.checkpoint,
                                                  options.classifier_init, options.seed,
                                                  options.prob))
        model = backend.load(config, init, num_classes)
        os.remove(init)
    history = []
    if not options.only_inference:
        train = data["train"][0].features
        model, history, _ = train_and_select(backend, model, config, num_classes, trainer, train,
                                             data["dev"], options, options.output_dir, progress)
    dev, test = score_and_submit(backend, model, task, data, options.dev_batch_size,
                                 options.output_dir)
    result = {"task": task.name, "framework": backend.name, "config": config.name,
              "history": history, "dev": dev, "test": test,
              "options": dataclasses.asdict(options)}
    best = os.path.join(options.output_dir, "model_bort_%s_best.params" % task.name)
    backend.save(model, best)
    result["model"] = best
    write_json(os.path.join(options.output_dir, "result.json"), result)
    return result
