"""What a run is asked to do, validated once, in one place.

`MachineConfig` is the emulated machine and how it sits on this host (topology, image, design,
pacing); `RunConfig` adds one ``numaemu run`` (workload, policies, cache, length); `StressConfig`
one ``numaemu stress``. Each is a frozen record whose ``__post_init__`` checks every field
(through the rules of `params`) and every combination, raising one `UsageError` that names the
command-line parameter. The command line only parses options and maps them onto these records;
a script builds the same records (or lets `Emulation` build them), so both take one path.

Checks that need the files or the host (the image's own arch, whether the run fits) happen when
`Emulation` resolves the record, still before anything is started.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass, fields
from pathlib import Path

from numaemu.api import params
from numaemu.errors import UsageError
from numaemu.host.files import load_protocol
from numaemu.model.hardware_presets import PROFILES
from numaemu.model.image import ARCHES
from numaemu.model.pagetables import PT_STYLES
from numaemu.model.placement import POLICIES, REPLICATE_SCOPES
from numaemu.model.protocol_spec import ProtocolSpec
from numaemu.model.timeline import TIMELINE_PARAMETERS, setting_error
from numaemu.model.workloads import check_workload
from numaemu.patching.protocols import BUGS, INT3_FIXES, PROTOCOLS
from numaemu.patching.reader import IFETCH
from numaemu.patching.sources import SOURCES, PatchOp
from numaemu.runtime.policy_run import DELAYS, START_METHODS

__all__ = ["MachineConfig", "RunConfig", "StressConfig", "BUG_PROTOCOLS"]

# Which bugs each protocol can have (BACKGROUND.md s.4): stop_machine has no INT3 descriptor
# and no final sync (each node resynchronises itself); text_poke_bp has no rendezvous; nosync
# has neither.
BUG_PROTOCOLS = {
    "early-master": ("stop_machine",),
    "descriptor-reuse": ("text_poke_bp",),
    "no-sync": PROTOCOLS,
    "no-final-sync": ("text_poke_bp", "nosync"),
    "key-race": PROTOCOLS,
    "no-int3-fix": ("text_poke_bp",),
    "late-replica": PROTOCOLS,
    "trampoline-no-rcu": PROTOCOLS,
    "module-unload-running": PROTOCOLS,
    "ipmodify-shared": PROTOCOLS,
    "ivau-local": ("nosync", "stop_machine"),
}
# The source a bug needs when --source is left out: INT3s that outlive a text_poke_bp batch
# (kprobes'), a trampoline tasks can be preempted in (BPF's).
BUG_SOURCE = {"descriptor-reuse": "kprobes", "no-int3-fix": "kprobes", "trampoline-no-rcu": "bpf", "module-unload-running": "module", "ipmodify-shared": "shared"}
# The bugs that are not a protocol's steps, so that they can be planted under a protocol of one's own.
DATA_BUGS = ("key-race", "late-replica", "trampoline-no-rcu", "module-unload-running", "ipmodify-shared", "ivau-local")
# Which INT3 fix each INT3 bug breaks (protocols.INT3_FIXES).
BUG_FIX = {"descriptor-reuse": "refcount", "no-int3-fix": "extra-sync"}


@dataclass(frozen=True)
class MachineConfig:
    """The emulated machine: `topology` a preset, a numa=fake spec, a .json/.toml file or
    ``host``; `image` a kernel image file (None: the embedded synthetic image, shrunk by
    `image_scale`); the page-table design; how time is paced; where nodes run on this host."""

    topology: str = "2s-xeon"
    image: str | None = None
    image_scale: float = 1.0
    symbols: str | None = None  # a System.map or /proc/kallsyms-format file of the image's kernel
    arch: str | None = None  # the embedded image's variant (x86_64 or arm64); with `image`, the file's
    host_cpus: str | None = None  # ';'-separated cpulists, one per node
    local_ns: float | None = None
    sysfs_root: str = "/sys"
    pt_style: str = "none"
    hardware: str | None = None  # a hardware_presets.PROFILES name; None: the topology's own
    kaslr: bool = False
    replicas_every: int = 1
    delays: str = "model"
    time_scale: float | None = None
    start_method: str | None = None  # None: Python's default
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.topology, str):
            raise UsageError("--topology", f"give a preset, a spec, a file or 'host' as text, not {self.topology!r}")
        if self.image is not None and not str(self.image).strip():
            raise UsageError("--image", "is empty; give a file path")
        params.check("--image-scale", params.image_scale, self.image_scale)
        if self.symbols is not None and not str(self.symbols).strip():
            raise UsageError("--symbols", "is empty; give a System.map or /proc/kallsyms file")
        if self.image is not None and self.image_scale != 1:
            raise UsageError("--image", f"cannot be combined with --image-scale {self.image_scale:g}: the scale shrinks the embedded synthetic image only")
        if self.arch is not None:
            params.choice(self.arch, ARCHES, "--arch")
        if self.local_ns is not None:
            params.check("--local-ns", params.LOCAL_NS, self.local_ns)
        params.choice(self.pt_style, PT_STYLES, "--pt-style")
        if self.hardware is not None:
            params.choice(self.hardware, tuple(PROFILES), "--hardware")
        if self.kaslr and self.pt_style == "arm64":
            raise UsageError("--kaslr", "not with --pt-style arm64: King's series disables KASLR (the image must sit under its own level-0 entry)")
        if self.kaslr and self.pt_style != "x86":
            raise UsageError("--kaslr", "needs --pt-style x86, the design that supports it (Kuzin's series)")
        params.check("--replicas-every", params.REPLICAS_EVERY, self.replicas_every)
        params.choice(self.delays, DELAYS, "--delays")
        if self.time_scale is not None:
            params.check("--time-scale", params.TIME_SCALE, self.time_scale)
            if self.delays == "none":
                raise UsageError("--time-scale", "is for --delays model; with --delays none nothing is paced")
        params.choice(self.method, START_METHODS, "--start-method")
        params.check("--seed", params.SEED, self.seed)

    @property
    def method(self) -> str:
        """The multiprocessing start method the nodes are started with."""
        return self.start_method if self.start_method is not None else mp.get_start_method()

    def machine(self) -> MachineConfig:
        """The machine part of this record (itself for a `MachineConfig`)."""
        own = {f.name for f in fields(MachineConfig)}
        return MachineConfig(**{k: getattr(self, k) for k in own})


@dataclass(frozen=True)
class RunConfig(MachineConfig):
    """One ``numaemu run``: the `workload` under each of `policies`, for `duration_s` seconds
    each (default 2) or `requests` requests in all."""

    workload: str = ""  # "" : "trace" when a trace is given, else "db"
    trace: str | None = None  # for workload "trace": a recording, perf script output or an address list
    policies: tuple[str, ...] = POLICIES
    replicate: str = "text+rodata"
    cache: str = "hot"
    user_data: str = "local"
    duration_s: float | None = None
    requests: int | None = None
    migrate_rate: float = 0.01
    verify: bool = False
    recover: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        text = self.policies if isinstance(self.policies, str) else ",".join(self.policies)
        if not any(x.strip() for x in text.split(",")):
            raise UsageError("--policy", "give at least one policy")
        object.__setattr__(self, "policies", tuple(params.comma_list(text, "--policy", POLICIES, noun="policy")))
        if self.trace is not None and not str(self.trace).strip():
            raise UsageError("--trace", "is empty; give a file path")
        if not self.workload:
            object.__setattr__(self, "workload", "trace" if self.trace is not None else "db")
        check_workload(self.workload, self.trace is not None)
        params.choice(self.replicate, REPLICATE_SCOPES, "--replicate")
        params.choice(self.cache, ("hot", "cold"), "--cache")
        params.choice(self.user_data, ("local", "interleave"), "--user-data")
        if self.duration_s is not None and self.requests is not None:
            raise UsageError("--duration", "give --duration or --requests, not both")
        if self.duration_s is not None:
            params.check("--duration", params.DURATION, self.duration_s)
        if self.requests is not None:
            params.check("--requests", params.REQUESTS, self.requests)
        params.check("--migrate-rate", params.probability, self.migrate_rate)

    @property
    def length_s(self) -> float | None:
        """Seconds per policy: None when the run is `requests` long."""
        return None if self.requests else (self.duration_s or 2.0)

    @property
    def trace_path(self) -> Path | None:
        return Path(self.trace) if self.trace is not None else None


@dataclass(frozen=True)
class StressConfig(MachineConfig):
    """One ``numaemu stress``: `source` patches the text of every copy under `protocol`
    (default: text_poke_bp on x86, nosync on arm64) for `duration_s`, while every node's readers
    execute it; `bug` plants one of the kernel's historical bugs."""

    source: str | None = None  # None: static_keys, or the source the planted bug needs (BUG_SOURCE)
    protocol: str | None = None
    policy: str = "replicate"
    duration_s: float = 10.0
    rate: float = 200.0
    bug: str | None = None
    recover: bool = False
    kill_rate: float | None = None
    script: tuple[PatchOp, ...] = ()  # Emulation.patch: these operations instead of the source's random ones
    # A protocol given as data (model/protocol_spec.py), from the API or from --protocol FILE.
    protocol_spec: ProtocolSpec | None = None
    int3_fix: str | None = None  # protocols.INT3_FIXES (default refcount; an INT3 bug picks the fix it breaks)
    stop_at_first: bool = False  # end at the first violation and report it in full
    ifetch: str = "coherent"  # reader.IFETCH: how stores reach what nodes have fetched
    timeline: tuple[tuple[str, float], ...] = ()  # (parameter, emulated ns) set over the default timeline
    migrate: bool = True  # each node's travelling task moves to the next node after each request

    def __post_init__(self) -> None:
        super().__post_init__()
        params.choice(self.ifetch, IFETCH, "--ifetch")
        for name, value in self.timeline:
            params.choice(name, TIMELINE_PARAMETERS, "--timeline")
            if why := setting_error(name, value):
                raise UsageError("--timeline", why)
        if not all(isinstance(op, PatchOp) for op in self.script):
            raise UsageError("ops", "each operation must be a numaemu.PatchOp")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            if not (self.protocol.endswith(".toml") or "/" in self.protocol):
                params.choice(self.protocol, PROTOCOLS, "--protocol")  # neither a name nor a file: the names
            object.__setattr__(self, "protocol_spec", load_protocol(self.protocol))
            object.__setattr__(self, "protocol", None)
        if self.protocol_spec is not None and not isinstance(self.protocol_spec, ProtocolSpec):
            raise UsageError("protocol_spec", "must be a numaemu ProtocolSpec (numaemu.model.protocol_spec)")
        if self.source is None:
            # The INT3-handler bugs need INT3s that outlive a text_poke_bp batch: kprobes'.
            object.__setattr__(self, "source", BUG_SOURCE.get(self.bug or "", "static_keys"))
        params.choice(self.source_name, SOURCES, "--source")
        params.choice(self.policy, POLICIES, "--policy")
        params.check("--duration", params.DURATION, self.duration_s)
        params.check("--rate", params.PATCH_RATE, self.rate)
        if self.kill_rate is not None:
            params.check("--kill-workers", params.KILL_RATE, self.kill_rate)
        if self.int3_fix is not None:
            params.choice(self.int3_fix, INT3_FIXES, "--int3-fix")
        if self.bug is not None:
            params.choice(self.bug, BUGS, "--inject-bug")
            if self.bug == "trampoline-no-rcu" and self.source_name not in ("bpf", "mixed"):
                raise UsageError("--inject-bug", f"trampoline-no-rcu is a bug of BPF trampolines: use --source bpf or mixed, not {self.source_name}")
            if self.bug == "module-unload-running" and self.source_name not in ("module", "mixed"):
                raise UsageError("--inject-bug", f"module-unload-running is a bug of module unload: use --source module or mixed, not {self.source_name}")
            if self.bug == "ipmodify-shared" and self.source_name not in ("shared", "mixed"):
                raise UsageError("--inject-bug", f"ipmodify-shared is a bug of functions shared by ftrace users: use --source shared or mixed, not {self.source_name}")
            if self.bug in ("late-replica", "ivau-local") and self.policy != "replicate":
                raise UsageError("--inject-bug", f"{self.bug} is a bug of replicas: use --policy replicate, not {self.policy}")
            fix = BUG_FIX.get(self.bug)
            if fix and self.int3_fix not in (None, fix):
                raise UsageError("--inject-bug", f"{self.bug} breaks the {fix} fix: use --int3-fix {fix} (or leave it out), not {self.int3_fix}")
            if self.bug == "key-race" and self.source not in ("static_keys", "mixed"):
                raise UsageError("--inject-bug", f"key-race is a static-key bug: use --source static_keys or mixed, not {self.source}")

    @property
    def source_name(self) -> str:
        """The source (set by __post_init__ when it was left out)."""
        return "static_keys" if self.source is None else self.source

    def int3_fix_for(self) -> str:
        """The INT3 fix of the run: the one given, or the one the planted bug breaks, or refcount."""
        return self.int3_fix or BUG_FIX.get(self.bug or "", "refcount")

    def protocol_for(self, arch: str) -> str:
        """The protocol on an image of `arch`, checked against it and against `bug`."""
        arm = arch == "arm64"
        if self.bug == "ivau-local" and not arm:
            raise UsageError("--inject-bug", "ivau-local is an arm64 bug (x86 fetch snoops stores by physical address): add --arch arm64")
        if self.protocol_spec is not None:
            if self.protocol_spec.arch != arch:
                raise UsageError("--protocol", f"protocol '{self.protocol_spec.name}' patches the {self.protocol_spec.arch} image, and this image is {arch}; add --arch {self.protocol_spec.arch}")
            if self.bug is not None and self.bug not in DATA_BUGS:
                raise UsageError("--inject-bug", f"{self.bug} is planted in the kernel's own protocols; with a protocol of your own, plant it in its steps "
                                                 f"(bugs that fit any protocol: {', '.join(DATA_BUGS)})")
            return "data"
        protocol = self.protocol if self.protocol is not None else ("nosync" if arm else "text_poke_bp")
        if protocol == "nosync" and not arm:
            raise UsageError("--protocol", "nosync (single aligned 4-byte writes) is only for the arm64 image; add --arch arm64, or use text_poke_bp or stop_machine")
        if protocol == "text_poke_bp" and arm:
            raise UsageError("--protocol", "text_poke_bp is the x86 INT3 protocol; the arm64 image uses nosync or stop_machine")
        if self.bug is not None and protocol not in BUG_PROTOCOLS[self.bug]:
            raise UsageError("--inject-bug", f"{self.bug} is a bug of {' and '.join(BUG_PROTOCOLS[self.bug])}, not of {protocol}")
        return protocol
