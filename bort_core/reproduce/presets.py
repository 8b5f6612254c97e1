"""The presets `bort reproduce --preset` picks: demo (the embedded corpus and demo tasks, minutes
on a CPU) and paper (the 2020 scale, from real files under --files-dir)."""
from __future__ import annotations

import glob
import os
from typing import Dict, Tuple

from bort_core.tokenizer import DEMO_DIR

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
        "epsilon": 18.0,                     # 4 candidates of the 72 members
        # 400 steps a candidate: at 200 every candidate is still on the unigram plateau
        # (distillation errors within 4% of each other) and W picks the smallest member; at 400
        # and 600 the 64-unit candidate beats it by 1.0% and 1.8% (600 steps take the run past
        # 15 minutes; docs/reproduce.md)
        "extract_steps": 400,
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


def check_paper_files(files_dir: str) -> None:
    """A ValueError naming every file --preset paper needs that is not under `files_dir`, with
    where to get it."""
    missing = []
    for _, rel, where in PAPER_FILES:
        path = os.path.join(files_dir, rel)
        if not glob.glob(path):
            missing.append("  %s\n      expected at %s\n      get it from: %s" % (rel, path, where))
    if missing:
        raise ValueError("--preset paper needs real files under --files-dir %s; missing:\n%s"
                         % (files_dir, "\n".join(missing)))


def resolve_preset(preset: str, files_dir: str = None,
                   retrain_teacher: bool = False) -> Tuple[Dict, str]:
    """The preset's settings for this run, and the files folder (paper: default real_files/,
    checked before anything is written)."""
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
    return p, files_dir
