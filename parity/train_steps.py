"""Training parity: N optimizer steps of distillation pretraining in each framework from the
same weights on the same batches, dropout off; per-step losses and final parameters compared.

Both sides run `bort_core.pretrain.run_pretraining` on their own Engine, so the schedule,
clipping and loss scaling are shared code and only the framework computations differ.
"""
from __future__ import annotations

import numpy as np

from bort_core import pretrain as core
from bort_core.data.stream import BatchList
from bort_core.metrics import rel_l2
from parity import io

LOSS_TOLERANCE = 1e-5     # per-step relative difference of the total loss
PARAM_TOLERANCE = 1e-4    # relative L2 error per parameter after the last step


def make_batches(num, batch_size, seq_len, num_masked, vocab_size, seed=0):
    """`num` MLM batches (padded, distinct valid lengths, one padded prediction slot each)."""
    rng = np.random.RandomState(seed)
    batches = []
    for k in range(num):
        b = io.make_inputs(batch_size, seq_len, vocab_size, num_masked, seed * 1000 + k)
        b["masked_ids"] = rng.randint(4, vocab_size, b["masked_positions"].shape).astype(np.int32)
        weights = np.ones(b["masked_positions"].shape, np.float32)
        weights[:, -1] = 0.0
        b["masked_weights"] = weights
        batches.append(b)
    return batches


def run(framework, options, student, params, teacher, teacher_params, batches):
    """(per-step rows, final canonical params) of `options.num_steps` steps."""
    if framework == "gluon":
        from bort_gluon.pretrain import Engine, build_model
    else:
        from bort_torch.pretrain import Engine, build_model
    engine = Engine(options, build_model(student, params), build_model(teacher, teacher_params))
    rows = core.run_pretraining(engine, options, BatchList(batches))
    return rows, engine.params()


def train_steps(student_name="bort_4_8_768_1024", teacher_name="bort_2_4_512_256", steps=20,
                batch_size=2, seq_len=16, num_masked=4, seed=0, kd_loss="kl", lr=1e-4):
    """Run both frameworks; returns a report dict with `ok`."""
    from bort_core.configs import get_config

    student = get_config(student_name).without_dropout()
    teacher = get_config(teacher_name, vocab_size=student.vocab_size).without_dropout()
    params = io.random_params(student, seed)
    teacher_params = io.random_params(teacher, seed + 1)
    batches = make_batches(steps, batch_size, seq_len, num_masked, student.vocab_size, seed)
    options = core.PretrainOptions(student=student_name, num_steps=steps, warmup_ratio=0.25,
                                   lr=lr, kd_loss=kd_loss, ckpt_dir="", progress=False,
                                   tensorboard=False, log_interval=steps, seed=seed, dropout=0.0)
    results = {fw: run(fw, options, student, params, teacher, teacher_params, batches)
               for fw in ("gluon", "torch")}
    (rows_g, final_g), (rows_t, final_t) = results["gluon"], results["torch"]
    losses = []
    for step, (g, t) in enumerate(zip(rows_g, rows_t), 1):
        rel = abs(g["loss"] - t["loss"]) / max(abs(t["loss"]), 1e-12)
        losses.append({"step": step, "gluon": g["loss"], "torch": t["loss"], "rel": rel,
                       "ok": bool(rel <= LOSS_TOLERANCE)})
    params_rows = sorted(({"param": n, "rel_l2": rel_l2(final_g[n], final_t[n])}
                          for n in final_t), key=lambda r: -r["rel_l2"])
    for r in params_rows:
        r["ok"] = bool(r["rel_l2"] <= PARAM_TOLERANCE)
    moved = rel_l2(np.concatenate([v.ravel() for v in final_t.values()]),
                        np.concatenate([params[n].ravel() for n in final_t]))
    return {"student": student_name, "teacher": teacher_name, "steps": steps, "kd_loss": kd_loss,
            "losses": losses, "params": params_rows, "moved": moved,
            "ok": all(r["ok"] for r in losses) and all(r["ok"] for r in params_rows)}


def print_report(report, show=5):
    print("%5s %16s %16s %10s" % ("step", "gluon loss", "torch loss", "rel diff"))
    for r in report["losses"]:
        print("%5d %16.9f %16.9f %10.2e" % (r["step"], r["gluon"], r["torch"], r["rel"]))
    print("%-66s %10s" % ("parameter after the last step (worst first)", "rel L2"))
    for r in report["params"][:show]:
        print("%-66s %10.2e" % (r["param"], r["rel_l2"]))
    worst_loss = max(r["rel"] for r in report["losses"])
    print("%d steps: worst loss rel diff %.2e (tolerance %.0e); worst parameter rel L2 %.2e "
          "(tolerance %.0e); parameters moved %.2e from the start: %s"
          % (report["steps"], worst_loss, LOSS_TOLERANCE, report["params"][0]["rel_l2"],
             PARAM_TOLERANCE, report["moved"], "PASS" if report["ok"] else "FAIL"))
