"""Tasks: which request a task runs next, and when it migrates (pure, deterministic).

Every choice is a counter-based hash of (seed, task, request number): no random state travels
with a task, so a task that migrates continues exactly where it was, on any node, and the
coordinator can replay any task's requests afterwards to check what the nodes read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from numaemu.model.arrays import F64, I64, U64, Ints

__all__ = ["TASKS_PER_NODE", "RequestPlan", "plan_requests", "plan_tasks", "choose_destination", "splitmix64"]

TASKS_PER_NODE = 4
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MIGRATE_SALT = np.uint64(0xD1B54A32D192ED03)


def splitmix64(x: U64) -> U64:
    """SplitMix64's output function (Steele, Lea, Flood 2014), elementwise on uint64."""
    z: U64 = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class RequestPlan:
    """The requests a task runs now, and where it goes after them."""

    templates: I64  # the template of each request to run now
    migrate_to: int  # node the task moves to after the last of these requests; -1 = stays


def _hash(seed: int, tasks: I64, firsts: I64, width: int, salt: np.uint64) -> U64:
    """Row i: the hashes of requests firsts[i]..firsts[i]+width-1 of task tasks[i]."""
    base: U64 = splitmix64(np.array([seed ^ (int(t) << 32) for t in tasks], dtype=np.uint64)) ^ salt
    steps: U64 = np.arange(width, dtype=np.uint64)
    return splitmix64(base[:, None] + (firsts.astype(np.uint64)[:, None] + steps))


def plan_requests(
    seed: int,
    task: int,
    first: int,
    count: int,
    n_templates: int,
    node: int,
    n_nodes: int,
    migrate_rate: float,
    cdf: F64 | None = None,
) -> RequestPlan:
    """Requests `first`..`first+count-1` of `task` on `node`, cut short at the first migration.

    `migrate_rate` is the probability that a task migrates after any one request; the
    destination is another node, uniformly. Templates are drawn uniformly, or with the
    cumulative weights `cdf` when given (a recorded workload's entry mix, `Workload.cdf`).
    """
    return plan_tasks(seed, [task], [first], [count], n_templates, node, n_nodes, migrate_rate, cdf)[0]


def plan_tasks(
    seed: int,
    tasks: Sequence[int] | Ints,
    firsts: Sequence[int] | Ints,
    counts: Sequence[int] | Ints,
    n_templates: int,
    node: int,
    n_nodes: int,
    migrate_rate: float,
    cdf: F64 | None = None,
) -> list[RequestPlan]:
    """`plan_requests` for several tasks at once (task i: requests firsts[i].. of count
    counts[i]), in a few array operations instead of a dozen per task: a node plans one batch
    of all its tasks this way, and numpy's per-call cost is what a batch pays most for."""
    t = np.asarray(tasks, dtype=np.int64)
    f = np.asarray(firsts, dtype=np.int64)
    c = [int(x) for x in counts]
    width = max(c, default=0)
    pick = _hash(seed, t, f, width, np.uint64(0))
    if cdf is None:
        choice = (pick % np.uint64(n_templates)).astype(np.int64)
    else:
        u = (pick >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        choice = np.minimum(np.searchsorted(cdf, u, side="right"), n_templates - 1).astype(np.int64)
    if migrate_rate <= 0 or n_nodes < 2:
        return [RequestPlan(choice[i, : c[i]], -1) for i in range(len(c))]
    h = _hash(seed, t, f, width, _MIGRATE_SALT)
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    moving = (u < migrate_rate) & (np.arange(width) < np.array(c)[:, None])
    plans: list[RequestPlan] = []
    for i in range(len(c)):
        if not moving[i].any():
            plans.append(RequestPlan(choice[i, : c[i]], -1))
            continue
        k = int(moving[i].argmax())
        dest = (node + 1 + int(h[i, k] % np.uint64(n_nodes - 1))) % n_nodes
        plans.append(RequestPlan(choice[i, : k + 1], dest))
    return plans


def choose_destination(owned: Ints, src: int, preferred: int, per_node: int = TASKS_PER_NODE) -> int:
    """Where a task that wants to leave `src` may go, given each node's task count `owned`.

    Migration must not empty a node (an idle node would distort throughput) nor pile tasks on
    one, as a scheduler's load balancing would prevent: a node gives a task away only while it
    has at least `per_node`, to a node that has at most `per_node`, so every node keeps between
    per_node - 1 and per_node + 1 tasks (concurrent moves aside). The preferred destination is
    tried first, then the next nodes in order. Returns -1 when no move is allowed.
    """
    n = len(owned)
    if owned[src] < per_node:
        return -1
    for i in range(n):
        dest = (preferred + i) % n
        if dest != src and owned[dest] <= per_node:
            return dest
    return -1
