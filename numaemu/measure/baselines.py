"""Raw baselines measured on this host, to judge numaemu's own costs against (BACKGROUND.md s.5):
a flag round trip through shared memory between two processes, and a
``multiprocessing.Barrier`` round. Both use real processes and real shared memory.

No process of a baseline ever waits for good on another: every wait has a deadline
(`WAIT_TIMEOUT_S`, a peer's start-up included), and each process watches the end of the others.
An end is read from multiprocessing's own sentinels, never from a pid: ``Process.sentinel``
(readable once the child has ended) in the parent, ``multiprocessing.parent_process().sentinel``
(end-of-file once the parent's end of that pipe has closed: the parent is gone) in a child. A
spinning side looks at them every `CHECK_EVERY` spins that found nothing (never on the fast path,
which is what is timed); a child blocked in the barrier has a thread that waits on its parent's.

The barrier round is timed by two children, while the parent only waits for them. A process that
dies inside ``Barrier.wait`` may die holding the barrier's lock (every wait takes it, and its
timeout too), after which nobody can ever take it: the parent, not being one of them, is never
stuck with them, and stops the survivor. (Under fork the second child holds a copy of the first's
end of its parent pipe, so the first learns of the parent's death once the second has left.)
A failure raises `BaselineFailure`, naming the baseline and the process at fault.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier
from typing import Any

import numpy as np

from numaemu.host.segments import Segment, new_token, segment_name

__all__ = ["flag_round_trip_ns", "barrier_round_ns", "BaselineFailure", "WAIT_TIMEOUT_S"]

WAIT_TIMEOUT_S = 30.0  # any one wait on another process (the first includes its start-up: spawn imports numpy)
ROUND_LIMIT_S = 0.01  # the parent's deadline for the barrier children: this per round (~40 us each), beyond WAIT_TIMEOUT_S
CHECK_EVERY = range(4096)  # spins (~0.3 ms) between two looks at the peer and the clock
FLAG = "flag round trip"
BARRIER = "multiprocessing.Barrier round"


class BaselineFailure(RuntimeError):
    """A baseline's process died, or did not answer in time."""


class _Peer:
    """Another process of a baseline, as one process sees it: `check` raises `BaselineFailure`
    once it has ended (its `sentinel` is readable) or a wait on it has lasted `WAIT_TIMEOUT_S`."""

    def __init__(self, baseline: str, who: str, sentinel: int, proc: BaseProcess | None = None) -> None:
        self.baseline = baseline
        self.who = who
        self.sentinel = sentinel
        self.proc = proc  # a child, seen from the parent: its exit code says how it ended
        self._round = -1
        self._since = 0.0

    def ended(self, timeout: float | None = 0) -> bool:
        return bool(wait_any([self.sentinel], timeout))

    def failure(self, what: str) -> BaselineFailure:
        return BaselineFailure(f"{self.baseline}: {self.who} {what}")

    def death(self) -> BaselineFailure:
        if self.proc is None:
            return self.failure("is gone")
        self.proc.join(1.0)
        code = self.proc.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited with code {code}"
        return self.failure(f"{how} before the baseline was done")

    def check(self, round_: int) -> None:
        """Round `round_` of a spin has found nothing for a while: raise if the peer is gone, or
        if this round has now waited `WAIT_TIMEOUT_S`."""
        if self.ended():
            raise self.death()
        now = time.monotonic()
        if round_ != self._round:
            self._round, self._since = round_, now
        elif now - self._since > WAIT_TIMEOUT_S:
            raise self.failure(f"did not answer within {WAIT_TIMEOUT_S:g} s")


def _parent_peer(baseline: str) -> _Peer:
    """In a child: the process that started it."""
    parent = mp.parent_process()
    assert parent is not None, "a baseline's peer runs in a child process"
    return _Peer(baseline, f"the process that started this one (pid {parent.pid})", parent.sentinel)


def _child_peer(baseline: str, role: str, proc: BaseProcess) -> _Peer:
    return _Peer(baseline, f"its {role} process (pid {proc.pid})", proc.sentinel, proc)


def _leave(exc: BaselineFailure) -> None:
    """A child's way out, from any thread: one line on stderr and exit code 1."""
    print(exc, file=sys.stderr, flush=True)
    os._exit(1)


def _watch(peer: _Peer, then: Callable[[], object]) -> None:
    """Call `then` from a daemon thread once `peer` has ended (a blocking wait on its sentinel)."""

    def run() -> None:
        peer.ended(None)
        then()

    threading.Thread(target=run, name=f"numaemu-baseline-watch-{peer.sentinel}", daemon=True).start()


def _stop(procs: list[BaseProcess]) -> None:
    """No child outlives its baseline, on any path."""
    for p in procs:
        if p.pid is not None and p.exitcode is None:
            p.kill()
    for p in procs:
        if p.pid is not None:
            p.join(5.0)


