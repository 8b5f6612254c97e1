"""Throughput side by side: one worker process per (framework, config), same weights (one
.params file), same inputs (`parity.io.make_inputs`), interleaved timing rounds.

The parent never imports a framework. It writes the checkpoint (and the HF / ONNX exports the
anchors need), starts every worker, then for each workload warms all of them up and runs
`--repeats` rounds; each round gives every worker `--iters` timed steps, in a rotating
order, so load from other processes on the machine falls on all of them alike. Medians are
taken over all timed steps. A worker that cannot start (framework missing, no GPU, dtype not
supported) becomes a record with an `error` and the others are still measured. Every two
frameworks measured on a workload make a pair whose tokens/s ratio the report shows
(`pair_ratios`); `--expect-match R` turns the pairs into a verdict (`mismatches`).

Frameworks:
  torch        bort_torch.BortModel with the fast paths (fused QKV + SDPA, inference_mode;
               low precision runs under torch.autocast)
  torch-compile  the same, through torch.compile (inference: inductor freezing, so weights
               are constants and GEMMs prepacked)
  torch-plain  the same model with the fused attention switched off (the plain reference)
  gluon        bort_gluon.BortModel with its unpadded encoder (fp32; AMP runs padded),
               hybridized with static_alloc/static_shape
  gluonnlp     GluonNLP's own BERTModel (no Bort changes), hybridized the same way
  hf           HF transformers BertModel on the HF export of the same weights (SDPA)
  onnx         ONNX Runtime on `bort export-onnx` of the same weights
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

FRAMEWORKS = ("torch", "torch-compile", "torch-plain", "gluon", "gluonnlp", "hf", "onnx")
DTYPES = ("float32", "float16", "bfloat16")
MODES = ("inference", "train")
DEVICES = ("cpu", "cuda")
# GluonNLP's backbone benchmark (scripts/benchmarks/benchmark_gluonnlp.py): its (batch, seq)
# pairs from (1, 128) to (32, 512).
PRESETS = {
    "gluonnlp-inference": [(1, 128), (1, 384), (1, 512), (8, 32), (8, 128), (8, 512), (32, 512)],
    "gluonnlp-train": [(4, 128), (8, 128), (16, 128), (32, 128), (1, 512), (2, 512), (4, 512),
                       (8, 512)],
}
MASKED_FRACTION = 0.15
TRAIN_FLOPS_FACTOR = 3   # forward + backward ~ 3x forward


# ---------------------------------------------------------------- pure helpers (tested) --

def parse_list(text, allowed, what):
    """'a,b' -> ['a', 'b'], every item in `allowed` (a clear error naming the flag)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if allowed is not None and t not in allowed]
    if not items or bad:
        raise ValueError("%s: unknown %s; choose from %s" % (what, ", ".join(bad) or "(empty)",
                                                            ", ".join(allowed)))
    return items


def workloads(preset=None, batch=None, seq=None):
    """[(batch, seq), ...] from a preset name, or the single pair given."""
    if preset:
        if preset not in PRESETS:
            raise ValueError("--preset: unknown %r; choose from %s" % (preset, ", ".join(PRESETS)))
        return list(PRESETS[preset])
    if not batch or not seq or batch < 1 or seq < 4:
        raise ValueError("--batch-size must be >= 1 and --seq-len >= 4 (got %s, %s)" % (batch, seq))
    return [(batch, seq)]


def num_masked(seq):
    return max(1, int(round(MASKED_FRACTION * seq)))


def step_flops(config, batch, seq, mode):
    """Model FLOPs (matmuls, 2 per multiply-add) of one timed step: the backbone forward for
    inference; forward + backward (3x) of backbone and MLM decoder for training."""
    from bort_core.arch import forward_flops

    if mode == "inference":
        return batch * forward_flops(config, seq)["matmul"]
    return TRAIN_FLOPS_FACTOR * batch * forward_flops(config, seq, num_masked(seq))["matmul"]


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


