"""``python -m bench plot RESULTS.json [-o OUT.png]``: latency CDFs and throughput per target.

One row per clients level: the left panel is the latency distribution (CDF, log-scale ms) of every
run, the median round drawn solid and the others faint; the right panel the throughput median per
target with min-max error bars and the etcdgw/etcd ratio. Needs matplotlib (``pip install
'.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def plot(result: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = result["results"]
    names = [t["name"] for t in result["targets"]]
    figures: list[str] = result["figures"]
    rate = figures[0]
    has_latency = any(r.get("latency_quantiles_ms") for g in groups for r in g["runs"])
    ncols = 2 if has_latency else 1
    fig, axes = plt.subplots(
        len(groups), ncols, figsize=(6 * ncols, 3.2 * len(groups)), squeeze=False
    )
    for row, group in enumerate(groups):
        c = group.get("label") or f"c={group['clients']}"
        if has_latency:
            ax = axes[row][0]
            for i, name in enumerate(names):
                runs = [r for r in group["runs"] if r["target"] == name]
                median = group["medians"].get(name, {}).get(rate, {}).get("median")
                best = min(runs, key=lambda r: abs(r["figures"].get(rate, 0) - (median or 0)))
                for r in runs:
                    q = r.get("latency_quantiles_ms") or []
                    if not q:
                        continue
                    ys = [k / (len(q) - 1) for k in range(len(q))]
                    ax.plot(
                        q,
                        ys,
                        color=COLORS[i % len(COLORS)],
                        alpha=1.0 if r is best else 0.3,
                        linewidth=1.6 if r is best else 0.8,
                        label=name if r is best else None,
                    )
            ax.set_xscale("log")
            ax.set_xlabel("latency (ms)")
            ax.set_ylabel("fraction of operations")
            ax.set_title(f"{result['workload']} {c}: latency CDF")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(loc="lower right")
        ax = axes[row][ncols - 1]
        meds, lows, highs = [], [], []
        for name in names:
            m = group["medians"].get(name, {}).get(rate, {"median": 0, "min": 0, "max": 0})
            meds.append(m["median"])
            lows.append(m["median"] - m["min"])
            highs.append(m["max"] - m["median"])
        bars = ax.bar(
            names,
            meds,
            yerr=[lows, highs],
            capsize=6,
            color=[COLORS[i % len(COLORS)] for i in range(len(names))],
        )
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in meds], padding=3)
        ratio = group.get("ratios", {}).get(rate)
        title = f"{result['workload']} {c}: {rate} (median, min-max)"
        if ratio is not None and result.get("ratio"):
            title += f"\n{result['ratio']} = {ratio:.2f}"
        ax.set_title(title)
        ax.set_ylabel(rate)
        ax.margins(y=0.2)
        ax.grid(True, axis="y", alpha=0.3)
    m = result.get("machine", {})
    fig.suptitle(
        f"{result.get('date', '')}  commit {str(m.get('git_commit'))[:10]}  "
        f"{m.get('cpu_count')} x {m.get('cpu_model')}",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench plot")
    p.add_argument("results", type=Path, help="a JSON file written by python -m bench")
    p.add_argument("-o", "--out", type=Path, help="PNG path (default: beside the JSON)")
    args = p.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot needs matplotlib: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    result = json.loads(args.results.read_text())
    out = plot(result, args.out or args.results.with_suffix(".png"))
    print(out)
    return 0
