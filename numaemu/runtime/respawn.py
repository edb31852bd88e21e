"""Replacing dead nodes (``--recover``) and killing live ones on purpose (``--kill-workers``).

`Respawning` is the part of `supervisor.NodeSession` that handles a death it may survive: park
every other node, let the caller's `repair` put the shared state back in order, respawn the node
as it was started (same node, same config, same pinning), and go on. The kernel's analogue is CPU
hotplug (kernel/cpu.c).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from numaemu.errors import NodeFailure
from numaemu.host.segments import PHASES, STATE_RECOVER, STATE_RUN, Control
from numaemu.runtime.faults import KillSchedule
from numaemu.runtime.worker import SETUP_TIMEOUT_S, NodeError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

__all__ = ["Respawning", "MAX_RECOVERIES", "PARK_TIMEOUT_S"]

MAX_RECOVERIES = 10  # --recover: node deaths one run survives; the next one fails it
PARK_TIMEOUT_S = 10.0  # every live node parks within this once a recovery begins


class Respawning:
    """Mixed into `NodeSession`: the state below is its own (see `NodeSession.__init__`)."""

    ctl: Control | None
    n_nodes: int
    procs: list[BaseProcess | None]
    conns: list[Connection[Any, Any] | None]
    reports: dict[int, Any]
    recoveries: list[dict[str, Any]]
    kills: list[dict[str, Any]]
    incarnations: list[int]
    max_recoveries: int
    quiesce: bool
    repair: Callable[[list[int]], dict[int, dict[str, Any]]] | None
    started: bool
    go_ns: int
    end_ns: int
    recovery_s: float
    kill_schedule: KillSchedule | None
    _gone: set[int]
    _killed_ns: dict[int, int]
    _retired: list[BaseProcess]

    if TYPE_CHECKING:  # NodeSession's, declared for the type checker only
        def _proc(self, node: int) -> BaseProcess: ...
        def _conn(self, node: int) -> Connection[Any, Any]: ...
        def _pid(self, node: int) -> int: ...
        def _phase(self, node: int) -> int: ...
        def _spawn(self, node: int) -> None: ...
        def _failure(self, node: int, detail: str, phase: str | None = None) -> NodeFailure: ...
        def _exit_detail(self, node: int) -> str: ...
        def _events(self, timeout: float, exclude: Sequence[int] = ()) -> list[tuple[int, dict[str, Any] | None]]: ...

    # -- --kill-workers -------------------------------------------------------------------------

    def _chaos(self) -> None:
        ks = self.kill_schedule
        now = time.perf_counter_ns()
        if ks is None or not ks.due(now) or (self.end_ns and now >= self.end_ns):
            return
        run = PHASES.index("run")
        candidates = [n for n in range(self.n_nodes) if n not in self.reports and n not in self._gone and self._phase(n) == run]
        node = ks.pick(candidates, now)
        if node is None:
            return
        pid = self._pid(node)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._killed_ns[node] = now
        self.kills.append({"node": node, "pid": pid, "at_s": round((now - self.go_ns) / 1e9, 4)})

    # -- --recover ------------------------------------------------------------------------------

    def _quiescent(self, node: int, gen: int) -> bool:
        """Parked for recovery `gen`, or touching no shared text: not started running yet
        (``ready``: it parks at its first check once it does), or finished (``report``)."""
        assert self.ctl is not None
        phase = self._phase(node)
        return int(self.ctl.nodes["parked"][node]) == gen or phase <= PHASES.index("ready") or phase >= PHASES.index("report")

    def _recover(self, dead: list[int], failures: list[NodeFailure]) -> None:
        """Replace the nodes in `dead` (the kernel's analogue is CPU hotplug, kernel/cpu.c: the
        dying CPU is taken down under stop_machine, its work is finished or handed on, and a CPU
        brought back up starts from a clean state while cpus_write_lock() keeps text patching
        out). Here: park every other node (quiesce), `repair` the shared state (finish the dead
        nodes' journaled work), respawn each dead node with its config, wait until the
        replacements are ready, let everyone go on. Nodes that die meanwhile join the batch."""
        assert self.ctl is not None
        ctl = self.ctl
        t0 = time.perf_counter_ns()
        quiesce = self.quiesce and self.started
        gen = ctl.get("recover_gen") + 1
        if quiesce:
            ctl.set("recover_gen", gen)
            ctl.set("state", STATE_RECOVER)
        ready = PHASES.index("ready")
        first = len(self.recoveries)
        todo = list(zip(dead, failures, strict=True))  # dead, to be repaired for and respawned
        replaced: list[int] = []
        while todo:
            if quiesce:
                deadline = time.monotonic() + PARK_TIMEOUT_S
                while True:
                    nodes = [d for d, _ in todo]
                    busy = [
                        n for n in range(self.n_nodes)
                        if n not in nodes and n not in self.reports and n not in self._gone and not self._quiescent(n, gen)
                    ]
                    if not busy:
                        break
                    todo += self._recover_events(nodes, len(self.recoveries) + len(todo))
                    if time.monotonic() > deadline:
                        raise self._failure(busy[0], f"did not park within {PARK_TIMEOUT_S:.0f} s for the recovery of node {nodes[0]}")
            nodes = [d for d, _ in todo]
            repaired = self.repair(nodes) if self.repair is not None and self.started else {}
            for d, failure in todo:
                old = self._proc(d)
                self._retired.append(old)
                self._conn(d).close()
                self.incarnations[d] += 1
                self._killed_ns.pop(d, None)
                for field in ("pid", "phase", "where", "parked", "fault_ns"):
                    ctl.nodes[field][d] = 0
                self._spawn(d)
                if d not in replaced:
                    replaced.append(d)
                self.recoveries.append({
                    "node": d, "old_pid": old.pid, "new_pid": self._proc(d).pid, "incarnation": self.incarnations[d],
                    "phase": failure.phase, "where": failure.where or None, "detail": failure.detail,
                    "at_s": round((t0 - self.go_ns) / 1e9, 4) if self.started else None,
                    "detected_after_s": failure.detected_after_s, "repair": repaired.get(d, {}),
                })
            todo = []
            if quiesce:
                # The replacements fill their copies from the master while nothing is patched;
                # one that dies meanwhile is replaced in this same recovery.
                deadline = time.monotonic() + SETUP_TIMEOUT_S
                while not todo and (starting := [d for d in replaced if self._phase(d) < ready]):
                    todo = self._recover_events([], len(self.recoveries))
                    if time.monotonic() > deadline:
                        raise self._failure(starting[0], "did not reach phase 'ready' in time")
        if quiesce:
            took = round((time.perf_counter_ns() - t0) / 1e9, 4)
            for rec in self.recoveries[first:]:
                rec["took_s"] = took
            ctl.set("state", STATE_RUN)
        self.recovery_s += (time.perf_counter_ns() - t0) / 1e9

    def _recover_events(self, dead: list[int], counted: int) -> list[tuple[int, NodeFailure]]:
        """During a recovery: record reports, fail on errors, and return new deaths (to be
        replaced in the same recovery, if --recover allows that many)."""
        new: list[tuple[int, NodeFailure]] = []
        for node, msg in self._events(0.002, exclude=dead):
            if isinstance(msg, NodeError):
                self._gone.add(node)
                raise self._failure(node, msg.error, msg.phase)
            if msg is not None:
                self.reports[node] = msg
                continue
            failure = self._failure(node, self._exit_detail(node))
            if counted + len(new) + 1 > self.max_recoveries:
                self._gone.add(node)
                raise failure
            new.append((node, failure))
        return new
