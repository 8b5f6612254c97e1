"""Train the demo preset's teacher once and ship it with the package.

Runs `bort reproduce`'s data and teacher stages with the demo preset's teacher recipe (seed 0,
one thread: the same bytes on a given machine) and writes bort_core/data/demo/teacher.params
with teacher.json beside it (config, recipe, held-out scores, SHA-256). `--check` retrains and
compares with the shipped file instead of writing it.

    OMP_NUM_THREADS=1 python scripts/make_demo_teacher.py [--framework torch] [--work DIR]
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile

os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"    # before any framework

from bort_core import checkpoint as ckpt  # noqa: E402
from bort_core.reproduce.presets import PRESETS  # noqa: E402
from bort_core.reproduce.runner import Run, stage  # noqa: E402
from bort_core.reproduce.stages import make_data, teacher_stage, train_recipe  # noqa: E402

SEED = 0


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--framework", choices=("gluon", "torch"), default="torch",
                        help="the engine that trains it (default %(default)s)")
    parser.add_argument("--work", help="working directory (default: a temporary one, removed)")
    parser.add_argument("--check", action="store_true", help="retrain and compare with the "
                        "shipped teacher.params; write nothing")
    args = parser.parse_args(argv)
    preset = dict(PRESETS["demo"], teacher_checkpoint=None)
    shipped = PRESETS["demo"]["teacher_checkpoint"]
    work = args.work or tempfile.mkdtemp(prefix="demo-teacher-")
    try:
        run = Run(work, {"preset": "demo", "seed": SEED, "framework": args.framework})
        data = stage(run, "data", make_data, run, preset, SEED)
        result = stage(run, "teacher", teacher_stage, run, [args.framework], preset, data, SEED)
        packed = os.path.join(work, "teacher.params")    # without the tied decoder's copy
        ckpt.save_params(packed, ckpt.drop_tied_decoder(ckpt.load_params(result["checkpoint"])))
        digest = sha256(packed)
        if args.check:
            same = os.path.exists(shipped) and sha256(shipped) == digest
            print("retrained teacher %s the shipped %s" % ("matches" if same else "DIFFERS from",
                                                          shipped))
            return 0 if same else 1
        shutil.copyfile(packed, shipped)
        info = {"config": result["config_name"], "framework": args.framework, "seed": SEED,
                "recipe": train_recipe(preset, "teacher_"), "heldout": result["heldout"],
                "sha256": digest, "made_by": "scripts/make_demo_teacher.py"}
        Run.write(os.path.splitext(shipped)[0] + ".json", info)
        print(json.dumps(info, indent=1))
        return 0
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
