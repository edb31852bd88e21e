"""Running a bench sweep: a point set up on this host, its repetitions run, their outcomes gathered.

A sweep is planned as tasks (`experiment.plan_tasks`), one per measured repetition of a point,
each running every policy of that repetition; their outcomes are gathered by a `SweepLedger`,
which summarises each point once its last task is in (`summary.summarise_runs`). The local sweep
(`run_experiment`) and a sweep on a Dask cluster (`cluster`, ``bench --cluster``) share all of
that, and the same per-host steps: `prepare_point` (the run spec, the time scale calibrated once
per point and host), `run_warmups` and `run_repetition`. A task that fails is a `RunFailure`,
reported, never retried.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from numaemu.errors import NodeFailure
from numaemu.host.cpus import host_cpus
from numaemu.host.files import load_topology, load_workload
from numaemu.measure.experiment import Experiment, Point, RunTask, plan_tasks
from numaemu.measure.report import format_point
from numaemu.measure.summary import PointSetup, summarise_runs
from numaemu.model.binding import bind_to_host, parse_host_cpus
from numaemu.model.hardware_presets import resolve_hardware
from numaemu.model.image import KernelImage
from numaemu.model.topology import Topology
from numaemu.model.workloads import Workload
from numaemu.runtime.policy_run import RunSpec, prepare_spec, run_policies
from numaemu.runtime.results import host_record

__all__ = [
    "WARMUP_FRACTION",
    "RunFailure",
    "failure_line",
    "RunOutcome",
    "SweepLedger",
    "prepare_point",
    "run_experiment",
    "run_repetition",
    "run_warmups",
]

WARMUP_FRACTION = 0.25  # a warmup repetition runs a quarter of the measured duration

Tick = Callable[[str, dict[str, Any], dict[str, Any]], None]  # `run_policies`'s `each`: called once a policy's run is done


def failure_line(failure: dict[str, Any]) -> str:
    """How a failed run is named, from its record (`RunFailure.to_json`, or the JSON's
    ``failed_runs``)."""
    return f"run failed on {failure['host'] or 'no host'}: {failure['detail']}"


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
        return failure_line(self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {**self.task.to_json(), "host": self.host, "detail": self.detail, "node": self.node, "pid": self.pid, "phase": self.phase, "where": self.where}


@dataclass(frozen=True)
class RunOutcome:
    """What one task produced: its records (with speedups, in the experiment's policy order,
    each carrying its host) and its host's setup of the point, or its failure."""

    task: RunTask
    records: tuple[dict[str, Any], ...] = ()
    setup: PointSetup | None = None
    failure: RunFailure | None = None
    calibrated: tuple[float, dict[str, Any]] | None = None  # the time scale its host calibrated (cluster: cached per host), failed or not
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
        self._reps: dict[int, dict[int, list[dict[str, Any]]]] = {}
        self._setups: dict[int, dict[str, PointSetup]] = {}
        self._summaries: dict[int, dict[str, Any]] = {}
        self.failures: list[RunFailure] = []
        self.failed_points: list[Point] = []

    def add(self, outcome: RunOutcome) -> dict[str, Any] | None:
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
    def hosts(self) -> dict[str, dict[str, Any]]:
        """Host id -> metadata, of every host that ran a task successfully."""
        return {hid: setup.host for per in self._setups.values() for hid, setup in per.items()}

    @property
    def complete(self) -> bool:
        return not any(self._left.values())

    def summaries(self) -> list[dict[str, Any]]:
        """The completed points' summaries, in the experiment's order."""
        return [self._summaries[pi] for pi in sorted(self._summaries)]


# --------------------------------------------------------------------------------------------
# Running


