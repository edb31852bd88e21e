"""The node process: one emulated NUMA node, pinned to its host CPUs.

Lifecycle, each step recorded as the node's phase in its control slot, so that the coordinator
can say where a node failed: ``attach`` (map the segments, pin), ``fill`` (first-touch this
node's partition: its frames of the image, copied from the master, and its user data),
``ready`` (wait for the start signal), ``run``, ``report`` (send counters over the pipe), ``done``.

A worker never unlinks a segment; it only closes its mappings. Every wait has a deadline and
also ends when the coordinator aborts or dies: every loop, busy or waiting, calls `NodeContext.poll`,
which looks at the control block and whether the coordinator has died (lifetime.ParentWatch: the
kernel tells a node, by a signal or a pipe's end closing) at most every `ALIVE_CHECK_NS` (a clock
read otherwise), so a node notices an abort, or its coordinator's death, within ~20 ms wherever it
is, without a syscall per batch.

Under ``stress --recover`` a node that sees STATE_RECOVER *parks in place* (`NodeContext.park`): it
stays inside whatever wait it was in, holding whatever locks it held, until the coordinator has
replaced the dead node; then it resynchronises and goes on where it was (see recovery.py).
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

from numaemu.host.clock import Pacer, Unpaced
from numaemu.host.cpus import pin_to
from numaemu.host.segments import (
    NODE_SLOT,
    PHASES,
    STATE_ABORT,
    STATE_RECOVER,
    STATE_RUN,
    Control,
    MemoryLayout,
    Segment,
)
from numaemu.model.cache import DirectMappedCache
from numaemu.model.engine import NodeEngine
from numaemu.model.image import PAGE_SIZE
from numaemu.model.placement import PageTable
from numaemu.model.tasks import choose_destination, plan_tasks
from numaemu.model.workloads import Workload
from numaemu.runtime.faults import FaultHook, Launch
from numaemu.runtime.lifetime import watch_parent

__all__ = ["WorkerConfig", "NodeContext", "node_shell", "fill_partition", "worker_main", "BATCH_FETCHES", "run_batch", "TaskJournal", "restore_journal", "Aborted", "ALIVE_CHECK_NS"]

BATCH_FETCHES = 16384  # kernel fetches per paced batch: ~1 ms emulated for db
SETUP_TIMEOUT_S = 120.0
IDLE_SLEEP_S = 200e-6
# How often a node looks at the control block (abort, recovery) and whether its coordinator died,
# from every loop and wait. Time-based, not per N iterations: an iteration can take 10 us (a
# spin) or 100 ms (a huge patch), and the coordinator must learn of nothing late.
ALIVE_CHECK_NS = 20_000_000
PARK_SLEEP_S = 500e-6


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
    plans = plan_tasks(cfg_seed, owned, tasks["done"][owned], counts, wl.n_templates, engine.node, engine.n_nodes, migrate_rate)
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
    moves = [(int(t), p.migrate_to) for t, p in zip(owned, plans) if p.migrate_to >= 0]
    return result.emulated_ns, moves


class NodeContext:
    """What the generic node shell hands to a node body: the control block, the segments it
    attached, `phase` to record where the node is, `poll` to call from every loop, and the
    fault hook (`fault.reached(point)`, a test hook, see faults.py)."""

    def __init__(self, cfg, ctl: Control, segs: list[Segment], set_phase: Callable[[str], None], launch: Launch | None = None, fault: FaultHook | None = None) -> None:
        self.cfg = cfg
        self.ctl = ctl
        self.segs = segs
        self.phase = set_phase
        self.launch = launch or Launch()
        self.fault = fault or FaultHook(None, cfg.node)
        self.parkable = False  # set by a body that can park in place for a recovery (stress)
        self.on_resume: list[Callable[[], None]] = []  # run after a recovery, before going on
        self.parks = 0
        self._next_check = 0
        self._next_coordinator_check = 0
        self._where: memoryview | None = None
        self._where_at = 0

    def attach(self, name: str) -> Segment:
        seg = Segment.attach(name)
        self.segs.append(seg)
        return seg

    def poll(self) -> None:
        """`check_alive`, at most every ALIVE_CHECK_NS: call it from every loop, busy or not."""
        if time.perf_counter_ns() >= self._next_check:
            self.check_alive()

    def check_alive(self) -> None:
        """Raise `Aborted` if the coordinator aborted the run or is gone; park for a recovery."""
        state = self.ctl.get("state")
        if state == STATE_ABORT:
            raise Aborted("the coordinator aborted the run")
        if state == STATE_RECOVER and self.parkable:
            self.park()
        _check_coordinator(self.cfg.coordinator_pid)
        self._next_check = time.perf_counter_ns() + ALIVE_CHECK_NS

    def _coordinator_alive(self) -> None:
        """The coordinator check alone, time-gated (for loops that read the state themselves)."""
        now = time.perf_counter_ns()
        if now >= self._next_coordinator_check:
            _check_coordinator(self.cfg.coordinator_pid)
            self._next_coordinator_check = now + ALIVE_CHECK_NS

    def park(self) -> None:
        """Stay here, inside whatever this node was doing, until the coordinator has replaced a
        dead node (STATE_RECOVER back to STATE_RUN); then resynchronise (`on_resume`).

        The coordinator repairs the shared state only once every live node is parked, so
        nothing moves under it: the kernel's CPU hotplug likewise parks every other CPU in its
        stopper thread (take_cpu_down runs under stop_machine, kernel/cpu.c) and keeps text
        patching out with cpus_write_lock() while a CPU comes up."""
        ctl, node = self.ctl, self.cfg.node
        while (state := ctl.get("state")) == STATE_RECOVER:
            ctl.nodes["parked"][node] = ctl.get("recover_gen")  # again if a second recovery began
            self._coordinator_alive()
            time.sleep(PARK_SLEEP_S)
        if state == STATE_ABORT:
            raise Aborted("the coordinator aborted the run")
        self.parks += 1
        for fn in self.on_resume:
            fn()

    def mark(self, where: int) -> int:
        """Record what this node is inside of (a WHERE index); return the previous mark. Called
        around every sync, rendezvous and INT3 handler: a memoryview store (~50 ns), not numpy."""
        if self._where is None:
            words = NODE_SLOT.itemsize // 4
            self._where = memoryview(self.ctl.nodes.view(np.uint32)).cast("B").cast("I")
            self._where_at = self.cfg.node * words + NODE_SLOT.fields["where"][1] // 4
        prev = self._where[self._where_at]
        self._where[self._where_at] = where
        return prev

    def wait_start(self, pacer: Pacer) -> tuple[int, int]:
        """Phase ``ready``: wait for the start signal; return (start_ns, end_ns) once it is time.
        A replacement node (--recover) waits here while the others are parked."""
        self.phase("ready")
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        while self.ctl.get("state") != STATE_RUN:
            if self.ctl.get("state") == STATE_ABORT:
                raise Aborted("the coordinator aborted the run")
            self._coordinator_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no start signal within {SETUP_TIMEOUT_S:.0f} s")
            time.sleep(1e-3)
        start_ns, end_ns = self.ctl.get("start_ns"), self.ctl.get("end_ns")
        pacer.wait_until(start_ns)
        return start_ns, end_ns


def node_shell(cfg, conn: Connection, body: Callable[[NodeContext], dict], launch: Launch | None = None) -> None:
    """Run `body` as node ``cfg.node``: attach the control block, record phases, send the
    body's report, or the error with the phase it happened in, and always detach."""
    segs: list[Segment] = []
    ctl: Control | None = None
    phase = "attach"
    launch = launch or Launch()

    def record_fault(ns: int) -> None:
        if ctl is not None:
            ctl.nodes["fault_ns"][cfg.node] = ns

    fault = FaultHook(launch.fault, cfg.node, record_fault)

    def set_phase(name: str) -> None:
        nonlocal phase
        phase = name
        if ctl is not None:
            ctl.nodes["phase"][cfg.node] = PHASES.index(name)
            ctl.nodes["where"][cfg.node] = 0
        fault.reached(name)

    # Ctrl-C (and a SIGTERM to the process group) reaches every process; the coordinator alone
    # decides how to stop (it sets STATE_ABORT and collects what the nodes have), so a node never
    # dies half-way through on its own. Under fork the coordinator's handlers were inherited.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fault.reached("spawn")
    try:
        ctl_seg = Segment.attach(cfg.ctl_name)
        segs.append(ctl_seg)
        ctl = Control(ctl_seg, cfg.n_nodes, cfg.n_tasks)
        ctl.nodes["pid"][cfg.node] = os.getpid()
        set_phase("attach")
        report = body(NodeContext(cfg, ctl, segs, set_phase, launch, fault))
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


