"""``numaemu bench``: sweeps of `numaemu run`, repeated, with statistics people can trust.

An experiment is a grid of *points* (topology x workload x cache state x user-data placement x
replicated scope); at each point every policy runs, in fresh node processes, ``repeat`` times
after ``warmup`` discarded repetitions, as pyperf runs a benchmark in fresh worker processes after
warmups. Every speedup is a paired ratio against ``single`` measured in the same repetition, and
the policies' order rotates from one repetition to the next so host drift does not favour one.

For each policy at each point the result gives the median +- MAD of its throughput, the median
speedup with a bootstrap 95% interval and a significance test against ``single`` (`stats`), the
speedup the latency model predicts (the ratio of emulated time per request, which is exact: it is
computed from the fetches the nodes made and the topology's latencies), each node's own time per
request (the per-node disparity that motivated the arm64 series is shown, not averaged away), and
how much wall-clock fidelity pacing lost. A measured speedup that misses the model by more than
`GAP_TOLERANCE_PCT`, with the model outside its interval, is flagged with the likely reason
(`explain_gap`).

A sweep is planned as tasks (`plan_tasks`), one per measured repetition of a point, each running
every policy of that repetition; their outcomes are gathered by a `SweepLedger`, which summarises
each point once its last task is in (`summarise_runs`). The local sweep (`run_experiment`) and a
sweep on a Dask cluster (`cluster`, ``bench --cluster``) share all of that, and the same
per-repetition function (`run_repetition`); on a cluster, runs are summarised per host, and
speedups combined across hosts (`_across_hosts`), since absolute times of two machines never mix.

This module holds the experiment's definition, the sweep and the summaries; `cli` parses the
options, `plot` draws the figure, `cluster` runs the tasks on a cluster.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from numaemu.errors import NodeFailure, UsageError
from numaemu.host.cpus import host_cpus
from numaemu.measure.stats import Summary, paired_test, summarise, welch_test
from numaemu.model.image import KernelImage, synthetic_image
from numaemu.model.kernelfile import load_image
from numaemu.model.topology import Topology, load_topology, parse_host_cpus, place_on_host
from numaemu.model.workloads import Workload, build_workload
from numaemu.runtime.policy_run import RunSpec, prepare_spec, run_policies
from numaemu.runtime.results import host_record

__all__ = [
    "AXES",
    "BENCH_SCHEMA",
    "Experiment",
    "Point",
    "RunTask",
    "RunFailure",
    "RunOutcome",
    "PointSetup",
    "SweepLedger",
    "plan_tasks",
    "repetition_order",
    "prepare_point",
    "run_warmups",
    "run_repetition",
    "summarise_runs",
    "explain_gap",
    "split_topologies",
    "read_experiment_file",
    "run_experiment",
    "summarise_point",
    "format_bench",
    "LEGEND",
    "write_csv",
    "compare_docs",
    "format_compare",
    "bench_doc_problem",
]

BENCH_SCHEMA = 1
AXES = ("topology", "workload", "cache", "user_data", "replicate")
GAP_TOLERANCE_PCT = 2.0  # a measured speedup within 2% of the model is not flagged
LOST_NOTE_PCT = 1.0  # nodes running this much beyond their paced time is a reason for a gap
NOISE_NOTE_PCT = 2.0  # a 95% interval wider than +-2% is a reason for a gap
WARMUP_FRACTION = 0.25  # a warmup repetition runs a quarter of the measured duration


@dataclass(frozen=True)
class Point:
    """One configuration of the sweep; every policy runs at every point."""

    topology: str
    workload: str
    cache: str
    user_data: str
    replicate: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def label(self) -> str:
        return f"{self.topology} {self.workload}, cache {self.cache}, user data {self.user_data}, replicate {self.replicate}"


@dataclass(frozen=True)
class Experiment:
    points: tuple[Point, ...]
    policies: tuple[str, ...]  # always holds "single", the baseline of every speedup
    repeat: int
    warmup: int
    duration_s: float | None
    requests: int | None
    migrate_rate: float
    seed: int
    image_scale: float
    start_method: str
    host_cpus: str | None = None
    local_ns: float | None = None
    sysfs_root: str = "/sys"
    trace: Path | None = None
    time_scale: float | None = None
    image: Path | None = None  # a real kernel image file; None: the synthetic image at image_scale
    delays: str = "model"  # coordinator.DELAYS; one value for the whole sweep
    pt_style: str = "none"  # pagetables.PT_STYLES; one value for the whole sweep
    replicas_every: int = 1

    @property
    def runs(self) -> int:
        """Node-process runs the experiment makes (one per policy per repetition per point)."""
        return len(self.points) * (self.warmup + self.repeat) * len(self.policies)

    def settings(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "points"}
        d["policies"] = list(self.policies)
        d["trace"] = str(self.trace) if self.trace else None
        d["image"] = str(self.image) if self.image else None
        return d

    def kernel_image(self) -> KernelImage:
        """The image every point runs on (a file is loaded once per process)."""
        return load_image(self.image) if self.image else synthetic_image(self.image_scale)


_TOPOLOGY_SPEC = re.compile(r"(\d+):\s*\d+")


def split_topologies(text: str) -> list[str]:
    """A comma list of topologies, where a numa=fake spec such as ``2:10,21,21,10`` keeps its own
    N*N comma-separated distances: ``2s-xeon,2:10,21,21,10,4`` is three topologies."""
    tokens = [t.strip() for t in text.split(",")]
    out: list[str] = []
    i = 0
    while i < len(tokens):
        m = _TOPOLOGY_SPEC.fullmatch(tokens[i])
        take = int(m.group(1)) ** 2 if m else 1
        out.append(",".join(tokens[i : i + take]))
        i += take
    return [t for t in out if t]


# --------------------------------------------------------------------------------------------
# Experiment files


EXPERIMENT_KEYS = (
    "topology", "workload", "cache", "user-data", "replicate", "policy", "repeat", "warmup",
    "duration", "requests", "migrate-rate", "seed", "image-scale", "host-cpus", "local-ns",
    "trace", "time-scale", "start-method", "image", "delays", "pt-style", "replicas-every",
)


def read_experiment_file(path: str) -> dict[str, str]:
    """A TOML experiment: keys named as `numaemu bench`'s long options (``user-data`` or
    ``user_data``), values a string, number or list (a list is a sweep, like a comma list).
    Returns each value as the text its option would take, so one parser checks both."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise UsageError("--experiment", f"cannot read '{path}': {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError("--experiment", f"'{path}' is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError("--experiment", f"'{path}' is not UTF-8 text (TOML is)") from None
    except ValueError as exc:  # an integer of 4300+ digits (sys.get_int_max_str_digits)
        raise UsageError("--experiment", f"'{path}' holds a number too long to read: {str(exc).split(';')[0]}") from None
    if not data:
        raise UsageError("--experiment", f"'{path}' sets nothing; give keys named as bench's options, e.g. topology = [\"2s-xeon\", \"kunpeng920\"]")
    if isinstance(data.get("bench"), dict) and len(data) == 1:  # a [bench] table is fine too
        data = data["bench"]
    out: dict[str, str] = {}
    for key, value in data.items():
        name = key.replace("_", "-")
        if name not in EXPERIMENT_KEYS:
            raise UsageError("--experiment", f"{path}: unknown key '{key}'; keys are {', '.join(EXPERIMENT_KEYS)}")
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items):
            raise UsageError("--experiment", f"{path}: {key} must be a string, a number or a non-empty list of them")
        out[name] = ",".join(str(v) for v in items)
    return out


# --------------------------------------------------------------------------------------------
# The plan: one task per measured repetition of a point (pure)


@dataclass(frozen=True)
class RunTask:
    """One measured repetition of one point: every policy, in fresh node processes, back to back
    in `order`. The unit of work of a sweep, locally and on a cluster (``--cluster``): every
    speedup is a paired ratio against ``single`` of the same repetition, so a repetition's
    policies are never split between tasks (or hosts)."""

    index: int  # position in the plan; on a cluster also its priority (earlier runs first)
    point_index: int
    point: Point
    repetition: int  # 0-based
    order: tuple[str, ...]  # the policies, rotated by `repetition_order`

    def label(self) -> str:
        return f"{self.point.label()}, repetition {self.repetition + 1}"

    def to_json(self) -> dict:
        return {"point": self.point.to_json(), "repetition": self.repetition + 1, "order": list(self.order)}


def repetition_order(policies: Sequence[str], repetition: int) -> tuple[str, ...]:
    """The policies' order in a repetition: rotated by one each time, so no policy always runs
    first (a drifting host would favour it)."""
    k = repetition % len(policies)
    return tuple(policies[k:]) + tuple(policies[:k])


def plan_tasks(exp: Experiment) -> tuple[RunTask, ...]:
    """Every task of `exp`, point by point, repetition by repetition (warmups are not tasks:
    each host runs a point's warmups before its first task of that point)."""
    tasks = []
    for pi, point in enumerate(exp.points):
        for i in range(exp.repeat):
            tasks.append(RunTask(len(tasks), pi, point, i, repetition_order(exp.policies, i)))
    return tuple(tasks)


@dataclass(frozen=True)
class PointSetup:
    """How one host set up one point: what its summary needs beside the run records. On a
    cluster each host that ran a point has its own (its CPUs, its calibration)."""

    host: dict  # results.host_record(): "id" and the host's metadata
    n_nodes: int
    cpus_used: int
    oversubscribed: bool
    time_scale: float | None  # None with delays none (nothing paced)
    calibration: dict  # calibrate_scale's figures; {} when --time-scale was given
    topology_detail: dict
    host_placement: dict

    @property
    def host_id(self) -> str:
        return self.host["id"]


@dataclass(frozen=True)
class RunFailure:
    """A task that failed on its own merits (a node died, a file missing on its host, its
    process crashed) or that the cluster gave up on (its workers kept dying). Reported, never
    retried: the sweep goes on without that repetition."""

    task: RunTask
    host: str | None  # results.host_id of the host it failed on; None: no host finished it
    detail: str  # one line: what failed, with the point and repetition
    node: int | None = None
    pid: int | None = None
    phase: str | None = None
    where: str | None = None

    @classmethod
    def from_node_failure(cls, task: RunTask, host: str, exc: NodeFailure) -> RunFailure:
        return cls(task, host, str(exc), exc.node, exc.pid, exc.phase, exc.where or None)

    def line(self) -> str:
        return f"run failed on {self.host or 'no host'}: {self.detail}"

    def to_json(self) -> dict:
        return {**self.task.to_json(), "host": self.host, "detail": self.detail, "node": self.node, "pid": self.pid, "phase": self.phase, "where": self.where}


@dataclass(frozen=True)
class RunOutcome:
    """What one task produced: its records (with speedups, in the experiment's policy order,
    each carrying its host) and its host's setup of the point, or its failure."""

    task: RunTask
    records: tuple[dict, ...] = ()
    setup: PointSetup | None = None
    failure: RunFailure | None = None
    calibrated: tuple[float, dict] | None = None  # the time scale its host calibrated (cluster: cached per host), failed or not
    warmups: int = 0  # warmup repetitions its host completed for the point first, failed or not
    pruned: tuple[str, ...] = ()  # segments of dead runs its host removed first


class SweepLedger:
    """Outcomes in, in any order; each point's summary out as soon as its last task is in.

    The local sweep and the cluster (``--cluster``) both feed their outcomes here, so a point is
    summarised by the same code whichever ran it. A point is summarised from the repetitions
    that succeeded; one whose every repetition failed is listed in `failed_points` instead."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self._left = dict.fromkeys(range(len(exp.points)), exp.repeat)  # one task a measured repetition (`plan_tasks`)
        self._reps: dict[int, dict[int, list[dict]]] = {}
        self._setups: dict[int, dict[str, PointSetup]] = {}
        self._summaries: dict[int, dict] = {}
        self.failures: list[RunFailure] = []
        self.failed_points: list[Point] = []

    def add(self, outcome: RunOutcome) -> dict | None:
        """Record `outcome`; return its point's summary if that completed the point."""
        pi = outcome.task.point_index
        if self._left[pi] <= 0:
            raise ValueError(f"a second outcome for {outcome.task.label()}")
        self._left[pi] -= 1
        if outcome.failure is not None:
            self.failures.append(outcome.failure)
        else:
            assert outcome.setup is not None
            self._reps.setdefault(pi, {})[outcome.task.repetition] = list(outcome.records)
            self._setups.setdefault(pi, {}).setdefault(outcome.setup.host_id, outcome.setup)
        if self._left[pi]:
            return None
        reps = self._reps.get(pi)
        if not reps:
            self.failed_points.append(outcome.task.point)
            return None
        summary = summarise_runs(outcome.task.point, [reps[i] for i in sorted(reps)], self._setups[pi], seed=self.exp.seed, delays=self.exp.delays)
        self._summaries[pi] = summary
        return summary

    @property
    def hosts(self) -> dict[str, dict]:
        """Host id -> metadata, of every host that ran a task successfully."""
        return {hid: setup.host for per in self._setups.values() for hid, setup in per.items()}

    @property
    def complete(self) -> bool:
        return not any(self._left.values())

    def summaries(self) -> list[dict]:
        """The completed points' summaries, in the experiment's order."""
        return [self._summaries[pi] for pi in sorted(self._summaries)]


# --------------------------------------------------------------------------------------------
# Running


def prepare_point(
    exp: Experiment, point: Point, image: KernelImage, workloads: dict[str, Workload], calibrated: tuple[float, dict] | None = None,
    *, topo: Topology | None = None, host: dict | None = None,
) -> tuple[RunSpec, PointSetup, tuple[float, dict] | None]:
    """The run spec of `point` on this host, its `PointSetup`, and the calibration made for it
    (or reused: `calibrated`), to be reused for the point's later tasks on this host. Calibrates
    unless --time-scale was given or delays are none. `workloads` caches them by name; `topo`
    and `host` (`host_record`), if the caller has them already, are not read again."""
    if topo is None:
        topo = load_topology(point.topology, sysfs_root=exp.sysfs_root, local_ns=exp.local_ns)
    override = parse_host_cpus(exp.host_cpus) if exp.host_cpus is not None else None
    placement = place_on_host(topo, host_cpus(), override)
    if point.workload not in workloads:
        workloads[point.workload] = build_workload(point.workload, image, exp.seed, exp.trace if point.workload == "trace" else None)
    spec, cal = prepare_spec(
        topo, placement, image, workloads[point.workload], cold=point.cache == "cold", user_local=point.user_data == "local",
        duration_s=exp.duration_s, requests=exp.requests, migrate_rate=exp.migrate_rate, seed=exp.seed,
        start_method=exp.start_method, replicate=point.replicate, time_scale=exp.time_scale, delays=exp.delays,
        pt_style=exp.pt_style, replicas_every=exp.replicas_every, calibrated=calibrated,
    )
    setup = PointSetup(
        host=host if host is not None else host_record(), n_nodes=topo.n_nodes, cpus_used=placement.n_cpus_used,
        oversubscribed=placement.oversubscribed, time_scale=spec.scale if exp.delays == "model" else None, calibration=cal,
        topology_detail=topo.to_json(), host_placement=placement.to_json(),
    )
    made = (spec.scale, cal) if cal else None
    return spec, setup, made


def run_warmups(exp: Experiment, point: Point, spec: RunSpec, count: int, tick: Callable | None = None) -> None:
    """`count` discarded repetitions of `point`, a quarter as long as the measured ones."""
    warm = dataclasses.replace(
        spec,
        duration_s=exp.duration_s * WARMUP_FRACTION if exp.duration_s else None,
        requests=max(1, int(exp.requests * WARMUP_FRACTION)) if exp.requests else None,
    )
    for w in range(count):
        _run_policies_at(point, f"warmup {w + 1}", warm, exp.policies, tick)


def run_repetition(exp: Experiment, task: RunTask, spec: RunSpec, host: dict, tick: Callable | None = None) -> tuple[dict, ...]:
    """Run `task` (every policy of one repetition, in its rotated order); return the records in
    the experiment's policy order, each with the `host` (results.host_record) it ran on."""
    records = _run_policies_at(task.point, f"repetition {task.repetition + 1}", spec, task.order, tick)
    for r in records:
        r["host"] = host
    return tuple(sorted(records, key=lambda r: exp.policies.index(r["policy"])))


def run_experiment(exp: Experiment, *, progress: bool | None = None, log: Callable[[str], None] = print, done: list[dict] | None = None) -> list[dict]:
    """Run every point of `exp` on this host; return one summary per point (`summarise_runs`).

    `progress`: None shows a bar when stderr is a terminal (tqdm's rule), True always, False never.
    `done`: a list that receives each point's summary as soon as the point is complete, so a
    caller still has them if a node fails or an interrupt stops the sweep half-way.
    """
    image = exp.kernel_image()
    workloads: dict[str, Workload] = {}
    bar = tqdm(total=exp.runs, unit="run", disable=None if progress is None else not progress, leave=False, dynamic_ncols=True)
    tick = lambda *_: bar.update(1)  # noqa: E731
    ledger = SweepLedger(exp)
    try:
        for task in plan_tasks(exp):
            if task.repetition == 0:
                spec, setup, _ = prepare_point(exp, task.point, image, workloads)
                bar.set_description(f"{task.point.topology} {task.point.workload} {task.point.cache}")
                run_warmups(exp, task.point, spec, exp.warmup, tick)
            summary = ledger.add(RunOutcome(task, run_repetition(exp, task, spec, setup.host, tick), setup))
            if summary is not None:
                if done is not None:
                    done.append(summary)
                bar.clear()
                log(format_point(summary))
    finally:
        bar.close()
    return ledger.summaries()


def _run_policies_at(point: Point, which: str, spec, policies: Sequence[str], tick) -> list[dict]:
    """`run_policies`, with a node failure saying where in the sweep it happened."""
    try:
        return run_policies(spec, policies, each=tick)
    except NodeFailure as exc:
        raise NodeFailure(exc.node, exc.pid, exc.phase, f"{exc.detail} (at {point.label()}, {which})", exc.where, exc.detected_after_s) from None


# --------------------------------------------------------------------------------------------
# Summaries (pure)


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


def _node_summary(recs: list[dict], node: int, seed: int, absolute: bool = True) -> dict:
    times = [t for r in recs if (t := r["per_node"][node]["us_per_request"])] if absolute else []
    return {
        "node": node,
        "us_per_request": summarise(times, seed).to_json() if times else None,
        "emulated_us_per_request": _median([r["per_node"][node]["emulated_us_per_request"] for r in recs]),
    }


def _policy_row(policy: str, recs: list[dict], *, n_nodes: int, cpus_used: int, oversubscribed: bool, seed: int, delays: str, absolute: bool = True) -> dict:
    """One policy's figures at a point, from its records (one per repetition). `absolute`:
    also the throughput and per-node wall times, which only runs on one host may be summarised
    together (`_across_hosts` leaves them None)."""
    lost = [r["pacing_lost_pct"] for r in recs]
    row: dict = {
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
    else:
        measured = summarise(speedups, seed)
        gap, flag = explain_gap(measured, model, lost_pct=max(lost), oversubscribed=oversubscribed, n_nodes=n_nodes, cpus_used=cpus_used)
        if delays == "none":
            flag = None
        row.update(speedup=measured.to_json(), model_speedup=model, significance=paired_test(speedups).to_json(), gap_pct=gap, flag=flag)
    return row


def summarise_point(point: Point, reps: list[list[dict]], *, n_nodes: int, cpus_used: int, oversubscribed: bool, seed: int = 0, delays: str = "model", absolute: bool = True) -> dict:
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


def summarise_runs(point: Point, reps: list[list[dict]], setups: Mapping[str, PointSetup], *, seed: int = 0, delays: str = "model") -> dict:
    """The summary of `point` from its repetitions (in repetition order), each run on the host
    its records name (``host.id``; `setups` has each host's `PointSetup`).

    Absolute times from different machines are never mixed: each host's repetitions are
    summarised on their own (`summarise_point`, with that host's CPUs, time scale and
    calibration). With one host, that is the point's summary, as a local sweep makes it. With
    several, the point has ``per_host`` (each host's own summary) and `_across_hosts` combines
    what is comparable across them."""
    by_host: dict[str, list[list[dict]]] = {}
    for rep in reps:
        by_host.setdefault(_host_of(rep, setups), []).append(rep)
    per_host = []
    for hid, host_reps in by_host.items():
        setup = setups[hid]
        summary = summarise_point(point, host_reps, n_nodes=setup.n_nodes, cpus_used=setup.cpus_used, oversubscribed=setup.oversubscribed, seed=seed, delays=delays)
        summary.update(time_scale=setup.time_scale, delays=delays, calibration=setup.calibration, topology_detail=setup.topology_detail, host_placement=setup.host_placement)
        per_host.append((setup, summary))
    if len(per_host) == 1:
        return per_host[0][1]
    return _across_hosts(point, reps, per_host, seed=seed, delays=delays)


def _host_of(rep: list[dict], setups: Mapping[str, PointSetup]) -> str:
    """The host a repetition ran on: its records' ``host.id``; records of before hosts were
    recorded (tests' made-up ones too) belong to the only setup there is."""
    host = rep[0].get("host")
    if host is None and len(setups) == 1:
        return next(iter(setups))
    return host["id"]


def _across_hosts(point: Point, reps: list[list[dict]], per_host: list[tuple[PointSetup, dict]], *, seed: int, delays: str) -> dict:
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
        "host_placement": None,
    })
    return out