def _ended_well(p: BaseProcess, peer: _Peer) -> None:
    """A child that has done its part ends now; raise if not within the deadline, or not well."""
    p.join(WAIT_TIMEOUT_S)
    if p.exitcode is None:
        raise peer.failure(f"did not end within {WAIT_TIMEOUT_S:g} s of its last round")
    if p.exitcode != 0:
        raise peer.death()


# --------------------------------------------------------------------------------------------
# The flag round trip


def _flag_echo(name: str, rounds: int) -> None:
    seg = Segment.attach(name)
    parent = _parent_peer(FLAG)
    try:
        flags = seg.array(np.int64, 0, 2)
        for i in range(1, rounds + 1):
            while flags[0] != i:
                for _ in CHECK_EVERY:
                    if flags[0] == i:
                        break
                else:
                    parent.check(i)
            flags[1] = i
        del flags
    except BaselineFailure as exc:
        _leave(exc)
    finally:
        seg.close()


def flag_round_trip_ns(rounds: int = 20_000, start_method: str = "fork") -> float:
    """Median over blocks of 1,000 of: set a flag in shared memory, spin until another process
    (spinning on it) answers in the same segment."""
    seg = Segment.create(segment_name("flag", new_token()), 16)
    procs: list[BaseProcess] = []
    try:
        flags = seg.array(np.int64, 0, 2)
        flags[:] = 0
        ctx: Any = mp.get_context(start_method)
        p = ctx.Process(target=_flag_echo, args=(seg.name, rounds), daemon=True)
        procs.append(p)
        p.start()
        peer = _child_peer(FLAG, "echo", p)
        blocks = []
        i = 0
        while i < rounds:
            n = min(1000, rounds - i)
            t0 = time.perf_counter_ns()
            for _ in range(n):
                i += 1
                flags[0] = i
                while flags[1] != i:
                    for _ in CHECK_EVERY:
                        if flags[1] == i:
                            break
                    else:
                        peer.check(i)
            blocks.append((time.perf_counter_ns() - t0) / n)
        _ended_well(p, peer)
        del flags
        return statistics.median(blocks)
    finally:
        _stop(procs)
        seg.close()
        seg.unlink()


# --------------------------------------------------------------------------------------------
# The barrier round


def _barrier_side(barrier: Barrier, rounds: int, out: Connection | None) -> None:
    """One of the two processes at the barrier; the one with `out` times the rounds and sends
    the median over blocks of 100."""
    parent = _parent_peer(BARRIER)
    # The parent gone, nobody will ever collect the figure: leave at once, even from inside a wait.
    _watch(parent, lambda: _leave(parent.failure("is gone")))
    blocks = []
    try:
        for _ in range(rounds // 100):
            t0 = time.perf_counter_ns()
            for _ in range(100):
                barrier.wait(WAIT_TIMEOUT_S)
            blocks.append((time.perf_counter_ns() - t0) / 100)
    except threading.BrokenBarrierError:
        _leave(BaselineFailure(f"{BARRIER}: its other process did not meet this one at the barrier within {WAIT_TIMEOUT_S:g} s"))
    if out is not None:
        out.send(statistics.median(blocks))
        out.close()


def barrier_round_ns(rounds: int = 2_000, start_method: str = "fork") -> float:
    """Median over blocks of 100 of one ``multiprocessing.Barrier(2).wait()`` round."""
    ctx: Any = mp.get_context(start_method)
    barrier = ctx.Barrier(2)
    result, out = ctx.Pipe(duplex=False)
    procs: list[BaseProcess] = [
        ctx.Process(target=_barrier_side, args=(barrier, rounds, out), daemon=True),
        ctx.Process(target=_barrier_side, args=(barrier, rounds, None), daemon=True),
    ]
    try:
        for p in procs:
            p.start()
        out.close()
        peers = [_child_peer(BARRIER, role, p) for role, p in zip(("timing", "barrier peer"), procs, strict=True)]
        figure = _wait_for_figure(result, peers, WAIT_TIMEOUT_S + rounds * ROUND_LIMIT_S)
        for p, peer in zip(procs, peers, strict=True):
            _ended_well(p, peer)
        return figure
    finally:
        _stop(procs)
        result.close()


def _wait_for_figure(result: Connection, peers: list[_Peer], timeout_s: float) -> float:
    """The timing child's figure; raise naming the child that died first, or the timing child
    if none came within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        ready = wait_any([result, *(p.sentinel for p in peers)], min(max(0.0, left), 1.0))
        if result in ready:
            try:
                return float(result.recv())
            except EOFError:  # it died before sending: its sentinel says so next
                ready = wait_any([p.sentinel for p in peers], 1.0)
        for peer in peers:
            if peer.sentinel in ready:
                raise peer.death()
        if left <= 0:
            raise peers[0].failure(f"did not finish {BARRIER}s within {timeout_s:g} s")
