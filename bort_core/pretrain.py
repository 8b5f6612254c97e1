"""Distillation pretraining: everything that does not depend on the framework.

Both `bort_gluon.pretrain` and `bort_torch.pretrain` implement an `Engine` (forward/backward of
one micro-batch, the optimizer update, state I/O); `run_pretraining` here drives either one, so
the data order, schedule, loss scaling, logging, checkpoints and resume are written once.

Loss (per micro-batch; i runs over masked positions, w_i their weights, n = sum_i w_i + 1e-8
taken over the GLOBAL micro-batch, i.e. over every worker's rows):
    mlm        = sum_i w_i * CE(s_i, y_i) / n                       (student logits s, fp32)
    ps, pt     = softmax(s_i / T), softmax(t_i / T)                  (teacher t: eval, no grad)
    kd (kl)    = T^2 * sum_i w_i * KL(pt_i || ps_i) / n              (textbook; the default)
    kd (release, `--kd-loss release`): the 2020 term with mxnet 1.5 semantics: Gluon's
                 KLDivLoss(from_logits=False) applied to the PROBABILITIES ps (so a second
                 softmax is taken) and averaged over the vocabulary:
                 T^2 * sum_i w_i * mean_v[pt_iv * (log(pt_iv + 1e-12) - log_softmax(ps_i)_v)] / n
    mse        = sum_i w_i * mean_v (ps_iv - pt_iv)^2 / n            (logged, never optimised;
                 `--teacher-mse release` logs the release's T^2 / 2 * mse: its L2Loss halves)
    loss       = (mlm_weight * mlm + teacher_ce_weight * kd) / accumulate     with a teacher
    loss       = mlm / accumulate                                           teacherless
`reference_losses` computes all of it in float64 numpy (the oracle both frameworks are tested
against).

BERTAdam (both frameworks): Adam without bias correction, decoupled weight decay:
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  w -= lr * (m / (sqrt(v) + eps) + wd * w)
b1 0.9, b2 0.999, eps 1e-6, wd 0.01; no decay for LayerNorm gains/shifts and biases (names
matching `no_decay`). The gradient g is the sum over workers and micro-batches, clipped to a
global L2 norm (`clip_norm`, 0 = off) after loss-scale removal.

Learning rate (the release's): s = 1, 2, ... N; lr * s / W while s <= W (warm-up), then
lr * (1 - s / N).

`--recipe release` sets the release's values at once (`release_values`: batching, loss
scaler, logged mse, KD term, clipping); explicit options win.

Data: every batch of every shard, every epoch (the release used only the first batch of each
file: bug P1). Per epoch the shards are visited in a seeded order; each shard is cut into
length buckets and bucket batches (`bucket_batches`), shuffled with the same seed. A batch is a
GLOBAL batch: worker r of W trains on `np.array_split(rows, W)[r]` (a worker left without rows
adds nothing but still takes part in the all-reduce), so W workers see the same batches as one
worker and compute the same update (the release's per-file split made the data depend on W).

Batches follow `--batching` (bort_core.bucketing): `balanced` (ours) or `release`
(gluonnlp 0.8.3's FixedBucketSampler with use_average_length). Float16 loss scaling follows
`--loss-scaler` (bort_core.loss_scaling).

Checkpoints (`ckpt_dir/%07d.*`, step = optimizer steps done): `.params` the student in canonical
names (the 2020 `.params` format, loadable by either framework), `.states` BERTAdam's moments in
the same format (`mean:<name>`, `var:<name>`), `.json` bookkeeping (loss scale, skipped steps,
options); `.json` is written last, so a checkpoint counts only once it exists. Everything is
written atomically. `--start-step S` (or `latest`) resumes exactly: the batch stream is a pure
function of (seed, position) and every step reseeds the framework RNG with (seed, step).

Logs (every `log_interval` steps and at the last, rank 0): losses, accuracy and gradient norm
as their mean over the steps since the previous line; lr, `skipped` (the running count of
non-finite float16 steps) and `loss_scale` as their value at the logged step.

Fixed release bugs: P1 (above); P2 the fixed-length bucketing path works; P4 logged distillation
terms are averaged like the loss; P5 only rank 0 logs and writes; P6 the final step is always
checkpointed; P7 the loss-scale window is an integer; the run is seeded (`--seed`).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import time
import warnings
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from bort_core import checkpoint as ckpt
from bort_core import io as bio
from bort_core.bucketing import BATCHINGS, bucket_batches, release_bucket_batches
from bort_core.data.shards import expand_shards, load_shard
from bort_core.loss_scaling import LOSS_SCALERS, LossScaler, make_scaler  # noqa: F401
from bort_core.metrics import NonFiniteError, check_finite

# ------------------------------------------------------------------------------------ options

KD_LOSSES = ("kl", "release")
DTYPES = ("float32", "float16", "bfloat16")
TEACHER_MSES = ("plain", "release")
NO_DECAY = (".gamma", ".beta", ".bias")    # suffixes of canonical names without weight decay
PAD_ID = 1                                 # RoBERTa's <pad>; padded ids never reach the output


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
    eps: float = 1e-6
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


def logged_mse(mse, options: PretrainOptions):
    """teacher_mse as logged: ours is sum_i w_i mean_v (ps - pt)^2 / n; the release's L2Loss
    halves that and the release then multiplies by T^2 (`--teacher-mse release`)."""
    if options.teacher_mse == "release":
        return mse * options.temperature ** 2 / 2.0
    return mse


def learning_rate(step: int, options: PretrainOptions) -> float:
    """The release's schedule for optimizer step `step` (1-based)."""
    warm = options.warmup_steps
    if step <= warm:
        return options.lr * step / warm
    return options.lr * max(0.0, 1.0 - step / options.num_steps)


