"""`Emulation`: an emulated NUMA machine a script runs workloads and patches on.

    with numaemu.Emulation(topology="kunpeng920") as emu:
        result = emu.run("db", duration=2)
        print(result["replicate"].speedup_vs_single)
        checked = emu.flip_static_key(0)  # on every copy, while every node executes its sites
        assert checked.ok

The machine (topology, where its nodes sit on this host, the kernel image with its design) is
resolved once and kept; so are workloads and time-scale calibrations, per workload and cache
state. Every run and stress starts its node processes afresh (as pyperf runs each benchmark in
fresh workers) inside a `NodeSession`, which frees every process and segment on every path,
Ctrl-C and a node's death included, before the call returns; entering and leaving the context
manager removes the segments that numaemu processes killed earlier left behind. The command line is built on
this class: ``numaemu run`` is `Emulation.run_config` with a log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from numaemu.api.config import MachineConfig, RunConfig, StressConfig
from numaemu.api.records import PolicyResult, RunResult, StressResult, mark_stopped
from numaemu.api.run_document import delays_note, run_document
from numaemu.errors import NodeFailure, UsageError
from numaemu.host.cpus import format_cpu_list, host_cpus
from numaemu.host.files import load_image, load_symbols, load_topology, load_workload
from numaemu.host.fit import check_host_fits, run_needs
from numaemu.host.segments import prune_stale
from numaemu.model.binding import HostBinding, bind_to_host, parse_host_cpus
from numaemu.model.hardware import HardwareProfile
from numaemu.model.hardware_presets import resolve_hardware
from numaemu.model.image import KernelImage, synthetic_image
from numaemu.model.pagetables import kaslr_base, with_base
from numaemu.model.placement import check_replicas_every
from numaemu.model.topology import Topology
from numaemu.model.workloads import Workload
from numaemu.patching.sources import PatchOp, hot_keys
from numaemu.patching.stress import StressSpec, run_stress, stress_need
from numaemu.patching.stress_report import stress_document
from numaemu.runtime.inprocess import expected_checksum
from numaemu.runtime.policy_run import prepare_spec, run_policies
from numaemu.runtime.respawn import MAX_RECOVERIES
from numaemu.runtime.results import add_speedups, host_metadata

__all__ = ["Emulation", "prune_dead_runs"]

Log = Callable[[str], None]


class Emulation:
    """An emulated machine; see the module's docstring. Keyword arguments are `MachineConfig`'s
    fields (``image_scale``, ``host_cpus``, ``pt_style``, ``kaslr``, ``replicas_every``,
    ``delays``, ``time_scale``, ``start_method``, ``seed``, ...); `log` receives the lines the
    command line prints while a run goes (None: silent)."""

    def __init__(self, topology: str = "2s-xeon", image: str | None = None, *, log: Log | None = None, **machine: Any) -> None:
        self.config = MachineConfig(topology=topology, image=image, **machine)
        self.log = log
        self._topology: Topology | None = None
        self._host: HostBinding | None = None
        self._image: KernelImage | None = None
        self._workloads: dict[tuple[str, str | None], Workload] = {}
        self._calibrations: dict[tuple[str, str | None, bool, bool], tuple[float, dict[str, Any]]] = {}
        self._pruned = False

    @classmethod
    def from_config(cls, config: MachineConfig, *, log: Log | None = None) -> Emulation:
        return cls(log=log, **dataclasses.asdict(config.machine()))

    def __enter__(self) -> Emulation:
        self._prune()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the segments that numaemu processes which died (killed, not stopped) left in
        /dev/shm. A run's own processes and segments are freed by its `NodeSession` before the
        call that started them returns, on every path."""
        prune_stale()

    # -- the machine, resolved once -------------------------------------------------------------

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            c = self.config
            self._topology = load_topology(c.topology, sysfs_root=c.sysfs_root, local_ns=c.local_ns)
        return self._topology

    @property
    def host(self) -> HostBinding:
        """Which host CPUs each node runs on (chosen once, as `bind_to_host` does)."""
        if self._host is None:
            c, topo = self.config, self.topology
            override = parse_host_cpus(c.host_cpus) if c.host_cpus is not None else None
            self._host = bind_to_host(topo, host_cpus(), override)
        return self._host

    @property
    def hardware(self) -> HardwareProfile:
        """The profile the model charges: ``--hardware``, else the topology's, else the default."""
        return resolve_hardware(self.config.hardware, self.topology.hardware)

    def _check_design(self) -> None:
        check_replicas_every(self.config.replicas_every, [self.topology])

    @property
    def image(self) -> KernelImage:
        """The kernel image: the file's, or the embedded one, with the symbols of `symbols` if
        given; moved by KASLR if asked."""
        if self._image is None:
            c = self.config
            if c.image is None:
                image = synthetic_image(c.image_scale, arch=c.arch or "x86_64")
            else:
                image = load_image(c.image)
                if c.arch is not None and c.arch != image.arch:
                    raise UsageError("--arch", f"{c.arch} does not match --image '{c.image}', which is {image.arch}; leave --arch out with --image")
            if c.symbols is not None:
                image = load_symbols(c.symbols, image)
            self._image = with_base(image, kaslr_base(image, c.seed)) if c.kaslr else image
        return self._image

    def workload(self, name: str, trace: str | None = None) -> Workload:
        key = (name, trace)
        if key not in self._workloads:
            self._workloads[key] = load_workload(name, self.image, self.config.seed, trace)
        return self._workloads[key]

    def _prune(self) -> None:
        if not self._pruned:
            self._pruned = True
            prune_dead_runs(self.log)

    def _say(self, text: str) -> None:
        if self.log is not None:
            self.log(text)

    # -- run ------------------------------------------------------------------------------------

    def run(self, workload: str = "db", *, duration: float | None = None, requests: int | None = None, **options: Any) -> RunResult:
        """Run `workload` under each policy (``policies``, default all three) in fresh node
        processes; other keyword arguments are `RunConfig`'s (``cache``, ``user_data``,
        ``replicate``, ``migrate_rate``, ``verify``, ``recover``, ``trace``)."""
        config = RunConfig(**dataclasses.asdict(self.config), workload=workload, duration_s=duration, requests=requests, **options)
        return self.run_config(config)

    def run_config(self, config: RunConfig, *, on_policy: Callable[[PolicyResult], None] | None = None) -> RunResult:
        """Run `config` (its machine must be this emulation's). On a node failure or an
        interrupt, the policies completed are attached to the exception as ``partial`` (a
        `RunResult`) before it propagates."""
        if config.machine() != self.config:
            raise UsageError("config", "this RunConfig describes another machine; make an Emulation of it (Emulation.from_config)")
        topo, host, image = self.topology, self.host, self.image
        workload = self.workload(config.workload, config.trace)
        self._check_design()
        check_host_fits(topo, run_needs(topo, image, config.policies, replicate=config.replicate, replicas_every=config.replicas_every))
        self._prune()
        duration = config.length_s
        self._say(
            f"numaemu run: {topo.name} ({topo.n_nodes} nodes), image {image.name}, workload {workload.name}, "
            f"cache {config.cache}, user data {config.user_data}, "
            + (f"{duration:g} s per policy" if duration else f"{config.requests} requests per policy")
        )
        key = (config.workload, config.trace, config.cache == "cold", config.user_data == "local")
        spec, cal = prepare_spec(
            topo, host, image, workload, cold=key[2], user_local=key[3], duration_s=duration, requests=config.requests,
            migrate_rate=config.migrate_rate, seed=config.seed, start_method=config.method, replicate=config.replicate,
            time_scale=config.time_scale, pt_style=config.pt_style, replicas_every=config.replicas_every, delays=config.delays,
            calibrated=self._calibrations.get(key), hardware=self.hardware,
        )
        if cal:
            self._calibrations[key] = (spec.time_scale, cal)
        if config.recover:
            spec = dataclasses.replace(spec, recover=MAX_RECOVERIES)
        for line in _run_preamble(config, topo, host, image, spec.time_scale):
            self._say(line)
        completed: list[dict[str, Any]] = []
        placed: dict[str, Any] = {}

        def each(policy: str, run: dict[str, Any], rec: dict[str, Any]) -> None:
            placed[policy] = run["numa_maps"]
            if config.verify:
                tasks = run["tasks"]
                bad = [t for t in range(len(tasks)) if expected_checksum(image.data, workload, config.seed, t, int(tasks["done"][t])) != int(tasks["checksum"][t])]
                rec["verified"], rec["verify_failed_tasks"] = not bad, bad
            completed.append(rec)
            if on_policy is not None:
                on_policy(PolicyResult.from_json(rec))

        def result(records: list[dict[str, Any]], exc: BaseException | None = None) -> RunResult:
            doc = run_document(config, topo, host, image, workload, spec.time_scale, cal, records)
            if exc is not None:
                mark_stopped(doc, exc)
            return RunResult(tuple(PolicyResult.from_json(r) for r in records), doc, dict(placed))

        try:
            records = run_policies(spec, config.policies, each=each)
        except (NodeFailure, KeyboardInterrupt) as exc:  # keep the policies that completed
            add_speedups(completed)
            exc.partial = result(completed, exc)  # type: ignore[union-attr]
            raise
        return result(records)

    # -- stress and patch operations ----------------------------------------------------------

    def stress(self, source: str | None = None, *, duration: float = 10.0, **options: Any) -> StressResult:
        """Patch the text of every copy with `source` for `duration` seconds while every node's
        readers execute it, and check what they observed; other keyword arguments are
        `StressConfig`'s (``protocol``, ``policy``, ``rate``, ``bug``, ``recover``, ``kill_rate``)."""
        config = StressConfig(**dataclasses.asdict(self.config), source=source, duration_s=duration, **options)
        return self.stress_config(config)

    def patch(self, *ops: PatchOp, duration: float = 2.0, **options: Any) -> StressResult:
        """Perform `ops` (`numaemu.PatchOp`: a static key enabled or disabled, ftrace on N
        functions or off, a module loaded or unloaded) in order, spread over `duration` seconds,
        on node 0, with the protocol's synchronisation, while every node's readers execute the
        text; then check what they observed and every copy against the master. Other keyword
        arguments are `StressConfig`'s (``protocol``, ``policy``, ``bug``)."""
        if not ops:
            raise UsageError("ops", "give at least one PatchOp")
        kinds = {op.source for op in ops}
        source = kinds.pop() if len(kinds) == 1 else "mixed"
        return self.stress(source, duration=duration, script=tuple(ops), **options)

    def flip_static_key(self, key: int = 0, *, duration: float = 2.0, **options: Any) -> StressResult:
        """Enable one of the image's hot static keys (its every use site NOP -> JMP, as
        static_key_enable does) and disable it again, under load, checked."""
        return self.patch(PatchOp("static_key_enable", key=key), PatchOp("static_key_disable", key=key), duration=duration, **options)

    def enable_ftrace(self, functions: int = 0, *, duration: float = 2.0, **options: Any) -> StressResult:
        """Trace `functions` functions (0: every one; NOP5 -> call ftrace_caller), then stop
        tracing, under load, checked."""
        return self.patch(PatchOp("ftrace_enable", functions=functions), PatchOp("ftrace_disable"), duration=duration, **options)

    def load_module(self, *, duration: float = 2.0, **options: Any) -> StressResult:
        """Load a module into the module area (its text placed per the policy, alternatives
        applied before it is live), run its code, unload it, under load, checked."""
        return self.patch(PatchOp("module_load"), PatchOp("module_unload"), duration=duration, **options)

    def stress_config(self, config: StressConfig) -> StressResult:
        if config.machine() != self.config:
            raise UsageError("config", "this StressConfig describes another machine; make an Emulation of it (Emulation.from_config)")
        image = self.image
        protocol = config.protocol_for(image.arch)
        keys = len(hot_keys(image.jump_keys, image.n_keys))
        if config.source == "static_keys" and not keys:
            raise UsageError("--source", f"static_keys needs static keys, and image {image.name} has no jump-label sites numaemu can flip "
                                         "(no __jump_table found); use ftrace, module, bpf, livepatch or mixed")
        for op in config.script:  # (every image gets a module area: run_stress adds it)
            if op.source == "static_keys" and op.key >= keys:
                raise UsageError("ops", f"{op.kind} of key {op.key}: image {image.name} has {keys} hot static keys (0..{keys - 1})" if keys else f"{op.kind}: image {image.name} has no static keys")
        if config.bug == "key-race" and not keys:
            raise UsageError("--inject-bug", f"key-race is a static-key bug, and image {image.name} has no static keys to race on")
        topo, host = self.topology, self.host
        self._check_design()
        check_host_fits(topo, [stress_need(topo, image, config.policy, replicas_every=config.replicas_every)])
        self._prune()
        shown = protocol if config.protocol_spec is None else f"protocol '{config.protocol_spec.name}'"
        self._say(
            f"numaemu stress: {shown}, source {config.source}, {topo.name} ({topo.n_nodes} nodes), policy {config.policy}, "
            f"image {image.name}, {config.duration_s:g} s at {config.rate:g} ops/s, bug: {config.bug or 'none'}"
        )
        if host.oversubscribed:
            self._say(f"oversubscribed: {topo.n_nodes} nodes share host CPUs; the checks stay exact, patch latencies are inflated")
        spec = StressSpec(topo, host, image, config.policy, protocol, config.source_name, config.duration_s, config.rate, config.seed, config.bug,
                          config.method, replicas_every=config.replicas_every, pt_style=config.pt_style,
                          recover=MAX_RECOVERIES if config.recover else 0, kill_rate=config.kill_rate or 0.0, script=config.script,
                          int3_fix=config.int3_fix_for(), stop_at_first=config.stop_at_first,
                          protocol_spec=config.protocol_spec, ifetch=config.ifetch, timeline_settings=config.timeline,
                          migrate=config.migrate)

        def result(raw: dict[str, Any], exc: BaseException | None = None) -> StressResult:
            doc = stress_document(spec, raw)
            doc["host"], doc["topology"], doc["host_binding"] = host_metadata(), topo.to_json(), host.to_json()
            if exc is not None:
                mark_stopped(doc, exc)
            return StressResult.from_json(doc)

        try:
            raw = run_stress(spec)
        except (NodeFailure, KeyboardInterrupt) as exc:  # keep what the nodes saw
            partial = getattr(exc, "partial", None)
            exc.partial = result(partial, exc) if partial is not None else None  # type: ignore[union-attr]
            raise
        return result(raw)


