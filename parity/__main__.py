"""python -m parity {checkpoint, inputs, dump, compare, grads, throughput, train-steps, fidelity}:
does bort_gluon compute what bort_torch does, how fast, and does `--recipe release` do what the
2020 release did?

  python -m parity checkpoint --config bort_4_8_768_1024 --out bort.params   # non-trivial weights
  python -m parity inputs --out in.npz --config bort_4_8_768_1024
  python -m parity dump --framework gluon --checkpoint bort.params --config bort_4_8_768_1024 \\
      --inputs in.npz --out gluon.npz
  python -m parity dump --framework torch ... --out torch.npz
  python -m parity compare gluon.npz torch.npz [--json report.json]
  python -m parity grads --config bort_4_8_768_1024
  python -m parity throughput --frameworks torch,gluon,hf --batch-size 8 --seq-len 128 \\
      --json tp.json
  python -m parity train-steps --steps 20
  python -m parity fidelity [--json fidelity.json]

`compare` and `grads` exit 1 when a tap or a gradient is beyond tolerance; `fidelity` when a
behaviour differs from the release's.
"""
from __future__ import annotations

import argparse
import json
import sys

from bort_core.commands.convention import deprecated
from parity import io

FRAMEWORKS = ("gluon", "torch", "legacy")


def build_model(framework, config_name, checkpoint, num_classes):
    """(backbone, classifier or None) in eval mode, dropout off, from a .params checkpoint."""
    if framework == "gluon":
        from bort_gluon import model as m
    else:
        from bort_torch import model as m
    from bort_core.model_params import join_classifier, load_backbone_and_head

    config, params, head = load_backbone_and_head(checkpoint, config_name)
    if num_classes and head is None:
        raise ValueError("%s: --num-classes asks for classifier_logits, but the checkpoint has "
                         "no classifier head (classifier.*)" % checkpoint)
    backbone = m.BortModel(config.without_dropout())
    classifier = None
    target, values = backbone, params
    if num_classes:
        classifier = m.BortClassifier(backbone, num_classes, dropout=0.0)
        target, values = classifier, join_classifier(params, head)
    m.set_params(target, values, checkpoint)
    if framework == "torch":
        target.eval()
    return backbone, classifier


def cmd_checkpoint(args):
    from bort_core import checkpoint as ckpt
    from bort_core.configs import get_config

    config = get_config(args.config)
    ckpt.save_params(args.out, io.random_params(config, args.seed, num_classes=args.num_classes),
                     store_tied_decoder=True)
    print("wrote %s (%s, seed %d%s)" % (args.out, config.name, args.seed,
                                         ", %d-class head" % args.num_classes if args.num_classes else ""))
    return 0


def cmd_inputs(args):
    from bort_core.configs import get_config

    vocab = args.vocab_size or get_config(args.config).vocab_size
    io.save_inputs(args.out, io.make_inputs(args.batch_size, args.seq_len, vocab,
                                            args.num_masked, args.seed))
    print("wrote %s (batch %d, length %d, %d masked positions each)"
          % (args.out, args.batch_size, args.seq_len, args.num_masked))
    return 0


def cmd_dump(args):
    if args.framework == "legacy":   # the 2020 stack (Python 3.7, gluonnlp 0.8.3)
        from parity import legacy
        legacy.dump(args.config, args.checkpoint, args.inputs, args.out)
        return 0
    from parity import dump
    inputs = io.load_inputs(args.inputs)
    backbone, classifier = build_model(args.framework, args.config, args.checkpoint,
                                       args.num_classes)
    collect = dump.gluon_taps if args.framework == "gluon" else dump.torch_taps
    taps = collect(backbone, inputs, classifier)
    io.save_taps(args.out, taps)
    print("wrote %s: %s" % (args.out, ", ".join(sorted(taps))))
    return 0


