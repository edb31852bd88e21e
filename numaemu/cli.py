"""The command line: ``numaemu topology|image|run``.

All input is validated here, before anything is started; bad input raises `UsageError`, which
`main` prints as one line ``error: <parameter>: <rule>`` and exit code 2 (no traceback). A node
failure at run time prints ``error: node N (pid P) failed in phase 'X': ...`` and exits 3.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .coordinator import (
    START_METHODS,
    expected_checksum,
    prepare_spec,
    run_policies,
)
from .bench import (
    AXES,
    BENCH_SCHEMA,
    Experiment,
    Point,
    compare_docs,
    LEGEND,
    format_compare,
    read_experiment_file,
    run_experiment,
    split_topologies,
    write_csv,
)
from .cpus import format_cpu_list, host_cpus
from .errors import NodeFailure, UsageError
from .image import ARCHES, KernelImage, synthetic_image
from .memory import prune_stale
from .patching import BUGS, PROTOCOLS
from .placement import POLICIES, REPLICATE_SCOPES
from .plot import check_available as check_plot_available
from .plot import plot_bench
from .results import (
    SCHEMA,
    format_run_table,
    host_metadata,
    write_json,
)
from .sources import SOURCES
from .stress import StressSpec, format_stress_summary, run_stress, stress_document
from .topology import (
    HostPlacement,
    Topology,
    format_numactl,
    load_topology,
    parse_host_cpus,
    place_on_host,
)
from .workloads import WORKLOADS, build_workload

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_NODE_FAILURE = 3
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one `UsageError` line like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        param, _, rule = message.partition(": ")
        if message.startswith("argument ") and rule:
            raise UsageError(param.removeprefix("argument ").split("/")[-1], rule)
        raise UsageError(self.prog, message)


def _positive_float(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive number, got '{text}'")
        return value

    parse.__name__ = name
    return parse


def _integer(lo: int, hi: int | None, rule: str):
    """An argparse type: an integer in lo..hi (hi None: unbounded); `rule` is the message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{rule}, got '{text}'")
        return value

    return parse


_positive_int = _integer(1, None, "must be a positive integer")
_seed = _integer(0, 2**32 - 1, "must be in 0..4294967295")


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability per request in 0..1, got '{text}'")
    return value


