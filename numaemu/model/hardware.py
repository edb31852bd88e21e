"""Hardware profiles: the caches, TLBs, clocks and memory system the model charges (pure logic).

A `HardwareProfile` describes one core's cache and TLB hierarchy and its node's memory system,
each parameter with its source (`HardwareProfile.sources`; the presets are in
`numaemu.model.hardware_presets`). `hierarchy.Hierarchy` simulates the caches and TLBs it gives;
`timing` turns what they served into emulated nanoseconds; `contention` queues the misses at the
memory and the links of the node that serves them.

``simple`` is the model numaemu had before: one direct-mapped 1 MiB cache per node keyed by
virtual line, 4 ns a hit, no TLBs, no queueing (``--hardware simple`` reproduces old results).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from numaemu.errors import UsageError

__all__ = ["Cache", "Tlb", "HardwareProfile", "SIMPLE", "hierarchy_levels", "profile_from_mapping", "describe"]

PARAM = "--hardware"


@dataclass(frozen=True)
class Cache:
    """One cache level: `size_bytes` in sets of `ways` lines of `line_bytes`, replaced LRU (as
    simulated; `policy` says what the hardware does), shared by `cores` cores and `nodes` nodes,
    `latency_cycles` from a request to its data."""

    size_bytes: int
    ways: int
    latency_cycles: float
    cores: int = 1
    nodes: int = 1
    line_bytes: int = 64
    policy: str = "LRU"

    @property
    def sets(self) -> int:
        return self.size_bytes // (self.ways * self.line_bytes)

    def describe(self) -> str:
        share = "private" if self.cores == 1 else f"shared by {self.cores} cores" + (f" of {self.nodes} nodes" if self.nodes > 1 else "")
        latency = f"{self.latency_cycles:g} cycles" if self.latency_cycles else "hit: the fetch only"
        return f"{_size(self.size_bytes)}, {self.ways}-way, {self.line_bytes} B lines, {latency}, {share}, {self.policy}"


@dataclass(frozen=True)
class Tlb:
    """One TLB: entries and ways for 4 KiB and for 2 MiB pages (0 entries: it holds none of that
    size), and what a hit costs beyond the level above it."""

    entries_4k: int
    ways_4k: int
    entries_2m: int
    ways_2m: int
    hit_cycles: float = 0.0

    def geometry(self, page_shift: int) -> tuple[int, int]:
        entries, ways = (self.entries_2m, self.ways_2m) if page_shift >= 21 else (self.entries_4k, self.ways_4k)
        if entries <= 0:
            return 1, 0  # no entries for this page size: every lookup misses
        return max(1, entries // ways), ways

    def describe(self) -> str:
        def one(entries: int, ways: int) -> str:
            return "none" if entries <= 0 else f"{entries} ({'fully associative' if ways >= entries else f'{ways}-way'})"

        return f"4K {one(self.entries_4k, self.ways_4k)}, 2M {one(self.entries_2m, self.ways_2m)}" + (f", hit +{self.hit_cycles:g} cycles" if self.hit_cycles else "")


@dataclass(frozen=True)
class HardwareProfile:
    """One machine's cores and memory, as the model charges them. `sources[field]` cites each."""

    name: str
    description: str
    arch: str  # "x86_64" or "arm64"
    ghz: float  # the clock cycles are converted at
    fetch_cycles_per_line: float  # the front end's time to deliver one 64-byte line of instructions
    l1i: Cache
    l1d: Cache
    l2: Cache
    llc: Cache
    itlb: Tlb
    dtlb: Tlb
    stlb_i: Tlb  # the second-level TLB instruction fetches refill from
    stlb_d: Tlb  # ... and data accesses; the same object where one STLB serves both
    pwc_entries: int  # page-walk cache entries for the level above the leaf
    dram_local_ns: float  # idle load latency, local node (the topology's table is what is charged)
    memory_gbs: float  # per node: what its memory controllers deliver
    link_gbs: float  # per socket, one direction: the inter-socket links' bandwidth
    nodes_per_socket: int
    cores_per_node: int
    mlp: float  # data misses in flight at once, on average (instruction misses serialise)
    store_mlp: float  # line writes in flight when the kernel streams stores (one per fill buffer)
    page_alloc_cycles: float  # one order-0 page allocated and freed (the page allocator's fast path)
    pti: bool = False  # the kernel runs with page-table isolation (Meltdown-affected cores): PGDs are order-1 pairs
    # Reorder-buffer entries: how far fetch runs ahead of retirement, so how long a fetched
    # instruction can wait before it executes (the timeline's prefetch_ns).
    rob_entries: int = 128
    sources: Mapping[str, str] = field(default_factory=dict)
    simple: bool = False  # the old model: one direct-mapped cache, no TLBs, no queueing

    def ns(self, cycles: float) -> float:
        return cycles / self.ghz

    @property
    def shared_stlb(self) -> bool:
        return self.stlb_i is self.stlb_d or self.stlb_i == self.stlb_d

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.simple:
            return {**out, "simple": True}
        for f in fields(self):
            if f.name in ("name", "description", "sources", "simple"):
                continue
            value = getattr(self, f.name)
            out[f.name] = value.__dict__ if isinstance(value, Cache | Tlb) else value
        out["sources"] = dict(self.sources)
        return out


