#!/usr/bin/env python3
"""Kuzin's microbenchmark table (2 x Xeon E5-2690) beside numaemu's prediction on the same machine.

Published (Artem Kuzin, "[PATCH RFC 00/12] x86 NUMA-aware kernel replication", 2023-12-28,
<20231228131056.602411-1-artem.kuzin@huawei.com>; gain against the base kernel): hot caches
fork-1 2.3%, fork-1024 10.8%, mmap/munmap 0.4%, mmap/lock 4.2%, open/close 3.2%, kill 4%, mount
8.7%; cold caches fork-1 42.7%, fork-1024 17.1%, mmap/munmap 0.4%, mmap/lock 1.5%, open/close
0.4%, kill 26.1%, mount 4.1%.

Ours: numaemu on the 2s-e5-2690 preset and the e5-2690 hardware profile (scripts/_micro.py says
how). Parameters: --repeat 3, --duration 2 (seconds per policy), --quick (1 repetition, 0.1 s),
--out results. About 4 minutes on a 2-core host.

    python scripts/published_x86_micro.py
"""

from __future__ import annotations

import sys

from _micro import BENCHMARKS, Table, as_timed_speedup, diagnose, main

__all__ = ["TABLE", "as_timed_speedup", "BENCHMARKS"]

TABLE = Table(
    name="x86-micro",
    title="The x86 series' microbenchmarks (Kuzin, RFC 2023-12-28, 2 x Xeon E5-2690)",
    source="Kuzin, [PATCH RFC 00/12] x86 NUMA-aware kernel replication, 2023-12-28, <20231228131056.602411-1-artem.kuzin@huawei.com>",
    topology="2s-e5-2690",
    hot={"fork-1": 0.023, "fork-1024": 0.108, "mmap/munmap": 0.004, "mmap/lock": 0.042, "open/close": 0.032, "kill": 0.040, "mount": 0.087},
    cold={"fork-1": 0.427, "fork-1024": 0.171, "mmap/munmap": 0.004, "mmap/lock": 0.015, "open/close": 0.004, "kill": 0.261, "mount": 0.041},
    reasons={},
)

if __name__ == "__main__":
    sys.exit(main(TABLE, __doc__, diagnose))