def worker_main(cfg: WorkerConfig, conn: Connection, launch: Launch | None = None) -> None:
    node_shell(cfg, conn, _run_body, launch)


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
    pacer = Unpaced(shared_core=cfg.shared_core, oversleep_ns=cfg.oversleep_ns) if cfg.delays == "none" else Pacer(cfg.scale, cfg.shared_core, cfg.oversleep_ns, tick=nc.poll)
    start_ns, end_ns = nc.wait_start(pacer)
    if nc.launch.incarnation:
        # A replacement (--recover) joins a run already under way: its own time starts now.
        start_ns = max(start_ns, time.perf_counter_ns())

    nc.phase("run")
    tasks = ctl.tasks
    journal = TaskJournal(ctl, cfg.node)
    busy_ns = 0
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

    c = engine.counters
    return {
        "node": cfg.node,
        "pid": os.getpid(),
        "incarnation": nc.launch.incarnation,
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


class Aborted(Exception):
    """The coordinator aborted the run (or died): stop, report what there is, exit."""


def _check_coordinator(coordinator_pid: int) -> None:
    # The kernel says when the coordinator has died (lifetime.ParentWatch: a signal at its death,
    # or the end of a pipe it holds closing), never its pid: a dead coordinator's pid may have
    # been given to another process since.
    if watch_parent(coordinator_pid).gone():
        raise Aborted("the coordinator is gone")
