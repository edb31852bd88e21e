#!/usr/bin/env python3
"""Measure what one iteration of each built-in microbenchmark costs the kernel on this machine,
for numaemu/data/workloads/calls.json.

A recording (numaemu record) says where the kernel spends its time, not how long one call
takes; the x86 design's per-process cost (one more PGD a node at every fork, timing.py) is only
meaningful against the real time of the fork it is added to. So this runs each mode of
scripts/workloads/microbench.c for SECONDS, reads the iterations it prints and the kernel time
of its whole process tree (getrusage RUSAGE_CHILDREN: ru_stime counts the children it waited
for), and writes the kernel microseconds an iteration and the forks an iteration does.

    python scripts/measure_calls.py [SECONDS]     (default 2; run as root for mount)
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "numaemu" / "data" / "workloads" / "calls.json"
# Forks an iteration of each mode does (microbench.c): fork and fork1024 fork a child that exits;
# echo forks its server once, before the loop; the others fork nothing in the loop.
FORKS = {"getpid": 0, "fork": 1, "fork1024": 1, "mmap": 0, "mmap_lock": 0, "open": 0, "kill": 0, "mount": 0, "compute": 0, "echo": 0}


def main() -> int:
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    build = ROOT / "build" / "workloads"
    build.mkdir(parents=True, exist_ok=True)
    exe = build / "microbench"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(exe), str(ROOT / "scripts" / "workloads" / "microbench.c")], check=True)
    calls = {}
    for mode, forks in FORKS.items():
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        out = subprocess.run([str(exe), mode, f"{secs:g}"], cwd=build, capture_output=True, text=True, check=False)
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode != 0:
            print(f"{mode}: failed ({out.stderr.strip()}); skipped", file=sys.stderr)
            continue
        iterations = int(out.stdout.split(":")[1].split()[0])
        stime = after.ru_stime - before.ru_stime
        utime = after.ru_utime - before.ru_utime
        calls[mode] = {"iterations": iterations, "wall_s": round(wall, 3), "system_s": round(stime, 3), "user_s": round(utime, 3),
                       "kernel_us_per_iteration": round(1e6 * stime / iterations, 4), "forks_per_iteration": forks}
        print(f"{mode:10} {iterations:>10,} iterations  {1e6 * stime / iterations:9.3f} us kernel an iteration", file=sys.stderr)
    doc = {"made_by": f"python scripts/measure_calls.py {secs:g}", "kernel": platform.release(), "machine": platform.machine(),
           "cpus": os.cpu_count(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "calls": calls}
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
