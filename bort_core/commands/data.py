"""`bort create-pretraining-data` and `bort data check`: the text-side commands."""
from __future__ import annotations

import json

from bort_core.commands.convention import add_data, add_output_dir, deprecated
from bort_core.data.demo import CORPUS_PATH
from bort_core.data.pretraining import PretrainingOptions, create_pretraining_data
from bort_core.data.shards import LAYOUTS
from bort_core.data.tasks import TASKS, get_task, read_split
from bort_core.tokenizer import load_tokenizer


def _add_vocab_args(p):
    p.add_argument("--vocab", metavar="PATH",
                   help="directory or file of the BPE vocabulary (encoder.json/vocab.json, or a "
                   "GluonNLP .vocab); default: the embedded demo vocabulary")
    p.add_argument("--merges", metavar="PATH", help="vocab.bpe / merges.txt (default: next to "
                   "--vocab)")
    p.add_argument("--dict", dest="dictionary", metavar="PATH",
                   help="fairseq dict.txt (default: next to --vocab)")


def register(sub):
    """Add `create-pretraining-data` and `data`."""
    p = sub.add_parser("create-pretraining-data", help="text -> masked-LM .npz shards",
                       description="Create BERT-style masked-LM instances from text files (one "
                       "sentence per line, blank line between documents) and write "
                       "part-%03d.npz shards (flat arrays, or the 2020 layout with --layout 2020).")
    deprecated(p, "--input", add_data(p, help="text files (globs; default: the embedded demo "
                                      "corpus)"))
    add_output_dir(p, required=True, help="where the part-*.npz shards go")
    _add_vocab_args(p)
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--masked-lm-prob", type=float, default=0.15)
    p.add_argument("--max-predictions-per-seq", type=int, default=80)
    p.add_argument("--short-seq-prob", type=float, default=0.1)
    p.add_argument("--dupe-factor", type=int, default=1)
    p.add_argument("--whole-word-mask", action="store_true")
    p.add_argument("--num-outputs", type=int, default=1, help="number of .npz shards")
    p.add_argument("--layout", choices=LAYOUTS, default="flat",
                   help="flat: plain arrays, no pickle (ours, the default); 2020: the release's "
                   "object arrays, for its NumpyDataset(allow_pickle=True) loader")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the part-*.npz shards of an earlier run in --output-dir")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--docs-per-chunk", type=int, default=256,
                   help="documents per work unit; random next sentences come from the same unit")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_create, writes=lambda args: [args.output_dir])
    _register_check(sub)


def run_create(args):
    options = PretrainingOptions(
        max_seq_length=args.max_seq_length, masked_lm_prob=args.masked_lm_prob,
        max_predictions_per_seq=args.max_predictions_per_seq,
        short_seq_prob=args.short_seq_prob, dupe_factor=args.dupe_factor,
        whole_word_mask=args.whole_word_mask, seed=args.seed,
        docs_per_chunk=args.docs_per_chunk)
    tokenizer = load_tokenizer(args.vocab, args.merges, args.dictionary)
    stats = create_pretraining_data(args.data or [CORPUS_PATH], args.output_dir, tokenizer,
                                    options, args.num_outputs, args.num_workers,
                                    progress=not args.quiet, layout=args.layout,
                                    overwrite=args.overwrite)
    print(json.dumps(stats, indent=2))
    return 0


def _register_check(sub):
    data = sub.add_parser("data", help="inspect fine-tuning task data",
                          description="Fine-tuning task data: validate official layouts.")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data_sub.required = True
    p = data_sub.add_parser("check", help="validate a task directory, count examples and labels",
                            description="Read every split of a task from its official file "
                            "layout and print, per split, the number of examples and the label "
                            "distribution (labels as written in the files).")
    p.add_argument("--task", required=True, help="one of: " + ", ".join(TASKS))
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the benchmark's task "
                   "folders (e.g. CoLA/, BoolQ/, RACE/); demo tasks default to the embedded copy")
    p.add_argument("--json", action="store_true", help="print {split: {examples, labels}} JSON")
    p.set_defaults(run=run_check)


def run_check(args):
    import warnings

    task = get_task(args.task)
    report, skipped = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # skipped rows are reported below instead
        for split in task.splits:
            data = read_split(task, split, args.data_dir)
            report[split] = {"examples": len(data.examples), "labels": data.label_counts()}
            skipped[split] = data.skipped
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("%s (%s)%s" % (task.name, task.benchmark,
                         "; predicted by a %s model" % task.train_task if task.train_task else ""))
    for split, info in report.items():
        labels = ", ".join("%s: %d" % kv for kv in info["labels"].items()) or "unlabelled"
        extra = "  (%d broken rows skipped)" % skipped[split] if skipped[split] else ""
        print("  %-16s %7d examples  %s%s" % (split, info["examples"], labels, extra))
    return 0
