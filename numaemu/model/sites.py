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
instruction: NOP ``d503201f``, ``B`` for jump labels, ``BL`` for the ftrace states, ``BRK`` over
an armed kprobe's instruction.

Jump-label targets: the image's own (`KernelImage.jump_targets`, from the ``__jump_table`` of a
real kernel); for the synthetic image, the end of the enclosing function (within rel8 reach for
2-byte sites). Trampolines are functions 1, 2 and 3 of the image, standing in for
``ftrace_caller``, a BPF trampoline and the livepatch handler.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numaemu.model.arrays import I8, I32, I64, U8, Bool, Intp, Ints
from numaemu.model.image import ARM64_NOP, MODULE_SLOT_BYTES, NOP2, NOP5, KernelImage

__all__ = [
    "INT3",
    "MAX_INSN",
    "KIND_JUMP",
    "KIND_FTRACE",
    "KIND_ALT",
    "KIND_KPROBE",
    "KPROBE_ORIG",
    "ARM64_KPROBE_BRK",
    "KPROBE_ARMED",
    "KPROBE_OPTIMIZED",
    "KPROBE_FUNCS",
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
KIND_JUMP, KIND_FTRACE, KIND_ALT, KIND_KPROBE = 0, 1, 2, 3
# kprobes (x86): an instruction after a function's ftrace entry, probed by arming an INT3 over
# its first byte (arch_arm_kprobe: text_poke + text_poke_sync) and optimized into a JMP32 to a
# detour buffer (arch_optimize_kprobes: text_poke_bp over the INT3), arch/x86/kernel/kprobes/.
# arm64: a BRK over the instruction, armed and disarmed through stop_machine
# (arch/arm64/kernel/probes/kprobes.c: patch_text -> aarch64_insn_patch_text), no optimized state.
KPROBE_ORIG, KPROBE_ARMED, KPROBE_OPTIMIZED = 0, 1, 2
KPROBE_FUNCS = 32  # probed functions
RESERVED_KPROBE_FUNCS = 300  # functions 0..299 hold the trampolines, the BPF and livepatch targets
MODULE_FUNCS = 32  # functions per module
MODULE_FUNC_BYTES = MODULE_SLOT_BYTES // MODULE_FUNCS
SITES_PER_MODULE_FUNC = 3  # ftrace entry, a jump label, an alternative
NOP3 = bytes.fromhex("0f1f00")
LFENCE = bytes.fromhex("0faee8")  # the alternative applied on load (X86_FEATURE_LFENCE_RDTSC)
ARM64_DMB_ISH = bytes.fromhex("bf3b03d5")
ARM64_KPROBE_BRK = bytes.fromhex("800020d4")  # BRK #0x004 (KPROBES_BRK_IMM), little-endian
FTRACE_OFF, FTRACE_CALLER, FTRACE_BPF, FTRACE_KLP = 0, 1, 2, 3
N_STATES = 4


@dataclass(frozen=True, eq=False)
class SiteTable:
    """Every patch site of an image, one row each (see the module docstring for the states)."""

    arch: str
    offset: I64  # from the image base
    length: I8
    kind: I8  # KIND_JUMP, KIND_FTRACE or KIND_ALT
    key: I32  # static key of a jump site; -1 for ftrace sites (and module sites)
    function: I32  # enclosing function; -1 for module sites
    n_states: I8  # 2 for jump sites (and alternatives), 4 for ftrace sites
    enc: U8  # [site, state, MAX_INSN]: the encodings, zero-padded
    n_jump: int  # sites [0, n_jump) are jump labels, then ftrace entries in function order
    n_core: int  # sites [n_core, len) belong to module slots (SITES_PER_MODULE_FUNC per function)
    module_slots: int
    n_kprobe: int = 0  # sites [n_core - n_kprobe, n_core) are kprobe sites, after the ftrace entries

    @property
    def n_ftrace(self) -> int:
        """Ftrace entries: one per function, sites [n_jump, n_jump + n_ftrace)."""
        return self.n_core - self.n_jump - self.n_kprobe

    def kprobe_sites(self) -> Intp:
        return np.arange(self.n_core - self.n_kprobe, self.n_core)

    def __len__(self) -> int:
        return len(self.offset)

    def ftrace_site(self, function: int) -> int:
        return self.n_jump + function

    def module_sites(self, slot: int, kind: int | None = None) -> Intp:
        """Site indices of module slot `slot` (of one kind: KIND_FTRACE, KIND_JUMP, KIND_ALT)."""
        if not 0 <= slot < self.module_slots:
            raise IndexError(f"module slot {slot} does not exist (the image has {self.module_slots})")
        per = MODULE_FUNCS * SITES_PER_MODULE_FUNC
        idx = np.arange(self.n_core + slot * per, self.n_core + (slot + 1) * per)
        return idx if kind is None else idx[self.kind[idx] == kind]

    def module_span(self, slot: int) -> Intp:
        """The text offsets of module slot `slot`'s bytes (its sites start at its first byte)."""
        first = int(self.offset[self.module_sites(slot)[0]])
        return np.arange(first, first + MODULE_SLOT_BYTES, dtype=np.int64)

    def encoding(self, site: int, state: int) -> bytes:
        return bytes(self.enc[site, state, : self.length[site]])

    def key_sites(self, key: int) -> Intp:
        return np.flatnonzero(self.key[: self.n_jump] == key)

    def read(self, buf: U8, sites: Ints) -> U8:
        """The bytes at `sites` in `buf` (an image-sized array), [n, longest site]."""
        width = int(self.length[sites].max())
        out: U8 = buf[np.minimum(self.offset[sites][:, None] + np.arange(width), len(buf) - 1)]
        return out

    def holds(self, sites: Ints, states: Ints | int, found: U8) -> Bool:
        """Per site: do the bytes `found` ([n, >= longest site]) encode `states`? Bytes past a
        site's length are ignored."""
        width = found.shape[1]
        want = self.enc[sites, states, :width]
        beyond = np.arange(width) >= self.length[sites][:, None]
        match: Bool = np.all((found == want) | beyond, axis=1)
        return match

    def matches(self, sites: Ints, found: U8) -> Bool:
        """[n, states]: which of its states' encodings each site's bytes `found` are."""
        m: Bool = np.stack([self.holds(sites, np.full(len(sites), st), found) for st in range(self.enc.shape[1])], axis=1)
        m &= np.arange(self.enc.shape[1]) < self.n_states[sites][:, None]
        return m

    def state_of(self, site: int, observed: bytes) -> int | None:
        """Which state `observed` encodes at `site`, or None (torn, foreign)."""
        for st in range(self.n_states[site]):
            if self.encoding(site, st) == observed:
                return st
        return None


def _le(values: Ints, nbytes: int) -> U8:
    """Little-endian bytes of signed values, shape (n, nbytes)."""
    v = values.astype(np.int64) & ((1 << (8 * nbytes)) - 1)
    out: U8 = ((v[:, None] >> (8 * np.arange(nbytes))) & 0xFF).astype(np.uint8)
    return out


@dataclass(frozen=True, eq=False)
class _Rows:
    """Sites being built: the per-site columns of a `SiteTable`, in its order."""

    offset: I64
    length: I8
    kind: I8
    key: I32
    function: I32
    n_states: I8
    enc: U8

    def __add__(self, other: _Rows) -> _Rows:
        return _Rows(
            np.concatenate([self.offset, other.offset]),
            np.concatenate([self.length, other.length]),
            np.concatenate([self.kind, other.kind]),
            np.concatenate([self.key, other.key]),
            np.concatenate([self.function, other.function]),
            np.concatenate([self.n_states, other.n_states]),
            np.concatenate([self.enc, other.enc]),
        )


def site_table(image: KernelImage) -> SiteTable:
    """Every patchable site of `image`: its jump labels, then one ftrace entry per function, then
    the sites of its module slots (if it has a ``.modules`` area)."""
    trampolines = image.functions[[1, 2, 3]]
    rows = _core_rows(image, trampolines)
    kp = _kprobe_rows(image, rows, trampolines[1])
    n_kprobe = len(kp.offset)
    rows = rows + kp
    n_core = len(rows.offset)
    mod = [sec for sec in image.sections if sec.name == ".modules"]
    slots = mod[0].size // MODULE_SLOT_BYTES if mod else 0
    if slots:
        rows = rows + _module_rows(image.arch, mod[0].offset, slots, trampolines)
    nj = len(image.jump_sites)
    return SiteTable(image.arch, rows.offset, rows.length, rows.kind, rows.key, rows.function, rows.n_states, rows.enc, nj, n_core, slots, n_kprobe)


def _kprobe_rows(image: KernelImage, core: _Rows, detour: int) -> _Rows:
    """KPROBE_FUNCS kprobe sites: the instruction after the ftrace entry of functions spread over
    the image, where no other site lies (kprobes refuse jump-label sites, jump_label_text_reserved).
    x86, 5 bytes: the original bytes, INT3 over the first, a JMP32 to the detour buffer
    (`detour`; arch/x86/kernel/kprobes/opt.c). arm64, one instruction: the original, or
    ``BRK #KPROBES_BRK_IMM`` (arch/arm64/include/asm/brk-imm.h); arm64 has no optprobes."""
    arm = image.arch == "arm64"
    L = 4 if arm else 5
    funcs, sizes = image.functions, image.function_sizes
    taken = np.zeros(len(image.data) + 8, dtype=bool)
    for o, n_bytes in zip(core.offset.tolist(), core.length.tolist(), strict=True):
        taken[o : o + n_bytes] = True
    start = image.ftrace_sites + L
    fits = (start + L <= funcs + sizes) & ~np.array([taken[o : o + L].any() for o in start.tolist()])
    first = image.data[np.minimum(start[:, None] + np.arange(L if arm else 1), len(image.data) - 1)]
    fits &= ~np.all(first == (np.frombuffer(ARM64_KPROBE_BRK, np.uint8) if arm else INT3), axis=1)  # arming must change it
    fits[:RESERVED_KPROBE_FUNCS] = False
    chosen = np.flatnonzero(fits)
    chosen = chosen[np.linspace(0, len(chosen) - 1, min(KPROBE_FUNCS, len(chosen))).astype(np.int64)] if len(chosen) else chosen
    offset = start[chosen].astype(np.int64)
    n = len(offset)
    enc = np.zeros((n, N_STATES, MAX_INSN), dtype=np.uint8)
    orig = image.data[offset[:, None] + np.arange(L)]
    enc[:, KPROBE_ORIG, :L] = orig
    if arm:
        enc[:, KPROBE_ARMED, :4] = np.frombuffer(ARM64_KPROBE_BRK, np.uint8)
    else:
        enc[:, KPROBE_ARMED, :5] = orig
        enc[:, KPROBE_ARMED, 0] = INT3
        enc[:, KPROBE_OPTIMIZED, 0] = 0xE9
        enc[:, KPROBE_OPTIMIZED, 1:5] = _le(detour - (offset + 5), 4)
    return _Rows(offset, np.full(n, L, np.int8), np.full(n, KIND_KPROBE, np.int8), np.full(n, -1, np.int32),
                 chosen.astype(np.int32), np.full(n, 2 if arm else 3, np.int8), enc)


def _core_rows(image: KernelImage, trampolines: I64) -> _Rows:
    """The image's own sites: jump labels (in `jump_sites` order), then ftrace entries."""
    funcs, sizes = image.functions, image.function_sizes
    entry = image.ftrace_sites  # the function starts, or function + 4 after an ENDBR64
    nj, nf = len(image.jump_sites), len(funcs)
    offset = np.concatenate([image.jump_sites, entry]).astype(np.int64)
    kind = np.concatenate([np.full(nj, KIND_JUMP), np.full(nf, KIND_FTRACE)]).astype(np.int8)
    key = np.concatenate([image.jump_keys, np.full(nf, -1)]).astype(np.int32)
    jfunc = np.searchsorted(funcs, image.jump_sites, side="right") - 1
    function = np.concatenate([jfunc, np.arange(nf)]).astype(np.int32)
    n_states = np.where(kind == KIND_JUMP, 2, N_STATES).astype(np.int8)
    func_end = funcs[jfunc] + sizes[jfunc]
    if image.arch == "arm64":
        length = np.full(nj + nf, 4, dtype=np.int8)
        enc = _arm64_core(image, entry, func_end, trampolines)
    else:
        length = np.concatenate([image.jump_lengths, np.full(nf, 5)]).astype(np.int8)
        enc = _x86_core(image, entry, func_end, trampolines)
    return _Rows(offset, length, kind, key, function, n_states, enc)


def _arm64_core(image: KernelImage, entry: I64, func_end: I64, trampolines: I64) -> U8:
    """Encodings of the image's own sites on arm64: every state one 4-byte instruction."""
    js = image.jump_sites
    nj = len(js)
    enc = np.zeros((nj + len(entry), N_STATES, MAX_INSN), dtype=np.uint8)
    enc[:, 0, :4] = np.frombuffer(ARM64_NOP, dtype=np.uint8)
    # B: 0x14000000 | imm26, BL: 0x94000000 | imm26, imm26 = (target - pc) / 4.
    # A real image's sites jump where its __jump_table says.
    target = func_end // 4 * 4 if image.jump_targets is None else image.jump_targets
    enc[:nj, 1, :4] = _le(0x14000000 | (((target - js) // 4) & 0x3FFFFFF), 4)
    for st, tramp in zip((FTRACE_CALLER, FTRACE_BPF, FTRACE_KLP), trampolines, strict=True):
        enc[nj:, st, :4] = _le(0x94000000 | (((tramp - entry) // 4) & 0x3FFFFFF), 4)
    return enc


def _x86_core(image: KernelImage, entry: I64, func_end: I64, trampolines: I64) -> U8:
    """Encodings of the image's own sites on x86-64: NOP2/JMP8 or NOP5/JMP32 for jump labels,
    NOP5 or ``call`` a trampoline for ftrace entries."""
    js = image.jump_sites
    nj = len(js)
    enc = np.zeros((nj + len(entry), N_STATES, MAX_INSN), dtype=np.uint8)
    two = np.flatnonzero(image.jump_lengths == 2)
    five = np.flatnonzero(image.jump_lengths == 5)
    enc[two, 0, :2] = np.frombuffer(NOP2, dtype=np.uint8)
    enc[two, 1, 0] = 0xEB
    # A real image's sites jump where its __jump_table says; rel8 reach was checked on loading.
    real_target = image.jump_targets
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
    for st, tramp in zip((FTRACE_CALLER, FTRACE_BPF, FTRACE_KLP), trampolines, strict=True):
        enc[nj:, st, 0] = 0xE8
        enc[nj:, st, 1:5] = _le(tramp - (entry + 5), 4)
    return enc


def _module_rows(arch: str, first: int, slots: int, trampolines: I64) -> _Rows:
    """The sites of `slots` module slots from image offset `first`: per module function (at
    `MODULE_FUNC_BYTES` spacing) an ftrace entry at +0, a jump label at +16 (to +64; 2 and 5
    bytes in turn on x86) and an alternative at +32."""
    arm = arch == "arm64"
    fstart = (first + np.arange(slots * MODULE_FUNCS) * MODULE_FUNC_BYTES).astype(np.int64)
    m = len(fstart)
    moff = np.stack([fstart, fstart + 16, fstart + 32], axis=1).reshape(-1)
    mkind = np.tile([KIND_FTRACE, KIND_JUMP, KIND_ALT], m).astype(np.int8)
    jlen = np.full(m, 4) if arm else np.where(np.arange(m) % 2 == 0, 2, 5)
    mlen = np.stack([np.full(m, 4 if arm else 5), jlen, np.full(m, 4 if arm else 3)], axis=1).reshape(-1).astype(np.int8)
    enc = _arm64_modules(fstart, trampolines) if arm else _x86_modules(fstart, jlen, trampolines)
    none = np.full(3 * m, -1, dtype=np.int32)
    n_states = np.where(mkind == KIND_FTRACE, N_STATES, 2).astype(np.int8)
    return _Rows(moff, mlen, mkind, none, none, n_states, enc)


def _arm64_modules(fstart: I64, trampolines: I64) -> U8:
    m = len(fstart)
    enc = np.zeros((3 * m, N_STATES, MAX_INSN), dtype=np.uint8)
    f_i, j_i, a_i = np.arange(0, 3 * m, 3), np.arange(1, 3 * m, 3), np.arange(2, 3 * m, 3)
    jsite, jtarget = fstart + 16, fstart + 64
    enc[:, 0, :4] = np.frombuffer(ARM64_NOP, dtype=np.uint8)
    for st, tramp in zip((FTRACE_CALLER, FTRACE_BPF, FTRACE_KLP), trampolines, strict=True):
        enc[f_i, st, :4] = _le(0x94000000 | (((tramp - fstart) // 4) & 0x3FFFFFF), 4)
    enc[j_i, 1, :4] = _le(0x14000000 | (((jtarget - jsite) // 4) & 0x3FFFFFF), 4)
    enc[a_i, 1, :4] = np.frombuffer(ARM64_DMB_ISH, dtype=np.uint8)
    return enc


def _x86_modules(fstart: I64, jlen: Ints, trampolines: I64) -> U8:
    m = len(fstart)
    enc = np.zeros((3 * m, N_STATES, MAX_INSN), dtype=np.uint8)
    f_i, j_i, a_i = np.arange(0, 3 * m, 3), np.arange(1, 3 * m, 3), np.arange(2, 3 * m, 3)
    jsite, jtarget = fstart + 16, fstart + 64
    enc[f_i, 0, :5] = np.frombuffer(NOP5, dtype=np.uint8)
    for st, tramp in zip((FTRACE_CALLER, FTRACE_BPF, FTRACE_KLP), trampolines, strict=True):
        enc[f_i, st, 0] = 0xE8
        enc[f_i, st, 1:5] = _le(tramp - (fstart + 5), 4)
    two = jlen == 2
    enc[j_i[two], 0, :2] = np.frombuffer(NOP2, dtype=np.uint8)
    enc[j_i[two], 1, 0] = 0xEB
    enc[j_i[two], 1, 1] = _le(jtarget[two] - (jsite[two] + 2), 1)[:, 0]
    enc[j_i[~two], 0, :5] = np.frombuffer(NOP5, dtype=np.uint8)
    enc[j_i[~two], 1, 0] = 0xE9
    enc[j_i[~two], 1, 1:5] = _le(jtarget[~two] - (jsite[~two] + 5), 4)
    enc[a_i, 0, :3] = np.frombuffer(NOP3, dtype=np.uint8)
    enc[a_i, 1, :3] = np.frombuffer(LFENCE, dtype=np.uint8)
    return enc
