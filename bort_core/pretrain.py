"""Distillation pretraining: everything that does not depend on the framework.

Both `bort_gluon.pretrain` and `bort_torch.pretrain` implement an `Engine` (forward/backward of
one micro-batch, the optimizer update, state I/O); `run_pretraining` here drives either one, so
the data order, schedule, loss scaling, logging, checkpoints and resume are written once, from
their parts: the loss (`bort_core.losses`), BERTAdam, the schedule, clipping and loss scaling
(`bort_core.optim`), the batch stream (`bort_core.data.stream`), checkpoints and resume
(`bort_core.resume`). `BackendBase` is the Backend protocol's MLM half, written over this loop.

`--recipe release` sets the release's values at once (`release_values`: batching, loss
scaler, logged mse, KD term, clipping); explicit options win.

Logs (every `log_interval` steps and at the last, rank 0): losses, accuracy and gradient norm
as their mean over the steps since the previous line; lr, `skipped` (the running count of
non-finite float16 steps) and `loss_scale` as their value at the logged step.

Fixed release bugs: P1 every batch of every shard (`bort_core.data.stream`); P2 the
fixed-length bucketing path works; P4 logged distillation terms are averaged like the loss; P5
only rank 0 logs and writes; P6 the final step is always checkpointed; P7 the loss-scale window
is an integer; the run is seeded (`--seed`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from typing import Dict, List, Optional

import numpy as np

from bort_core.arch import initial_params
from bort_core.backend import load_framework
from bort_core.configs import get_config
from bort_core.data.bucketing import BATCHINGS
from bort_core.data.shards import expand_shards
from bort_core.data.stream import BatchList, BatchStream, worker_slice
from bort_core.losses import logged_mse, normalizer
from bort_core.metrics import NonFiniteError, check_finite
from bort_core.model_params import join_classifier, load_backbone_and_head, load_model_params
from bort_core.optim import LOSS_SCALERS, make_scaler, pretraining_lr
from bort_core.resume import (
    check_resume_options,
    check_writable,
    checkpoint_paths,
    complete_steps,
    discard_run,
    load_checkpoint,
    resolve_start,
    save_checkpoint,
)

# ------------------------------------------------------------------------------------ options

KD_LOSSES = ("kl", "release")
DTYPES = ("float32", "float16", "bfloat16")
TEACHER_MSES = ("plain", "release")


@dataclasses.dataclass
class PretrainOptions:
    """Hyper-parameters of a run; defaults are the 2020 release's where it had one."""

    student: str = "bort_4_8_768_1024"
    teacher: Optional[str] = None              # teacher .params path (None: teacherless MLM)
    teacher_config: str = "roberta_24_1024_16"
    data: str = ""                             # glob(s) of training shards
    eval_data: str = ""                        # glob(s) of eval shards ('' = none)
    ckpt_dir: str = "runs/pretrain"            # '' = no checkpoints, no logs
    num_steps: int = 2000000
    warmup_ratio: float = 0.01
    lr: float = 1e-4
    weight_decay: float = 0.01
    eps: float = dataclasses.field(default=1e-6, metadata={"flag": "--adam-epsilon"})
    beta1: float = 0.9
    beta2: float = 0.999
    clip_norm: float = 1.0
    accumulate: int = 1
    tokens_per_batch: int = 1024               # global (all workers together)
    num_buckets: int = 20
    use_avg_len: bool = True
    temperature: float = 2.0
    mlm_weight: float = 0.1
    teacher_ce_weight: float = 0.5
    kd_loss: str = "kl"
    dtype: str = "float32"
    dropout: Optional[float] = None            # override the student's dropout (0 for parity)
    seed: int = 0
    ckpt_interval: int = 10000
    log_interval: int = 100
    eval_interval: int = 0                     # 0: eval only at the end (when eval_data is set)
    start_step: Optional[str] = None           # an integer or "latest"
    overwrite: bool = False                    # delete an earlier run in ckpt_dir, start over
    init: Optional[str] = None                 # initial student weights (.params) instead of random
    loss_scale: float = 2.0 ** 15
    scale_window: int = 2000
    batching: str = "balanced"                 # or "release": gluonnlp 0.8.3's sampler
    loss_scaler: str = "halve"                 # or "release": the tolerant DynamicLossScaler
    teacher_mse: str = "plain"                 # or "release": logged on the release's scale
    recipe: str = "default"                    # the --recipe the values came from (recorded)
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        check_finite(self)
        if self.kd_loss not in KD_LOSSES:
            raise ValueError("--kd-loss must be one of %s, got %r" % (", ".join(KD_LOSSES),
                                                                      self.kd_loss))
        for flag, value, allowed in (("--dtype", self.dtype, DTYPES),
                                     ("--batching", self.batching, BATCHINGS),
                                     ("--loss-scaler", self.loss_scaler, LOSS_SCALERS),
                                     ("--teacher-mse", self.teacher_mse, TEACHER_MSES)):
            if value not in allowed:
                raise ValueError("%s must be one of %s, got %r" % (flag, ", ".join(allowed), value))
        for name in ("num_steps", "accumulate", "tokens_per_batch", "num_buckets",
                     "log_interval", "ckpt_interval", "scale_window"):
            if int(getattr(self, name)) < 1:
                raise ValueError("--%s must be at least 1, got %r"
                                 % (name.replace("_", "-"), getattr(self, name)))
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError("--warmup-ratio must be in [0, 1], got %r" % self.warmup_ratio)
        if self.temperature <= 0:
            raise ValueError("--temperature must be positive, got %r" % self.temperature)
        if self.lr < 0 or self.weight_decay < 0 or self.clip_norm < 0:
            raise ValueError("--lr, --weight-decay and --clip-norm must be non-negative")
        if self.eps <= 0:
            raise ValueError("--adam-epsilon must be positive, got %r" % self.eps)
        if self.loss_scale < 1:
            raise ValueError("--loss-scale must be at least 1, got %r" % self.loss_scale)

    @property
    def warmup_steps(self) -> int:
        return int(self.num_steps * self.warmup_ratio)