def cmd_compare(args):
    from parity.compare import compare_taps, format_table

    rows = compare_taps(io.load_taps(args.a), io.load_taps(args.b))
    print(format_table(rows))
    ok = all(r["ok"] for r in rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"a": args.a, "b": args.b, "ok": ok, "taps": rows}, f, indent=2)
    print("parity: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


def cmd_grads(args):
    from bort_core.configs import get_config
    from bort_gluon import model as gm
    from bort_torch import model as tm
    from parity import grads

    config = get_config(args.config).without_dropout()
    inputs = io.make_inputs(args.batch_size, args.seq_len, config.vocab_size, 5, args.seed)
    params = io.random_params(config, args.seed, num_classes=args.num_classes)
    g = gm.BortClassifier(gm.BortModel(config), args.num_classes, dropout=0.0)
    gm.initialize_like_release(g)
    gm.set_params(g, params)
    t = tm.BortClassifier(tm.BortModel(config), args.num_classes, dropout=0.0)
    tm.set_params(t, params)
    loss_g, grads_g = grads.gluon_grads(g, inputs, args.num_classes)
    loss_t, grads_t = grads.torch_grads(t, inputs, args.num_classes)
    rows = grads.compare_grads(grads_g, grads_t)
    ok = all(r["ok"] for r in rows)
    print("loss: gluon %.8f  torch %.8f" % (loss_g, loss_t))
    print("%-70s %12s" % ("parameter (worst first)", "rel_l2"))
    for r in rows[: args.show]:
        print("%-70s %12.3e" % (r["param"], r.get("rel_l2", float("nan"))))
    print("%d parameters, worst rel L2 %.3e (tolerance %.0e): %s"
          % (len(rows), rows[0].get("rel_l2", float("inf")), grads.GRAD_TOLERANCE,
             "PASS" if ok else "FAIL"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "loss": [loss_g, loss_t], "ok": ok, "params": rows},
                      f, indent=2)
    return 0 if ok else 1


def cmd_throughput(args):
    from parity.throughput.report import command

    return command(args)


def cmd_train_steps(args):
    from parity import train_steps

    report = train_steps.train_steps(args.student, args.teacher, args.steps, args.batch_size,
                                     args.seq_len, args.num_masked, args.seed, args.kd_loss,
                                     args.lr)
    train_steps.print_report(report, args.show)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["ok"] else 1


def cmd_fidelity(args):
    from parity import fidelity
    return fidelity.run(args)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m parity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("checkpoint", help="write a .params file with non-trivial random weights "
                       "(biases and LayerNorms away from their defaults)")
    p.add_argument("--config", default="bort_4_8_768_1024")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-classes", type=int, default=0, help="add a classifier head")
    p.set_defaults(run=cmd_checkpoint)

    p = sub.add_parser("inputs", help="write a padded inputs file (distinct valid lengths)")
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="bort_4_8_768_1024", help="for its vocabulary size")
    p.add_argument("--vocab-size", type=int)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--num-masked", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_inputs)

    p = sub.add_parser("dump", help="run one framework on an inputs file, write every tap")
    p.add_argument("--framework", required=True, choices=FRAMEWORKS)
    p.add_argument("--checkpoint", required=True, help=".params file (2020 format)")
    p.add_argument("--config", default="bort_4_8_768_1024")
    p.add_argument("--inputs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--num-classes", type=int, default=0,
                   help="also dump classifier_logits (the checkpoint must hold a classifier head)")
    p.set_defaults(run=cmd_dump)

    p = sub.add_parser("compare", help="per-tap error table; exit 1 beyond tolerance")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", help="write the report as JSON")
    p.set_defaults(run=cmd_compare)

    p = sub.add_parser("grads", help="gradients of MLM + classifier loss in both frameworks")
    p.add_argument("--config", default="bort_4_8_768_1024")
    p.add_argument("--num-classes", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=10, help="rows of the table to print")
    p.add_argument("--json")
    p.set_defaults(run=cmd_grads)

    p = sub.add_parser("throughput", help="tokens/s, latency, memory and MFU of each framework "
                       "on the same weights and inputs, one process per framework")
    p.add_argument("--frameworks", default="torch,gluon",
                   help="comma list from: torch, torch-compile, torch-plain, gluon, gluonnlp, hf, onnx "
                   "(default torch,gluon); one missing or failing is reported, the rest measured")
    p.add_argument("--config", default="bort_4_8_768_1024",
                   help="config name(s), comma-separated (e.g. bort_4_8_768_1024,bert_12_768_12,"
                   "bert_24_1024_16 for the speed-ratio table)")
    p.add_argument("--checkpoint", help=".params weights (one config only; default: random "
                   "non-trivial weights written to --workdir)")
    deprecated(p, "--batch", p.add_argument("--batch-size", type=int, default=8,
                                            help="batch size (default 8)"))
    deprecated(p, "--seq", p.add_argument("--seq-len", type=int, default=128,
                                          help="sequence length (default 128)"))
    p.add_argument("--preset", help="workload list instead of --batch-size/--seq-len: "
                   "gluonnlp-inference or gluonnlp-train (GluonNLP's benchmark pairs)")
    p.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16, or a comma "
                   "list measured side by side (torch: autocast; gluon: MXNet AMP)")
    p.add_argument("--mode", default="inference", help="inference (backbone forward) or train "
                   "(forward + backward of the MLM loss)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="threads per framework, set the same for all "
                   "(OMP/MKL env + torch/ORT settings; default: all cores)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per workload (default 3)")
    p.add_argument("--iters", type=int, default=5, help="timed steps per round (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--peak-tflops", type=float, help="device peak TFLOP/s for the MFU column "
                   "(with neither this nor --measure-peak the MFU column is left out)")
    p.add_argument("--measure-peak", action="store_true", help="measure the peak as a dense "
                   "GEMM in --dtype in the first torch/hf worker")
    p.add_argument("--check-error", action="store_true", help="torch low precision: also report "
                   "the MLM-logit error vs float32 on the same batch")
    p.add_argument("--expect-match", type=float, metavar="R", help="exit 1 when two frameworks "
                   "differ by more than the factor R (>= 1) in tokens/s on any workload, or when "
                   "no two were measured on the same one")
    p.add_argument("--ratio-base", default="bort_4_8_768_1024",
                   help="config the speed-ratio table divides by (with several --config)")
    p.add_argument("--seed", type=int, default=0, help="weights and inputs seed")
    p.add_argument("--workdir", help="where the checkpoint and exports go (default: a temp dir)")
    p.add_argument("--json", help="write the records here, plus a .md table and a .png chart")
    p.set_defaults(run=cmd_throughput)
    p = sub.add_parser("train-steps", help="N pretraining steps in each framework from the same "
                       "weights on the same batches (dropout off): per-step losses, final params")
    p.add_argument("--student", default="bort_4_8_768_1024", help="student config (full size "
                   "by default)")
    p.add_argument("--teacher", default="bort_2_4_512_256", help="teacher config, random weights, "
                   "the student's vocabulary (default %(default)s, small)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    p.add_argument("--batch-size", type=int, default=2, help="rows per batch (default 2)")
    p.add_argument("--seq-len", type=int, default=16, help="padded length (default 16)")
    p.add_argument("--num-masked", type=int, default=4, help="prediction slots per row, the last "
                   "one padding (default 4)")
    p.add_argument("--kd-loss", default="kl", choices=("kl", "release"),
                   help="distillation term (default kl)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="weights and batches seed")
    p.add_argument("--show", type=int, default=5, help="parameter rows to print")
    p.add_argument("--json", help="write the report as JSON")
    p.set_defaults(run=cmd_train_steps)
    p = sub.add_parser("fidelity", help="one row per release behaviour: the release's value "
                       "(legacy stack or the release's formula) against ours under --recipe "
                       "release; exit 1 on any mismatch")
    p.add_argument("--legacy-python", help="the legacy interpreter (default "
                   ".tox/legacy/bin/python, else $BORT_LEGACY_PYTHON)")
    p.add_argument("--json", help="write the rows as JSON")
    p.set_defaults(run=cmd_fidelity)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print("parity %s: error: %s" % (args.command, err), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
