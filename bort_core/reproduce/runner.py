"""The run's machinery: its output directory (settings, stage cache), the public commands a stage
runs, and each framework's stages in a process of its own, side by side."""
from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from typing import Dict, List

from bort_core.io import write_text

# the stages each framework runs, in order; their records are `OUT/<name>-<framework>/`
FRAMEWORK_STAGES = ("extract", "pretrain", "scratch", "finetune")

# program -> the module whose `main(argv)` runs it: the commands sit above this package
# (`bort_core.cli` registers this pipeline as `bort reproduce`; `parity` imports the frameworks),
# so they are reached by name at run time, as the frameworks are (bort_core.backend)
PROGRAMS = {"bort": "bort_core.cli", "python -m parity": "parity.__main__"}


def say(msg: str) -> None:
    print("[reproduce] " + msg, flush=True)


class Run:
    """The output directory: settings, stage markers, atomic JSON."""

    def __init__(self, out: str, settings: Dict = None, overwrite: bool = False):
        self.out = out
        if settings is None:        # a worker process attached to its parent's run
            return
        path = os.path.join(out, "settings.json")
        if os.path.exists(path) and not overwrite:
            with open(path) as f:
                previous = json.load(f)
            if previous != settings:
                changed = sorted(k for k in set(previous) | set(settings)
                                 if previous.get(k) != settings.get(k))
                raise ValueError("%s holds a previous run with other settings (%s); pass "
                                 "--overwrite to start afresh, or the same settings to resume"
                                 % (out, ", ".join(changed)))
            say("resuming the run in %s" % out)
        elif os.path.isdir(out) and os.listdir(out) and not overwrite:
            raise ValueError("%s is not empty and holds no bort reproduce run; pass --overwrite "
                             "to replace it" % out)
        elif overwrite and os.path.isdir(out):
            shutil.rmtree(out)
        os.makedirs(out, exist_ok=True)
        self.write(path, settings)

    def dir(self, stage: str) -> str:
        path = os.path.join(self.out, stage)
        os.makedirs(path, exist_ok=True)
        return path

    def done(self, stage: str):
        path = os.path.join(self.out, stage, "done.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        return None

    def finish(self, stage: str, result: Dict) -> Dict:
        self.write(os.path.join(self.dir(stage), "done.json"), result)
        return result

    @staticmethod
    def write(path: str, data) -> None:
        write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def stage(run: Run, name: str, body, *args):
    """Run `body(*args)` unless the stage finished before; its dict result is the stage's
    record."""
    previous = run.done(name)
    if previous is not None:
        say("stage %s: done before, skipped" % name)
        return previous
    say("stage %s" % name)
    tic = time.time()
    result = body(*args)
    result["seconds"] = round(time.time() - tic, 1)
    return run.finish(name, result)


def command(program: str, *args, check: bool = True) -> int:
    """Run one public command line (`program` is "bort" or "python -m parity") in this
    process, printed first; with `check`, a failure stops the run."""
    argv = [str(a) for a in args]
    say("$ %s %s" % (program, " ".join(argv)))
    code = importlib.import_module(PROGRAMS[program]).main(argv)
    if check and code:
        raise RuntimeError("`%s %s` failed with exit code %d" % (program, " ".join(argv), code))
    return code


def bort(*args) -> None:
    """Run one public `bort` command; a failure stops the run."""
    command("bort", *args)


def parity(*args, check: bool = True) -> int:
    """Run one `python -m parity` command; with `check`, a failure stops the run."""
    return command("python -m parity", *args, check=check)


def framework_stages(frameworks: List[str]) -> List[str]:
    """The per-framework stage names, e.g. `extract-gluon`, framework by framework."""
    return ["%s-%s" % (name, fw) for fw in frameworks for name in FRAMEWORK_STAGES]


def _framework_worker(out: str, fw: str, body, args: tuple, log: str, threads: int) -> None:
    """A spawned process: `body(Run(out), fw, *args)` on `threads` threads, its output into
    `log`."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    with open(log, "a", buffering=1) as f:
        os.dup2(f.fileno(), 1)          # C-level output (MXNet, torch) too
        os.dup2(f.fileno(), 2)
        sys.stdout = sys.stderr = f
        body(Run(out), fw, *args)


def run_side_by_side(run: Run, frameworks: List[str], body, *args) -> Dict:
    """`body(run, framework, *args)`, each framework's stages, in its own process at once;
    reports each stage as it ends. The caller reads the records back from the stage markers."""
    ctx = multiprocessing.get_context("spawn")     # a fresh interpreter: threads set first
    threads = max(1, (os.cpu_count() or 1) // len(frameworks))
    procs = {}
    for fw in frameworks:
        log = os.path.join(run.out, fw + ".log")
        procs[fw] = ctx.Process(target=_framework_worker, name="reproduce-" + fw,
                                args=(run.out, fw, body, args, log, threads))
    say("%s side by side, %d thread%s each (output in %s; --sequential runs them one after "
        "the other)" % (" and ".join(frameworks), threads, "" if threads == 1 else "s",
                        ", ".join(os.path.join(run.out, fw + ".log") for fw in frameworks)))
    reported = {key for key in framework_stages(frameworks) if run.done(key) is not None}
    try:
        for proc in procs.values():
            proc.start()
        while True:
            alive = [proc.is_alive() for proc in procs.values()]
            for key in framework_stages(frameworks):
                done = run.done(key) if key not in reported else None
                if done is not None:
                    reported.add(key)
                    say("stage %s: done in %.1fs" % (key, done["seconds"]))
            if not any(alive):
                break
            time.sleep(1.0)
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()
            proc.join()
    failed = [fw for fw, proc in procs.items() if proc.exitcode != 0 or any(
        run.done(key) is None for key in framework_stages([fw]))]
    if failed:
        raise RuntimeError("the %s stages failed; see %s" % (
            " and ".join(failed), ", ".join(os.path.join(run.out, fw + ".log") for fw in failed)))
    return {"note": "the per-framework stages ran at once; their seconds overlap"}
