"""Benchmark `bort create-pretraining-data`: throughput and peak memory as the input grows.

    python scripts/bench_pretraining_data.py [--base-mb 10] [--scale 10] [--workers 2]
        [--num-outputs 1] [--grow-outputs]

Builds a base input of about --base-mb MB by repeating the embedded demo corpus, and one --scale
times larger, then runs the command on each in a fresh process with the same --num-outputs (so
the larger run's shards are --scale times larger; --grow-outputs grows the number of shards with
the input instead). Reports, per run, the number of shards, output tokens per second and the peak
resident memory of the whole process tree (main process + workers, sampled every 50 ms from
/proc), as JSON. Memory should stay flat while the input and its shards grow --scale times.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from bort_core.data.demo import CORPUS_PATH


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (Linux /proc)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open("/proc/%d/status" % p) as f:
                total += next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))
            with open("/proc/%d/task/%d/children" % (p, p)) as f:
                stack.extend(int(c) for c in f.read().split())
        except (OSError, StopIteration):
            continue
    return total


def make_input(path: str, mb: float) -> int:
    with open(CORPUS_PATH, encoding="utf-8") as f:
        text = f.read().rstrip("\n") + "\n\n"
    copies = max(1, int(round(mb * 1e6 / len(text.encode("utf-8")))))
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(copies):
            f.write(text)
    return os.path.getsize(path)


def run(input_path: str, out_dir: str, workers: int, outputs: int, seq_len: int) -> dict:
    cmd = [sys.executable, "-m", "bort_core.cli", "create-pretraining-data", "--data",
           input_path, "--output-dir", out_dir, "--num-workers", str(workers), "--num-outputs",
           str(outputs), "--max-seq-length", str(seq_len), "--quiet"]
    start, peak = time.time(), 0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.05)
    wall = time.time() - start
    out = proc.stdout.read().decode()
    if proc.returncode:
        raise SystemExit("create-pretraining-data failed (%d)" % proc.returncode)
    stats = json.loads(out)
    return {"input_mb": round(os.path.getsize(input_path) / 1e6, 1), "num_outputs": outputs,
            "instances": stats["instances"], "tokens": stats["tokens"],
            "seconds": round(wall, 1), "tokens_per_s": int(stats["tokens"] / wall),
            "peak_rss_mb": round(peak / 1e6, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-mb", type=float, default=10.0)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num-outputs", type=int, default=1,
                        help="shards written for every input (for the base input with "
                        "--grow-outputs)")
    parser.add_argument("--grow-outputs", action="store_true",
                        help="give the larger input --scale times more shards (shards of equal "
                        "size) instead")
    parser.add_argument("--max-seq-length", type=int, default=512)
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, args.scale):
            path = os.path.join(tmp, "input-%dx.txt" % factor)
            make_input(path, args.base_mb * factor)
            results.append(run(path, os.path.join(tmp, "out-%dx" % factor), args.workers,
                               args.num_outputs * (factor if args.grow_outputs else 1),
                               args.max_seq_length))
            os.remove(path)
    report = {"machine": "%s, %d CPUs, Python %s" % (platform.platform(), os.cpu_count(),
                                                     platform.python_version()),
              "date": time.strftime("%Y-%m-%d"), "workers": args.workers,
              "max_seq_length": args.max_seq_length,
              "num_outputs": "grown with the input" if args.grow_outputs else "fixed",
              "runs": results,
              "memory_ratio_largest_vs_base": round(results[1]["peak_rss_mb"]
                                                    / results[0]["peak_rss_mb"], 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