def prune_dead_runs(log: Log | None) -> None:
    """Remove the segments numaemu processes that died left in /dev/shm, and say so."""
    pruned = prune_stale()
    if pruned and log is not None:
        log(f"removed {len(pruned)} shared-memory segment(s) left by dead numaemu runs: {', '.join(pruned)}")


def _run_preamble(config: RunConfig, topo: Topology, host: HostBinding, image: KernelImage, scale: float) -> list[str]:
    """What ``numaemu run`` says before its nodes start: where they run, how time is paced."""
    paced = config.delays == "model"
    where = ", ".join(f"node {i} -> CPU {format_cpu_list(c)}" for i, c in enumerate(host.cpus))
    timing = f"time scale {scale:g} (1 emulated ns = {scale:g} wall ns)" if paced else "nothing paced"
    lines = [f"host: {where}; {timing}"]
    if not paced:
        lines.append(delays_note("none"))
    if config.pt_style != "none" or config.kaslr or config.replicas_every > 1:
        lines.append(
            f"design: page tables {config.pt_style}, image base {image.base:#x}" + (" (KASLR)" if config.kaslr else "")
            + (f", replicate puts a copy on every {config.replicas_every}th node" if config.replicas_every > 1 else "")
        )
    if host.oversubscribed:
        lines.append(
            f"oversubscribed: {topo.n_nodes} nodes on {host.n_cpus_used} host CPU(s); emulated-time results stay exact, "
            "wall-clock fidelity is reduced (see pacing_lost_pct)"
        )
    return lines