def fidelity_note(n_nodes: int, cpus_used: int, oversubscribed: bool, lost_pct: float) -> str:
    if oversubscribed:
        return (
            f"{n_nodes} nodes on {cpus_used} host CPU(s): emulated-time results (model) stay exact; "
            f"wall-clock fidelity reduced, the nodes ran up to {lost_pct:.1f}% beyond their paced time"
        )
    return f"one host CPU set per node; the nodes ran at most {lost_pct:.1f}% beyond their paced time"


# --------------------------------------------------------------------------------------------
# Output


def _fmt_nodes(per_node: list[dict]) -> str:
    vals = [f"{n['node']}:{n['us_per_request']['median']:.0f}" if n["us_per_request"] else f"{n['node']}:-" for n in per_node]
    return " ".join(vals)


def format_point(s: dict) -> str:
    p = Point(**s["point"])
    timing = f"time scale {s.get('time_scale') or 0:g}" if s.get("delays", "model") == "model" else "delays none (nothing injected: this host's own latencies)"
    if "per_host" in s:
        timing = f"on {s['hosts']} hosts (speedups pooled across them; throughput and per-node times per host, below)"
    head = f"{p.label()}: {s['n_nodes']} nodes, {s['repetitions']} repetitions, {timing}"
    lines = [head, f"  {'policy':<11}{'req/s median+-MAD':>20}{'speedup [95% CI]':>25}{'p':>9}{'model':>8}{'gap':>8}{'remote':>8}  per node us/req (median)"]
    flags = []
    for policy, r in s["policies"].items():
        t = r["throughput_rps"]
        sp = r["speedup"]
        if sp is None:
            sp_txt, p_txt, gap_txt = "1 (baseline)", "-", "-"
        else:
            ci = f"[{sp['ci_low']:.3f}, {sp['ci_high']:.3f}]" if sp["ci_low"] is not None else "[-]"
            sp_txt = f"{sp['median']:.3f} {ci}"
            sig = r["significance"]
            p_txt = "-" if sig["p_value"] is None else f"{sig['p_value']:.3f}" + ("*" if sig["significant"] else " ")
            gap_txt = f"{r['gap_pct']:+.1f}%" + ("!" if r["flag"] else " ")
            if r["flag"]:
                flags.append(f"  ! {policy}: measured {sp['median']:.3f} vs model {r['model_speedup']:.3f} ({r['gap_pct']:+.1f}%): {r['flag']}")
        model = r["model_speedup"]
        t_txt = f"{t['median']:>11.1f} +- {t['mad']:<6.1f}" if t else f"{'-':>11}    {'':<6}"
        lines.append(
            f"  {policy:<11}{t_txt}{sp_txt:>24}{p_txt:>10}{(f'{model:.3f}' if model else '-'):>8}"
            f"{gap_txt:>9}{100 * r['remote_fetch_share']:>7.1f}%  {_fmt_nodes(r['per_node'])}"
        )
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


