"""``numaemu check``: every interleaving of a patch protocol on a few nodes, explored to a bound.

`check` validates a configuration, explores it (explore/scheduler.py over explore/system.py) and
returns a `CheckResult`: clean (every interleaving within the bound holds every invariant), a
violation with its shortest counterexample, step by step, or incomplete (the state bound stopped
the search first). `replay` runs a saved counterexample again. The text and JSON forms of both are
here too, so the command line only parses and prints.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from numaemu.errors import UsageError
from numaemu.explore import views
from numaemu.explore.scheduler import Explorer, Failure, Outcome
from numaemu.explore.system import LIMITS, CheckConfig, PatchSystem
from numaemu.host.files import load_protocol, read_text
from numaemu.model.protocol_spec import KERNEL_PROTOCOLS, ProtocolSpec, protocol_from_mapping
from numaemu.patching.protocols import BUGS, INT3_FIXES, PROTOCOLS
from numaemu.patching.reader import IFETCH

__all__ = ["CheckResult", "Step", "check", "check_config", "replay", "MAX_STATES", "SOURCES"]

MAX_STATES = 1_000_000  # the default state bound (--max-states)
MINIMIZE_S = 20.0  # how long the search goes on for a shorter counterexample (--minimize-s)
SOURCES = ("calls", "static_keys", "bpf", "module", "shared")
# The bugs of a patch source (sources.py), not of a protocol's patch call: each is explored with its source.
_SOURCE_OF = {"key-race": "static_keys", "trampoline-no-rcu": "bpf", "module-unload-running": "module", "ipmodify-shared": "shared"}
# Which protocols each protocol bug is planted in (protocols.py, the modules of each protocol).
_BUG_PROTOCOLS = {
    "early-master": ("stop_machine",), "descriptor-reuse": ("text_poke_bp",), "no-int3-fix": ("text_poke_bp",),
    "no-sync": ("stop_machine", "text_poke_bp", "nosync"), "no-final-sync": ("text_poke_bp", "nosync"),
    "late-replica": ("stop_machine", "text_poke_bp", "nosync", "data"), "ivau-local": ("stop_machine", "nosync", "data"),
}


@dataclass(frozen=True)
class Step:
    """One step of a counterexample: an actor ran from one scheduling point to its last one
    before another actor ran."""

    actor: str
    points: int  # scheduling points it passed
    stopped_at: str  # the code it stopped at (file:line function: source)
    protocol_step: str  # its node's protocol step then
    changes: tuple[str, ...]  # what the step changed, "name: before -> after"

    def to_json(self) -> dict[str, Any]:
        return {"actor": self.actor, "points": self.points, "stopped_at": self.stopped_at, "protocol_step": self.protocol_step, "changes": list(self.changes)}


@dataclass(frozen=True)
class CheckResult:
    config: CheckConfig
    outcome: Outcome
    steps: tuple[Step, ...] = ()
    interleavings: int | None = None  # paths through the state graph (None: not counted)
    replayed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.outcome.failure is not None:
            return "violation"
        return "clean" if self.outcome.complete else "incomplete"

    @property
    def exit_code(self) -> int:
        return {"clean": 0, "violation": 1, "incomplete": 4}[self.verdict]

    def to_json(self) -> dict[str, Any]:
        o = self.outcome
        doc: dict[str, Any] = {
            "verdict": self.verdict, "config": self.config.to_json(), "replayed": self.replayed,
            "states": o.states, "steps_run": o.steps, "replays": o.replays, "pruned": o.pruned, "end_states": o.interleavings,
            "interleavings": self.interleavings, "max_depth": o.max_depth, "complete": o.complete, "shortest": o.shortest, "seconds": round(o.seconds, 3),
            "method": "stateful depth-first search, state hashing, shortest counterexample by branch and bound (explore/scheduler.py)",
        }
        if o.failure is not None:
            doc["violation"] = {"kind": o.failure.kind, **o.failure.detail}
            doc["choices"] = o.choices
            doc["steps"] = [s.to_json() for s in self.steps]
        return doc


def check_config(*, protocol: str | None = None, arch: str | None = None, bug: str | None = None, nodes: int = 2, sites: int = 2,
                 tasks: int = 2, calls: int | None = None, requests: int = 2, int3_fix: str = "refcount", ifetch: str = "coherent",
                 kprobe: bool = True, source: str | None = None) -> CheckConfig:
    """A validated configuration (bad input: `UsageError` naming the option and the rule)."""
    spec: ProtocolSpec | None = None
    if protocol is None:
        protocol = "nosync" if arch == "arm64" else "text_poke_bp"
    if protocol not in PROTOCOLS:
        if protocol in KERNEL_PROTOCOLS or not protocol.endswith(".toml"):
            raise UsageError("--protocol", f"must be one of {', '.join(PROTOCOLS)} or a protocol file (.toml), got {protocol!r}")
        spec = load_protocol(protocol)
        arch = arch or spec.arch
        if spec.arch != arch:
            raise UsageError("--arch", f"protocol '{spec.name}' patches {spec.arch} text, not {arch}")
        protocol = "data"
    arch = arch or ("arm64" if protocol == "nosync" else "x86_64")
    if arch not in ("x86_64", "arm64"):
        raise UsageError("--arch", f"must be x86_64 or arm64, got {arch!r}")
    if protocol == "text_poke_bp" and arch != "x86_64":
        raise UsageError("--protocol", "text_poke_bp patches x86 text (INT3); use --arch x86_64, or nosync or stop_machine on arm64")
    if protocol == "nosync" and arch != "arm64":
        raise UsageError("--protocol", "nosync patches arm64 text (one aligned word); use --arch arm64")
    if source is None:
        source = _SOURCE_OF.get(bug or "", "calls")
    if source not in SOURCES:
        raise UsageError("--source", f"must be one of {', '.join(SOURCES)}, got {source!r}")
    if bug in _SOURCE_OF and source != _SOURCE_OF[bug]:
        raise UsageError("--inject-bug", f"{bug} is a bug of the {_SOURCE_OF[bug]} source; use --source {_SOURCE_OF[bug]}")
    if calls is None:
        calls = 2 if source == "bpf" else 1
    if source == "bpf" and isinstance(calls, int) and calls < 2:
        raise UsageError("--calls", "the bpf source needs 2 (attach, then detach and free the trampoline)")
    if bug is not None and bug not in _SOURCE_OF:
        if bug not in BUGS:
            raise UsageError("--inject-bug", f"must be one of {', '.join(BUGS)}, got {bug!r}")
        if source == "module":
            raise UsageError("--inject-bug", f"{bug} is planted in a protocol's patch call, and the module source's load and unload "
                             "write through _write_slot (text_mutex and two syncs), not the protocol; use another --source")
        if protocol not in _BUG_PROTOCOLS[bug]:
            raise UsageError("--inject-bug", f"{bug} is planted in {', '.join(_BUG_PROTOCOLS[bug])}, not in {protocol}")
        if bug == "ivau-local" and arch != "arm64":
            raise UsageError("--inject-bug", "ivau-local is an arm64 bug (IC IVAU by VA); add --arch arm64")
        if bug == "no-int3-fix" and int3_fix != "extra-sync":
            raise UsageError("--inject-bug", "no-int3-fix removes the extra-sync fix's sync; add --int3-fix extra-sync")
        if bug == "descriptor-reuse" and int3_fix != "refcount":
            raise UsageError("--inject-bug", "descriptor-reuse removes the refcount fix's wait; use --int3-fix refcount")
    if int3_fix not in INT3_FIXES:
        raise UsageError("--int3-fix", f"must be one of {', '.join(INT3_FIXES)}, got {int3_fix!r}")
    if ifetch not in IFETCH:
        raise UsageError("--ifetch", f"must be one of {', '.join(IFETCH)}, got {ifetch!r}")
    sizes = {"nodes": nodes, "sites": sites, "tasks": tasks, "calls": calls, "requests": requests}
    for name, value in sizes.items():
        lowest = 2 if name == "nodes" else 1
        if not isinstance(value, int) or value < lowest:
            raise UsageError(f"--{name}", f"must be an integer >= {lowest}, got {value!r}")
        if value > LIMITS[name]:
            raise UsageError(f"--{name}", f"{value} is more than the search can hold: the states grow about tenfold with each one more; "
                             f"the largest that fits is {LIMITS[name]}")
    return CheckConfig(protocol=protocol, arch=arch, bug=bug, nodes=nodes, sites=sites, tasks=tasks, calls=calls, requests=requests,
                       int3_fix=int3_fix, ifetch=ifetch, kprobe=kprobe, protocol_spec=spec, source=source)


def check(cfg: CheckConfig, max_states: int = MAX_STATES, progress: Callable[[Outcome, int], None] | None = None,
          minimize_s: float = MINIMIZE_S) -> CheckResult:
    """Explore `cfg` (module docstring)."""
    if max_states < 1:
        raise UsageError("--max-states", f"must be >= 1, got {max_states}")
    if not minimize_s >= 0:
        raise UsageError("--minimize-s", f"must be >= 0, got {minimize_s}")
    system = PatchSystem(cfg)
    try:
        explorer = Explorer(system, max_states, progress, minimize_s)
        out = explorer.explore()
        steps = _trace(explorer, system, out.choices, out.failure) if out.failure is not None else ()
        paths = explorer.paths if out.complete and out.failure is None else None
        return CheckResult(cfg, out, steps, paths)
    finally:
        system.close()


def replay(path: str | Path) -> CheckResult:
    """Run the counterexample saved at `path` (a ``--json`` document or ``--save`` file) again."""
    p = Path(path)
    try:
        doc = json.loads(read_text(p, "--replay"))  # a regular file, or one line saying why not
    except json.JSONDecodeError as exc:
        raise UsageError("--replay", f"{p} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or "config" not in doc or "choices" not in doc:
        raise UsageError("--replay", f"{p} holds no counterexample (a numaemu check --json document of a violation)")
    c = dict(doc["config"])
    spec = protocol_from_mapping(c.pop("protocol_spec"), p.name) if "protocol_spec" in c else None
    cfg = CheckConfig(**c, protocol_spec=spec)
    choices = [int(x) for x in doc["choices"]]
    system = PatchSystem(cfg)
    try:
        explorer = Explorer(system, 1)
        out = Outcome(choices=choices)
        t0 = time.perf_counter()
        steps, failure = _run_trace(explorer, system, choices)
        out.seconds = time.perf_counter() - t0
        out.failure = failure
        if failure is None and doc.get("violation", {}).get("kind") == "deadlock":
            out.failure = Failure("deadlock", {"detail": "every node waits for another (the search's finding at the end of these steps)"})
        out.steps = len(choices)
        return CheckResult(cfg, out, steps, None, replayed=True, extra={"expected": doc.get("violation", {})})
    finally:
        system.close()


def _trace(explorer: Explorer, system: PatchSystem, choices: list[int], failure: Failure | None) -> tuple[Step, ...]:
    steps, again = _run_trace(explorer, system, choices)
    if failure is not None and failure.kind != "deadlock" and (again is None or again.kind != failure.kind):
        # Deterministic by construction: a difference is a bug of numaemu's, not a finding.
        raise RuntimeError(f"the counterexample did not replay: {failure.kind} found, {again.kind if again else 'nothing'} on replay")
    return steps


def _run_trace(explorer: Explorer, system: PatchSystem, choices: list[int]) -> tuple[tuple[Step, ...], Failure | None]:
    """Replay `choices`, recording what each run of one actor changed."""
    merged: list[list[Any]] = []  # [actor, points, where, step, before]
    last: dict[str, Any] = {}

    def on_step(actor: int, run: Any) -> None:
        nonlocal last
        g = run.actors[actor]
        where = "its end (or the check that failed)" if g.dead else views.where(g.gr_frame)
        snap = views.snapshot(system)
        node = actor % system.cfg.nodes
        if merged and merged[-1][0] == actor:
            merged[-1][1] += 1
            merged[-1][2], merged[-1][3], merged[-1][5] = where, snap[f"node {node} step"], snap
        else:
            merged.append([actor, 1, where, snap[f"node {node} step"], last, snap])
        last = snap

    explorer_failure = None
    system.reset()
    last = views.snapshot(system)
    explorer_failure = explorer.replay(choices, on_step)
    steps = []
    for actor, points, where, step, before, after in merged:
        changes = tuple(f"{k}: {before.get(k)} -> {v}" for k, v in after.items() if before.get(k) != v)
        steps.append(Step(views.describe(system, actor), points, where, str(step), changes))
    return tuple(steps), explorer_failure


def describe(result: CheckResult) -> str:
    """The text report."""
    cfg, o = result.config, result.outcome
    name = cfg.protocol if cfg.protocol_spec is None else f"protocol '{cfg.protocol_spec.name}'"
    calls = {"calls": f"{cfg.calls} call(s)", "static_keys": f"static_keys: {cfg.calls} op(s) a node",
             "bpf": f"bpf: {cfg.calls} attach/detach op(s)", "module": f"module: {cfg.calls} unload/load op(s)",
             "shared": f"shared: {cfg.calls} attach/detach op(s) a node"}[cfg.source]
    lines = [f"numaemu check: {name} on {cfg.arch}, {cfg.nodes} nodes x {cfg.sites} sites x {cfg.tasks} tasks, {calls}, "
             f"{cfg.requests} requests a node, ifetch {cfg.ifetch}, int3 fix {cfg.int3_fix}" + (f", bug {cfg.bug}" if cfg.bug else "")]
    if o.failure is not None:
        d = o.failure.detail
        where = ", ".join(f"{k} {d[k]}" for k in ("node", "task", "site", "address") if k in d)
        lines.append(f"violation: {o.failure.kind}" + (f" ({where})" if where else "") + f": {d.get('detail', '')}")
        if "observed" in d and o.failure.kind in ("stale", "torn", "unsynchronized"):
            lines.append(f"  executed {d['observed']}" + (f"; the last call that returned left {d['expected']}" if o.failure.kind != "stale" else ""))
        kind = "replayed" if result.replayed else "the shortest counterexample" if o.shortest else \
            "a counterexample (the search for a shorter one stopped at --minimize-s)"
        lines.append(f"{kind}: {len(result.steps)} steps ({len(o.choices)} scheduling points)")
        for i, s in enumerate(result.steps, 1):
            lines.append(f"  {i:2d}. {s.actor} [{s.protocol_step}], {s.points} point(s), stopped at {s.stopped_at}")
            for c in s.changes:
                lines.append(f"        {c}")
    if not result.replayed:
        paths = f", {result.interleavings:,} interleavings" if result.interleavings is not None else ""
        lines.append(f"explored: {o.states:,} states{paths}, depth {o.max_depth}, {o.steps:,} steps run ({o.replays:,} replays), "
                     f"{o.seconds:.1f} s; bound: {cfg.requests} requests a node, {cfg.calls} call(s), states <= the --max-states bound")
        if result.verdict == "clean":
            lines.append("clean: every interleaving within the bound holds every invariant")
        elif result.verdict == "incomplete":
            lines.append("incomplete: the state bound stopped the search before it was exhaustive (raise --max-states)")
    return "\n".join(lines)


def progress_printer(stream: Any = sys.stderr) -> Callable[[Outcome, int], None]:
    def show(o: Outcome, depth: int) -> None:
        print(f"\rcheck: {o.states:,} states, depth {depth}, {o.steps:,} steps", end="", file=stream, flush=True)
    return show
