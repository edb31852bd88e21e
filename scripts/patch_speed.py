#!/usr/bin/env python3
"""Patching speed against raw baselines measured in the same run (issue: text patching, "Speed").

Prints, on this host:
- raw: a flag round trip through shared memory between two processes; a multiprocessing.Barrier round;
- a one-site stop_machine patch on 2 nodes, issued by node 0 while node 1 waits at a safe point,
  and the same under load (node 1 running its readers);
- a text_poke_bp batch of 256 sites against a one-site text_poke_bp poke;
- enabling and disabling every ftrace site of the default image on 4 copies (4 nodes).

Each patch figure is given twice: "mechanism" with numaemu's modeled delays off (IPI delivery
delay and per-site text_poke cost set to 0: what numaemu itself costs), and "emulated" with the
defaults (what a stress run sees). Medians over --repeats calls.

    python scripts/patch_speed.py [--repeats 200] [--json results/patch-speed.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from numaemu.host.files import load_topology
from numaemu.measure.baselines import barrier_round_ns, flag_round_trip_ns
from numaemu.patching.patch_bench import PatchBench, run_patch_bench
from numaemu.runtime.results import host_metadata


def bench(topology: str, protocol: str, bench: PatchBench, modeled: bool) -> dict:
    return run_patch_bench(load_topology(topology), bench, protocol=protocol, modeled=modeled)


def us(ns: float) -> float:
    return ns / 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    out: dict = {"command": sys.argv, "host": host_metadata()}
    flag = us(flag_round_trip_ns())
    barrier = us(barrier_round_ns())
    out["raw"] = {"flag_round_us": flag, "barrier_round_us": barrier}
    print(f"raw baselines: flag round trip {flag:.2f} us, multiprocessing.Barrier round {barrier:.1f} us")
    for modeled in (False, True):
        label = "emulated" if modeled else "mechanism"
        idle = bench("2s-xeon", "stop_machine", PatchBench(args.repeats), modeled)
        load = bench("2s-xeon", "stop_machine", PatchBench(args.repeats, load=True), modeled)
        bp = bench("2s-xeon", "text_poke_bp", PatchBench(args.repeats), modeled)
        ft = bench("4", "text_poke_bp", PatchBench(5, batch=1, ftrace_all=True), modeled)
        row = {
            "stop_machine_one_site_us": us(statistics.median(idle["one_site_ns"])),
            "stop_machine_one_site_under_load_us": us(statistics.median(load["one_site_ns"])),
            "text_poke_bp_one_site_us": us(statistics.median(bp["one_site_ns"])),
            "text_poke_bp_256_sites_us": us(statistics.median(bp["batch_ns"])),
            "ftrace_sites": ft["ftrace_sites"],
            "ftrace_all_on_4_copies_s": ft["ftrace_on_ns"] / 1e9,
            "ftrace_all_off_4_copies_s": ft["ftrace_off_ns"] / 1e9,
        }
        out[label] = row
        print(f"\n{label} ({'modeled IPI delay and text_poke cost on' if modeled else 'modeled delays off'}):")
        print(f"  stop_machine, one site, 2 nodes, node 1 at a safe point: {row['stop_machine_one_site_us']:8.1f} us"
              f"  = {row['stop_machine_one_site_us'] / flag:5.1f} x flag round trip, {row['stop_machine_one_site_us'] / barrier:4.2f} x Barrier round")
        print(f"  ... with node 1 running readers (under load):             {row['stop_machine_one_site_under_load_us']:8.1f} us")
        print(f"  text_poke_bp, one site:                                   {row['text_poke_bp_one_site_us']:8.1f} us")
        print(f"  text_poke_bp, one batch of 256 sites:                     {row['text_poke_bp_256_sites_us']:8.1f} us"
              f"  = {row['text_poke_bp_256_sites_us'] / row['text_poke_bp_one_site_us']:4.2f} x one site")
        print(f"  ftrace, all {row['ftrace_sites']:,} sites on 4 copies (4 nodes): on {row['ftrace_all_on_4_copies_s']:.3f} s, off {row['ftrace_all_off_4_copies_s']:.3f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
            f.write("\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
