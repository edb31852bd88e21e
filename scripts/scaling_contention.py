#!/usr/bin/env python3
"""Single against replicate on 2, 4 and 8 nodes, with the memory and links of the node holding
the only copy as queues (numaemu/model/contention.py): the scaling argument of both replication
series (and of IRIX's), as numaemu's model plays it out.

Each point: ``numaemu run --topology N --workload W --cache C --policy single,replicate`` (a
numa=fake-style machine: N nodes of 4 cores, SLIT 10/20, latency derived at 85 ns, one node a
socket, the default e5-2690 profile: 51.2 GB/s of memory a node, 32 GB/s of links a socket).
Printed per point: the model's gain of replicate, the gain it would have without queueing (the
coordinator's traffic pass, before the waits), what single's requests spend queueing, node 0's
memory and link utilisation under single, and the measured (wall-clock) gain.

    python scripts/scaling_contention.py [--repeat 3] [--duration 1] [--quick]

On this 2-core VM 4 and 8 nodes are oversubscribed: the model's figures are exact, the measured
ones lose fidelity (the 'lost' column).
"""

from __future__ import annotations

import statistics
import sys
import time

from _published import Pair, Report, Spread, options, pct, record, run, write_results

NODES = (2, 4, 8)
CASES = (("db", "hot"), ("db", "cold"), ("fork1024", "cold"))


def point(n: int, workload: str, cache: str, duration: float) -> dict:
    doc = run(["--topology", str(n), "--workload", workload, "--cache", cache, "--policy", "single,replicate", "--duration", f"{duration:g}"])
    single, repl = record(doc, "single"), record(doc, "replicate")
    pair = Pair.of(single, repl)
    # Throughput: every node runs its own requests, so requests a second add up over nodes.
    t_single = sum(1 / t for t in single["hardware"]["traffic"]["ns_per_request"])
    t_repl = sum(1 / t for t in repl["hardware"]["traffic"]["ns_per_request"])
    q = single["hardware"]["queueing"]
    return {
        "model": pair.model, "measured": pair.measured, "no_queueing": t_repl / t_single,
        "queue_share": single["hardware"]["queue_share_of_kernel_time"], "queue_ns": single["hardware"]["queue_ns_per_request"],
        "memory_rho0": q["memory_utilisation"][0], "link_rho0": q["link_utilisation"][0],
        "lost": max(r["pacing_lost_pct"] for r in doc["results"]),
    }


def main() -> int:
    opts = options(__doc__, duration=1.0, quick_duration=0.2)
    started = time.monotonic()
    reps = [{(w, c, n): point(n, w, c, opts.duration) for w, c in CASES for n in NODES} for _ in range(opts.repeat)]
    report = Report()
    report(f"Single against replicate on 2, 4 and 8 nodes, with queueing ({opts.repeat} repetitions, {opts.duration:g} s per policy; medians)")
    report()
    rows, summary = [], []
    for w, c in CASES:
        for n in NODES:
            def med(key: str, w: str = w, c: str = c, n: int = n) -> float:
                return statistics.median(rep[w, c, n][key] for rep in reps)
            measured = Spread.of(rep[w, c, n]["measured"] for rep in reps)
            rows.append([w, c, str(n), pct(med("model") - 1), pct(med("no_queueing") - 1), f"{med('queue_ns'):.1f} ns", f"{100 * med('queue_share'):.1f}%",
                         f"{100 * med('memory_rho0'):.1f}%", f"{100 * med('link_rho0'):.1f}%", measured.gain(), f"{med('lost'):.1f}%"])
            summary.append({"workload": w, "cache": c, "nodes": n, **{k: med(k) for k in reps[0][w, c, n]}, "measured_spread": measured.to_json()})
    report.table(["workload", "cache", "nodes", "model gain", "no queueing", "single queues", "of kernel", "node 0 memory", "node 0 links", "measured", "lost"], rows,
                 "llrrrrrrrrr")
    report()
    report("model gain: replicate's speedup over single, emulated time; no queueing: the same from the traffic pass before the waits;")
    report("single queues: emulated ns a request of single spends waiting at memory and links; node 0 memory/links: utilisation under single;")
    report("measured: wall-clock gain [min, max]; lost: the most a node ran beyond its paced time (oversubscribed beyond 2 nodes here).")
    grows = {f"{w} {c}": [s["model"] for s in summary if s["workload"] == w and s["cache"] == c] for w, c in CASES}
    report()
    for key, gains in grows.items():
        verdict = "grows with the node count" if all(a < b for a, b in zip(gains, gains[1:], strict=False)) else "does NOT grow monotonically"
        report(f"{key}: replicate's model gain {', '.join(pct(g - 1) for g in gains)} on {', '.join(map(str, NODES))} nodes: {verdict}")
    write_results("scaling-contention", opts, report, {"summary": summary, "grows": grows, "repetitions": [{f"{w}/{c}/{n}": v for (w, c, n), v in rep.items()} for rep in reps]}, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
