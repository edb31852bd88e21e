"""``numaemu bench``, ``numaemu plot`` and ``numaemu compare``: sweeps of runs with statistics,
their figure, and two sweeps compared. The sweep itself is `numaemu.api.bench.bench`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from numaemu.api import bench as api_bench
from numaemu.api.emulation import prune_dead_runs
from numaemu.api.records import read_document
from numaemu.api.run_document import delays_note
from numaemu.cli.options import log_for, output_path, write_doc, write_partial
from numaemu.errors import NodeFailure, UsageError
from numaemu.measure.compare import BENCH_SCHEMA, bench_doc_problem, compare_docs, format_compare
from numaemu.measure.experiment import Experiment
from numaemu.measure.plot import check_available as check_plot_available
from numaemu.measure.plot import plot_bench
from numaemu.measure.report import LEGEND, write_csv
from numaemu.measure.sweep import failure_line
from numaemu.model.workloads import WORKLOADS
from numaemu.runtime.policy_run import START_METHODS
from numaemu.runtime.results import SCHEMA

__all__ = ["add_parsers", "cmd_bench", "cmd_plot", "cmd_compare", "EXIT_RUNS_FAILED"]

EXIT_RUNS_FAILED = 3
_OPTIONS = (
    ("topology", "comma list of topologies to sweep (default 2s-xeon)"),
    ("workload", f"comma list of {', '.join(WORKLOADS)} (default db)"),
    ("cache", "comma list of hot, cold (default hot)"),
    ("user-data", "comma list of local, interleave (default local)"),
    ("replicate", "comma list of text, text+rodata (default text+rodata)"),
    ("policy", "comma list of policies run at every point; single is always run, as the baseline (default: all three)"),
    ("repeat", "measured repetitions per point, each in fresh node processes (default 5)"),
    ("warmup", "discarded repetitions per point first, a quarter as long (default 1)"),
    ("duration", "seconds per policy per repetition (default 2)"),
    ("requests", "total requests per policy per repetition, instead of --duration"),
    ("migrate-rate", "probability that a task migrates after a request (default 0.01)"),
    ("seed", "seed of the workload, request choices and migrations (default 0)"),
    ("image-scale", "shrink the embedded image by this factor (0, 1] (default 1)"),
    ("image", "a real kernel image file (ELF vmlinux or vmlinuz/bzImage) instead of the embedded one"),
    ("host-cpus", "host CPUs for each node, ';'-separated cpulists (one topology only)"),
    ("local-ns", "derive latencies from distances with this local latency (ns)"),
    ("trace", "replay a file (implies --workload trace): a numaemu recording, perf script output, or virtual addresses"),
    ("time-scale", "wall ns per emulated ns (default: calibrated at each point)"),
    ("delays", "model (paced to the emulated latencies, default) or none (nothing injected; one value, not a sweep)"),
    ("pt-style", "page-table design: none (default), arm64 or x86 (one value, not a sweep)"),
    ("hardware", "hardware profile (default: each topology's own; one value, not a sweep)"),
    ("replicas-every", "replicate: a copy on every K-th node only (default 1; one value)"),
    ("start-method", f"multiprocessing start method: {', '.join(START_METHODS)} (default: Python's)"),
)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("bench", help="sweep run's options, repeated, with medians, intervals, significance and the model beside each speedup")
    p.add_argument("--experiment", metavar="FILE.toml", help="a TOML experiment: keys named as these options, a list sweeps (options given here win)")
    for name, text in _OPTIONS:
        p.add_argument(f"--{name}", help=text)
    p.add_argument("--sysfs-root", default="/sys", help=argparse.SUPPRESS)
    p.add_argument("--json", dest="json_path", metavar="PATH", help="where the JSON goes ('-' for stdout; default results/bench-<time>.json)")
    p.add_argument("--csv", dest="csv_path", metavar="PATH", help="also write one CSV row per point and policy")
    p.add_argument("--plot", dest="plot_path", metavar="FILE.png", help="draw speedups with their intervals and per-node times (needs the 'plot' extra: matplotlib)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="run each repetition as a task on the Dask scheduler at ADDRESS (tcp://HOST:PORT), or on a LocalCluster here ('local'); needs the 'cluster' extra")

    p = sub.add_parser("plot", help="draw a bench result's figure again, from its JSON (needs the 'plot' extra)")
    p.add_argument("bench_json", metavar="BENCH.json")
    p.add_argument("png", metavar="FILE.png")

    p = sub.add_parser("compare", help="compare two bench results: the differences and their significance")
    p.add_argument("a", metavar="A.json")
    p.add_argument("b", metavar="B.json")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the comparison as JSON ('-' for stdout)")


def cmd_bench(args: argparse.Namespace) -> int:
    run = _BenchRun(args)
    given = {name.replace("-", "_"): getattr(args, name.replace("-", "_")) for name, _ in _OPTIONS}
    try:
        result = api_bench.bench(experiment_file=args.experiment, cluster=args.cluster, progress=args.progress, log=run.say,
                                 on_experiment=run.begin, sysfs_root=args.sysfs_root, **given)
    except (NodeFailure, KeyboardInterrupt) as exc:  # keep the points completed so far
        if run.exp is not None:  # the outputs were checked: the sweep had begun
            n = len(run.exp.points)
            write_partial(exc, run.json_path, run.log, lambda d: f"stopped early: {len(d['points'])} of {n} points completed")
        raise
    return run.finish(result.to_json())


class _BenchRun:
    """One ``numaemu bench``: its outputs, checked once the experiment is (`begin`), and what
    it prints as the sweep goes (`say`) and at the end (`finish`)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.exp: Experiment | None = None
        self.json_path = ""
        self.csv_path: str | None = None
        self.log: Any = sys.stdout

    def begin(self, exp: Experiment) -> None:
        """Once the experiment is checked: the outputs, then what is about to run."""
        args = self.args
        self.json_path = output_path(args.json_path, "bench")
        self.csv_path = output_path(args.csv_path, param="--csv") if args.csv_path else None
        if args.plot_path:
            check_plot_available()
            output_path(args.plot_path, param="--plot")
        self.log = log_for(self.json_path)
        prune_dead_runs(lambda text: print(text, file=self.log))
        _header(exp, args.cluster, self.log)
        self.exp = exp

    def say(self, text: str) -> None:
        """A point's summary as it ends (or a line of the cluster's), a blank line after it."""
        print(text + "\n", file=self.log, flush=True)

    def finish(self, doc: dict[str, Any]) -> int:
        args, log = self.args, self.log
        assert self.exp is not None
        print(LEGEND, file=log)  # the points were printed as each ended
        write_doc({**doc, "argv": sys.argv[1:]}, self.json_path, log)
        points = doc["points"]
        if self.csv_path:
            write_csv(points, self.csv_path)
            print(f"wrote {self.csv_path}", file=log)
        if args.plot_path and points:
            plot_bench(points, args.plot_path, doc["experiment"])
            print(f"wrote {args.plot_path}", file=log)
        failed = doc["failed_runs"]
        if failed:
            first = failure_line(failed[0])
            tasks = self.exp.repeat * len(self.exp.points)
            print(f"error: {len(failed)} of {tasks} runs failed (each named above; failed_runs in the JSON): first {first}", file=sys.stderr)
            return EXIT_RUNS_FAILED
        return 0


