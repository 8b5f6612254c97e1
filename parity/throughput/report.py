"""What a throughput run shows: the records as a table, the speed ratio between configs, the
framework pairs with the `--expect-match` verdict, a chart, and `python -m parity throughput`'s
output (report, JSON, markdown, chart)."""
from __future__ import annotations

import json
import os

import numpy as np

from bort_core import io as bio
from parity.throughput.harness import run


def format_table(records):
    """Markdown table, one row per record (errors shown in place of figures)."""
    head = ("| framework | config | B | L | dtype | mode | device | tokens/s | seq/s | p50 ms "
            "| p90 ms | TFLOP/s | MFU | peak MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        key = "| %s | %s | %s | %s | %s | %s | %s " % (
            r["framework"], r.get("config", "-"), r.get("batch", "-"), r.get("seq", "-"),
            r.get("dtype", "-"), r.get("mode", "-"), r.get("device", "-"))
        if r.get("error"):
            lines.append(key + "| error: %s |||||||" % r["error"].replace("|", "/"))
            continue
        lines.append(key + "| %.0f | %.2f | %.2f | %.2f | %s | %s | %s |" % (
            r["tokens_per_s"], r["sequences_per_s"], r["latency_p50_ms"], r["latency_p90_ms"],
            "%.3f" % r["tflops"] if "tflops" in r else "-",
            "%.1f%%" % (100 * r["mfu"]) if "mfu" in r else "-",
            "%.0f" % r["peak_mem_mib"] if r.get("peak_mem_mib") else "-"))
    return "\n".join(lines)


def speedups(records, reference):
    """{(config, dtype, mode, B, L): {framework: tokens/s ratio over `reference`}}."""
    groups = {}
    for r in records:
        if not r.get("error"):
            key = (r["config"], r["dtype"], r["mode"], r["batch"], r["seq"])
            groups.setdefault(key, {})[r["framework"]] = r["tokens_per_s"]
    return {k: {f: v / g[reference] for f, v in g.items()}
            for k, g in groups.items() if reference in g}


def ratio_table(records, base):
    """Markdown: per framework and workload, how many times faster `base` is than each
    other config (tokens/s ratio, the paper's 'x times faster')."""
    by = {}
    for r in records:
        if not r.get("error"):
            by.setdefault((r["framework"], r["dtype"], r["mode"], r["batch"], r["seq"]),
                          {})[r["config"]] = r["tokens_per_s"]
    configs = sorted({r["config"] for r in records if not r.get("error") and r["config"] != base})
    lines = ["| framework | dtype | B | L | %s tokens/s | %s |" % (
        base, " | ".join("%s / %s" % (base, c) for c in configs)),
        "|" + "---|" * (5 + len(configs))]
    for (fw, dtype, _mode, b, s), speeds in sorted(by.items()):
        if base not in speeds:
            continue
        cells = ["%.2fx" % (speeds[base] / speeds[c]) if c in speeds else "-" for c in configs]
        lines.append("| %s | %s | %d | %d | %.0f | %s |" % (fw, dtype, b, s, speeds[base],
                                                          " | ".join(cells)))
    return "\n".join(lines)


WORKLOAD = ("config", "dtype", "mode", "device", "batch", "seq")


def pair_ratios(records):
    """One row per two frameworks measured on the same workload (config, dtype, mode, device,
    B, L), in the records' order: `a`, `b` and `ratio` = tokens/s of a over b."""
    groups = {}
    for r in records:
        if not r.get("error"):
            groups.setdefault(tuple(r.get(k) for k in WORKLOAD), []).append(r)
    return [dict(zip(WORKLOAD, key), a=a["framework"], b=b["framework"],
                 ratio=a["tokens_per_s"] / b["tokens_per_s"])
            for key, group in groups.items()
            for i, a in enumerate(group) for b in group[i + 1:]]


def mismatches(rows, factor):
    """The pair rows whose frameworks differ by more than `factor` (>= 1), either way."""
    if not factor >= 1:
        raise ValueError("--expect-match must be a factor >= 1 (got %s)" % factor)
    return [r for r in rows if max(r["ratio"], 1 / r["ratio"]) > factor]


