"""`bort config`: list, show and export model configurations."""
from __future__ import annotations

import json

from bort_core import arch
from bort_core.configs import get_config, list_configs


def register(sub):
    p = sub.add_parser("config", help="list registry configs, show one with its parameter counts",
                       description="List the registry's configs, or show one (name, bort_D_A_I_H "
                       "or JSON path) with its exact parameter counts and FLOPs.")
    p.add_argument("name", nargs="?", help="config to show; omit to list all")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length for FLOPs (default 128)")
    p.add_argument("--save", metavar="PATH", help="write the config as JSON to PATH")
    p.set_defaults(run=run)


def run(args):
    if not args.name:
        for name in list_configs():
            c = get_config(name)
            print("%-20s D=%-2d A=%-2d H=%-4d I=%-4d vocab=%-6d params=%s"
                  % (name, c.num_layers, c.num_heads, c.units, c.hidden_size, c.vocab_size,
                     "{:,}".format(arch.param_counts(c)["total"])))
        return 0
    config = get_config(args.name)
    if args.save:
        config.to_json(args.save)
    report = {"config": config.to_dict(), "params": arch.param_counts(config),
              "flops_per_sequence": arch.forward_flops(config, args.seq_len),
              "seq_len": args.seq_len}
    print(json.dumps(report, indent=2))
    return 0
