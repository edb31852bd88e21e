"""The emulated timeline of ``numaemu stress``: what every actor's step costs, in emulated
nanoseconds, and the one time scale that turns them into wall time (pure logic).

A reader in Python executes a patch site about 10^4 times slower than a core, while a patcher
could write text at full speed. Windows widened by hand per actor (as stress had before issue 16:
a 100 us IPI, a 200 us INT3 handler, a 20 us fetch gap, 1 us a write, none on a common scale)
make violation counts artefacts of the host. Here every cost is an emulated duration with its
source, and the run measures one *scale*: wall ns per emulated ns, set by how fast its slowest
reader executes sites (`scale_for`). Every wait, write and handler is that duration times the
scale, so the windows between the steps of a protocol come out of the timeline, in the
proportions a real machine has them.

The reader's cost per site is the emulated time between two patch sites on a core running kernel
code: the image's text bytes per site, at the architecture's mean instruction length, at one
instruction per cycle (`site_ns`). The other costs are cited measurements where one exists, and
named estimates where none was found; each says which (`Timeline.rows`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["TIMELINE_PARAMETERS", "Timeline", "timeline_for", "site_ns", "scale_for", "SCALE_MARGIN", "IPI_NS", "TEXT_POKE_NS"]

# Mean instruction length: arm64's are all 4 bytes; for x86-64 kernel code 4 bytes is an
# estimate (x86 instructions are 1-15 bytes; compiled code averages 3-4).
_INSN_BYTES = {"x86_64": 4.0, "arm64": 4.0}
# Kernel code runs at about one instruction per cycle (Kanev et al., ISCA 2015, "Profiling a
# warehouse-scale computer": IPC 0.5-1.0 for the kernel-heavy services measured).
_KERNEL_IPC = 1.0
# Cited and estimated costs (see _SOURCES).
IPI_NS = {"x86_64": 1_317.0, "arm64": 5_669.0}
TEXT_POKE_NS = 1_000.0
# The scale leaves the slowest reader this much room, so readers keep up with the timeline.
SCALE_MARGIN = 1.25

_SOURCES = {
    "site_ns": "the image's text bytes per patch site / mean instruction length / (IPC 1 x the profile's GHz): "
               "emulated time between two patch sites on a core (Kanev et al., ISCA 2015, for IPC)",
    "ipi_ns": "IPI delivery, 'Normal IPI' of Norov's ipi_benchmark (LKML, 2017-12-19), 100,000 IPIs: x86 1,317 ns "
              "(Xeon, 2 pinned vCPUs with IPI virtualisation, IPIv series v7 cover letter, 2022); arm64 5,669 ns "
              "(ThunderX2 host, v4.14, Norov's post)",
    "text_poke_ns": "estimate, no measurement found: one site into one copy, __text_poke's map through poking_mm, "
                    "write, unmap and TLB flush (two CR3 writes and an INVLPG; arm64: fixmap set, write, clear, "
                    "DC CVAU + IC IVAU)",
    "int3_ns": "estimate, no measurement found: #BP entry, poke_int3_handler's bsearch and emulation, IRET "
               "(an exception round trip, ~1,000 cycles at the profile's GHz)",
    "sync_core_ns": "estimate: the target's share of text_poke_sync: the IPI handler and sync_core() "
                    "(an IRET to self, ~600 cycles at the profile's GHz), before its acknowledgement",
    "stop_switch_ns": "estimate: a CPU's switch to its stopper thread in a stop_machine round "
                      "(a context switch, lmbench lat_ctx ~2 us)",
    "count_rmw_ns": "the profile's local DRAM latency: a read-modify-write of a static key's count (atomic_read, then "
                    "atomic_set) whose line was last written by another CPU, the window the key-race bug leaves open",
    "fetch_gap_ns": "the profile's cycles for one instruction fetch (fetch_cycles_per_line / GHz): between the "
                    "fetch that decides an x86 instruction's first byte and the fetch of the rest",
    "prefetch_ns": "the profile's reorder-buffer entries at IPC 1 (rob_entries / GHz): how long a fetched "
                   "instruction waits in the pipeline before it executes, the one window in which a core runs "
                   "bytes that a store or an IC IVAU has since replaced (x86 fetch snoops stores, SDM vol. 3 "
                   "s.11.6; arm64's patcher invalidates the I-cache, and only an ISB discards what was already "
                   "fetched, Deacon's 'IPI each CPU after invalidating the I-cache', v4.19)",
}


TIMELINE_PARAMETERS = tuple(_SOURCES)  # what --timeline NAME=NS can set


def setting_error(name: str, value: object) -> str | None:
    """Why `value` cannot be the timeline cost `name` (None: it can). A cost is a number of
    emulated ns >= 0; the site step must be > 0, as every other cost is counted against it."""
    if not (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0):
        return f"{name} must be a number of ns >= 0, got {value!r}"
    if name == "site_ns" and not value > 0:
        return f"site_ns must be > 0, got {value!r}"
    return None


@dataclass(frozen=True)
class Timeline:
    """Every actor's step in emulated ns, and the scale (wall ns per emulated ns; 0: not yet
    measured). See the module docstring and `rows` for the sources."""

    arch: str
    site_ns: float
    ipi_ns: float
    text_poke_ns: float
    int3_ns: float
    sync_core_ns: float
    stop_switch_ns: float
    fetch_gap_ns: float
    count_rmw_ns: float
    prefetch_ns: float = 0.0
    scale: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "arch" and (why := setting_error(f.name, getattr(self, f.name))):
                raise ValueError(f"timeline {why}")

    def wall_ns(self, emulated_ns: float) -> int:
        """The wall time of an emulated duration at this timeline's scale."""
        return int(emulated_ns * self.scale)

    def with_settings(self, settings: tuple[tuple[str, float], ...]) -> Timeline:
        """This timeline with the costs `settings` names set (``--timeline NAME=NS``)."""
        changes: dict[str, Any] = {name: float(v) for name, v in settings}
        return dataclasses.replace(self, **changes) if settings else self

    def with_scale(self, scale: float) -> Timeline:
        return dataclasses.replace(self, scale=float(scale))

    def emulated_s(self, wall_s: float) -> float:
        """The emulated seconds that `wall_s` of the run stand for."""
        return wall_s / self.scale if self.scale else 0.0

    def rows(self) -> list[tuple[str, float, str]]:
        """(parameter, emulated ns, source) for every cost (the README's table)."""
        return [(name, float(getattr(self, name)), _SOURCES[name]) for name in _SOURCES]

    def to_json(self) -> dict[str, float | str]:
        return {**{name: round(float(getattr(self, name)), 3) for name in _SOURCES}, "scale": round(self.scale, 3), "arch": self.arch}


