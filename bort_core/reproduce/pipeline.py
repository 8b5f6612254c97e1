"""The pipeline in order: data, teacher, each framework's stages (side by side or one after the
other), parity, then the report."""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, List

from bort_core.backend import load_framework
from bort_core.configs import get_config
from bort_core.reproduce.presets import resolve_preset
from bort_core.reproduce.report import markdown, summarize
from bort_core.reproduce.runner import Run, framework_stages, run_side_by_side, say, stage
from bort_core.reproduce.stages import (
    extract,
    finetune,
    make_data,
    parity_report,
    pretrain,
    teacher_stage,
    train_recipe,
)


def run_framework(run: Run, fw: str, p: Dict, data: Dict, seed: int, records: Dict) -> None:
    """Extraction, distillation pretraining, its no-teacher ablation and fine-tuning in one
    framework."""
    teacher = records["teacher"]
    records["extract-" + fw] = stage(run, "extract-" + fw, extract, run, fw, p, data, teacher,
                                     seed)
    best = get_config(records["extract-" + fw]["best_config"])
    pre = records["pretrain-" + fw] = stage(
        run, "pretrain-" + fw, pretrain, run.dir("pretrain-" + fw), fw, best, data,
        train_recipe(p), seed, (get_config(teacher["config_name"]), teacher["checkpoint"]))
    records["scratch-" + fw] = stage(run, "scratch-" + fw, pretrain, run.dir("scratch-" + fw),
                                     fw, best, data, train_recipe(p), seed)
    records["finetune-" + fw] = stage(run, "finetune-" + fw, finetune, run, fw, p,
                                      pre["checkpoint"], pre["config"], seed)


def reproduce(frameworks: List[str], preset: str, out: str, seed: int, overwrite: bool,
              files_dir: str = None, sequential: bool = False,
              retrain_teacher: bool = False) -> Dict:
    """The whole pipeline into `out` (resuming a compatible run there); returns the summary."""
    p, files_dir = resolve_preset(preset, files_dir, retrain_teacher)
    for fw in frameworks:
        load_framework(fw)    # a missing framework fails here, not after the first stages
    run = Run(out, {"frameworks": frameworks, "preset": preset, "seed": seed,
                    "files_dir": files_dir, "retrain_teacher": retrain_teacher}, overwrite)
    tic = time.time()
    data = stage(run, "data", make_data, run, p, seed)
    records = {"data": data}
    records["teacher"] = stage(run, "teacher", teacher_stage, run, frameworks, p, data, seed)
    if len(frameworks) > 1 and not sequential and (os.cpu_count() or 1) > 1:
        records["side-by-side"] = stage(run, "side-by-side", run_side_by_side, run, frameworks,
                                        run_framework, p, data, seed, records)
        records.update({key: run.done(key) for key in framework_stages(frameworks)})
    else:
        for fw in frameworks:
            run_framework(run, fw, p, data, seed, records)
    if len(frameworks) == 2:
        records["parity"] = stage(run, "parity", parity_report, run, records, seed)
    summary = summarize(run, records, frameworks, preset)
    sys.stdout.write(markdown(summary))
    say("done in %.0fs; summary: %s" % (time.time() - tic, os.path.join(out, "summary.md")))
    return summary