def _header(exp: Experiment, cluster: str | None, log: Any) -> None:
    per = f"{exp.duration_s:g} s" if exp.duration_s else f"{exp.requests} requests"
    where = "in fresh node processes" if cluster is None else (
        f"as {exp.repeat * len(exp.points)} tasks (a repetition each; warmups once per host and point) "
        + ("on a Dask LocalCluster here" if cluster == "local" else f"on the Dask cluster at {cluster}")
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


def read_bench(path: str, param: str) -> dict[str, Any]:
    doc = read_document(path, param, "bench", version_key="bench_schema", version=BENCH_SCHEMA, needs=("points",))
    problem = bench_doc_problem(doc)
    if problem:
        raise UsageError(param, f"'{path}' is a damaged bench result: {problem}")
    return doc


def cmd_plot(args: argparse.Namespace) -> int:
    doc = read_bench(args.bench_json, "BENCH.json")
    check_plot_available()
    output_path(args.png, param="FILE.png")
    plot_bench(doc["points"], args.png, doc["experiment"])
    print(f"wrote {args.png}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    a, b = read_bench(args.a, "A.json"), read_bench(args.b, "B.json")
    json_path = output_path(args.json_path, "compare") if args.json_path else None
    cmp = compare_docs(a, b)
    log = log_for(json_path or "")
    print(format_compare(cmp, args.a, args.b), file=log)
    if not cmp["rows"]:
        print("no point is in both files", file=log)
    if json_path:
        write_doc({"schema": SCHEMA, "command": "compare", "a": args.a, "b": args.b, **cmp}, json_path, log)
    return 0
