"""A bench sweep's summaries for people and spreadsheets: the table of each point, and the CSV.

`format_point` prints one point's summary (`summary.summarise_runs`) as the sweep goes, with its
gap flags and fidelity note, and each host's own table for a point run on several hosts;
`format_bench` prints them all with the `LEGEND`. `csv_rows` flattens them into one row per point
and policy (`CSV_COLUMNS`), `write_csv` writes that file. Pure but `write_csv`.
"""

from __future__ import annotations

import csv
from typing import Any

from numaemu.measure.experiment import Point

__all__ = ["CSV_COLUMNS", "LEGEND", "csv_rows", "format_bench", "format_point", "format_recording", "write_csv"]


def _fmt_nodes(per_node: list[dict[str, Any]]) -> str:
    vals = [f"{n['node']}:{n['us_per_request']['median']:.0f}" if n["us_per_request"] else f"{n['node']}:-" for n in per_node]
    return " ".join(vals)


def _policy_line(policy: str, r: dict[str, Any]) -> tuple[str, str | None]:
    """One policy's row of a point's table, and its gap flag's line (None when not flagged)."""
    t = r["throughput_rps"]
    sp = r["speedup"]
    flag = None
    if sp is None:
        sp_txt, p_txt, gap_txt = "1 (baseline)", "-", "-"
    else:
        ci = f"[{sp['ci_low']:.3f}, {sp['ci_high']:.3f}]" if sp["ci_low"] is not None else "[-]"
        sp_txt = f"{sp['median']:.3f} {ci}"
        sig = r["significance"]
        p_txt = "-" if sig["p_value"] is None else f"{sig['p_value']:.3f}" + ("*" if sig["significant"] else " ")
        gap_txt = "-" if r["gap_pct"] is None else f"{r['gap_pct']:+.1f}%" + ("!" if r["flag"] else " ")
        if r["flag"]:
            flag = f"  ! {policy}: measured {sp['median']:.3f} vs model {r['model_speedup']:.3f} ({r['gap_pct']:+.1f}%): {r['flag']}"
    model = r["model_speedup"]
    t_txt = f"{t['median']:>11.1f} +- {t['mad']:<6.1f}" if t else f"{'-':>11}    {'':<6}"
    line = (
        f"  {policy:<11}{t_txt}{sp_txt:>24}{p_txt:>10}{(f'{model:.3f}' if model else '-'):>8}"
        f"{gap_txt:>9}{100 * r['remote_fetch_share']:>7.1f}%  {_fmt_nodes(r['per_node'])}"
    )
    return line, flag


def format_point(s: dict[str, Any]) -> str:
    p = Point(**s["point"])
    timing = f"time scale {s.get('time_scale') or 0:g}" if s.get("delays", "model") == "model" else "delays none (nothing injected: this host's own latencies)"
    if "per_host" in s:
        timing = f"on {s['hosts']} hosts (speedups pooled across them; throughput and per-node times per host, below)"
    head = f"{p.label()}: {s['n_nodes']} nodes, {s['repetitions']} repetitions, {timing}"
    lines = [head, f"  {'policy':<11}{'req/s median+-MAD':>20}{'speedup [95% CI]':>25}{'p':>9}{'model':>8}{'gap':>8}{'remote':>8}  per node us/req (median)"]
    flags = []
    for policy, r in s["policies"].items():
        line, flag = _policy_line(policy, r)
        lines.append(line)
        if flag is not None:
            flags.append(flag)
    lines.extend(flags)
    if "per_host" not in s:
        lines.append(f"  fidelity: {s['fidelity']['note']}")
    for h in s.get("per_host", ()):
        own = format_point({**h, "point": s["point"]}).splitlines()
        lines.append(f"  host {h['host']['id']}: " + own[0].split(": ", 1)[1])
        lines.extend("  " + line for line in own[1:])
    return "\n".join(lines)


LEGEND = (
    "speedup: median wall-clock throughput ratio against single in the same repetition, with a bootstrap 95% interval; "
    "p: paired t-test on log ratios (* below 0.05); model: what the latency model predicts; gap: measured against model (! flagged)"
)


def format_bench(points: list[dict[str, Any]]) -> str:
    return "\n\n".join(format_point(s) for s in points) + "\n" + LEGEND