def decays(name: str) -> bool:
    """Whether BERTAdam applies weight decay to the canonical parameter `name`."""
    return not name.endswith(NO_DECAY)


# ------------------------------------------------------------------------------------- shards

def collate(shard: Dict[str, list], rows: np.ndarray) -> Dict[str, np.ndarray]:
    """A padded MLM batch (the Backend protocol's layout) from instances `rows` of a shard."""
    lengths = shard["valid_lengths"][rows]
    length, m = int(lengths.max()), max(1, max(len(shard["masked_lm_ids"][r]) for r in rows))
    ids = np.full((len(rows), length), PAD_ID, dtype=np.int32)
    pos = np.zeros((len(rows), m), dtype=np.int32)
    mids = np.zeros((len(rows), m), dtype=np.int32)
    weights = np.zeros((len(rows), m), dtype=np.float32)
    for k, r in enumerate(rows):
        ids[k, :lengths[k]] = shard["input_ids"][r]
        n = len(shard["masked_lm_ids"][r])
        pos[k, :n] = shard["masked_lm_positions"][r]
        mids[k, :n] = shard["masked_lm_ids"][r]
        weights[k, :n] = shard["masked_lm_weights"][r]
    return {"input_ids": ids, "valid_length": lengths.astype(np.int32), "masked_positions": pos,
            "masked_ids": mids, "masked_weights": weights}


