"""Tests for numaemu.model.sites: the patch-site table and the encodings of every state."""

from __future__ import annotations

import numpy as np
import pytest

from numaemu.model.image import (
    ARM64_NOP,
    MODULE_SLOT_BYTES,
    NOP2,
    NOP5,
    KernelImage,
    synthetic_image,
    with_module_area,
)
from numaemu.model.sites import (
    ARM64_KPROBE_BRK,
    FTRACE_BPF,
    FTRACE_CALLER,
    FTRACE_KLP,
    FTRACE_OFF,
    INT3,
    KIND_ALT,
    KIND_FTRACE,
    KIND_JUMP,
    KIND_KPROBE,
    KPROBE_ARMED,
    KPROBE_FUNCS,
    KPROBE_ORIG,
    MAX_INSN,
    MODULE_FUNC_BYTES,
    MODULE_FUNCS,
    SiteTable,
    site_table,
)

NOP3 = bytes.fromhex("0f1f00")
LFENCE = bytes.fromhex("0faee8")
DMB_ISH = bytes.fromhex("bf3b03d5")
SLOTS = 4  # with_module_area's default


@pytest.fixture(scope="module")
def x86() -> tuple[KernelImage, SiteTable]:
    image = with_module_area(synthetic_image(0.02))
    return image, site_table(image)


@pytest.fixture(scope="module")
def arm() -> tuple[KernelImage, SiteTable]:
    image = with_module_area(synthetic_image(0.02, arch="arm64"))
    return image, site_table(image)


@pytest.fixture(params=["x86", "arm"])
def either(request) -> tuple[KernelImage, SiteTable]:
    return request.getfixturevalue(request.param)


def rel32_target(site: int, enc: bytes) -> int:
    assert len(enc) == 5
    return site + 5 + int.from_bytes(enc[1:5], "little", signed=True)


def rel8_target(site: int, enc: bytes) -> int:
    assert len(enc) == 2
    return site + 2 + int.from_bytes(enc[1:2], "little", signed=True)


def arm_branch(site: int, enc: bytes) -> tuple[int, int]:
    """(opcode bits 31..26 as the top byte value: 0x14 B / 0x94 BL, target)."""
    word = int.from_bytes(enc, "little")
    imm = word & 0x3FFFFFF
    if imm & (1 << 25):
        imm -= 1 << 26
    return word & 0xFC000000, site + 4 * imm


# -- table shape ---------------------------------------------------------------------------------


