"""A pretraining run's checkpoints and the rule for resuming one.

Checkpoints (`ckpt_dir/%07d.*`, step = optimizer steps done): `.params` the student in canonical
names (the 2020 `.params` format, loadable by either framework), `.states` BERTAdam's moments in
the same format (`mean:<name>`, `var:<name>`), `.json` bookkeeping (loss scale, skipped steps,
options); `.json` is written last, so a checkpoint counts only once it exists. Everything is
written atomically. `--start-step S` (or `latest`) resumes exactly: the batch stream is a pure
function of (seed, position) and every step reseeds the framework RNG with (seed, step).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Dict, List

import numpy as np

from bort_core import checkpoint as ckpt
from bort_core import io as bio


def checkpoint_paths(ckpt_dir: str, step: int) -> Dict[str, str]:
    stem = os.path.join(ckpt_dir, "%07d" % step)
    return {"params": stem + ".params", "states": stem + ".states", "meta": stem + ".json"}



def complete_steps(ckpt_dir: str) -> List[int]:
    """Steps with a complete checkpoint (its .json written last), ascending."""
    steps = []
    for path in glob.glob(os.path.join(ckpt_dir, "[0-9]" * 7 + ".json")):
        step = int(os.path.basename(path)[:7])
        if all(os.path.exists(p) for p in checkpoint_paths(ckpt_dir, step).values()):
            steps.append(step)
    return sorted(steps)



def resolve_start(ckpt_dir: str, start_step) -> int:
    """`--start-step`: None/0 (fresh), an integer with a complete checkpoint, or 'latest'."""
    if start_step in (None, "", "0", 0):
        return 0
    steps = complete_steps(ckpt_dir)
    if str(start_step) == "latest":
        if not steps:
            raise FileNotFoundError("--start-step latest: no complete checkpoint in %s" % ckpt_dir)
        return steps[-1]
    try:
        step = int(start_step)
    except ValueError:
        raise ValueError("--start-step must be an integer or 'latest', got %r" % start_step) from None
    if step not in steps:
        raise FileNotFoundError("--start-step %d: no complete checkpoint %s in %s (found: %s)"
                                % (step, "%07d.{params,states,json}" % step, ckpt_dir,
                                   ", ".join(map(str, steps)) or "none"))
    return step



def discard_run(ckpt_dir: str) -> None:
    """Delete the checkpoints, log.jsonl and TensorBoard events an earlier run left."""
    for path in glob.glob(os.path.join(ckpt_dir, "[0-9]" * 7 + ".*")):
        os.remove(path)
    for path in (os.path.join(ckpt_dir, "log.jsonl"), os.path.join(ckpt_dir, "tensorboard")):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)



def save_checkpoint(ckpt_dir: str, step: int, params: Dict[str, np.ndarray],
                    states: Dict[str, np.ndarray], meta: Dict) -> str:
    """Write the three files of a checkpoint atomically, the `.json` marker last."""
    paths = checkpoint_paths(ckpt_dir, step)
    ckpt.save_params(paths["params"], params, store_tied_decoder=True)
    ckpt.save_ndarrays(paths["states"], states)
    bio.write_text(paths["meta"], json.dumps(meta, indent=2, sort_keys=True))
    return paths["params"]


# Options that decide a run's trajectory: a resume must repeat them. Paths, logging, checkpoint
# and eval intervals may change (the run can move to another directory or machine).


# Options that decide a run's trajectory: a resume must repeat them. Paths, logging, checkpoint
# and eval intervals may change (the run can move to another directory or machine).
TRAJECTORY_OPTIONS = ("num_steps", "warmup_ratio", "lr", "weight_decay", "eps", "beta1", "beta2",
                      "clip_norm", "accumulate", "tokens_per_batch", "num_buckets", "use_avg_len",
                      "temperature", "mlm_weight", "teacher_ce_weight", "kd_loss", "dtype",
                      "dropout", "seed", "loss_scale", "scale_window", "batching",
                      "loss_scaler")


FLAGS = {"eps": "adam-epsilon"}     # options whose `bort pretrain` flag is not their name



def check_resume_options(options, saved: Dict, source: str) -> None:
    """Refuse to resume a checkpoint under options that would change its trajectory."""
    stored = saved.get("options", {})
    changed = ["--%s %r (saved %r)" % (FLAGS.get(k, k.replace("_", "-")), getattr(options, k), stored[k])
               for k in TRAJECTORY_OPTIONS if k in stored and stored[k] != getattr(options, k)]
    if "teacher" in stored and (stored["teacher"] is None) != (options.teacher is None):
        changed.append("--teacher %s (saved %s)" % (options.teacher or "absent",
                                                     stored["teacher"] or "absent"))
    if changed:
        raise ValueError("%s was written with other options than this resume: %s; resume with "
                         "the saved options, or pass --overwrite to start over" % (source,
                                                                                  "; ".join(changed)))



def load_checkpoint(ckpt_dir: str, step: int):
    """(params, optimizer states, meta) of a complete checkpoint."""
    paths = checkpoint_paths(ckpt_dir, step)
    params = ckpt.drop_tied_decoder(ckpt.load_params(paths["params"]), source=paths["params"])
    states = ckpt.load_params(paths["states"], strip_module_prefixes=False)
    with open(paths["meta"]) as f:
        return params, states, json.load(f)



def check_writable(directory: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise ValueError("checkpoint directory %s is not writable (%s)" % (directory, err)) from None