def pairs_table(rows, factor=None):
    """Markdown: each pair's tokens/s ratio per workload, then its median over the workloads
    of a (config, dtype, mode) when there are several; with `factor`, a verdict column."""
    medians = {}
    for r in rows:
        medians.setdefault((r["a"], r["b"], r["config"], r["dtype"], r["mode"]), []).append(
            r["ratio"])
    head = "| a / b | config | dtype | mode | B | L | tokens/s ratio |"
    if factor:
        head += " within %gx |" % factor
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def line(a, b, config, dtype, mode, batch, seq, ratio):
        cells = "| %s / %s | %s | %s | %s | %s | %s | %.2fx |" % (a, b, config, dtype, mode,
                                                                 batch, seq, ratio)
        if factor:
            cells += " %s |" % ("yes" if max(ratio, 1 / ratio) <= factor else "NO")
        lines.append(cells)

    for r in rows:
        line(r["a"], r["b"], r["config"], r["dtype"], r["mode"], r["batch"], r["seq"], r["ratio"])
    for (a, b, config, dtype, mode), ratios in medians.items():
        if len(ratios) > 1:
            line(a, b, config, dtype, mode, "median", "of %d" % len(ratios),
                 float(np.median(ratios)))
    return "\n".join(lines)


def plot(records, path):
    """Bar chart of tokens/s per framework and workload; False when matplotlib is absent."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in records if not r.get("error")]
    labels = sorted({"%s B%d L%d %s" % (r["config"], r["batch"], r["seq"], r["dtype"]) for r in ok})
    frameworks = sorted({r["framework"] for r in ok})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) * max(1, len(frameworks)) / 2), 4))
    width = 0.8 / max(1, len(frameworks))
    for i, fw in enumerate(frameworks):
        vals = {("%s B%d L%d %s" % (r["config"], r["batch"], r["seq"], r["dtype"])): r["tokens_per_s"]
                for r in ok if r["framework"] == fw}
        ax.bar([j + i * width for j in range(len(labels))], [vals.get(lb, 0) for lb in labels],
               width, label=fw)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("tokens/s (median)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    bio.save_figure(fig, path, dpi=120)
    return True


def command(args) -> int:
    """`python -m parity throughput`: measure, print the report; with `--json PATH` also write
    the records there, the report beside it as .md and the chart as .png. Exit status 1 when
    nothing could be measured, or `--expect-match` fails."""
    args.progress = True
    if args.expect_match is not None:
        mismatches([], args.expect_match)      # a bad factor is refused before any run
    records = run(args, log=lambda *a: print(*a, flush=True))
    sections = [format_table(records)]
    configs = sorted({r["config"] for r in records if r.get("config")})
    base = args.ratio_base if args.ratio_base in configs else None
    if base and len(configs) > 1:
        sections.append("speed ratio (%s tokens/s over each other config)\n\n%s" % (
            base, ratio_table(records, base)))
    pairs = pair_ratios(records)
    if pairs:
        sections.append("framework pairs (tokens/s of a over b)\n\n"
                        + pairs_table(pairs, args.expect_match))
    beyond = []
    if args.expect_match is not None:
        beyond = mismatches(pairs, args.expect_match)
        sections.append("\n".join(
            ["MISMATCH: %s / %s = %.2fx on %s %s %s B=%d L=%d" % (
                r["a"], r["b"], r["ratio"], r["config"], r["dtype"], r["mode"], r["batch"],
                r["seq"]) for r in beyond]
            + ["throughput verdict: %s: %d of %d pairs within %gx of each other" % (
                "FAIL" if beyond or not pairs else "PASS", len(pairs) - len(beyond), len(pairs),
                args.expect_match)]))
    report = "\n\n".join(sections)
    print(report)
    if args.json:
        bio.ensure_dir(os.path.dirname(os.path.abspath(args.json)))
        bio.write_text(args.json, json.dumps(records, indent=2))
        stem = os.path.splitext(args.json)[0]
        bio.write_text(stem + ".md", report + "\n")
        if plot(records, stem + ".png"):
            print("wrote %s, %s.md, %s.png" % (args.json, stem, stem))
        else:
            print("wrote %s, %s.md (no chart: matplotlib is not installed)" % (args.json, stem))
    if not any(not r.get("error") for r in records):
        return 1
    return 1 if args.expect_match is not None and (beyond or not pairs) else 0
