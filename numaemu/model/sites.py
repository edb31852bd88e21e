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

Jump-label targets: the image's own (`KernelImage.jump_targets`, from the ``__jump_table`` of a
real kernel); for the synthetic image, the end of the enclosing function (within rel8 reach for
2-byte sites). Trampolines are functions 1, 2 and 3 of the image, standing in for
``ftrace_caller``, a BPF trampoline and the livepatch handler.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numaemu.model.image import ARM64_NOP, MODULE_SLOT_BYTES, NOP2, NOP5, KernelImage

__all__ = [
    "INT3",
    "MAX_INSN",
    "KIND_JUMP",
    "KIND_FTRACE",
    "KIND_ALT",
    "MODULE_FUNCS",
    "MODULE_FUNC_BYTES",
    "FTRACE_OFF",
    "FTRACE_CALLER",
    "FTRACE_BPF",
    "FTRACE_KLP",
    "SiteTable",
    "site_table",
]

INT3 = 0xCC
MAX_INSN = 8  # encodings are stored in 8-byte rows
KIND_JUMP, KIND_FTRACE, KIND_ALT = 0, 1, 2
MODULE_FUNCS = 32  # functions per module
MODULE_FUNC_BYTES = MODULE_SLOT_BYTES // MODULE_FUNCS
SITES_PER_MODULE_FUNC = 3  # ftrace entry, a jump label, an alternative
NOP3 = bytes.fromhex("0f1f00")
LFENCE = bytes.fromhex("0faee8")  # the alternative applied on load (X86_FEATURE_LFENCE_RDTSC)
ARM64_DMB_ISH = bytes.fromhex("bf3b03d5")
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
    n_jump: int  # sites [0, n_jump) are jump labels, then ftrace entries in function order
    n_core: int  # sites [n_core, len) belong to module slots (SITES_PER_MODULE_FUNC per function)
    module_slots: int

    def __len__(self) -> int:
        return len(self.offset)

    def ftrace_site(self, function: int) -> int:
        return self.n_jump + function

    def module_sites(self, slot: int, kind: int | None = None) -> np.ndarray:
        """Site indices of module slot `slot` (of one kind: KIND_FTRACE, KIND_JUMP, KIND_ALT)."""
        if not 0 <= slot < self.module_slots:
            raise IndexError(f"module slot {slot} does not exist (the image has {self.module_slots})")
        per = MODULE_FUNCS * SITES_PER_MODULE_FUNC
        idx = np.arange(self.n_core + slot * per, self.n_core + (slot + 1) * per)
        return idx if kind is None else idx[self.kind[idx] == kind]

    def encoding(self, site: int, state: int) -> bytes:
        return bytes(self.enc[site, state, : self.length[site]])

    def key_sites(self, key: int) -> np.ndarray:
        return np.flatnonzero(self.key[: self.n_jump] == key)

    def read(self, buf: np.ndarray, sites: np.ndarray) -> np.ndarray:
        """The bytes at `sites` in `buf` (an image-sized array), [n, longest site]."""
        width = int(self.length[sites].max())
        return buf[np.minimum(self.offset[sites][:, None] + np.arange(width), len(buf) - 1)]

    def holds(self, sites: np.ndarray, states: np.ndarray | int, found: np.ndarray) -> np.ndarray:
        """Per site: do the bytes `found` ([n, >= longest site]) encode `states`? Bytes past a
        site's length are ignored."""
        width = found.shape[1]
        want = self.enc[sites, states, :width]
        beyond = np.arange(width) >= self.length[sites][:, None]
        return np.all((found == want) | beyond, axis=1)

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
    entry = image.ftrace_sites  # the function starts, or function + 4 after an ENDBR64
    nj, nf = len(image.jump_sites), len(funcs)
    n = nj + nf
    offset = np.concatenate([image.jump_sites, entry]).astype(np.int64)
    kind = np.concatenate([np.full(nj, KIND_JUMP), np.full(nf, KIND_FTRACE)]).astype(np.int8)
    key = np.concatenate([image.jump_keys, np.full(nf, -1)]).astype(np.int32)
    jfunc = np.searchsorted(funcs, image.jump_sites, side="right") - 1
    function = np.concatenate([jfunc, np.arange(nf)]).astype(np.int32)
    n_states = np.where(kind == KIND_JUMP, 2, N_STATES).astype(np.int8)
    enc = np.zeros((n, N_STATES, MAX_INSN), dtype=np.uint8)
    func_end = funcs[jfunc] + sizes[jfunc]
    trampolines = funcs[[1, 2, 3]]
    js = image.jump_sites
    # A real image's sites jump where its __jump_table says; rel8 reach was checked on loading.
    real_target = image.jump_targets

    if image.arch == "arm64":
        length = np.full(n, 4, dtype=np.int8)
        nop = np.frombuffer(ARM64_NOP, dtype=np.uint8)
        enc[:, 0, :4] = nop
        # B: 0x14000000 | imm26, BL: 0x94000000 | imm26, imm26 = (target - pc) / 4.
        target = func_end // 4 * 4 if real_target is None else real_target
        enc[:nj, 1, :4] = _le(0x14000000 | (((target - js) // 4) & 0x3FFFFFF), 4)
        for st, tramp in zip((FTRACE_CALLER, FTRACE_BPF, FTRACE_KLP), trampolines):
            enc[nj:, st, :4] = _le(0x94000000 | (((tramp - entry) // 4) & 0x3FFFFFF), 4)
    else:
        length = np.concatenate([image.jump_lengths, np.full(nf, 5)]).astype(np.int8)
        two = np.flatnonzero(image.jump_lengths == 2)
        five = np.flatnonzero(image.jump_lengths == 5)
        enc[two, 0, :2] = np.frombuffer(NOP2, dtype=np.uint8)
        enc[two, 1, 0] = 0xEB
        if real_target is None:
            rel8 = np.minimum(func_end[two], js[two] + 2 + 127) - (js[two] + 2)
            rel32 = func_end[five] - (js[five] + 5)
        else:
            rel8 = real_target[two] - (js[two] + 2)
            rel32 = real_target[five] - (js[five] + 5)
        enc[two, 1, 1] = _le(rel8, 1)[:, 0]
        enc[five, 0, :5] = np.frombuffer(NOP5, dtype=np.uint8)
        enc[five, 1, 0] = 0xE9
        enc[five, 1, 1:5] = _le(rel32, 4)
        enc[nj:, 0, :5] = np.frombuffer(NOP5, dtype=np.uint8)
        for st, tramp in zip((FTRACE_CALLER, FTRACE_BPF, FTRACE_KLP), trampolines):
            enc[nj:, st, 0] = 0xE8
            enc[nj:, st, 1:5] = _le(tramp - (entry + 5), 4)
    n_core = n
    mod = [sec for sec in image.sections if sec.name == ".modules"]
    slots = mod[0].size // MODULE_SLOT_BYTES if mod else 0
    if slots:
        arm = image.arch == "arm64"
        fstart = (mod[0].offset + np.arange(slots * MODULE_FUNCS) * MODULE_FUNC_BYTES).astype(np.int64)
        m = len(fstart)
        moff = np.stack([fstart, fstart + 16, fstart + 32], axis=1).reshape(-1)
        mkind = np.tile([KIND_FTRACE, KIND_JUMP, KIND_ALT], m).astype(np.int8)
        jlen = np.full(m, 4) if arm else np.where(np.arange(m) % 2 == 0, 2, 5)
        mlen = np.stack([np.full(m, 4 if arm else 5), jlen, np.full(m, 4 if arm else 3)], axis=1).reshape(-1).astype(np.int8)
        menc = np.zeros((3 * m, N_STATES, MAX_INSN), dtype=np.uint8)
        f_i, j_i, a_i = np.arange(0, 3 * m, 3), np.arange(1, 3 * m, 3), np.arange(2, 3 * m, 3)
        jsite, jtarget = fstart + 16, fstart + 64
        if arm:
            menc[:, 0, :4] = np.frombuffer(ARM64_NOP, dtype=np.uint8)
            for st, tramp in zip((FTRACE_CALLER, FTRACE_BPF, FTRACE_KLP), trampolines):
                menc[f_i, st, :4] = _le(0x94000000 | (((tramp - fstart) // 4) & 0x3FFFFFF), 4)
            menc[j_i, 1, :4] = _le(0x14000000 | (((jtarget - jsite) // 4) & 0x3FFFFFF), 4)
            menc[a_i, 1, :4] = np.frombuffer(ARM64_DMB_ISH, dtype=np.uint8)
        else:
            menc[f_i, 0, :5] = np.frombuffer(NOP5, dtype=np.uint8)
            for st, tramp in zip((FTRACE_CALLER, FTRACE_BPF, FTRACE_KLP), trampolines):
                menc[f_i, st, 0] = 0xE8
                menc[f_i, st, 1:5] = _le(tramp - (fstart + 5), 4)
            two = jlen == 2
            menc[j_i[two], 0, :2] = np.frombuffer(NOP2, dtype=np.uint8)
            menc[j_i[two], 1, 0] = 0xEB
            menc[j_i[two], 1, 1] = _le(jtarget[two] - (jsite[two] + 2), 1)[:, 0]
            menc[j_i[~two], 0, :5] = np.frombuffer(NOP5, dtype=np.uint8)
            menc[j_i[~two], 1, 0] = 0xE9
            menc[j_i[~two], 1, 1:5] = _le(jtarget[~two] - (jsite[~two] + 5), 4)
            menc[a_i, 0, :3] = np.frombuffer(NOP3, dtype=np.uint8)
            menc[a_i, 1, :3] = np.frombuffer(LFENCE, dtype=np.uint8)
        offset = np.concatenate([offset, moff])
        length = np.concatenate([length, mlen])
        kind = np.concatenate([kind, mkind])
        key = np.concatenate([key, np.full(3 * m, -1, dtype=np.int32)])
        function = np.concatenate([function, np.full(3 * m, -1, dtype=np.int32)])
        n_states = np.concatenate([n_states, np.where(mkind == KIND_FTRACE, N_STATES, 2).astype(np.int8)])
        enc = np.concatenate([enc, menc])
    return SiteTable(image.arch, offset, length, kind, key, function, n_states, enc, nj, n_core, slots)
