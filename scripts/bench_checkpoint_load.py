"""Times bort_core.checkpoint against mx.nd.load / mx.nd.save on a full-size checkpoint.

Builds a bort_4_8_768_1024 parameter dict (random numpy, canonical names, the tied decoder
weight stored twice as in the 2020 files), saves it, and reports the median of --runs
timings per reader/writer (file in the page cache: this measures parsing and copying,
not the disk). MXNet rows are skipped when mxnet is not installed.

    python scripts/bench_checkpoint_load.py [--dtype float32|float16] [--runs 5] [--dir DIR]
"""
import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections import OrderedDict

import numpy as np

from bort_core import arch, checkpoint
from bort_core.configs import get_config
from bort_core.model_params import load_checkpoint


def build_params(config, dtype, seed=0):
    rng = np.random.RandomState(seed)
    params = OrderedDict()
    for name, shape in arch.canonical_shapes(config).items():
        params[name] = (rng.standard_normal(shape).astype(np.float32) * 0.02).astype(dtype)
    return checkpoint.add_tied_decoder(params)


def median_time(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="bort_4_8_768_1024")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write the file (default: a temp dir)")
    args = parser.parse_args()

    config = get_config(args.config)
    params = build_params(config, args.dtype)
    workdir = args.dir or tempfile.mkdtemp(prefix="bort-bench-")
    path = os.path.join(workdir, "bench.params")
    try:
        checkpoint.save_params(path, params)
        size_mb = os.path.getsize(path) / 2 ** 20
        rows = [
            ("ours: load_ndarrays", lambda: checkpoint.load_ndarrays(path)),
            ("ours: load_checkpoint (validate)",
             lambda: load_checkpoint(path, args.config)),
            ("ours: save_params (atomic, fsync)",
             lambda: checkpoint.save_params(path + ".ours", params)),
        ]
        try:
            import mxnet as mx
        except ImportError:
            mx = None
        if mx is not None:
            def mx_load_numpy():
                return {k: v.asnumpy() for k, v in mx.nd.load(path).items()}

            nd = {k: mx.nd.array(v, dtype=v.dtype) for k, v in params.items()}
            rows += [
                ("mxnet %s: mx.nd.load" % mx.__version__, lambda: mx.nd.load(path)),
                ("mxnet %s: mx.nd.load + asnumpy" % mx.__version__, mx_load_numpy),
                ("mxnet %s: mx.nd.save" % mx.__version__,
                 lambda: mx.nd.save(path + ".mx", nd)),
            ]
        print("%s, %s, %d arrays (tied weight stored twice), %.1f MiB; %s, Python %s, "
              "numpy %s, %d CPUs; median/min of %d runs, warm page cache"
              % (args.config, args.dtype, len(params), size_mb, platform.machine(),
                 platform.python_version(), np.__version__, os.cpu_count(), args.runs))
        print("%-36s %10s %10s %10s" % ("", "median s", "min s", "GiB/s"))
        for label, fn in rows:
            fn()   # warm-up
            med, best = median_time(fn, args.runs)
            print("%-36s %10.3f %10.3f %10.2f" % (label, med, best, size_mb / 1024 / med))
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for suffix in ("", ".ours", ".mx"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)


if __name__ == "__main__":
    main()