class BatchStream:
    """The global batches of a run, a pure function of (files, options, epoch): every batch of
    every shard (P1 fixed). `batches(start)` resumes at any position without replaying.

    Shards are read lazily and one at a time (the current one stays cached). `batching`
    "release" cuts buckets as the release's sampler did (bort_core.bucketing); `shuffle=False`
    keeps the shard order and the unshuffled batch order (the fidelity check's fixed order)."""

    def __init__(self, files: Sequence[str], tokens_per_batch: int, num_buckets: int = 20,
                 use_avg_len: bool = True, seed: int = 0, vocab_size: Optional[int] = None,
                 max_length: Optional[int] = None, batching: str = "balanced",
                 shuffle: bool = True):
        if not files:
            raise ValueError("no shard files given")
        self.files, self.seed = list(files), seed
        self.limits = {"vocab_size": vocab_size, "max_length": max_length}
        self.tokens, self.buckets, self.avg = tokens_per_batch, num_buckets, use_avg_len
        self.batching, self.shuffle = batching, shuffle
        self._cache = (None, None)
        self._counts = None

    def shard(self, path):
        if self._cache[0] != path:
            self._cache = (path, load_shard(path, **self.limits))
        return self._cache[1]

    def _plan(self, epoch, path):
        rng = np.random.RandomState([self.seed, epoch, self.files.index(path)])
        lengths = self.shard(path)["valid_lengths"]
        if self.batching == "release" and self.avg:
            return release_bucket_batches(lengths, self.tokens, self.buckets,
                                          rng if self.shuffle else None)
        return bucket_batches(lengths, self.tokens, self.buckets, rng, self.avg)

    def epoch_files(self, epoch):
        if not self.shuffle:
            return list(self.files)
        order = np.random.RandomState([self.seed, epoch]).permutation(len(self.files))
        return [self.files[i] for i in order]

    def validate(self):
        """Load (and so check) every shard once; returns the batch count of one epoch."""
        self._counts = {path: len(self._plan(0, path)) for path in self.files}
        return sum(self._counts.values())

    def batches(self, start: int = 0, epochs: Optional[int] = None) -> Iterator[Dict]:
        """Global batches from position `start` on (endlessly unless `epochs` is given)."""
        if self._counts is None:
            self.validate()
        per_epoch = sum(self._counts.values())
        epoch, skip = divmod(start, per_epoch)
        while epochs is None or epoch < epochs:
            for path in self.epoch_files(epoch):
                if skip >= self._counts[path]:
                    skip -= self._counts[path]
                    continue
                shard = self.shard(path)
                for rows in self._plan(epoch, path)[skip:]:
                    yield collate(shard, rows)
                skip = 0
            epoch += 1


class BatchList:
    """Given batches as a stream (cycled), for callers that bring their own (parity, Backend)."""

    def __init__(self, batches: Sequence[Dict[str, np.ndarray]]):
        self.items = list(batches)
        if not self.items:
            raise ValueError("no batches given")

    def batches(self, start: int = 0, epochs: Optional[int] = None) -> Iterator[Dict]:
        end = None if epochs is None else epochs * len(self.items)
        position = start
        while end is None or position < end:
            yield self.items[position % len(self.items)]
            position += 1


def worker_slice(batch: Dict[str, np.ndarray], rank: int, world: int):
    """Worker `rank`'s rows of a global batch (`np.array_split` order); None when a batch has
    fewer rows than workers and this one gets none (it then adds nothing but still syncs)."""
    if world == 1:
        return batch
    rows = np.array_split(np.arange(len(batch["valid_length"])), world)[rank]
    return {k: v[rows] for k, v in batch.items()} if len(rows) else None


# ------------------------------------------------------------------------------ loss oracle

def _log_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def reference_losses(student_logits, masked_ids, masked_weights, teacher_logits=None,
                     temperature=2.0, kd_loss="kl", normalizer=None) -> Dict[str, float]:
    """The loss terms of the module docstring in float64 numpy (the test oracle)."""
    s = np.asarray(student_logits, np.float64)
    w = np.asarray(masked_weights, np.float64)
    n = w.sum() + 1e-8 if normalizer is None else normalizer
    logp = _log_softmax(s)
    ce = -np.take_along_axis(logp, np.asarray(masked_ids)[..., None].astype(np.int64), -1)[..., 0]
    out = {"mlm_loss": float((w * ce).sum() / n),
           "mlm_acc": float((w * (s.argmax(-1) == masked_ids)).sum() / n)}
    if teacher_logits is not None:
        t = np.asarray(teacher_logits, np.float64)
        log_ps, log_pt = _log_softmax(s / temperature), _log_softmax(t / temperature)
        ps, pt = np.exp(log_ps), np.exp(log_pt)
        if kd_loss == "kl":
            kd = (pt * (log_pt - log_ps)).sum(-1)
        else:
            kd = (pt * (np.log(pt + 1e-12) - _log_softmax(ps))).mean(-1)
        out["teacher_ce"] = float(temperature ** 2 * (w * kd).sum() / n)
        out["teacher_mse"] = float((w * ((ps - pt) ** 2).mean(-1)).sum() / n)
    return out


