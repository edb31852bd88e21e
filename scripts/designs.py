#!/usr/bin/env python3
"""The page-table designs of the two series and partial replication: what each costs and gains.

What the series say (BACKGROUND.md s.1):
- King (arm64): a level-0 entry of its own for the image, node-private lower tables, no KASLR.
- Kuzin (x86): per-node PGD and P4D/PUD/PMD pages for the top 2 GiB, text and rodata 2 MiB aligned
  and mapped at PMD granularity, one more PGD page per process per node; KASLR supported.
- IRIX: a copy on every n-th node only; the others use the nearest copy.

Ours: ``numaemu run --workload db --policy single,replicate`` on 2s-xeon and kunpeng920, hot and
cold caches, under ``--pt-style none|arm64|x86``, with ``--replicas-every 1`` and, on the 4-node
kunpeng920, 2 (copies on nodes 0 and 2), and once with ``--kaslr``. Every figure here is the
model's (memory from the placement and the design; speedups from emulated time), which does
not depend on the host's load. The speedup is the ratio of the nodes' mean emulated time per
request, every node weighted alike: the run's own model column weights nodes by the requests
each finished, which under partial replication (nodes at different distances from their copy)
follows how the host scheduled them. Requests mode, --time-scale 1.

    python scripts/designs.py            # about a minute on a 2-core host
"""

from __future__ import annotations

import sys
import time

from _published import Report, options, record, run, write_results

REQUESTS = 2000
CASES = [
    # topology, cache, pt-style, replicas-every, kaslr
    *[(topo, cache, pt, 1, False) for topo in ("2s-xeon", "kunpeng920") for cache in ("hot", "cold") for pt in ("none", "arm64", "x86")],
    *[("kunpeng920", cache, pt, 2, False) for cache in ("hot", "cold") for pt in ("none", "arm64", "x86")],
    ("kunpeng920", "cold", "x86", 1, True),
]


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def node_mean_us(rec: dict) -> float:
    """Emulated us per request averaged over nodes, each alike (see the docstring)."""
    times = [n["emulated_us_per_request"] for n in rec["per_node"]]
    return sum(times) / len(times)


def main() -> int:
    opts = options(__doc__, None, repeat=1)
    started = time.monotonic()
    out = Report()
    rows, docs = [], []
    for topo, cache, pt, every, kaslr in CASES[: 4 if opts.quick else None]:
        argv = ["--topology", topo, "--workload", "db", "--cache", cache, "--policy", "single,replicate",
                "--requests", str(REQUESTS), "--time-scale", "1", "--pt-style", pt, "--replicas-every", str(every)]
        if kaslr:
            argv.append("--kaslr")
        doc = run(argv)
        single, rep = record(doc, "single"), record(doc, "replicate")
        tables = rep["page_tables"]
        copies = sum(n["image_bytes"] for n in rep["per_node"])
        extra_tables = (sum(tables["table_bytes"]) + sum(tables["padding_bytes"])
                        - sum(single["page_tables"]["table_bytes"]) - sum(single["page_tables"]["padding_bytes"])) if tables else 0
        walk = f"{100 * tables['walk_share_of_kernel_time']:.1f}/{100 * single['page_tables']['walk_share_of_kernel_time']:.1f}" if tables else "-"
        rows.append([
            topo, cache, pt + (" kaslr" if kaslr else ""), str(every), ",".join(map(str, rep["copy_nodes"])),
            f"{node_mean_us(single) / node_mean_us(rep):.3f}", walk, mib(copies),
            f"{sum(tables['table_bytes']) // 1024}" if tables else "-", mib(sum(tables["padding_bytes"])) if tables else "-",
            f"{tables['per_process_bytes'] // 1024}" if tables else "-", mib(rep["extra_memory_bytes"] + extra_tables),
        ])
        docs.append({"argv": argv, "image_base": doc["image"]["base"], "single": single, "replicate": rep})
    out("Model speedup of replicate over single (db), and the memory of each design (MiB unless KiB)")
    out.table(
        ["topology", "cache", "pt-style", "every", "copies", "speedup", "walk% r/s", "copies MiB", "tables KiB", "pad MiB", "per-proc KiB", "extra MiB"],
        rows, "lllrlrrrrrrr",
    )
    out()
    out("walk% r/s: page walks' share of kernel time, replicate / single. extra: replicate's memory beyond single's,")
    out("copies, tables and 2 MiB padding together. per-proc: what every process costs on top (x86: a PGD per extra node).")
    write_results("designs", opts, out, {"requests": REQUESTS, "cases": docs}, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
