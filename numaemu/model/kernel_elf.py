"""The section headers of an x86-64 ELF vmlinux, and the byte helpers the site scans share (pure).

Only section headers are needed (stripped images are the norm), read through pyelftools from the
bytes in memory. Also here: the site tables the build emits as sections of their own
(``.altinstructions``, ``.retpoline_sites``, ...), which are counted for the report, not patched,
and the ``Linux version`` banner. I64 are from the ``.text`` address throughout.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.elffile import ELFFile

from numaemu.model.arrays import I64, U8, Bool
from numaemu.model.kernel_unpack import Refused

__all__ = [
    "Ranges",
    "ElfSection",
    "EM_X86_64",
    "EM_AARCH64",
    "OTHER_TABLES",
    "read_elf",
    "le32",
    "holds",
    "ranges",
    "inside",
    "other_tables",
    "version_banner",
]

Ranges = tuple[I64, I64]  # sorted (starts, ends)

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
EM_X86_64, EM_AARCH64 = "EM_X86_64", "EM_AARCH64"


@dataclass(frozen=True, eq=False)
class ElfSection:
    name: str
    kind: str  # SHT_PROGBITS, SHT_NOBITS, ...
    flags: int
    vaddr: int
    size: int
    data: U8 | None  # None for sections without file bytes

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC) and self.vaddr != 0  # .data..percpu sits at 0

    @property
    def exec(self) -> bool:
        return self.alloc and bool(self.flags & SHF_EXECINSTR)


def read_elf(elf: bytes) -> tuple[str, list[ElfSection]]:
    """(e_machine, sections) through pyelftools. The sections' data are views of `elf`."""
    if len(elf) < 64:
        raise Refused("is truncated: it ends inside the ELF header")
    try:
        ef = ELFFile(io.BytesIO(elf))
        hdr = ef.header
        if ef.elfclass != 64 or not ef.little_endian:
            raise Refused(f"is a {ef.elfclass}-bit {'little' if ef.little_endian else 'big'}-endian ELF; numaemu reads 64-bit little-endian kernels")
        shoff, shnum, shentsize = hdr["e_shoff"], hdr["e_shnum"], hdr["e_shentsize"]
        if shnum == 0 or shoff == 0:
            raise Refused("is an ELF file without section headers; numaemu needs them to find .text and .rodata")
        if shoff + shnum * shentsize > len(elf):
            raise Refused(f"is truncated: its ELF section headers lie at bytes {shoff:,}..{shoff + shnum * shentsize:,}, but it has {len(elf):,}")
        secs: list[ElfSection] = []
        for s in ef.iter_sections():
            kind, size, off = s["sh_type"], s["sh_size"], s["sh_offset"]
            data: U8 | None = None
            if kind not in ("SHT_NOBITS", "SHT_NULL") and size:
                if off + size > len(elf):
                    raise Refused(f"is truncated: section {s.name} lies at bytes {off:,}..{off + size:,}, but it has {len(elf):,}")
                data = np.frombuffer(elf, dtype=np.uint8, count=size, offset=off)
            secs.append(ElfSection(s.name, kind, s["sh_flags"], s["sh_addr"], size, data))
        return str(hdr["e_machine"]), secs
    except (ELFError, ELFParseError, struct.error, ValueError) as exc:
        raise Refused(f"is not a readable ELF file ({exc}): truncated or damaged?") from None


def le32(t: U8, pos: I64) -> I64:
    """Signed little-endian 32-bit values at byte offsets `pos` of `t` (int64)."""
    b: I64 = t[pos[:, None] + np.arange(4)].astype(np.int64)
    v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)
    return (v ^ 0x80000000) - 0x80000000


def holds(t: U8, pos: I64, pattern: bytes) -> Bool:
    """Per offset in `pos`: do the bytes of `t` there start with `pattern`?"""
    found: Bool = np.all(t[pos[:, None] + np.arange(len(pattern))] == np.frombuffer(pattern, dtype=np.uint8), axis=1)
    return found


