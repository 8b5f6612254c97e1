"""The stages' bodies: data, teacher, extract, pretrain (distilled and scratch), finetune, parity.
Each returns its record (a dict); every command it runs is a public `bort` or `python -m parity`
command (bort_core.reproduce.runner)."""
from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Dict, List

from bort_core import checkpoint as ckpt
from bort_core import extraction as ose
from bort_core import finetune as ft
from bort_core.arch import initial_params
from bort_core.backend import get_backend
from bort_core.configs import get_config
from bort_core.data import demo
from bort_core.data.pretraining import read_documents
from bort_core.data.tasks import featurize, get_task
from bort_core.extraction_plan import make_plan, parse_search_space
from bort_core.model_params import classifier_layout, split_classifier
from bort_core.reproduce.runner import Run, bort, parity
from bort_core.resume import complete_steps
from bort_core.tokenizer import load_tokenizer

# Both frameworks pretrain the same student from the same weights on the same batches; step for
# step they agree to 1e-5 (train_steps), and after the demo's 150 float32 Adam steps their
# held-out losses agree to this relative tolerance (measured: 4e-5).
PRETRAIN_LOSS_TOLERANCE = 1e-3


def split_corpus(files: List[str], out: str, every: int = 10) -> Dict[str, str]:
    """Stream the corpus into train.txt and eval.txt: every `every`-th document (documents are
    separated by blank lines) is held out for evaluation."""
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
        bort("create-pretraining-data", "--data", text[split], "--output-dir",
             os.path.join(out, split), "--num-outputs", outputs, "--dupe-factor", dupe, *common)
    return {"train": os.path.join(out, "train", "*.npz"), "eval": os.path.join(out, "eval", "*.npz")}


def evaluate(framework: str, config, params_path: str, eval_glob: str, teacher=None) -> Dict:
    """MLM (and distillation) eval metrics of a checkpoint on the held-out shards."""
    backend = get_backend(framework)
    model = backend.load(config, params_path)
    teacher_model = backend.load(teacher[0], teacher[1]) if teacher else None
    data = ose.load_data([eval_glob], config, flag="eval shards")
    return backend.evaluate_mlm(model, ose.eval_batches(data), teacher=teacher_model)


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


