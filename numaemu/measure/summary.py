"""The statistics of a bench point: what its repetitions measured, against what the model predicts.

For each policy at each point the summary gives the median +- MAD of its throughput, the median
speedup with a bootstrap 95% interval and a significance test against ``single`` (`stats`), the
speedup the latency model predicts (the ratio of emulated time per request, which is exact: it is
computed from the fetches the nodes made and the topology's latencies), each node's own time per
request (the per-node disparity that motivated the arm64 series is shown, not averaged away), and
how much wall-clock fidelity pacing lost. A measured speedup that misses the model by more than
`GAP_TOLERANCE_PCT`, with the model outside its interval, is flagged with the likely reason
(`explain_gap`).

A point is summarised once its last repetition is in (`summarise_runs`, called by the sweep's
ledger); on a cluster, runs are summarised per host, and speedups combined across hosts
(`_across_hosts`), since absolute times of two machines never mix. Pure: the runs are records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from numaemu.measure.experiment import Point
from numaemu.measure.stats import Summary, paired_test, summarise

__all__ = [
    "GAP_TOLERANCE_PCT",
    "PointSetup",
    "explain_gap",
    "fidelity_note",
    "summarise_point",
    "summarise_runs",
]

GAP_TOLERANCE_PCT = 2.0  # a measured speedup within 2% of the model is not flagged
LOST_NOTE_PCT = 1.0  # nodes running this much beyond their paced time is a reason for a gap
NOISE_NOTE_PCT = 2.0  # a 95% interval wider than +-2% is a reason for a gap


@dataclass(frozen=True)
class PointSetup:
    """How one host set up one point: what its summary needs beside the run records. On a
    cluster each host that ran a point has its own (its CPUs, its calibration)."""

    host: dict[str, Any]  # results.host_record(): "id" and the host's metadata
    n_nodes: int
    cpus_used: int
    oversubscribed: bool
    time_scale: float | None  # None with delays none (nothing paced)
    calibration: dict[str, Any]  # calibrate_scale's figures; {} when --time-scale was given
    topology_detail: dict[str, Any]
    host_binding: dict[str, Any]

    @property
    def host_id(self) -> str:
        return str(self.host["id"])


def explain_gap(measured: Summary, model: float, *, lost_pct: float, oversubscribed: bool, n_nodes: int, cpus_used: int) -> tuple[float, str | None]:
    """The gap between the measured and the modelled speedup, in %, and why it is large, or None
    when it is not (within `GAP_TOLERANCE_PCT`, or the model inside the measured interval)."""
    gap = 100.0 * (measured.median / model - 1.0)
    if abs(gap) <= GAP_TOLERANCE_PCT or measured.contains(model):
        return gap, None
    reasons = []
    if lost_pct > LOST_NOTE_PCT:
        why = (
            f"{n_nodes} nodes share {cpus_used} host CPU(s) (oversubscribed)" if oversubscribed
            else "the host was busy, or the time scale is too small for this workload (try a larger --time-scale)"
        )
        reasons.append(f"the nodes ran {lost_pct:.1f}% beyond their paced time: {why}")
    half = measured.ci_half_width_pct
    if half is not None and half > NOISE_NOTE_PCT:
        reasons.append(f"noise: the 95% interval is +-{half:.1f}% (add --repeat or --duration)")
    if not reasons:
        reasons.append(
            "neither pacing loss nor noise explains it: a cost outside the latency model "
            "(other load on the host, start and stop synchronisation of the nodes); rerun on a quiet host"
        )
    return gap, "; ".join(reasons)


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def _node_summary(recs: list[dict[str, Any]], node: int, seed: int, absolute: bool = True) -> dict[str, Any]:
    times = [t for r in recs if (t := r["per_node"][node]["us_per_request"])] if absolute else []
    return {
        "node": node,
        "us_per_request": summarise(times, seed).to_json() if times else None,
        "emulated_us_per_request": _median([r["per_node"][node]["emulated_us_per_request"] for r in recs]),
    }


def _policy_row(policy: str, recs: list[dict[str, Any]], *, n_nodes: int, cpus_used: int, oversubscribed: bool, seed: int, delays: str, absolute: bool = True) -> dict[str, Any]:
    """One policy's figures at a point, from its records (one per repetition). `absolute`:
    also the throughput and per-node wall times, which only runs on one host may be summarised
    together (`_across_hosts` leaves them None)."""
    lost = [r["pacing_lost_pct"] for r in recs]
    row: dict[str, Any] = {
        "throughput_rps": summarise([r["throughput_rps"] for r in recs], seed).to_json() if absolute else None,
        "remote_fetch_share": _median([r["remote_fetch_share"] for r in recs]),
        "node_spread_pct": _median([r["node_spread_pct"] for r in recs]),  # a ratio within one run
        "pacing_lost_pct": {"median": _median(lost), "max": max(lost)},
        "pacing_overrun_pct_max": max(r["pacing_overrun_pct"] for r in recs),
        "extra_memory_bytes": recs[0]["extra_memory_bytes"],
        "page_tables": recs[0].get("page_tables"),
        "copy_nodes": recs[0].get("copy_nodes"),
        "per_node": [_node_summary(recs, node, seed, absolute) for node in range(len(recs[0]["per_node"]))],
    }
    speedups = [r["speedup_vs_single"] for r in recs]
    model = _median([r["predicted_speedup_vs_single"] for r in recs])
    if policy == "single" or any(s is None for s in speedups):
        row.update(speedup=None, model_speedup=model, significance=None, gap_pct=None, flag=None)
        return row
    measured = summarise(speedups, seed)
    gap: float | None = None
    flag: str | None = None
    if model is not None:  # None: no emulated time to predict from (no request completed)
        gap, flag = explain_gap(measured, model, lost_pct=max(lost), oversubscribed=oversubscribed, n_nodes=n_nodes, cpus_used=cpus_used)
    if delays == "none":
        flag = None
    row.update(speedup=measured.to_json(), model_speedup=model, significance=paired_test(speedups).to_json(), gap_pct=gap, flag=flag)
    return row


def summarise_point(
    point: Point, reps: list[list[dict[str, Any]]], *, n_nodes: int, cpus_used: int, oversubscribed: bool, seed: int = 0, delays: str = "model", absolute: bool = True,
) -> dict[str, Any]:
    """Statistics of one point from its repetitions on one host (each a list of
    `policy_record`s with speedups, in the experiment's policy order). With ``delays="none"``
    nothing was paced: a gap between the measured speedup and the model is this host against
    the model, the finding itself, so it is not flagged as a fault of the run. ``absolute=False``
    (repetitions of several hosts, `_across_hosts`) leaves out throughput and per-node times."""
    policies = [r["policy"] for r in reps[0]]
    rows = {
        policy: _policy_row(policy, [rep[pi] for rep in reps], n_nodes=n_nodes, cpus_used=cpus_used, oversubscribed=oversubscribed, seed=seed, delays=delays, absolute=absolute)
        for pi, policy in enumerate(policies)
    }
    lost_all = max(r["pacing_lost_pct"]["max"] for r in rows.values())
    return {
        "point": point.to_json(),
        "n_nodes": n_nodes,
        "repetitions": len(reps),
        "fidelity": {
            "oversubscribed": oversubscribed,
            "host_cpus_used": cpus_used,
            "pacing_lost_pct_max": lost_all,
            "note": fidelity_note(n_nodes, cpus_used, oversubscribed, lost_all) if delays == "model"
            else "delays none: nothing paced; wall-clock figures are this host's own memory latencies, the model the emulated topology's",
        },
        "policies": rows,
        "runs": reps,
    }


def summarise_runs(point: Point, reps: list[list[dict[str, Any]]], setups: Mapping[str, PointSetup], *, seed: int = 0, delays: str = "model") -> dict[str, Any]:
    """The summary of `point` from its repetitions (in repetition order), each run on the host
    its records name (``host.id``; `setups` has each host's `PointSetup`).

    Absolute times from different machines are never mixed: each host's repetitions are
    summarised on their own (`summarise_point`, with that host's CPUs, time scale and
    calibration). With one host, that is the point's summary, as a local sweep makes it. With
    several, the point has ``per_host`` (each host's own summary) and `_across_hosts` combines
    what is comparable across them."""
    by_host: dict[str, list[list[dict[str, Any]]]] = {}
    for rep in reps:
        by_host.setdefault(_host_of(rep, setups), []).append(rep)
    per_host = []
    for hid, host_reps in by_host.items():
        setup = setups[hid]
        summary = summarise_point(point, host_reps, n_nodes=setup.n_nodes, cpus_used=setup.cpus_used, oversubscribed=setup.oversubscribed, seed=seed, delays=delays)
        summary.update(time_scale=setup.time_scale, delays=delays, calibration=setup.calibration, topology_detail=setup.topology_detail, host_binding=setup.host_binding)
        per_host.append((setup, summary))
    if len(per_host) == 1:
        return per_host[0][1]
    return _across_hosts(point, reps, per_host, seed=seed, delays=delays)


def _host_of(rep: list[dict[str, Any]], setups: Mapping[str, PointSetup]) -> str:
    """The host a repetition ran on: its records' ``host.id``; records of before hosts were
    recorded (tests' made-up ones too) belong to the only setup there is."""
    host = rep[0].get("host")
    if host is None and len(setups) == 1:
        return next(iter(setups))
    assert host is not None, "a record without its host, from a sweep of several hosts"
    return str(host["id"])


def _across_hosts(point: Point, reps: list[list[dict[str, Any]]], per_host: list[tuple[PointSetup, dict[str, Any]]], *, seed: int, delays: str) -> dict[str, Any]:
    """A point run on several hosts: each host's own summary under ``per_host``, and at the top
    only what does not depend on the host's speed.

    The speedups of all hosts are pooled: each is a paired ratio of two runs on one host in one
    repetition, a dimensionless figure in which the host's own speed cancels, so ratios from
    different hosts estimate the same thing (what pacing reproduces is the emulated topology,
    not the host) and pooling keeps every repetition as a sample for the bootstrap interval and
    the paired test. The median of per-host medians would instead reduce a sweep over two or
    three hosts to two or three samples, too few for any interval; a host that disagrees shows
    in its own ``per_host`` figures (and its own gap flag). Throughput and per-node wall times
    are absolute, so they are given per host only (``throughput_rps`` and the per-node
    ``us_per_request`` are None here). The model's figures (emulated time) and the memory are
    the same on every host."""
    n_nodes = per_host[0][0].n_nodes
    oversubscribed = any(setup.oversubscribed for setup, _ in per_host)
    cpus_used = min(setup.cpus_used for setup, _ in per_host)  # the tightest host, for the gap's reasons
    out = summarise_point(point, reps, n_nodes=n_nodes, cpus_used=cpus_used, oversubscribed=oversubscribed, seed=seed, delays=delays, absolute=False)
    out["fidelity"]["note"] = f"{len(per_host)} hosts; speedups pooled across them, throughput and per-node times per host; " + "; ".join(
        f"{setup.host_id}: {summary['fidelity']['note']}" for setup, summary in per_host
    )
    hosts = []
    for setup, summary in per_host:
        own = {k: v for k, v in summary.items() if k not in ("point", "runs", "topology_detail")}
        hosts.append({"host": setup.host, **own})
    out.update({
        "hosts": len(per_host),
        "per_host": hosts,
        "time_scale": None,  # each host's own, in per_host
        "delays": delays,
        "calibration": None,
        "topology_detail": per_host[0][1]["topology_detail"],
        "host_binding": None,
    })
    return out


def fidelity_note(n_nodes: int, cpus_used: int, oversubscribed: bool, lost_pct: float) -> str:
    if oversubscribed:
        return (
            f"{n_nodes} nodes on {cpus_used} host CPU(s): emulated-time results (model) stay exact; "
            f"wall-clock fidelity reduced, the nodes ran up to {lost_pct:.1f}% beyond their paced time"
        )
    return f"one host CPU set per node; the nodes ran at most {lost_pct:.1f}% beyond their paced time"
