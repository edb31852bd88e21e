"""One run of placement policies: what a ``numaemu run`` (and a bench repetition) does.

`run_policy` runs one policy in fresh node processes (as pyperf runs each benchmark in fresh
workers), through a `supervisor.NodeSession`: write the master image and the tasks, build each
node's `WorkerConfig` (its page table, its latency row, its page-walk profile), start, wait until
every node is ready, read where its memory landed (numa_maps), go, collect. `run_policies` runs
each policy in turn and adds the speedups against ``single``; `prepare_spec` fixes the time scale.
With ``--recover`` a dead node's batch in flight is undone from its journal
(`worker.restore_journal`) and a fresh process of the same node takes over its tasks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from numaemu.errors import UsageError
from numaemu.host.numamaps import expected_host_nodes, read_numa_maps
from numaemu.host.segments import Control, MemoryLayout, Segment
from numaemu.model.binding import HostBinding
from numaemu.model.hardware import SIMPLE, HardwareProfile
from numaemu.model.image import KernelImage
from numaemu.model.node_hardware import NodeHardware, llc_copies, page_kinds, page_shift_for
from numaemu.model.pagetables import WalkProfile, page_table_cost, walk_profile
from numaemu.model.placement import Placement, check_reachable, place_for
from numaemu.model.tasks import TASKS_PER_NODE
from numaemu.model.topology import Topology
from numaemu.model.workloads import Workload
from numaemu.runtime.contention_pass import queueing_for
from numaemu.runtime.inprocess import calibrate_scale
from numaemu.runtime.results import add_speedups, policy_record
from numaemu.runtime.run_node import WorkerConfig, restore_journal, worker_main
from numaemu.runtime.supervisor import NodeSession

__all__ = ["RunSpec", "run_policy", "run_policies", "prepare_spec", "START_METHODS", "DELAYS"]

START_METHODS = ("fork", "spawn", "forkserver")
# --delays: "model" paces every batch to the emulated topology's latencies (clock.Pacer);
# "none" paces nothing, so wall time is this host's own (on a real NUMA host, remote frames are
# really remote) while the emulated-time (model) figures are still counted.
DELAYS = ("model", "none")


@dataclass(frozen=True)
class RunSpec:
    """Everything one run of one policy needs, already validated."""

    topology: Topology
    host: HostBinding
    image: KernelImage
    workload: Workload
    cold: bool
    user_local: bool
    duration_s: float | None
    requests: int | None
    migrate_rate: float
    seed: int
    start_method: str
    time_scale: float  # wall ns per emulated ns
    replicate: str = "text+rodata"
    oversleep_ns: int = 60_000
    pt_style: str = "none"  # pagetables.PT_STYLES
    replicas_every: int = 1  # replicate: a copy on every K-th node (IRIX)
    delays: str = "model"  # DELAYS
    recover: int = 0  # node deaths replaced per policy (--recover: MAX_RECOVERIES); 0: a death fails the run
    hardware: HardwareProfile = SIMPLE  # --hardware: the caches, TLBs and memory system charged


def run_policy(spec: RunSpec, policy: str, *, on_ready: Callable[[Segment, MemoryLayout, Placement, list[int]], None] | None = None) -> dict[str, Any]:
    """Run `policy` in fresh node processes; return its raw per-node reports and run facts.

    `on_ready` (for tests) is called once every node has filled its memory, before the start,
    with the ``mem`` segment, its layout, the placement and the node pids.
    """
    topo, n = spec.topology, spec.topology.n_nodes
    placement, mem_serving = place_for(spec.topology, spec.image, policy, spec.replicate, spec.replicas_every)
    check_reachable(topo, placement)
    tables = page_table_cost(spec.image, spec.pt_style, policy, n, placement.serving or mem_serving, spec.replicate)
    walks = None
    if tables is not None:
        wl = spec.workload
        walks = walk_profile(spec.image, wl.lines, wl.starts, wl.lengths, tables.granule, cold=spec.cold)
    layout = MemoryLayout.for_nodes(tuple(placement.image_bytes(i) for i in range(n)))
    n_tasks = TASKS_PER_NODE * n
    ctl: Control | None = None
    configs = _worker_configs(spec, placement, layout, mem_serving, walks, "", "", "", n_tasks, policy)
    queueing = traffic = None
    if not spec.hardware.simple:
        configs, queueing, traffic = queueing_for(configs, topo, layout.size)

    def repair(dead: list[int]) -> dict[int, dict[str, Any]]:
        assert ctl is not None
        # The dead process's report is lost: its requests are in its tasks' slots (and verify),
        # not in the per-node figures; say how many it had published.
        return {d: {"task_slots_rolled_back": restore_journal(ctl, d), "requests_before": int(ctl.nodes["requests"][d])} for d in dead}

    with NodeSession(spec.start_method, n, n_tasks, max_recoveries=spec.recover, repair=repair) as session:
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

        configs = [replace(cfg, mem_name=mem.name, master_name=master.name, ctl_name=session.ctl_name) for cfg in configs]
        session.start(worker_main, configs)
        session.wait_ready()
        # Every node has first-touched its own partition and touched no other yet: where its
        # mem mapping's pages are is where its partition landed.
        numa_maps = read_numa_maps(session.pids, mem.name, expected_host_nodes(topo))
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
            "numa_maps": numa_maps,
            "page_tables": tables,
            "walk_profile": walks,
            "recoveries": session.recoveries,
            "hardware": spec.hardware,
            "queueing": queueing,
            "traffic": traffic,
        }




def _worker_configs(spec: RunSpec, placement: Placement, layout: MemoryLayout, mem_serving: tuple[int, ...], walks: WalkProfile | None,
                    mem_name: str, master_name: str, ctl_name: str, n_tasks: int, policy: str = "single") -> list[WorkerConfig]:
    """Each node's `WorkerConfig`: its page table and hosted pages, its row of latencies, its
    page-walk profile (``--pt-style``), its share of the hardware profile and where its user
    data lives."""
    topo, n = spec.topology, spec.topology.n_nodes
    master_node = min(mem_serving)  # the first node with memory: the single copy, the shared tables
    has_memory = np.array([nd.memory_bytes > 0 for nd in topo.nodes])
    hw = spec.hardware
    kinds = None if hw.simple else page_kinds(spec.image)
    rate = spec.workload.forks_per_kernel_us
    # The x86 design gives every process a PGD on each node with memory (for_each_replica, RFC
    # 07/12) once the text is replicated; a single copy keeps the base kernel's one PGD.
    serving = tuple(placement.serving) if placement.serving else tuple(master_node for _ in range(n))
    pgd_nodes = tuple(sorted(set(serving))) if spec.pt_style == "x86" and policy == "replicate" else ()
    configs = []
    for node in range(n):
        lat = tuple(float(x) if x is not None else float("inf") for x in topo.latency_ns[node])
        node_hw = None if hw.simple else NodeHardware(
            profile=hw, page_shift=page_shift_for(spec.pt_style), llc_copies=llc_copies(hw, node, serving),
            walk_home=serving[node], queue_row=None, pgd_nodes=pgd_nodes, forks_per_kernel_ns=None if rate is None else rate / 1e3)
        configs.append(
            WorkerConfig(
                node=node,
                n_nodes=n,
                n_tasks=n_tasks,
                mem_name=mem_name,
                master_name=master_name,
                ctl_name=ctl_name,
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
                time_scale=spec.time_scale,
                shared_core=spec.host.oversubscribed,
                oversleep_ns=spec.oversleep_ns,
                coordinator_pid=os.getpid(),
                delays=spec.delays,
                walks=None if walks is None else walks.per_template,
                walk_share=0.0 if walks is None else walks.miss_share,
                walk_home=None if walks is None else (placement.serving[node] if placement.serving else master_node),
                user_home=mem_serving[node],
                user_homes=np.flatnonzero(has_memory) if not has_memory.all() else None,
                hardware=node_hw,
                page_kind=kinds,
            )
        )
    return configs


def run_policies(spec: RunSpec, policies: Sequence[str], *, each: Callable[[str, dict[str, Any], dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run each policy in turn, in fresh node processes; return their records with speedups
    against ``single`` of this same call. `each(policy, raw_run, record)` sees every raw run."""
    records = []
    for policy in policies:
        run = run_policy(spec, policy)
        rec = policy_record(policy, run, spec.topology.n_nodes, spec.duration_s)
        if spec.recover:
            rec["recoveries"] = run["recoveries"]
        if each is not None:
            each(policy, run, rec)
        records.append(rec)
    add_speedups(records)
    return records


