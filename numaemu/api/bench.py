"""`bench`: a sweep of runs, repeated, with statistics; the same for a script and ``numaemu bench``.

Each option is text (from the command line, an experiment file, or a script's value made text),
checked by one parser either way (`experiment`); lists sweep. Defaults are ``numaemu run``'s.
`bench` runs the experiment here, or as Dask tasks (`cluster` an address or ``"local"``), and
returns its document (README, "JSON formats": ``points``, ``failed_runs``, ...).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from numaemu.api import params
from numaemu.api.records import BenchResult, mark_stopped
from numaemu.errors import NodeFailure, UsageError
from numaemu.host.cpus import host_cpus
from numaemu.host.files import load_topology, load_workload
from numaemu.host.fit import SegmentNeed, check_fit, check_node_memory, free_space, run_needs
from numaemu.measure.compare import BENCH_SCHEMA
from numaemu.measure.experiment import AXES, Experiment, Point, read_experiment_file, split_topologies
from numaemu.model.binding import bind_to_host, parse_host_cpus
from numaemu.model.hardware_presets import PROFILES
from numaemu.model.pagetables import PT_STYLES
from numaemu.model.placement import POLICIES, REPLICATE_SCOPES, check_replicas_every
from numaemu.model.workloads import WORKLOADS
from numaemu.runtime.policy_run import DELAYS, START_METHODS
from numaemu.runtime.results import SCHEMA, host_metadata

__all__ = ["DEFAULTS", "LISTS", "SCALARS", "experiment", "bench", "bench_document"]

DEFAULTS = {
    "topology": "2s-xeon", "workload": "db", "cache": "hot", "user-data": "local", "replicate": "text+rodata",
    "policy": ",".join(POLICIES), "repeat": "5", "warmup": "1", "migrate-rate": "0.01", "seed": "0", "image-scale": "1",
    "delays": "model", "pt-style": "none", "replicas-every": "1",
}
LISTS = {
    "workload": WORKLOADS, "cache": ("hot", "cold"), "user-data": ("local", "interleave"),
    "replicate": REPLICATE_SCOPES, "policy": POLICIES,
}
SCALARS: dict[str, Callable[[str], Any]] = {
    "repeat": params.REPEAT, "warmup": params.WARMUP, "duration": params.DURATION,
    "requests": params.REQUESTS, "migrate-rate": params.probability, "seed": params.SEED, "image-scale": params.image_scale,
    "local-ns": params.LOCAL_NS, "time-scale": params.TIME_SCALE,
    "delays": params.one_of(DELAYS), "pt-style": params.one_of(PT_STYLES), "replicas-every": params.REPLICAS_EVERY,
    "hardware": params.one_of(tuple(PROFILES)),
}
TEXT = ("host-cpus", "image", "trace", "start-method")


def experiment(given: Mapping[str, str | None], *, file: str | None = None, sysfs_root: str = "/sys", cluster: str | None = None) -> Experiment:
    """The experiment the options `given` (text, keyed by option name without ``--``) and the
    experiment `file` describe, checked: names, numbers, files, and (unless the sweep runs on
    other hosts: `cluster` an address) that its largest point fits on this host."""
    from_file = read_experiment_file(file) if file else {}

    def raw(name: str) -> tuple[str | None, str]:
        if given.get(name) is not None:
            return given[name], f"--{name}"
        if name in from_file:
            return from_file[name], f"--{name} (from {file})"
        return DEFAULTS.get(name), f"--{name}"

    def scalar(name: str) -> Any:
        text, param = raw(name)
        if text is None:
            return None
        try:
            return SCALARS[name](text)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(param, str(exc)) from None

    lists: dict[str, list[str]] = {}
    if raw("trace")[0] and given.get("workload") is None and "workload" not in from_file:
        given = {**given, "workload": "trace"}  # --trace alone names the workload
    for name in ("topology", *LISTS):
        text, param = raw(name)
        assert text is not None
        lists[name] = params.comma_list(text, param, LISTS.get(name), split_topologies if name == "topology" else None)
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
    start_method = params.choice(start_text if start_text is not None else mp.get_start_method(), START_METHODS, param)
    points = tuple(
        Point(topology=t, workload=w, cache=c, user_data=u, replicate=r)
        for t in lists["topology"] for w in lists["workload"] for c in lists["cache"]
        for u in lists["user-data"] for r in lists["replicate"]
    )
    exp = Experiment(
        points=points, policies=tuple(policies), repeat=scalar("repeat"), warmup=scalar("warmup"),
        duration_s=None if requests else (duration or 2.0), requests=requests, migrate_rate=scalar("migrate-rate"),
        seed=scalar("seed"), image_scale=scalar("image-scale"), start_method=start_method, host_cpus=host_cpus_text,
        local_ns=scalar("local-ns"), sysfs_root=sysfs_root, trace=Path(trace_text) if trace_text else None,
        image=Path(image_text) if image_text is not None else None,
        time_scale=scalar("time-scale"), delays=scalar("delays"), pt_style=scalar("pt-style"),
        replicas_every=scalar("replicas-every"), hardware=scalar("hardware"),
    )
    if exp.delays == "none" and exp.time_scale:
        raise UsageError("--time-scale", "is for --delays model; with --delays none nothing is paced")
    _check_points(exp, lists, here=cluster is None or cluster == "local")
    return exp


def _check_points(exp: Experiment, lists: dict[str, list[str]], *, here: bool) -> None:
    """Every topology, workload and image now, so a typo fails before minutes of running; and
    that the largest point fits (the points run one after the other). Another host's CPUs and
    memory are its own: each host checks them before its runs (runner.execute)."""
    image = exp.kernel_image()
    override = parse_host_cpus(exp.host_cpus) if exp.host_cpus is not None else None
    topos = [load_topology(t, sysfs_root=exp.sysfs_root, local_ns=exp.local_ns) for t in lists["topology"]]
    needs: list[SegmentNeed] = []
    for t, topo in zip(lists["topology"], topos, strict=True):
        if here:
            bind_to_host(topo, host_cpus(), override)
        for r in lists["replicate"]:
            label = f"{t}, --replicate {r}: " if len(lists["replicate"]) > 1 else f"{t}: "
            point = run_needs(topo, image, exp.policies, replicate=r, replicas_every=exp.replicas_every, label=label)
            check_node_memory(topo, point)
            needs += point
    check_replicas_every(exp.replicas_every, topos)
    if here:
        check_fit(needs, *free_space())
    for w in lists["workload"]:
        load_workload(w, image, exp.seed, exp.trace if w == "trace" else None)


def bench_document(exp: Experiment, points: list[dict[str, Any]], *, file: str | None = None, sweep: Any = None) -> dict[str, Any]:
    """The JSON document of a sweep (README, "JSON formats")."""
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "bench_schema": BENCH_SCHEMA,
        "command": "bench",
        "host": host_metadata(),
        "experiment": {**exp.settings(), "axes": list(AXES), "file": file},
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


def bench(*, experiment_file: str | None = None, cluster: str | None = None, progress: bool | None = False,
          log: Callable[[str], None] | None = None, on_experiment: Callable[[Experiment], None] | None = None,
          sysfs_root: str = "/sys", **options: Any) -> BenchResult:
    """Run a sweep from a script: options as ``numaemu bench``'s, with ``_`` for ``-``
    (``topology="2s-xeon,kunpeng920"`` or a list, ``cache=["hot", "cold"]``, ``repeat=3``, ...).
    Returns a `BenchResult`; a node failure or an interrupt propagates with the points
    completed attached as ``partial`` (a `BenchResult` too). `on_experiment` sees the experiment once it
    is checked, before anything runs (the command line says what it is about to do)."""
    from numaemu.measure.cluster import ClusterSession, parse_address
    from numaemu.measure.cluster import check_available as check_cluster_available
    from numaemu.measure.cluster_sweep import ClusterSweep
    from numaemu.measure.sweep import run_experiment

    given = {k.replace("_", "-"): _text(v) for k, v in options.items()}
    unknown = sorted(set(given) - set(DEFAULTS) - set(SCALARS) - set(TEXT))
    if unknown:
        raise UsageError(f"--{unknown[0]}", "is not an option of bench")
    address = parse_address(cluster) if cluster is not None else None
    if address is not None:
        check_cluster_available()
    exp = experiment(given, file=experiment_file, sysfs_root=sysfs_root, cluster=address)
    say = log or (lambda text: None)
    if on_experiment is not None:
        on_experiment(exp)
    session = ClusterSession(address, log=say) if address is not None else None
    sweep = None
    completed: list[dict[str, Any]] = []
    try:
        if session is None:
            points = run_experiment(exp, progress=progress, log=say, done=completed)
        else:
            sweep = ClusterSweep(exp, session, progress=progress, log=say)
            points = sweep.run(done=completed)
    except (NodeFailure, KeyboardInterrupt) as exc:
        doc = mark_stopped(bench_document(exp, completed, file=experiment_file, sweep=sweep), exc)
        exc.partial = BenchResult(tuple(doc["points"]), tuple(doc["failed_runs"]), doc)  # type: ignore[union-attr]
        raise
    finally:
        if session is not None:
            session.close()
    return BenchResult.from_json(bench_document(exp, points, file=experiment_file, sweep=sweep))


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)