def format_bench(points: list[dict]) -> str:
    return "\n\n".join(format_point(s) for s in points) + "\n" + LEGEND


CSV_COLUMNS = (
    "topology", "workload", "cache", "user_data", "replicate", "policy", "n_nodes", "repetitions",
    "throughput_median", "throughput_mad", "speedup_median", "speedup_mad", "speedup_ci_low", "speedup_ci_high",
    "p_value", "significant", "model_speedup", "gap_pct", "flag", "remote_fetch_share", "node_spread_pct",
    "pacing_lost_pct_max", "oversubscribed", "per_node_us_per_request", "host",
)


def csv_rows(points: list[dict]) -> list[dict]:
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


def _csv_point(s: dict, point: dict, host: str) -> list[dict]:
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


def write_csv(points: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in csv_rows(points):
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})


# --------------------------------------------------------------------------------------------
# compare A.json B.json


def bench_doc_problem(doc: dict) -> str | None:
    """What keeps `doc` (a bench JSON of this `BENCH_SCHEMA`) from being compared or plotted,
    or None: the structure `compare_docs` and `plot.plot_bench` read, checked up front so that a
    damaged or hand-edited file is refused in one line, not with a traceback half-way."""
    points = doc.get("points")
    if not isinstance(points, list) or not points:
        return "has no points (a list of at least one)"
    if not isinstance(doc.get("experiment"), dict):
        return "has no experiment settings (an object)"
    for i, s in enumerate(points):
        where = f"points[{i}]"
        if not isinstance(s, dict):
            return f"{where} is not an object"
        if not isinstance(s.get("point"), dict) or any(a not in s["point"] for a in AXES):
            return f"{where}: point must be an object with {', '.join(AXES)}"
        policies = s.get("policies")
        if not isinstance(policies, dict) or not policies:
            return f"{where}: policies must be a non-empty object"
        for name, row in policies.items():
            if not isinstance(row, dict) or any(k not in row for k in ("speedup", "model_speedup", "per_node", "throughput_rps")):
                return f"{where}: policies.{name} lacks speedup, model_speedup, per_node or throughput_rps"
        runs = s.get("runs")
        if not isinstance(runs, list) or not all(
            isinstance(rep, list) and all(isinstance(r, dict) and all(k in r for k in ("policy", "throughput_rps", "speedup_vs_single")) for r in rep)
            for rep in runs
        ):
            return f"{where}: runs must be a list of repetitions, each a list of policy records"
    return None


