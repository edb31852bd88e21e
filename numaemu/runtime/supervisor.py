"""The supervisor: owns every OS resource of one set of node processes, and frees it on every path.

`NodeSession` creates the segments and the control block, starts one pinned worker per node,
waits until every node has filled its memory, gives one start time to all, and collects their
reports; on every path, errors and Ctrl-C included, it stops the nodes and unlinks everything.

A node that dies or fails is reported as `NodeFailure` with its node, pid and phase; the other
nodes are told to abort at once, and every wait has a deadline. With ``--recover`` a dead node is
replaced instead (`respawn.Respawning`).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from multiprocessing.context import ForkContext, ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

from numaemu.errors import NodeFailure
from numaemu.host.segments import (
    CONTROL_MAGIC,
    CONTROL_VERSION,
    PHASES,
    STATE_ABORT,
    STATE_RUN,
    WHERE,
    Control,
    Segment,
    new_token,
    segment_name,
)
from numaemu.runtime.faults import Fault, KillSchedule, Launch, fault_from_env
from numaemu.runtime.respawn import Respawning
from numaemu.runtime.spawn import JOIN_TIMEOUT_S, SpawnProcess, signals_deferred, stop_all
from numaemu.runtime.worker import SETUP_TIMEOUT_S, NodeError

__all__ = ["NodeSession", "START_DELAY_NS", "DRAIN_TIMEOUT_S"]

START_DELAY_NS = 20_000_000  # every node starts at the same instant, 20 ms after the signal
DRAIN_TIMEOUT_S = 3.0  # after an abort: how long the living may take to send what they have
_SESSIONS = itertools.count(1)  # sets of node processes this process started (the fault hook's SESSION)


class NodeSession(Respawning):
    """Owns every OS resource of one run of node processes; `close` frees them on every path.

    Create segments, open the control block, start one worker per node, wait until every node is
    ready, give one start time to all, collect their reports. As CPython's multiprocessing
    documents for shared memory: the coordinator creates and unlinks; workers only attach.

    Deaths are noticed at once: every wait is on the nodes' pipes and process sentinels together
    (`multiprocessing.connection.wait`), and a process's sentinel becomes readable the moment it
    exits, however it exits. A dead node fails the run (`NodeFailure`, naming node, pid, phase and
    what it was inside of), unless ``max_recoveries`` allows a recovery (`_recover`): the node is
    respawned as it was started (same node, same config, same pinning) after `repair` has put the
    shared state back in order for it. With ``quiesce`` (stress) every other node is parked first,
    so nothing changes under the repair, and stays parked until the replacement is ready.
    """

    def __init__(
        self,
        start_method: str,
        n_nodes: int,
        n_tasks: int,
        *,
        max_recoveries: int = 0,
        quiesce: bool = False,
        repair: Callable[[list[int]], dict[int, dict[str, Any]]] | None = None,
        kill_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.token = new_token()
        ctx = mp.get_context(start_method)
        # What get_context returns for each POSIX method; their base class has no .Process.
        assert isinstance(ctx, ForkContext | SpawnContext | ForkServerContext)
        self.ctx = ctx
        self.n_nodes = n_nodes
        self.n_tasks = n_tasks
        self.segments: list[Segment] = []
        self.procs: list[BaseProcess | None] = []  # per node: its current process (None: not started)
        self.conns: list[Connection[Any, Any] | None] = []  # per node: the parent's end of its pipe
        self.ctl: Control | None = None
        self.number = next(_SESSIONS)
        fault = fault_from_env()
        self.fault: Fault | None = fault if fault is not None and fault.session == self.number else None
        self.max_recoveries = max_recoveries
        self.quiesce = quiesce
        self.repair = repair
        self.kill_rate = kill_rate
        self.seed = seed
        self.kill_schedule: KillSchedule | None = None
        self.incarnations = [0] * n_nodes
        self.reports: dict[int, Any] = {}  # per node: its report (run: a NodeReport; stress: a dict)
        self.recoveries: list[dict[str, Any]] = []
        self.kills: list[dict[str, Any]] = []
        self.recovery_s = 0.0
        self.started = False
        self.go_ns = 0
        self.end_ns = 0
        self.forced = False
        self._target: Callable[..., object] | None = None
        self._configs: list[object] = []
        self._gone: set[int] = set()  # dead or failed, not (yet) replaced: no more events
        self._killed_ns: dict[int, int] = {}  # --kill-workers: when the coordinator killed a node
        self._retired: list[BaseProcess] = []  # processes of replaced nodes

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

    def start(self, target: Callable[..., object], configs: Sequence[object]) -> None:
        self._target, self._configs = target, list(configs)
        self.procs = [None] * self.n_nodes
        self.conns = [None] * self.n_nodes
        for node in range(self.n_nodes):
            self._spawn(node)

    def _spawn(self, node: int) -> None:
        """Start `node`'s worker (again, under --recover: only the first incarnation is armed
        with the test fault)."""
        k = self.incarnations[node]
        launch = Launch(self.fault if k == 0 else None, k)
        parent, child = self.ctx.Pipe(duplex=False)
        method = self.ctx.get_start_method()
        cls: type[BaseProcess] = SpawnProcess if method == "spawn" else self.ctx.Process
        proc = cls(target=self._target, args=(self._configs[node], child, launch), name=f"numaemu-node{node}", daemon=True)
        try:
            # fork returns at once: hold Ctrl-C meanwhile, so no started process is left
            # untracked. spawn and forkserver write the config to the child, which may take
            # its whole start-up: not held (a child orphaned then exits by itself, see worker).
            with signals_deferred() if method == "fork" else nullcontext():
                proc.start()
                self.procs[node] = proc
                self.conns[node] = parent
        except OSError as exc:  # spawn: the child died before it had read its config
            parent.close()
            self._gone.add(node)
            raise NodeFailure(node, getattr(exc, "pid", None), "spawn", f"process died while starting ({exc.strerror or exc})") from None
        finally:
            child.close()

    def wait_ready(self) -> None:
        assert self.ctl is not None
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        ready = PHASES.index("ready")
        while not all(self._phase(n) >= ready for n in range(self.n_nodes)):
            self._step(0.01)
            if time.monotonic() > deadline:
                late = [n for n in range(self.n_nodes) if self._phase(n) < ready]
                raise self._failure(late[0], "did not reach phase 'ready' in time")

    def go(self, duration_s: float | None) -> None:
        assert self.ctl is not None
        start = time.perf_counter_ns() + START_DELAY_NS
        end = start + int(duration_s * 1e9) if duration_s else 0
        self.ctl.set("start_ns", start)
        self.ctl.set("end_ns", end)
        self.ctl.set("state", STATE_RUN)
        self.started, self.go_ns, self.end_ns = True, start, end
        if self.kill_rate > 0:
            self.kill_schedule = KillSchedule(self.kill_rate, self.seed, start)

    def collect(self, limit_s: float) -> list[dict[str, Any]]:
        """Every node's report, in node order; recovers or fails on a death (see the class)."""
        assert self.ctl is not None
        deadline = time.monotonic() + limit_s
        while len(self.reports) < self.n_nodes:
            timeout = 0.05
            if self.kill_schedule is not None:
                timeout = min(timeout, self.kill_schedule.wait_s(time.perf_counter_ns()))
            spent = self.recovery_s
            self._step(timeout)
            deadline += self.recovery_s - spent  # time spent recovering is not the nodes' to lose
            self._chaos()
            if len(self.reports) < self.n_nodes and time.monotonic() > deadline:
                node = min(n for n in range(self.n_nodes) if n not in self.reports)
                raise self._failure(node, f"no report within {limit_s:.0f} s")
        for node in range(len(self.procs)):
            self._proc(node).join(JOIN_TIMEOUT_S)
        return [self.reports[n] for n in sorted(self.reports)]

    def abort_and_drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> list[dict[str, Any]]:
        """Tell every node to stop (STATE_ABORT) and take the reports the living send within
        `timeout_s` (a stress node reports what it saw until then); return every report, in
        node order. A second Ctrl-C meanwhile kills the nodes at once (`stopping`)."""
        with self.stopping():
            if self.ctl is not None:
                self.ctl.set("state", STATE_ABORT)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if all(n in self.reports or n in self._gone for n in range(self.n_nodes)):
                    break
                for node, msg in self._events(0.02):
                    if msg is None or isinstance(msg, NodeError):
                        self._gone.add(node)
                    else:
                        self.reports[node] = msg
        return [self.reports[n] for n in sorted(self.reports)]

    @property
    def pids(self) -> list[int]:
        return [self._pid(node) for node in range(len(self.procs))]

    @contextmanager
    def stopping(self) -> Iterator[None]:
        """While stopping: a second Ctrl-C (or SIGTERM) SIGKILLs every node at once instead of
        interrupting the cleanup, which then goes on (unlink) and ends with KeyboardInterrupt."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def force(signum: int, frame: object) -> None:
            self.forced = True
            for p in [*self.procs, *self._retired]:
                if p is not None and p.pid is not None and p.exitcode is None:
                    with suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGKILL)

        old = {sig: signal.signal(sig, force) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def close(self) -> None:
        with self.stopping():
            try:
                if self.ctl is not None:
                    self.ctl.set("state", STATE_ABORT)
                self.ctl = None
                stop_all([p for p in self.procs if p is not None])
            finally:
                for proc in self._retired:
                    proc.join(0)
                for c in self.conns:
                    if c is not None:
                        c.close()
                for seg in self.segments:
                    seg.close()
                    seg.unlink()
                self.segments = []
        if self.forced:
            self.forced = False
            raise KeyboardInterrupt

    # -- events ---------------------------------------------------------------------------------

    def _proc(self, node: int) -> BaseProcess:
        """`node`'s current process: every node has one once `start` has returned."""
        proc = self.procs[node]
        assert proc is not None, f"node {node} was never started"
        return proc

    def _conn(self, node: int) -> Connection[Any, Any]:
        """The parent's end of `node`'s pipe (there is one wherever `_proc` has a process)."""
        conn = self.conns[node]
        assert conn is not None, f"node {node} was never started"
        return conn

    def _pid(self, node: int) -> int:
        pid = self._proc(node).pid
        assert pid is not None  # a started process has its pid
        return pid

    def _phase(self, node: int) -> int:
        assert self.ctl is not None
        return int(self.ctl.nodes["phase"][node])

    def _events(self, timeout: float, exclude: Sequence[int] = ()) -> list[tuple[int, dict[str, Any] | None]]:
        """Wait up to `timeout` s for a message or a death of a node still expected to send one;
        return (node, message), or (node, None) for a node whose process has ended without one."""
        live = [n for n in range(self.n_nodes) if n not in self.reports and n not in self._gone and n not in exclude]
        if not live:
            time.sleep(timeout)
            return []
        ready = set(wait_any([x for n in live for x in (self._conn(n), self._proc(n).sentinel)], timeout=timeout))
        out: list[tuple[int, dict[str, Any] | None]] = []
        for n in live:
            conn = self._conn(n)
            if conn in ready:
                try:
                    out.append((n, conn.recv()))
                except (EOFError, OSError):
                    out.append((n, None))
            elif self._proc(n).sentinel in ready and not conn.poll():
                out.append((n, None))
        return out

    def _step(self, timeout: float) -> None:
        events = self._events(timeout)
        # Messages first: a report read here must be recorded before a recovery waits on pipes.
        for node, msg in events:
            if msg is None:
                continue
            if isinstance(msg, NodeError):
                self._gone.add(node)
                raise self._failure(node, msg.error, msg.phase)
            self.reports[node] = msg
        for node, msg in events:
            if msg is None and node not in self.reports:
                self._died(node)

    def _died(self, node: int) -> None:
        detail = self._exit_detail(node)
        if len(self.recoveries) >= self.max_recoveries:
            self._gone.add(node)
            if self.max_recoveries:
                detail += f" (after {len(self.recoveries)} recoveries, the most this run allows)"
            raise self._failure(node, detail)
        self._recover([node], [self._failure(node, detail)])

    def _exit_detail(self, node: int) -> str:
        proc = self._proc(node)
        proc.join(1.0)  # its sentinel fired: it is reaped at once
        code = proc.exitcode
        by = " (--kill-workers)" if node in self._killed_ns else ""
        if code is None:
            return "process stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"process killed by {name}{by}"
        return f"process exited with code {code}"

    def _failure(self, node: int, detail: str, phase: str | None = None) -> NodeFailure:
        ctl = self.ctl
        where = WHERE[int(ctl.nodes["where"][node])] if ctl is not None else ""
        if phase is None:
            phase = PHASES[self._phase(node)] if ctl is not None else "spawn"
        died_ns = int(ctl.nodes["fault_ns"][node]) if ctl is not None else 0
        died_ns = self._killed_ns.get(node, died_ns)
        after = round((time.perf_counter_ns() - died_ns) / 1e9, 4) if died_ns else None
        return NodeFailure(node, self._proc(node).pid, phase, detail, where=where, detected_after_s=after)
