"""``numaemu run`` (the main job): a workload under each placement policy, compared.

Options map onto a `RunConfig`; `Emulation.run_config` runs it and this module prints the table,
the notes and where each node's memory landed, and writes the JSON.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from numaemu.api import params
from numaemu.api.config import RunConfig
from numaemu.api.emulation import Emulation
from numaemu.api.records import RunResult
from numaemu.cli.options import add_design_options, add_image_options, add_topology_options, log_for, machine_options, output_path, write_doc, write_partial
from numaemu.errors import NodeFailure
from numaemu.host.numamaps import NumaMapsReport, format_numa_maps, numa_maps_informative, numa_maps_warnings
from numaemu.measure.report import format_recording
from numaemu.model.placement import POLICIES
from numaemu.model.workloads import WORKLOADS, check_workload
from numaemu.runtime.policy_run import START_METHODS
from numaemu.runtime.respawn import MAX_RECOVERIES
from numaemu.runtime.results import format_run_table

__all__ = ["add_parser", "cmd_run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run a workload under each placement policy and compare (the main job)")
    add_topology_options(p)
    add_image_options(p)
    p.add_argument("--policy", default=",".join(POLICIES), help=f"comma list of {', '.join(POLICIES)} (default: all three)")
    p.add_argument("--replicate", default="text+rodata", help="what replicate copies: text or text+rodata (default)")
    p.add_argument("--workload", help=f"one of {', '.join(WORKLOADS)} (default db; trace with --trace)")
    p.add_argument("--trace", type=params.file_path, help="replay a file: a numaemu recording, perf script output, or virtual addresses one a line")
    p.add_argument("--cache", default="hot", help="hot (caches kept between requests, default) or cold (flushed before each)")
    p.add_argument("--user-data", default="local", help="local (NUMA-aware user space, default) or interleave")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration", type=params.DURATION, help="seconds per policy (default 2)")
    g.add_argument("--requests", type=params.REQUESTS, help="total requests per policy, instead of --duration")
    p.add_argument("--migrate-rate", type=params.probability, default=0.01, help="probability that a task migrates after a request (default 0.01)")
    p.add_argument("--seed", type=params.SEED, default=0, help="seed of the workload, request choices and migrations (default 0)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="where to write the JSON ('-' for stdout; default results/run-<time>.json)")
    p.add_argument("--start-method", default=None, help=f"multiprocessing start method: {', '.join(START_METHODS)} (default: Python's)")
    p.add_argument("--time-scale", type=params.TIME_SCALE, help="wall ns per emulated ns (default: calibrated)")
    p.add_argument("--verify", action="store_true", help="replay every task's requests on the master image and check what the nodes read")
    p.add_argument("--recover", action="store_true",
                   help=f"replace a node process that dies (same node, same pinning; its tasks go on), up to {MAX_RECOVERIES} times per policy, instead of stopping")
    p.add_argument("--delays", default="model",
                   help="model (inject the emulated topology's remote latencies by pacing, default) or none (inject nothing: this host's own latencies, for a real NUMA host)")
    add_design_options(p)


def cmd_run(args: argparse.Namespace) -> int:
    if args.workload is not None and not args.workload.strip():
        check_workload(args.workload, args.trace is not None)  # an empty --workload is unknown, not the default
    config = RunConfig(
        **machine_options(args), workload=args.workload or "", trace=None if args.trace is None else str(args.trace), policies=args.policy,
        replicate=args.replicate, cache=args.cache, user_data=args.user_data, duration_s=args.duration, requests=args.requests,
        migrate_rate=args.migrate_rate, verify=args.verify, recover=args.recover,
    )
    json_path = output_path(args.json_path)
    log = log_for(json_path)
    emu = Emulation.from_config(config.machine(), log=lambda text: print(text, file=log))
    try:
        result = emu.run_config(config)
    except (NodeFailure, KeyboardInterrupt) as exc:  # keep the policies that completed
        write_partial(exc, json_path, log, lambda d: _partial_table(d, len(config.policies)))
        raise
    records = [p.to_json() for p in result.policies]
    outcome = 1 if config.verify and not all(r["verified"] for r in records) else 0
    args.outcome = outcome  # known before any output (main: broken pipes)
    _report(result, config, dict(result.numa_maps), log)
    write_doc({**result.to_json(), "argv": sys.argv[1:]}, json_path, log)
    return outcome


def _partial_table(doc: dict[str, Any], n_policies: int) -> str:
    done = doc["results"]
    return (format_run_table(done) if done else "no policy completed") + f"\n(stopped early: {len(done)} of {n_policies} policies completed)"


def _report(result: RunResult, config: RunConfig, placed: dict[str, NumaMapsReport], log: Any) -> None:
    records = [p.to_json() for p in result.policies]
    rep = result.document["workload"].get("recording")
    if rep is not None:
        for line in format_recording(rep, result.document["image"]["name"]):
            print(line, file=log)
        if rep["warning"]:
            print(f"warning: {rep['warning']}", file=sys.stderr)
    print(format_run_table(records), file=log)
    over = max(r["pacing_lost_pct"] for r in records)
    if config.delays == "model":
        print(
            f"speedup: wall-clock throughput against single; model: what the latency model predicts "
            f"(emulated time per request). Fidelity lost (nodes running beyond their paced time): at most {over:.1f}%.",
            file=log,
        )
    else:
        print(
            "speedup: wall-clock throughput against single, on this host's own memory (delays none); "
            f"model: what the latency model of {result.document['topology']['name']} predicts (emulated time per request).",
            file=log,
        )
    reports = list(placed.values())
    if numa_maps_informative(reports):
        for line in format_numa_maps(placed):
            print(line, file=log)
    for line in numa_maps_warnings(reports):
        print(line, file=sys.stderr)
    if config.verify:
        ok = all(r["verified"] for r in records)
        bad = "; ".join(f"{r['policy']}: tasks {r['verify_failed_tasks']}" for r in records if not r["verified"])
        print("verify: " + ("every task read the master's bytes at every address, on every node, across migrations" if ok else "MISMATCH: " + bad), file=log)
    for r in records:
        for rec in r.get("recoveries", []):
            inside = f" ({rec['where']})" if rec.get("where") else ""
            at = f" at {rec['at_s']:.2f} s" if rec.get("at_s") is not None else ""
            print(f"recovered ({r['policy']}): node {rec['node']} (pid {rec['old_pid']} -> {rec['new_pid']}), died in phase '{rec['phase']}'{inside}{at}: {rec['detail']}", file=log)