def _index(doc: dict) -> dict[tuple, dict]:
    return {tuple(s["point"][a] for a in AXES): s for s in doc["points"]}


def compare_docs(a: dict, b: dict) -> dict:
    """Per point and policy in both documents: each side's median speedup and throughput, the
    change, and whether it is significant (Welch's t-test on the per-repetition figures, since
    the two files are independent runs)."""
    ia, ib = _index(a), _index(b)
    rows = []
    for key in [k for k in ia if k in ib]:
        sa, sb = ia[key], ib[key]
        for policy in [p for p in sa["policies"] if p in sb["policies"]]:
            def figures(point: dict, field: str) -> list[float]:
                return [r[field] for rep in point["runs"] for r in rep if r["policy"] == policy and r[field] is not None]

            row = {"point": dict(zip(AXES, key)), "policy": policy}
            for field, name in (("throughput_rps", "throughput"), ("speedup_vs_single", "speedup")):
                xa, xb = figures(sa, field), figures(sb, field)
                if policy == "single" and name == "speedup":
                    continue
                if name == "throughput" and ("per_host" in sa or "per_host" in sb):
                    continue  # absolute times of several hosts are never pooled (summarise_runs)
                if not xa or not xb:
                    continue
                ma, mb = float(np.median(xa)), float(np.median(xb))
                row[name] = {"a": ma, "b": mb, "change_pct": 100.0 * (mb / ma - 1.0), "test": welch_test(xa, xb).to_json()}
            rows.append(row)
    only_a = [dict(zip(AXES, k)) for k in ia if k not in ib]
    only_b = [dict(zip(AXES, k)) for k in ib if k not in ia]
    return {"rows": rows, "only_in_a": only_a, "only_in_b": only_b}


def format_compare(cmp: dict, name_a: str, name_b: str) -> str:
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
