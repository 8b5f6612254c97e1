"""The pretraining rows of `python -m parity fidelity` (see parity.fidelity): batching, loss
scaling, the KD term, the logged teacher_mse, BERTAdam, the schedule, clipping, extraction's
warm-up, and the acceptance run (STEPS steps of `run_pretraining` under `--recipe release`,
rows per step and loss-scale trace against the release's logic computed in the legacy env).
"""
from __future__ import annotations

import os
import tempfile
from typing import Dict, List, Optional

import numpy as np

from parity.fidelity import LegacyMissing, call_legacy, close, row

TOKENS, BUCKETS = 1024, 20                # the release's shell values (tokens per GPU, buckets)
STEPS, OVERFLOW_STEPS = 20, (3, 4, 11)    # the acceptance run: steps whose gradient overflows
SCRIPT_WINDOW = 200   # > 100 steps, so that the 1% tolerance can keep the scale
ADAM_RTOL = 1e-4   # float32 updates by three implementations (DESIGN.md's optimizer tolerance)


# ------------------------------------------------------------------------- shared inputs

def release_options(*flags):
    """PretrainOptions as `bort pretrain --recipe release FLAGS` resolves them."""
    from bort_core.cli import build_parser
    from bort_core.commands.pretrain import options_from_args

    args = build_parser().parse_args(["pretrain", "--framework", "torch", "--recipe", "release",
                                      "--data", "unused.npz", "--ckpt-dir", "", "--quiet",
                                      "--no-tensorboard"] + list(flags))
    return options_from_args(args)


def sampler_lengths() -> List[int]:
    """Lengths spread over 8..128, so the sampler makes many buckets."""
    return np.random.RandomState(19).randint(8, 129, size=400).tolist()


def scripted_overflows() -> List[bool]:
    """400 steps under a window of SCRIPT_WINDOW: a burst (5, 6, 7: each cuts), an overflow
    under 1% of the steps since the last rescale (150: kept), a second that reaches 1% (160:
    cuts), growth SCRIPT_WINDOW steps after it (360) and an overflow soon after (390: cuts)."""
    flags = [False] * 400
    for step in (5, 6, 7, 150, 160, 390):
        flags[step] = True
    return flags


def kd_inputs():
    rng = np.random.RandomState(3)
    student, teacher = rng.normal(0, 3, (6, 50)), rng.normal(0, 3, (6, 50))
    weights = np.array([1.0, 1.0, 0.5, 0.0, 1.0, 0.25])
    return student.astype(np.float32), teacher.astype(np.float32), weights.astype(np.float32)


def adam_inputs():
    rng = np.random.RandomState(5)
    grads = [(rng.normal(0, 1, (3, 4)), rng.normal(0, 1, (4,))) for _ in range(3)]
    return {"weight": rng.normal(0, 1, (3, 4)).tolist(), "bias": rng.normal(0, 1, (4,)).tolist(),
            "grads": [[g.tolist(), b.tolist()] for g, b in grads], "lrs": [1e-2, 2e-2, 5e-3],
            "wd": 0.01, "eps": 1e-6, "beta1": 0.9, "beta2": 0.999}


def request(shard_lengths: List[int]) -> Dict:
    """Everything the legacy side computes, in one call."""
    s, t, w = kd_inputs()
    o = release_options()
    return {"sampler": {"lengths": sampler_lengths(), "tokens": TOKENS, "num_buckets": BUCKETS},
            "steps_sampler": {"lengths": shard_lengths, "tokens": TOKENS, "num_buckets": BUCKETS},
            "scaler": {"overflows": scripted_overflows(), "scale": o.loss_scale,
                       "window": SCRIPT_WINDOW,
                       "tolerance": 0.01},
            "steps_scaler": {"overflows": [k in OVERFLOW_STEPS for k in range(1, STEPS + 1)],
                             "scale": 1.5 ** 15, "window": 2000, "tolerance": 0.01},
            "schedule": request_schedule(),
            "kd": {"student": s.tolist(), "teacher": t.tolist(), "weights": w.tolist(),
                   "temperature": 2.0},
            "bertadam": adam_inputs()}


# ------------------------------------------------------------------------------- our side

class ScriptedEngine:
    """A pretraining Engine without a model: records each batch's rows and overflows at the
    scripted optimizer steps, so `run_pretraining` shows its batching and loss scaling."""

    rank, world, teacher = 0, 1, None

    def __init__(self, options, overflow_steps):
        self.opt_, self.overflow, self.step, self.rows = options, set(overflow_steps), 0, []

    def seed(self, value):
        pass

    def backward(self, batch, normalizer, scale):
        self.rows.append(int(len(batch["valid_length"])))
        return {"loss": 1.0, "mlm_loss": 1.0, "mlm_acc": 0.0,
                "tokens": float(batch["valid_length"].sum())}

    def update(self, lr, scale):
        self.step += 1
        finite = self.step not in self.overflow
        return {"finite": finite, "grad_norm": 1.0 if finite else float("inf")}

    def allreduce(self, values):
        return list(values)