def site_ns(arch: str, text_bytes: int, n_sites: int, ghz: float) -> float:
    """Emulated ns between two patch sites on a core running the image's kernel code."""
    return text_bytes / max(n_sites, 1) / _INSN_BYTES[arch] / (_KERNEL_IPC * ghz)


def timeline_for(arch: str, ghz: float, fetch_cycles_per_line: float, dram_ns: float, text_bytes: int, n_sites: int, rob_entries: int = 128) -> Timeline:
    """The default timeline of an image (its arch, text and sites) on a hardware profile."""
    return Timeline(
        arch=arch,
        site_ns=site_ns(arch, text_bytes, n_sites, ghz),
        ipi_ns=IPI_NS[arch],
        text_poke_ns=TEXT_POKE_NS,
        int3_ns=1_000 / ghz,
        sync_core_ns=600 / ghz,
        stop_switch_ns=2_000.0,
        fetch_gap_ns=fetch_cycles_per_line / ghz,
        count_rmw_ns=dram_ns,
        prefetch_ns=rob_entries / (_KERNEL_IPC * ghz),
    )


def scale_for(timeline: Timeline, reader_wall_ns_per_site: float) -> float:
    """The run's scale: the slowest reader's wall ns per site over the emulated ns a site stands
    for, with SCALE_MARGIN of room."""
    return max(1.0, reader_wall_ns_per_site * SCALE_MARGIN / timeline.site_ns)
