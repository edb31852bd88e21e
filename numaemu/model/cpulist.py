"""CPU lists in the kernel's cpulist syntax, as pure functions.

The syntax is the one of ``/sys/devices/system/node/node0/cpulist`` and ``taskset -c``
(lib/bitmap.c ``bitmap_parselist``): comma-separated CPU numbers and inclusive ranges,
``0-3,8,10-11``. Topologies, ``--host-cpus`` and reports all read and write it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["MAX_CPU", "parse_cpu_list", "format_cpu_list"]

# The largest CPU number a list may name: Linux's NR_CPUS is at most 8192 (CONFIG_MAXSMP), so
# CPUs are 0..8191. It also keeps a typo such as 0-99999999999 from expanding into a huge set.
MAX_CPU = 8191


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """``'0-2,5'`` -> ``(0, 1, 2, 5)``. Sorted, without duplicates. Raises ValueError."""
    text = text.strip()
    if not text:
        return ()
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ValueError(f"'{part}' is not a CPU number or range such as 0-3") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"'{part}' is not a CPU range: need 0 <= first <= last")
        if hi > MAX_CPU:
            raise ValueError(f"'{part}': CPU numbers go up to {MAX_CPU} (Linux's most CPUs, NR_CPUS, is {MAX_CPU + 1})")
        cpus.update(range(lo, hi + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """``(0, 1, 2, 5)`` -> ``'0-2,5'``: the inverse of `parse_cpu_list`."""
    out: list[str] = []
    run: list[int] = []
    for cpu in sorted(set(cpus)):
        if run and cpu == run[-1] + 1:
            run.append(cpu)
            continue
        if run:
            out.append(_fmt_run(run))
        run = [cpu]
    if run:
        out.append(_fmt_run(run))
    return ",".join(out)


def _fmt_run(run: Sequence[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"