def prepare_point(
    exp: Experiment, point: Point, image: KernelImage, workloads: dict[str, Workload], calibrated: tuple[float, dict[str, Any]] | None = None,
    *, topo: Topology | None = None, host: dict[str, Any] | None = None,
) -> tuple[RunSpec, PointSetup, tuple[float, dict[str, Any]] | None]:
    """The run spec of `point` on this host, its `PointSetup`, and the calibration made for it
    (or reused: `calibrated`), to be reused for the point's later tasks on this host. Calibrates
    unless --time-scale was given or delays are none. `workloads` caches them by name; `topo`
    and `host` (`host_record`), if the caller has them already, are not read again."""
    if topo is None:
        topo = load_topology(point.topology, sysfs_root=exp.sysfs_root, local_ns=exp.local_ns)
    override = parse_host_cpus(exp.host_cpus) if exp.host_cpus is not None else None
    placement = bind_to_host(topo, host_cpus(), override)
    if point.workload not in workloads:
        workloads[point.workload] = load_workload(point.workload, image, exp.seed, exp.trace if point.workload == "trace" else None)
    spec, cal = prepare_spec(
        topo, placement, image, workloads[point.workload], cold=point.cache == "cold", user_local=point.user_data == "local",
        duration_s=exp.duration_s, requests=exp.requests, migrate_rate=exp.migrate_rate, seed=exp.seed,
        start_method=exp.start_method, replicate=point.replicate, time_scale=exp.time_scale, delays=exp.delays,
        pt_style=exp.pt_style, replicas_every=exp.replicas_every, calibrated=calibrated, hardware=resolve_hardware(exp.hardware, topo.hardware),
    )
    setup = PointSetup(
        host=host if host is not None else host_record(), n_nodes=topo.n_nodes, cpus_used=placement.n_cpus_used,
        oversubscribed=placement.oversubscribed, time_scale=spec.time_scale if exp.delays == "model" else None, calibration=cal,
        topology_detail=topo.to_json(), host_binding=placement.to_json(),
    )
    made = (spec.time_scale, cal) if cal else None
    return spec, setup, made


def run_warmups(exp: Experiment, point: Point, spec: RunSpec, count: int, tick: Tick | None = None) -> None:
    """`count` discarded repetitions of `point`, a quarter as long as the measured ones."""
    warm = dataclasses.replace(
        spec,
        duration_s=exp.duration_s * WARMUP_FRACTION if exp.duration_s else None,
        requests=max(1, int(exp.requests * WARMUP_FRACTION)) if exp.requests else None,
    )
    for w in range(count):
        _run_policies_at(point, f"warmup {w + 1}", warm, exp.policies, tick)


def run_repetition(exp: Experiment, task: RunTask, spec: RunSpec, host: dict[str, Any], tick: Tick | None = None) -> tuple[dict[str, Any], ...]:
    """Run `task` (every policy of one repetition, in its rotated order); return the records in
    the experiment's policy order, each with the `host` (results.host_record) it ran on."""
    records = _run_policies_at(task.point, f"repetition {task.repetition + 1}", spec, task.order, tick)
    for r in records:
        r["host"] = host
    return tuple(sorted(records, key=lambda r: exp.policies.index(r["policy"])))


def run_experiment(exp: Experiment, *, progress: bool | None = None, log: Callable[[str], None] = print, done: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Run every point of `exp` on this host; return one summary per point (`summarise_runs`).

    `progress`: None shows a bar when stderr is a terminal (tqdm's rule), True always, False never.
    `done`: a list that receives each point's summary as soon as the point is complete, so a
    caller still has them if a node fails or an interrupt stops the sweep half-way.
    """
    image = exp.kernel_image()
    workloads: dict[str, Workload] = {}
    bar = tqdm(total=exp.runs, unit="run", disable=None if progress is None else not progress, leave=False, dynamic_ncols=True)

    def tick(*_: object) -> None:
        bar.update(1)

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


def _run_policies_at(point: Point, which: str, spec: RunSpec, policies: Sequence[str], tick: Tick | None) -> list[dict[str, Any]]:
    """`run_policies`, with a node failure saying where in the sweep it happened."""
    try:
        return run_policies(spec, policies, each=tick)
    except NodeFailure as exc:
        raise NodeFailure(exc.node, exc.pid, exc.phase, f"{exc.detail} (at {point.label()}, {which})", exc.where, exc.detected_after_s) from None