def run_steps(shard: str):
    """(rows per step, loss scale after each step): STEPS steps of `run_pretraining` under
    `--recipe release --dtype float16`, the shard's batches in their fixed (unshuffled) order."""
    from bort_core import pretrain as core
    from bort_core.data.stream import BatchStream

    o = release_options("--dtype", "float16", "--num-steps", str(STEPS), "--data", shard,
                        "--tokens-per-batch", str(TOKENS), "--num-buckets", str(BUCKETS))
    stream = BatchStream([shard], o.tokens_per_batch, o.num_buckets, o.use_avg_len, o.seed,
                              batching=o.batching, shuffle=False)
    engine = ScriptedEngine(o, OVERFLOW_STEPS)
    rows = core.run_pretraining(engine, o, stream)
    return engine.rows, [r["loss_scale"] for r in rows]


def our_kd():
    """(teacher_ce, logged teacher_mse) of both frameworks under --recipe release."""
    import mxnet as mx
    import torch

    from bort_core.losses import logged_mse
    from bort_gluon.pretrain import distillation_terms as gluon_terms
    from bort_torch.pretrain import distillation_terms as torch_terms

    s, t, w = kd_inputs()
    o = release_options()
    ids = np.zeros((1, len(w)), np.int32)
    n = float(w.astype(np.float64).sum()) + 1e-8
    out = {}
    for name, terms, wrap in (("torch", torch_terms, torch.from_numpy),
                              ("gluon", gluon_terms, mx.nd.array)):
        v = terms(wrap(s[None]), wrap(t[None]), wrap(ids), wrap(w[None]), n, o.temperature,
                  o.kd_loss)
        value = (lambda x: float(x.asscalar())) if name == "gluon" else float
        out[name] = (value(v["teacher_ce"]), logged_mse(value(v["teacher_mse"]), o))
    return out


def our_bertadam(q):
    """Final (weight, bias) of our torch BERTAdam and bort_gluon's optimizer (GluonNLP 0.10),
    the bias without weight decay."""
    import mxnet as mx
    import torch
    from gluonnlp.optimizer import BERTAdam as GluonBERTAdam

    from bort_torch.pretrain import BERTAdam

    w = torch.tensor(q["weight"], dtype=torch.float32, requires_grad=True)
    b = torch.tensor(q["bias"], dtype=torch.float32, requires_grad=True)
    opt = BERTAdam([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], lr=q["lrs"][0],
                   betas=(q["beta1"], q["beta2"]), eps=q["eps"], weight_decay=q["wd"])
    g_opt = GluonBERTAdam(learning_rate=q["lrs"][0], beta1=q["beta1"], beta2=q["beta2"],
                          epsilon=q["eps"], wd=q["wd"])
    g_opt.wd_mult = {1: 0.0}
    updater = mx.optimizer.get_updater(g_opt)
    arrays = [mx.nd.array(q["weight"]), mx.nd.array(q["bias"])]
    for lr, (gw, gb) in zip(q["lrs"], q["grads"]):
        w.grad, b.grad = torch.tensor(gw, dtype=torch.float32), torch.tensor(gb, dtype=torch.float32)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        g_opt.set_learning_rate(lr)
        for index, g in enumerate((gw, gb)):
            updater(index, mx.nd.array(g), arrays[index])
    return {"torch": [w.detach().numpy().tolist(), b.detach().numpy().tolist()],
            "gluon": [arrays[0].asnumpy().tolist(), arrays[1].asnumpy().tolist()]}


# ---------------------------------------------------------------------------------- rows

SAMPLER = "legacy: gluonnlp 0.8.3 FixedBucketSampler (use_average_length, unshuffled)"
SCALER = "formula: release utils/fp16_utils.py DynamicLossScaler, worked example"


