"""The parent: it never imports a framework. It writes the weights every worker loads, starts
one worker process per (framework, config, dtype), and times them in interleaved rounds."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from tqdm import tqdm

from bort_core import checkpoint as ckpt
from bort_core import hf
from bort_core.configs import get_config
from bort_core.model_params import load_checkpoint
from parity import io
from parity.throughput.workloads import DEVICES, DTYPES, FRAMEWORKS, MODES, parse_list, step_flops, workloads


def summarize(times, batch, seq, flops=None, peak_flops=None):
    """Throughput and latency figures from per-step seconds (medians, not means)."""
    t = np.asarray(times, dtype=np.float64)
    if t.size == 0 or not np.all(t > 0):
        raise ValueError("summarize needs positive step times, got %r" % (times,))
    median = float(np.median(t))
    out = {"steps": int(t.size), "latency_p50_ms": 1e3 * median,
           "latency_p90_ms": 1e3 * float(np.percentile(t, 90)),
           "latency_min_ms": 1e3 * float(t.min()),
           "tokens_per_s": batch * seq / median, "sequences_per_s": batch / median}
    if flops:
        out["tflops"] = flops / median / 1e12
        if peak_flops:
            out["mfu"] = flops / median / peak_flops
    return out


def host_info(cpuinfo="/proc/cpuinfo"):
    """CPU model (with family/model/clock, which tell apart hosts a VM names alike), cores,
    Python, date, and the CPU's bf16 matrix instructions (AMX, AVX512-BF16: without them bf16
    runs slower than fp32 on the CPU)."""
    fields, flags = {}, set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags":
                    flags = set(value.split())
                    break
                fields.setdefault(key, value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor()
    detail = ["family " + fields["cpu family"]] if fields.get("cpu family") else []
    detail += ["model " + fields["model"]] if fields.get("model") else []
    detail += ["%.0f MHz" % float(fields["cpu MHz"])] if fields.get("cpu MHz") else []
    detail = ", ".join(detail)
    return {"host_cpu": "%s (%s)" % (model, detail) if detail else model,
            "host_cores": os.cpu_count(), "python": platform.python_version(),
            "host_simd": sorted(flags & {"avx2", "avx512f", "fma"}),
            "host_bf16_isa": sorted(flags & {"amx_bf16", "avx512_bf16"}),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class Worker:
    """One framework in its own process, driven by JSON lines over stdin/stdout."""

    def __init__(self, spec, threads):
        self.spec = spec
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "parity.throughput.worker", "--worker",
                                      json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True, env=env)

    def call(self, **request):
        """Send one request, return the reply dict ({'error': ...} if the worker died)."""
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            while True:
                line = self.proc.stdout.readline()
                if not line:
                    break
                if line.startswith("{"):
                    return json.loads(line)
        except (BrokenPipeError, OSError):
            pass
        self.err.seek(0)
        tail = self.err.read().strip().splitlines()[-3:]
        return {"error": "worker exited (%s): %s" % (self.proc.poll(), " / ".join(tail))}

    def close(self):
        if self.proc.poll() is None:
            try:
                self.call(op="quit")
            except Exception:   # noqa: BLE001 - best effort; killed below
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.err.close()


def prepare_weights(config, workdir, frameworks, checkpoint=None, seed=0):
    """The one .params file every worker loads, plus the HF / ONNX exports of it when asked."""
    paths = {}
    if checkpoint:
        paths["params"] = checkpoint
    else:
        paths["params"] = os.path.join(workdir, "%s.params" % config.name)
        if not os.path.exists(paths["params"]):
            ckpt.save_params(paths["params"], io.random_params(config, seed),
                             store_tied_decoder=True)
    if "hf" in frameworks:
        paths["hf"] = os.path.join(workdir, "%s-hf" % config.name)
        if not os.path.exists(paths["hf"]):
            hf.save_hf(paths["hf"], config, load_checkpoint(paths["params"], config.name)[1])
    if "onnx" in frameworks:
        paths["onnx"] = os.path.join(workdir, "%s.onnx" % config.name)
        if not os.path.exists(paths["onnx"]):
            done = subprocess.run([sys.executable, "-m", "bort_core.cli", "export-onnx",
                                   paths["params"], paths["onnx"], "--config", config.name],
                                  capture_output=True, text=True)
            if done.returncode:
                paths["onnx_error"] = (done.stderr.strip().splitlines() or ["export failed"])[-1]
    return paths


def _start_workers(args, names, frameworks, dtypes, threads, workdir, base, log):
    """One worker per (config, dtype, framework); those that cannot start become error records."""
    workers, failed = [], []
    for name in names:
        config = get_config(name)
        paths = prepare_weights(config, workdir, frameworks, args.checkpoint if len(names) == 1
                                else None, args.seed)
        for dtype in dtypes:
            for fw in frameworks:
                spec = dict(framework=fw, config=config.name, paths=paths, dtype=dtype,
                            mode=args.mode, device=args.device, threads=threads, seed=args.seed,
                            warmup=args.warmup, check_error=bool(args.check_error))
                w = Worker(spec, threads)
                reply = w.call(op="hello")
                if reply.get("error"):
                    log("%-13s %-20s %-9s unavailable: %s" % (fw, config.name, dtype, reply["error"]))
                    failed.append(dict(base, framework=fw, config=config.name, dtype=dtype,
                                       error=reply["error"]))
                    w.close()
                else:
                    w.info = {k: v for k, v in reply.items() if k != "ok"}
                    workers.append(w)
    return workers, failed


def _peaks(args, workers, dtypes, log):
    """dtype -> peak FLOP/s: given, measured by a torch-family worker of that dtype, or None."""
    peaks = {}
    for dtype in dtypes:
        peaks[dtype] = args.peak_tflops * 1e12 if args.peak_tflops else None
        candidates = [w for w in workers if w.spec["dtype"] == dtype
                      and w.spec["framework"] in ("torch", "torch-compile", "torch-plain", "hf")]
        if peaks[dtype] is None and args.measure_peak and candidates:
            reply = candidates[0].call(op="peak")
            if reply.get("peak_tflops"):
                peaks[dtype] = reply["peak_tflops"] * 1e12
            log("measured peak %s: %s" % (dtype, "%.3f TFLOP/s (dense GEMM)" % reply["peak_tflops"]
                                          if reply.get("peak_tflops") else reply.get("error")))
    return peaks


def _measure(args, live):
    """Interleaved timing rounds (the order rotates each round); worker -> times or error."""
    times = {id(w): [] for w in live}
    for rnd in tqdm(range(args.repeats), desc="rounds", leave=False, disable=not args.progress):
        shift = rnd % len(live)
        for w in live[shift:] + live[:shift]:
            if isinstance(times[id(w)], str):
                continue
            reply = w.call(op="time", n=args.iters)
            times[id(w)] = reply["error"] if reply.get("error") else times[id(w)] + reply["times"]
    return times


def run(args, log=print):
    """Measure every (framework, config, dtype) on every workload; return the records (one
    per workload and worker, plus one per worker that could not start)."""
    if args.mode not in MODES or args.device not in DEVICES:
        raise ValueError("--mode must be one of %s and --device one of %s (got %s, %s)"
                         % (", ".join(MODES), ", ".join(DEVICES), args.mode, args.device))
    asked = parse_list(args.frameworks, None, "--frameworks")
    asked_dtypes = parse_list(args.dtype, None, "--dtype")
    names = parse_list(args.config, None, "--config")
    pairs = workloads(args.preset, args.batch_size, args.seq_len)
    frameworks = [f for f in asked if f in FRAMEWORKS]
    dtypes = [d for d in asked_dtypes if d in DTYPES]
    threads = args.threads or os.cpu_count()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bort-throughput-")
    os.makedirs(workdir, exist_ok=True)
    base = dict(host_info(), mode=args.mode, device=args.device, threads=threads,
                loadavg_start=list(os.getloadavg()))
    failed = [dict(base, framework=f, error="unknown framework; choose from %s"
                   % ", ".join(FRAMEWORKS)) for f in asked if f not in FRAMEWORKS]
    failed += [dict(base, framework="-", dtype=d, error="unknown dtype; choose from %s"
                    % ", ".join(DTYPES)) for d in asked_dtypes if d not in DTYPES]
    for r in failed:
        log("%-13s %s" % (r["framework"] if r["framework"] != "-" else r["dtype"], r["error"]))
    if args.device == "cpu" and "bfloat16" in dtypes and not base["host_bf16_isa"]:
        log("note: this CPU has neither AMX nor AVX512-BF16; bfloat16 matrix products are "
            "emulated here and run slower than float32")
    workers, more = _start_workers(args, names, frameworks, dtypes, threads, workdir, base, log)
    failed += more
    records = []
    try:
        peaks = _peaks(args, workers, dtypes, log)
        for batch, seq in pairs:
            live = []
            for w in workers:
                rec = dict(base, framework=w.spec["framework"], config=w.spec["config"],
                           dtype=w.spec["dtype"], batch=batch, seq=seq, **w.info)
                reply = w.call(op="setup", batch=batch, seq=seq)
                rec.update({k: v for k, v in reply.items() if k != "ok"})
                w.record = rec
                (records.append(rec) if reply.get("error") else live.append(w))
            times = _measure(args, live) if live else {}
            for w in live:
                rec, got = w.record, times[id(w)]
                if isinstance(got, str):
                    rec["error"] = got
                else:
                    flops = step_flops(get_config(rec["config"]), batch, seq, args.mode)
                    peak = peaks.get(rec["dtype"])
                    rec.update(summarize(got, batch, seq, flops, peak), flops_per_step=flops)
                    if peak:
                        rec["peak_tflops"] = peak / 1e12
                    rec.update({k: v for k, v in w.call(op="memory").items() if k != "ok"})
                records.append(rec)
            for rec in records[-len(workers):]:
                log("%-13s %-20s %-9s B=%-3d L=%-4d %s" % (
                    rec["framework"], rec["config"], rec["dtype"], batch, seq,
                    "error: " + rec["error"] if rec.get("error") else
                    "%10.0f tokens/s  p50 %8.2f ms  p90 %8.2f ms" % (
                        rec["tokens_per_s"], rec["latency_p50_ms"], rec["latency_p90_ms"])))
    finally:
        for w in workers:
            w.close()
    for r in records:
        r["loadavg_end"] = list(os.getloadavg())
    return failed + records
