"""The kernel image: an embedded, deterministic image with a real distro kernel's function layout.

Its functions are those of Debian's 6.12.118 cloud amd64 kernel (6.12.118-1~deb12u1), names, link
order, offsets and sizes, from that kernel's kallsyms tables (`numaemu.model.layout`); its bytes
are synthetic. ``.text`` is 16,777,216 bytes and ``.rodata`` 6,095,046 bytes, as in that kernel, text at the x86-64 default ``__START_KERNEL_map`` + 16 MiB,
0xffffffff81000000 (arch/x86/include/asm/page_64_types.h), rodata at the next 2 MiB boundary as
the linker script aligns it (arch/x86/kernel/vmlinux.lds.S).

What the image contains, and why:
- functions start 16-byte aligned (``-falign-functions=16``) and the gaps between them are INT3
  (0xcc) padding, as x86 builds pad them;
- every function starts with a 5-byte ftrace site: NOP5 ``0f 1f 44 00 00`` while tracing is off
  (``ftrace_nop_replace()``, arch/x86/kernel/ftrace.c): 46,742 at full size (every function
  of 16 bytes or more);
- about a third of the functions hold a jump-label site: 2 bytes (JMP8 <-> NOP2 ``66 90``) or
  5 bytes (JMP32 <-> NOP5), each belonging to a static key (kernel/jump_label.c); keys start
  disabled, so sites start as NOPs;
- everything else is seeded random bytes, so that a wrong frame or a wrong offset reads
  different bytes, and every checksum depends on where it read.

`data` holds the mapped span from `base` up to the end of the last section, page aligned;
offsets everywhere in numaemu are relative to `base`. A real kernel file (``--image``) is read by
`numaemu.model.kernelfile.parse_image` (the host reads the file) into the same `KernelImage`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from numaemu.model.layout import DEFAULT_RELEASE, default_layout
from numaemu.model.symbols import SymbolTable, symbol_table

__all__ = [
    "PAGE_SIZE",
    "LINE_SIZE",
    "KERNEL_BASE",
    "TEXT_SIZE",
    "RODATA_SIZE",
    "NOP5",
    "NOP2",
    "Section",
    "ImageSource",
    "KernelImage",
    "synthetic_image",
    "with_module_area",
    "MODULE_SLOT_BYTES",
]

PAGE_SIZE = 4096
LINE_SIZE = 64
LINES_PER_PAGE = PAGE_SIZE // LINE_SIZE
KERNEL_BASE = 0xFFFFFFFF81000000
TEXT_SIZE = 16_777_216  # the layout's (synthetic_image reads both from there)
RODATA_SIZE = 6_095_046
SECTION_ALIGN = 2 << 20  # rodata starts on a 2 MiB boundary (vmlinux.lds.S, x86 PMD size)

ARCHES = ("x86_64", "arm64")
NOP5 = bytes.fromhex("0f1f440000")  # ideal_nops / x86_nops[5]
ARM64_NOP = bytes.fromhex("1f2003d5")  # d503201f, little-endian (arch/arm64/include/asm/insn.h)
NOP2 = bytes.fromhex("6690")
INT3 = 0xCC

FUNC_ALIGN = 16
MIN_FUNC_BYTES = 16  # the embedded image's smallest function with an ftrace site
JUMP_SITE_SHARE = 0.33  # share of functions holding one jump-label site
JUMP_SITES_PER_KEY = 20  # mean use sites per static key


@dataclass(frozen=True)
class Section:
    """One section: its virtual address, its size, and its offset from the image base.

    The offset is carried explicitly rather than derived from a fixed base, so an image whose
    base is not KERNEL_BASE (a real kernel file, or one moved by KASLR, which shifts `base` and
    every `vaddr` together) keeps every offset numaemu uses."""

    name: str
    vaddr: int
    size: int
    offset: int  # from the image base

    def pages(self) -> range:
        """Page numbers (offset // PAGE_SIZE) the section spans."""
        first = self.offset // PAGE_SIZE
        return range(first, -(-(self.offset + self.size) // PAGE_SIZE))


@dataclass(frozen=True)
class ImageSource:
    """Where a real kernel image came from and what numaemu found in it (kernelfile.py)."""

    path: str
    container: str  # "ELF", "gzip", "bzImage (lz4-legacy)", ...
    version: str | None  # the "Linux version ..." banner found in .rodata
    fentry: int | None  # vaddr of __fentry__: the most-called target of aligned calls
    ftrace_calls: int  # ftrace sites that held ``call __fentry__`` (rewritten to NOP5, as at boot)
    ftrace_nops: int  # ftrace sites the build had already made NOP5
    ftrace_endbr: int  # of those, sites after an ENDBR64 (CONFIG_X86_KERNEL_IBT): at function + 4
    jump_table: int | None  # vaddr of the __jump_table found, None if none
    jump_entries: int  # entries in it
    jump_skipped: int  # entries not used: site outside .text, on an ftrace site, or a duplicate
    jump_sites_jmp: int  # used sites the build left as JMP (rewritten to their NOP: keys start off)
    other_site_tables: tuple[tuple[str, int], ...]  # (section, entries), counted, not patched

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "container": self.container,
            "version": self.version,
            "fentry": None if self.fentry is None else hex(self.fentry),
            "ftrace_calls_converted": self.ftrace_calls,
            "ftrace_already_nop5": self.ftrace_nops,
            "ftrace_after_endbr64": self.ftrace_endbr,
            "jump_table": None if self.jump_table is None else hex(self.jump_table),
            "jump_table_entries": self.jump_entries,
            "jump_entries_skipped": self.jump_skipped,
            "jump_sites_were_jmp": self.jump_sites_jmp,
        }


@dataclass(frozen=True, eq=False)
class KernelImage:
    """One kernel image. Arrays are offsets from `base`; `data` must not be written."""

    name: str
    arch: str
    base: int
    sections: tuple[Section, ...]
    data: npt.NDArray[np.uint8]  # the mapped span, page aligned
    functions: npt.NDArray[np.int64]  # offsets of function starts (also the ftrace sites)
    function_sizes: npt.NDArray[np.int64]  # without alignment padding
    jump_sites: npt.NDArray[np.int64]  # offsets of jump-label sites
    jump_lengths: npt.NDArray[np.int8]  # 2 or 5
    jump_keys: npt.NDArray[np.int32]  # the static key each site belongs to
    n_keys: int
    seed: int
    scale: float
    # Where each jump-label site jumps in state 1 (int64 offsets); None: the end of its function
    # (the synthetic image).
    jump_targets: npt.NDArray[np.int64] | None = None
    # The ftrace sites when they are not the function starts (after an ENDBR64: function + 4);
    # None: the function starts.
    ftrace_offsets: npt.NDArray[np.int64] | None = None
    source: ImageSource | None = None  # a real kernel file; None: the synthetic image
    # Its symbols (ELF .symtab, --symbols FILE, or recovered kallsyms), at their linked
    # addresses; None: none known.
    symbols: SymbolTable | None = None

    def section(self, name: str) -> Section:
        for sec in self.sections:
            if sec.name == name:
                return sec
        raise KeyError(name)

    @property
    def ftrace_sites(self) -> npt.NDArray[np.int64]:
        return self.functions if self.ftrace_offsets is None else self.ftrace_offsets

    @property
    def ftrace_length(self) -> int:
        """Bytes of the ftrace site: NOP5 / ``call`` on x86-64, one instruction on arm64."""
        return 4 if self.arch == "arm64" else 5

    @property
    def n_pages(self) -> int:
        return len(self.data) // PAGE_SIZE

    def mapped_pages(self) -> npt.NDArray[np.intp]:
        """Page numbers that belong to a section (the gap between sections is unmapped)."""
        pages: npt.NDArray[np.intp] = np.concatenate([np.arange(s.pages().start, s.pages().stop) for s in self.sections])
        return pages

    def summary(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "arch": self.arch,
            "base": hex(self.base),
            "seed": self.seed,
            "scale": self.scale,
            "sections": [
                {"name": s.name, "vaddr": hex(s.vaddr), "size": s.size, "pages": len(s.pages())}
                for s in self.sections
            ],
            "functions": int(len(self.functions)),
            "ftrace_sites": int(len(self.functions)),
            "jump_label_sites": int(len(self.jump_sites)),
            "jump_label_sites_2byte": int(np.count_nonzero(self.jump_lengths == 2)),
            "jump_label_sites_5byte": int(np.count_nonzero(self.jump_lengths == 5)),
            "static_keys": self.n_keys,
            "mapped_bytes": int(sum(len(s.pages()) for s in self.sections) * PAGE_SIZE),
        }
        out["symbols"] = self.symbols.summary() if self.symbols is not None else None
        if self.source is not None:
            out["source"] = self.source.to_json()
            out["other_site_tables"] = dict(self.source.other_site_tables)
        return out


MODULE_SLOT_BYTES = 16 << 10  # one loaded module's text
MODULE_SLOTS = 4


def with_module_area(image: KernelImage, slots: int = MODULE_SLOTS) -> KernelImage:
    """The image plus a ``.modules`` area of `slots` module slots, empty until a module loads.

    The area starts at the next 2 MiB boundary after ``.rodata`` rather than at the kernel's
    MODULES_VADDR (0xffffffffa0000000): only its reach from the text matters (rel32 calls), and
    this keeps the emulated span small. Placement treats it like text: ``replicate`` gives every
    node its own copy, as Kuzin's replica-aware vmalloc does (King's series leaves modules on one
    node).
    """
    end = max(s.offset + s.size for s in image.sections)
    off = _align(end, SECTION_ALIGN)
    size = slots * MODULE_SLOT_BYTES
    data = np.zeros(off + size, dtype=np.uint8)
    data[: len(image.data)] = image.data
    data[off:] = 0 if image.arch == "arm64" else INT3
    data.flags.writeable = False
    area = Section(".modules", image.base + off, size, off)
    return replace(image, sections=image.sections + (area,), data=data)


def _align(x: int, a: int) -> int:
    return -(-x // a) * a


def synthetic_image(scale: float = 1.0, seed: int = 0, arch: str = "x86_64") -> KernelImage:
    """Build the embedded image. Deterministic in (`scale`, `seed`, `arch`); ~0.3 s at full size.

    Its functions are a real kernel's (`numaemu.model.layout`: Debian's 6.12.118 cloud amd64):
    every text symbol's name, link order and size, at full size even its offset from ``_text``.
    ``scale`` < 1 (for tests) keeps every k-th function (k = 1/scale, rounded) at its real size,
    packed 16-byte aligned in link order; the names of the others become aliases of the kept
    function of their group, so recordings still map onto a small image by name.

    ``arch="arm64"``: the same layout with fixed 4-byte, 4-byte-aligned instructions: the ftrace
    site is one NOP at the function entry (``-fpatchable-function-entry``), jump-label sites are
    a NOP <-> B, and padding is zero (``udf #0``).
    """
    if not 0 < scale <= 1:
        raise ValueError("scale must be in (0, 1]")
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {', '.join(ARCHES)}")
    arm = arch == "arm64"
    insn = 4 if arm else 1  # instruction alignment
    rng = np.random.default_rng([seed, 0x6B65726E])  # "kern"
    layout = default_layout()
    firsts, which = np.unique(layout.offsets, return_inverse=True)  # aliases share a function
    real_sizes = np.zeros(len(firsts), dtype=np.int64)
    real_sizes[which] = layout.sizes
    # ``scale`` < 1 keeps every k-th function at its real size (k = 1/scale, rounded), packed.
    k = max(1, round(1 / scale))
    keep = np.arange(0, len(firsts), k)
    if k == 1 and not arm:
        starts, sizes, text_size = firsts, real_sizes, layout.text_size
    else:
        sizes = -(-real_sizes[keep] // insn) * insn  # arm64: whole 4-byte instructions
        slots = -(-sizes // FUNC_ALIGN) * FUNC_ALIGN
        starts = np.concatenate(([0], np.cumsum(slots)[:-1]))
        text_size = max(PAGE_SIZE, int(starts[-1] + slots[-1]))
    rodata_size = max(PAGE_SIZE, round(layout.rodata_size * scale))
    text = Section(".text", KERNEL_BASE, text_size, 0)
    rodata_off = _align(text_size, SECTION_ALIGN)
    rodata = Section(".rodata", KERNEL_BASE + rodata_off, rodata_size, rodata_off)
    span = _align(rodata_off + rodata_size, PAGE_SIZE)

    data = np.zeros(span, dtype=np.uint8)
    data[rodata_off : rodata_off + rodata_size] = rng.integers(0, 256, rodata_size, dtype=np.uint8)

    # Function bodies: random bytes; INT3 in the alignment padding after each function and in
    # the tail; then the ftrace NOP5 at the entry of each function large enough to hold one and
    # a jump-label site (3,904 stubs and thunks are not: they stay symbols only).
    data[:text_size] = rng.integers(0, 256, text_size, dtype=np.uint8)
    ends = starts + sizes
    pads = np.append(starts[1:], text_size) - ends
    pad_at = np.repeat(ends, pads) + (np.arange(pads.sum()) - np.repeat(np.cumsum(pads) - pads, pads))
    data[pad_at] = 0 if arm else INT3
    # Every name is kept: a function left out at a small scale names the kept one of its group of
    # k (its link-order neighbour), so that recordings still map by name onto a test image.
    named = [(n, w // k) for n, w in zip(layout.names, which.tolist(), strict=True)]
    symbols = symbol_table([n for n, _ in named], [KERNEL_BASE + int(starts[j]) for _, j in named], ["T"] * len(named), [int(sizes[j]) for _, j in named],
                           f"the embedded layout: Debian {DEFAULT_RELEASE}'s text functions (names, order, sizes)")
    big = sizes >= MIN_FUNC_BYTES
    starts, sizes = starts[big], sizes[big]
    entry = np.frombuffer(ARM64_NOP if arm else NOP5, dtype=np.uint8)
    data[starts[:, None] + np.arange(len(entry))] = entry

    # Jump-label sites: one per chosen function, after the ftrace site and inside the body.
    room = sizes - len(entry) - (4 if arm else 5)
    chosen = np.flatnonzero((rng.random(len(starts)) < JUMP_SITE_SHARE) & (room > 0))
    # (arm64: every site one instruction; x86: the draw for 2 or 5 bytes, only there, so that
    # the random stream is the same as ever.)
    lengths = np.full(len(chosen), 4, dtype=np.int8) if arm else np.where(rng.random(len(chosen)) < 0.55, 2, 5).astype(np.int8)
    step = (rng.random(len(chosen)) * room[chosen]).astype(np.int64) // insn * insn
    where = starts[chosen] + len(entry) + step
    n_keys = max(1, len(chosen) // JUMP_SITES_PER_KEY)
    # Few keys have many sites, most have few (a Zipf-like law): draw key ranks from a power law.
    keys = np.minimum((n_keys * rng.random(len(chosen)) ** 2.5).astype(np.int32), n_keys - 1)
    nop2 = np.frombuffer(NOP2, dtype=np.uint8)
    nop5 = np.frombuffer(NOP5, dtype=np.uint8)
    two, five = where[lengths == 2], where[lengths == 5]
    data[two[:, None] + np.arange(2)] = nop2
    data[five[:, None] + np.arange(5)] = nop5
    four = where[lengths == 4]
    data[four[:, None] + np.arange(4)] = np.frombuffer(ARM64_NOP, dtype=np.uint8)

    data.flags.writeable = False
    name = ("synthetic" if scale == 1 else f"synthetic@{scale:g}") + ("-arm64" if arm else "")
    return KernelImage(
        name=name,
        arch=arch,
        base=KERNEL_BASE,
        sections=(text, rodata),
        data=data,
        functions=starts,
        function_sizes=sizes,
        jump_sites=where,
        jump_lengths=lengths,
        jump_keys=keys,
        n_keys=n_keys,
        seed=seed,
        scale=scale,
        symbols=symbols,
    )