def pretrain(stage_dir: str, framework: str, config, data: Dict, recipe: Dict, seed: int,
             teacher=None) -> Dict:
    """`bort pretrain` with `recipe`'s flags from seeded initial weights (the same file in every
    framework), evaluated before and after on the held-out shards."""
    init = os.path.join(stage_dir, "init.params")
    if not os.path.exists(init):
        ckpt.save_params(init, initial_params(config, seed), store_tied_decoder=True)
    config_path = os.path.join(stage_dir, "config.json")
    config.to_json(config_path)
    ckpt_dir = os.path.join(stage_dir, "ckpt")
    steps = recipe["num-steps"]
    args = ["pretrain", "--framework", framework, "--student", config_path, "--init", init,
            "--data", data["train"], "--eval-data", data["eval"], "--output-dir", ckpt_dir,
            "--seed", seed, "--ckpt-interval", max(1, steps // 4),
            "--log-interval", max(1, steps // 10),
            "--no-tensorboard", "--quiet"]
    for flag, value in recipe.items():
        args += ["--" + flag, value]
    if teacher:
        args += ["--teacher", teacher[1], "--teacher-config", teacher[0].name]
    before = evaluate(framework, config, init, data["eval"], teacher)
    shutil.rmtree(ckpt_dir, ignore_errors=True)     # an unfinished stage starts afresh
    bort(*args)
    final = os.path.join(ckpt_dir, "%07d.params" % complete_steps(ckpt_dir)[-1])
    after = evaluate(framework, config, final, data["eval"], teacher)
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
        result = pretrain(run.dir("teacher"), frameworks[0], config, data,
                          train_recipe(p, "teacher_"), seed)
        result.update(trained=True, framework=frameworks[0])
    result["config_name"] = config.name
    result["heldout_by_framework"] = {fw: evaluate(fw, config, result["checkpoint"],
                                                   data["eval"]) for fw in frameworks}
    result["heldout"] = result["heldout_by_framework"][frameworks[0]]
    return result


def extract(run: Run, fw: str, p: Dict, data: Dict, teacher: Dict, seed: int) -> Dict:
    """`bort extract` with the students' learning rate, warm-up and temperature; the record
    adds every member of the space by ascending parameter count (the FPTAS's order)."""
    out = run.dir("extract-" + fw)
    theta = os.path.join(out, "theta.json")
    Run.write(theta, [{"lr": p["lr"], "warmup_ratio": p["warmup_ratio"],
                       "batch_size": p["extract_batch_size"], "temperature": p["temperature"]}])
    bort("extract", "--framework", fw, "--search-space", p["search_space"], "--epsilon",
         p["epsilon"], "--steps", p["extract_steps"], "--theta", theta, "--data", data["train"],
         "--eval-data", data["eval"], "--teacher", teacher["checkpoint"], "--teacher-config",
         teacher["config_name"], "--error", "kd", "--seed", seed, "--output-dir", out, "--quiet")
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
    return not p["data_dir"] and set(p["tasks"]) <= set(demo.DEMO_TASKS)


def demo_task_copies(out: str) -> Dict[str, str]:
    """The demo tasks regenerated from the embedded corpus under `out`: `pool` (train.tsv holds
    the reference's pool) and `labelled` (test.tsv holds the held-out split with its labels)."""
    docs = list(read_documents(demo.CORPUS_PATH))
    dirs = {"pool": os.path.join(out, "tasks-pool"), "labelled": os.path.join(out, "tasks-labelled")}
    demo.make_demo_tasks(docs, dirs["pool"], pool=True)
    demo.make_demo_tasks(docs, dirs["labelled"], labelled_test=True)
    return dirs


def score_heldout(framework: str, task_name: str, config: str, model_path: str, data_dir: str,
                  max_len: int = 512) -> Dict[str, float]:
    """The task's metrics of a fine-tuned model on `data_dir`'s labelled test split (the dev
    layout), with the embedded demo vocabulary."""
    task = get_task(task_name)
    head = split_classifier(ckpt.load_params(model_path))[1]
    cfg = ft.resolve_config(config, model_path, classifier_layout(head, model_path)[1])
    examples = task.read(task, "dev", task.path(data_dir, "test")).examples
    data = ft.TaskData("heldout", examples, featurize(examples, task, load_tokenizer(None),
                                                      min(max_len, cfg.max_length)))
    backend = get_backend(framework)
    model = backend.load(cfg, model_path, ft.num_outputs(task))
    return ft.score_split(backend, model, task, data, 64)["metrics"]


def parity_report(run: Run, records: Dict, seed: int) -> Dict:
    """gluon vs torch at each stage: the training engines step for step, the extraction
    rankings, the pretrained students' held-out losses, and one student run by both
    frameworks layer by layer."""
    out = run.dir("parity")
    report = {"train_steps": _train_steps(out, records["teacher"]["config_name"], seed)}
    ranking = ose.compare_rankings(records["extract-gluon"]["ranking"],
                               records["extract-torch"]["ranking"])
    ranking["ok"] = bool(ranking["same_order"] and ranking["max_w_rel_diff"] <= 1e-3)
    report["extraction"] = ranking
    losses = {fw: eval_loss(records["pretrain-" + fw]["eval_after"]) for fw in ("gluon", "torch")}
    rel = abs(losses["gluon"] - losses["torch"]) / abs(losses["torch"])
    report["pretrain_eval_loss"] = dict(losses, rel_diff=rel, tolerance=PRETRAIN_LOSS_TOLERANCE,
                                        ok=rel <= PRETRAIN_LOSS_TOLERANCE)
    student = records["pretrain-torch"]
    inputs = os.path.join(out, "inputs.npz")
    parity("inputs", "--out", inputs, "--config", student["config"])
    taps = {}
    for fw in ("gluon", "torch"):
        taps[fw] = os.path.join(out, "taps_%s.npz" % fw)
        parity("dump", "--framework", fw, "--checkpoint", student["checkpoint"], "--config",
               student["config"], "--inputs", inputs, "--out", taps[fw])
    code = parity("compare", taps["gluon"], taps["torch"], "--json",
                  os.path.join(out, "taps.json"), check=False)
    with open(os.path.join(out, "taps.json")) as f:
        taps = {k: v for k, v in json.load(f).items() if k not in ("a", "b")}   # file paths
    report["student_taps"] = dict(taps, ok=code == 0)
    report["ok"] = all(v["ok"] for v in report.values())
    return report


def eval_loss(metrics: Dict):
    """The held-out loss a student is compared by: distillation's, else MLM's."""
    return metrics.get("kd_loss", metrics.get("mlm_loss"))


def _train_steps(out: str, config_name: str, seed: int) -> Dict:
    path = os.path.join(out, "train_steps.json")
    code = parity("train-steps", "--student", config_name, "--steps", 10, "--seed", seed,
                  "--json", path, check=False)
    with open(path) as f:
        return dict(json.load(f), ok=code == 0)