def test_table_shape(either) -> None:
    image, t = either
    nj, nf = len(image.jump_sites), len(image.functions)
    assert t.n_jump == nj and t.n_ftrace == nf and t.n_core == nj + nf + t.n_kprobe
    assert t.n_kprobe == KPROBE_FUNCS
    assert t.module_slots == SLOTS
    assert len(t) == t.n_core + SLOTS * MODULE_FUNCS * 3
    assert t.enc.shape == (len(t), 4, MAX_INSN) and t.enc.dtype == np.uint8
    assert np.array_equal(t.offset[:nj], image.jump_sites)
    assert np.array_equal(t.offset[nj : nj + nf], image.functions)
    assert np.all(t.kind[:nj] == KIND_JUMP) and np.all(t.kind[nj : nj + nf] == KIND_FTRACE)
    assert np.array_equal(t.key[:nj], image.jump_keys) and np.all(t.key[nj:] == -1)
    assert np.all(t.n_states[:nj] == 2) and np.all(t.n_states[nj : nj + nf] == 4)
    assert np.array_equal(t.function[nj : nj + nf], np.arange(nf))
    # every jump site's enclosing function really encloses it
    f = t.function[:nj]
    assert np.all(image.functions[f] <= image.jump_sites)
    assert np.all(image.jump_sites + t.length[:nj] <= image.functions[f] + image.function_sizes[f])
    for i in range(nf):
        assert t.ftrace_site(i) == nj + i
    if image.arch == "arm64":
        assert np.all(t.length == 4)
    else:
        assert np.array_equal(t.length[:nj], image.jump_lengths)
        assert np.all(t.length[nj : nj + nf] == 5)
    kp = t.kprobe_sites()
    assert np.all(t.kind[kp] == KIND_KPROBE)
    if image.arch == "arm64":  # a BRK over the whole instruction; no optimized state
        assert np.all(t.n_states[kp] == 2) and np.all(t.length[kp] == 4) and np.all(t.offset[kp] % 4 == 0)
        brk = np.frombuffer(ARM64_KPROBE_BRK, np.uint8)
        assert np.all(t.enc[kp, KPROBE_ARMED, :4] == brk) and not np.all(t.enc[kp, KPROBE_ORIG, :4] == brk, axis=1).any()
    else:
        assert np.all(t.n_states[kp] == 3) and np.all(t.length[kp] == 5)
        assert np.all(t.enc[kp, KPROBE_ARMED, 0] == INT3) and np.all(t.enc[kp, KPROBE_ORIG, 0] != INT3)
        assert np.array_equal(t.enc[kp, KPROBE_ARMED, 1:5], t.enc[kp, KPROBE_ORIG, 1:5])
    # a kprobe lies on no other site's bytes (kprobes refuse jump-label and ftrace sites)
    other = np.zeros(len(image.data) + 8, bool)
    for o, L in zip(t.offset[: nj + nf].tolist(), t.length[: nj + nf].tolist(), strict=True):
        other[o : o + L] = True
    assert not any(other[o : o + int(t.length[kp[0]])].any() for o in t.offset[kp].tolist())
    # zero padding beyond each encoding's length
    for s in range(len(t)):
        assert not t.enc[s, :, t.length[s] :].any()
        assert not t.enc[s, t.n_states[s] :].any()


def test_core_sites_hold_state0_in_image(either) -> None:
    image, t = either
    for s in range(t.n_core):
        o, L = int(t.offset[s]), int(t.length[s])
        assert bytes(image.data[o : o + L]) == t.encoding(s, 0), s
        assert t.state_of(s, bytes(image.data[o : o + L])) == 0


def test_key_sites(x86) -> None:
    image, t = x86
    total = 0
    for key in range(image.n_keys):
        idx = t.key_sites(key)
        assert np.array_equal(idx, np.flatnonzero(image.jump_keys == key))
        total += len(idx)
    assert total == t.n_jump
    assert len(t.key_sites(image.n_keys)) == 0


# -- x86 encodings -------------------------------------------------------------------------------


def test_x86_nops(x86) -> None:
    _image, t = x86
    two = np.flatnonzero(t.length[: t.n_jump] == 2)
    five = np.flatnonzero(t.length[: t.n_jump] == 5)
    assert len(two) == 180 and len(five) == 144  # regression pin for (0.02, seed 0)
    for s in two:
        assert t.encoding(s, 0) == NOP2 == bytes([0x66, 0x90])
    for s in five:
        assert t.encoding(s, 0) == NOP5 == bytes([0x0F, 0x1F, 0x44, 0x00, 0x00])
    for s in range(t.n_jump, t.n_jump + t.n_ftrace):
        assert t.encoding(s, FTRACE_OFF) == NOP5


def test_x86_jmp8_targets(x86) -> None:
    image, t = x86
    seen = 0
    for s in np.flatnonzero(t.length[: t.n_jump] == 2):
        site = int(t.offset[s])
        enc = t.encoding(s, 1)
        assert enc[0] == 0xEB
        target = rel8_target(site, enc)
        f = int(t.function[s])
        start, end = int(image.functions[f]), int(image.functions[f] + image.function_sizes[f])
        assert site + 2 <= target <= end
        assert start <= target
        # the end of the function when in reach, else as far as rel8 goes
        assert target == min(end, site + 2 + 127)
        seen += 1
    assert seen == 180