def format_table(records):
    """Markdown table, one row per record (errors shown in place of figures)."""
    head = ("| framework | config | B | L | dtype | mode | device | tokens/s | seq/s | p50 ms "
            "| p90 ms | TFLOP/s | MFU | peak MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        key = "| %s | %s | %s | %s | %s | %s | %s " % (
            r["framework"], r.get("config", "-"), r.get("batch", "-"), r.get("seq", "-"),
            r.get("dtype", "-"), r.get("mode", "-"), r.get("device", "-"))
        if r.get("error"):
            lines.append(key + "| error: %s |||||||" % r["error"].replace("|", "/"))
            continue
        lines.append(key + "| %.0f | %.2f | %.2f | %.2f | %s | %s | %s |" % (
            r["tokens_per_s"], r["sequences_per_s"], r["latency_p50_ms"], r["latency_p90_ms"],
            "%.3f" % r["tflops"] if "tflops" in r else "-",
            "%.1f%%" % (100 * r["mfu"]) if "mfu" in r else "-",
            "%.0f" % r["peak_mem_mib"] if r.get("peak_mem_mib") else "-"))
    return "\n".join(lines)


def speedups(records, reference):
    """{(config, dtype, mode, B, L): {framework: tokens/s ratio over `reference`}}."""
    groups = {}
    for r in records:
        if not r.get("error"):
            key = (r["config"], r["dtype"], r["mode"], r["batch"], r["seq"])
            groups.setdefault(key, {})[r["framework"]] = r["tokens_per_s"]
    return {k: {f: v / g[reference] for f, v in g.items()}
            for k, g in groups.items() if reference in g}


def ratio_table(records, base):
    """Markdown: per framework and workload, how many times faster `base` is than each
    other config (tokens/s ratio, the paper's 'x times faster')."""
    by = {}
    for r in records:
        if not r.get("error"):
            by.setdefault((r["framework"], r["dtype"], r["mode"], r["batch"], r["seq"]),
                          {})[r["config"]] = r["tokens_per_s"]
    configs = sorted({r["config"] for r in records if not r.get("error") and r["config"] != base})
    lines = ["| framework | dtype | B | L | %s tokens/s | %s |" % (
        base, " | ".join("%s / %s" % (base, c) for c in configs)),
        "|" + "---|" * (5 + len(configs))]
    for (fw, dtype, _mode, b, s), speeds in sorted(by.items()):
        if base not in speeds:
            continue
        cells = ["%.2fx" % (speeds[base] / speeds[c]) if c in speeds else "-" for c in configs]
        lines.append("| %s | %s | %d | %d | %.0f | %s |" % (fw, dtype, b, s, speeds[base],
                                                          " | ".join(cells)))
    return "\n".join(lines)


WORKLOAD = ("config", "dtype", "mode", "device", "batch", "seq")


def pair_ratios(records):
    """One row per two frameworks measured on the same workload (config, dtype, mode, device,
    B, L), in the records' order: `a`, `b` and `ratio` = tokens/s of a over b."""
    groups = {}
    for r in records:
        if not r.get("error"):
            groups.setdefault(tuple(r.get(k) for k in WORKLOAD), []).append(r)
    return [dict(zip(WORKLOAD, key), a=a["framework"], b=b["framework"],
                 ratio=a["tokens_per_s"] / b["tokens_per_s"])
            for key, group in groups.items()
            for i, a in enumerate(group) for b in group[i + 1:]]


def mismatches(rows, factor):
    """The pair rows whose frameworks differ by more than `factor` (>= 1), either way."""
    if not factor >= 1:
        raise ValueError("--expect-match must be a factor >= 1 (got %s)" % factor)
    return [r for r in rows if max(r["ratio"], 1 / r["ratio"]) > factor]


def pairs_table(rows, factor=None):
    """Markdown: each pair's tokens/s ratio per workload, then its median over the workloads
    of a (config, dtype, mode) when there are several; with `factor`, a verdict column."""
    medians = {}
    for r in rows:
        medians.setdefault((r["a"], r["b"], r["config"], r["dtype"], r["mode"]), []).append(
            r["ratio"])
    head = "| a / b | config | dtype | mode | B | L | tokens/s ratio |"
    if factor:
        head += " within %gx |" % factor
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def line(a, b, config, dtype, mode, batch, seq, ratio):
        cells = "| %s / %s | %s | %s | %s | %s | %s | %.2fx |" % (a, b, config, dtype, mode,
                                                                 batch, seq, ratio)
        if factor:
            cells += " %s |" % ("yes" if max(ratio, 1 / ratio) <= factor else "NO")
        lines.append(cells)

    for r in rows:
        line(r["a"], r["b"], r["config"], r["dtype"], r["mode"], r["batch"], r["seq"], r["ratio"])
    for (a, b, config, dtype, mode), ratios in medians.items():
        if len(ratios) > 1:
            line(a, b, config, dtype, mode, "median", "of %d" % len(ratios),
                 float(np.median(ratios)))
    return "\n".join(lines)