CSV_COLUMNS = (
    "topology", "workload", "cache", "user_data", "replicate", "policy", "n_nodes", "repetitions",
    "throughput_median", "throughput_mad", "speedup_median", "speedup_mad", "speedup_ci_low", "speedup_ci_high",
    "p_value", "significant", "model_speedup", "gap_pct", "flag", "remote_fetch_share", "node_spread_pct",
    "pacing_lost_pct_max", "oversubscribed", "per_node_us_per_request", "host",
)


def csv_rows(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per point and policy; a point run on several hosts has its row (``host`` "all":
    the pooled speedups, no throughput) and then one per host (its own figures)."""
    rows = []
    for s in points:
        if "per_host" in s:
            rows += _csv_point(s, s["point"], "all")
            for h in s["per_host"]:
                rows += _csv_point(h, s["point"], h["host"]["id"])
        else:
            host = s["runs"][0][0].get("host") if s.get("runs") else None
            rows += _csv_point(s, s["point"], host["id"] if host else "")
    return rows


def _csv_point(s: dict[str, Any], point: dict[str, Any], host: str) -> list[dict[str, Any]]:
    rows = []
    for policy, r in s["policies"].items():
        sp, sig, t = r["speedup"] or {}, r["significance"] or {}, r["throughput_rps"] or {}
        rows.append({
            **point,
            "policy": policy,
            "n_nodes": s["n_nodes"],
            "repetitions": s["repetitions"],
            "throughput_median": t.get("median"),
            "throughput_mad": t.get("mad"),
            "speedup_median": sp.get("median"),
            "speedup_mad": sp.get("mad"),
            "speedup_ci_low": sp.get("ci_low"),
            "speedup_ci_high": sp.get("ci_high"),
            "p_value": sig.get("p_value"),
            "significant": sig.get("significant"),
            "model_speedup": r["model_speedup"],
            "gap_pct": r["gap_pct"],
            "flag": r["flag"] or "",
            "remote_fetch_share": r["remote_fetch_share"],
            "node_spread_pct": r["node_spread_pct"],
            "pacing_lost_pct_max": r["pacing_lost_pct"]["max"],
            "oversubscribed": s["fidelity"]["oversubscribed"],
            "per_node_us_per_request": ";".join(
                f"{n['us_per_request']['median']:.1f}" if n["us_per_request"] else "" for n in r["per_node"]
            ),
            "host": host,
        })
    return rows


def write_csv(points: list[dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in csv_rows(points):
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})


def format_recording(rep: dict[str, Any], image: str) -> list[str]:
    """What a replayed recording was and how it mapped (`numaemu.model.replay` report): the
    lines ``numaemu run`` and ``bench`` print before their tables."""
    rec = rep.get("recorded") or {}
    k = max(1, rep["kernel_samples"])
    where = f", kernel {rec['release']}" if rec.get("release") else ""
    cmd = f", command: {' '.join(rec['command'])[:60]!r}" if rec.get("command") else ""
    out = [
        f"recording: {rep['source']} ({rep['format']}{where}{cmd}): {rep['samples']:,} samples, {rep['kernel_share']:.0%} in the kernel"
        + ("" if rep["callchains"] else ", no callchains (one frame a sample)"),
        f"mapped onto {image}: {rep['mapped_by_name'] / k:.1%} of kernel samples wholly by name, {rep['mapped_by_stand_in'] / k:.1%} through a stand-in, "
        f"{rep['mapped_by_address'] / k:.1%} by address; {rep.get('frames_by_name_share', 0):.1%} of their frames by name "
        f"({rep['functions']['by_name']:,} functions by name, {rep['functions']['stand_in']:,} stand-ins)",
        "top entries: " + ", ".join(f"{e['entry']} {e['sample_share']:.0%} of samples, {e['request_share']:.0%} of requests" for e in rep["top_entries"][:5]),
        "top functions: " + ", ".join(f"{f['function']} {f['self_share']:.0%} ({f['subsystem']}{'' if f['mapped'] == 'name' else ', ' + f['mapped']})" for f in rep["top_functions"][:6]),
    ]
    r = rep.get("reconstruction")
    if r:
        out.append(f"requests: {r['templates']} templates from {r['entries']} entries, {r['mean_lines_per_request']:g} lines a request, user compute {r['compute_ns_per_request']:g} ns a request")
    return out