def _scale(text: str) -> float:
    value = _positive_float("scale")(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got '{text}'")
    return value


def _add_topology_options(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("topology", nargs="?", default="2s-xeon", metavar="TOPO", help="preset, spec, file or 'host' (default 2s-xeon)")
    else:
        p.add_argument("--topology", default="2s-xeon", help="preset (2s-xeon, kunpeng920, epyc-nps4), numa=fake-style spec (4, 2:10,21,21,10), .json/.toml file, or 'host' (default 2s-xeon)")
    p.add_argument("--host-cpus", help="host CPUs for each node, ';'-separated cpulists, e.g. '0-1;2-3' (default: automatic)")
    p.add_argument("--local-ns", type=_positive_float("local-ns"), help="derive the latency matrix from the distances with this local latency (ns)")
    p.add_argument("--sysfs-root", default="/sys", help=argparse.SUPPRESS)


def _add_image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-scale", type=_scale, default=1.0, help="shrink the embedded image by this factor (0, 1] (for tests; default 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="numaemu", description="Emulate a NUMA machine on a multicore host to study kernel-text replication.")
    parser.add_argument("--version", action="version", version=f"numaemu {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("topology", help="print a topology as numactl --hardware does")
    _add_topology_options(p, positional=True)
    p.add_argument("--json", action="store_true", help="print JSON instead")

    p = sub.add_parser("image", help="print the kernel image's sections, sizes and patch sites")
    _add_image_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead")

    p = sub.add_parser("run", help="run a workload under each placement policy and compare (the main job)")
    _add_topology_options(p)
    _add_image_options(p)
    p.add_argument("--policy", default=",".join(POLICIES), help=f"comma list of {', '.join(POLICIES)} (default: all three)")
    p.add_argument("--replicate", default="text+rodata", help="what replicate copies: text or text+rodata (default)")
    p.add_argument("--workload", default="db", help=f"one of {', '.join(WORKLOADS)} (default db)")
    p.add_argument("--trace", type=Path, help="for --workload trace: a file of virtual addresses, one a line")
    p.add_argument("--cache", default="hot", help="hot (caches kept between requests, default) or cold (flushed before each)")
    p.add_argument("--user-data", default="local", help="local (NUMA-aware user space, default) or interleave")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration", type=_positive_float("duration"), help="seconds per policy (default 2)")
    g.add_argument("--requests", type=_positive_int, help="total requests per policy, instead of --duration")
    p.add_argument("--migrate-rate", type=_rate, default=0.01, help="probability that a task migrates after a request (default 0.01)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the workload, request choices and migrations (default 0)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="where to write the JSON ('-' for stdout; default results/run-<time>.json)")
    p.add_argument("--start-method", default=None, help=f"multiprocessing start method: {', '.join(START_METHODS)} (default: Python's)")
    p.add_argument("--time-scale", type=_positive_float("time-scale"), help="wall ns per emulated ns (default: calibrated)")
    p.add_argument("--verify", action="store_true", help="replay every task's requests on the master image and check what the nodes read")

    p = sub.add_parser("stress", help="patch kernel text on every copy while every node executes it, and check what they observed")
    _add_topology_options(p)
    _add_image_options(p)
    p.add_argument("--arch", default="x86_64", help="image variant: x86_64 (default) or arm64 (aligned 4-byte instructions)")
    p.add_argument("--protocol", default=None, help="stop_machine, text_poke_bp (x86 default) or nosync (arm64 only; arm64 default)")
    p.add_argument("--source", default="static_keys", help=f"what patches: {', '.join(SOURCES)} (default static_keys)")
    p.add_argument("--policy", default="replicate", help="where the copies are: replicate (default), single or interleave")
    p.add_argument("--duration", type=_positive_float("duration"), default=10.0, help="seconds of patching (default 10)")
    p.add_argument("--rate", type=_positive_float("rate"), default=200.0, help="patch operations per second over all nodes (default 200)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the readers' and patchers' choices (default 0)")
    p.add_argument("--inject-bug", default=None, metavar="NAME", help=f"plant one of the kernel's historical bugs: {', '.join(BUGS)}")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="where the JSON goes ('-' for stdout; default results/stress-<time>.json)")
    p.add_argument("--start-method", default=None, help=f"multiprocessing start method: {', '.join(START_METHODS)} (default: Python's)")

    p = sub.add_parser("calibrate", help="measure this host: clock, busy-wait accuracy, raw baselines, and numaemu's own costs against them")
    p.add_argument("--quick", action="store_true", help="fewer samples (a few seconds; for tests)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="where the JSON goes ('-' for stdout; default results/calibrate-<time>.json)")
    p.add_argument("--start-method", default=None, help=f"multiprocessing start method of the baselines' and the patch round's processes: {', '.join(START_METHODS)} (default: Python's)")

    p = sub.add_parser("bench", help="sweep run's options, repeated, with medians, intervals, significance and the model beside each speedup")
    p.add_argument("--experiment", metavar="FILE.toml", help="a TOML experiment: keys named as these options, a list sweeps (options given here win)")
    p.add_argument("--topology", help="comma list of topologies to sweep (default 2s-xeon)")
    p.add_argument("--workload", help=f"comma list of {', '.join(WORKLOADS)} (default db)")
    p.add_argument("--cache", help="comma list of hot, cold (default hot)")
    p.add_argument("--user-data", help="comma list of local, interleave (default local)")
    p.add_argument("--replicate", help="comma list of text, text+rodata (default text+rodata)")
    p.add_argument("--policy", help="comma list of policies run at every point; single is always run, as the baseline (default: all three)")
    p.add_argument("--repeat", help="measured repetitions per point, each in fresh node processes (default 5)")
    p.add_argument("--warmup", help="discarded repetitions per point first, a quarter as long (default 1)")
    p.add_argument("--duration", help="seconds per policy per repetition (default 2)")
    p.add_argument("--requests", help="total requests per policy per repetition, instead of --duration")
    p.add_argument("--migrate-rate", help="probability that a task migrates after a request (default 0.01)")
    p.add_argument("--seed", help="seed of the workload, request choices and migrations (default 0)")
    p.add_argument("--image-scale", help="shrink the embedded image by this factor (0, 1] (default 1)")
    p.add_argument("--host-cpus", help="host CPUs for each node, ';'-separated cpulists (one topology only)")
    p.add_argument("--local-ns", help="derive latencies from distances with this local latency (ns)")
    p.add_argument("--trace", help="for --workload trace: a file of virtual addresses")
    p.add_argument("--time-scale", help="wall ns per emulated ns (default: calibrated at each point)")
    p.add_argument("--start-method", help=f"multiprocessing start method: {', '.join(START_METHODS)} (default: Python's)")
    p.add_argument("--sysfs-root", default="/sys", help=argparse.SUPPRESS)
    p.add_argument("--json", dest="json_path", metavar="PATH", help="where the JSON goes ('-' for stdout; default results/bench-<time>.json)")
    p.add_argument("--csv", dest="csv_path", metavar="PATH", help="also write one CSV row per point and policy")
    p.add_argument("--plot", dest="plot_path", metavar="FILE.png", help="draw speedups with their intervals and per-node times (needs the 'plot' extra: matplotlib)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr (default: when stderr is a terminal)")

    p = sub.add_parser("plot", help="draw a bench result's figure again, from its JSON (needs the 'plot' extra)")
    p.add_argument("bench_json", metavar="BENCH.json")
    p.add_argument("png", metavar="FILE.png")

    p = sub.add_parser("compare", help="compare two bench results: the differences and their significance")
    p.add_argument("a", metavar="A.json")
    p.add_argument("b", metavar="B.json")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the comparison as JSON ('-' for stdout)")
    return parser


def _choice(value: str, choices: Sequence[str], param: str) -> str:
    if value not in choices:
        raise UsageError(param, f"'{value}' is not one of {', '.join(choices)}")
    return value


def _topology(args: argparse.Namespace) -> tuple[Topology, HostPlacement]:
    topo = load_topology(args.topology, sysfs_root=args.sysfs_root, local_ns=args.local_ns)
    override = parse_host_cpus(args.host_cpus) if args.host_cpus else None
    return topo, place_on_host(topo, host_cpus(), override)


def cmd_topology(args: argparse.Namespace) -> int:
    topo, host = _topology(args)
    if args.json:
        print(json.dumps({"schema": SCHEMA, "command": "topology", "topology": topo.to_json(), "host_placement": host.to_json()}, indent=2, sort_keys=True))
    else:
        sys.stdout.write(format_numactl(topo, host))
    return 0


def _image(args: argparse.Namespace) -> KernelImage:
    return synthetic_image(args.image_scale)


def cmd_image(args: argparse.Namespace) -> int:
    s = _image(args).summary()
    if args.json:
        print(json.dumps({"schema": SCHEMA, "command": "image", "image": s}, indent=2, sort_keys=True))
        return 0
    print(f"image: {s['name']} ({s['arch']}), base {s['base']}, seed {s['seed']}")
    print(f"{'section':<10}{'vaddr':>20}{'size':>14}{'pages':>8}")
    for sec in s["sections"]:
        print(f"{sec['name']:<10}{sec['vaddr']:>20}{sec['size']:>14,}{sec['pages']:>8}")
    print(f"functions: {s['functions']:,} (each with a 5-byte ftrace site, NOP5 while tracing is off)")
    print(f"jump-label sites: {s['jump_label_sites']:,} ({s['jump_label_sites_2byte']:,} 2-byte, {s['jump_label_sites_5byte']:,} 5-byte) over {s['static_keys']:,} static keys")
    print(f"mapped: {s['mapped_bytes']:,} bytes")
    return 0


def _output_path(path: str | None, command: str = "run", param: str = "--json") -> str:
    """An output file given as `param` (JSON, CSV, PNG), checked writable before any work;
    None: the default JSON path results/<command>-<time>.json."""
    if path is None:
        return os.path.join("results", time.strftime(f"{command}-%Y%m%d-%H%M%S.json"))
    if path == "-":
        return path
    p = Path(path)
    if p.is_dir():
        raise UsageError(param, f"'{path}' is a directory; give a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(param, f"'{path}': directory '{parent}' does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(param, f"'{path}' is not writable")
    return path


# Which bugs each protocol can have (BACKGROUND.md s.4): stop_machine has no INT3 descriptor
# and no final sync (each node resynchronises itself); text_poke_bp has no rendezvous; nosync
# has neither.
BUG_PROTOCOLS = {
    "early-master": ("stop_machine",),
    "descriptor-reuse": ("text_poke_bp",),
    "no-sync": PROTOCOLS,
    "no-final-sync": ("text_poke_bp", "nosync"),
    "key-race": PROTOCOLS,
}


def cmd_stress(args: argparse.Namespace) -> int:
    _choice(args.arch, ARCHES, "--arch")
    arm = args.arch == "arm64"
    protocol = args.protocol or ("nosync" if arm else "text_poke_bp")
    _choice(protocol, PROTOCOLS, "--protocol")
    if protocol == "nosync" and not arm:
        raise UsageError("--protocol", "nosync (single aligned 4-byte writes) is only for the arm64 image; add --arch arm64, or use text_poke_bp or stop_machine")
    if protocol == "text_poke_bp" and arm:
        raise UsageError("--protocol", "text_poke_bp is the x86 INT3 protocol; the arm64 image uses nosync or stop_machine")
    _choice(args.source, SOURCES, "--source")
    _choice(args.policy, POLICIES, "--policy")
    if args.inject_bug is not None:
        _choice(args.inject_bug, BUGS, "--inject-bug")
        if protocol not in BUG_PROTOCOLS[args.inject_bug]:
            raise UsageError("--inject-bug", f"{args.inject_bug} is a bug of {' and '.join(BUG_PROTOCOLS[args.inject_bug])}, not of {protocol}")
        if args.inject_bug == "key-race" and args.source not in ("static_keys", "mixed"):
            raise UsageError("--inject-bug", f"key-race is a static-key bug: use --source static_keys or mixed, not {args.source}")
    start_method = args.start_method or mp.get_start_method()
    _choice(start_method, START_METHODS, "--start-method")
    json_path = _output_path(args.json_path, "stress")
    topo, host = _topology(args)
    image = synthetic_image(args.image_scale, arch=args.arch)
    log = sys.stderr if json_path == "-" else sys.stdout
    _prune(log)
    print(
        f"numaemu stress: {protocol}, source {args.source}, {topo.name} ({topo.n_nodes} nodes), policy {args.policy}, "
        f"image {image.name}, {args.duration:g} s at {args.rate:g} ops/s, bug: {args.inject_bug or 'none'}",
        file=log,
    )
    if host.oversubscribed:
        print(f"oversubscribed: {topo.n_nodes} nodes share host CPUs; the checks stay exact, patch latencies are inflated", file=log)
    spec = StressSpec(topo, host, image, args.policy, protocol, args.source, args.duration, args.rate, args.seed, args.inject_bug, start_method)
    result = run_stress(spec)
    doc = stress_document(spec, result)
    args.outcome = 0 if doc["ok"] else 1  # known before any output (see main: broken pipes)
    doc["argv"] = sys.argv[1:]
    doc["host"] = host_metadata()
    doc["topology"] = topo.to_json()
    doc["host_placement"] = host.to_json()
    print(format_stress_summary(doc), file=log)
    _write_doc(doc, json_path, log)
    return 0 if doc["ok"] else 1


def _write_doc(doc: dict, json_path: str, log) -> None:
    """Write a command's JSON; say where on the log, unless it went to stdout itself."""
    where = write_json(doc, json_path)
    if where != "stdout":
        print(f"wrote {where}", file=log)


def _prune(log) -> None:
    pruned = prune_stale()
    if pruned:
        print(f"removed {len(pruned)} shared-memory segment(s) left by dead numaemu runs: {', '.join(pruned)}", file=log)


def cmd_run(args: argparse.Namespace) -> int:
    # Validate everything before starting anything.
    policies = [x.strip() for x in args.policy.split(",") if x.strip()]
    if not policies:
        raise UsageError("--policy", "give at least one policy")
    for pol in policies:
        _choice(pol, POLICIES, "--policy")
    if len(set(policies)) != len(policies):
        raise UsageError("--policy", f"'{args.policy}' names a policy twice")
    _choice(args.replicate, REPLICATE_SCOPES, "--replicate")
    _choice(args.cache, ("hot", "cold"), "--cache")
    _choice(args.user_data, ("local", "interleave"), "--user-data")
    start_method = args.start_method or mp.get_start_method()
    _choice(start_method, START_METHODS, "--start-method")
    json_path = _output_path(args.json_path)
    topo, host = _topology(args)
    image = _image(args)
    workload = build_workload(args.workload, image, args.seed, args.trace)
    duration = None if args.requests else (args.duration or 2.0)
    log = sys.stderr if json_path == "-" else sys.stdout

    _prune(log)

    spec, cal = prepare_spec(
        topo, host, image, workload, cold=args.cache == "cold", user_local=args.user_data == "local",
        duration_s=duration, requests=args.requests, migrate_rate=args.migrate_rate, seed=args.seed,
        start_method=start_method, replicate=args.replicate, time_scale=args.time_scale,
    )
    scale = spec.scale
    print(
        f"numaemu run: {topo.name} ({topo.n_nodes} nodes), image {image.name}, workload {workload.name}, "
        f"cache {args.cache}, user data {args.user_data}, "
        + (f"{duration:g} s per policy" if duration else f"{args.requests} requests per policy"),
        file=log,
    )
    placement_text = ", ".join(f"node {i} -> CPU {format_cpu_list(c)}" for i, c in enumerate(host.cpus))
    print(f"host: {placement_text}; time scale {scale:g} (1 emulated ns = {scale:g} wall ns)", file=log)
    if host.oversubscribed:
        print(
            f"oversubscribed: {topo.n_nodes} nodes on {host.n_cpus_used} host CPU(s); emulated-time results stay exact, "
            "wall-clock fidelity is reduced (see pacing_lost_pct)",
            file=log,
        )

    def verify(policy: str, run: dict, rec: dict) -> None:
        tasks = run["tasks"]
        bad = [t for t in range(len(tasks)) if expected_checksum(image.data, workload, args.seed, t, int(tasks["done"][t])) != int(tasks["checksum"][t])]
        rec["verified"] = not bad
        rec["verify_failed_tasks"] = bad

    records = run_policies(spec, policies, each=verify if args.verify else None)
    args.outcome = 1 if args.verify and not all(r["verified"] for r in records) else 0

    print(format_run_table(records), file=log)
    over = max(r["pacing_lost_pct"] for r in records)
    print(
        f"speedup: wall-clock throughput against single; model: what the latency model predicts "
        f"(emulated time per request). Fidelity lost (nodes running beyond their paced time): at most {over:.1f}%.",
        file=log,
    )
    if args.verify:
        ok = all(r["verified"] for r in records)
        print("verify: " + ("every task read the master's bytes at every address, on every node, across migrations" if ok else "MISMATCH: " + "; ".join(f"{r['policy']}: tasks {r['verify_failed_tasks']}" for r in records if not r["verified"])), file=log)
    doc = {
        "schema": SCHEMA,
        "command": "run",
        "argv": sys.argv[1:],
        "topology": topo.to_json(),
        "host_placement": host.to_json(),
        "image": image.summary(),
        "workload": workload.summary(),
        "host": host_metadata(),
        "settings": {
            "policies": policies,
            "replicate": args.replicate,
            "cache": args.cache,
            "user_data": args.user_data,
            "duration_s": duration,
            "requests": args.requests,
            "migrate_rate": args.migrate_rate,
            "seed": args.seed,
            "start_method": start_method,
            "time_scale": scale,
            "calibration": cal,
            "oversubscribed": host.oversubscribed,
        },
        "results": records,
    }
    _write_doc(doc, json_path, log)
    if args.verify and not all(r["verified"] for r in records):
        return 1
    return 0


# `numaemu bench`: each option is text, from the command line or an experiment file, checked by
# one parser either way; lists sweep. Defaults are `numaemu run`'s.
BENCH_DEFAULTS = {
    "topology": "2s-xeon", "workload": "db", "cache": "hot", "user-data": "local", "replicate": "text+rodata",
    "policy": ",".join(POLICIES), "repeat": "5", "warmup": "1", "migrate-rate": "0.01", "seed": "0", "image-scale": "1",
}
BENCH_LISTS = {
    "workload": WORKLOADS, "cache": ("hot", "cold"), "user-data": ("local", "interleave"),
    "replicate": REPLICATE_SCOPES, "policy": POLICIES,
}
BENCH_SCALARS = {
    "repeat": _positive_int, "warmup": _integer(0, None, "must be an integer >= 0"), "duration": _positive_float("duration"),
    "requests": _positive_int, "migrate-rate": _rate, "seed": _seed, "image-scale": _scale,
    "local-ns": _positive_float("local-ns"), "time-scale": _positive_float("time-scale"),
}


def _comma_list(text: str, param: str, choices: Sequence[str] | None = None) -> list[str]:
    items = split_topologies(text) if param == "--topology" else [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise UsageError(param, "give at least one value")
    if len(set(items)) != len(items):
        raise UsageError(param, f"'{text}' names a value twice")
    for item in items:
        if choices is not None:
            _choice(item, choices, param)
    return items


def _bench_experiment(args: argparse.Namespace) -> Experiment:
    from_file = read_experiment_file(args.experiment) if args.experiment else {}

    def raw(name: str) -> tuple[str | None, str]:
        given = getattr(args, name.replace("-", "_"))
        if given is not None:
            return given, f"--{name}"
        if name in from_file:
            return from_file[name], f"--{name} (from {args.experiment})"
        return BENCH_DEFAULTS.get(name), f"--{name}"

    def scalar(name: str):
        text, param = raw(name)
        if text is None:
            return None
        try:
            return BENCH_SCALARS[name](text)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(param, str(exc)) from None

    lists = {name: _comma_list(*raw(name), BENCH_LISTS.get(name)) for name in ("topology", *BENCH_LISTS)}
    policies = lists.pop("policy")
    if "single" not in policies:
        policies.insert(0, "single")  # the baseline of every speedup
    duration, requests = scalar("duration"), scalar("requests")
    if duration is not None and requests is not None:
        raise UsageError("--duration", "give --duration or --requests, not both")
    host_cpus_text, _ = raw("host-cpus")
    if host_cpus_text and len(lists["topology"]) > 1:
        raise UsageError("--host-cpus", "an explicit placement fits one topology; sweep topologies without it")
    trace_text, _ = raw("trace")
    if trace_text and "trace" not in lists["workload"]:
        raise UsageError("--trace", "--trace is only for --workload trace")
    start_text, param = raw("start-method")
    start_method = _choice(start_text or mp.get_start_method(), START_METHODS, param)
    points = tuple(
        Point(topology=t, workload=w, cache=c, user_data=u, replicate=r)
        for t in lists["topology"] for w in lists["workload"] for c in lists["cache"]
        for u in lists["user-data"] for r in lists["replicate"]
    )
    exp = Experiment(
        points=points, policies=tuple(policies), repeat=scalar("repeat"), warmup=scalar("warmup"),
        duration_s=None if requests else (duration or 2.0), requests=requests, migrate_rate=scalar("migrate-rate"),
        seed=scalar("seed"), image_scale=scalar("image-scale"), start_method=start_method, host_cpus=host_cpus_text,
        local_ns=scalar("local-ns"), sysfs_root=args.sysfs_root, trace=Path(trace_text) if trace_text else None,
        time_scale=scalar("time-scale"),
    )
    # Check every topology and workload now, so a typo fails before minutes of running.
    image = synthetic_image(exp.image_scale)
    override = parse_host_cpus(exp.host_cpus) if exp.host_cpus else None
    for t in lists["topology"]:
        place_on_host(load_topology(t, sysfs_root=exp.sysfs_root, local_ns=exp.local_ns), host_cpus(), override)
    for w in lists["workload"]:
        build_workload(w, image, exp.seed, exp.trace if w == "trace" else None)
    return exp


def cmd_bench(args: argparse.Namespace) -> int:
    exp = _bench_experiment(args)
    json_path = _output_path(args.json_path, "bench")
    csv_path = _output_path(args.csv_path, param="--csv") if args.csv_path else None
    if args.plot_path:
        check_plot_available()
        _output_path(args.plot_path, param="--plot")
    log = sys.stderr if json_path == "-" else sys.stdout
    _prune(log)
    per = f"{exp.duration_s:g} s" if exp.duration_s else f"{exp.requests} requests"
    print(
        f"numaemu bench: {len(exp.points)} point(s) x {len(exp.policies)} policies ({', '.join(exp.policies)}), "
        f"{exp.warmup} warmup + {exp.repeat} repetitions of {per} each: {exp.runs} runs in fresh node processes",
        file=log,
    )
    points = run_experiment(exp, progress=args.progress, log=lambda text: print(text + "\n", file=log, flush=True))
    print(LEGEND, file=log)  # the points were printed as each ended
    doc = {
        "schema": SCHEMA,
        "bench_schema": BENCH_SCHEMA,
        "command": "bench",
        "argv": sys.argv[1:],
        "host": host_metadata(),
        "experiment": {**exp.settings(), "axes": list(AXES), "file": args.experiment},
        "points": points,
    }
    _write_doc(doc, json_path, log)
    if csv_path:
        write_csv(points, csv_path)
        print(f"wrote {csv_path}", file=log)
    if args.plot_path:
        plot_bench(points, args.plot_path, exp.settings())
        print(f"wrote {args.plot_path}", file=log)
    return 0


def _read_bench(path: str, param: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(param, f"cannot read '{path}': {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(param, f"'{path}' is not JSON") from None
    if not isinstance(doc, dict) or doc.get("command") != "bench" or "points" not in doc:
        what = doc.get("command") if isinstance(doc, dict) else None
        raise UsageError(param, f"'{path}' is not a numaemu bench result" + (f" (it is from numaemu {what})" if what else ""))
    if doc.get("bench_schema") != BENCH_SCHEMA:
        raise UsageError(param, f"'{path}' has bench schema {doc.get('bench_schema')}; this numaemu reads {BENCH_SCHEMA}")
    return doc


def cmd_plot(args: argparse.Namespace) -> int:
    doc = _read_bench(args.bench_json, "BENCH.json")
    check_plot_available()
    _output_path(args.png, param="FILE.png")
    plot_bench(doc["points"], args.png, doc["experiment"])
    print(f"wrote {args.png}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    a, b = _read_bench(args.a, "A.json"), _read_bench(args.b, "B.json")
    json_path = _output_path(args.json_path, "compare") if args.json_path else None
    cmp = compare_docs(a, b)
    log = sys.stderr if json_path == "-" else sys.stdout
    print(format_compare(cmp, args.a, args.b), file=log)
    if not cmp["rows"]:
        print("no point is in both files", file=log)
    if json_path:
        _write_doc({"schema": SCHEMA, "command": "compare", "a": args.a, "b": args.b, **cmp}, json_path, log)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import FULL, QUICK, calibrate, format_calibration

    start_method = args.start_method or mp.get_start_method()
    _choice(start_method, START_METHODS, "--start-method")
    json_path = _output_path(args.json_path, "calibrate")
    # The patch round needs 2 nodes; 2s-xeon's local latency also charges the engine's fetches.
    topo = load_topology("2s-xeon")
    host = place_on_host(topo, host_cpus())
    image = synthetic_image()
    workload = build_workload("db", image)
    log = sys.stderr if json_path == "-" else sys.stdout
    _prune(log)
    meta = host_metadata()
    print(
        f"numaemu calibrate: {meta['cpu_model']}, CPUs {meta['usable_cpus']}; image {image.name} ({len(image.data):,} bytes), "
        f"workload db, {topo.name} for the patch round; {'quick' if args.quick else 'full'} sampling; medians",
        file=log,
    )
    cal = calibrate(image, workload, topo, topo.n_nodes / host.n_cpus_used, QUICK if args.quick else FULL, start_method)
    results = cal.to_json()
    print(format_calibration(results), file=log)
    doc = {
        "schema": SCHEMA,
        "command": "calibrate",
        "argv": sys.argv[1:],
        "host": meta,
        "host_placement": host.to_json(),
        "settings": {"quick": args.quick, "start_method": start_method, "topology": topo.name, "workload": workload.name, "image_bytes": len(image.data)},
        "results": results,
    }
    _write_doc(doc, json_path, log)
    return 0


COMMANDS = {"topology": cmd_topology, "image": cmd_image, "run": cmd_run, "stress": cmd_stress, "bench": cmd_bench, "compare": cmd_compare, "plot": cmd_plot, "calibrate": cmd_calibrate}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args: argparse.Namespace | None = None
    # SIGINT and SIGTERM take one path, so the coordinator's cleanup runs either way (also when
    # a shell started us in the background with SIGINT ignored).
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NodeFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NODE_FAILURE
    except KeyboardInterrupt:
        print("error: interrupted; every node stopped and every segment removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into `head` and the reader left: not an error of ours (Python docs,
        # "Note on SIGPIPE"); keep the interpreter from failing again on flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return getattr(args, "outcome", 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
