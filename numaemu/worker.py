"""The node process: one emulated NUMA node, pinned to its host CPUs.

Lifecycle, each step recorded as the node's phase in its control slot, so that the coordinator
can say where a node failed: ``attach`` (map the segments, pin), ``fill`` (first-touch this
node's partition: its frames of the image, copied from the master, and its user data),
``ready`` (wait for the start signal), ``run``, ``report`` (send counters over the pipe), ``done``.

A worker never unlinks a segment; it only closes its mappings. Every wait has a deadline and
also ends when the coordinator aborts or dies.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np

from .cache import DirectMappedCache
from .clock import Pacer, Unpaced
from .cpus import pin_to
from .engine import NodeEngine
from .image import PAGE_SIZE
from .memory import PHASES, STATE_ABORT, STATE_RUN, Control, MemoryLayout, Segment
from .placement import PageTable
from .tasks import choose_destination, plan_tasks
from .workloads import Workload

__all__ = ["WorkerConfig", "NodeContext", "node_shell", "fill_partition", "worker_main", "BATCH_FETCHES", "run_batch"]

BATCH_FETCHES = 16384  # kernel fetches per paced batch: ~1 ms emulated for db
SETUP_TIMEOUT_S = 120.0
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
    scale: float
    shared_core: bool
    oversleep_ns: int
    coordinator_pid: int
    walks: np.ndarray | None = None  # per template: translations used (--pt-style; None: off)
    walk_share: float = 0.0
    walk_home: int | None = None  # node whose memory holds this node's kernel page tables
    user_home: int | None = None  # memoryless node: the nearest node with memory
    user_homes: np.ndarray | None = None  # nodes with memory (interleaved user data)
    delays: str = "model"  # coordinator.DELAYS: "none" runs batches unpaced (clock.Unpaced)


def run_batch(engine: NodeEngine, tasks: np.ndarray, owned: np.ndarray, cfg_seed: int, migrate_rate: float) -> tuple[float, list[tuple[int, int]]]:
    """Run one batch: a few requests of each owned task. Updates the task slots (done, budget,
    checksum) and returns (emulated ns, [(task, destination) for tasks that migrate])."""
    wl = engine.workload
    per_task = max(1, int(BATCH_FETCHES // (float(wl.lengths.mean()) * len(owned))))
    owned = np.asarray(owned, dtype=np.int64)
    budget = tasks["budget"][owned]
    counts = np.where(budget < 0, per_task, np.minimum(per_task, budget))
    plans = plan_tasks(cfg_seed, owned, tasks["done"][owned], counts, wl.n_templates, engine.node, engine.n_nodes, migrate_rate)
    result = engine.run(np.concatenate([p.templates for p in plans]))
    # The task slots, all owned tasks at once (a slot at a time costs ~10 us of numpy calls each).
    ks = np.array([len(p.templates) for p in plans], dtype=np.int64)
    sums = np.zeros(len(owned), dtype=np.uint64)
    some = ks > 0
    if len(result.checksums):
        sums[some] = np.add.reduceat(result.checksums, (np.cumsum(ks) - ks)[some])
    tasks["checksum"][owned] += sums
    tasks["done"][owned] += ks
    tasks["budget"][owned] = np.where(budget > 0, budget - ks, budget)
    moves = [(int(t), p.migrate_to) for t, p in zip(owned, plans) if p.migrate_to >= 0]
    return result.emulated_ns, moves


class NodeContext:
    """What the generic node shell hands to a node body: the control block, the segments it
    attached, and `phase` to record where the node is."""

    def __init__(self, cfg, ctl: Control, segs: list[Segment], set_phase: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.ctl = ctl
        self.segs = segs
        self.phase = set_phase

    def attach(self, name: str) -> Segment:
        seg = Segment.attach(name)
        self.segs.append(seg)
        return seg

    def check_alive(self) -> None:
        _check_alive(self.ctl, self.cfg)

    def wait_start(self, pacer: Pacer) -> tuple[int, int]:
        """Phase ``ready``: wait for the start signal; return (start_ns, end_ns) once it is time."""
        self.phase("ready")
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        while self.ctl.get("state") != STATE_RUN:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no start signal within {SETUP_TIMEOUT_S:.0f} s")
            time.sleep(1e-3)
        start_ns, end_ns = self.ctl.get("start_ns"), self.ctl.get("end_ns")
        pacer.wait_until(start_ns)
        return start_ns, end_ns


def node_shell(cfg, conn: Connection, body: Callable[[NodeContext], dict]) -> None:
    """Run `body` as node ``cfg.node``: attach the control block, record phases, send the
    body's report, or the error with the phase it happened in, and always detach."""
    segs: list[Segment] = []
    ctl: Control | None = None
    phase = "attach"

    def set_phase(name: str) -> None:
        nonlocal phase
        phase = name
        if ctl is not None:
            ctl.nodes["phase"][cfg.node] = PHASES.index(name)

    # Ctrl-C reaches the whole process group; the coordinator alone decides how to stop
    # (it sets STATE_ABORT), so a node never dies half-way through on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctl_seg = Segment.attach(cfg.ctl_name)
        segs.append(ctl_seg)
        ctl = Control(ctl_seg, cfg.n_nodes, cfg.n_tasks)
        ctl.nodes["pid"][cfg.node] = os.getpid()
        set_phase("attach")
        report = body(NodeContext(cfg, ctl, segs, set_phase))
        set_phase("report")
        conn.send(report)
        set_phase("done")
    except BaseException as exc:  # report, then exit non-zero; the coordinator names node and phase
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        try:
            conn.send({"node": cfg.node, "error": detail, "phase": phase})
        except (OSError, ValueError):
            pass
        raise SystemExit(1) from None
    finally:
        ctl = None
        for seg in segs:
            seg.close()
        conn.close()


