"""Raw baselines measured on this host, to judge numaemu's own costs against (BACKGROUND.md s.5):
a flag round trip through shared memory between two processes, and a
``multiprocessing.Barrier`` round. Both use real processes and real shared memory.

Neither side ever waits for good on the other: every wait has a deadline (`WAIT_TIMEOUT_S`, the
peer's start-up included), and each side watches the other's end. A process's end is read from
multiprocessing's own sentinels, never from a pid: ``Process.sentinel`` (readable once the child
has ended) in the parent, ``multiprocessing.parent_process().sentinel`` (end-of-file once the
parent's end of that pipe has closed, i.e. the parent is gone) in the child. A baseline has one
child at a time, so no other process holds those pipes' ends. A spinning side looks at them
every `CHECK_EVERY` spins that found nothing (never on the fast path, which is what is timed);
a side blocked in the barrier has a thread that waits on them and breaks the barrier. A failure
raises `BaselineFailure`, naming the baseline and the peer.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import statistics
import sys
import threading
import time
from multiprocessing.connection import wait as wait_any
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier
from typing import Any

import numpy as np

from numaemu.host.segments import Segment, new_token, segment_name

__all__ = ["flag_round_trip_ns", "barrier_round_ns", "BaselineFailure", "WAIT_TIMEOUT_S"]

WAIT_TIMEOUT_S = 30.0  # any one wait for the peer (the first includes its start-up: spawn imports numpy)
CHECK_EVERY = range(4096)  # spins (~0.3 ms) between two looks at the peer and the clock
FLAG = "flag round trip"
BARRIER = "multiprocessing.Barrier round"


class BaselineFailure(RuntimeError):
    """A baseline's peer process died, or did not answer in time."""


class _Peer:
    """The other process of a baseline, as one side sees it: `check` raises `BaselineFailure` once
    it has ended (its `sentinel` is readable) or a wait on it has lasted `WAIT_TIMEOUT_S`."""

    def __init__(self, baseline: str, who: str, sentinel: int, proc: BaseProcess | None = None) -> None:
        self.baseline = baseline
        self.who = who
        self.sentinel = sentinel
        self.proc = proc  # the child, seen from the parent: its exit code says how it ended
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
    """In the child: the process that started it."""
    parent = mp.parent_process()
    assert parent is not None, "a baseline's peer runs in a child process"
    return _Peer(baseline, f"the process that started this peer (pid {parent.pid})", parent.sentinel)


def _child_peer(baseline: str, role: str, proc: BaseProcess) -> _Peer:
    return _Peer(baseline, f"its {role} process (pid {proc.pid})", proc.sentinel, proc)


def _as_exit(exc: BaselineFailure) -> SystemExit:
    """The child's way out: one line on stderr and exit code 1, not a traceback."""
    return SystemExit(str(exc))


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
        raise _as_exit(exc) from None
    finally:
        seg.close()


def flag_round_trip_ns(rounds: int = 20_000, start_method: str = "fork") -> float:
    """Median over blocks of 1,000 of: set a flag in shared memory, spin until another process
    (spinning on it) answers in the same segment."""
    seg = Segment.create(segment_name("flag", new_token()), 16)
    p: BaseProcess | None = None
    try:
        flags = seg.array(np.int64, 0, 2)
        flags[:] = 0
        ctx: Any = mp.get_context(start_method)
        p = ctx.Process(target=_flag_echo, args=(seg.name, rounds), daemon=True)
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
        _join(p, peer)
        del flags
        return statistics.median(blocks)
    finally:
        _stop(p)
        seg.close()
        seg.unlink()


def _barrier_peer(barrier: Barrier, done: Any, rounds: int) -> None:
    parent = _parent_peer(BARRIER)
    # The parent gone, nobody will ever meet this process at the barrier: leave at once.
    _watch(parent, lambda: _leave(parent.failure("is gone")))
    try:
        for _ in range(rounds):
            barrier.wait(WAIT_TIMEOUT_S)
    except threading.BrokenBarrierError:
        raise _as_exit(parent.failure(f"did not meet it at the barrier within {WAIT_TIMEOUT_S:g} s")) from None
    done.value = 1  # before it ends: the parent's watch tells a death mid-way from this


def _leave(exc: BaselineFailure) -> None:
    print(exc, file=sys.stderr, flush=True)
    os._exit(1)


def barrier_round_ns(rounds: int = 2_000, start_method: str = "fork") -> float:
    """Median over blocks of 100 of one ``multiprocessing.Barrier(2).wait()`` round."""
    ctx: Any = mp.get_context(start_method)
    barrier = ctx.Barrier(2)
    done = ctx.RawValue("b", 0)  # set by the peer once it has met every round
    p = ctx.Process(target=_barrier_peer, args=(barrier, done, rounds), daemon=True)
    p.start()
    peer = _child_peer(BARRIER, "barrier peer", p)
    # A peer that ends mid-way breaks the barrier, so that this side's wait ends at once (not
    # at its deadline). Its exit code is not asked here: only the main thread reaps it.
    _watch(peer, lambda: done.value or barrier.abort())
    blocks = []
    try:
        for _ in range(rounds // 100):
            t0 = time.perf_counter_ns()
            for _ in range(100):
                barrier.wait(WAIT_TIMEOUT_S)
            blocks.append((time.perf_counter_ns() - t0) / 100)
        _join(p, peer)
    except threading.BrokenBarrierError:
        if peer.ended(1.0):
            raise peer.death() from None
        raise peer.failure(f"did not meet it at the barrier within {WAIT_TIMEOUT_S:g} s") from None
    finally:
        _stop(p)
    return statistics.median(blocks)


def _watch(peer: _Peer, then: Any) -> None:
    """Call `then` from a daemon thread once `peer` has ended (a blocking wait on its sentinel)."""

    def run() -> None:
        peer.ended(None)
        then()

    threading.Thread(target=run, name=f"numaemu-baseline-watch-{peer.sentinel}", daemon=True).start()


def _join(p: BaseProcess, peer: _Peer) -> None:
    """The peer has answered its last round: it ends now; if not within the deadline, fail."""
    p.join(WAIT_TIMEOUT_S)
    if p.exitcode is None:
        raise peer.failure(f"did not end within {WAIT_TIMEOUT_S:g} s of its last round")
    if p.exitcode != 0:
        raise peer.death()


def _stop(p: BaseProcess | None) -> None:
    """No peer outlives its baseline, on any path."""
    if p is None or p.pid is None:
        return
    if p.exitcode is None:
        p.kill()
    p.join(5.0)
