"""``numaemu check``: every interleaving of a patch protocol on a few nodes (`numaemu.api.check`).

Exit status: 0 clean (exhaustive within the bound), 1 a violation (its shortest counterexample
printed, and saved with ``--save``), 2 bad input, 4 incomplete (the state bound was reached).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from numaemu.api.check import MAX_STATES, MINIMIZE_S, check, check_config, describe, progress_printer, replay
from numaemu.explore.system import LIMITS

__all__ = ["add_parser", "cmd_check"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("check", help="explore every interleaving of a patch protocol on a few nodes, to a bound; print the shortest counterexample")
    p.add_argument("--protocol", default=None, help="stop_machine, text_poke_bp (x86 default), nosync (arm64 default), or a protocol file (.toml)")
    p.add_argument("--arch", default=None, help="x86_64 or arm64 (default: the protocol's)")
    p.add_argument("--inject-bug", dest="bug", default=None, help="plant a protocol bug (early-master, descriptor-reuse, no-sync, ...)")
    for name, default, what in (("nodes", 2, "nodes"), ("sites", 2, "sites patched"), ("tasks", 2, "tasks a node (2: one travels)"),
                                ("calls", None, "patch calls, one after another, by node 0, 1, ... (bpf: 2)"), ("requests", 2, "reader requests a node")):
        p.add_argument(f"--{name}", type=int, default=default, help=f"{what} (default {default or 1}, at most {LIMITS[name]})")
    p.add_argument("--source", default=None, help="calls (patch calls, one after another; default), static_keys (each node enables, then disables, one key; "
                   "key-race's), bpf (attach the BPF trampoline, then detach and free it: --calls 2; trampoline-no-rcu's), "
                   "module (unload, then load, a module loaded at the start; module-unload-running's) or shared (each node attaches, "
                   "then detaches, its own ftrace user of one function; ipmodify-shared's)")
    p.add_argument("--int3-fix", default="refcount", help="refcount or extra-sync (text_poke_bp's descriptor fix)")
    p.add_argument("--ifetch", default="coherent", help="coherent or until-sync (how stores reach fetched lines)")
    p.add_argument("--no-kprobe", dest="kprobe", action="store_false", help="x86: no armed kprobe in the requests")
    p.add_argument("--max-states", type=int, default=MAX_STATES, help=f"the state bound (default {MAX_STATES:,})")
    p.add_argument("--minimize-s", type=float, default=MINIMIZE_S, help=f"how long to go on for a shorter counterexample once one is found (default {MINIMIZE_S:g} s)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="write the result as JSON ('-': stdout)")
    p.add_argument("--save", metavar="PATH", help="save a counterexample to replay (numaemu check --replay PATH)")
    p.add_argument("--replay", metavar="FILE", help="replay a saved counterexample step by step")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def cmd_check(args: argparse.Namespace) -> int:
    if args.replay:
        result = replay(args.replay)
    else:
        cfg = check_config(protocol=args.protocol, arch=args.arch, bug=args.bug, nodes=args.nodes, sites=args.sites, tasks=args.tasks,
                           calls=args.calls, requests=args.requests, int3_fix=args.int3_fix, ifetch=args.ifetch, kprobe=args.kprobe, source=args.source)
        show = None if args.quiet or args.json_path == "-" else progress_printer(sys.stderr)
        result = check(cfg, args.max_states, show, args.minimize_s)
        if show is not None:
            print(file=sys.stderr)
    doc = result.to_json()
    if args.json_path == "-":
        json.dump(doc, sys.stdout, indent=1)
        print()
    else:
        print(describe(result))
        if args.json_path:
            with open(args.json_path, "w") as f:
                json.dump(doc, f, indent=1)
    if args.save and result.outcome.failure is not None:
        with open(args.save, "w") as f:
            json.dump(doc, f, indent=1)
        if args.json_path != "-":
            print(f"saved: {args.save} (numaemu check --replay {args.save})")
    return result.exit_code