SIMPLE = HardwareProfile(
    name="simple", description="numaemu's first model: one direct-mapped 1 MiB cache per node, keyed by virtual line, 4 ns a hit, no TLBs, no queueing",
    arch="x86_64", ghz=1.0, fetch_cycles_per_line=4.0,
    l1i=Cache(1 << 20, 1, 4.0), l1d=Cache(1 << 20, 1, 4.0), l2=Cache(1 << 20, 1, 4.0), llc=Cache(1 << 20, 1, 4.0),
    itlb=Tlb(0, 1, 0, 1), dtlb=Tlb(0, 1, 0, 1), stlb_i=Tlb(0, 1, 0, 1), stlb_d=Tlb(0, 1, 0, 1), pwc_entries=0,
    dram_local_ns=85.0, memory_gbs=float("inf"), link_gbs=float("inf"), nodes_per_socket=1, cores_per_node=1,
    mlp=1.0, store_mlp=1.0, page_alloc_cycles=0.0, simple=True,
    sources={"all": "numaemu before issue 15 (cache.DirectMappedCache, engine.HIT_NS)"},
)


def hierarchy_levels(profile: HardwareProfile, page_shift: int, llc_copies: int = 1) -> dict[str, tuple[int, int]]:
    """(sets, ways) of each level `hierarchy.Hierarchy` simulates. An LLC shared by nodes that
    each fetch their own copy (``replicate``: `llc_copies` > 1) keeps `ways // copies` of its ways
    for this node's copy (at least one)."""
    llc = profile.llc
    llc_ways = max(1, llc.ways // max(1, llc_copies))
    return {
        "l1i": (profile.l1i.sets, profile.l1i.ways),
        "l1d": (profile.l1d.sets, profile.l1d.ways),
        "l2": (profile.l2.sets, profile.l2.ways),
        "llc": (llc.sets, llc_ways),
        "itlb": profile.itlb.geometry(page_shift),
        "dtlb": profile.dtlb.geometry(page_shift),
        "stlb_i": profile.stlb_i.geometry(page_shift),
        "stlb_d": profile.stlb_d.geometry(page_shift),
        "pwc": (1, profile.pwc_entries) if profile.pwc_entries > 0 else (1, 0),
    }


def describe(profile: HardwareProfile) -> list[str]:
    """The lines ``numaemu topology`` prints under the numactl display."""
    p = profile
    head = f"hardware: {p.name}: {p.description}"
    if p.simple:
        return [head]
    stlb = f"STLB    {p.stlb_i.describe()} (shared by instructions and data)" if p.shared_stlb else f"STLB-i  {p.stlb_i.describe()}; STLB-d {p.stlb_d.describe()}"
    lines = [
        head,
        f"  core    {p.arch}, {p.ghz:g} GHz, {p.fetch_cycles_per_line:g} cycles to fetch a 64 B line, {p.cores_per_node} cores a node, {p.nodes_per_socket} node(s) a socket",
        f"  L1i     {p.l1i.describe()}",
        f"  L1d     {p.l1d.describe()}",
        f"  L2      {p.l2.describe()}",
        f"  LLC     {p.llc.describe()}",
        f"  iTLB    {p.itlb.describe()}",
        f"  dTLB    {p.dtlb.describe()}",
        f"  {stlb}",
        f"  PWC     {p.pwc_entries} entries above the leaf",
        f"  memory  {p.dram_local_ns:g} ns local, {p.memory_gbs:g} GB/s a node, links {p.link_gbs:g} GB/s a socket each way, MLP {p.mlp:g} (stores {p.store_mlp:g})",
    ]
    if p.arch == "x86_64":  # what --pt-style x86 charges each fork (timing.process_costs)
        lines.append(f"  x86 PGD {p.page_alloc_cycles:g} cycles a page allocated and freed" + (", PTI (order-1 PGDs)" if p.pti else ""))
    return lines


# --------------------------------------------------------------------------------------------
# A profile written in a topology file


_CACHE_KEYS = {f.name for f in fields(Cache)}
_TLB_KEYS = {f.name for f in fields(Tlb)}


def profile_from_mapping(data: object, presets: Mapping[str, HardwareProfile]) -> HardwareProfile:
    """A ``hardware`` entry of a topology file: a preset's name, or a table with ``base`` (a
    preset) and any fields to change, tables for caches and TLBs::

        [hardware]
        base = "e5-2690"
        name = "my-xeon"
        llc = { size_bytes = 31457280, ways = 20, latency_cycles = 40 }
        memory_gbs = 68.0

    Changed fields cite "the topology file" as their source."""
    if isinstance(data, str):
        if data not in presets:
            raise UsageError("--topology", f"hardware '{data}' is not a profile; known: {', '.join(presets)}")
        return presets[data]
    if not isinstance(data, Mapping):
        raise UsageError("--topology", "hardware must be a profile's name or a table with base = NAME")
    base_name = data.get("base")
    if not isinstance(base_name, str) or base_name not in presets:
        raise UsageError("--topology", f"hardware.base must name a profile ({', '.join(presets)})")
    base = presets[base_name]
    known = {f.name: f for f in fields(HardwareProfile)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key == "base":
            continue
        if key not in known or key in ("sources", "simple"):
            raise UsageError("--topology", f"hardware.{key} is not a profile field")
        old = getattr(base, key)
        if isinstance(old, Cache | Tlb):
            allowed = _CACHE_KEYS if isinstance(old, Cache) else _TLB_KEYS
            if not isinstance(value, Mapping) or not set(value) <= allowed:
                raise UsageError("--topology", f"hardware.{key} must be a table of {', '.join(sorted(allowed))}")
            changes[key] = replace(old, **{k: _number(f"hardware.{key}.{k}", v, getattr(old, k)) for k, v in value.items()})
        else:
            changes[key] = _number(f"hardware.{key}", value, old)
    if "name" not in changes:
        changes["name"] = f"{base.name}+file"
    sources = dict(base.sources)
    for key in changes:
        sources[key] = "the topology file"
    profile = replace(base, **changes, sources=sources)
    if profile.stlb_i is not profile.stlb_d and base.shared_stlb and ("stlb_i" in changes) != ("stlb_d" in changes):
        raise UsageError("--topology", f"hardware: {base.name} has one STLB for both; change stlb_i and stlb_d together")
    check_profile(profile)
    return profile


def check_profile(p: HardwareProfile) -> None:
    """Every rule a profile must keep, as one-line errors naming the field."""
    for name in ("l1i", "l1d", "l2", "llc"):
        c: Cache = getattr(p, name)
        if c.line_bytes != 64:
            raise UsageError("--topology", f"hardware.{name}.line_bytes is {c.line_bytes}; numaemu's lines are 64 bytes")
        if c.ways < 1 or c.size_bytes < c.ways * c.line_bytes or c.size_bytes % (c.ways * c.line_bytes):
            raise UsageError("--topology", f"hardware.{name}: size_bytes must be a positive multiple of ways x 64")
        if c.latency_cycles < 0 or c.cores < 1 or c.nodes < 1:
            raise UsageError("--topology", f"hardware.{name}: latency_cycles must be >= 0, cores and nodes >= 1")
    for name in ("ghz", "fetch_cycles_per_line", "mlp", "store_mlp", "rob_entries"):
        if not getattr(p, name) > 0:
            raise UsageError("--topology", f"hardware.{name} must be > 0")
    for name in ("memory_gbs", "link_gbs", "nodes_per_socket", "cores_per_node"):
        if not getattr(p, name) > 0:
            raise UsageError("--topology", f"hardware.{name} must be > 0")


def _number(where: str, value: object, like: object) -> Any:
    if isinstance(like, str):
        if not isinstance(value, str):
            raise UsageError("--topology", f"{where} must be a string")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError("--topology", f"{where} is {value!r}; need a number")
    if isinstance(like, int) and not isinstance(like, bool):
        if value != int(value):
            raise UsageError("--topology", f"{where} is {value!r}; need an integer")
        return int(value)
    return float(value)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10} KiB"
