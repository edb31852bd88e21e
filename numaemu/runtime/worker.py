"""The node shell: what every node process does around its body (``run``'s, ``stress``'s).

Lifecycle, each step recorded as the node's phase in its control slot, so that the coordinator
can say where a node failed: ``attach`` (map the segments, pin), ``fill`` (first-touch this
node's partition: its frames of the image, copied from the master, and its user data),
``ready`` (wait for the start signal), ``run``, ``report`` (send the body's report over the
pipe), ``done``. A body that raises sends a `NodeError` instead, naming the phase.

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

import contextlib
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from numaemu.host.clock import Pacer
from numaemu.host.segments import NODE_SLOT, PHASES, STATE_ABORT, STATE_RECOVER, STATE_RUN, Control, MemoryLayout, Segment
from numaemu.model.image import PAGE_SIZE
from numaemu.runtime.faults import FaultHook, Launch
from numaemu.runtime.lifetime import watch_parent

__all__ = ["NodeContext", "NodeError", "node_shell", "fill_partition", "Aborted", "ALIVE_CHECK_NS", "SETUP_TIMEOUT_S"]

SETUP_TIMEOUT_S = 120.0
# How often a node looks at the control block (abort, recovery) and whether its coordinator died,
# from every loop and wait. Time-based, not per N iterations: an iteration can take 10 us (a
# spin) or 100 ms (a huge patch), and the coordinator must learn of nothing late.
ALIVE_CHECK_NS = 20_000_000
PARK_SLEEP_S = 500e-6


@dataclass(frozen=True)
class NodeError:
    """What a node sends instead of its report when its body raised: the coordinator names the
    node, its pid and `phase` (`errors.NodeFailure`)."""

    node: int
    error: str
    phase: str


class NodeContext:
    """What the generic node shell hands to a node body: the control block, the segments it
    attached, `phase` to record where the node is, `poll` to call from every loop, and the
    fault hook (`fault.reached(point)`, a test hook, see faults.py)."""

    def __init__(self, cfg: Any, ctl: Control, segs: list[Segment], set_phase: Callable[[str], None], launch: Launch | None = None, fault: FaultHook | None = None) -> None:
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
            fields = NODE_SLOT.fields
            assert fields is not None  # a structured dtype
            self._where = self.ctl.nodes.view(np.uint32).data.cast("B").cast("I")
            self._where_at = self.cfg.node * words + fields["where"][1] // 4
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


def node_shell(cfg: Any, conn: Connection, body: Callable[[NodeContext], object], launch: Launch | None = None) -> None:
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
        with contextlib.suppress(OSError, ValueError):  # the coordinator may be gone already
            conn.send(NodeError(cfg.node, detail, phase))
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


class Aborted(Exception):
    """The coordinator aborted the run (or died): stop, report what there is, exit."""


def _check_coordinator(coordinator_pid: int) -> None:
    # The kernel says when the coordinator has died (lifetime.ParentWatch: a signal at its death,
    # or the end of a pipe it holds closing), never its pid: a dead coordinator's pid may have
    # been given to another process since.
    if watch_parent(coordinator_pid).gone():
        raise Aborted("the coordinator is gone")
