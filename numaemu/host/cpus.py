"""This process's CPUs: which it may run on, and pinning it to a set.

The cpulist syntax these are written in (``0-3,8,10-11``, lib/bitmap.c ``bitmap_parselist``)
is pure and lives in `numaemu.model.cpulist`; it is re-exported here for the OS-side callers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from numaemu.model.cpulist import MAX_CPU, format_cpu_list, parse_cpu_list

__all__ = ["MAX_CPU", "parse_cpu_list", "format_cpu_list", "host_cpus", "pin_to"]


def host_cpus() -> tuple[int, ...]:
    """The host CPUs this process may use (its affinity mask, which honours cgroups/taskset)."""
    return tuple(sorted(os.sched_getaffinity(0)))


def pin_to(cpus: Iterable[int]) -> tuple[int, ...]:
    """Pin the calling process to `cpus`; return the affinity the kernel actually set."""
    os.sched_setaffinity(0, set(cpus))
    return tuple(sorted(os.sched_getaffinity(0)))
