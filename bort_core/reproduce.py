"""`bort reproduce`: the 2020 Bort pipeline end to end, in miniature, in one or both frameworks.

Stages (each writes `OUT/<stage>/done.json` last, so an interrupted run resumes where it stopped):
  data        masked-LM shards from the corpus, every tenth document held out for evaluation
  teacher     the preset's teacher checkpoint (the demo's ships with the package), or one
              pretrained here (teacherless MLM) by the first framework (`--retrain-teacher`);
              its held-out MLM loss and accuracy as each framework evaluates it
  extract     OSE/FPTAS over the search space, candidates distilled from the teacher
  pretrain    distillation pretraining of the extracted architecture (held-out loss before/after)
  scratch     the ablation: the same architecture, initial weights, batches and steps without
              the teacher (plain MLM)
  finetune    per task: plain fine-tuning; Agora's reference (demo: the student fine-tuned on a
              labelled pool it never sees); Agora; on the demo tasks, every model's score on
              the labelled held-out split
  parity      gluon vs torch: training steps, extraction rankings, pretrained losses, layer taps
Then summary.md, summary.json and plots (Pareto front, loss curves, per-layer parity error).
Extraction, pretraining and fine-tuning run once per framework (`OUT/<stage>-<framework>/`);
with both frameworks on a machine of two or more cores the two run side by side, one process
each with half the cores (output in `OUT/<framework>.log`), unless `--sequential`.
Every command a stage runs is a public `bort` or `python -m parity` command, printed first.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
from typing import Dict, List

from bort_core.configs import get_config
from bort_core.io import write_text

DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "demo")

PRESETS = {
    "demo": {
        "corpus": [os.path.join(DEMO_DIR, "corpus.txt")],
        "vocab": None,                       # the embedded demo vocabulary
        # 64-token sequences: a 4-layer, 128-unit teacher leaves the unigram plateau (held-out
        # MLM accuracy 0.044) sooner than with 128 (0.106 against 0.079 after 450-600 steps)
        "max_seq_length": 64,
        "max_predictions": 10,
        # the training documents masked 8 ways: with one masking the teacher memorises the
        # masked words (train accuracy 0.26, held-out 0.12 and falling after 2000 steps)
        "dupe_factor": 8,
        "teacher_config": "roberta_demo",
        # trained once by scripts/make_demo_teacher.py with the teacher_* recipe below (seed 0)
        # and shipped; --retrain-teacher trains it in the run instead
        "teacher_checkpoint": os.path.join(DEMO_DIR, "teacher.params"),
        # BERTAdam at lr 1e-3 with 10% warm-up and no dropout (the teacher underfits: train and
        # held-out accuracy stay close): held-out MLM accuracy 0.146 after 1500 steps, 0.180
        # after 2000, 0.236 after 4000 (2000 steps with 20% warm-up and dropout 0.1: 0.141)
        "teacher_steps": 4000,
        "teacher_lr": 1e-3,
        "teacher_warmup_ratio": 0.1,
        "teacher_dropout": 0.0,
        "teacher_tokens_per_batch": 2048,
        "search_space": "demo",
        "epsilon": 12.0,                     # 4 candidates of the 48 members
        "extract_steps": 200,
        "extract_batch_size": 32,
        # the students (extraction candidates, distilled and scratch): BERTAdam at lr 2e-3 with
        # 1% warm-up stays on the unigram plateau; at 1e-3 with 30% warm-up a 2-layer, 64-unit
        # student leaves it within 400 steps
        "pretrain_steps": 400,
        "lr": 1e-3,
        "warmup_ratio": 0.3,
        "tokens_per_batch": 2048,
        # distillation temperature: at the release's 2 the distilled student's held-out MLM loss
        # trails scratch's after 400 steps (6.611 against 6.557); at 1 it leads (6.516 at 300)
        "temperature": 1.0,
        "tasks": ["demo-pair", "demo-single", "demo-regression"],
        "data_dir": None,                    # the embedded demo tasks
        # the demo tasks' train splits are small (500 examples): 6 epochs with a short warm-up
        # get the student off its constant prediction; it learns nothing at the release's lr
        # 5e-5 and weight decay 110 (decoupled decay lr * 110 per step erases it)
        "finetune_epochs": 6,
        "finetune_lr": 1e-3,
        "finetune_weight_decay": 0.01,
        "finetune_warmup_ratio": 0.1,
        # Agora's reference: "pool", the pretrained student fine-tuned (plain recipe) on a
        # labelled pool 4x the train split that the student never sees; "plain", the student's
        # own plain model (no stronger than the student)
        "agora_reference": "pool",
        # the plain run's settings are among the sets (with --seed), so Agora's round 1 holds
        # the plain model and its dev score is at least plain's
        "agora_grid": {"lr": [5e-4, 1e-3, 2e-3], "weight_decay": [0.01]},
        "agora_epochs": 6,
        "agora_rounds": 2,
    },
    "paper": {
        "corpus": None, "vocab": None, "max_seq_length": 512, "max_predictions": 80,
        "dupe_factor": 1,
        "teacher_config": "roberta_24_1024_16", "teacher_checkpoint": None, "teacher_steps": 0,
        "teacher_lr": 1e-4, "teacher_warmup_ratio": 0.01, "teacher_dropout": None,
        "teacher_tokens_per_batch": 1024,
        "search_space": "bort", "epsilon": 1.0, "extract_steps": 300, "extract_batch_size": 8,
        "pretrain_steps": 2000000, "lr": 1e-4, "warmup_ratio": 0.01, "tokens_per_batch": 1024,
        "temperature": 2.0,
        "tasks": ["mrpc", "rte", "sst-2", "cola", "sts-b", "qnli", "qqp", "mnli", "wnli"],
        "data_dir": None, "finetune_epochs": 3, "finetune_lr": 5e-5, "finetune_weight_decay": 110.0,
        "finetune_warmup_ratio": 0.45, "agora_reference": "plain",
        "agora_grid": "release", "agora_epochs": 3,
        "agora_rounds": None,
    },
}

# What --preset paper needs, where it is looked for, and where to get it.
PAPER_FILES = [
    ("teacher", "roberta_24_1024_16.params",
     "RoBERTa-large in GluonNLP's .params format: the model zoo's roberta_24_1024_16 "
     "(openwebtext_ccnews_stories_books_cased) file, as GluonNLP 0.8-0.10 saves it"),
    ("vocab", "roberta_bpe/encoder.json",
     "GPT-2/RoBERTa byte-level BPE vocabulary (fairseq's gpt2_bpe/encoder.json)"),
    ("vocab", "roberta_bpe/vocab.bpe", "GPT-2/RoBERTa BPE merges (fairseq's gpt2_bpe/vocab.bpe)"),
    ("vocab", "roberta_bpe/dict.txt", "fairseq dictionary of RoBERTa (roberta.large/dict.txt)"),
    ("corpus", "corpus/*.txt",
     "pretraining text, one sentence per line, blank line between documents (e.g. Wikipedia "
     "+ BookCorpus as the 2020 run used)"),
    ("glue", "glue/MRPC/train.tsv", "GLUE data (gluebenchmark.com/tasks; one folder per task)"),
]


def _say(msg: str) -> None:
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
            _say("resuming the run in %s" % out)
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


def bort(*args) -> None:
    """Run one public `bort` command in this process; a failure stops the run."""
    from bort_core.cli import main

    argv = [str(a) for a in args]
    _say("$ bort " + " ".join(argv))
    code = main(argv)
    if code:
        raise RuntimeError("`bort %s` failed with exit code %d" % (" ".join(argv), code))


def stage(run: Run, name: str, body, *args):
    """Run `body(*args)` unless the stage finished before; its dict result is the stage's
    record."""
    previous = run.done(name)
    if previous is not None:
        _say("stage %s: done before, skipped" % name)
        return previous
    _say("stage %s" % name)
    tic = time.time()
    result = body(*args)
    result["seconds"] = round(time.time() - tic, 1)
    return run.finish(name, result)


# ------------------------------------------------------------------------------------ stages

def split_corpus(files: List[str], out: str, every: int = 10) -> Dict[str, str]:
    """Stream the corpus into train.txt and eval.txt: every `every`-th document (documents are
    separated by blank lines) is held out for evaluation."""
    import glob

    paths = {"train": os.path.join(out, "train.txt"), "eval": os.path.join(out, "eval.txt")}
    with open(paths["train"], "w") as train, open(paths["eval"], "w") as held:
        doc = 0
        for path in sorted(p for pattern in files for p in glob.glob(pattern)):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    (held if doc % every == every - 1 else train).write(line)
                    if not line.strip():
                        doc += 1
            train.write("\n")
            held.write("\n")
            doc += 1
    return paths


def make_data(run: Run, p: Dict, seed: int) -> Dict:
    out = run.dir("data")
    text = split_corpus(p["corpus"], out)
    common = ["--max-seq-length", p["max_seq_length"], "--max-predictions-per-seq",
              p["max_predictions"], "--seed", seed, "--quiet"]
    if p["vocab"]:
        common += ["--vocab", p["vocab"]]
    for split, outputs, dupe in (("train", 2, p["dupe_factor"]), ("eval", 1, 1)):
        bort("create-pretraining-data", "--input", text[split], "--output-dir",
             os.path.join(out, split), "--num-outputs", outputs, "--dupe-factor", dupe, *common)
    return {"train": os.path.join(out, "train", "*.npz"), "eval": os.path.join(out, "eval", "*.npz")}


def _evaluate(framework: str, config, params_path: str, eval_glob: str, teacher=None) -> Dict:
    """MLM (and distillation) eval metrics of a checkpoint on the held-out shards."""
    from bort_core.backend import get_backend
    from bort_core.extraction import eval_batches, load_data

    backend = get_backend(framework)
    model = backend.load(config, params_path)
    teacher_model = backend.load(teacher[0], teacher[1]) if teacher else None
    data = load_data([eval_glob], config, flag="eval shards")
    return backend.evaluate_mlm(model, eval_batches(data), teacher=teacher_model)


def train_recipe(p: Dict, prefix: str = "") -> Dict:
    """`bort pretrain`'s training flags from the preset: the teacher's (`prefix` "teacher_") or
    the student's (distilled and scratch alike; the temperature matters only to the first)."""
    if prefix:
        recipe = {"num-steps": p[prefix + "steps"], "lr": p[prefix + "lr"],
                  "warmup-ratio": p[prefix + "warmup_ratio"],
                  "tokens-per-batch": p[prefix + "tokens_per_batch"]}
        if p.get(prefix + "dropout") is not None:
            recipe["dropout"] = p[prefix + "dropout"]
        return recipe
    return {"num-steps": p["pretrain_steps"], "lr": p["lr"], "warmup-ratio": p["warmup_ratio"],
            "tokens-per-batch": p["tokens_per_batch"], "temperature": p["temperature"]}


