"""Raw baselines measured on this host, to judge numaemu's own costs against (BACKGROUND.md s.5):
a flag round trip through shared memory between two processes, and a
``multiprocessing.Barrier`` round. Both use real processes and real shared memory."""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time

import numpy as np

from numaemu.host.segments import Segment, new_token, segment_name

__all__ = ["flag_round_trip_ns", "barrier_round_ns"]


def _flag_echo(name: str, rounds: int) -> None:
    seg = Segment.attach(name)
    try:
        flags = seg.array(np.int64, 0, 2)
        for i in range(1, rounds + 1):
            while flags[0] != i:
                pass
            flags[1] = i
        del flags
    finally:
        seg.close()


def flag_round_trip_ns(rounds: int = 20_000, start_method: str = "fork") -> float:
    """Median over blocks of 1,000 of: set a flag in shared memory, spin until another process
    (spinning on it) answers in the same segment."""
    seg = Segment.create(segment_name("flag", new_token()), 16)
    try:
        flags = seg.array(np.int64, 0, 2)
        flags[:] = 0
        ctx = mp.get_context(start_method)
        p = ctx.Process(target=_flag_echo, args=(seg.name, rounds), daemon=True)
        p.start()
        blocks = []
        i = 0
        while i < rounds:
            n = min(1000, rounds - i)
            t0 = time.perf_counter_ns()
            for _ in range(n):
                i += 1
                flags[0] = i
                while flags[1] != i:
                    pass
            blocks.append((time.perf_counter_ns() - t0) / n)
        p.join(10)
        del flags
        return statistics.median(blocks)
    finally:
        seg.close()
        seg.unlink()


def _barrier_peer(barrier, rounds: int) -> None:
    for _ in range(rounds):
        barrier.wait()


def barrier_round_ns(rounds: int = 2_000, start_method: str = "fork") -> float:
    """Median over blocks of 100 of one ``multiprocessing.Barrier(2).wait()`` round."""
    ctx = mp.get_context(start_method)
    barrier = ctx.Barrier(2)
    p = ctx.Process(target=_barrier_peer, args=(barrier, rounds), daemon=True)
    p.start()
    blocks = []
    for _ in range(rounds // 100):
        t0 = time.perf_counter_ns()
        for _ in range(100):
            barrier.wait()
        blocks.append((time.perf_counter_ns() - t0) / 100)
    p.join(10)
    return statistics.median(blocks)