def test_x86_jmp32_targets(x86) -> None:
    image, t = x86
    for s in np.flatnonzero(t.length[: t.n_jump] == 5):
        site = int(t.offset[s])
        enc = t.encoding(s, 1)
        assert enc[0] == 0xE9
        f = int(t.function[s])
        assert rel32_target(site, enc) == image.functions[f] + image.function_sizes[f]


def test_x86_ftrace_calls(x86) -> None:
    image, t = x86
    tramp = {FTRACE_CALLER: image.functions[1], FTRACE_BPF: image.functions[2], FTRACE_KLP: image.functions[3]}
    for f in range(len(image.functions)):
        s = t.ftrace_site(f)
        assert t.offset[s] == image.functions[f]
        for st, target in tramp.items():
            enc = t.encoding(s, st)
            assert enc[0] == 0xE8
            assert rel32_target(int(t.offset[s]), enc) == target
    # negative and positive displacements both appear (function 0 calls forward, the rest back)
    s = t.ftrace_site(10)
    assert int.from_bytes(t.encoding(s, FTRACE_CALLER)[1:], "little", signed=True) < 0
    s = t.ftrace_site(0)
    assert int.from_bytes(t.encoding(s, FTRACE_KLP)[1:], "little", signed=True) == image.functions[3] - 5


# -- arm64 encodings -----------------------------------------------------------------------------


def test_arm64_nops_and_branches(arm) -> None:
    image, t = arm
    assert bytes.fromhex("1f2003d5") == ARM64_NOP
    for s in range(t.n_core - t.n_kprobe):  # (a kprobe site holds the instruction it probes)
        assert t.encoding(s, 0) == ARM64_NOP
    for s in range(t.n_jump):
        site = int(t.offset[s])
        assert site % 4 == 0
        op, target = arm_branch(site, t.encoding(s, 1))
        assert op == 0x14000000  # B
        f = int(t.function[s])
        assert target == image.functions[f] + image.function_sizes[f]
        assert target > site
    tramp = {FTRACE_CALLER: image.functions[1], FTRACE_BPF: image.functions[2], FTRACE_KLP: image.functions[3]}
    for f in range(len(image.functions)):
        s = t.ftrace_site(f)
        for st, want in tramp.items():
            op, target = arm_branch(int(t.offset[s]), t.encoding(s, st))
            assert op == 0x94000000  # BL
            assert target == want
    # a backward BL has the sign bit of imm26 set
    word = int.from_bytes(t.encoding(t.ftrace_site(10), FTRACE_CALLER), "little")
    assert word & (1 << 25)


# -- module sites --------------------------------------------------------------------------------


