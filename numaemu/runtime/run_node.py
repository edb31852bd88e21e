"""The node of ``numaemu run``: its config, its batches of requests, and its report.

`worker_main` runs `_run_body` in the node shell (`worker.node_shell`): pin, fill this node's
partition, build its `NodeEngine`, wait for the start, then run batches of its tasks' requests,
each paced to its emulated time (`clock.Pacer`), handing tasks that migrate to other nodes, until
the duration is over or every task's budget is spent; then report a `NodeReport`. Every batch's
task-slot updates go through a `TaskJournal`, so a node killed half-way can be undone exactly
(``--recover``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np

from numaemu.host.clock import Pacer, Unpaced
from numaemu.host.cpus import pin_to
from numaemu.host.segments import Control, MemoryLayout
from numaemu.model.cache import DirectMappedCache
from numaemu.model.engine import NodeEngine
from numaemu.model.node_hardware import NodeHardware
from numaemu.model.placement import PageTable
from numaemu.model.tasks import choose_destination, plan_tasks
from numaemu.model.workloads import Workload
from numaemu.runtime.faults import Launch
from numaemu.runtime.worker import NodeContext, fill_partition, node_shell

__all__ = ["WorkerConfig", "NodeReport", "worker_main", "node_engine", "BATCH_FETCHES", "run_batch", "TaskJournal", "restore_journal"]

BATCH_FETCHES = 16384  # kernel fetches per paced batch: ~1 ms emulated for db
IDLE_SLEEP_S = 200e-6


@dataclass(frozen=True)
class WorkerConfig:
    node: int
    n_nodes: int
    n_tasks: int
    mem_name: str
    master_name: str
    ctl_name: str
    host_cpus: tuple[int, ...]
    hosted: np.ndarray  # image pages this node's frames hold
    table: PageTable
    layout: MemoryLayout
    latency_row: tuple[float, ...]
    workload: Workload
    cold: bool
    user_local: bool
    seed: int
    migrate_rate: float
    time_scale: float  # wall ns per emulated ns
    shared_core: bool
    oversleep_ns: int
    coordinator_pid: int
    walks: np.ndarray | None = None  # per template: translations used (--pt-style; None: off)
    walk_share: float = 0.0
    walk_home: int | None = None  # node whose memory holds this node's kernel page tables
    user_home: int | None = None  # memoryless node: the nearest node with memory
    user_homes: np.ndarray | None = None  # nodes with memory (interleaved user data)
    delays: str = "model"  # coordinator.DELAYS: "none" runs batches unpaced (clock.Unpaced)
    hardware: NodeHardware | None = None  # a hardware profile's share (None: the simple model)
    page_kind: np.ndarray | None = None  # per image page: hierarchy.TEXT or DATA


@dataclass(frozen=True)
class NodeReport:
    """What a ``run`` node sends the coordinator when it is done (`results.policy_record`
    reads it): its counters, and the clocks of its batches."""

    node: int
    pid: int
    incarnation: int  # 0: the node's first process; k: its k-th replacement (--recover)
    cpus: tuple[int, ...]  # the affinity the kernel set
    wall_s: float  # from the start to the end of its last batch
    batch_wall_s: float  # wall time in its batches, the pacing waits included (not the idle waits)
    requests: int
    batches: int
    cache_hits: int
    text_fetches_by_home: tuple[int, ...]  # kernel text/rodata line fetches from memory, by the node serving them
    user_fetches_by_home: tuple[int, ...]
    kernel_ns: float  # emulated
    user_ns: float  # emulated
    walks: float  # page-table walks (--pt-style; with a hardware profile, simulated STLB misses)
    walk_ns: float
    paced_ns: int  # wall time the pacer held the batches to
    overrun_ns: int  # processing beyond that
    user_sink: int  # the user data read, folded (so the reads cannot be optimised away)
    hierarchy: dict[str, object] | None = None  # hierarchy.HierarchyCounts.to_json(), with a profile
    queue_ns: float = 0.0  # emulated time spent queueing at memory and links (part of kernel_ns)
    process_ns: float = 0.0  # the x86 design's per-process PGD work (part of kernel_ns)
    forks: float = 0.0  # forks its kernel work stands for (the x86 design's per-process PGDs)


class TaskJournal:
    """One node's undo journal of its task-slot updates (its row of `Control.journal`).

    A batch adds to several fields of several task slots; a node SIGKILLed half-way would leave a
    task whose checksum counts requests its ``done`` does not (and ``--verify`` would fail), or
    the reverse. So before updating, the node saves the slots' old values and then publishes how
    many it saved (one aligned 8-byte store: the commit point); after updating it publishes 0. If
    it dies while the count is non-zero, `restore_journal` puts the old values back and the
    batch's requests are simply run again by its replacement: requests are a pure function of
    (seed, task, request number), so the checksums come out the same.
    """

    def __init__(self, ctl: Control, node: int) -> None:
        self.entries = ctl.journal[node]
        self.counts = ctl.nodes["journal"]
        self.node = node

    def begin(self, tasks: np.ndarray, owned: np.ndarray) -> None:
        e = self.entries[: len(owned)]
        e["task"] = owned
        e["done"] = tasks["done"][owned]
        e["budget"] = tasks["budget"][owned]
        e["checksum"] = tasks["checksum"][owned]
        self.counts[self.node] = len(owned)

    def end(self) -> None:
        self.counts[self.node] = 0


def restore_journal(ctl: Control, node: int) -> int:
    """Coordinator, once `node` is dead: undo its batch in flight, if any; return the task slots
    restored."""
    k = int(ctl.nodes["journal"][node])
    if k:
        e = ctl.journal[node, :k]
        for field in ("done", "budget", "checksum"):
            ctl.tasks[field][e["task"]] = e[field]
        ctl.nodes["journal"][node] = 0
    return k


def run_batch(engine: NodeEngine, tasks: np.ndarray, owned: np.ndarray, cfg_seed: int, migrate_rate: float, journal: TaskJournal | None = None) -> tuple[float, list[tuple[int, int]]]:
    """Run one batch: a few requests of each owned task. Updates the task slots (done, budget,
    checksum), under `journal` if given, and returns (emulated ns, [(task, destination) for
    tasks that migrate])."""
    wl = engine.workload
    per_task = max(1, int(BATCH_FETCHES // (float(wl.lengths.mean()) * len(owned))))
    owned = np.asarray(owned, dtype=np.int64)
    budget = tasks["budget"][owned]
    counts = np.where(budget < 0, per_task, np.minimum(per_task, budget))
    plans = plan_tasks(cfg_seed, owned, tasks["done"][owned], counts, wl.n_templates, engine.node, engine.n_nodes, migrate_rate, wl.cdf)
    result = engine.run(np.concatenate([p.templates for p in plans]))
    # The task slots, all owned tasks at once (a slot at a time costs ~10 us of numpy calls each).
    ks = np.array([len(p.templates) for p in plans], dtype=np.int64)
    sums = np.zeros(len(owned), dtype=np.uint64)
    some = ks > 0
    if len(result.checksums):
        sums[some] = np.add.reduceat(result.checksums, (np.cumsum(ks) - ks)[some])
    if journal is not None:
        journal.begin(tasks, owned)
    tasks["checksum"][owned] += sums
    tasks["done"][owned] += ks
    tasks["budget"][owned] = np.where(budget > 0, budget - ks, budget)
    if journal is not None:
        journal.end()
    moves = [(int(t), p.migrate_to) for t, p in zip(owned, plans, strict=True) if p.migrate_to >= 0]
    return result.emulated_ns, moves


def worker_main(cfg: WorkerConfig, conn: Connection, launch: Launch | None = None) -> None:
    node_shell(cfg, conn, _run_body, launch)


def _run_body(nc: NodeContext) -> NodeReport:
    cfg = nc.cfg
    mem_seg, master_seg = nc.attach(cfg.mem_name), nc.attach(cfg.master_name)
    cpus = pin_to(cfg.host_cpus)
    nc.phase("fill")
    mem = mem_seg.array(np.uint8)
    fill_partition(mem, master_seg.array(np.uint8), cfg.layout, cfg.node, cfg.hosted, cfg.seed)
    engine = node_engine(cfg, mem)
    # --delays none: batches are not held to their emulated time, so the wall clock measures
    # this host's own memory (on a real NUMA host, remote frames are really remote).
    pacer = Unpaced(shared_core=cfg.shared_core, oversleep_ns=cfg.oversleep_ns) if cfg.delays == "none" else Pacer(cfg.time_scale, cfg.shared_core, cfg.oversleep_ns, tick=nc.poll)
    start_ns, end_ns = nc.wait_start(pacer)
    if nc.launch.incarnation:
        # A replacement (--recover) joins a run already under way: its own time starts now.
        start_ns = max(start_ns, time.perf_counter_ns())
    nc.phase("run")
    finish_ns, batch_ns, batches = _run_batches(nc, engine, pacer, start_ns, end_ns)
    c = engine.counters
    return NodeReport(
        node=cfg.node, pid=os.getpid(), incarnation=nc.launch.incarnation, cpus=tuple(cpus),
        wall_s=(finish_ns - start_ns) / 1e9, batch_wall_s=batch_ns / 1e9, requests=c.requests, batches=batches,
        cache_hits=c.cache_hits, text_fetches_by_home=tuple(c.text_fetches.tolist()), user_fetches_by_home=tuple(c.user_fetches.tolist()),
        kernel_ns=c.kernel_ns, user_ns=c.user_ns, walks=c.walks, walk_ns=c.walk_ns, paced_ns=pacer.paced_ns, overrun_ns=pacer.overrun_ns,
        user_sink=int(engine.user_sink), hierarchy=None if c.hierarchy is None else c.hierarchy.to_json(),
        queue_ns=c.queue_ns, process_ns=c.process_ns, forks=c.forks,
    )


def node_engine(cfg: WorkerConfig, mem: np.ndarray) -> NodeEngine:
    """The node's engine as its config describes it (also the coordinator's contention pass)."""
    lay = cfg.layout
    hier = charges = process = None
    if cfg.hardware is not None:
        hier, charges, process = cfg.hardware.build(cfg.n_nodes, cfg.latency_row)
    engine = NodeEngine(
        cfg.node, mem, cfg.table, lay.part_offset, tuple(lay.user_offset(n) for n in range(cfg.n_nodes)), lay.user_bytes,
        np.array(cfg.latency_row), cfg.workload, cold=cfg.cold, user_local=cfg.user_local, cache=DirectMappedCache(), seed=cfg.seed,
        walks=cfg.walks, walk_share=cfg.walk_share, walk_home=cfg.walk_home, user_home=cfg.user_home, user_homes=cfg.user_homes,
        hierarchy=hier, charges=charges, page_kind=cfg.page_kind, process=process,
    )
    engine.prepare()
    engine.warm()
    return engine


def _run_batches(nc: NodeContext, engine: NodeEngine, pacer: Pacer | Unpaced, start_ns: int, end_ns: int) -> tuple[int, int, int]:
    """Phase ``run``: batches of this node's tasks until `end_ns` (0: until every task's budget
    is spent); return (when the last batch's paced time ended, wall ns in batches, batches)."""
    cfg, ctl = nc.cfg, nc.ctl
    tasks = ctl.tasks
    journal = TaskJournal(ctl, cfg.node)
    batch_ns = 0
    finish_ns = start_ns
    batches = 0
    while True:
        nc.poll()
        now = time.perf_counter_ns()
        if end_ns and now >= end_ns:
            break
        owned = np.flatnonzero((tasks["owner"] == cfg.node) & (tasks["budget"] != 0))
        if len(owned) == 0:
            if not end_ns and not np.any(tasks["budget"] != 0):
                break  # request mode: every task is done
            time.sleep(IDLE_SLEEP_S)
            continue
        nc.fault.reached("run")
        emulated, moves = run_batch(engine, tasks, owned, cfg.seed, cfg.migrate_rate, journal)
        finish_ns = pacer.pace(now, emulated)
        batch_ns += finish_ns - now
        for t, preferred in moves:  # hand over only once the request's paced time is over
            counts = np.bincount(tasks["owner"], minlength=cfg.n_nodes)
            dest = choose_destination(counts, cfg.node, preferred)
            if dest >= 0:
                tasks["migrations"][t] += 1
                tasks["owner"][t] = dest
        batches += 1
        ctl.nodes["requests"][cfg.node] = engine.counters.requests
        ctl.nodes["heartbeat_ns"][cfg.node] = finish_ns
    return finish_ns, batch_ns, batches
