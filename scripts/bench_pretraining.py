"""Pretraining throughput: tokens/s of `bort pretrain`'s loop per framework and precision.

    python scripts/bench_pretraining.py [--steps 5] [--warmup 2] [--tokens-per-batch 1024]
        [--data demo|synthetic] [--variants gluon:float32,torch:float32,torch:bfloat16]
        [--threads N] [--repeats N] [--expect-match R] [--json bench_pretraining.json]

The full-size student (bort_4_8_768_1024 by default) is distilled from a small random teacher
(bort_2_4_512_256, the student's vocabulary). Data: the demo shards of the embedded corpus
(`bort create-pretraining-data`'s real masking: 15% of each row, so the vocabulary-sized
decoder work follows the row lengths), or --data synthetic (`write_synthetic_shard`: uniform
lengths, up to --max-predictions masked positions whatever the length). Each variant
runs in a fresh process, one after the other, through the real loop
(`bort_core.pretrain.run_pretraining` on the framework's Engine: data, forward/backward of
student and teacher, all-reduce bookkeeping, clipping, BERTAdam), without checkpoints or logs.
A step ends when its optimizer update returns; the first --warmup steps are left out and
tokens/s = valid (unpadded) tokens of the timed steps / their wall time. torch bfloat16 is
torch.autocast on the CPU (AMX/AVX512-BF16 where the CPU has them); gluon trains in float32 only.

Writes JSON (--json) and prints a markdown table with the machine, versions and thread count,
then the tokens/s ratio of every two variants of one dtype (parity.throughput's pairs table;
with --repeats N the list runs N times in turn and the ratios are of the medians);
--expect-match R exits 1 when one of those pairs differs by more than R.
The load average before and after each variant is recorded: on a shared machine it tells how
much other work ran alongside. There, pass --threads 1: an OpenMP pool as wide as the machine
waits at every barrier for a thread whose core another job holds (torch slowed ~2.7x that way
on a 2-core machine with one other busy process; MXNet much less).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bort_core import checkpoint as ckpt  # noqa: E402
from bort_core import pretrain as core  # noqa: E402
from bort_core.arch import initial_params  # noqa: E402
from bort_core.configs import get_config  # noqa: E402
from bort_core.data import shards as sh  # noqa: E402
from parity.throughput.harness import host_info  # noqa: E402
from parity.throughput.report import mismatches, pair_ratios, pairs_table  # noqa: E402

DEFAULT_VARIANTS = "gluon:float32,torch:float32,torch:bfloat16"


def parse_variants(text):
    out = []
    for item in filter(None, text.split(",")):
        framework, _, dtype = item.partition(":")
        if framework not in ("gluon", "torch") or dtype not in core.DTYPES:
            raise SystemExit("--variants: expected framework:dtype with framework gluon/torch "
                             "and dtype one of %s, got %r" % (", ".join(core.DTYPES), item))
        out.append((framework, dtype))
    return out


def prepare(workdir, args):
    """(shard glob, teacher path): the shards and a random teacher in `workdir`."""
    student = get_config(args.student)
    if args.data == "demo":
        from bort_core.commands.pretrain import demo_shards
        data = demo_shards(os.path.join(workdir, "demo-shards"))
    else:
        # enough rows that every length bucket (20, the default) fills whole batches; one pass
        # of the shard holds far more batches than a benchmark runs
        rows = 2 * 20 * args.tokens_per_batch // 16 + 100
        sh.write_synthetic_shard(os.path.join(workdir, "part-000.npz"), rows,
                                   student.vocab_size, seed=0, max_len=args.max_len,
                                   max_predictions=args.max_predictions)
        data = os.path.join(workdir, "part-*.npz")
    teacher = get_config(args.teacher, vocab_size=student.vocab_size)
    path = os.path.join(workdir, "teacher.params")
    ckpt.save_params(path, initial_params(teacher, seed=1))
    return data, path


# ----------------------------------------------------------------------- worker process --

def worker(spec):
    """Run one variant in this process; returns its record."""
    import resource

    framework, threads = spec["framework"], spec["threads"]
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
        from bort_torch import pretrain as fw
        versions = {"torch": torch.__version__}
        threads_used = torch.get_num_threads()
    else:
        import gluonnlp
        import mxnet as mx

        from bort_gluon import pretrain as fw
        versions = {"mxnet": mx.__version__, "gluonnlp": gluonnlp.__version__}
        threads_used = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
    import numpy as np
    versions["numpy"] = np.__version__
    options = core.PretrainOptions(
        student=spec["student"], teacher=spec["teacher_path"], teacher_config=spec["teacher"],
        data=spec["data"], ckpt_dir="", num_steps=spec["warmup"] + spec["steps"],
        warmup_ratio=0.5, lr=1e-4, tokens_per_batch=spec["tokens_per_batch"],
        dtype=spec["dtype"], progress=False, tensorboard=False, seed=0)
    engine, student = fw.build_engine(options)
    stream, _ = core.make_streams(options, student)
    stamps = []
    update = engine.update

    def timed_update(lr, scale):
        result = update(lr, scale)
        stamps.append(time.perf_counter())
        return result

    engine.update = timed_update
    start = time.perf_counter()
    rows = core.run_pretraining(engine, options, stream)
    ends = [start] + stamps
    seconds = [b - a for a, b in zip(ends[:-1], ends[1:])]
    w = spec["warmup"]
    tokens = [r["tokens"] for r in rows[w:]]
    wall = ends[-1] - ends[w]
    return {"framework": framework, "dtype": spec["dtype"], "ok": True,
            "tokens_per_s": sum(tokens) / wall, "median_step_s": statistics.median(seconds[w:]),
            "tokens_per_step": sum(tokens) / len(tokens), "steps_timed": len(tokens),
            "warmup_s": sum(seconds[:w]), "step_s": seconds,
            "final_loss": rows[-1]["loss"], "threads": threads_used, "versions": versions,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def run_variant(spec, timeout):
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]),
               MKL_NUM_THREADS=str(spec["threads"]), PYTHONUNBUFFERED="1")
    load_before = os.getloadavg()
    tic = time.time()
    try:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                               json.dumps(spec)], env=env, capture_output=True, text=True,
                              timeout=timeout)
        lines = done.stdout.strip().splitlines()
        if done.returncode or not lines:
            record = {"ok": False, "error": (done.stderr or done.stdout)[-2000:]}
        else:
            record = json.loads(lines[-1])
    except subprocess.TimeoutExpired:
        record = {"ok": False, "error": "timed out after %d s" % timeout}
    record.update(framework=spec["framework"], dtype=spec["dtype"],
                  process_s=time.time() - tic, load_before=load_before,
                  load_after=os.getloadavg())
    return record


def medians(report):
    """One record per variant that ran: tokens/s the median over its --repeats runs."""
    runs = {}
    for r in report["records"]:
        if r["ok"]:
            runs.setdefault((r["framework"], r["dtype"]), []).append(r["tokens_per_s"])
    return [dict(framework=fw, dtype=dtype, runs=len(v), tokens_per_s=statistics.median(v))
            for (fw, dtype), v in runs.items()]


def pairs(report):
    """parity.throughput's pair rows for the variants that ran (a pair shares a dtype), on
    each variant's median tokens/s."""
    return pair_ratios([dict(r, config=report["student"], mode="train", device="cpu",
                                batch="-", seq="-") for r in medians(report)])


