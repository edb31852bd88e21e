"""``numaemu stress``: patch kernel text on every copy while every node executes it, and check
what they observed. Options map onto a `StressConfig`; `Emulation.stress_config` runs it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from numaemu.api import params
from numaemu.api.config import StressConfig
from numaemu.api.emulation import Emulation
from numaemu.cli.options import add_design_options, add_image_options, add_topology_options, log_for, machine_options, output_path, write_doc, write_partial
from numaemu.errors import NodeFailure
from numaemu.patching.protocols import BUGS, INT3_FIXES
from numaemu.patching.sources import SOURCES
from numaemu.patching.stress_report import format_stress_summary
from numaemu.runtime.policy_run import START_METHODS
from numaemu.runtime.respawn import MAX_RECOVERIES

__all__ = ["add_parser", "cmd_stress"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("stress", help="patch kernel text on every copy while every node executes it, and check what they observed")
    add_topology_options(p)
    add_image_options(p)
    p.add_argument("--arch", default=None, help="embedded image variant: x86_64 (default) or arm64 (aligned 4-byte instructions); with --image, the file's")
    p.add_argument("--protocol", default=None, help="stop_machine, text_poke_bp (x86 default) or nosync (arm64 only; arm64 default)")
    p.add_argument("--source", default=None,
                   help=f"what patches: {', '.join(SOURCES)} (default static_keys; kprobes with an INT3-handler bug: descriptor-reuse, no-int3-fix)")
    p.add_argument("--policy", default="replicate", help="where the copies are: replicate (default), single or interleave")
    p.add_argument("--duration", type=params.DURATION, default=10.0, help="seconds of patching (default 10)")
    p.add_argument("--rate", type=params.PATCH_RATE, default=200.0, help="patch operations per second over all nodes (default 200)")
    p.add_argument("--seed", type=params.SEED, default=0, help="seed of the readers' and patchers' choices (default 0)")
    p.add_argument("--inject-bug", default=None, metavar="NAME", help=f"plant one of the kernel's historical bugs: {', '.join(BUGS)}")
    p.add_argument("--int3-fix", default=None, choices=None, metavar="FIX",
                   help=f"which 2019 fix the INT3 handler's descriptor relies on: {', '.join(INT3_FIXES)} (default refcount)")
    p.add_argument("--ifetch", default="coherent", metavar="RULES",
                   help="how stores reach what nodes fetched: coherent (default: the architectures' rules, x86 snoop and arm64 IC IVAU, "
                        "stale only in the pipeline) or until-sync (lines kept until the node syncs: no real core, the widest windows)")
    p.add_argument("--timeline", action="append", default=[], metavar="NAME=NS",
                   help="set one emulated cost of the timeline, in ns (repeatable; the names are the README's timeline table: "
                        "site_ns, ipi_ns, text_poke_ns, int3_ns, sync_core_ns, stop_switch_ns, fetch_gap_ns, count_rmw_ns, prefetch_ns)")
    p.add_argument("--no-migrate", dest="migrate", action="store_false",
                   help="keep every task on its node (default: one task a node migrates to the next node after each of its requests, "
                        "mid-call, and new-then-old within a call is counted)")
    p.add_argument("--stop-at-first", action="store_true",
                   help="stop at the first violation, print it in full (node, task, site, bytes, protocol step, emulated time) and exit 1")
    p.add_argument("--recover", action="store_true",
                   help=f"replace a node process that dies (its unfinished patch is finished for it, its copy rebuilt from the master), up to {MAX_RECOVERIES} times, instead of stopping")
    p.add_argument("--kill-workers", type=params.KILL_RATE, default=None, metavar="RATE",
                   help="SIGKILL random node processes at RATE kills per second over all nodes (seeded by --seed): without --recover the first ends the run")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="where the JSON goes ('-' for stdout; default results/stress-<time>.json)")
    add_design_options(p)
    p.add_argument("--start-method", default=None, help=f"multiprocessing start method: {', '.join(START_METHODS)} (default: Python's)")


def cmd_stress(args: argparse.Namespace) -> int:
    config = StressConfig(
        **machine_options(args), source=args.source, protocol=args.protocol, policy=args.policy, duration_s=args.duration,
        rate=args.rate, bug=args.inject_bug, recover=args.recover, kill_rate=args.kill_workers,
        int3_fix=args.int3_fix, stop_at_first=args.stop_at_first, ifetch=args.ifetch, migrate=args.migrate,
        timeline=params.timeline_settings(args.timeline),
    )
    emu = Emulation.from_config(config.machine())
    config.protocol_for(emu.image.arch)  # the image decides the arch: check before the output path
    json_path = output_path(args.json_path, "stress")
    log = log_for(json_path)
    emu.log = lambda text: print(text, file=log)
    try:
        result = emu.stress_config(config)
    except (NodeFailure, KeyboardInterrupt) as exc:  # keep what the nodes saw, then stop as usual
        write_partial(exc, json_path, log, format_stress_summary)
        raise
    doc = {**result.to_json(), "argv": sys.argv[1:]}
    outcome = 0 if result.ok else 1
    args.outcome = outcome  # known before any output (see main: broken pipes)
    print(format_stress_summary(doc), file=log)
    write_doc(doc, json_path, log)
    return outcome
