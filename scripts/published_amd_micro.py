#!/usr/bin/env python3
"""The AMD reviewer's run of the x86 series' microbenchmarks (2 x EPYC 7713) beside numaemu's
prediction on the same machine.

Published (Shivank Garg, AMD, 2024-01-25, on the x86 series' thread,
<9cbb1c1e-9dd6-478b-b75d-e6c9f3d6c8f7@amd.com>: "Performance Evaluation results (% gain over
base kernel 6.5.0-rc5)"; 2 x EPYC 7713, 64 cores a socket, the test node isolated): hot caches
fork-1 +1.1%, fork-1024 -3.8%, mmap/munmap -1.5%, mmap/lock -4.7%, open/close -6.8%, kill
+3.3%, mount -13.0%; cold caches fork-1 +1.2%, fork-1024 -7.2%, mmap/munmap -1.6%, mmap/lock
-1.0%, open/close +4.6%, kill -54.2%, mount -8.5%. Kuzin replied that Huawei had no EPYC to
reproduce it on.

Ours: numaemu on the 2s-epyc-7713 preset (NPS1) and the epyc-7713-nps1 profile
(scripts/_micro.py says how). Parameters: --repeat 3, --duration 2, --quick, --out results.

    python scripts/published_amd_micro.py
"""

from __future__ import annotations

import sys

from _micro import Table, diagnose, main

__all__ = ["TABLE"]

TABLE = Table(
    name="amd-micro",
    title="The x86 series' microbenchmarks on AMD (Garg, 2024-01-25, 2 x EPYC 7713)",
    source="Shivank Garg, Re: [PATCH RFC 00/12] x86 NUMA-aware kernel replication, 2024-01-25, <9cbb1c1e-9dd6-478b-b75d-e6c9f3d6c8f7@amd.com>",
    topology="2s-epyc-7713",
    hot={"fork-1": 0.011, "fork-1024": -0.038, "mmap/munmap": -0.015, "mmap/lock": -0.047, "open/close": -0.068, "kill": 0.033, "mount": -0.130},
    cold={"fork-1": 0.012, "fork-1024": -0.072, "mmap/munmap": -0.016, "mmap/lock": -0.010, "open/close": 0.046, "kill": -0.542, "mount": -0.085},
    reasons={},
)

if __name__ == "__main__":
    sys.exit(main(TABLE, __doc__, diagnose))