def markdown(report, factor=None):
    h = report["host"]
    versions = {}
    for r in report["records"]:
        versions.update(r.get("versions", {}))
    if report["data"] == "demo":
        data = "demo shards of the embedded corpus (rows <= 128 tokens, 15% masked)"
    else:
        data = "synthetic shards (lengths 8-%d, 1-%d masked per row)" % (
            report["max_len"], report["max_predictions"])
    lines = [
        "Pretraining throughput, %s distilled from %s (random weights), %s, %d tokens/batch"
        % (report["student"], report["teacher"], data, report["tokens_per_batch"]),
        "",
        "machine: %s, %d cores; threads per process: %d; python %s; %s; %s" % (
            h["host_cpu"], h["host_cores"], report["threads"], h["python"],
            ", ".join("%s %s" % kv for kv in sorted(versions.items())), h["date"]),
        "%d warm-up steps left out, %d timed steps per variant, one process per variant, "
        "run one after another" % (report["warmup"], report["steps"]),
        "",
        "| framework | dtype | tokens/s | median s/step | tokens/step | peak RSS MB "
        "| load avg before/after |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in report["records"]:
        load = "%.2f / %.2f" % (r["load_before"][0], r["load_after"][0])
        if not r["ok"]:
            error = r["error"].strip().splitlines()[-1] if r["error"].strip() else "failed"
            lines.append("| %s | %s | error: %s | | | | %s |" % (r["framework"], r["dtype"],
                                                                   error[:120], load))
            continue
        lines.append("| %s | %s | %.0f | %.2f | %.0f | %.0f | %s |" % (
            r["framework"], r["dtype"], r["tokens_per_s"], r["median_step_s"],
            r["tokens_per_step"], r["peak_rss_mb"], load))
    if report.get("repeats", 1) > 1:
        lines += ["", "Medians over the %d runs of each variant (run in turn: A B A B ...):"
                  % report["repeats"], "", "| framework | dtype | runs | median tokens/s |",
                  "|---|---|---:|---:|"]
        lines += ["| %s | %s | %d | %.0f |" % (r["framework"], r["dtype"], r["runs"],
                                              r["tokens_per_s"]) for r in medians(report)]
    rows = pairs(report)
    if rows:
        lines += ["", pairs_table(rows, factor)]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="bort_4_8_768_1024")
    p.add_argument("--teacher", default="bort_2_4_512_256", help="small teacher config (random "
                   "weights, the student's vocabulary)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="framework:dtype list "
                   "(default %(default)s)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    p.add_argument("--tokens-per-batch", type=int, default=1024)
    p.add_argument("--data", choices=("demo", "synthetic"), default="demo", help="demo: shards "
                   "of the embedded corpus (the real pipeline: rows up to 128 tokens, 15%% "
                   "masked, at most 20); synthetic: write_synthetic_shard rows (uniform "
                   "lengths, 1 to --max-predictions masked per row whatever its length)")
    p.add_argument("--max-len", type=int, default=128, help="longest synthetic row")
    p.add_argument("--max-predictions", type=int, default=20, help="masked positions per "
                   "synthetic row at most")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads per "
                   "process (default: all cores)")
    p.add_argument("--repeats", type=int, default=1, help="run the variant list this many times "
                   "in turn (A B A B ...); the pairs compare each variant's median")
    p.add_argument("--timeout", type=int, default=600, help="seconds per variant")
    p.add_argument("--expect-match", type=float, metavar="R", help="exit 1 when two variants "
                   "of one dtype differ by more than the factor R (>= 1) in tokens/s, or when "
                   "no two of one dtype ran")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        p.error("--warmup, --steps and --repeats must be at least 1")
    if args.expect_match is not None and not args.expect_match >= 1:
        p.error("--expect-match must be a factor >= 1")
    variants = parse_variants(args.variants)
    report = {"student": args.student, "teacher": args.teacher, "data": args.data,
              "steps": args.steps,
              "warmup": args.warmup, "tokens_per_batch": args.tokens_per_batch,
              "max_len": args.max_len, "max_predictions": args.max_predictions,
              "threads": args.threads, "repeats": args.repeats, "host": host_info(),
              "records": []}
    with tempfile.TemporaryDirectory(prefix="bort-bench-pretrain-") as workdir:
        data, teacher_path = prepare(workdir, args)
        for framework, dtype in variants * args.repeats:
            spec = dict(framework=framework, dtype=dtype, student=args.student,
                        teacher=args.teacher, teacher_path=teacher_path, data=data,
                        steps=args.steps, warmup=args.warmup, threads=args.threads,
                        tokens_per_batch=args.tokens_per_batch)
            record = run_variant(spec, args.timeout)
            report["records"].append(record)
            print("%s %s: %s" % (framework, dtype, "%.0f tokens/s" % record["tokens_per_s"]
                                 if record["ok"] else "error"), file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(markdown(report, args.expect_match))
    if not any(r["ok"] for r in report["records"]):
        return 1
    if args.expect_match is None:
        return 0
    rows = pairs(report)
    failed = bool(mismatches(rows, args.expect_match)) or not rows
    print("pretraining throughput verdict: %s" % ("FAIL" if failed else "PASS"))
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