# ------------------------------------------------------------------------------- checkpoints

def checkpoint_paths(ckpt_dir: str, step: int) -> Dict[str, str]:
    stem = os.path.join(ckpt_dir, "%07d" % step)
    return {"params": stem + ".params", "states": stem + ".states", "meta": stem + ".json"}


def complete_steps(ckpt_dir: str) -> List[int]:
    """Steps with a complete checkpoint (its .json written last), ascending."""
    steps = []
    for path in glob.glob(os.path.join(ckpt_dir, "[0-9]" * 7 + ".json")):
        step = int(os.path.basename(path)[:7])
        if all(os.path.exists(p) for p in checkpoint_paths(ckpt_dir, step).values()):
            steps.append(step)
    return sorted(steps)


def resolve_start(ckpt_dir: str, start_step) -> int:
    """`--start-step`: None/0 (fresh), an integer with a complete checkpoint, or 'latest'."""
    if start_step in (None, "", "0", 0):
        return 0
    steps = complete_steps(ckpt_dir)
    if str(start_step) == "latest":
        if not steps:
            raise FileNotFoundError("--start-step latest: no complete checkpoint in %s" % ckpt_dir)
        return steps[-1]
    try:
        step = int(start_step)
    except ValueError:
        raise ValueError("--start-step must be an integer or 'latest', got %r" % start_step) from None
    if step not in steps:
        raise FileNotFoundError("--start-step %d: no complete checkpoint %s in %s (found: %s)"
                                % (step, "%07d.{params,states,json}" % step, ckpt_dir,
                                   ", ".join(map(str, steps)) or "none"))
    return step


def discard_run(ckpt_dir: str) -> None:
    """Delete the checkpoints, log.jsonl and TensorBoard events an earlier run left."""
    for path in glob.glob(os.path.join(ckpt_dir, "[0-9]" * 7 + ".*")):
        os.remove(path)
    for path in (os.path.join(ckpt_dir, "log.jsonl"), os.path.join(ckpt_dir, "tensorboard")):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def save_checkpoint(ckpt_dir: str, step: int, params: Dict[str, np.ndarray],
                    states: Dict[str, np.ndarray], meta: Dict) -> str:
    """Write the three files of a checkpoint atomically, the `.json` marker last."""
    paths = checkpoint_paths(ckpt_dir, step)
    ckpt.save_params(paths["params"], params, store_tied_decoder=True)
    ckpt.save_ndarrays(paths["states"], states)
    bio.write_text(paths["meta"], json.dumps(meta, indent=2, sort_keys=True))
    return paths["params"]


# Options that decide a run's trajectory: a resume must repeat them. Paths, logging, checkpoint
# and eval intervals may change (the run can move to another directory or machine).
TRAJECTORY_OPTIONS = ("num_steps", "warmup_ratio", "lr", "weight_decay", "eps", "beta1", "beta2",
                      "clip_norm", "accumulate", "tokens_per_batch", "num_buckets", "use_avg_len",
                      "temperature", "mlm_weight", "teacher_ce_weight", "kd_loss", "dtype",
                      "dropout", "seed", "loss_scale", "scale_window", "batching",
                      "loss_scaler")
FLAGS = {"eps": "adam-epsilon"}     # options whose `bort pretrain` flag is not their name


def check_resume_options(options: PretrainOptions, saved: Dict, source: str) -> None:
    """Refuse to resume a checkpoint under options that would change its trajectory."""
    stored = saved.get("options", {})
    changed = ["--%s %r (saved %r)" % (FLAGS.get(k, k.replace("_", "-")), getattr(options, k),
                                       stored[k])
               for k in TRAJECTORY_OPTIONS if k in stored and stored[k] != getattr(options, k)]
    if "teacher" in stored and (stored["teacher"] is None) != (options.teacher is None):
        changed.append("--teacher %s (saved %s)" % (options.teacher or "absent",
                                                     stored["teacher"] or "absent"))
    if changed:
        raise ValueError("%s was written with other options than this resume: %s; resume with "
                         "the saved options, or pass --overwrite to start over" % (source,
                                                                                  "; ".join(changed)))


