"""The patch sites of an x86-64 vmlinux's .text, found by their shape (pure).

- **ftrace sites**: with ``-mfentry`` every traceable function starts with ``call __fentry__``,
  and functions are 16-byte aligned. So: the 16-byte-aligned ``e8 rel32`` calls, whose most
  frequent target is ``__fentry__``, plus aligned NOP5s the build already converted (those that
  are not another table's site), plus both forms 4 bytes after an ENDBR64
  (CONFIG_X86_KERNEL_IBT: the function starts at the ENDBR, the site is at +4).
- **Jump labels**: a stripped image has no ``__start___jump_table`` symbol, but the table has a
  shape nothing else has: 16-byte ``struct jump_entry { s32 code; s32 target; long key; }``
  (include/linux/jump_label.h, CONFIG_HAVE_ARCH_JUMP_LABEL_RELATIVE: each field relative to its
  own address; the key's two low bits are flags) whose code and target lie in executable
  sections, whose key lies in an allocated section, and whose code holds NOP2, NOP5, ``eb rel8``
  or ``e9 rel32`` (a JMP landing on the target). The longest run of such entries in any
  allocated, non-executable PROGBITS section is the table (in 6.1 it sits at the end of
  ``.rodata``, with ``.data..ro_after_init``); fewer than `MIN_JUMP_ENTRIES` means none.

I64 are from the ``.text`` address throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from numaemu.model.arrays import I8, I64, U8, Bool
from numaemu.model.image import INT3, NOP5
from numaemu.model.kernel_elf import ElfSection, holds, inside, le32, ranges

__all__ = ["FUNC_ALIGN", "MIN_JUMP_ENTRIES", "Ftrace", "JumpTable", "find_ftrace", "function_sizes", "find_jump_table", "jump_sites"]

ENDBR64 = bytes.fromhex("f30f1efa")
FUNC_ALIGN = 16
MIN_JUMP_ENTRIES = 64  # a shorter run of jump_entry-shaped words is not taken for the table


# ------------------------------------------------------------------------------------------
# ftrace


@dataclass(frozen=True, eq=False)
class Ftrace:
    """The ftrace sites found, and what they were (for the image's report)."""

    sites: I64  # sorted
    functions: I64  # the site, or the site - 4 after an ENDBR64
    fentry: int | None  # offset of __fentry__
    calls: int
    nops: int
    endbr: int


def find_ftrace(t: U8, owned: I64) -> Ftrace:
    """The ftrace sites of .text `t`: 16-byte-aligned ``call __fentry__`` or NOP5, at the aligned
    start or 4 bytes after an ENDBR64 there. `owned`: sites of other tables (not ftrace's)."""
    al = np.arange(0, max(0, len(t) - 8), FUNC_ALIGN, dtype=np.int64)  # room for ENDBR64 + 5
    endbr = holds(t, al, ENDBR64)
    entry: I64 = np.where(endbr, al + 4, al)
    call = t[entry] == 0xE8
    target = entry + 5 + le32(t, entry + 1)
    fentry: int | None = None
    hits = target[call & (target >= 0) & (target < len(t))]
    if len(hits):
        # The most-called target of aligned calls is __fentry__: every traceable function
        # calls it first, and nothing else is called from ~all function entries.
        values, counts = np.unique(hits, return_counts=True)
        fentry = int(values[np.argmax(counts)])
    is_call: Bool = call & (target == fentry) if fentry is not None else np.zeros(len(al), bool)
    is_nop = holds(t, entry, NOP5) & ~np.isin(entry, owned)
    keep = is_call | is_nop
    return Ftrace(
        sites=entry[keep],
        functions=al[keep],
        fentry=fentry,
        calls=int(np.count_nonzero(is_call)),
        nops=int(np.count_nonzero(is_nop)),
        endbr=int(np.count_nonzero(keep & endbr)),
    )


def function_sizes(t: U8, starts: I64) -> I64:
    """Distance to the next function start (the last one: to the end of .text), less the INT3
    padding before it; at least 16 bytes."""
    nxt = np.append(starts[1:], len(t)).astype(np.int64)
    w = 64
    lo = np.maximum(nxt - w, starts)
    idx = lo[:, None] + np.arange(w)
    within = idx < nxt[:, None]
    body = within & (t[np.minimum(idx, len(t) - 1)] != INT3)
    has = body.any(axis=1)
    end: I64 = np.where(has, lo + w - np.argmax(body[:, ::-1], axis=1), lo)
    for i in np.flatnonzero(~has & (lo > starts)):  # more than `w` bytes of padding: rare
        nz = np.flatnonzero(t[starts[i] : nxt[i]] != INT3)
        end[i] = starts[i] + (nz[-1] + 1 if len(nz) else 0)
    sizes: I64 = np.clip(end - starts, FUNC_ALIGN, nxt - starts).astype(np.int64)
    return sizes


# ------------------------------------------------------------------------------------------
# Jump labels


@dataclass(frozen=True, eq=False)
class JumpTable:
    """The ``__jump_table`` found: its address, and per entry where it points."""

    vaddr: int
    code: I64
    target: I64
    key: I64  # the key's offset (flags masked)
    length: I8  # 2 or 5
    jmp: Bool  # the build left a JMP there


def find_jump_table(secs: Sequence[ElfSection], base: int) -> JumpTable | None:
    """The __jump_table: the longest run of valid `struct jump_entry`s (relative form) in any
    allocated, non-executable PROGBITS section; None below MIN_JUMP_ENTRIES entries."""
    execs = [s for s in secs if s.exec and s.data is not None]
    exec_r = ranges(secs, base, lambda s: s.exec)
    alloc_r = ranges(secs, base, lambda s: s.alloc)
    best: tuple[int, ElfSection, int, int] | None = None  # (entries, section, first byte, first word)
    for sec in secs:
        if not sec.alloc or sec.exec or sec.kind != "SHT_PROGBITS" or sec.data is None or sec.size < 16 * MIN_JUMP_ENTRIES:
            continue
        first = (-sec.vaddr) % 8  # entries are 8-aligned (_ASM_ALIGN), so 16 bytes apart from there
        words: I64 = sec.data[first : first + (sec.size - first) // 8 * 8].view("<i8")
        if len(words) < 2:
            continue
        code, target, key = _entries(words, sec.vaddr + first - base)
        ok = inside(code, exec_r) & inside(target, exec_r) & inside(key, alloc_r)
        ok[ok] = _jump_insn(code[ok], target[ok], execs, base)[0]
        for phase in (0, 1):
            length, start = _longest_run(ok[phase::2])
            if length and (best is None or length > best[0]):
                best = (length, sec, first, phase + 2 * start)
    if best is None or best[0] < MIN_JUMP_ENTRIES:
        return None
    length, sec, first, w0 = best
    assert sec.data is not None  # checked in the loop
    words = sec.data[first : first + (sec.size - first) // 8 * 8].view("<i8")
    code, target, key = _entries(words, sec.vaddr + first - base)
    pick = w0 + 2 * np.arange(length)
    code, target, key = code[pick], target[pick], key[pick]
    _, lengths, jmp = _jump_insn(code, target, execs, base)
    return JumpTable(sec.vaddr + first + 8 * w0, code, target, key, lengths, jmp)


def _entries(words: I64, rel0: int) -> tuple[I64, I64, I64]:
    """For a `struct jump_entry` at every 8-byte word but the last: its code, target and key
    (flags masked), as offsets from the .text address. `rel0`: the first word's offset."""
    halves: I64 = words[:-1].view("<i4").reshape(-1, 2).astype(np.int64)
    at = rel0 + 8 * np.arange(len(words) - 1, dtype=np.int64)
    code = at + halves[:, 0]  # &entry->code + code
    target = at + 4 + halves[:, 1]  # &entry->target + target
    with np.errstate(over="ignore"):
        key = (at + 8 + words[1:]) & ~np.int64(3)  # &entry->key + key, two flag bits
    return code, target, key


def _jump_insn(code: I64, target: I64, execs: Sequence[ElfSection], base: int) -> tuple[Bool, I8, Bool]:
    """Per entry: does `code` hold a jump-label instruction (NOP2, NOP5, JMP8 or JMP32 landing
    on `target`), its length, and whether it is a JMP."""
    ok = np.zeros(len(code), bool)
    length = np.zeros(len(code), np.int8)
    jmp = np.zeros(len(code), bool)
    for sec in execs:
        lo = sec.vaddr - base
        m = np.flatnonzero((code >= lo) & (code + 5 <= lo + sec.size))
        if not len(m):
            continue
        t = sec.data
        assert t is not None  # `execs` have data
        pos = code[m] - lo
        b0 = t[pos]
        rel8 = t[pos + 1].astype(np.int8).astype(np.int64)
        reach = target[m] - (code[m] + 2)
        nop2 = (b0 == 0x66) & (t[pos + 1] == 0x90) & (reach >= -128) & (reach <= 127)
        jmp8 = (b0 == 0xEB) & (code[m] + 2 + rel8 == target[m])
        nop5 = holds(t, pos, NOP5)
        jmp32 = (b0 == 0xE9) & (code[m] + 5 + le32(t, pos + 1) == target[m])
        ok[m] = nop2 | jmp8 | nop5 | jmp32
        length[m] = np.where(nop2 | jmp8, 2, np.where(nop5 | jmp32, 5, 0))
        jmp[m] = jmp8 | jmp32
    return ok, length, jmp


def _longest_run(mask: Bool) -> tuple[int, int]:
    """(length, start) of the longest run of True in `mask`; (0, 0) if none."""
    if not mask.any():
        return 0, 0
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    i = int(np.argmax(ends - starts))
    return int(ends[i] - starts[i]), int(starts[i])


def jump_sites(jt: JumpTable, text_size: int, ftrace: I64) -> tuple[I64, I8, I64, I64, int, int]:
    """The table's entries that numaemu patches: site and target in .text, not on an ftrace site,
    one entry per site (sorted). Returns (sites, lengths, targets, keys, JMPs, skipped)."""
    L = jt.length.astype(np.int64)
    ok = (jt.code >= 0) & (jt.code + L <= text_size) & (jt.target >= 0) & (jt.target < text_size)
    # On an ftrace site: overlaps [s, s + 5) of the nearest site at or before it, or after it.
    i = np.searchsorted(ftrace, jt.code, side="right")
    before = ftrace[np.maximum(i - 1, 0)]
    after = ftrace[np.minimum(i, len(ftrace) - 1)]
    on_ftrace = ((i > 0) & (jt.code < before + 5)) | ((i < len(ftrace)) & (after < jt.code + L))
    ok &= ~on_ftrace
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(jt.code[idx], kind="stable")]
    # Duplicates and overlapping entries: keep the first at each place.
    keep = np.ones(len(idx), bool)
    if len(idx) > 1:
        c, l_ = jt.code[idx], L[idx]
        keep[1:] = c[1:] >= c[:-1] + l_[:-1]
    idx = idx[keep]
    return (
        jt.code[idx],
        jt.length[idx].astype(np.int8),
        jt.target[idx],
        jt.key[idx],
        int(np.count_nonzero(jt.jmp[idx])),
        len(jt.code) - len(idx),
    )