def release_values(dtype: str) -> Dict:
    """The option values `--recipe release` sets (explicit options win): the release's batching,
    loss scaler (initial scale 1.5**15, window 2000 per run), logged teacher_mse and KD term;
    its float32 path had no gradient clipping, its float16 path clipped to norm 1."""
    return {"batching": "release", "loss_scaler": "release", "teacher_mse": "release",
            "kd_loss": "release", "loss_scale": 1.5 ** 15, "scale_window": 2000,
            "clip_norm": 1.0 if dtype == "float16" else 0.0, "use_avg_len": True,
            "warmup_ratio": 0.01}


# ------------------------------------------------------------------------------------- setup

def resolve_models(options: PretrainOptions):
    """(student config, initial student params, teacher config or None, teacher params or None),
    validated before any training: unknown configs, missing files, vocabulary mismatch."""
    params = None
    if options.init:
        student, params = load_model_params(options.init, options.student)
    else:
        student = get_config(options.student)
    if options.dropout is not None:
        student = student.replace(dropout=options.dropout, embed_dropout=options.dropout)
    teacher, teacher_params = None, None
    if options.teacher:
        if not os.path.exists(options.teacher):
            raise FileNotFoundError("teacher checkpoint %s does not exist" % options.teacher)
        teacher, teacher_params = load_model_params(options.teacher, options.teacher_config)
        teacher = teacher.without_dropout()
        if teacher.vocab_size != student.vocab_size:
            raise ValueError("teacher %s has a %d-entry vocabulary, the student %s %d: they must "
                             "share one" % (options.teacher, teacher.vocab_size, student.name,
                                            student.vocab_size))
    if params is None:
        params = initial_params(student, options.seed)
    return student, params, teacher, teacher_params


def make_streams(options: PretrainOptions, config):
    """(train stream, eval stream or None), every shard loaded and validated once against the
    student's vocabulary and longest sequence."""
    if not options.data:
        raise ValueError("--data: give the training shards (e.g. 'shards/part-*.npz')")
    kw = dict(tokens_per_batch=options.tokens_per_batch, num_buckets=options.num_buckets,
              use_avg_len=options.use_avg_len, seed=options.seed, vocab_size=config.vocab_size,
              max_length=config.max_length, batching=options.batching)
    stream = BatchStream(expand_shards(options.data), **kw)
    stream.validate()
    eval_stream = None
    if options.eval_data:
        eval_stream = BatchStream(expand_shards(options.eval_data), **kw)
        eval_stream.validate()
    return stream, eval_stream