def fill_partition(mem: np.ndarray, master: np.ndarray, layout: MemoryLayout, node: int, hosted: np.ndarray, seed: int) -> None:
    """Phase ``fill``: `node`'s frames of the image (the pages in `hosted`, from the master) and
    its user data, written by the node itself (first touch)."""
    master_pages = master.reshape(-1, PAGE_SIZE)
    own = mem[layout.part_offset[node] : layout.part_offset[node] + layout.image_bytes[node]]
    own.reshape(-1, PAGE_SIZE)[:] = master_pages[hosted]
    user = mem[layout.user_offset(node) : layout.user_offset(node) + layout.user_bytes]
    user[:] = np.random.default_rng([seed, node, 0x64617461]).integers(0, 256, len(user), dtype=np.uint8)


def worker_main(cfg: WorkerConfig, conn: Connection) -> None:
    node_shell(cfg, conn, _run_body)


def _run_body(nc: NodeContext) -> dict:
    cfg, ctl = nc.cfg, nc.ctl
    mem_seg, master_seg = nc.attach(cfg.mem_name), nc.attach(cfg.master_name)
    cpus = pin_to(cfg.host_cpus)
    nc.phase("fill")
    lay = cfg.layout
    mem = mem_seg.array(np.uint8)
    fill_partition(mem, master_seg.array(np.uint8), lay, cfg.node, cfg.hosted, cfg.seed)
    engine = NodeEngine(
        cfg.node,
        mem,
        cfg.table,
        lay.part_offset,
        tuple(lay.user_offset(n) for n in range(cfg.n_nodes)),
        lay.user_bytes,
        np.array(cfg.latency_row),
        cfg.workload,
        cold=cfg.cold,
        user_local=cfg.user_local,
        cache=DirectMappedCache(),
        seed=cfg.seed,
        walks=cfg.walks,
        walk_share=cfg.walk_share,
        walk_home=cfg.walk_home,
        user_home=cfg.user_home,
        user_homes=cfg.user_homes,
    )
    engine.prepare()
    # --delays none: batches are not held to their emulated time, so the wall clock measures
    # this host's own memory (on a real NUMA host, remote frames are really remote).
    pacer = Unpaced(shared_core=cfg.shared_core, oversleep_ns=cfg.oversleep_ns) if cfg.delays == "none" else Pacer(cfg.scale, cfg.shared_core, cfg.oversleep_ns)
    start_ns, end_ns = nc.wait_start(pacer)

    nc.phase("run")
    tasks = ctl.tasks
    busy_ns = 0
    finish_ns = start_ns
    batches = 0
    while True:
        now = time.perf_counter_ns()
        if end_ns and now >= end_ns:
            break
        owned = np.flatnonzero((tasks["owner"] == cfg.node) & (tasks["budget"] != 0))
        if len(owned) == 0:
            if not end_ns and not np.any(tasks["budget"] != 0):
                break  # request mode: every task is done
            nc.check_alive()
            time.sleep(IDLE_SLEEP_S)
            continue
        emulated, moves = run_batch(engine, tasks, owned, cfg.seed, cfg.migrate_rate)
        finish_ns = pacer.pace(now, emulated)
        busy_ns += finish_ns - now
        for t, preferred in moves:  # hand over only once the request's paced time is over
            counts = np.bincount(tasks["owner"], minlength=cfg.n_nodes)
            dest = choose_destination(counts, cfg.node, preferred)
            if dest >= 0:
                tasks["migrations"][t] += 1
                tasks["owner"][t] = dest
        batches += 1
        ctl.nodes["requests"][cfg.node] = engine.counters.requests
        ctl.nodes["heartbeat_ns"][cfg.node] = finish_ns
        if batches % 64 == 0:
            nc.check_alive()

    c = engine.counters
    return {
        "node": cfg.node,
        "pid": os.getpid(),
        "cpus": list(cpus),
        "wall_s": (finish_ns - start_ns) / 1e9,
        "busy_s": busy_ns / 1e9,
        "requests": c.requests,
        "batches": batches,
        "cache_hits": c.cache_hits,
        "text_fetches_by_home": c.text_fetches.tolist(),
        "user_fetches_by_home": c.user_fetches.tolist(),
        "kernel_ns": c.kernel_ns,
        "user_ns": c.user_ns,
        "walks": c.walks,
        "walk_ns": c.walk_ns,
        "paced_ns": pacer.paced_ns,
        "overrun_ns": pacer.overrun_ns,
        "user_sink": int(engine.user_sink),
    }


class _Aborted(Exception):
    pass


def _check_alive(ctl: Control, cfg) -> None:
    if ctl.get("state") == STATE_ABORT:
        raise _Aborted("the coordinator aborted the run")
    # Under forkserver the parent is the fork server, not the coordinator: ask about the
    # coordinator's pid itself (signal 0 only checks that it exists).
    try:
        os.kill(cfg.coordinator_pid, 0)
    except ProcessLookupError:
        raise _Aborted("the coordinator is gone") from None
