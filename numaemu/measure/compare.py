"""Bench results read back: checked whole, and two of them compared (``numaemu compare A B``).

A bench JSON of this `BENCH_SCHEMA` (read by ``compare`` and ``plot``; the file itself is refused
first if it is not a regular file, by `numaemu.api.records.read_document`) is checked by
`bench_doc_problem` for the structure `compare_docs` and `plot.plot_bench` read, so that a damaged
document is refused in one line. `compare_docs` sets two documents' points side by side,
`format_compare` prints that. Pure.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from numaemu.measure.experiment import AXES
from numaemu.measure.stats import welch_test

__all__ = ["BENCH_SCHEMA", "bench_doc_problem", "compare_docs", "format_compare"]

BENCH_SCHEMA = 2  # 2: the run records of schema 2 (runtime.results.SCHEMA)


def bench_doc_problem(doc: dict[str, Any]) -> str | None:
    """What keeps `doc` (a bench JSON of this `BENCH_SCHEMA`) from being compared or plotted,
    or None: the structure `compare_docs` and `plot.plot_bench` read, checked up front so that a
    damaged or hand-edited file is refused in one line, not with a traceback half-way."""
    points = doc.get("points")
    if not isinstance(points, list) or not points:
        return "has no points (a list of at least one)"
    if not isinstance(doc.get("experiment"), dict):
        return "has no experiment settings (an object)"
    for i, s in enumerate(points):
        problem = _point_problem(s)
        if problem is not None:
            return f"points[{i}]{problem}"
    return None


def _point_problem(s: object) -> str | None:
    """What is wrong with one point of a bench document (its text follows ``points[i]``)."""
    if not isinstance(s, dict):
        return " is not an object"
    if not isinstance(s.get("point"), dict) or any(a not in s["point"] for a in AXES):
        return f": point must be an object with {', '.join(AXES)}"
    policies = s.get("policies")
    if not isinstance(policies, dict) or not policies:
        return ": policies must be a non-empty object"
    for name, row in policies.items():
        if not isinstance(row, dict) or any(k not in row for k in ("speedup", "model_speedup", "per_node", "throughput_rps")):
            return f": policies.{name} lacks speedup, model_speedup, per_node or throughput_rps"
    runs = s.get("runs")
    if not isinstance(runs, list) or not all(
        isinstance(rep, list) and all(isinstance(r, dict) and all(k in r for k in ("policy", "throughput_rps", "speedup_vs_single")) for r in rep)
        for rep in runs
    ):
        return ": runs must be a list of repetitions, each a list of policy records"
    return None


def _index(doc: dict[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    return {tuple(s["point"][a] for a in AXES): s for s in doc["points"]}


def _figures(point: dict[str, Any], policy: str, field: str) -> list[float]:
    """`field` of every run of `policy` at `point`, over its repetitions (None left out)."""
    return [r[field] for rep in point["runs"] for r in rep if r["policy"] == policy and r[field] is not None]


def _compare_policy(sa: dict[str, Any], sb: dict[str, Any], policy: str) -> dict[str, Any]:
    """One policy at one point of both documents: each figure both have, with its test."""
    row: dict[str, Any] = {"policy": policy}
    for field, name in (("throughput_rps", "throughput"), ("speedup_vs_single", "speedup")):
        if policy == "single" and name == "speedup":
            continue
        if name == "throughput" and ("per_host" in sa or "per_host" in sb):
            continue  # absolute times of several hosts are never pooled (summarise_runs)
        xa, xb = _figures(sa, policy, field), _figures(sb, policy, field)
        if not xa or not xb:
            continue
        ma, mb = float(np.median(xa)), float(np.median(xb))
        row[name] = {"a": ma, "b": mb, "change_pct": 100.0 * (mb / ma - 1.0), "test": welch_test(xa, xb).to_json()}
    return row


def compare_docs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per point and policy in both documents: each side's median speedup and throughput, the
    change, and whether it is significant (Welch's t-test on the per-repetition figures, since
    the two files are independent runs)."""
    ia, ib = _index(a), _index(b)
    rows = []
    for key in [k for k in ia if k in ib]:
        sa, sb = ia[key], ib[key]
        for policy in [p for p in sa["policies"] if p in sb["policies"]]:
            rows.append({"point": dict(zip(AXES, key, strict=True)), **_compare_policy(sa, sb, policy)})
    only_a = [dict(zip(AXES, k, strict=True)) for k in ia if k not in ib]
    only_b = [dict(zip(AXES, k, strict=True)) for k in ib if k not in ia]
    return {"rows": rows, "only_in_a": only_a, "only_in_b": only_b}


def format_compare(cmp: dict[str, Any], name_a: str, name_b: str) -> str:
    lines = [f"A = {name_a}", f"B = {name_b}", f"{'point':<48}{'policy':<11}{'figure':<11}{'A':>9}{'B':>9}{'change':>9}{'p':>8}  verdict"]
    for row in cmp["rows"]:
        label = " ".join(str(v) for v in row["point"].values())
        for name in ("speedup", "throughput"):
            if name not in row:
                continue
            f = row[name]
            t = f["test"]
            p_txt = "-" if t["p_value"] is None else f"{t['p_value']:.3f}"
            verdict = (
                "too few repetitions to tell" if t["p_value"] is None
                else ("significant: " + ("faster" if f["change_pct"] > 0 else "slower")) if t["significant"]
                else "not significant"
            )
            lines.append(f"{label[:47]:<48}{row['policy']:<11}{name:<11}{f['a']:>9.3f}{f['b']:>9.3f}{f['change_pct']:>+8.1f}%{p_txt:>8}  {verdict}")
    for side, key in (("A", "only_in_a"), ("B", "only_in_b")):
        for p in cmp[key]:
            lines.append(f"only in {side}: " + " ".join(str(v) for v in p.values()))
    lines.append("p: Welch t-test on logs of the per-repetition figures (the files are independent runs); significant below 0.05")
    return "\n".join(lines)
