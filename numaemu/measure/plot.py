"""``numaemu bench --plot FILE.png``: the figure of a sweep (matplotlib, the ``plot`` extra).

Left: each policy's measured speedup against ``single`` at each point, with its bootstrap 95%
interval as an error bar, and the latency model's prediction as a hollow marker beside it, so a
gap is seen at a glance. Right: each node's own time per request, per policy and point: the
per-node disparity (node 0 fast, the others slow under ``single``) is drawn, not averaged away.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from numaemu.errors import UsageError

__all__ = ["check_available", "plot_bench"]


def check_available() -> None:
    """Fail before any work when matplotlib is missing (it is an optional extra)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot", "needs matplotlib: pip install 'numaemu[plot]' (or pip install matplotlib)")


def _short(point: dict[str, Any]) -> str:
    return f"{point['topology']}\n{point['workload']} {point['cache']}\nuser {point['user_data']}"


def plot_bench(points: list[dict[str, Any]], path: str, settings: dict[str, Any]) -> None:
    """Draw `points` (bench summaries) to `path`; `settings`: the experiment's (its JSON's
    ``experiment``), for the title."""
    per = f"{settings['duration_s']:g} s" if settings.get("duration_s") else f"{settings.get('requests')} requests"
    title = f"numaemu bench: {settings['repeat']} repetitions of {per} each, after {settings['warmup']} warmup"
    import matplotlib

    matplotlib.use("Agg")  # files only, no display (headless hosts, CI)
    import matplotlib.pyplot as plt

    policies = list(points[0]["policies"])
    compared = [p for p in policies if p != "single"]
    width = 0.8 / max(1, len(compared))
    # One panel above the other, so a sweep of many points grows the figure's width moderately.
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8.0, 1.3 * len(points) + 3), 9), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    for k, policy in enumerate(compared):
        xs, ys, lo, hi, model = [], [], [], [], []
        for i, s in enumerate(points):
            r = s["policies"].get(policy)
            if not r or not r["speedup"]:
                continue
            sp = r["speedup"]
            x = i + (k - (len(compared) - 1) / 2) * width
            xs.append(x)
            ys.append(sp["median"])
            low = sp["ci_low"] if sp["ci_low"] is not None else sp["median"]
            high = sp["ci_high"] if sp["ci_high"] is not None else sp["median"]
            lo.append(sp["median"] - low)
            hi.append(high - sp["median"])
            model.append(r["model_speedup"])
        color = colors[k % len(colors)]
        ax1.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=4, color=color, label=f"{policy} measured (95% CI)")
        ax1.scatter([x + width * 0.25 for x in xs], model, marker="D", facecolors="none", edgecolors=color, label=f"{policy} model")
    ax1.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax1.set_xticks(range(len(points)), [_short(s["point"]) for s in points], fontsize=8)
    ax1.set_ylabel("speedup against single (throughput ratio)")
    ax1.set_title("speedup")
    ax1.legend(fontsize=8)

    bar_w = 0.8 / len(policies)
    for k, policy in enumerate(policies):
        color = colors[k % len(colors)]
        for i, s in enumerate(points):
            nodes = s["policies"][policy]["per_node"]
            n = len(nodes)
            base = i + (k - (len(policies) - 1) / 2) * bar_w
            for j, node in enumerate(nodes):
                if node["us_per_request"] is None:
                    continue
                x = base + (j - (n - 1) / 2) * bar_w / n
                ax2.bar(x, node["us_per_request"]["median"], width=bar_w / n * 0.9, color=color, alpha=0.4 + 0.6 * (j == 0),
                        label=policy if i == 0 and j == 0 else None)
    # A point run on several hosts has per-node wall times per host only (summary.summarise_runs):
    # no bars here; its label says where they are.
    ax2.set_xticks(range(len(points)), [_short(s["point"]) + (f"\n({s['hosts']} hosts: per host in the JSON)" if "per_host" in s else "") for s in points], fontsize=8)
    ax2.set_ylabel("wall us per request (median), one bar per node")
    ax2.set_title("per node: node 0 solid, others lighter")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