# ------------------------------------------------------------------------- Backend helpers

def options_from_hparams(hparams: Dict, steps: int) -> PretrainOptions:
    """PretrainOptions for `Backend.train_mlm` (bort_core.backend's hparams; no files written)."""
    keys = ("lr", "weight_decay", "warmup_ratio", "seed", "clip_norm", "temperature",
            "mlm_weight", "teacher_ce_weight", "kd_loss", "accumulate")
    values = {k: hparams[k] for k in keys if hparams.get(k) is not None}
    return PretrainOptions(num_steps=steps, ckpt_dir="", progress=False, tensorboard=False,
                           log_interval=steps, **values)


def evaluation_row(result: Dict[str, float]) -> Dict[str, float]:
    """`evaluate`'s statistics under the Backend protocol's names."""
    row = {"mlm_loss": result["mlm_loss"], "mlm_acc": result["mlm_acc"]}
    if "teacher_ce" in result:
        row["kd_loss"] = result["teacher_ce"]
    return row


def batch_key(*arrays: np.ndarray) -> bytes:
    """A digest of a batch's input arrays: the teacher caches (`TeacherCache` in each framework)
    find a batch they have seen by it."""
    digest = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(("%s%s" % (a.dtype.str, a.shape)).encode())
        digest.update(a.tobytes())
    return digest.digest()


class BackendBase:
    """The Backend methods written once: loading and saving through a framework's `model`
    module, MLM through its pretraining `Engine` (set as `engine` by the subclass),
    classification through its `finetune` module."""

    name = ""
    engine = None

    def load(self, config, path: str, num_classes: Optional[int] = None):
        m = load_framework(self.name, "model")
        config, params, head = load_backbone_and_head(path, config)
        model = m.BortModel(config, use_decoder=any(n.startswith("decoder.") for n in params))
        m.set_params(model, params, path)
        if not num_classes:
            return model
        classifier = m.BortClassifier(model, num_classes, dropout=config.classifier_dropout)
        if head is not None:
            m.set_params(classifier, join_classifier(params, head), path)
        return classifier

    def save(self, model, path: str) -> None:
        load_framework(self.name, "model").save_checkpoint(model, path)

    def train_mlm(self, model, batches, steps: int, hparams: Dict, teacher=None):
        engine = self.engine(options_from_hparams(hparams, steps), model, teacher)
        return run_pretraining(engine, engine.opt_, BatchList(batches))

    def evaluate_mlm(self, model, batches, teacher=None) -> Dict[str, float]:
        engine = self.engine(options_from_hparams({}, 1), model, teacher)
        return evaluation_row(evaluate(engine, BatchList(batches)))

    def cached_teacher(self, teacher):
        return load_framework(self.name, "pretrain").TeacherCache(teacher)

    def _finetune(self):
        return load_framework(self.name, "finetune")

    def trainer(self, model, hparams: Dict):
        return self._finetune().Trainer(model, hparams)

    def train_classifier(self, model, batches, steps: int, hparams: Dict):
        return self.trainer(model, hparams).train(batches, steps)

    def predict(self, model, batches):
        return self._finetune().predict(model, batches)

    def predict_mlm(self, model, batches):
        return self._finetune().predict_mlm(model, batches)


# ----------------------------------------------------------------------------------- logging

