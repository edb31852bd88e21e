"""The page-table designs of the two replication series, and what each costs (pure logic).

``--pt-style`` picks one; ``none`` (the default) models no page tables at all, as numaemu did
before, so earlier results stay comparable.

``arm64`` (Russell King, 2023; BACKGROUND.md s.1). The kernel image gets its own level-0 entry;
every node has its own copy of ``swapper_pg_dir`` whose image entry points at node-private lower
tables (L1, L2, L3) mapping that node's copy; TTBR1 is chosen per CPU. numaemu maps each copy
with 4 KiB pages at L3: the copy is only page aligned, so no 2 MiB block can map it (an
assumption of ours: the series does not state the granule). The series disables KASLR: the
image must sit where the extra L0 entry says, so ``--kaslr`` is refused with it.

``x86`` (Artem Kuzin, 2023). Each node gets a PGD cloned from ``swapper_pg_dir`` and node-local
P4D/PUD/PMD pages for the top 2 GiB of kernel virtual addresses; text and rodata are aligned to
2 MiB and mapped per node at PMD granularity (no PTE pages, and each copy occupies whole 2 MiB
frames); every ``mm`` gets one PGD per node (``pgd_numa``). With 4-level paging the P4D level is
folded into the PGD (arch/x86/include/asm/pgtable_64_types.h), so it takes no page. KASLR is
supported: the image moves as one, and every node sees the same virtual addresses.

Page walks. A TLB miss on a kernel fetch costs one read of the leaf entry (PTE for a 4 KiB
page, PMD for a 2 MiB one); the upper levels are assumed to hit in the paging-structure caches.
Hot cache: the leaf entries (eight to a 64-byte line, a few hundred lines for the db workload)
stay cached, so the read costs a cache hit. Cold cache: it reads the memory of the node whose
tables map the copy. Under ``single`` and ``interleave``
there is one set of tables, in the master node's memory (where the boot CPU built
``swapper_pg_dir``); under ``replicate`` a node walks the tables of the node whose copy it maps.
Cold cache: the TLB is flushed with the caches, so every distinct translation a request uses
misses once. Hot cache: a TLB of `TLB_ENTRIES` holds part of the workload's footprint; a
translation outside it misses with probability 1 - entries/footprint (random replacement in
the steady state). With 2 MiB pages the db footprint is a handful of entries: no misses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from numaemu.model.arrays import I64, U64, Ints
from numaemu.model.image import PAGE_SIZE, KernelImage

__all__ = [
    "PT_STYLES",
    "TLB_ENTRIES",
    "PMD_SIZE",
    "PageTableCost",
    "page_table_cost",
    "kaslr_base",
    "with_base",
    "translation_granules",
    "walk_profile",
]

PT_STYLES = ("none", "arm64", "x86")
TLB_ENTRIES = 1536  # a second-level TLB (Intel Skylake STLB: 1536 entries shared by 4K/2M)
PMD_SIZE = 2 << 20  # one PMD entry (x86) / L2 block (arm64, 4K granule) maps 2 MiB
PUD_SIZE = 1 << 30  # one PUD / L1 entry maps 1 GiB
TOP_2G = 2  # x86: the replicated range is the top 2 GiB, two PUD entries -> two PMD pages

# x86-64 KASLR (arch/x86/boot/compressed/kaslr.c, find_random_virt_addr()): the image moves in
# CONFIG_PHYSICAL_ALIGN steps between LOAD_PHYSICAL_ADDR and KERNEL_IMAGE_SIZE above
# __START_KERNEL_map.
START_KERNEL_MAP = 0xFFFFFFFF80000000
LOAD_PHYSICAL_ADDR = 16 << 20
KERNEL_IMAGE_SIZE = 1 << 30
PHYSICAL_ALIGN = 2 << 20

MODULES = ".modules"


@dataclass(frozen=True)
class PageTableCost:
    """What a design's page tables cost, for one placement.

    `table_pages[n]` are the page-table pages in node n's memory that map the kernel image for
    some node (node-private tables under ``replicate``, the one shared set under the others);
    `padding_bytes[n]` are the 2 MiB-alignment holes of the copies node n holds (x86: PMD
    mappings take whole 2 MiB frames); `per_process_bytes` is what every process costs on top
    (x86: one more PGD page per extra copy).
    """

    style: str
    granule: int  # bytes one TLB entry maps for the image's text and rodata
    table_pages: tuple[int, ...]
    padding_bytes: tuple[int, ...]
    per_process_bytes: int

    @property
    def table_bytes(self) -> tuple[int, ...]:
        return tuple(p * PAGE_SIZE for p in self.table_pages)

    def to_json(self) -> dict[str, Any]:
        return {
            "style": self.style,
            "granule_bytes": self.granule,
            "table_pages": list(self.table_pages),
            "table_bytes": list(self.table_bytes),
            "padding_bytes": list(self.padding_bytes),
            "per_process_bytes": self.per_process_bytes,
        }


def _spans(image: KernelImage, size: int, names: set[str] | None = None) -> int:
    """How many `size`-aligned virtual regions the image's mapped pages touch."""
    regions: set[int] = set()
    for sec in image.sections:
        if names is not None and sec.name not in names:
            continue
        first = sec.vaddr // size
        last = (sec.vaddr + max(sec.size, 1) - 1) // size
        regions.update(range(first, last + 1))
    return len(regions)