def legacy_rows(answer: Dict, steps, kd, adam) -> List[Dict]:
    """Rows whose release side the legacy interpreter computed (`answer`)."""
    from bort_core.data.bucketing import release_bucket_batches
    from bort_core.optim import make_scaler, pretraining_lr

    out = []
    lengths = np.asarray(sampler_lengths())
    ours = [b.tolist() for b in release_bucket_batches(lengths, TOKENS, BUCKETS)]
    want = answer["sampler"]["batches"]
    out.append(row("pretrain: rows per batch (use_avg_len, %d lengths, %d buckets, %d tokens)"
                   % (len(lengths), BUCKETS, TOKENS), [len(b) for b in want],
                   [len(b) for b in ours], ours == want, SAMPLER))
    step_rows, step_scales = steps
    batches = answer["steps_sampler"]["batches"]
    want_rows = [len(batches[k % len(batches)]) for k in range(STEPS)]
    out.append(row("pretrain: rows per step, %d steps (--recipe release, fixed order)" % STEPS,
                   want_rows, step_rows, step_rows == want_rows, SAMPLER))
    out.append(row("pretrain: loss scale per step, %d steps, overflows at %s (--recipe release)"
                   % (STEPS, list(OVERFLOW_STEPS)), answer["steps_scaler"], step_scales,
                   step_scales == answer["steps_scaler"], SCALER))
    o = release_options()
    scaler = make_scaler(o.loss_scaler, o.loss_scale, SCRIPT_WINDOW, True)
    trace = []
    for overflow in scripted_overflows():
        scaler.update(not overflow)
        trace.append(scaler.scale)
    out.append(row("pretrain: loss scale trace, 400 scripted steps, window %d" % SCRIPT_WINDOW,
                   answer["scaler"],
                   trace, trace == answer["scaler"], SCALER))
    for key, index in (("teacher_ce", 0), ("teacher_mse", 1)):
        mine = {name: values[index] for name, values in kd.items()}
        out.append(row("pretrain: %s (%s)" % (key, "--kd-loss release" if index == 0 else
                                                 "logged, --teacher-mse release"),
                       answer["kd"][key], mine,
                       all(close(v, answer["kd"][key]) for v in mine.values()),
                       "legacy: mxnet 1.5 %s on softmax(x, T), the release's forward()"
                       % ("KLDivLoss(from_logits=False)" if index == 0 else "L2Loss")))
    release_adam = [answer["bertadam"]["weight"], answer["bertadam"]["bias"]]
    out.append(row("pretrain: BERTAdam, 3 steps (weight with decay, bias without)",
                   release_adam, adam, all(close(v[0], release_adam[0], ADAM_RTOL) and
                                           close(v[1], release_adam[1], ADAM_RTOL)
                                           for v in adam.values()),
                   "legacy: gluonnlp 0.8.3 BERTAdam, mxnet 1.5 updater"))
    q = request_schedule()
    lrs = [pretraining_lr(s, release_options("--num-steps", str(q["num_steps"]))) for s in q["steps"]]
    out.append(row("pretrain: learning rate at steps %s of %d (--recipe release)"
                   % (q["steps"], q["num_steps"]), answer["schedule"], lrs,
                   close(lrs, answer["schedule"], 1e-12),
                   "formula: release run_pretraining_distillation_hvd.py schedule"))
    return out


def request_schedule():
    return {"lr": 1e-4, "num_steps": 1000, "warmup_ratio": 0.01, "steps": [1, 5, 10, 11, 500, 1000]}


def value_rows() -> List[Dict]:
    """Rows whose release side is a value the release's scripts set."""
    from bort_core.cli import build_parser
    from bort_core.commands.extract import _theta
    from bort_core.optim import make_scaler

    o32, o16 = release_options(), release_options("--dtype", "float16")
    windows = [make_scaler(o16.loss_scaler, o16.loss_scale, o16.scale_window, True, w).window
               for w in (1, 4, 8)]
    args = build_parser().parse_args(["extract", "--recipe", "release", "--out", "unused",
                                      "--dry-run"])
    warmup = sorted({t["warmup_ratio"] for t in _theta(args)})
    return [
        row("pretrain: initial float16 loss scale", 1.5 ** 15, o16.loss_scale,
            o16.loss_scale == 1.5 ** 15, "release: utils/fp16_utils.py DynamicLossScaler default"),
        row("pretrain: loss-scale window for 1, 4, 8 workers", [2000, 500, 250], windows,
            windows == [2000, 500, 250], "release: run_pretraining_distillation_hvd.py "
            "scale_window 2000 / num_workers"),
        row("pretrain: gradient clipping norm, float32 / float16", [0.0, 1.0],
            [o32.clip_norm, o16.clip_norm], [o32.clip_norm, o16.clip_norm] == [0.0, 1.0],
            "release: trainer.step(1) in float32; FP16Trainer.step(max_norm=workers) in float16"),
        row("extract: warm-up ratio default (--recipe release)", [0.01], warmup, warmup == [0.01],
            "release: utils/pretraining_distillation_utils.py --warmup_ratio default 0.01"),
    ]


def rows(legacy_python: Optional[str]) -> List[Dict]:
    """Every pretraining row; without the legacy interpreter its rows are not ok."""
    from bort_core.configs import DEMO_VOCAB_SIZE
    from bort_core.data.shards import load_shard, write_synthetic_shard

    with tempfile.TemporaryDirectory() as tmp:
        shard = write_synthetic_shard(os.path.join(tmp, "part-000.npz"), 400, DEMO_VOCAB_SIZE,
                                      seed=7, max_len=128)
        lengths = load_shard(shard)["valid_lengths"].tolist()
        steps = run_steps(shard)
    kd, adam = our_kd(), our_bertadam(adam_inputs())
    try:
        answer = call_legacy(legacy_python, request(lengths))
        legacy = legacy_rows(answer, steps, kd, adam)
    except LegacyMissing as err:
        legacy = [row(name, None, None, False, "not computed: %s" % err) for name in (
            "pretrain: rows per batch (use_avg_len)", "pretrain: rows per step",
            "pretrain: loss scale per step", "pretrain: loss scale trace",
            "pretrain: teacher_ce", "pretrain: teacher_mse", "pretrain: BERTAdam",
            "pretrain: learning rate")]
    return legacy + value_rows()