def prepare_spec(
    topology: Topology,
    host: HostBinding,
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
    calibrated: tuple[float, dict[str, Any]] | None = None,
    hardware: HardwareProfile = SIMPLE,
) -> tuple[RunSpec, dict[str, Any]]:
    """A `RunSpec` with its time scale: `time_scale` if given, else calibrated on this host for
    this workload (`calibrate_scale`); also returns the calibration's figures ({} if given).
    With ``delays="none"`` nothing is paced, so nothing is calibrated ({} too).

    `calibrated`: a (scale, figures) pair `calibrate_scale` already returned on this host for
    the same point, used as if just measured (``bench --cluster`` calibrates once per host and
    point, not once per task); its figures include the measured oversleep the pacer needs."""
    if delays not in DELAYS:
        raise UsageError("--delays", f"'{delays}' is not one of {', '.join(DELAYS)}")
    if delays == "none" and time_scale:
        raise UsageError("--time-scale", "is for --delays model; with --delays none nothing is paced")
    cal: dict[str, Any] = {}
    if delays == "none":
        scale = 1.0  # never used: the workers run unpaced (clock.Unpaced)
    elif time_scale:
        scale = time_scale
    elif calibrated is not None:
        scale, cal = calibrated
    else:
        sharing = topology.n_nodes / host.n_cpus_used
        scale, cal = calibrate_scale(image, workload, topology, cold=cold, user_local=user_local, sharing=sharing, seed=seed, hardware=hardware)
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
        time_scale=scale,
        replicate=replicate,
        oversleep_ns=cal.get("oversleep_ns", 60_000),
        pt_style=pt_style,
        replicas_every=replicas_every,
        delays=delays,
        hardware=hardware,
    )
    return spec, cal