def _copy_tables(image: KernelImage, style: str) -> int:
    """Page-table pages one copy's mapping needs (the image's own lower tables)."""
    if style == "arm64":
        # L0 (its own swapper_pg_dir copy) + one L1 + an L2 per GiB + an L3 per 2 MiB region.
        return 1 + 1 + _spans(image, PUD_SIZE) + _spans(image, PMD_SIZE)
    # x86: PGD + PUD + the two PMD pages of the top 2 GiB; PTE pages only for the module area
    # (vmalloc'd, 4 KiB pages; Kuzin's replica-aware vmalloc gives every node its own).
    return 1 + 1 + TOP_2G + _spans(image, PMD_SIZE, {MODULES})


def _padding(image: KernelImage, replicated: set[str]) -> int:
    """x86: bytes by which 2 MiB-mapped text and rodata overrun their pages, per copy."""
    pad = 0
    for sec in image.sections:
        if sec.name in replicated and sec.name != MODULES:
            pages = -(-sec.size // PAGE_SIZE) * PAGE_SIZE
            pad += -(-sec.size // PMD_SIZE) * PMD_SIZE - pages
    return pad


def page_table_cost(
    image: KernelImage, style: str, policy: str, n_nodes: int, serving: tuple[int, ...], replicate: str
) -> PageTableCost | None:
    """The cost of `style` under `policy`; None for ``none``.

    `serving` is the placement's per-node copy map (``replicate``); under the other policies
    the one set of tables (and the one 2 MiB-aligned image) sit in `serving`'s first node, the
    master.
    """
    if style == "none":
        return None
    if style not in PT_STYLES:
        raise ValueError(f"style must be one of {', '.join(PT_STYLES)}")
    per_copy = _copy_tables(image, style)
    replicated = {".text", MODULES} if replicate == "text" else {".text", ".rodata", MODULES}
    everything = {s.name for s in image.sections}
    pages = [0] * n_nodes
    padding = [0] * n_nodes
    if policy == "replicate":
        copies = sorted(set(serving))
        master = copies[0]
        for c in copies:
            pages[c] = per_copy
            if style == "x86":
                padding[c] = _padding(image, replicated if c != master else everything)
        per_process = (len(copies) - 1) * PAGE_SIZE if style == "x86" else 0
    else:
        master = min(serving) if serving else 0
        pages[master] = per_copy
        if style == "x86":
            padding[master] = _padding(image, everything)
        per_process = 0
    granule = PMD_SIZE if style == "x86" else PAGE_SIZE
    return PageTableCost(style, granule, tuple(pages), tuple(padding), per_process)


def kaslr_base(image: KernelImage, seed: int) -> int:
    """A randomised virtual base for the image, as x86 KASLR draws it, deterministic in `seed`.

    Every 2 MiB slot from LOAD_PHYSICAL_ADDR up to where the image still ends below
    KERNEL_IMAGE_SIZE is equally likely (find_random_virt_addr()).
    """
    span = len(image.data)
    slots = (KERNEL_IMAGE_SIZE - LOAD_PHYSICAL_ADDR - span) // PHYSICAL_ALIGN + 1
    if slots < 1:
        raise ValueError("the image does not fit below KERNEL_IMAGE_SIZE")
    slot = int(np.random.default_rng([seed, 0x6B61736C]).integers(0, slots))  # "kasl"
    return START_KERNEL_MAP + LOAD_PHYSICAL_ADDR + slot * PHYSICAL_ALIGN


def with_base(image: KernelImage, base: int) -> KernelImage:
    """The image moved to `base` as one piece: every section keeps its offset from the base,
    so every offset numaemu uses (sites, workloads, page tables) is unchanged; its symbols move
    with it, as /proc/kallsyms shows a KASLR kernel's."""
    shift = base - image.base
    sections = tuple(replace(s, vaddr=s.vaddr + shift) for s in image.sections)
    syms = image.symbols
    if syms is not None:
        moved = (syms.addresses.astype(object) + shift).astype(np.uint64)  # a shift below 0 too, without wrapping surprises
        syms = replace(syms, addresses=moved)
    return replace(image, base=base, sections=sections, symbols=syms)


def translation_granules(image: KernelImage, granule: int, offsets: Ints) -> U64:
    """The TLB entry (virtual address // granule) each image offset needs; module-area offsets
    are always 4 KiB pages (vmalloc)."""
    vaddr = image.base + np.asarray(offsets, dtype=np.int64).astype(np.uint64)
    g = vaddr // np.uint64(granule)
    for sec in image.sections:
        if sec.name == MODULES and granule != PAGE_SIZE:
            inside = (offsets >= sec.offset) & (offsets < sec.offset + sec.size)
            # Keep 4 KiB entries apart from 2 MiB ones: tag them above any 2 MiB number.
            g[inside] = (vaddr[inside] // np.uint64(PAGE_SIZE)) | np.uint64(1 << 63)
    return g


@dataclass(frozen=True, eq=False)
class WalkProfile:
    """Per template of a workload: distinct translations it uses, and the share that miss."""

    per_template: I64  # distinct TLB entries each request of the template uses
    footprint: int  # distinct TLB entries over the whole workload
    miss_share: float  # expected share of those translations that walk


def walk_profile(image: KernelImage, lines: Ints, starts: Ints, lengths: Ints, granule: int, *, cold: bool) -> WalkProfile:
    """Count the translations of every template (`lines`: virtual line numbers, 64 bytes)."""
    g = translation_granules(image, granule, np.asarray(lines, dtype=np.int64) * 64)
    per = np.empty(len(starts), dtype=np.int64)
    for i, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
        per[i] = len(np.unique(g[s : s + n]))
    footprint = int(len(np.unique(g)))
    share = 1.0 if cold else max(0.0, 1.0 - TLB_ENTRIES / footprint) if footprint else 0.0
    return WalkProfile(per, footprint, share)
