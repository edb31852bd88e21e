#!/usr/bin/env python3
"""Where replication loses: the cost side, beside the AMD measurements that showed regressions.

Published (BACKGROUND.md s.1): on the x86 series, an AMD reviewer on dual EPYC 7713 saw mostly
regressions, e.g. mount -13% and kill (cold) -54%. Replication is not free: every copy must be
patched, every copy takes memory, and where remote memory is barely slower than local there is
little to win back.

Ours, each repetition:
1. The gain where remote is barely slower: the ``db`` and ``compute`` workloads on one socket of
   a dual EPYC in NPS4 mode (the spec ``4:10,12,...``: 4 nodes, 94 ns remote against 85 local),
   and ``db`` on both sockets (``epyc-nps4``: 8 nodes, the other socket at 188 ns);
   ``--policy single,replicate``. 4 and 8 nodes share this host's 2 CPUs: the model stays exact,
   the wall-clock figures lose fidelity (see the lost column).
2. The patching cost, single (one copy) against replicate (one per node), on 2s-xeon, the EPYC
   socket and epyc-nps4: a static-key flip of 56 sites in one text_poke_bp batch, and tracing all
   35,036 functions on, then off (ftrace: NOP5 <-> call at every function, batched by 256),
   through numaemu's PatchBench with its modeled delays on; beside the model of those delays
   alone (IPI waits and ~1 us per site per copy, `_published.text_poke_bp_model_ns`).
3. The memory: one more copy of text+rodata per extra node (numaemu's placement) and, on x86,
   one more PGD page per node for every process (Kuzin's series: one PGD per node per mm).
4. The break-even: how often keys may flip, or tracing toggle, before replication's extra
   patching eats what it saves, on an EPYC socket (16 CPUs a node, every CPU running db).

Parameters: --repeat 3, --duration 3 (seconds per policy), --quick (1 repetition, 0.2 s, fewer
patch calls), --out results. About 2 minutes on a 2-core host.

    python scripts/published_cost.py
"""

from __future__ import annotations

import statistics
import sys
import time

from _published import Pair, Report, Spread, options, pct, record, run, text_poke_bp_model_ns, write_results

from numaemu.host.files import load_topology
from numaemu.model.image import PAGE_SIZE, synthetic_image
from numaemu.model.placement import place
from numaemu.patching.patch_bench import PatchBench, run_patch_bench

PUBLISHED = "dual EPYC 7713 (x86 series, an AMD reviewer): mostly regressions, e.g. mount -13%, kill cold -54%"
# One socket of a dual EPYC in NPS4 mode: 4 nodes at SLIT 10 local, 12 to the socket's other
# nodes (the epyc-nps4 preset's first socket alone).
EPYC_SOCKET = "4:" + ",".join("10" if i == j else "12" for i in range(4) for j in range(4))
GAIN_RUNS = (("EPYC socket, NPS4", EPYC_SOCKET, "db"), ("EPYC socket, NPS4", EPYC_SOCKET, "compute"), ("epyc-nps4", "epyc-nps4", "db"))
PATCH_TOPOLOGIES = (("2s-xeon", "2s-xeon"), ("EPYC socket, NPS4", EPYC_SOCKET), ("epyc-nps4", "epyc-nps4"))
MEMORY_TOPOLOGIES = ("2s-xeon", "kunpeng920", "epyc-nps4")
KEY_SITES = 56  # one static key's use sites, as in the 2019 batching measurement (BACKGROUND.md s.3)
EPYC_7713_CPUS_PER_NODE = 16  # 64 cores a socket, 4 NPS4 nodes a socket
PROCESSES = 10_000  # for the per-process PGD cost


def break_even_per_s(cpus: int, speedup: float, extra_s: float) -> float:
    """Patch events per second at which replication's extra patching time (`extra_s` per
    event, paid by the patching CPU: text_poke_bp does not stop the others) equals what it saves:
    every CPU busy with the workload saves 1 - 1/speedup of its time."""
    if extra_s <= 0:
        raise ValueError("extra_s must be > 0")
    return max(0.0, cpus * (1 - 1 / speedup) / extra_s)


def gains(duration: float, runs: tuple[tuple[str, str, str], ...]) -> dict[tuple[str, str], tuple[Pair, float]]:
    out = {}
    for name, topo, workload in runs:
        # The EPYC socket spec is EPYC's: its runs charge the EPYC 7713 NPS4 profile (a preset brings its own).
        hardware = ["--hardware", "epyc-7713-nps4"] if topo == EPYC_SOCKET else []
        doc = run(["--topology", topo, *hardware, "--workload", workload, "--policy", "single,replicate", "--duration", f"{duration:g}"])
        lost = max(r["pacing_lost_pct"] for r in doc["results"])
        out[name, workload] = (Pair.of(record(doc, "single"), record(doc, "replicate")), lost)
    return out