def plot(records, path):
    """Bar chart of tokens/s per framework and workload; False when matplotlib is absent."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in records if not r.get("error")]
    labels = sorted({"%s B%d L%d %s" % (r["config"], r["batch"], r["seq"], r["dtype"]) for r in ok})
    frameworks = sorted({r["framework"] for r in ok})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) * max(1, len(frameworks)) / 2), 4))
    width = 0.8 / max(1, len(frameworks))
    for i, fw in enumerate(frameworks):
        vals = {("%s B%d L%d %s" % (r["config"], r["batch"], r["seq"], r["dtype"])): r["tokens_per_s"]
                for r in ok if r["framework"] == fw}
        ax.bar([j + i * width for j in range(len(labels))], [vals.get(lb, 0) for lb in labels],
               width, label=fw)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("tokens/s (median)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def write_atomic(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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


# ------------------------------------------------------------------- parent: the driver --

class Worker:
    """One framework in its own process, driven by JSON lines over stdin/stdout."""

    def __init__(self, spec, threads):
        self.spec = spec
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "parity.throughput", "--worker",
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
    from bort_core import checkpoint as ckpt
    from parity import io

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
            from bort_core import hf
            hf.save_hf(paths["hf"], config, ckpt.load_checkpoint(paths["params"], config.name)[1])
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
    from bort_core.configs import get_config

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
    from tqdm import tqdm

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
    from bort_core.configs import get_config

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


# ------------------------------------------------------------------ worker: one framework --

def _reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _batch(config, batch, seq, seed):
    from parity import io

    return io.make_inputs(batch, seq, config.vocab_size, num_masked(seq), seed)


class TorchRunner:
    """bort_torch (fused or plain) or HF BertModel, eager or compiled, fp32 or autocast."""

    def __init__(self, spec):
        import torch

        self.torch, self.spec = torch, spec
        torch.set_num_threads(spec["threads"])
        if spec["device"] == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda: torch %s sees no CUDA device" % torch.__version__)
        self.device = torch.device(spec["device"])
        self.dtype = getattr(torch, spec["dtype"])
        from bort_core import checkpoint as ckpt
        from bort_core.configs import get_config

        self.config = get_config(spec["config"])
        train = spec["mode"] == "train"
        if spec["framework"] == "hf":
            if train:
                raise RuntimeError("hf: inference only in this harness")
            from transformers import BertModel

            self.model = BertModel.from_pretrained(spec["paths"]["hf"], add_pooling_layer=False,
                                                   attn_implementation="sdpa")
            self.versions = {"torch": torch.__version__,
                             "transformers": __import__("transformers").__version__}
        else:
            from bort_torch import model as tm

            config, params = ckpt.load_checkpoint(spec["paths"]["params"], spec["config"])
            self.model = tm.BortModel(config if train else config.without_dropout())
            tm.set_params(self.model, params, spec["paths"]["params"])
            tm.set_fast_attention(self.model, spec["framework"] != "torch-plain")
            self.versions = {"torch": torch.__version__}
        self.model.to(self.device).train(train)
        self.step = self.model
        if spec["framework"] == "torch-compile":
            if not train:
                import torch._inductor.config as inductor
                inductor.freezing = True   # weights as constants: prepacked GEMMs on CPU
            self.step = torch.compile(self.model)
        self.threads = torch.get_num_threads()

    def setup(self, batch, seq):
        torch = self.torch
        arrays = _batch(self.config, batch, seq, self.spec["seed"])
        as_t = lambda a: torch.from_numpy(a.astype(np.int64)).to(self.device)   # noqa: E731
        self.x, self.vl, self.pos = (as_t(arrays[k]) for k in
                                     ("input_ids", "valid_length", "masked_positions"))
        self.mask = (torch.arange(seq, device=self.device)[None, :] < self.vl[:, None]).long()
        self.labels = torch.randint(0, self.config.vocab_size, self.pos.shape, device=self.device,
                                    generator=torch.Generator(self.device).manual_seed(0))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(self.spec["warmup"]):
            self.run_step()
        out = {"warmup_s": time.perf_counter() - start}
        if self.spec["check_error"] and self.spec["dtype"] != "float32" \
                and self.spec["framework"] != "hf":
            out.update(self.logit_error())
        return out

    def autocast(self):
        low = self.spec["dtype"] != "float32"
        return self.torch.autocast(self.device.type, dtype=self.dtype, enabled=low)

    def run_step(self):
        torch = self.torch
        if self.spec["mode"] == "train":
            with self.autocast():
                _, logits = self.step(self.x, self.vl, self.pos)
                loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1),
                                                         self.labels.flatten())
            loss.backward()
            self.model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), self.autocast():
                if self.spec["framework"] == "hf":
                    self.step(input_ids=self.x, attention_mask=self.mask)
                else:
                    self.step(self.x, self.vl)
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def logit_error(self):
        """MLM logits at the masked positions under the low dtype vs fp32 (eager, eval mode,
        same batch)."""
        torch = self.torch
        training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            ref = self.model(self.x, self.vl, self.pos)[1].float()
            with self.autocast():
                low = self.model(self.x, self.vl, self.pos)[1].float()
        self.model.train(training)
        diff = (low - ref).abs()
        return {"mlm_logit_max_abs_err": float(diff.max()),
                "mlm_logit_rel_l2_err": float(torch.linalg.vector_norm(low - ref)
                                              / torch.linalg.vector_norm(ref)),
                "mlm_top1_agreement": float((low.argmax(-1) == ref.argmax(-1)).float().mean())}

    def peak(self):
        """Measured dense-GEMM TFLOP/s in this dtype on this device (the MFU denominator when
        no peak is given)."""
        torch = self.torch
        n = 4096 if self.device.type == "cuda" else 1024
        a = torch.randn(n, n, device=self.device, dtype=self.dtype)
        b = torch.randn(n, n, device=self.device, dtype=self.dtype)
        times = []
        for _ in range(8):
            start = time.perf_counter()
            torch.mm(a, b)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return {"peak_tflops": 2 * n ** 3 / float(np.median(times[2:])) / 1e12}

    def memory(self):
        if self.device.type == "cuda":
            return {"peak_mem_mib": self.torch.cuda.max_memory_allocated() / 2 ** 20}
        return {"peak_mem_mib": _rss_peak_mib()}


class GluonRunner:
    """bort_gluon (or GluonNLP's own BERTModel) hybridized with static_alloc/static_shape."""

    def __init__(self, spec):
        import mxnet as mx

        self.mx, self.spec = mx, spec
        if spec["device"] == "cuda":
            if mx.context.num_gpus() == 0:
                raise RuntimeError("--device cuda: MXNet %s has no GPU (CPU-only build or no "
                                   "device; mx.context.num_gpus() == 0)" % mx.__version__)
            self.ctx = mx.gpu(0)
        else:
            self.ctx = mx.cpu()
        if spec["dtype"] == "float16" and spec["device"] == "cpu":
            raise RuntimeError("gluon float16 on CPU: MXNet has no CPU float16 kernels")
        import gluonnlp

        from bort_core import checkpoint as ckpt
        from bort_gluon import model as gm

        train = spec["mode"] == "train"
        config, params = ckpt.load_model_params(spec["paths"]["params"], spec["config"],
                                                with_decoder=train)
        self.config = config
        config = config if train else config.without_dropout()
        if spec["framework"] == "gluonnlp":
            self.model = gm.plain_bert_model(config, use_decoder=train, ctx=self.ctx)
        else:
            self.model = gm.BortModel(config, use_decoder=train)
            gm.initialize_like_release(self.model, self.ctx)
        gm.set_params(self.model, params, spec["paths"]["params"])
        if spec["dtype"] != "float32":   # AMP's SymbolBlock takes the padded inputs only
            gm.set_unpadded(self.model, False)
        gm.hybridize_for_speed(self.model)
        self.plain = spec["framework"] == "gluonnlp"
        self.versions = {"mxnet": mx.__version__, "gluonnlp": gluonnlp.__version__}
        self.threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
        self.train = train
        if spec["dtype"] != "float32":
            # AMP rewrites the cached graph, which exists once the hybridized block has run
            self.set_inputs(2, 8)
            self.forward(train)
            mx.nd.waitall()
            self.model = gm.to_low_precision(self.model, spec["dtype"], self.ctx)

    def set_inputs(self, batch, seq):
        mx = self.mx
        arrays = _batch(self.config, batch, seq, self.spec["seed"])
        self.x = mx.nd.array(arrays["input_ids"], ctx=self.ctx)
        self.vl = mx.nd.array(arrays["valid_length"], ctx=self.ctx)
        self.pos = mx.nd.array(arrays["masked_positions"], ctx=self.ctx)
        self.labels = mx.nd.array(np.random.RandomState(0).randint(
            0, self.config.vocab_size, arrays["masked_positions"].shape), ctx=self.ctx)

    def setup(self, batch, seq):
        self.set_inputs(batch, seq)
        start = time.perf_counter()
        for _ in range(self.spec["warmup"]):
            self.run_step()
        return {"warmup_s": time.perf_counter() - start}

    def forward(self, masked):
        if self.plain:   # GluonNLP's slot order: (inputs, token_types, valid_length, masked)
            return self.model(self.x, None, self.vl, self.pos if masked else None)
        return self.model(self.x, self.vl, self.pos if masked else None)

    def run_step(self):
        mx = self.mx
        if self.train:
            with mx.autograd.record():
                out = self.forward(True)
                logits = out[-1] if isinstance(out, (list, tuple)) else out
                loss = mx.nd.softmax_cross_entropy(logits.reshape((-1, self.config.vocab_size)),
                                                   self.labels.reshape((-1,)))
            loss.backward()
        else:
            out = self.forward(False)
            loss = out[0] if isinstance(out, (list, tuple)) else out
        loss.wait_to_read()

    def memory(self):
        return {"peak_mem_mib": _rss_peak_mib()}


class OnnxRunner:
    """ONNX Runtime on the exported backbone (fp32)."""

    def __init__(self, spec):
        import onnxruntime as ort

        from bort_core.configs import get_config

        if spec["paths"].get("onnx_error"):
            raise RuntimeError("export-onnx failed: %s" % spec["paths"]["onnx_error"])
        if spec["mode"] != "inference" or spec["dtype"] != "float32":
            raise RuntimeError("onnx: fp32 inference only in this harness")
        providers = ["CPUExecutionProvider"]
        if spec["device"] == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("--device cuda: this onnxruntime has no CUDAExecutionProvider")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec["threads"]
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(spec["paths"]["onnx"], options, providers=providers)
        self.spec, self.config = spec, get_config(spec["config"])
        self.versions = {"onnxruntime": ort.__version__}
        self.threads = spec["threads"]

    def setup(self, batch, seq):
        arrays = _batch(self.config, batch, seq, self.spec["seed"])
        self.feed = {"input_ids": arrays["input_ids"].astype(np.int64),
                     "valid_length": arrays["valid_length"].astype(np.int64)}
        start = time.perf_counter()
        for _ in range(self.spec["warmup"]):
            self.run_step()
        return {"warmup_s": time.perf_counter() - start}

    def run_step(self):
        self.session.run(None, self.feed)

    def memory(self):
        return {"peak_mem_mib": _rss_peak_mib()}


def _rss_peak_mib():
    """Peak resident memory of this process (the whole process, weights included)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


RUNNERS = {"torch": TorchRunner, "torch-compile": TorchRunner, "torch-plain": TorchRunner,
           "hf": TorchRunner,
           "gluon": GluonRunner, "gluonnlp": GluonRunner, "onnx": OnnxRunner}


def worker(spec):
    """Serve requests for one framework until 'quit'; every failure is a reply, not a crash."""
    runner = None
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "quit":
                break
            if op == "hello":
                runner = RUNNERS[spec["framework"]](spec)
                _reply({"ok": True, "versions": runner.versions, "threads": runner.threads})
            elif op == "setup":
                _reply(dict(ok=True, **runner.setup(request["batch"], request["seq"])))
            elif op == "time":
                times = []
                for _ in range(request["n"]):
                    start = time.perf_counter()
                    runner.run_step()
                    times.append(time.perf_counter() - start)
                _reply({"ok": True, "times": times})
            elif op == "peak":
                _reply(dict(ok=True, **runner.peak()))
            elif op == "memory":
                _reply(dict(ok=True, **runner.memory()))
        except Exception as err:   # noqa: BLE001 - reported to the parent, which goes on
            name = type(err).__name__
            _reply({"error": "%s: %s" % (name, str(err).strip().splitlines()[0] if str(err) else name)})


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
    else:
        sys.exit("parity.throughput is driven by `python -m parity throughput`")
