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

Modules: presets (demo, paper), runner (output directory, stage cache, the public commands,
side-by-side processes), stages (each stage's body), report (summary and plots), pipeline (the
stages in order: `reproduce`). The command line is bort_core.commands.reproduce.
"""