def ranges(secs: Sequence[ElfSection], base: int, pick: Callable[[ElfSection], bool]) -> Ranges:
    """Sorted (starts, ends) of the chosen sections, as offsets from `base`."""
    r = sorted((s.vaddr - base, s.vaddr - base + s.size) for s in secs if pick(s) and s.size)
    return np.array([a for a, _ in r], dtype=np.int64), np.array([b for _, b in r], dtype=np.int64)


def inside(x: I64, spans: Ranges) -> Bool:
    """Per value of `x`: does it lie in one of the sorted, disjoint `spans`?"""
    starts, ends = spans
    if len(starts) == 0:
        return np.zeros(len(x), bool)
    i = np.searchsorted(starts, x, side="right") - 1
    return (i >= 0) & (x < ends[np.maximum(i, 0)])


# Site tables the build emits as their own sections, counted for the report (not patched):
# (entry size, where the site pointer is) candidates; the one that divides the section and whose
# pointers land in executable sections most often is taken.
#   .altinstructions: struct alt_instr (arch/x86/include/asm/alternative.h): s32 instr_offset,
#     s32 repl_offset, u16 cpuid, u8 instrlen, u8 replacementlen = 12 bytes (6.1); u32 ft_flags
#     since 6.3 = 14; u8 padlen before 4.15 = 13.
#   .parainstructions: struct paravirt_patch_site: u8 *instr, u8 type, u8 len = 16 bytes (6.1);
#     s32 instr_offset from 6.3 = 8.
#   .retpoline_sites, .return_sites, .call_sites, .ibt_endbr_seal, .smp_locks: s32 each.
#   .static_call_sites: struct static_call_site: s32 addr, s32 key.
OTHER_TABLES: tuple[tuple[str, tuple[tuple[int, str], ...]], ...] = (
    (".altinstructions", ((12, "rel32"), (14, "rel32"), (13, "rel32"))),
    (".parainstructions", ((16, "abs64"), (8, "rel32"))),
    (".retpoline_sites", ((4, "rel32"),)),
    (".return_sites", ((4, "rel32"),)),
    (".call_sites", ((4, "rel32"),)),
    (".ibt_endbr_seal", ((4, "rel32"),)),
    (".static_call_sites", ((8, "rel32"),)),
    (".smp_locks", ((4, "rel32"),)),
)


def other_tables(secs: Sequence[ElfSection], base: int) -> list[tuple[str, int, I64]]:
    """(section, entries pointing into executable code, those pointers that are in .text)."""
    by_name = {s.name: s for s in secs}
    exec_r = ranges(secs, base, lambda s: s.exec)
    text = by_name[".text"]
    out: list[tuple[str, int, I64]] = []
    for name, layouts in OTHER_TABLES:
        sec = by_name.get(name)
        if sec is None or sec.data is None:
            continue
        best: tuple[int, int, I64] | None = None  # (fits, count, pointers)
        for size, layout in layouts:
            n = sec.size // size
            if n == 0:
                continue
            rows = sec.data[: n * size].reshape(n, size)
            if layout == "rel32":
                field = rows[:, :4].copy().view("<i4")[:, 0].astype(np.int64)
                ptr = (sec.vaddr - base) + size * np.arange(n, dtype=np.int64) + field
            else:
                raw = rows[:, :8].copy().view("<u8")[:, 0]
                ptr = (raw - np.uint64(base)).view(np.int64)
            good = inside(ptr, exec_r)
            cand = (int(sec.size % size == 0), int(np.count_nonzero(good)), ptr[good])
            if best is None or cand[:2] > best[:2]:
                best = cand
        if best is not None:
            ptrs = best[2]
            out.append((name, best[1], ptrs[(ptrs >= 0) & (ptrs < text.size)]))
    return out


def version_banner(rodata: U8) -> str | None:
    """The ``Linux version ...`` banner (init/version.c, linux_banner), if .rodata holds it."""
    raw = rodata.tobytes()
    at = raw.find(b"Linux version ")
    if at < 0:
        return None
    end = min(x for x in (raw.find(b"\n", at), raw.find(b"\0", at), at + 512) if x >= 0)
    return raw[at:end].decode("ascii", "replace").strip()