def patch_costs(repeats: int, topologies: tuple[tuple[str, str], ...]) -> dict[tuple[str, str], dict]:
    out = {}
    for name, topo in topologies:
        for policy in ("single", "replicate"):
            r = run_patch_bench(load_topology(topo), PatchBench(repeats, sites=KEY_SITES, ftrace_all=True), policy=policy)
            out[name, policy] = {"flip_s": statistics.median(r["flip_batched_ns"]) / 1e9, "ftrace_s": (r["ftrace_on_ns"] + r["ftrace_off_ns"]) / 1e9,
                                 "ftrace_sites": r["ftrace_sites"]}
    return out


def main() -> int:
    opts = options(__doc__, duration=3.0)
    started = time.monotonic()
    # --quick leaves out the 8-node runs (the slowest on 2 CPUs) and makes fewer patch calls.
    gain_runs = tuple(r for r in GAIN_RUNS if not (opts.quick and r[1] == "epyc-nps4"))
    patch_topologies = tuple(t for t in PATCH_TOPOLOGIES if not (opts.quick and t[1] == "epyc-nps4"))
    repeats = 2 if opts.quick else 20
    reps = [(gains(opts.duration, gain_runs), patch_costs(repeats, patch_topologies)) for _ in range(opts.repeat)]
    report = Report()
    report(f"The cost side of replication ({opts.repeat} repetitions; median [min, max])")
    report(f"published: {PUBLISHED}")
    report()

    report(f"1. The gain where remote is barely slower (replicate vs single, {opts.duration:g} s per policy):")
    rows, gain_json, model_speedup = [], [], {}
    for name, topo, workload in gain_runs:
        t = load_topology(topo)
        lat = sorted({x for x in t.latency_ns[0][1:] if x is not None})
        pairs = [g[name, workload][0] for g, _ in reps]
        measured, model = Spread.of(p.measured for p in pairs), Spread.of(p.model for p in pairs)
        lost = max(g[name, workload][1] for g, _ in reps)
        model_speedup[name, workload] = model.median
        extra = place(synthetic_image(), t.n_nodes, "replicate").extra_bytes
        rows.append([name, str(t.n_nodes), "/".join(f"{x:.0f}" for x in lat) + f" vs {t.latency_ns[0][0]:.0f}", workload,
                     measured.gain(), pct(model.median - 1, 2), f"{lost:.0f}%", f"{extra / 2**20:.0f} MiB"])
        gain_json.append({"topology": name, "spec": topo, "workload": workload, "measured_speedup": measured.to_json(),
                          "model_speedup": model.to_json(), "pacing_lost_pct_max": lost, "extra_memory_bytes": extra})
    report.table(["topology", "nodes", "remote vs local ns", "workload", "ours measured [min, max]", "model", "lost", "extra memory"], rows, "lrllrrrr")
    report()

    report(f"2. Patching multiplies by the copies (text_poke_bp, numaemu's modeled delays on; a {KEY_SITES}-site static key flip,")
    report("   median of its flips; all ftrace sites on, then off). model: the modeled delays alone (IPI waits, 1 us/site/copy).")
    rows, patch_json, model_cost = [], [], {}
    for name, topo in patch_topologies:
        n = load_topology(topo).n_nodes
        for policy in ("single", "replicate"):
            copies = n if policy == "replicate" else 1
            flip = Spread.of(p[name, policy]["flip_s"] for _, p in reps)
            ftrace = Spread.of(p[name, policy]["ftrace_s"] for _, p in reps)
            sites = reps[0][1][name, policy]["ftrace_sites"]
            m_flip = text_poke_bp_model_ns(KEY_SITES, 1, copies, n) / 1e9
            m_ftrace = 2 * text_poke_bp_model_ns(sites, 1, copies, n) / 1e9
            model_cost[name, policy] = (m_flip, m_ftrace)
            rows.append([name, str(n), policy, str(copies), f"{1e3 * flip.median:.2f} ms [{1e3 * flip.lo:.2f}, {1e3 * flip.hi:.2f}]", f"{1e3 * m_flip:.2f} ms",
                         f"{ftrace.median:.3f} s [{ftrace.lo:.3f}, {ftrace.hi:.3f}]", f"{m_ftrace:.3f} s"])
            patch_json.append({"topology": name, "spec": topo, "policy": policy, "copies": copies, "ftrace_sites": sites,
                               "key_flip_s": flip.to_json(), "key_flip_model_s": m_flip, "ftrace_on_off_s": ftrace.to_json(), "ftrace_on_off_model_s": m_ftrace})
    report.table(["topology", "nodes", "policy", "copies", "key flip measured", "model", "ftrace on+off measured", "model"], rows, "lrlrrrrr")
    report("   (measured also holds numaemu's own Python work, and with 4 and 8 nodes on 2 host CPUs a sync waits until")
    report("   every node has been scheduled: measured exceeds the model.)")
    report()

    report(f"3. Memory: a copy of text+rodata per extra node; on x86 also a PGD page per node per process ({PROCESSES:,} processes):")
    rows, mem_json = [], []
    image = synthetic_image()
    for topo in MEMORY_TOPOLOGIES:
        t = load_topology(topo)
        extra = place(image, t.n_nodes, "replicate").extra_bytes
        pgd = PROCESSES * (t.n_nodes - 1) * PAGE_SIZE
        total = sum(node.memory_bytes for node in t.nodes)
        rows.append([topo, str(t.n_nodes), f"{extra / 2**20:.1f} MiB", f"{pgd / 2**20:.1f} MiB", f"{100 * (extra + pgd) / total:.3f}%"])
        mem_json.append({"topology": topo, "nodes": t.n_nodes, "extra_image_bytes": extra, "extra_pgd_bytes": pgd, "share_of_memory": (extra + pgd) / total})
    report.table(["topology", "nodes", "text+rodata copies", "PGD pages", "of the machine's memory"], rows, "lrrrr")
    report()

    socket = "EPYC socket, NPS4"
    cpus = 4 * EPYC_7713_CPUS_PER_NODE
    extra_flip = model_cost[socket, "replicate"][0] - model_cost[socket, "single"][0]
    extra_ftrace = model_cost[socket, "replicate"][1] - model_cost[socket, "single"][1]
    be_json = {}
    report(f"4. Break-even on an EPYC socket ({cpus} CPUs, every one busy; model figures): replication costs {1e6 * extra_flip:.0f} us more per")
    report(f"   key flip and {1e3 * extra_ftrace:.0f} ms more per tracing on+off, paid by the patching CPU.")
    for workload in ("db", "compute"):
        s = model_speedup[socket, workload]
        flips, toggles = break_even_per_s(cpus, s, extra_flip), break_even_per_s(cpus, s, extra_ftrace)
        be_json[workload] = {"model_speedup": s, "key_flips_per_s": flips, "ftrace_toggles_per_s": toggles}
        report(f"   {workload}: saves {100 * (1 - 1 / s):.2f}% of each CPU's time; replication loses beyond {flips:,.0f} key flips/s or "
               f"{toggles:.2f} tracing on+off/s.")
    report()
    flip_x = [model_cost[name, "replicate"][0] / model_cost[name, "single"][0] for name, _ in patch_topologies]
    trace_x = [model_cost[name, "replicate"][1] / model_cost[name, "single"][1] for name, _ in patch_topologies]
    report("5. What numaemu does and does not show. Its run model charges each fetch where the hardware profile's caches,")
    report("   TLBs and queues say, and under --pt-style x86 the series' extra work per process (a PGD per node allocated,")
    report("   filled and freed at every fork and exit): that is the one cost of replication in a run, so fork-heavy work can")
    report("   lose (scripts/published_amd_micro.py compares the AMD table row by row). The costs shown here:")
    report(f"   patching costs {min(flip_x):.1f}x-{max(flip_x):.1f}x single's per key flip and {min(trace_x):.1f}x-{max(trace_x):.1f}x per tracing on+off")
    report(f"   ({patch_topologies[0][0]} to {patch_topologies[-1][0]}, model), memory grows with the nodes, and where remote is barely")
    report("   slower (94 vs 85 ns) or the kernel's share is small (compute) the gain is near nil, so any such cost is a net loss.")
    write_results(
        "cost", opts, report,
        {"published": PUBLISHED, "epyc_socket_spec": EPYC_SOCKET, "patch_repeats": repeats, "gain": gain_json, "patching": patch_json,
         "memory": {"processes": PROCESSES, "rows": mem_json}, "break_even": {"topology": socket, "cpus": cpus, "extra_key_flip_s": extra_flip,
                                                                              "extra_ftrace_on_off_s": extra_ftrace, **be_json}},
        started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
