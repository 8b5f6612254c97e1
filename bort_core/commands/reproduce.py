"""`bort reproduce`: the command line of the whole pipeline (bort_core.reproduce)."""
from __future__ import annotations

import bort_core.reproduce
from bort_core.commands.convention import add_output_dir, add_overwrite, deprecated
from bort_core.reproduce.pipeline import reproduce
from bort_core.reproduce.presets import PRESETS


def register(sub):
    p = sub.add_parser("reproduce", help="the whole 2020 pipeline end to end (teacher, OSE "
                       "extraction, distillation pretraining, Agora fine-tuning, parity)",
                       description=bort_core.reproduce.__doc__.split("\n\n")[0])
    p.add_argument("--framework", choices=("gluon", "torch", "both"), default="both",
                   help="which framework(s) run the pipeline (default both, with parity verdicts)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                   help="demo: the embedded corpus and demo tasks, minutes on a CPU (default); "
                   "paper: real-scale configuration from real files (--files-dir)")
    deprecated(p, "--out", add_output_dir(p, default="runs/reproduce", help="the run: stage "
                                          "outputs, summary.md/json, plots (default %(default)s)"))
    p.add_argument("--files-dir", help="--preset paper: where the real files are (default real_files/)")
    p.add_argument("--seed", type=int, default=0)
    add_overwrite(p, help="start over: discard the run --output-dir holds (default: resume it, "
                  "its finished stages kept; a run with other settings is refused)")
    p.add_argument("--retrain-teacher", action="store_true", help="pretrain the teacher in the "
                   "run with the preset's teacher recipe instead of using the preset's checkpoint "
                   "(the demo's ships with the package: scripts/make_demo_teacher.py trained it)")
    p.add_argument("--sequential", action="store_true", help="with both frameworks, run them "
                   "one after the other with all cores each, output on the terminal (default: "
                   "side by side, half the cores each, when the machine has two or more)")
    p.set_defaults(run=run)


def run(args):
    frameworks = ["gluon", "torch"] if args.framework == "both" else [args.framework]
    reproduce(frameworks, args.preset, args.output_dir, args.seed, args.overwrite, args.files_dir,
              args.sequential, args.retrain_teacher)
    return 0
