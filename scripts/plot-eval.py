#!/usr/bin/env python3
"""Accuracy vs K (or token budget) per policy, from hybridgen-eval --json files.

    build/tools/hybridgen-eval kl -f text.txt --k 32,128,512 --json kl.json
    scripts/plot-eval.py kl.json -o kl.png                  # KL mean vs K
    scripts/plot-eval.py kl.json --metric top1 --x budget -o top1.png
    scripts/plot-eval.py passkey.json -o passkey.png        # success vs K, one line per length

One line per policy (and per passkey length); full attention's reference row is a dashed
horizontal line. Needs matplotlib; the tests do not use this script.
"""
import argparse
import json
import sys
from collections import defaultdict

DEFAULT_METRIC = {
    "ppl": "ppl_ratio",
    "kl": "kl",
    "profile": "ppl_ratio",
    "passkey": "success",
    "mc": "acc",
}
LABELS = {
    "ppl_ratio": "perplexity / full's",
    "ppl": "perplexity",
    "kl": "mean KL(full || policy), nats",
    "kl_max": "max KL(full || policy), nats",
    "top1": "top-1 agreement with full",
    "gen_agree": "greedy tokens equal to full's",
    "success": "passkey success rate",
    "acc": "accuracy",
    "acc_norm": "accuracy (length-normalized)",
    "agree": "same pick as full",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", help="hybridgen-eval --json output(s)")
    ap.add_argument("-o", "--output", default="eval.png", help="image file (png, svg, pdf)")
    ap.add_argument("--metric", help="row field on the y axis (default: by mode)")
    ap.add_argument("--x", choices=["k", "budget", "fraction"], default="k",
                    help="x axis: K (offloaded tokens per KV head), budget (window + K) or "
                         "fraction")
    ap.add_argument("--logx", action="store_true", help="logarithmic x axis")
    args = ap.parse_args()

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot-eval.py needs matplotlib (pip install matplotlib)")

    docs = []
    for path in args.json:
        with open(path) as f:
            docs.append((path, json.load(f)))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    metric = None
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    n_colors = 0

    def next_color():
        nonlocal n_colors
        n_colors += 1
        return palette[(n_colors - 1) % len(palette)]

    for path, doc in docs:
        mode = doc.get("mode", "")
        metric = args.metric or DEFAULT_METRIC.get(mode, "kl")
        lines = defaultdict(list)  # label -> [(x, y)]
        for row in doc["rows"]:
            y = row.get(metric)
            if y is None:
                continue
            label = row["policy"]
            if mode == "passkey":
                label += f" @{row['length']}"
            if len(docs) > 1:
                label += f" ({path})"
            x = row.get(args.x)
            if x is None:  # no K: full, aog, aoc, hybrid:off -> a horizontal line
                full = row["policy"].startswith("full")
                ax.axhline(y, linestyle="--", linewidth=1,
                           color="gray" if full else next_color(), label=label)
                continue
            lines[label].append((x, y))
        for label, pts in lines.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                    color=next_color())
    title = docs[0][1].get("model", "").split("/")[-1]
    ax.set_title(f"{title}, context {docs[0][1].get('n_ctx', '?')}")
    ax.set_xlabel({"k": "K (offloaded tokens per KV head)", "budget": "token budget (window + K)",
                   "fraction": "retained fraction"}[args.x])
    ax.set_ylabel(LABELS.get(metric, metric))
    if args.logx:
        ax.set_xscale("log", base=2)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(args.output)


if __name__ == "__main__":
    main()
