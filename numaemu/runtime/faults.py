"""Failure injection: the ``NUMAEMU_FAULT`` test hook and ``stress --kill-workers``.

**Test hook** (for tests only; not an option): ``NUMAEMU_FAULT=NODE:POINT[:COUNT[:SESSION[:ACTION]]]``
in the environment of a numaemu process makes node NODE's worker SIGKILL itself (``os.kill(getpid(),
SIGKILL)``: a real death, nothing unwinds, no message is sent) the COUNT-th time (default 1) it
reaches POINT, in the SESSION-th set of node processes this numaemu process starts (default 1: the
first policy of ``run``, the first run of ``bench``, the one of ``stress``). ACTION ``stop`` sends
SIGSTOP instead: the node hangs without dying (for the tests of a forced stop). Points:

- ``spawn``: the worker has started and attached nothing yet (phase ``spawn``)
- ``attach``, ``fill``, ``ready``, ``report``: on entering that phase
- ``run``: before each batch of the run phase (each reader batch in ``stress``)
- ``stop_machine``: inside a stop_machine rendezvous, just after the node counted itself in
- ``int3_sync``: inside text_poke_bp, the node as the patcher, once it has written its INT3s and
  asked for the first sync (so it dies holding text_mutex with INT3s in the text)

Only the first incarnation of a node is armed: a node that ``--recover`` respawns runs clean.
The worker records when it killed itself (``fault_ns`` in its control slot), so the coordinator
can report how long it took to notice.

**Chaos** (``stress --kill-workers RATE``): `KillSchedule` draws the moments at which the
coordinator SIGKILLs a random running node, a Poisson process of RATE kills per second over all
nodes, seeded by ``--seed``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from numaemu.errors import UsageError

__all__ = ["ENV", "POINTS", "ACTIONS", "Fault", "Launch", "FaultHook", "parse_fault", "fault_from_env", "KillSchedule"]

ENV = "NUMAEMU_FAULT"
POINTS = ("spawn", "attach", "fill", "ready", "run", "stop_machine", "int3_sync", "report")
ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


@dataclass(frozen=True)
class Fault:
    node: int
    point: str
    count: int = 1
    session: int = 1
    action: str = "kill"


@dataclass(frozen=True)
class Launch:
    """What a node process is told beyond its config: its fault (None: runs clean) and which
    incarnation of its node it is (0: the first; k: the k-th replacement under --recover)."""

    fault: Fault | None = None
    incarnation: int = 0


def parse_fault(text: str) -> Fault:
    """``NODE:POINT[:COUNT[:SESSION[:ACTION]]]``; raises ValueError with the rule broken."""
    parts = text.strip().split(":")
    if not 2 <= len(parts) <= 5:
        raise ValueError(f"'{text}' is not NODE:POINT[:COUNT[:SESSION[:ACTION]]]")
    action = parts.pop() if len(parts) == 5 else "kill"
    if action not in ACTIONS:
        raise ValueError(f"'{text}': action '{action}' is not one of {', '.join(ACTIONS)}")
    try:
        numbers = [int(x) for x in (parts[0], *parts[2:])]
    except ValueError:
        raise ValueError(f"'{text}': NODE, COUNT and SESSION are integers") from None
    if parts[1] not in POINTS:
        raise ValueError(f"'{text}': point '{parts[1]}' is not one of {', '.join(POINTS)}")
    if numbers[0] < 0 or any(x < 1 for x in numbers[1:]):
        raise ValueError(f"'{text}': NODE must be >= 0, COUNT and SESSION >= 1")
    node, count, session = (*numbers, 1, 1)[:3]  # COUNT and SESSION default to 1
    return Fault(node, parts[1], count, session, action)


def fault_from_env(environ: dict[str, str] | None = None) -> Fault | None:
    text = (os.environ if environ is None else environ).get(ENV, "")
    if not text:
        return None
    try:
        return parse_fault(text)
    except ValueError as exc:
        raise UsageError(ENV, str(exc)) from None


class FaultHook:
    """In a worker: `reached(point)` kills the process when its armed fault is due. Cheap when
    unarmed (one attribute test), so it can sit in per-batch paths."""

    def __init__(self, fault: Fault | None, node: int, record: Callable[[int], None] | None = None) -> None:
        armed = fault if fault is not None and fault.node == node else None
        self.point: str | None = armed.point if armed is not None else None
        self.left = armed.count if armed is not None else 0
        self.signal = ACTIONS[fault.action] if fault is not None else signal.SIGKILL
        self.record = record  # stores the moment of death where the coordinator can read it

    def reached(self, point: str) -> None:
        if point != self.point:
            return
        self.left -= 1
        if self.left > 0:
            return
        if self.record is not None and self.signal == signal.SIGKILL:
            self.record(time.perf_counter_ns())
        self.point = None  # once (a stopped node that is continued goes on)
        os.kill(os.getpid(), self.signal)


class KillSchedule:
    """When the coordinator kills a node, and which (``stress --kill-workers RATE``): a Poisson
    process of `rate` kills per second over all nodes, from `start_ns`, seeded. Pure apart from
    the clock values it is given."""

    def __init__(self, rate: float, seed: int, start_ns: int) -> None:
        self.rate = rate
        self.rng = np.random.default_rng([seed, 0x6B696C6C])  # "kill"
        self.next_ns = start_ns + self._gap()

    def _gap(self) -> int:
        return int(self.rng.exponential(1e9 / self.rate))

    def due(self, now_ns: int) -> bool:
        return now_ns >= self.next_ns

    def wait_s(self, now_ns: int) -> float:
        return max(0.0, (self.next_ns - now_ns) / 1e9)

    def pick(self, candidates: Sequence[int], now_ns: int) -> int | None:
        """The node to kill now (None: no candidate); draws the next moment from `now_ns`."""
        self.next_ns = now_ns + self._gap()
        if not candidates:
            return None
        return int(candidates[int(self.rng.integers(len(candidates)))])