class EventLog:
    """TensorBoard scalars (tensorboardX, framework-neutral) plus a JSON-lines log, rank 0 only;
    tags as the release named them (train/losses/mlm_loss, learning_rate/lr, ...)."""

    def __init__(self, directory: str, tensorboard: bool = True):
        os.makedirs(directory, exist_ok=True)
        self.writer = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                warnings.warn("tensorboardX is not installed: no TensorBoard events, only %s "
                              "(pip install -e '.[tensorboard]', or pass --no-tensorboard)"
                              % os.path.join(directory, "log.jsonl"), stacklevel=2)
            else:
                self.writer = SummaryWriter(os.path.join(directory, "tensorboard"))
        self.jsonl = open(os.path.join(directory, "log.jsonl"), "a")

    def write(self, phase: str, step: int, row: Dict[str, float]) -> None:
        self.jsonl.write(json.dumps(dict(row, phase=phase, step=step)) + "\n")
        self.jsonl.flush()
        if self.writer is None:
            return
        for key, value in row.items():
            group = {"lr": "learning_rate", "tokens_per_s": "latency", "duration": "latency",
                     "skipped": "global", "loss_scale": "global", "grad_norm": "global"}.get(
                         key, "losses")
            self.writer.add_scalar("%s/%s/%s" % (phase, group, key), value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.jsonl.close()


def format_row(step: int, row: Dict[str, float]) -> str:
    keys = ("loss", "mlm_loss", "mlm_acc", "teacher_ce", "teacher_mse", "lr", "tokens_per_s",
            "skipped")
    return "step %d: " % step + " ".join("%s %.6g" % (k, row[k]) for k in keys if k in row)


# ---------------------------------------------------------------------------------- the loop

class Engine:
    """What a framework provides (bort_gluon/bort_torch.pretrain.Engine implement it).

    Statistics are SUMS over this worker's rows (loss terms already divided by the global
    normalizer), so `allreduce` of them over workers gives the global values."""

    rank = 0
    world = 1
    teacher = None    # the teacher model, when distilling
    opt_ = None       # the run's PretrainOptions

    def params(self) -> Dict[str, np.ndarray]:
        """The student's canonical parameters."""

    def states(self) -> Dict[str, np.ndarray]:
        """BERTAdam moments as `mean:<name>` / `var:<name>` arrays."""

    def load(self, params: Dict[str, np.ndarray], states: Optional[Dict[str, np.ndarray]]):
        """Replace the student's weights (and optimizer moments)."""

    def seed(self, value: int) -> None:
        """Reseed the framework RNG (dropout)."""

    def backward(self, batch: Dict[str, np.ndarray], normalizer: float, scale: float) -> Dict:
        """Forward + backward of this worker's rows, gradients ADDED; returns statistic sums."""

    def update(self, lr: float, scale: float) -> Dict:
        """All-reduce (sum) the gradients, unscale, check finiteness, clip, BERTAdam step if
        finite, zero the gradients; returns {'finite': bool, 'grad_norm': float}."""

    def evaluate(self, batch: Dict[str, np.ndarray], normalizer: float) -> Dict:
        """Statistic sums of this worker's rows in eval mode, no gradients."""

    def allreduce(self, values: List[float]) -> List[float]:
        """Sum of a list of floats over workers."""


STAT_KEYS = ("loss", "mlm_loss", "mlm_acc", "teacher_ce", "teacher_mse", "tokens")
# logged as means over the log window; the other row keys as their value at the logged step
WINDOW_MEANS = ("loss", "mlm_loss", "mlm_acc", "teacher_ce", "teacher_mse", "grad_norm")


def _merge(engine, stats: List[Dict]) -> Dict[str, float]:
    keys = [k for k in STAT_KEYS if engine.teacher is not None or not k.startswith("teacher")]
    totals = dict(zip(keys, engine.allreduce([sum(s.get(k, 0.0) for s in stats) for k in keys])))
    if "teacher_mse" in totals and engine.opt_ is not None:
        totals["teacher_mse"] = logged_mse(totals["teacher_mse"], engine.opt_)
    return totals


def _local(engine, method, batch, *args) -> Dict[str, float]:
    """`engine.method(this worker's rows, *args)`, or no statistics when it has no rows."""
    rows = worker_slice(batch, engine.rank, engine.world)
    return {} if rows is None else method(rows, *args)


def evaluate(engine: Engine, stream: BatchStream) -> Dict[str, float]:
    """Mean statistics over one pass of every eval batch (weighted by masked positions)."""
    sums, total = {}, 0.0
    for batch in stream.batches(0, epochs=1):
        n = normalizer(batch)
        merged = _merge(engine, [_local(engine, engine.evaluate, batch, n)])
        for k, v in merged.items():
            sums[k] = sums.get(k, 0.0) + (v * n if k != "tokens" else v)
        total += n
    return {k: (v / total if k != "tokens" else v) for k, v in sums.items()}


def run_pretraining(engine: Engine, options: PretrainOptions, stream: BatchStream,
                    eval_stream: Optional[BatchStream] = None,
                    meta: Optional[Dict] = None) -> List[Dict[str, float]]:
    """Train `engine` from `options.start_step` to `options.num_steps`; returns per-step rows
    (global statistics) of the steps run. Rank 0 writes checkpoints and logs."""
    from tqdm import tqdm

    master = engine.rank == 0
    keep = bool(options.ckpt_dir)          # '' runs without checkpoints or log files
    if master and keep:
        check_writable(options.ckpt_dir)
    start = resolve_start(options.ckpt_dir, options.start_step) if keep and not options.overwrite \
        else 0
    if keep and not start and complete_steps(options.ckpt_dir) and not options.overwrite:
        raise ValueError("--output-dir %s already holds checkpoints (steps %s); resume that run "
                         "(start_step 'latest'), or pass --overwrite to start over"
                         % (options.ckpt_dir, ", ".join(map(str, complete_steps(options.ckpt_dir)))))
    if master and keep and options.overwrite:
        discard_run(options.ckpt_dir)
    scaler = make_scaler(options.loss_scaler, options.loss_scale, options.scale_window,
                         options.dtype == "float16", engine.world)
    if start:
        params, states, saved = load_checkpoint(options.ckpt_dir, start)
        check_resume_options(options, saved, checkpoint_paths(options.ckpt_dir, start)["meta"])
        engine.load(params, states)
        scaler.load(saved["loss_scaler"])
    log = EventLog(options.ckpt_dir, options.tensorboard) if master and keep else None
    rows, window, last_good = [], [], start
    batches = stream.batches(start * options.accumulate)
    bar = tqdm(total=options.num_steps, initial=start, desc="pretrain", unit="step",
               disable=not (master and options.progress))
    tic = time.time()
    try:
        for step in range(start + 1, options.num_steps + 1):
            engine.seed(options.seed * 1000003 + step)
            lr = pretraining_lr(step, options)
            stats = []
            for _ in range(options.accumulate):
                batch = next(batches)
                stats.append(_local(engine, engine.backward, batch,
                                    normalizer(batch) * options.accumulate, scaler.scale))
            row = _merge(engine, stats)     # means over the micro-batches (normalised by n*acc)
            result = engine.update(lr, scaler.scale)
            if not result["finite"] and scaler.scale <= 1.0:    # no loss scale left to cut
                kept = ("the last good checkpoint is step %d in %s" % (last_good, options.ckpt_dir)
                        if keep and last_good else "no checkpoint was written")
                raise NonFiniteError("step %d: non-finite loss/gradient (loss %r, %s): the run "
                                     "diverged (lower --lr); %s"
                                     % (step, row["loss"], options.dtype, kept))
            scaler.update(result["finite"])
            row.update(lr=lr, grad_norm=result["grad_norm"], skipped=scaler.skipped,
                       loss_scale=scaler.scale)
            rows.append(row)
            window.append(row)
            bar.update(1)
            if step % options.log_interval == 0 or step == options.num_steps:
                elapsed = max(time.time() - tic, 1e-9)
                summary = {k: float(np.mean([r[k] for r in window])) if k in WINDOW_MEANS
                           else row[k] for k in row if k != "tokens"}
                summary["tokens_per_s"] = sum(r["tokens"] for r in window) / elapsed
                summary["duration"] = elapsed
                if log is not None:
                    log.write("train", step, summary)
                if master and options.progress:
                    bar.write(format_row(step, summary))
                window, tic = [], time.time()
            if step % options.ckpt_interval == 0 or step == options.num_steps:
                if master and keep:
                    save_checkpoint(options.ckpt_dir, step, engine.params(), engine.states(),
                                    dict(meta or {}, step=step, loss_scaler=scaler.state(),
                                         options=dataclasses.asdict(options)))
                last_good = step
            if eval_stream is not None and (
                    (options.eval_interval and step % options.eval_interval == 0)
                    or step == options.num_steps):
                result = evaluate(engine, eval_stream)
                if log is not None:
                    log.write("eval", step, result)
                if master and options.progress:
                    bar.write("eval " + format_row(step, result))
                rows[-1].update({"eval_" + k: v for k, v in result.items()})
    finally:
        bar.close()
        if log is not None:
            log.close()
    return rows