@pytest.mark.parametrize("slot", range(SLOTS))
def test_module_sites_layout(either, slot: int) -> None:
    image, t = either
    arm = image.arch == "arm64"
    idx = t.module_sites(slot)
    assert len(idx) == MODULE_FUNCS * 3
    assert np.array_equal(idx, np.arange(t.n_core + slot * 96, t.n_core + (slot + 1) * 96))
    f, j, a = (t.module_sites(slot, k) for k in (KIND_FTRACE, KIND_JUMP, KIND_ALT))
    assert len(f) == len(j) == len(a) == MODULE_FUNCS
    assert np.array_equal(np.sort(np.concatenate([f, j, a])), idx)
    area = image.section(".modules")
    assert MODULE_FUNC_BYTES == 512
    fstart = area.offset + slot * MODULE_SLOT_BYTES + np.arange(MODULE_FUNCS) * MODULE_FUNC_BYTES
    assert np.array_equal(t.offset[f], fstart)
    assert np.array_equal(t.offset[j], fstart + 16)
    assert np.array_equal(t.offset[a], fstart + 32)
    assert np.all(t.key[idx] == -1) and np.all(t.function[idx] == -1)
    assert np.all(t.n_states[f] == 4) and np.all(t.n_states[j] == 2) and np.all(t.n_states[a] == 2)
    tramp = [int(image.functions[i]) for i in (1, 2, 3)]
    for k in range(MODULE_FUNCS):
        fs, js, as_ = int(f[k]), int(j[k]), int(a[k])
        if arm:
            assert t.length[fs] == t.length[js] == t.length[as_] == 4
            for s in (fs, js, as_):
                assert t.encoding(s, 0) == ARM64_NOP
            for st, want in zip((1, 2, 3), tramp, strict=True):
                assert arm_branch(int(t.offset[fs]), t.encoding(fs, st)) == (0x94000000, want)
            assert arm_branch(int(t.offset[js]), t.encoding(js, 1)) == (0x14000000, int(fstart[k]) + 64)
            assert t.encoding(as_, 1) == DMB_ISH
        else:
            assert t.length[fs] == 5 and t.length[as_] == 3
            assert t.encoding(fs, 0) == NOP5
            for st, want in zip((1, 2, 3), tramp, strict=True):
                enc = t.encoding(fs, st)
                assert enc[0] == 0xE8 and rel32_target(int(t.offset[fs]), enc) == want
            global_func = slot * MODULE_FUNCS + k
            if global_func % 2 == 0:
                assert t.length[js] == 2
                assert t.encoding(js, 0) == NOP2
                enc = t.encoding(js, 1)
                assert enc == bytes([0xEB, 46])
                assert rel8_target(int(t.offset[js]), enc) == int(fstart[k]) + 64
            else:
                assert t.length[js] == 5
                assert t.encoding(js, 0) == NOP5
                enc = t.encoding(js, 1)
                assert enc[0] == 0xE9 and rel32_target(int(t.offset[js]), enc) == int(fstart[k]) + 64
            assert t.encoding(as_, 0) == NOP3
            assert t.encoding(as_, 1) == LFENCE


def test_module_area_is_empty_until_load(either) -> None:
    image, _t = either
    fill = 0 if image.arch == "arm64" else 0xCC
    area = image.section(".modules")
    assert np.all(image.data[area.offset : area.offset + area.size] == fill)


def test_no_module_area() -> None:
    image = synthetic_image(0.01)
    t = site_table(image)
    assert t.module_slots == 0 and len(t) == t.n_core


# -- state_of ------------------------------------------------------------------------------------


def test_state_of_each_state(either) -> None:
    _image, t = either
    for s in list(range(0, t.n_jump, 17)) + list(range(t.n_jump, len(t), 23)):
        for st in range(t.n_states[s]):
            assert t.state_of(int(s), t.encoding(int(s), st)) == st


def test_state_of_torn_and_foreign(x86, arm) -> None:
    _image, t = x86
    five = int(np.flatnonzero(t.length[: t.n_jump] == 5)[0])
    two = int(np.flatnonzero(t.length[: t.n_jump] == 2)[0])
    torn5 = NOP5[:1] + t.encoding(five, 1)[1:]
    assert t.state_of(five, torn5) is None
    assert t.state_of(five, t.encoding(five, 1)[:1] + NOP5[1:]) is None
    assert t.state_of(two, NOP2[:1] + t.encoding(two, 1)[1:]) is None
    assert t.state_of(two, bytes([0xCC, 0x90])) is None  # INT3-headed intermediate
    f = t.ftrace_site(5)
    assert t.state_of(f, NOP5[:1] + t.encoding(f, FTRACE_BPF)[1:]) is None
    assert t.state_of(f, t.encoding(f, FTRACE_CALLER)[:3] + NOP5[3:]) is None
    assert t.state_of(f, t.encoding(f, FTRACE_BPF)) == FTRACE_BPF
    assert t.state_of(f, NOP5[:4]) is None  # short read
    # the other site's encoding is foreign (different displacement)
    other = int(np.flatnonzero(t.length[: t.n_jump] == 5)[1])
    assert t.encoding(other, 1) != t.encoding(five, 1)
    assert t.state_of(five, t.encoding(other, 1)) is None
    _, ta = arm
    assert ta.state_of(0, bytes(4)) is None
    assert ta.state_of(ta.n_jump, ta.encoding(ta.n_jump, FTRACE_KLP)) == FTRACE_KLP
    assert ta.state_of(0, ta.encoding(0, 1)) == 1
