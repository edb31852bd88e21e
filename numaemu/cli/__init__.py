"""The command line: ``numaemu topology|image|run``.

All input is validated here, before anything is started; bad input raises `UsageError`, which
`main` prints as one line ``error: <parameter>: <rule>`` and exit code 2 (no traceback). A node
failure at run time prints ``error: node N (pid P) failed in phase 'X': ...`` and exits 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from numaemu import __version__
from numaemu.errors import NodeFailure, UsageError
from numaemu.host.cpus import format_cpu_list, host_cpus
from numaemu.host.fit import SegmentNeed, check_fit, check_host_fits, check_node_memory, free_space, run_needs
from numaemu.host.numamaps import PlacementReport, format_placement, placement_informative, placement_warnings
from numaemu.host.segments import prune_stale
from numaemu.measure.bench import (
    AXES,
    BENCH_SCHEMA,
    LEGEND,
    Experiment,
    Point,
    bench_doc_problem,
    compare_docs,
    format_compare,
    read_experiment_file,
    run_experiment,
    split_topologies,
    write_csv,
)
from numaemu.measure.cluster import ClusterSession, ClusterSweep, parse_address
from numaemu.measure.cluster import check_available as check_cluster_available
from numaemu.measure.plot import check_available as check_plot_available
from numaemu.measure.plot import plot_bench
from numaemu.model.image import ARCHES, KernelImage, synthetic_image
from numaemu.model.kernelfile import load_image
from numaemu.model.pagetables import PT_STYLES, kaslr_base, with_base
from numaemu.model.placement import POLICIES, REPLICATE_SCOPES
from numaemu.model.topology import (
    MAX_NODES,
    HostPlacement,
    Topology,
    format_numactl,
    load_topology,
    memory_only_nodes,
    parse_host_cpus,
    place_on_host,
)
from numaemu.model.workloads import WORKLOADS, build_workload
from numaemu.patching.protocols import BUGS, PROTOCOLS
from numaemu.patching.sources import SOURCES, hot_keys
from numaemu.patching.stress import StressSpec, format_stress_summary, run_stress, stress_document, stress_need
from numaemu.runtime.inprocess import expected_checksum
from numaemu.runtime.policy_run import DELAYS, START_METHODS, prepare_spec, run_policies
from numaemu.runtime.respawn import MAX_RECOVERIES
from numaemu.runtime.results import (
    SCHEMA,
    add_speedups,
    format_run_table,
    host_metadata,
    write_json,
)

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
        if param == "the following arguments are required":  # name the first one missing
            usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
            raise UsageError(rule.split(", ")[0], f"is required; usage: {usage}")
        if param == "ambiguous option":  # --dur could match --duration, --delays
            option, _, matches = rule.partition(" could match ")
            raise UsageError(option.split("=")[0], f"is ambiguous: it could be {matches}")
        raise UsageError(self.prog, message)


def _positive_float(name: str, lo: float | None = None, hi: float | None = None, unit: str = ""):
    """An argparse type: a finite number > 0 (nan and inf refused), within [lo, hi] if given."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive number, got '{text}'")
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo:g}{unit}, got '{text}'")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi:g}{unit}, got '{text}'")
        return value

    parse.__name__ = name
    return parse