def _pretrain(stage_dir: str, framework: str, config, data: Dict, recipe: Dict, seed: int,
              teacher=None) -> Dict:
    """`bort pretrain` with `recipe`'s flags from seeded initial weights (the same file in every
    framework), evaluated before and after on the held-out shards."""
    from bort_core import checkpoint as ckpt
    from bort_core.pretrain import complete_steps, initial_params

    init = os.path.join(stage_dir, "init.params")
    if not os.path.exists(init):
        ckpt.save_params(init, initial_params(config, seed), store_tied_decoder=True)
    config_path = os.path.join(stage_dir, "config.json")
    config.to_json(config_path)
    ckpt_dir = os.path.join(stage_dir, "ckpt")
    steps = recipe["num-steps"]
    args = ["pretrain", "--framework", framework, "--student", config_path, "--init", init,
            "--data", data["train"], "--eval-data", data["eval"], "--ckpt-dir", ckpt_dir,
            "--seed", seed, "--ckpt-interval", max(1, steps // 4),
            "--log-interval", max(1, steps // 10),
            "--no-tensorboard", "--quiet"]
    for flag, value in recipe.items():
        args += ["--" + flag, value]
    if teacher:
        args += ["--teacher", teacher[1], "--teacher-config", teacher[0].name]
    before = _evaluate(framework, config, init, data["eval"], teacher)
    shutil.rmtree(ckpt_dir, ignore_errors=True)     # an unfinished stage starts afresh
    bort(*args)
    final = os.path.join(ckpt_dir, "%07d.params" % complete_steps(ckpt_dir)[-1])
    after = _evaluate(framework, config, final, data["eval"], teacher)
    return {"checkpoint": final, "config": config_path, "eval_before": before,
            "eval_after": after, "log": os.path.join(ckpt_dir, "log.jsonl")}


def teacher_stage(run: Run, frameworks: List[str], p: Dict, data: Dict, seed: int) -> Dict:
    """The one teacher every framework distils from, as every 2020 student distilled from one
    RoBERTa: the preset's checkpoint, or (none given) one pretrained here (teacherless MLM) by
    the first framework; then evaluated on the held-out shards by each framework."""
    config = get_config(p["teacher_config"])
    if p["teacher_checkpoint"]:
        result = {"checkpoint": p["teacher_checkpoint"], "trained": False}
    else:
        result = _pretrain(run.dir("teacher"), frameworks[0], config, data,
                           train_recipe(p, "teacher_"), seed)
        result.update(trained=True, framework=frameworks[0])
    result["config_name"] = config.name
    result["heldout_by_framework"] = {fw: _evaluate(fw, config, result["checkpoint"],
                                                    data["eval"]) for fw in frameworks}
    result["heldout"] = result["heldout_by_framework"][frameworks[0]]
    return result


def extract(run: Run, fw: str, p: Dict, data: Dict, teacher: Dict, seed: int) -> Dict:
    """`bort extract` with the students' learning rate, warm-up and temperature; the record
    adds every member of the space by ascending parameter count (the FPTAS's order)."""
    from bort_core.extraction import make_plan, parse_search_space

    out = run.dir("extract-" + fw)
    theta = os.path.join(out, "theta.json")
    Run.write(theta, [{"lr": p["lr"], "warmup_ratio": p["warmup_ratio"],
                       "batch_size": p["extract_batch_size"], "temperature": p["temperature"]}])
    bort("extract", "--framework", fw, "--search-space", p["search_space"], "--epsilon",
         p["epsilon"], "--steps", p["extract_steps"], "--theta", theta, "--data", data["train"],
         "--eval-data", data["eval"], "--teacher", teacher["checkpoint"], "--teacher-config",
         teacher["config_name"], "--error", "kd", "--seed", seed, "--out", out, "--resume",
         "--quiet")
    with open(os.path.join(out, "ranking.json")) as f:
        ranking = json.load(f)["ranking"]
    plan = make_plan(parse_search_space(p["search_space"]), p["epsilon"])
    return {"best_config": os.path.join(out, "best_config.json"), "ranking": ranking,
            "members_by_params": [row["name"] for row in plan.members],
            "pareto_png": os.path.join(out, "pareto.png")}


def finetune(run: Run, fw: str, p: Dict, checkpoint: str, config_path: str, seed: int) -> Dict:
    """Per task: plain fine-tuning; Agora's reference (`agora_reference`: "pool", the student
    fine-tuned alike on the demo task's reference pool, or "plain", the plain model); Agora.
    On the embedded demo tasks every model is also scored on the labelled held-out split,
    regenerated from the embedded corpus, which no run trains or selects on."""
    out = run.dir("finetune-" + fw)
    grid = p["agora_grid"]
    if isinstance(grid, dict):
        grid = os.path.join(out, "agora_grid.json")
        Run.write(grid, p["agora_grid"])
    rounds = ["--max-rounds", p["agora_rounds"]] if p["agora_rounds"] else []
    recipe = ["--epochs", p["finetune_epochs"], "--lr", p["finetune_lr"], "--weight-decay",
              p["finetune_weight_decay"], "--warmup-ratio", p["finetune_warmup_ratio"]]
    heldout = demo_task_copies(out) if _demo_tasks(p) else None
    if p["agora_reference"] == "pool" and heldout is None:
        raise ValueError("agora_reference 'pool' needs the embedded demo tasks")
    results = {}
    for task in p["tasks"]:
        base = ["--framework", fw, "--task", task, "--config", config_path, "--checkpoint",
                checkpoint, "--seed", seed, "--quiet", "--overwrite"]
        if p["vocab"]:
            base += ["--vocab", p["vocab"]]
        data = ["--data-dir", p["data_dir"]] if p["data_dir"] else []
        runs = {"plain": os.path.join(out, task, "plain")}
        bort("finetune", *base, *data, "--output-dir", runs["plain"], *recipe)
        if p["agora_reference"] == "pool":
            runs["reference"] = os.path.join(out, task, "reference")
            bort("finetune", *base, "--data-dir", heldout["pool"], "--output-dir",
                 runs["reference"], *recipe)
        else:
            runs["reference"] = runs["plain"]
        with open(os.path.join(runs["reference"], "result.json")) as f:
            reference = json.load(f)["model"]
        runs["agora"] = os.path.join(out, task, "agora")
        bort("agora", *base, *data, "--output-dir", runs["agora"], "--epochs", p["agora_epochs"],
             "--warmup-ratio", p["finetune_warmup_ratio"], "--reference-checkpoint", reference,
             "--reference-config", config_path, "--grid", grid, "--generator", "mlm,swap",
             *rounds)
        results[task] = {}
        for name, path in runs.items():
            with open(os.path.join(path, "result.json")) as f:
                result = json.load(f)
            results[task][name] = {"dev": result["dev"], "heldout": score_heldout(
                fw, task, config_path, result["model"], heldout["labelled"]) if heldout else None}
            if name == "agora":
                results[task][name].update(runs=result["runs"], rounds=result["rounds"])
    return {"tasks": results}


def _demo_tasks(p: Dict) -> bool:
    from bort_core.data.demo import DEMO_TASKS

    return not p["data_dir"] and set(p["tasks"]) <= set(DEMO_TASKS)


def demo_task_copies(out: str) -> Dict[str, str]:
    """The demo tasks regenerated from the embedded corpus under `out`: `pool` (train.tsv holds
    the reference's pool) and `labelled` (test.tsv holds the held-out split with its labels)."""
    from bort_core.data import demo
    from bort_core.data.pretraining import read_documents

    docs = list(read_documents(demo.CORPUS_PATH))
    dirs = {"pool": os.path.join(out, "tasks-pool"), "labelled": os.path.join(out, "tasks-labelled")}
    demo.make_demo_tasks(docs, dirs["pool"], pool=True)
    demo.make_demo_tasks(docs, dirs["labelled"], labelled_test=True)
    return dirs


def score_heldout(framework: str, task_name: str, config: str, model_path: str, data_dir: str,
                  max_len: int = 512) -> Dict[str, float]:
    """The task's metrics of a fine-tuned model on `data_dir`'s labelled test split (the dev
    layout), with the embedded demo vocabulary."""
    from bort_core import checkpoint as ckpt
    from bort_core import finetune as ft
    from bort_core.backend import get_backend
    from bort_core.data.tasks import featurize, get_task
    from bort_core.tokenizer import load_tokenizer

    task = get_task(task_name)
    head = ckpt.split_classifier(ckpt.load_params(model_path))[1]
    cfg = ft.resolve_config(config, model_path, ckpt.classifier_layout(head, model_path)[1])
    examples = task.read(task, "dev", task.path(data_dir, "test")).examples
    data = ft.TaskData("heldout", examples, featurize(examples, task, load_tokenizer(None),
                                                      min(max_len, cfg.max_length)))
    backend = get_backend(framework)
    model = backend.load(cfg, model_path, ft.num_outputs(task))
    return ft.score_split(backend, model, task, data, 64)["metrics"]


# ------------------------------------------------------------------------------------ parity

def parity_report(run: Run, records: Dict, seed: int) -> Dict:
    """gluon vs torch at each stage: the training engines step for step, the extraction
    rankings, the pretrained students' held-out losses, and one student run by both
    frameworks layer by layer."""
    from bort_core.extraction import compare_rankings

    out = run.dir("parity")
    report = {"train_steps": _train_steps(out, records["teacher"]["config_name"], seed)}
    ranking = compare_rankings(records["extract-gluon"]["ranking"],
                               records["extract-torch"]["ranking"])
    ranking["ok"] = bool(ranking["same_order"] and ranking["max_w_rel_diff"] <= 1e-3)
    report["extraction"] = ranking
    losses = {fw: _eval_loss(records["pretrain-" + fw]["eval_after"]) for fw in ("gluon", "torch")}
    rel = abs(losses["gluon"] - losses["torch"]) / abs(losses["torch"])
    report["pretrain_eval_loss"] = dict(losses, rel_diff=rel, tolerance=PRETRAIN_LOSS_TOLERANCE,
                                        ok=rel <= PRETRAIN_LOSS_TOLERANCE)
    student = records["pretrain-torch"]
    inputs = os.path.join(out, "inputs.npz")
    _parity_cli("inputs", "--out", inputs, "--config", student["config"])
    taps = {}
    for fw in ("gluon", "torch"):
        taps[fw] = os.path.join(out, "taps_%s.npz" % fw)
        _parity_cli("dump", "--framework", fw, "--checkpoint", student["checkpoint"], "--config",
                    student["config"], "--inputs", inputs, "--out", taps[fw])
    code = _parity_cli("compare", taps["gluon"], taps["torch"], "--json",
                       os.path.join(out, "taps.json"), check=False)
    with open(os.path.join(out, "taps.json")) as f:
        taps = {k: v for k, v in json.load(f).items() if k not in ("a", "b")}   # file paths
    report["student_taps"] = dict(taps, ok=code == 0)
    report["ok"] = all(v["ok"] for v in report.values())
    return report


# Both frameworks pretrain the same student from the same weights on the same batches; step for
# step they agree to 1e-5 (train_steps), and after the demo's 150 float32 Adam steps their
# held-out losses agree to this relative tolerance (measured: 4e-5).
PRETRAIN_LOSS_TOLERANCE = 1e-3


def _parity_cli(*args, check=True) -> int:
    from parity.__main__ import main

    argv = [str(a) for a in args]
    _say("$ python -m parity " + " ".join(argv))
    code = main(argv)
    if check and code:
        raise RuntimeError("`python -m parity %s` failed (%d)" % (" ".join(argv), code))
    return code


def _train_steps(out: str, config_name: str, seed: int) -> Dict:
    path = os.path.join(out, "train_steps.json")
    code = _parity_cli("train-steps", "--student", config_name, "--steps", 10, "--seed", seed,
                       "--json", path, check=False)
    with open(path) as f:
        return dict(json.load(f), ok=code == 0)


# ------------------------------------------------------------------------------------ summary

def summarize(run: Run, records: Dict, frameworks: List[str], preset: str) -> Dict:
    """summary.json: `results` (a function of the seed alone) and `seconds` per stage."""
    results = {"teacher": {k: records["teacher"][k] for k in (
        "config_name", "trained", "heldout", "heldout_by_framework", "eval_before", "eval_after")
        if k in records["teacher"]}}
    for fw in frameworks:
        best = get_config(records["extract-" + fw]["best_config"])
        pre = records["pretrain-" + fw]
        results[fw] = {
            "extracted": {"name": best.name, "D": best.num_layers, "A": best.num_heads,
                          "H": best.units, "I": best.hidden_size},
            "extraction": {"members_by_params": records["extract-" + fw]["members_by_params"]},
            "pretrain_eval_before": pre["eval_before"], "pretrain_eval_after": pre["eval_after"],
            "scratch_eval_after": records["scratch-" + fw]["eval_after"],
            "finetune": dict(sorted(records["finetune-" + fw]["tasks"].items()))}
    if "parity" in records:
        results["parity"] = {k: v for k, v in records["parity"].items() if k != "seconds"}
    summary = {"preset": preset, "frameworks": frameworks, "results": results,
               "seconds": {name: r.get("seconds") for name, r in records.items()}}
    if len(frameworks) == 2:
        summary["stage_speed"] = stage_speed(summary["seconds"], frameworks)
    overlapped = set(framework_stages(frameworks)) if "side-by-side" in records else set()
    summary["seconds"]["total"] = round(sum(v for name, v in summary["seconds"].items()
                                            if name not in overlapped), 1)
    Run.write(os.path.join(run.out, "summary.json"), summary)
    with open(os.path.join(run.out, "summary.md"), "w") as f:
        f.write(_markdown(summary))
    _plots(run, records, frameworks)
    return summary


def stage_speed(seconds: Dict, frameworks: List[str]) -> Dict:
    """How much longer the first framework took than the second on each of its stages and on
    all of them (wall seconds; 1.0 = matching speed), from the stages' recorded times. Only
    stages both frameworks ran in this invocation count (a resumed stage has no time)."""
    a, b = frameworks
    ratios, totals = {}, [0.0, 0.0]
    for name in FRAMEWORK_STAGES:
        ta, tb = seconds.get("%s-%s" % (name, a)), seconds.get("%s-%s" % (name, b))
        if ta and tb:
            ratios[name] = round(ta / tb, 2)
            totals[0] += ta
            totals[1] += tb
    if ratios:
        ratios["all"] = round(totals[0] / totals[1], 2)
    return {"ratio": "%s/%s" % (a, b), "by_stage": ratios}


def _fmt(x) -> str:
    return "%.4f" % x if isinstance(x, float) else str(x)


def _verdict(ok) -> str:
    return "PASS" if ok else "FAIL"


# A teacher "learned" when its held-out MLM accuracy reaches this (predicting the most frequent
# token everywhere, the unigram plateau, scores 0.05 on the demo's held-out shards).
TEACHER_MIN_ACC = 0.20


def _findings(s: Dict) -> List[str]:
    """The paper's claims in miniature, each with its numbers and a PASS/FAIL verdict."""
    r = s["results"]
    accs = r["teacher"]["heldout_by_framework"]
    lines = ["## findings", "",
             "- teacher learned (held-out MLM accuracy >= %.2f): %s: %s" % (
                 TEACHER_MIN_ACC, ", ".join("%s %.4f" % (fw, m["mlm_acc"]) for fw, m in
                                            accs.items()),
                 _verdict(all(m["mlm_acc"] >= TEACHER_MIN_ACC for m in accs.values())))]
    for fw in s["frameworks"]:
        distilled, scratch = r[fw]["pretrain_eval_after"], r[fw]["scratch_eval_after"]
        lines.append("- %s: distillation beats scratch (held-out MLM loss after the same steps "
                     "from the same weights): distilled %.4f vs scratch %.4f (accuracy %.4f vs "
                     "%.4f): %s" % (fw, distilled["mlm_loss"], scratch["mlm_loss"],
                                    distilled["mlm_acc"], scratch["mlm_acc"],
                                    _verdict(distilled["mlm_loss"] < scratch["mlm_loss"])))
    for fw in s["frameworks"]:
        members, name = r[fw]["extraction"]["members_by_params"], r[fw]["extracted"]["name"]
        rank = members.index(name) + 1
        lines.append("- %s: extraction interior: %s is member %d of %d by parameter count "
                     "(smallest %s, largest %s): %s" % (fw, name, rank, len(members), members[0],
                                                        members[-1],
                                                        _verdict(1 < rank < len(members))))
    return lines + [""]


# Plain fine-tuning "learns" a demo task when its held-out score reaches this (chance: accuracy
# 0.5 on the balanced binary tasks, Pearson 0 on the regression).
TASK_MIN_SCORE = {"accuracy": 0.60, "pearson": 0.30}


def _finetune_findings(s: Dict) -> List[str]:
    """Fine-tuning's findings per framework, on the tasks scored on a labelled held-out split:
    each task learned, the reference above the student, Agora's held-out gain."""
    from bort_core.data.tasks import get_task
    from bort_core.finetune import selection_score

    lines = []
    for fw in s["frameworks"]:
        tasks = {name: f for name, f in s["results"][fw]["finetune"].items() if f["plain"]["heldout"]}
        if not tasks:
            continue
        key = {name: get_task(name).metrics[0] for name in tasks}
        plain = {n: f["plain"]["heldout"][key[n]] for n, f in tasks.items()}
        lines.append("- %s: fine-tuning learns each task (plain, held-out: %s): %s: %s" % (
            fw, ", ".join("%s >= %.2f" % kv for kv in sorted(TASK_MIN_SCORE.items())),
            ", ".join("%s %s %.4f" % (n, key[n], v) for n, v in plain.items()),
            _verdict(all(v >= TASK_MIN_SCORE.get(key[n], 0.0) for n, v in plain.items()))))
        dev = {n: [selection_score(get_task(n), list(f[run]["dev"].values()))
                   for run in ("reference", "plain")] for n, f in tasks.items()}
        lines.append("- %s: Agora's reference above the plain student (dev): %s: %s" % (
            fw, ", ".join("%s %.4f vs %.4f" % (n, r, p) for n, (r, p) in dev.items()),
            _verdict(all(r > p for r, p in dev.values()))))
        gain = {n: f["agora"]["heldout"][key[n]] - plain[n] for n, f in tasks.items()}
        mean = sum(gain.values()) / len(gain)
        lines.append("- %s: Agora's held-out gain over plain (mean over the tasks): %+.4f (%s): %s"
                     % (fw, mean, ", ".join("%s %+.4f" % kv for kv in gain.items()),
                        _verdict(mean > 0)))
    return lines + [""] if lines else []


def _markdown(s: Dict) -> str:
    r = s["results"]
    t = r["teacher"]
    trained = ("trained here: held-out MLM loss %s -> %s" % (
        _fmt(t["eval_before"]["mlm_loss"]), _fmt(t["eval_after"]["mlm_loss"]))
        if t["trained"] else "the preset's checkpoint")
    lines = ["# bort reproduce (%s preset, %s)" % (s["preset"], " + ".join(s["frameworks"])), "",
             "Teacher %s (%s); held-out MLM loss %s, accuracy %s" % (
                 t["config_name"], trained, _fmt(t["heldout"]["mlm_loss"]),
                 _fmt(t["heldout"]["mlm_acc"])), ""] + _findings(s) + _finetune_findings(s)
    for fw in s["frameworks"]:
        st, e = r[fw], r[fw]["extracted"]
        lines += ["## %s" % fw, "",
                  "- extracted architecture: %s (D=%d, A=%d, H=%d, I=%d)"
                  % (e["name"], e["D"], e["A"], e["H"], e["I"]),
                  "- distillation pretraining, held-out: distillation loss %s; MLM loss %s; MLM "
                  "accuracy %s" % tuple(_change(st, k) for k in ("kd_loss", "mlm_loss", "mlm_acc")),
                  "- the same without the teacher (scratch), held-out: MLM loss %s -> %s; MLM "
                  "accuracy %s -> %s" % (
                      _fmt(st["pretrain_eval_before"]["mlm_loss"]),
                      _fmt(st["scratch_eval_after"]["mlm_loss"]),
                      _fmt(st["pretrain_eval_before"]["mlm_acc"]),
                      _fmt(st["scratch_eval_after"]["mlm_acc"])),
                  "", "| task | plain dev | plain held-out | reference dev | Agora dev | Agora "
                  "held-out | Agora runs |", "|---|---|---|---|---|---|---|"]
        for task, f in st["finetune"].items():
            lines.append("| %s | %s | %s | %s | %s | %s | %d in %d rounds |" % (
                task, _metrics(f["plain"]["dev"]), _metrics({"": f["plain"]["heldout"] or {}}),
                _metrics(f["reference"]["dev"]), _metrics(f["agora"]["dev"]),
                _metrics({"": f["agora"]["heldout"] or {}}), f["agora"]["runs"],
                f["agora"]["rounds"]))
        lines.append("")
    if "parity" in r:
        par = r["parity"]
        steps = par["train_steps"]
        lines += ["## parity: gluon vs torch (%s)" % _verdict(par["ok"]), "",
                  "- training engines, %d steps from the same weights: %s" % (
                      steps["steps"], _verdict(steps["ok"])),
                  "- extraction ranking: %s (Spearman %.3f, max W rel diff %.2e)" % (
                      _verdict(par["extraction"]["ok"]), par["extraction"]["spearman"],
                      par["extraction"]["max_w_rel_diff"]),
                  "- pretrained students' held-out loss: %s (rel diff %.2e, tolerance %.0e)" % (
                      _verdict(par["pretrain_eval_loss"]["ok"]),
                      par["pretrain_eval_loss"]["rel_diff"], PRETRAIN_LOSS_TOLERANCE),
                  "- one student in both frameworks, layer taps: %s" % _verdict(
                      par["student_taps"]["ok"])]
        speed = s.get("stage_speed", {}).get("by_stage")
        if speed:
            how = "side by side, the same threads each" if "side-by-side" in s["seconds"] \
                else "one after the other"
            lines.append("- stage speed, %s wall time (%s): %s" % (
                s["stage_speed"]["ratio"], how, ", ".join("%s %.2fx" % kv for kv in speed.items())))
        lines.append("")
    lines += ["Stage wall times (s): " + ", ".join("%s %s" % kv for kv in s["seconds"].items())
              + (" (the framework stages overlap: side-by-side is their wall time)"
                 if "side-by-side" in s["seconds"] else ""), ""]
    return "\n".join(lines)


def _change(stage_results: Dict, key: str) -> str:
    return "%s -> %s" % (_fmt(stage_results["pretrain_eval_before"].get(key)),
                         _fmt(stage_results["pretrain_eval_after"].get(key)))


def _eval_loss(metrics: Dict):
    return metrics.get("kd_loss", metrics.get("mlm_loss"))


def _metrics(dev: Dict) -> str:
    parts = []
    for metrics in dev.values():
        scores = metrics.get("metrics", metrics)
        parts.append(", ".join("%s %s" % (k, _fmt(v)) for k, v in sorted(scores.items())
                               if isinstance(v, (int, float))))
    return "; ".join(parts)


def _plots(run: Run, records: Dict, frameworks: List[str]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _say("matplotlib is not installed (pip install 'bort[plot]'): no plots")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ["teacher"] + ["%s-%s" % (kind, fw) for fw in frameworks
                               for kind in ("pretrain", "scratch")]:
        log = records[name].get("log")
        if not log or not os.path.exists(log):
            continue
        with open(log) as f:
            rows = [json.loads(line) for line in f]
        for phase, style in (("train", "-"), ("eval", "o--")):
            points = [(row["step"], row["mlm_loss"]) for row in rows
                      if row["phase"] == phase and "mlm_loss" in row]
            if points:
                ax.plot(*zip(*points), style, label="%s (%s)" % (name, phase))
    ax.set_xlabel("step")
    ax.set_ylabel("MLM loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(run.out, "loss_curves.png"))
    plt.close(fig)
    if "parity" in records:
        taps = [t for t in records["parity"]["student_taps"]["taps"] if "max_abs" in t]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar([t["tap"] for t in taps], [t["max_abs"] for t in taps])
        ax.axhline(1e-5, color="r", linestyle="--", label="hidden-state tolerance")
        ax.set_yscale("log")
        ax.set_ylabel("max |gluon - torch|")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(run.out, "parity_layers.png"))
        plt.close(fig)
    for fw in frameworks:
        png = records["extract-" + fw].get("pareto_png")
        if png and os.path.exists(png):
            shutil.copyfile(png, os.path.join(run.out, "pareto_%s.png" % fw))


# ------------------------------------------------------------------------------------ driver

def check_paper_files(files_dir: str) -> None:
    import glob

    missing = []
    for _, rel, where in PAPER_FILES:
        path = os.path.join(files_dir, rel)
        if not glob.glob(path):
            missing.append("  %s\n      expected at %s\n      get it from: %s" % (rel, path, where))
    if missing:
        raise ValueError("--preset paper needs real files under --files-dir %s; missing:\n%s"
                         % (files_dir, "\n".join(missing)))


def run_framework(run: Run, fw: str, p: Dict, data: Dict, seed: int, records: Dict) -> None:
    """Extraction, distillation pretraining, its no-teacher ablation and fine-tuning in one
    framework."""
    teacher = records["teacher"]
    records["extract-" + fw] = stage(run, "extract-" + fw, extract, run, fw, p, data, teacher,
                                     seed)
    best = get_config(records["extract-" + fw]["best_config"])
    pre = records["pretrain-" + fw] = stage(
        run, "pretrain-" + fw, _pretrain, run.dir("pretrain-" + fw), fw, best, data,
        train_recipe(p), seed, (get_config(teacher["config_name"]), teacher["checkpoint"]))
    records["scratch-" + fw] = stage(run, "scratch-" + fw, _pretrain, run.dir("scratch-" + fw),
                                     fw, best, data, train_recipe(p), seed)
    records["finetune-" + fw] = stage(run, "finetune-" + fw, finetune, run, fw, p,
                                      pre["checkpoint"], pre["config"], seed)


FRAMEWORK_STAGES = ("extract", "pretrain", "scratch", "finetune")


def framework_stages(frameworks: List[str]) -> List[str]:
    """The per-framework stage names, e.g. `extract-gluon`, framework by framework."""
    return ["%s-%s" % (name, fw) for fw in frameworks for name in FRAMEWORK_STAGES]


def _framework_worker(out: str, fw: str, p: Dict, data: Dict, seed: int, records: Dict,
                      log: str, threads: int) -> None:
    """A spawned process: one framework's stages on `threads` threads, its output into `log`."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    with open(log, "a", buffering=1) as f:
        os.dup2(f.fileno(), 1)          # C-level output (MXNet, torch) too
        os.dup2(f.fileno(), 2)
        sys.stdout = sys.stderr = f
        run_framework(Run(out), fw, p, data, seed, dict(records))


def run_side_by_side(run: Run, frameworks: List[str], p: Dict, data: Dict, seed: int,
                     records: Dict) -> Dict:
    """Each framework's stages in its own process at once; reports each stage as it ends.
    The caller reads the records back from the stage markers."""
    ctx = multiprocessing.get_context("spawn")     # a fresh interpreter: threads set first
    threads = max(1, (os.cpu_count() or 1) // len(frameworks))
    procs = {}
    for fw in frameworks:
        log = os.path.join(run.out, fw + ".log")
        procs[fw] = ctx.Process(target=_framework_worker, name="reproduce-" + fw,
                                args=(run.out, fw, p, data, seed, records, log, threads))
    _say("%s side by side, %d thread%s each (output in %s; --sequential runs them one after "
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
                    _say("stage %s: done in %.1fs" % (key, done["seconds"]))
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


def reproduce(frameworks: List[str], preset: str, out: str, seed: int, overwrite: bool,
              files_dir: str = None, sequential: bool = False,
              retrain_teacher: bool = False) -> Dict:
    p = dict(PRESETS[preset])
    if retrain_teacher:
        if not p["teacher_steps"]:
            raise ValueError("--retrain-teacher: the %s preset has no teacher recipe" % preset)
        p["teacher_checkpoint"] = None
    if preset == "paper":
        files_dir = files_dir or "real_files"
        check_paper_files(files_dir)
        p.update(teacher_checkpoint=os.path.join(files_dir, "roberta_24_1024_16.params"),
                 vocab=os.path.join(files_dir, "roberta_bpe"),
                 corpus=[os.path.join(files_dir, "corpus", "*.txt")],
                 data_dir=os.path.join(files_dir, "glue"))
    from bort_core.backend import load_framework
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
                                        p, data, seed, records)
        records.update({key: run.done(key) for key in framework_stages(frameworks)})
    else:
        for fw in frameworks:
            run_framework(run, fw, p, data, seed, records)
    if len(frameworks) == 2:
        records["parity"] = stage(run, "parity", parity_report, run, records, seed)
    summary = summarize(run, records, frameworks, preset)
    sys.stdout.write(_markdown(summary))
    _say("done in %.0fs; summary: %s" % (time.time() - tic, os.path.join(out, "summary.md")))
    return summary


def register(sub):
    p = sub.add_parser("reproduce", help="the whole 2020 pipeline end to end (teacher, OSE "
                       "extraction, distillation pretraining, Agora fine-tuning, parity)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--framework", choices=("gluon", "torch", "both"), default="both",
                   help="which framework(s) run the pipeline (default both, with parity verdicts)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                   help="demo: the embedded corpus and demo tasks, minutes on a CPU (default); "
                   "paper: real-scale configuration from real files (--files-dir)")
    p.add_argument("--out", default="runs/reproduce", help="output directory (default runs/reproduce)")
    p.add_argument("--files-dir", help="--preset paper: where the real files are (default real_files/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="discard a previous run in --out")
    p.add_argument("--retrain-teacher", action="store_true", help="pretrain the teacher in the "
                   "run with the preset's teacher recipe instead of using the preset's checkpoint "
                   "(the demo's ships with the package: scripts/make_demo_teacher.py trained it)")
    p.add_argument("--sequential", action="store_true", help="with both frameworks, run them "
                   "one after the other with all cores each, output on the terminal (default: "
                   "side by side, half the cores each, when the machine has two or more)")
    p.set_defaults(run=run_command)


def run_command(args):
    frameworks = ["gluon", "torch"] if args.framework == "both" else [args.framework]
    reproduce(frameworks, args.preset, args.out, args.seed, args.overwrite, args.files_dir,
              args.sequential, args.retrain_teacher)
    return 0
