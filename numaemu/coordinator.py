"""The coordinator: owns every OS resource of a run, starts the nodes, and collects results.

`run_policy` runs one placement policy in fresh node processes (as pyperf runs each benchmark
in fresh workers): create the segments, write the master image and the control block, start one
pinned worker per node, wait until every node has filled its memory, give one start time to all,
wait for their reports, then stop and unlink everything, on every path, errors included.

A node that dies or fails is reported as `NodeFailure` with its node, pid and phase; the other
nodes are told to abort at once, and every wait has a deadline.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_any

import numpy as np

from .cache import DirectMappedCache
from .clock import measure_oversleep_ns, time_scale
from .engine import NodeEngine
from .errors import NodeFailure, UsageError
from .image import LINE_SIZE, KernelImage
from .memory import (
    CONTROL_MAGIC,
    CONTROL_VERSION,
    PHASES,
    STATE_ABORT,
    STATE_RUN,
    TASK_SLOT,
    Control,
    MemoryLayout,
    Segment,
    new_token,
    segment_name,
)
from .numamaps import expected_host_nodes, read_placement
from .pagetables import page_table_cost, walk_profile
from .placement import Placement, place, serving_nodes
from .results import add_speedups, policy_record
from .tasks import TASKS_PER_NODE, plan_requests
from .topology import HostPlacement, Topology
from .worker import (
    SETUP_TIMEOUT_S,
    WorkerConfig,
    fill_partition,
    run_batch,
    worker_main,
)
from .workloads import Workload

__all__ = ["NodeSession", "RunSpec", "run_policy", "run_policies", "prepare_spec", "LocalNode", "local_node", "calibrate_scale", "expected_checksum", "place_for", "START_METHODS", "DELAYS"]

START_METHODS = ("fork", "spawn", "forkserver")
# --delays: "model" paces every batch to the emulated topology's latencies (clock.Pacer);
# "none" paces nothing, so wall time is this host's own (on a real NUMA host, remote frames are
# really remote) while the emulated-time (model) figures are still counted.
DELAYS = ("model", "none")
START_DELAY_NS = 20_000_000  # every node starts at the same instant, 20 ms after the signal
JOIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RunSpec:
    """Everything one run of one policy needs, already validated."""

    topology: Topology
    host: HostPlacement
    image: KernelImage
    workload: Workload
    cold: bool
    user_local: bool
    duration_s: float | None
    requests: int | None
    migrate_rate: float
    seed: int
    start_method: str
    scale: float
    replicate: str = "text+rodata"
    oversleep_ns: int = 60_000
    pt_style: str = "none"  # pagetables.PT_STYLES
    replicas_every: int = 1  # replicate: a copy on every K-th node (IRIX)
    delays: str = "model"  # DELAYS


def check_reachable(topology: Topology, placement: Placement) -> None:
    for node in range(topology.n_nodes):
        for home in placement.homes_of(node):
            if topology.latency_ns[node][home] is None:
                raise UsageError(
                    "--policy",
                    f"{placement.policy}: node {node} cannot reach node {home}, whose memory backs its "
                    f"kernel image (distance {topology.distance[node][home]} = unreachable)",
                )


class NodeSession:
    """Owns every OS resource of one run of node processes; `close` frees them on every path.

    Create segments, open the control block, start one worker per node, wait until every node is
    ready, give one start time to all, collect their reports. As CPython's multiprocessing
    documents for shared memory: the coordinator creates and unlinks; workers only attach.
    """

    def __init__(self, start_method: str, n_nodes: int, n_tasks: int) -> None:
        self.token = new_token()
        self.ctx = mp.get_context(start_method)
        self.n_nodes = n_nodes
        self.n_tasks = n_tasks
        self.segments: list[Segment] = []
        self.procs: list[mp.process.BaseProcess] = []
        self.conns: list = []
        self.ctl: Control | None = None

    def __enter__(self) -> NodeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, kind: str, size: int) -> Segment:
        seg = Segment.create(segment_name(kind, self.token), size)
        self.segments.append(seg)
        return seg

    def open_control(self) -> Control:
        seg = self.create("ctl", Control.size(self.n_nodes, self.n_tasks))
        self.ctl_name = seg.name
        ctl = self.ctl = Control(seg, self.n_nodes, self.n_tasks)
        ctl.set("magic", CONTROL_MAGIC)
        ctl.set("version", CONTROL_VERSION)
        ctl.set("n_nodes", self.n_nodes)
        ctl.set("n_tasks", self.n_tasks)
        ctl.set("coordinator_pid", os.getpid())
        return ctl

    def start(self, target: Callable, configs: list) -> None:
        for node, cfg in enumerate(configs):
            parent, child = self.ctx.Pipe(duplex=False)
            proc = self.ctx.Process(target=target, args=(cfg, child), name=f"numaemu-node{node}", daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)

    def wait_ready(self) -> None:
        assert self.ctl is not None
        _wait_phase(self.ctl, self.procs, self.conns, "ready", time.monotonic() + SETUP_TIMEOUT_S)

    def go(self, duration_s: float | None) -> None:
        assert self.ctl is not None
        start = time.perf_counter_ns() + START_DELAY_NS
        self.ctl.set("start_ns", start)
        self.ctl.set("end_ns", start + int(duration_s * 1e9) if duration_s else 0)
        self.ctl.set("state", STATE_RUN)

    def collect(self, limit_s: float) -> list[dict]:
        assert self.ctl is not None
        reports = _collect(self.ctl, self.procs, self.conns, limit_s)
        for proc in self.procs:
            proc.join(JOIN_TIMEOUT_S)
        return sorted(reports, key=lambda r: r["node"])

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        if self.ctl is not None:
            self.ctl.set("state", STATE_ABORT)
        self.ctl = None
        _stop(self.procs)
        for c in self.conns:
            c.close()
        for seg in self.segments:
            seg.close()
            seg.unlink()


def run_policy(spec: RunSpec, policy: str, *, on_ready: Callable[[Segment, MemoryLayout, Placement, list[int]], None] | None = None) -> dict:
    """Run `policy` in fresh node processes; return its raw per-node reports and run facts.

    `on_ready` (for tests) is called once every node has filled its memory, before the start,
    with the ``mem`` segment, its layout, the placement and the node pids.
    """
    topo, n = spec.topology, spec.topology.n_nodes
    placement, mem_serving = place_for(spec.topology, spec.image, policy, spec.replicate, spec.replicas_every)
    check_reachable(topo, placement)
    master_node = min(mem_serving)  # the first node with memory: the single copy, the shared tables
    tables = page_table_cost(spec.image, spec.pt_style, policy, n, placement.serving or mem_serving, spec.replicate)
    walks = None
    if tables is not None:
        wl = spec.workload
        walks = walk_profile(spec.image, wl.lines, wl.starts, wl.lengths, tables.granule, cold=spec.cold)
    has_memory = np.array([nd.memory_bytes > 0 for nd in topo.nodes])
    layout = MemoryLayout.for_nodes(tuple(placement.image_bytes(i) for i in range(n)))
    n_tasks = TASKS_PER_NODE * n
    with NodeSession(spec.start_method, n, n_tasks) as session:
        ctl = session.open_control()
        master = session.create("master", len(spec.image.data))
        mem = session.create("mem", layout.size)
        master.array(np.uint8)[:] = spec.image.data
        ctl.tasks["owner"] = np.arange(n_tasks) % n
        if spec.requests is None:
            ctl.tasks["budget"] = -1
        else:
            share, extra = divmod(spec.requests, n_tasks)
            ctl.tasks["budget"] = share + (np.arange(n_tasks) < extra)

        configs = []
        for node in range(n):
            lat = tuple(float(x) if x is not None else float("inf") for x in topo.latency_ns[node])
            configs.append(
                WorkerConfig(
                    node=node,
                    n_nodes=n,
                    n_tasks=n_tasks,
                    mem_name=mem.name,
                    master_name=master.name,
                    ctl_name=session.ctl_name,
                    host_cpus=spec.host.cpus[node],
                    hosted=placement.hosted[node],
                    table=placement.tables[node],
                    layout=layout,
                    latency_row=lat,
                    workload=spec.workload,
                    cold=spec.cold,
                    user_local=spec.user_local,
                    seed=spec.seed,
                    migrate_rate=spec.migrate_rate,
                    scale=spec.scale,
                    shared_core=spec.host.oversubscribed,
                    oversleep_ns=spec.oversleep_ns,
                    coordinator_pid=os.getpid(),
                    delays=spec.delays,
                    walks=None if walks is None else walks.per_template,
                    walk_share=0.0 if walks is None else walks.miss_share,
                    walk_home=None if walks is None else (placement.serving[node] if placement.serving else master_node),
                    user_home=mem_serving[node],
                    user_homes=np.flatnonzero(has_memory) if not has_memory.all() else None,
                )
            )
        session.start(worker_main, configs)
        session.wait_ready()
        # Every node has first-touched its own partition and touched no other yet: where its
        # mem mapping's pages are is where its partition landed.
        placement_report = read_placement(session.pids, mem.name, expected_host_nodes(topo))
        if on_ready is not None:
            on_ready(mem, layout, placement, session.pids)
        session.go(spec.duration_s)
        reports = session.collect((spec.duration_s or 0) + 60.0 + (spec.requests or 0) * 0.01)
        return {
            "policy": policy,
            "placement": placement,
            "layout": layout,
            "reports": reports,
            "tasks": ctl.tasks.copy(),
            "placement_report": placement_report,
            "page_tables": tables,
            "walk_profile": walks,
        }


def place_for(
    topo: Topology, image: KernelImage, policy: str, replicate: str = "text+rodata", replicas_every: int = 1
) -> tuple[Placement, tuple[int, ...]]:
    """The placement of `policy` on `topo`, and per node the nearest node with memory (itself
    if it has some): memoryless nodes and ``--replicas-every`` are decided here."""
    has_memory = [nd.memory_bytes > 0 for nd in topo.nodes]
    if not any(has_memory):
        raise UsageError("--topology", f"{topo.name}: no node has memory; at least one must hold the image")
    mem_serving = serving_nodes(topo.distance, has_memory, 1)
    serving = serving_nodes(topo.distance, has_memory, replicas_every) if policy == "replicate" else mem_serving
    return place(image, topo.n_nodes, policy, replicate, serving=serving), mem_serving


def run_policies(spec: RunSpec, policies: Sequence[str], *, each: Callable[[str, dict, dict], None] | None = None) -> list[dict]:
    """Run each policy in turn, in fresh node processes; return their records with speedups
    against ``single`` of this same call. `each(policy, raw_run, record)` sees every raw run."""
    records = []
    for policy in policies:
        run = run_policy(spec, policy)
        rec = policy_record(policy, run, spec.topology.n_nodes, spec.duration_s)
        if each is not None:
            each(policy, run, rec)
        records.append(rec)
    add_speedups(records)
    return records


def prepare_spec(
    topology: Topology,
    host: HostPlacement,
    image: KernelImage,
    workload: Workload,
    *,
    cold: bool,
    user_local: bool,
    duration_s: float | None,
    requests: int | None,
    migrate_rate: float,
    seed: int,
    start_method: str,
    replicate: str,
    time_scale: float | None = None,
    pt_style: str = "none",
    replicas_every: int = 1,
    delays: str = "model",
) -> tuple[RunSpec, dict]:
    """A `RunSpec` with its time scale: `time_scale` if given, else calibrated on this host for
    this workload (`calibrate_scale`); also returns the calibration's figures ({} if given).
    With ``delays="none"`` nothing is paced, so nothing is calibrated ({} too)."""
    if delays not in DELAYS:
        raise UsageError("--delays", f"'{delays}' is not one of {', '.join(DELAYS)}")
    if delays == "none" and time_scale:
        raise UsageError("--time-scale", "is for --delays model; with --delays none nothing is paced")
    cal: dict = {}
    if delays == "none":
        scale = 1.0  # never used: the workers run unpaced (clock.Unpaced)
    elif time_scale:
        scale = time_scale
    else:
        sharing = topology.n_nodes / host.n_cpus_used
        scale, cal = calibrate_scale(image, workload, topology, cold=cold, user_local=user_local, sharing=sharing, seed=seed)
    spec = RunSpec(
        topology=topology,
        host=host,
        image=image,
        workload=workload,
        cold=cold,
        user_local=user_local,
        duration_s=duration_s,
        requests=requests,
        migrate_rate=migrate_rate,
        seed=seed,
        start_method=start_method,
        scale=scale,
        replicate=replicate,
        oversleep_ns=cal.get("oversleep_ns", 60_000),
        pt_style=pt_style,
        replicas_every=replicas_every,
        delays=delays,
    )
    return spec, cal


def _node_phase(ctl: Control, node: int) -> str:
    return PHASES[int(ctl.nodes["phase"][node])]


def _failure(ctl: Control, procs, node: int, detail: str, phase: str | None = None) -> NodeFailure:
    return NodeFailure(node, procs[node].pid, phase or _node_phase(ctl, node), detail)


def _wait_phase(ctl: Control, procs, conns, phase: str, deadline: float) -> None:
    """Wait until every node reached `phase`; fail fast when one dies or reports an error."""
    target = PHASES.index(phase)
    while not np.all(ctl.nodes["phase"] >= target):
        ready = wait_any([p.sentinel for p in procs] + list(conns), timeout=0.01)
        for node, (proc, conn) in enumerate(zip(procs, conns)):
            if conn in ready:
                msg = conn.recv()
                raise _failure(ctl, procs, node, msg.get("error", "unexpected message"), msg.get("phase"))
            if proc.sentinel in ready and not proc.is_alive():
                raise _failure(ctl, procs, node, f"process exited with code {proc.exitcode}")
        if time.monotonic() > deadline:
            late = [i for i in range(len(procs)) if ctl.nodes["phase"][i] < target]
            raise _failure(ctl, procs, late[0], f"did not reach phase '{phase}' in time")


def _collect(ctl: Control, procs, conns, limit: float) -> list[dict]:
    deadline = time.monotonic() + limit
    reports: dict[int, dict] = {}
    pending = dict(enumerate(conns))
    while pending:
        ready = wait_any(list(pending.values()) + [procs[i].sentinel for i in pending], timeout=0.1)
        for node, conn in list(pending.items()):
            if conn in ready:
                try:
                    msg = conn.recv()
                except EOFError:
                    raise _failure(ctl, procs, node, f"process exited with code {procs[node].exitcode}") from None
                if "error" in msg:
                    raise _failure(ctl, procs, node, msg["error"], msg.get("phase"))
                reports[node] = msg
                del pending[node]
            elif procs[node].sentinel in ready and not conn.poll():
                procs[node].join(0.1)
                raise _failure(ctl, procs, node, f"process exited with code {procs[node].exitcode}")
        if pending and time.monotonic() > deadline:
            node = min(pending)
            raise _failure(ctl, procs, node, f"no report within {limit:.0f} s")
    return list(reports.values())


def _stop(procs) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(JOIN_TIMEOUT_S)


@dataclass(frozen=True)
class LocalNode:
    """One node's engine in-process, on all-local memory, with its tasks: what
    `calibrate_scale` (and ``numaemu calibrate``) times, batch by batch, as a worker runs them."""

    engine: NodeEngine
    tasks: np.ndarray
    seed: int

    def batch(self) -> float:
        """Run one batch of every task (no migration); return its emulated ns."""
        emulated, _ = run_batch(self.engine, self.tasks, np.arange(len(self.tasks)), self.seed, 0.0)
        return emulated


def local_node(image: KernelImage, workload: Workload, topology: Topology, *, cold: bool, user_local: bool, seed: int) -> LocalNode:
    """A node holding the whole image, charged the topology's smallest latency, with its memory
    filled as a worker fills it."""
    placement = place(image, 1, "single")
    layout = MemoryLayout.for_nodes((placement.image_bytes(0),))
    mem = np.zeros(layout.size, dtype=np.uint8)
    fill_partition(mem, image.data, layout, 0, placement.hosted[0], seed)
    local = min(x for row in topology.latency_ns for x in row if x is not None)
    engine = NodeEngine(0, mem, placement.tables[0], layout.part_offset, (layout.user_offset(0),), layout.user_bytes, np.array([local]), workload, cold=cold, user_local=user_local, cache=DirectMappedCache(), seed=seed)
    engine.prepare()
    tasks = np.zeros(TASKS_PER_NODE, dtype=TASK_SLOT)
    tasks["budget"] = -1
    return LocalNode(engine, tasks, seed)


def calibrate_scale(image: KernelImage, workload: Workload, topology: Topology, *, cold: bool, user_local: bool, sharing: float, seed: int, seconds: float = 0.3) -> tuple[float, dict]:
    """Time the node engine in-process on all-local memory and choose the time scale.

    The all-local case has the least emulated time per request, so the scale that fits it fits
    every policy; every policy of a run then uses the same scale.
    """
    node = local_node(image, workload, topology, cold=cold, user_local=user_local, seed=seed)
    emulated = 0.0
    for _ in range(2):  # warm up: page faults, caches
        node.batch()
    t0 = time.perf_counter_ns()
    batches = 0
    while time.perf_counter_ns() - t0 < seconds * 1e9 or batches < 3:
        emulated += node.batch()
        batches += 1
    processing = time.perf_counter_ns() - t0
    scale = time_scale(processing, emulated, sharing)
    return scale, {
        "processing_ns_per_batch": processing / batches,
        "emulated_ns_per_batch": emulated / batches,
        "sharing": sharing,
        "oversleep_ns": measure_oversleep_ns(),
    }


def expected_checksum(master: np.ndarray, workload: Workload, seed: int, task: int, n_requests: int) -> int:
    """Replay `task`'s first `n_requests` requests against the master image (see tasks.py)."""
    words = master.view(np.uint64).reshape(-1, LINE_SIZE // 8)
    total = 0
    step = 4096
    for first in range(0, n_requests, step):
        count = min(step, n_requests - first)
        plan = plan_requests(seed, task, first, count, workload.n_templates, 0, 1, 0.0)
        lines = workload.gather(plan.templates)
        total += int(words.take(lines, axis=0).sum(dtype=np.uint64))
    return total & ((1 << 64) - 1)