def _integer(lo: int, hi: int | None, rule: str, too_big: str | None = None):
    """An argparse type: an integer in lo..hi (hi None: unbounded); `rule` is the message
    (`too_big`, if given, the one for a value above hi)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{too_big if too_big and value > lo else rule}, got '{text}'")
        return value

    return parse


_positive_int = _integer(1, None, "must be a positive integer")
_seed = _integer(0, 2**32 - 1, "must be in 0..4294967295")
# Bounds: past them a run is a typo, not an experiment (and counts past them overflow the
# control block's int64 budgets, or a worker's patch interval).
MAX_REQUESTS = 10**9
_requests = _integer(1, MAX_REQUESTS, "must be a positive integer", f"must be at most {MAX_REQUESTS}")
_replicas_every = _integer(1, MAX_NODES, "must be a positive integer", f"must be at most {MAX_NODES}, numaemu's most nodes")
_repeat = _integer(1, 1000, "must be a positive integer", "must be at most 1000")
_warmup = _integer(0, 1000, "must be an integer >= 0", "must be at most 1000")
_duration = _positive_float("duration", 0.01, 86400.0, " s")  # 10 ms .. one day
_local_ns = _positive_float("local-ns", None, 100_000.0, " ns")
_time_scale = _positive_float("time-scale", None, 10_000.0)
_patch_rate = _positive_float("rate", 0.001, 1_000_000.0, " ops/s")


def _one_of(choices: Sequence[str]):
    """An argparse type: one of `choices` (a scalar: a comma list is refused too)."""

    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"'{text}' is not one of {', '.join(choices)}")
        return text

    return parse


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 <= value <= 1:  # nan fails this too
        raise argparse.ArgumentTypeError(f"must be a probability per request in 0..1, got '{text}'")
    return value


MIN_IMAGE_SCALE = 0.01  # below it the synthetic image has too few functions for the workloads


def _scale(text: str) -> float:
    value = _positive_float("scale")(text)
    if not MIN_IMAGE_SCALE <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [{MIN_IMAGE_SCALE:g}, 1], got '{text}'")
    return value


def _file_path(text: str) -> Path:
    """An argparse type: a file path, not empty (Path('') would be the working directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a file path")
    return Path(text)


def _add_topology_options(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("topology", nargs="?", default="2s-xeon", metavar="TOPO", help="preset, spec, file or 'host' (default 2s-xeon)")
    else:
        p.add_argument("--topology", default="2s-xeon", help="preset (2s-xeon, kunpeng920, epyc-nps4), numa=fake-style spec (4, 2:10,21,21,10), .json/.toml file, or 'host' (default 2s-xeon)")
    p.add_argument("--host-cpus", help="host CPUs for each node, ';'-separated cpulists, e.g. '0-1;2-3' (default: automatic)")
    p.add_argument("--local-ns", type=_local_ns, help="derive the latency matrix from the distances with this local latency (ns)")
    p.add_argument("--sysfs-root", default="/sys", help=argparse.SUPPRESS)


def _add_image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", metavar="PATH", help="an ELF vmlinux or a compressed vmlinuz/bzImage (x86-64); default: the embedded synthetic image")
    p.add_argument("--image-scale", type=_scale, default=1.0, help="shrink the embedded image by this factor (0, 1] (for tests; default 1)")


def _add_design_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pt-style", default="none", help="page-table design: arm64 (King: per-node lower tables, 4 KiB pages), x86 (Kuzin: per-node PGD..PMD, 2 MiB pages) or none (not modelled, default)")
    p.add_argument("--kaslr", action="store_true", help="randomise the image's virtual base from --seed (x86 design only: King's arm64 series disables KASLR)")
    p.add_argument("--replicas-every", type=_replicas_every, default=1, metavar="K", help="replicate: a copy on every K-th node only (IRIX-style), the others map the nearest copy (default 1: every node)")


def _design(args: argparse.Namespace, image: KernelImage) -> KernelImage:
    """Check --pt-style and --kaslr together; return the image, moved if --kaslr."""
    _choice(args.pt_style, PT_STYLES, "--pt-style")
    if args.kaslr and args.pt_style == "arm64":
        raise UsageError("--kaslr", "not with --pt-style arm64: King's series disables KASLR (the image must sit under its own level-0 entry)")
    if args.kaslr and args.pt_style != "x86":
        raise UsageError("--kaslr", "needs --pt-style x86, the design that supports it (Kuzin's series)")
    return with_base(image, kaslr_base(image, args.seed)) if args.kaslr else image


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="numaemu", description="Emulate a NUMA machine on a multicore host to study kernel-text replication.")
    parser.add_argument("--version", action="version", version=f"numaemu {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("topology", help="print a topology as numactl --hardware does")
    _add_topology_options(p, positional=True)
    p.add_argument("--json", action="store_true", help="print JSON instead")

    p = sub.add_parser("image", help="print the kernel image's sections, sizes and patch sites")
    p.add_argument("image_path", nargs="?", metavar="PATH", help="a kernel image file, as --image PATH")
    _add_image_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead")

    p = sub.add_parser("run", help="run a workload under each placement policy and compare (the main job)")
    _add_topology_options(p)
    _add_image_options(p)
    p.add_argument("--policy", default=",".join(POLICIES), help=f"comma list of {', '.join(POLICIES)} (default: all three)")
    p.add_argument("--replicate", default="text+rodata", help="what replicate copies: text or text+rodata (default)")
    p.add_argument("--workload", default="db", help=f"one of {', '.join(WORKLOADS)} (default db)")
    p.add_argument("--trace", type=_file_path, help="for --workload trace: a file of virtual addresses, one a line")
    p.add_argument("--cache", default="hot", help="hot (caches kept between requests, default) or cold (flushed before each)")
    p.add_argument("--user-data", default="local", help="local (NUMA-aware user space, default) or interleave")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration", type=_duration, help="seconds per policy (default 2)")
    g.add_argument("--requests", type=_requests, help="total requests per policy, instead of --duration")
    p.add_argument("--migrate-rate", type=_rate, default=0.01, help="probability that a task migrates after a request (default 0.01)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the workload, request choices and migrations (default 0)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="where to write the JSON ('-' for stdout; default results/run-<time>.json)")
    p.add_argument("--start-method", default=None, help=f"multiprocessing start method: {', '.join(START_METHODS)} (default: Python's)")
    p.add_argument("--time-scale", type=_time_scale, help="wall ns per emulated ns (default: calibrated)")
    p.add_argument("--verify", action="store_true", help="replay every task's requests on the master image and check what the nodes read")
    p.add_argument("--recover", action="store_true", help=f"replace a node process that dies (same node, same pinning; its tasks go on), up to {MAX_RECOVERIES} times per policy, instead of stopping")
    p.add_argument("--delays", default="model", help="model (inject the emulated topology's remote latencies by pacing, default) or none (inject nothing: this host's own latencies, for a real NUMA host)")
    _add_design_options(p)

    p = sub.add_parser("stress", help="patch kernel text on every copy while every node executes it, and check what they observed")
    _add_topology_options(p)
    _add_image_options(p)
    p.add_argument("--arch", default=None, help="embedded image variant: x86_64 (default) or arm64 (aligned 4-byte instructions); with --image, the file's")
    p.add_argument("--protocol", default=None, help="stop_machine, text_poke_bp (x86 default) or nosync (arm64 only; arm64 default)")
    p.add_argument("--source", default="static_keys", help=f"what patches: {', '.join(SOURCES)} (default static_keys)")
    p.add_argument("--policy", default="replicate", help="where the copies are: replicate (default), single or interleave")
    p.add_argument("--duration", type=_duration, default=10.0, help="seconds of patching (default 10)")
    p.add_argument("--rate", type=_patch_rate, default=200.0, help="patch operations per second over all nodes (default 200)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the readers' and patchers' choices (default 0)")
    p.add_argument("--inject-bug", default=None, metavar="NAME", help=f"plant one of the kernel's historical bugs: {', '.join(BUGS)}")
    p.add_argument("--recover", action="store_true", help=f"replace a node process that dies (its unfinished patch is finished for it, its copy rebuilt from the master), up to {MAX_RECOVERIES} times, instead of stopping")
    p.add_argument("--kill-workers", type=_positive_float("kill-workers", None, 1000.0, " kills/s"), default=None, metavar="RATE", help="SIGKILL random node processes at RATE kills per second over all nodes (seeded by --seed): without --recover the first ends the run")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="where the JSON goes ('-' for stdout; default results/stress-<time>.json)")
    _add_design_options(p)
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
    p.add_argument("--image", help="a real kernel image file (ELF vmlinux or vmlinuz/bzImage) instead of the embedded one")
    p.add_argument("--host-cpus", help="host CPUs for each node, ';'-separated cpulists (one topology only)")
    p.add_argument("--local-ns", help="derive latencies from distances with this local latency (ns)")
    p.add_argument("--trace", help="for --workload trace: a file of virtual addresses")
    p.add_argument("--time-scale", help="wall ns per emulated ns (default: calibrated at each point)")
    p.add_argument("--delays", help="model (paced to the emulated latencies, default) or none (nothing injected; one value, not a sweep)")
    p.add_argument("--pt-style", help="page-table design: none (default), arm64 or x86 (one value, not a sweep)")
    p.add_argument("--replicas-every", help="replicate: a copy on every K-th node only (default 1; one value)")
    p.add_argument("--start-method", help=f"multiprocessing start method: {', '.join(START_METHODS)} (default: Python's)")
    p.add_argument("--sysfs-root", default="/sys", help=argparse.SUPPRESS)
    p.add_argument("--json", dest="json_path", metavar="PATH", help="where the JSON goes ('-' for stdout; default results/bench-<time>.json)")
    p.add_argument("--csv", dest="csv_path", metavar="PATH", help="also write one CSV row per point and policy")
    p.add_argument("--plot", dest="plot_path", metavar="FILE.png", help="draw speedups with their intervals and per-node times (needs the 'plot' extra: matplotlib)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--cluster", metavar="ADDRESS", help="run each repetition as a task on the Dask scheduler at ADDRESS (tcp://HOST:PORT), or on a LocalCluster here ('local'); needs the 'cluster' extra")

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


def _check_replicas_every(k: int, topos: Sequence[Topology]) -> None:
    """--replicas-every K past the node count (of the largest topology swept) is a mistake:
    only the master would hold a copy, whatever K."""
    most = max(topos, key=lambda topo: topo.n_nodes)
    if k > most.n_nodes:
        raise UsageError("--replicas-every", f"{k} is more than the {most.n_nodes} nodes of {most.name}: only the master node would hold a copy")


def _fits(topo: Topology, needs: list[SegmentNeed], replicas_every: int) -> None:
    """Refuse, before anything is allocated, a run that could not work: --replicas-every past
    the node count, a node declaring less memory than it must hold, or segments that do not fit
    in /dev/shm or in memory (see `fit`)."""
    _check_replicas_every(replicas_every, [topo])
    check_host_fits(topo, needs)


def _topology(args: argparse.Namespace) -> tuple[Topology, HostPlacement]:
    topo = load_topology(args.topology, sysfs_root=args.sysfs_root, local_ns=args.local_ns)
    override = parse_host_cpus(args.host_cpus) if args.host_cpus is not None else None
    return topo, place_on_host(topo, host_cpus(), override)


def cmd_topology(args: argparse.Namespace) -> int:
    topo = load_topology(args.topology, sysfs_root=args.sysfs_root, local_ns=args.local_ns)
    host: HostPlacement | None = None
    if not memory_only_nodes(topo):  # else shown without placement: no worker can run there
        host = place_on_host(topo, host_cpus(), parse_host_cpus(args.host_cpus) if args.host_cpus is not None else None)
    if args.json:
        print(json.dumps({"schema": SCHEMA, "command": "topology", "topology": topo.to_json(), "host_placement": host.to_json() if host else None}, indent=2, sort_keys=True))
    else:
        sys.stdout.write(format_numactl(topo, host))
        if host is None:
            ids = ", ".join(map(str, memory_only_nodes(topo)))
            print(f"no host placement: host node(s) {ids} have memory but no CPUs, so numaemu cannot run this machine as it is")
    return 0


def _image(args: argparse.Namespace, arch: str | None = None) -> KernelImage:
    """The image a command works on: the file of --image (or `numaemu image PATH`), loaded once
    per process, or the embedded synthetic image (`arch`: its variant, x86_64 by default)."""
    path = getattr(args, "image_path", None)
    if path is not None and args.image is not None and path != args.image:
        raise UsageError("--image", f"two images given: '{path}' and --image '{args.image}'")
    path = path or args.image
    if path is None:
        return synthetic_image(args.image_scale, arch=arch or "x86_64")
    if args.image_scale != 1:
        raise UsageError("--image", f"cannot be combined with --image-scale {args.image_scale:g}: the scale shrinks the embedded synthetic image only")
    image = load_image(path)
    if arch is not None and arch != image.arch:
        raise UsageError("--arch", f"{arch} does not match --image '{path}', which is {image.arch}; leave --arch out with --image")
    return image


def cmd_image(args: argparse.Namespace) -> int:
    s = _image(args).summary()
    if args.json:
        print(json.dumps({"schema": SCHEMA, "command": "image", "image": s}, indent=2, sort_keys=True))
        return 0
    src = s.get("source")
    print(f"image: {s['name']} ({s['arch']}), base {s['base']}" + ("" if src else f", seed {s['seed']}"))
    if src:
        print(f"file: {src['path']} ({src['container']})" + (f"; {src['version']}" if src["version"] else ""))
    print(f"{'section':<10}{'vaddr':>20}{'size':>14}{'pages':>8}")
    for sec in s["sections"]:
        print(f"{sec['name']:<10}{sec['vaddr']:>20}{sec['size']:>14,}{sec['pages']:>8}")
    if src:
        print(
            f"ftrace sites: {s['ftrace_sites']:,} (16-byte-aligned function entries): {src['ftrace_calls_converted']:,} 'call __fentry__'"
            + (f" (at {src['fentry']})" if src["fentry"] else "")
            + f" rewritten to NOP5 as ftrace_init() does at boot, {src['ftrace_already_nop5']:,} already NOP5"
            + (f"; {src['ftrace_after_endbr64']:,} after an ENDBR64" if src["ftrace_after_endbr64"] else "")
        )
    else:
        print(f"functions: {s['functions']:,} (each with a 5-byte ftrace site, NOP5 while tracing is off)")
    print(f"jump-label sites: {s['jump_label_sites']:,} ({s['jump_label_sites_2byte']:,} 2-byte, {s['jump_label_sites_5byte']:,} 5-byte) over {s['static_keys']:,} static keys")
    if src and src["jump_table"]:
        print(
            f"  __jump_table at {src['jump_table']}: {src['jump_table_entries']:,} entries, {src['jump_entries_skipped']:,} not used "
            f"(outside .text, on an ftrace site, or duplicates); {src['jump_sites_were_jmp']:,} sites were JMPs, now NOPs (every key starts disabled)"
        )
    elif src:
        print("  no __jump_table found: stress runs without static keys")
    if src:
        tables = ", ".join(f"{k} {v:,}" for k, v in s["other_site_tables"].items()) or "none"
        print(f"other site tables (counted, not patched): {tables}")
    print(f"mapped: {s['mapped_bytes']:,} bytes")
    return 0


def _output_path(path: str | None, command: str = "run", param: str = "--json") -> str:
    """An output file given as `param` (JSON, CSV, PNG), checked writable before any work;
    None: the default JSON path results/<command>-<time>.json."""
    if path is None:
        default = os.path.join("results", time.strftime(f"{command}-%Y%m%d-%H%M%S.json"))
        if os.path.isdir("results"):  # else write_json makes it, in the working directory
            _try_writing(Path(default), default, param)
        elif os.path.exists("results") or not os.access(".", os.W_OK):
            raise UsageError(param, f"the default '{default}' cannot be written here; give --json PATH")
        return default
    if path == "-":
        return path
    if not path.strip():
        raise UsageError(param, "is empty; give a file path")
    p = Path(path)
    if p.is_dir():
        raise UsageError(param, f"'{path}' is a directory; give a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise UsageError(param, f"'{path}': directory '{parent}' {what}")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(param, f"'{path}' is not writable")
    _try_writing(p, path, param)
    return path


def _try_writing(p: Path, path: str, param: str) -> None:
    """Open the output as it will be written, now, so a read-only file system (or, for root,
    whom os.access never refuses, /proc and /sys) fails before the run, not after it. A file
    made for the test is removed at once."""
    if p.exists() and not p.is_file():
        return  # a device or a FIFO (--json /dev/null): written through, as it is
    try:
        # write_json writes PATH.tmp next to it and renames it over PATH: try that name.
        probe = p.with_name(p.name + ".tmp")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        return  # PATH.tmp of an earlier run: the directory takes files
    except OSError as exc:
        raise UsageError(param, f"'{path}' is not writable: {exc.strerror}") from None


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
    if args.arch is not None:
        _choice(args.arch, ARCHES, "--arch")
    image = _image(args, arch=args.arch)  # with --image, the file decides the arch
    arm = image.arch == "arm64"
    protocol = args.protocol if args.protocol is not None else ("nosync" if arm else "text_poke_bp")
    _choice(protocol, PROTOCOLS, "--protocol")
    if protocol == "nosync" and not arm:
        raise UsageError("--protocol", "nosync (single aligned 4-byte writes) is only for the arm64 image; add --arch arm64, or use text_poke_bp or stop_machine")
    if protocol == "text_poke_bp" and arm:
        raise UsageError("--protocol", "text_poke_bp is the x86 INT3 protocol; the arm64 image uses nosync or stop_machine")
    _choice(args.source, SOURCES, "--source")
    if args.source == "static_keys" and not len(hot_keys(image.jump_keys, image.n_keys)):
        raise UsageError("--source", f"static_keys needs static keys, and image {image.name} has no jump-label sites numaemu can flip (no __jump_table found); use ftrace, module, bpf, livepatch or mixed")
    _choice(args.policy, POLICIES, "--policy")
    if args.inject_bug is not None:
        _choice(args.inject_bug, BUGS, "--inject-bug")
        if protocol not in BUG_PROTOCOLS[args.inject_bug]:
            raise UsageError("--inject-bug", f"{args.inject_bug} is a bug of {' and '.join(BUG_PROTOCOLS[args.inject_bug])}, not of {protocol}")
        if args.inject_bug == "key-race" and args.source not in ("static_keys", "mixed"):
            raise UsageError("--inject-bug", f"key-race is a static-key bug: use --source static_keys or mixed, not {args.source}")
        if args.inject_bug == "key-race" and not len(hot_keys(image.jump_keys, image.n_keys)):
            raise UsageError("--inject-bug", f"key-race is a static-key bug, and image {image.name} has no static keys to race on")
    start_method = args.start_method if args.start_method is not None else mp.get_start_method()
    _choice(start_method, START_METHODS, "--start-method")
    json_path = _output_path(args.json_path, "stress")
    topo, host = _topology(args)
    image = _design(args, image)
    _fits(topo, [stress_need(topo, image, args.policy, replicas_every=args.replicas_every)], args.replicas_every)
    log = sys.stderr if json_path == "-" else sys.stdout
    _prune(log)
    print(
        f"numaemu stress: {protocol}, source {args.source}, {topo.name} ({topo.n_nodes} nodes), policy {args.policy}, "
        f"image {image.name}, {args.duration:g} s at {args.rate:g} ops/s, bug: {args.inject_bug or 'none'}",
        file=log,
    )
    if host.oversubscribed:
        print(f"oversubscribed: {topo.n_nodes} nodes share host CPUs; the checks stay exact, patch latencies are inflated", file=log)
    spec = StressSpec(topo, host, image, args.policy, protocol, args.source, args.duration, args.rate, args.seed, args.inject_bug, start_method,
                      replicas_every=args.replicas_every, pt_style=args.pt_style,
                      recover=MAX_RECOVERIES if args.recover else 0, kill_rate=args.kill_workers or 0.0)

    def document(result: dict) -> dict:
        doc = stress_document(spec, result)
        doc["argv"] = sys.argv[1:]
        doc["host"] = host_metadata()
        doc["topology"] = topo.to_json()
        doc["host_placement"] = host.to_json()
        return doc

    try:
        result = run_stress(spec)
    except (NodeFailure, KeyboardInterrupt) as exc:  # keep what the nodes saw, then stop as usual
        _write_partial(exc, getattr(exc, "partial", None), document, json_path, log, format_stress_summary)
        raise
    doc = document(result)
    args.outcome = 0 if doc["ok"] else 1  # known before any output (see main: broken pipes)
    print(format_stress_summary(doc), file=log)
    _write_doc(doc, json_path, log)
    return 0 if doc["ok"] else 1


def _write_doc(doc: dict, json_path: str, log) -> None:
    """Write a command's JSON; say where on the log, unless it went to stdout itself."""
    where = write_json(doc, json_path)
    if where != "stdout":
        print(f"wrote {where}", file=log)


def _write_partial(exc: BaseException, partial, document, json_path: str, log, summary=None) -> None:
    """A run stopped early (a node failed: `NodeFailure`; Ctrl-C or SIGTERM: KeyboardInterrupt):
    write what it had produced (`partial`, made into the command's document by `document`), with
    ``failure`` (node, pid, phase, where, detail) or ``interrupted``, before `main` prints the
    one error line. Nothing to write if the run produced nothing (`partial` None)."""
    if partial is None:
        return
    doc = document(partial)
    if isinstance(exc, NodeFailure):
        doc["failure"] = exc.to_json()
    else:
        doc["interrupted"] = True
    if "ok" in doc:
        doc["ok"] = False
    if summary is not None:
        print(summary(doc), file=log)
    _write_doc(doc, json_path, log)


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
    _choice(args.delays, DELAYS, "--delays")
    if args.delays == "none" and args.time_scale:
        raise UsageError("--time-scale", "is for --delays model; with --delays none nothing is paced")
    start_method = args.start_method if args.start_method is not None else mp.get_start_method()
    _choice(start_method, START_METHODS, "--start-method")
    json_path = _output_path(args.json_path)
    topo, host = _topology(args)
    image = _design(args, _image(args))
    workload = build_workload(args.workload, image, args.seed, args.trace)
    _fits(topo, run_needs(topo, image, policies, replicate=args.replicate, replicas_every=args.replicas_every), args.replicas_every)
    duration = None if args.requests else (args.duration or 2.0)
    log = sys.stderr if json_path == "-" else sys.stdout

    _prune(log)

    spec, cal = prepare_spec(
        topo, host, image, workload, cold=args.cache == "cold", user_local=args.user_data == "local",
        duration_s=duration, requests=args.requests, migrate_rate=args.migrate_rate, seed=args.seed,
        start_method=start_method, replicate=args.replicate, time_scale=args.time_scale,
        pt_style=args.pt_style, replicas_every=args.replicas_every, delays=args.delays,
    )
    if args.recover:
        spec = dataclasses.replace(spec, recover=MAX_RECOVERIES)
    scale = spec.scale
    print(
        f"numaemu run: {topo.name} ({topo.n_nodes} nodes), image {image.name}, workload {workload.name}, "
        f"cache {args.cache}, user data {args.user_data}, "
        + (f"{duration:g} s per policy" if duration else f"{args.requests} requests per policy"),
        file=log,
    )
    placement_text = ", ".join(f"node {i} -> CPU {format_cpu_list(c)}" for i, c in enumerate(host.cpus))
    paced = args.delays == "model"
    timing = f"time scale {scale:g} (1 emulated ns = {scale:g} wall ns)" if paced else "nothing paced"
    print(f"host: {placement_text}; {timing}", file=log)
    if not paced:
        print(delays_note("none"), file=log)
    if args.pt_style != "none" or args.kaslr or args.replicas_every > 1:
        print(
            f"design: page tables {args.pt_style}, image base {image.base:#x}" + (" (KASLR)" if args.kaslr else "")
            + (f", replicate puts a copy on every {args.replicas_every}th node" if args.replicas_every > 1 else ""),
            file=log,
        )
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

    placed: dict[str, PlacementReport] = {}
    completed: list[dict] = []

    def each(policy: str, run: dict, rec: dict) -> None:
        placed[policy] = run["placement_report"]
        if args.verify:
            verify(policy, run, rec)
        completed.append(rec)

    def document(records: list[dict]) -> dict:
        return {
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
                "time_scale": scale if paced else None,
                "calibration": cal,
                "oversubscribed": host.oversubscribed,
                "delays": args.delays,
                "delays_note": delays_note(args.delays, scale),
                "pt_style": args.pt_style,
                "kaslr": args.kaslr,
                "replicas_every": args.replicas_every,
                "recover": args.recover,
            },
            "results": records,
            # Set when the run stopped early (README, Errors): then `results` holds the
            # policies that completed before, each with its speedup against single if it ran.
            "failure": None,
            "interrupted": False,
        }

    def partial_table(doc: dict) -> str:
        done = doc["results"]
        return (format_run_table(done) if done else "no policy completed") + f"\n(stopped early: {len(done)} of {len(policies)} policies completed)"

    try:
        records = run_policies(spec, policies, each=each)
    except (NodeFailure, KeyboardInterrupt) as exc:  # keep the policies that completed
        add_speedups(completed)
        _write_partial(exc, completed, document, json_path, log, partial_table)
        raise
    args.outcome = 1 if args.verify and not all(r["verified"] for r in records) else 0

    print(format_run_table(records), file=log)
    over = max(r["pacing_lost_pct"] for r in records)
    if paced:
        print(
            f"speedup: wall-clock throughput against single; model: what the latency model predicts "
            f"(emulated time per request). Fidelity lost (nodes running beyond their paced time): at most {over:.1f}%.",
            file=log,
        )
    else:
        print(
            "speedup: wall-clock throughput against single, on this host's own memory (delays none); "
            f"model: what the latency model of {topo.name} predicts (emulated time per request).",
            file=log,
        )
    reports = list(placed.values())
    if placement_informative(reports):
        for line in format_placement(placed):
            print(line, file=log)
    for line in placement_warnings(reports):
        print(line, file=sys.stderr)
    if args.verify:
        ok = all(r["verified"] for r in records)
        print("verify: " + ("every task read the master's bytes at every address, on every node, across migrations" if ok else "MISMATCH: " + "; ".join(f"{r['policy']}: tasks {r['verify_failed_tasks']}" for r in records if not r["verified"])), file=log)
    for r in records:
        for rec in r.get("recoveries", []):
            inside = f" ({rec['where']})" if rec.get("where") else ""
            print(f"recovered ({r['policy']}): node {rec['node']} (pid {rec['old_pid']} -> {rec['new_pid']}), died in phase '{rec['phase']}'{inside}"
                  + (f" at {rec['at_s']:.2f} s" if rec.get("at_s") is not None else "") + f": {rec['detail']}", file=log)
    doc = document(records)
    _write_doc(doc, json_path, log)
    if args.verify and not all(r["verified"] for r in records):
        return 1
    return 0


def delays_note(delays: str, scale: float | None = None) -> str:
    """What ``--delays`` did, in words, for the output and the JSON."""
    if delays == "none":
        return "delays: none — nothing injected; measured times are this host's own memory latencies (model figures: the emulated topology's)"
    return "delays: model — the emulated topology's remote-access latencies injected by pacing" + (f" (time scale {scale:g})" if scale else "")


# `numaemu bench`: each option is text, from the command line or an experiment file, checked by
# one parser either way; lists sweep. Defaults are `numaemu run`'s.
BENCH_DEFAULTS = {
    "topology": "2s-xeon", "workload": "db", "cache": "hot", "user-data": "local", "replicate": "text+rodata",
    "policy": ",".join(POLICIES), "repeat": "5", "warmup": "1", "migrate-rate": "0.01", "seed": "0", "image-scale": "1",
    "delays": "model", "pt-style": "none", "replicas-every": "1",
}
BENCH_LISTS = {
    "workload": WORKLOADS, "cache": ("hot", "cold"), "user-data": ("local", "interleave"),
    "replicate": REPLICATE_SCOPES, "policy": POLICIES,
}
BENCH_SCALARS = {
    "repeat": _repeat, "warmup": _warmup, "duration": _duration,
    "requests": _requests, "migrate-rate": _rate, "seed": _seed, "image-scale": _scale,
    "local-ns": _local_ns, "time-scale": _time_scale,
    "delays": _one_of(DELAYS), "pt-style": _one_of(PT_STYLES), "replicas-every": _replicas_every,
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


def _bench_experiment(args: argparse.Namespace, cluster: str | None = None) -> Experiment:
    """The experiment `args` describe, checked: names, numbers, files, and (unless the sweep
    runs on other hosts: `cluster` an address) that its largest point fits on this host."""
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
    if cluster is not None and "host" in lists["topology"]:
        raise UsageError("--cluster", "cannot sweep --topology host: each host would emulate its own machine, so a point would differ from host to host; name a preset, a spec or a file")
    policies = lists.pop("policy")
    if "single" not in policies:
        policies.insert(0, "single")  # the baseline of every speedup
    duration, requests = scalar("duration"), scalar("requests")
    if duration is not None and requests is not None:
        raise UsageError("--duration", "give --duration or --requests, not both")
    host_cpus_text, _ = raw("host-cpus")
    if host_cpus_text is not None and len(lists["topology"]) > 1:
        raise UsageError("--host-cpus", "an explicit placement fits one topology; sweep topologies without it")
    image_text, image_param = raw("image")
    if image_text is not None and scalar("image-scale") != 1:
        raise UsageError(image_param, f"cannot be combined with --image-scale {scalar('image-scale'):g}: the scale shrinks the embedded synthetic image only")
    trace_text, trace_param = raw("trace")
    for text, what in ((image_text, image_param), (trace_text, trace_param)):
        if text is not None and not text.strip():
            raise UsageError(what, "is empty; give a file path")
    if trace_text and "trace" not in lists["workload"]:
        raise UsageError("--trace", "--trace is only for --workload trace")
    start_text, param = raw("start-method")
    start_method = _choice(start_text if start_text is not None else mp.get_start_method(), START_METHODS, param)
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
        image=Path(image_text) if image_text is not None else None,
        time_scale=scalar("time-scale"), delays=scalar("delays"), pt_style=scalar("pt-style"),
        replicas_every=scalar("replicas-every"),
    )
    if exp.delays == "none" and exp.time_scale:
        raise UsageError("--time-scale", "is for --delays model; with --delays none nothing is paced")
    # Check every topology, workload and image now, so a typo fails before minutes of running.
    image = exp.kernel_image()
    override = parse_host_cpus(exp.host_cpus) if exp.host_cpus is not None else None
    # And that the largest point fits (the points run one after the other).
    topos = [load_topology(t, sysfs_root=exp.sysfs_root, local_ns=exp.local_ns) for t in lists["topology"]]
    # Another host's CPUs and memory are its own: each host checks them before its runs
    # (runner.execute), and one that does not fit fails its runs, naming itself.
    here = cluster is None or cluster == "local"
    needs: list[SegmentNeed] = []
    for t, topo in zip(lists["topology"], topos):
        if here:
            place_on_host(topo, host_cpus(), override)
        for r in lists["replicate"]:
            point = run_needs(topo, image, exp.policies, replicate=r, replicas_every=exp.replicas_every, label=f"{t}, --replicate {r}: " if len(lists["replicate"]) > 1 else f"{t}: ")
            check_node_memory(topo, point)
            needs += point
    _check_replicas_every(exp.replicas_every, topos)
    if here:
        check_fit(needs, *free_space())
    for w in lists["workload"]:
        build_workload(w, image, exp.seed, exp.trace if w == "trace" else None)
    return exp


def cmd_bench(args: argparse.Namespace) -> int:
    address = parse_address(args.cluster) if args.cluster is not None else None
    if address is not None:
        check_cluster_available()
    exp = _bench_experiment(args, address)
    json_path = _output_path(args.json_path, "bench")
    csv_path = _output_path(args.csv_path, param="--csv") if args.csv_path else None
    if args.plot_path:
        check_plot_available()
        _output_path(args.plot_path, param="--plot")
    log = sys.stderr if json_path == "-" else sys.stdout
    _prune(log)
    # Connect (or start the LocalCluster) before saying anything: an unreachable scheduler, or one
    # without workers, is bad input like any other.
    session = ClusterSession(address, log=lambda text: print(text, file=log, flush=True)) if address is not None else None
    try:
        return _bench(args, exp, session, json_path, csv_path, log)
    finally:
        if session is not None:
            session.close()


def _bench(args: argparse.Namespace, exp: Experiment, session: ClusterSession | None, json_path: str, csv_path: str | None, log) -> int:
    address = session.address if session is not None else None
    per = f"{exp.duration_s:g} s" if exp.duration_s else f"{exp.requests} requests"
    where = "in fresh node processes" if address is None else (
        f"as {exp.repeat * len(exp.points)} tasks (a repetition each; warmups once per host and point) "
        + ("on a Dask LocalCluster here" if address == "local" else f"on the Dask cluster at {address}")
    )
    print(
        f"numaemu bench: {len(exp.points)} point(s) x {len(exp.policies)} policies ({', '.join(exp.policies)}), "
        f"{exp.warmup} warmup + {exp.repeat} repetitions of {per} each: {exp.runs} runs {where}",
        file=log,
    )
    if exp.delays == "none":
        print(delays_note("none"), file=log)
    if exp.pt_style != "none" or exp.replicas_every > 1:
        print(f"design: page tables {exp.pt_style}" + (f", replicate puts a copy on every {exp.replicas_every}th node" if exp.replicas_every > 1 else ""), file=log)
    sweep: ClusterSweep | None = None

    def document(points: list[dict]) -> dict:
        doc = {
            "schema": SCHEMA,
            "bench_schema": BENCH_SCHEMA,
            "command": "bench",
            "argv": sys.argv[1:],
            "host": host_metadata(),
            "experiment": {**exp.settings(), "axes": list(AXES), "file": args.experiment},
            "points": points,
            "failure": None,  # set when the sweep stopped early (README, Errors): `points` are those completed
            "interrupted": False,
            # --cluster: runs that failed on their own merits (the sweep went on without them),
            # and points none of whose repetitions succeeded. A local sweep stops at a failure.
            "failed_runs": [f.to_json() for f in sweep.ledger.failures] if sweep else [],
            "failed_points": [p.to_json() for p in sweep.ledger.failed_points] if sweep else [],
        }
        if sweep is not None:
            doc["cluster"] = sweep.info()
        return doc

    completed: list[dict] = []
    say = lambda text: print(text + "\n", file=log, flush=True)  # noqa: E731
    try:
        if session is None:
            points = run_experiment(exp, progress=args.progress, log=say, done=completed)
        else:
            sweep = ClusterSweep(exp, session, progress=args.progress, log=say)
            points = sweep.run(done=completed)
    except (NodeFailure, KeyboardInterrupt) as exc:  # keep the points completed so far
        _write_partial(exc, completed, document, json_path, log, lambda doc: f"stopped early: {len(completed)} of {len(exp.points)} points completed")
        raise
    print(LEGEND, file=log)  # the points were printed as each ended
    doc = document(points)
    _write_doc(doc, json_path, log)
    if csv_path:
        write_csv(points, csv_path)
        print(f"wrote {csv_path}", file=log)
    if args.plot_path and points:
        plot_bench(points, args.plot_path, exp.settings())
        print(f"wrote {args.plot_path}", file=log)
    if sweep is not None and sweep.ledger.failures:
        failed = sweep.ledger.failures
        print(f"error: {len(failed)} of {len(sweep.tasks)} runs failed (each named above; failed_runs in the JSON): first {failed[0].line()}", file=sys.stderr)
        return EXIT_NODE_FAILURE
    return 0


def _read_bench(path: str, param: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(param, f"cannot read '{path}': {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError, or an integer of 4300+ digits
        raise UsageError(param, f"'{path}' is not JSON") from None
    if not isinstance(doc, dict) or doc.get("command") != "bench" or "points" not in doc:
        what = doc.get("command") if isinstance(doc, dict) else None
        raise UsageError(param, f"'{path}' is not a numaemu bench result" + (f" (it is from numaemu {what})" if what else ""))
    if doc.get("bench_schema") != BENCH_SCHEMA:
        raise UsageError(param, f"'{path}' has bench schema {doc.get('bench_schema')}; this numaemu reads {BENCH_SCHEMA}")
    problem = bench_doc_problem(doc)
    if problem:
        raise UsageError(param, f"'{path}' is a damaged bench result: {problem}")
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
    from numaemu.measure.calibrate import FULL, QUICK, calibrate, format_calibration

    start_method = args.start_method if args.start_method is not None else mp.get_start_method()
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
            parser.print_help()  # the commands, on stdout; then the one error line
            raise UsageError("COMMAND", f"give a command: {', '.join(COMMANDS)} (numaemu COMMAND --help for its options)")
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
