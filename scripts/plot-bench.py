#!/usr/bin/env python3
"""Charts from hybridgen-bench --json output.

    scripts/plot-bench.py bench.json [more.json ...] [--out PREFIX] [--formats png,svg]

Writes PREFIX-latency.{png,svg}: decode latency (ms per step, mean +- stddev over repetitions)
against the prompt length, one line per policy configuration, one panel per batch size; and
PREFIX-speedup.{png,svg}: each configuration's decode speedup over `aog` (aog's ms/step divided
by its own) at the same prompt length and batch (only when the JSON has aog rows).

Needs matplotlib (pip install matplotlib); the benchmark itself does not.
"""
import argparse
import json
import os
import sys
from collections import defaultdict


def load_rows(paths):
    rows = []
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        if doc.get("tool") != "hybridgen-bench" or "results" not in doc:
            sys.exit(f"{path}: not a hybridgen-bench --json file")
        rows.extend(doc["results"])
    return rows


def labels_for(rows):
    """A label per row: the policy, plus the swept parameters that vary within that policy."""

    def window(r):  # --window-frac windows scale with the context: one line per fraction
        if r.get("window_frac") is not None:
            return f"{100 * r['window_frac']:g}%"
        return r.get("window")

    params = {"selection": lambda r: r.get("selection"), "k": lambda r: r.get("k"), "w": window}
    varying = defaultdict(lambda: defaultdict(set))
    for r in rows:
        for name, get in params.items():
            varying[r["policy"]][name].add(get(r))
    out = []
    for r in rows:
        parts = [r["policy"]]
        for name, get in params.items():
            if len(varying[r["policy"]][name]) > 1 and get(r) is not None:
                parts.append(get(r) if name == "selection" else f"{name}={get(r)}")
        out.append(" ".join(parts))
    return out


def ms_per_step(row):
    m = row.get("ms_per_step")
    return (m["mean"], m["sd"]) if m else (None, None)


def save(fig, prefix, suffix, formats):
    for fmt in formats:
        path = f"{prefix}-{suffix}.{fmt}"
        fig.savefig(path, bbox_inches="tight", dpi=150)
        print(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="+", help="hybridgen-bench --json files")
    ap.add_argument("--out", help="output prefix (default: the first JSON path without .json)")
    ap.add_argument("--formats", default="png,svg", help="comma list of image formats")
    args = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot-bench.py needs matplotlib: pip install matplotlib")

    rows = load_rows(args.json)
    if not rows:
        sys.exit("no results in the JSON")
    prefix = args.out or os.path.splitext(args.json[0])[0]
    formats = [f for f in args.formats.split(",") if f]
    labels = labels_for(rows)
    batches = sorted({r["batch"] for r in rows})
    # One colour per configuration in every panel and chart (tab20: sweeps often have > 10).
    palette = plt.get_cmap("tab20").colors
    color = {label: palette[i % len(palette)] for i, label in enumerate(sorted(set(labels)))}

    # series[batch][label] = [(n_prompt, mean, sd)]
    series = defaultdict(lambda: defaultdict(list))
    for r, label in zip(rows, labels):
        mean, sd = ms_per_step(r)
        if mean is not None:
            series[r["batch"]][label].append((r["n_prompt"], mean, sd))

    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, b in zip(axes[0], batches):
        for label, pts in sorted(series[b].items()):
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        marker="o", capsize=3, label=label, color=color[label])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("decode latency (ms / step)")
        ax.set_title(f"batch {b}")
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle("hybridgen-bench: decode latency vs context")
    save(fig, prefix, "latency", formats)
    plt.close(fig)

    # Speedup over aog at the same (prompt length, batch).
    aog = {}
    for r, label in zip(rows, labels):
        mean, _ = ms_per_step(r)
        if r["policy"] == "aog" and mean:
            aog[(r["n_prompt"], r["batch"])] = mean
    if not aog:
        print("no aog rows: speedup chart skipped", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, b in zip(axes[0], batches):
        for label, pts in sorted(series[b].items()):
            if label.split()[0] == "aog":
                continue
            xs, ys = [], []
            for p, mean, _ in sorted(pts):
                if (p, b) in aog and mean > 0:
                    xs.append(p)
                    ys.append(aog[(p, b)] / mean)
            if xs:
                ax.plot(xs, ys, marker="o", label=label, color=color[label])
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("speedup over aog (decode)")
        ax.set_title(f"batch {b}")
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle("hybridgen-bench: decode speedup over aog (all KV offloaded, streamed)")
    save(fig, prefix, "speedup", formats)
    plt.close(fig)


if __name__ == "__main__":
    main()
