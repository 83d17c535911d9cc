"""Draws bench/results/summary.png from the latest result files: throughput and p50 latency of
every case of the gateway-overhead, cross-replica and other-gateways benchmarks, side by side;
and bench/results/scaling.png: the curves of the upstream-scaling and session-scaling
benchmarks (throughput and p50 of tools/call and tools/list against upstreams or open sessions).

usage: python plot.py RESULTS_DIR     (needs matplotlib; bench/run-plot installs it)
"""

import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def latest(results, name):
    """The newest full run of benchmark `name`, by the time it was taken (file names may carry
    a tag after the date, e.g. `-before-restructure`)."""
    reports = []
    for path in glob.glob(os.path.join(results, f"{name}-*.json")):
        if "-quick" in path:
            continue
        with open(path) as f:
            r = json.load(f)
        if r.get("benchmark") == name:
            reports.append(r)
    return max(reports, key=lambda r: r.get("date_utc", ""), default=None)


def cases(report, label):
    out = []
    for r in report["runs"]:
        size = r.get("payload_bytes", 100)
        size = f"{size // 1024}K" if size >= 1024 else f"{size}B"
        era = r.get("era", "")
        out.append((f"{label}\n{era} {size} c{r['concurrency']}", r["target"], r["throughput_rps"], r["latency_us"]["p50"]))
    return out


def main():
    results = sys.argv[1]
    panels = []
    for name, label in [("gateway-overhead", "overhead"), ("cross-replica", "cross-replica"), ("other-gateways", "gateways")]:
        report = latest(results, name)
        if report:
            panels.append((name, cases(report, label)))
    fig, axes = plt.subplots(len(panels), 2, figsize=(16, 4.5 * len(panels)), squeeze=False)
    for row, (name, data) in enumerate(panels):
        groups = list(dict.fromkeys(c[0] for c in data))
        targets = list(dict.fromkeys(c[1] for c in data))
        width = 0.8 / len(targets)
        for col, (metric, idx, ylabel) in enumerate([("throughput", 2, "requests/s"), ("p50 latency", 3, "µs (log)")]):
            ax = axes[row][col]
            for i, t in enumerate(targets):
                xs, ys = [], []
                for g, group in enumerate(groups):
                    v = next((c[idx] for c in data if c[0] == group and c[1] == t), None)
                    if v is not None:
                        xs.append(g + i * width)
                        ys.append(v)
                ax.bar(xs, ys, width, label=t)
            ax.set_xticks([g + width * (len(targets) - 1) / 2 for g in range(len(groups))])
            # Twelve two-line labels do not fit side by side: slanted, anchored at their ends.
            ax.set_xticklabels(groups, fontsize=7, rotation=35, ha="right", rotation_mode="anchor")
            ax.set_ylabel(ylabel)
            if idx == 3:
                ax.set_yscale("log")
            ax.set_title(f"{name}: {metric}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = os.path.join(results, "summary.png")
    fig.savefig(out, dpi=110)
    print(out)
    scaling(results)


def scaling(results):
    """One row per scaling benchmark: x = upstreams or open sessions (log), one line per era,
    request and concurrency."""
    rows = []
    for name, key, xlabel in [("upstream-scaling", "upstreams", "upstreams in the binding"),
                              ("session-scaling", "open_sessions", "open idle sessions")]:
        report = latest(results, name)
        if report:
            rows.append((name, key, xlabel, report["runs"]))
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), 2, figsize=(14, 4.5 * len(rows)), squeeze=False)
    for row, (name, key, xlabel, runs) in enumerate(rows):
        lines = {}
        for r in runs:
            what = "list" if r["tool"] == "tools/list" else "call"
            lines.setdefault(f"{r['era']} {what} c{r['concurrency']}", []).append(
                (max(r[key], 1) if key == "open_sessions" else r[key], r["throughput_rps"], r["latency_us"]["p50"]))
        for col, (idx, ylabel) in enumerate([(1, "requests/s (log)"), (2, "p50 µs (log)")]):
            ax = axes[row][col]
            for label, pts in sorted(lines.items()):
                pts.sort()
                ax.plot([p[0] for p in pts], [p[idx] for p in pts], marker="o", label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel + (" (0 drawn at 1)" if key == "open_sessions" else ""))
            ax.set_ylabel(ylabel)
            ax.set_title(f"{name}: {'throughput' if idx == 1 else 'p50 latency'}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = os.path.join(results, "scaling.png")
    fig.savefig(out, dpi=110)
    print(out)


main()
