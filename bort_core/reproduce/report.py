"""What a run reports: summary.json (results and stage times), summary.md (the findings with
PASS/FAIL verdicts, per-framework tables, parity) and plots (loss curves, per-layer parity error,
Pareto fronts)."""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List

from bort_core.configs import get_config
from bort_core.data.tasks import get_task
from bort_core.finetune import selection_score
from bort_core.io import save_figure
from bort_core.reproduce.runner import FRAMEWORK_STAGES, Run, framework_stages, say
from bort_core.reproduce.stages import PRETRAIN_LOSS_TOLERANCE

# A teacher "learned" when its held-out MLM accuracy reaches this (predicting the most frequent
# token everywhere, the unigram plateau, scores 0.05 on the demo's held-out shards).
TEACHER_MIN_ACC = 0.20

# Plain fine-tuning "learns" a demo task when its held-out score reaches this (chance: accuracy
# 0.5 on the balanced binary tasks, Pearson 0 on the regression).
TASK_MIN_SCORE = {"accuracy": 0.60, "pearson": 0.30}


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
        f.write(markdown(summary))
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


def _finetune_findings(s: Dict) -> List[str]:
    """Fine-tuning's findings per framework, on the tasks scored on a labelled held-out split:
    each task learned, the reference above the student, Agora's held-out gain."""
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


def markdown(s: Dict) -> str:
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
        say("matplotlib is not installed (pip install 'bort[plot]'): no plots")
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
    save_figure(fig, os.path.join(run.out, "loss_curves.png"))
    if "parity" in records:
        taps = [t for t in records["parity"]["student_taps"]["taps"] if "max_abs" in t]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar([t["tap"] for t in taps], [t["max_abs"] for t in taps])
        ax.axhline(1e-5, color="r", linestyle="--", label="hidden-state tolerance")
        ax.set_yscale("log")
        ax.set_ylabel("max |gluon - torch|")
        ax.legend()
        fig.tight_layout()
        save_figure(fig, os.path.join(run.out, "parity_layers.png"))
    for fw in frameworks:
        png = records["extract-" + fw].get("pareto_png")
        if png and os.path.exists(png):
            shutil.copyfile(png, os.path.join(run.out, "pareto_%s.png" % fw))

