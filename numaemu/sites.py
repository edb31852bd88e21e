"""Patch sites and the instructions each may hold (pure logic).

Every patchable site of an image gets an index in one table, with its offset, its length and the
encodings of each *state* it can be in. A patch moves a site from one state to another, and a
node executing the site must observe one of these encodings (or, on x86, an INT3-headed
intermediate while a ``text_poke_bp`` is in flight): anything else is a torn instruction.

x86-64 (arch/x86/include/asm/text-patching.h, arch/x86/kernel/jump_label.c, ftrace.c):
    jump label, 2 bytes:  state 0 NOP2 ``66 90``            state 1 JMP8 ``eb rel8``
    jump label, 5 bytes:  state 0 NOP5 ``0f 1f 44 00 00``   state 1 JMP32 ``e9 rel32``
    ftrace entry, 5 bytes: state 0 NOP5; 1 ``call ftrace_caller``; 2 ``call`` a BPF trampoline;
                           3 ``call`` the livepatch trampoline (all ``e8 rel32``)
arm64 (arch/arm64/kernel/patching.c, jump_label.c, ftrace.c): every site one aligned 4-byte
instruction: NOP ``d503201f``, ``B`` for jump labels, ``BL`` for the ftrace states.

Jump-label targets: the end of the enclosing function (within rel8 reach for 2-byte sites).
Trampolines are functions 1, 2 and 3 of the image, standing in for ``ftrace_caller``, a BPF
trampoline and the livepatch handler.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .image import ARM64_NOP, NOP2, NOP5, KernelImage

__all__ = [
    "INT3",
    "MAX_INSN",
    "KIND_JUMP",
    "KIND_FTRACE",
    "FTRACE_OFF",
    "FTRACE_CALLER",
    "FTRACE_BPF",
    "FTRACE_KLP",
    "SiteTable",
    "site_table",
]

INT3 = 0xCC
MAX_INSN = 8  # encodings are stored in 8-byte rows
KIND_JUMP, KIND_FTRACE = 0, 1
FTRACE_OFF, FTRACE_CALLER, FTRACE_BPF, FTRACE_KLP = 0, 1, 2, 3
N_STATES = 4


@dataclass(frozen=True, eq=False)
class SiteTable:
    arch: str
    offset: np.ndarray  # int64, from the image base
    length: np.ndarray  # int8
    kind: np.ndarray  # int8: KIND_JUMP or KIND_FTRACE
    key: np.ndarray  # int32: static key of a jump site; -1 for ftrace sites
    function: np.ndarray  # int32: enclosing function
    n_states: np.ndarray  # int8: 2 for jump sites, 4 for ftrace sites
    enc: np.ndarray  # uint8 [site, state, MAX_INSN]: the encodings, zero-padded
    n_jump: int  # sites [0, n_jump) are jump labels, the rest ftrace entries in function order

    def __len__(self) -> int:
        return len(self.offset)

    def ftrace_site(self, function: int) -> int:
        return self.n_jump + function

    def encoding(self, site: int, state: int) -> bytes:
        return bytes(self.enc[site, state, : self.length[site]])

    def key_sites(self, key: int) -> np.ndarray:
        return np.flatnonzero(self.key[: self.n_jump] == key)

    def state_of(self, site: int, observed: bytes) -> int | None:
        """Which state `observed` encodes at `site`, or None (torn, foreign)."""
        for st in range(self.n_states[site]):
            if self.encoding(site, st) == observed:
                return st
        return None


def _le(values: np.ndarray, nbytes: int) -> np.ndarray:
    """Little-endian bytes of signed values, shape (n, nbytes)."""
    v = values.astype(np.int64) & ((1 << (8 * nbytes)) - 1)
    return ((v[:, None] >> (8 * np.arange(nbytes))) & 0xFF).astype(np.uint8)


def site_table(image: KernelImage) -> SiteTable:
    funcs, sizes = image.functions, image.function_sizes
    nj, nf = len(image.jump_sites), len(funcs)
    n = nj + nf
    offset = np.concatenate([image.jump_sites, funcs]).astype(np.int64)
    kind = np.concatenate([np.full(nj, KIND_JUMP), np.full(nf, KIND_FTRACE)]).astype(np.int8)
    key = np.concatenate([image.jump_keys, np.full(nf, -1)]).astype(np.int32)
    jfunc = np.searchsorted(funcs, image.jump_sites, side="right") - 1
    function = np.concatenate([jfunc, np.arange(nf)]).astype(np.int32)
    n_states = np.where(kind == KIND_JUMP, 2, N_STATES).astype(np.int8)
    enc = np.zeros((n, N_STATES, MAX_INSN), dtype=np.uint8)
    func_end = funcs[jfunc] + sizes[jfunc]
    trampolines = funcs[[1, 2, 3]]
    js = image.jump_sites

    if image.arch == "arm64":
        length = np.full(n, 4, dtype=np.int8)
        nop = np.frombuffer(ARM64_NOP, dtype=np.uint8)
        enc[:, 0, :4] = nop
        # B: 0x14000000 | imm26, BL: 0x94000000 | imm26, imm26 = (target - pc) / 4.
        target = func_end // 4 * 4
        enc[:nj, 1, :4] = _le(0x14000000 | (((target - js) // 4) & 0x3FFFFFF), 4)
        for st, tramp in zip((FTRACE_CALLER, FTRACE_BPF, FTRACE_KLP), trampolines):
            enc[nj:, st, :4] = _le(0x94000000 | (((tramp - funcs) // 4) & 0x3FFFFFF), 4)
    else:
        length = np.concatenate([image.jump_lengths, np.full(nf, 5)]).astype(np.int8)
        two = np.flatnonzero(image.jump_lengths == 2)
        five = np.flatnonzero(image.jump_lengths == 5)
        enc[two, 0, :2] = np.frombuffer(NOP2, dtype=np.uint8)
        enc[two, 1, 0] = 0xEB
        rel8 = np.minimum(func_end[two], js[two] + 2 + 127) - (js[two] + 2)
        enc[two, 1, 1] = _le(rel8, 1)[:, 0]
        enc[five, 0, :5] = np.frombuffer(NOP5, dtype=np.uint8)
        enc[five, 1, 0] = 0xE9
        enc[five, 1, 1:5] = _le(func_end[five] - (js[five] + 5), 4)
        enc[nj:, 0, :5] = np.frombuffer(NOP5, dtype=np.uint8)
        for st, tramp in zip((FTRACE_CALLER, FTRACE_BPF, FTRACE_KLP), trampolines):
            enc[nj:, st, 0] = 0xE8
            enc[nj:, st, 1:5] = _le(tramp - (funcs + 5), 4)
    return SiteTable(image.arch, offset, length, kind, key, function, n_states, enc, nj)