def load_checkpoint(ckpt_dir: str, step: int):
    """(params, optimizer states, meta) of a complete checkpoint."""
    paths = checkpoint_paths(ckpt_dir, step)
    params = ckpt.drop_tied_decoder(ckpt.load_params(paths["params"]), source=paths["params"])
    states = ckpt.load_params(paths["states"], strip_module_prefixes=False)
    with open(paths["meta"]) as f:
        return params, states, json.load(f)


def check_writable(directory: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise ValueError("checkpoint directory %s is not writable (%s)" % (directory, err)) from None


# ------------------------------------------------------------------------------------- setup

def initial_params(config, seed: int = 0) -> Dict[str, np.ndarray]:
    """The release's initialisation drawn in numpy (N(0, 0.02) weights, zero biases, unit
    gains), so both frameworks start from the same weights for a seed."""
    from bort_core.arch import canonical_shapes

    rng = np.random.RandomState(seed)
    params = {}
    for name, shape in canonical_shapes(config).items():
        if name.endswith(".gamma"):
            params[name] = np.ones(shape, np.float32)
        elif name.endswith((".beta", ".bias")):
            params[name] = np.zeros(shape, np.float32)
        else:
            params[name] = rng.normal(0.0, 0.02, shape).astype(np.float32)
    return params


def resolve_models(options: PretrainOptions):
    """(student config, initial student params, teacher config or None, teacher params or None),
    validated before any training: unknown configs, missing files, vocabulary mismatch."""
    from bort_core.configs import get_config

    params = None
    if options.init:
        student, params = ckpt.load_model_params(options.init, options.student)
    else:
        student = get_config(options.student)
    if options.dropout is not None:
        student = student.replace(dropout=options.dropout, embed_dropout=options.dropout)
    teacher, teacher_params = None, None
    if options.teacher:
        if not os.path.exists(options.teacher):
            raise FileNotFoundError("teacher checkpoint %s does not exist" % options.teacher)
        teacher, teacher_params = ckpt.load_model_params(options.teacher, options.teacher_config)
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


def total_loss(terms: Dict, options: PretrainOptions):
    """The optimised loss from the terms (numbers or framework tensors alike)."""
    if "teacher_ce" not in terms:
        return terms["mlm_loss"]
    return options.mlm_weight * terms["mlm_loss"] + options.teacher_ce_weight * terms["teacher_ce"]


def clip_factor(norm: float, clip_norm: float) -> float:
    """GluonNLP's clip_grad_global_norm factor: min(1, clip / (norm + 1e-8)); 1 when off."""
    return min(1.0, clip_norm / (norm + 1e-8)) if clip_norm > 0 else 1.0


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


class BackendBase:
    """The Backend methods written once: MLM through a framework's pretraining `Engine`
    (set as `engine` by the subclass), classification through its `finetune` module."""

    name = ""
    engine = None

    def train_mlm(self, model, batches, steps: int, hparams: Dict, teacher=None):
        engine = self.engine(options_from_hparams(hparams, steps), model, teacher)
        return run_pretraining(engine, engine.opt_, BatchList(batches))

    def evaluate_mlm(self, model, batches, teacher=None) -> Dict[str, float]:
        engine = self.engine(options_from_hparams({}, 1), model, teacher)
        return evaluation_row(evaluate(engine, BatchList(batches)))

    def _finetune(self):
        from bort_core.backend import load_framework
        return load_framework(self.name, "finetune")

    def train_classifier(self, model, batches, steps: int, hparams: Dict):
        return self._finetune().train_classifier(model, batches, steps, hparams)

    def predict(self, model, batches):
        return self._finetune().predict(model, batches)


def median_seconds(fn, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return float(np.median(times))


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


def normalizer(batch: Dict[str, np.ndarray]) -> float:
    """n = sum of masked weights of the GLOBAL batch + 1e-8."""
    return float(batch["masked_weights"].astype(np.float64).sum()) + 1e-8


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
            lr = learning_rate(step, options)
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


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| in float64 (0 when both vanish)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = float(np.linalg.norm(b))
    num = float(np.linalg.norm(a - b))
    return num / den if den else num
