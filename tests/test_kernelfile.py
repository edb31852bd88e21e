"""Real kernel images (``--image``): tiny x86-64 vmlinux files built here, bare and compressed.

The ELF writer below is hand-written with `struct` (pyelftools cannot write ELF); numaemu reads
the files with pyelftools. No downloads: every image is made in the test.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import struct
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest

from numaemu.cli import main
from numaemu.errors import UsageError
from numaemu.host.files import clear_cache, load_image
from numaemu.model.image import KERNEL_BASE, NOP2, NOP5, PAGE_SIZE, with_module_area
from numaemu.model.kernel_sites import MIN_JUMP_ENTRIES, JumpTable, jump_sites
from numaemu.model.kernel_unpack import EXTRA_HINT
from numaemu.model.kernelfile import parse_image
from numaemu.model.sites import FTRACE_CALLER, KIND_FTRACE, KIND_JUMP, site_table
from numaemu.patching.sources import plan_sources

from .conftest import numaemu

TEXT_VA = 0xFFFFFFFF82000000  # not KERNEL_BASE: offsets must come from the image's own base
RODATA_VA = TEXT_VA + 0x20000
DATA_VA = RODATA_VA + 0x10000
INIT_TEXT_VA = DATA_VA + 0x10000
FUNC = 64  # bytes per function (16-byte aligned)
N_FUNCS = 300  # function 0 is __fentry__ itself
NOP5_EVERY = 25  # functions the build left as NOP5 already
TARGET = 40  # jump-label sites jump to function + 40
SITE2, SITE5 = 12, 20  # 2- and 5-byte jump-label sites at function + 12 / + 20
N_KEYS = 5
KEYS_AT = 0x2000  # in .data
TABLE_AT = 0x100  # the __jump_table in .data
ENDBR64 = bytes.fromhex("f30f1efa")
BANNER = b"Linux version 6.1.0-tiny (test@numaemu) (gcc 12) #1 SMP PREEMPT_DYNAMIC\n"
SHT_PROGBITS, SHT_STRTAB = 1, 3
SHF_WRITE, SHF_ALLOC, SHF_EXEC = 1, 2, 4
EM_X86_64, EM_AARCH64 = 62, 183


# ----------------------------------------------------------------------------------------------
# Building images


def write_elf(sections: list[tuple[str, int, int, int, bytes]], machine: int = EM_X86_64) -> bytes:
    """An ELF64 little-endian executable with section headers only: (name, type, flags, vaddr,
    bytes) per section, then .shstrtab."""
    names = [s[0] for s in sections] + [".shstrtab"]
    shstr = b"\0"
    name_off = []
    for n in names:
        name_off.append(len(shstr))
        shstr += n.encode() + b"\0"
    body = bytearray(64)
    offsets = []
    for _, _, _, _, data in [*sections, (".shstrtab", SHT_STRTAB, 0, 0, shstr)]:
        body += b"\0" * (-len(body) % 16)
        offsets.append(len(body))
        body += data
    body += b"\0" * (-len(body) % 8)
    shoff = len(body)
    body += b"\0" * 64  # the null section
    all_secs = [*sections, (".shstrtab", SHT_STRTAB, 0, 0, shstr)]
    for i, (_, typ, flags, vaddr, data) in enumerate(all_secs):
        body += struct.pack("<IIQQQQIIQQ", name_off[i], typ, flags, vaddr, offsets[i], len(data), 0, 0, 16, 0)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, TEXT_VA, 0, shoff, 0, 64, 56, 0, 64, len(all_secs) + 1, len(all_secs))
    body[:64] = header
    return bytes(body)


@dataclass
class Tiny:
    """A tiny vmlinux and what numaemu must find in it (offsets from .text)."""

    elf: bytes
    text: bytes
    rodata: bytes
    ftrace: list[int]  # ftrace sites
    functions: list[int]
    calls: int
    nops: int
    jump: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # site -> (length, target, key index)
    jmp: int = 0  # jump sites the file holds as JMPs
    entries: int = 0
    skipped: int = 0


def tiny_vmlinux(*, ibt: bool = False, jump_entries: bool = True, n_entries: int | None = None, alt: bool = True, machine: int = EM_X86_64) -> Tiny:
    """.text of N_FUNCS 64-byte functions: function 0 is __fentry__ (``ret``), every other one
    starts with ``call __fentry__`` (NOP5 for every NOP5_EVERY-th; after an ENDBR64 with `ibt`),
    and holds a 2- or 5-byte jump-label site jumping to function + TARGET; .data holds the
    relative __jump_table over N_KEYS keys, with one duplicate entry and one into .init.text."""
    text = bytearray(b"\x48" * (N_FUNCS * FUNC))  # 0x48: neither a call, a NOP nor INT3
    text[0:FUNC] = b"\xc3" + b"\xcc" * (FUNC - 1)
    ftrace, functions, calls, nops = [], [], 0, 0
    for f in range(1, N_FUNCS):
        at = f * FUNC
        site = at + (4 if ibt else 0)
        if ibt:
            text[at : at + 4] = ENDBR64
        if f % NOP5_EVERY == 0:
            text[site : site + 5] = NOP5
            nops += 1
        else:
            text[site : site + 5] = b"\xe8" + struct.pack("<i", 0 - (site + 5))
            calls += 1
        ftrace.append(site)
        functions.append(at)
        text[at + FUNC - 9] = 0xC3  # ret, then INT3 padding
        text[at + FUNC - 8 : at + FUNC] = b"\xcc" * 8
    tiny = Tiny(b"", b"", b"", ftrace, functions, calls, nops)
    entries = []  # (code, target, key address | flags)
    for f in range(1, N_FUNCS):
        at, target = f * FUNC, f * FUNC + TARGET
        key = f % N_KEYS
        if f % 3 == 1:
            site, length = at + SITE2, 2
            jmp = f % 10 == 1
            text[site : site + 2] = (b"\xeb" + struct.pack("<b", target - (site + 2))) if jmp else NOP2
        elif f % 3 == 2:
            site, length = at + SITE5, 5
            jmp = f % 10 == 2
            text[site : site + 5] = (b"\xe9" + struct.pack("<i", target - (site + 5))) if jmp else NOP5
        else:
            continue
        tiny.jump[site] = (length, target, key)
        tiny.jmp += jmp
        entries.append((site, target, DATA_VA + KEYS_AT + 16 * key + (f & 3)))
    # An entry twice (a duplicate is dropped) and one whose site is in .init.text (not patched).
    entries.insert(7, entries[3])
    entries.insert(11, (INIT_TEXT_VA - TEXT_VA, INIT_TEXT_VA - TEXT_VA + 8, DATA_VA + KEYS_AT))
    if n_entries is not None:
        entries = entries[:n_entries]
    data = bytearray(KEYS_AT + 16 * N_KEYS)
    if jump_entries:
        for i, (code, target, key) in enumerate(entries):
            e = DATA_VA + TABLE_AT + 16 * i
            struct.pack_into("<iiq", data, TABLE_AT + 16 * i, TEXT_VA + code - e, TEXT_VA + target - (e + 4), key - (e + 8))
        tiny.entries = len(entries)
        tiny.skipped = 2 if n_entries is None else 0
    else:
        tiny.jump, tiny.jmp = {}, 0
    rodata = bytearray((np.arange(4096) * 7 % 251).astype(np.uint8).tobytes())
    rodata[100 : 100 + len(BANNER) + 1] = BANNER + b"\0"
    init_text = NOP2 + b"\x48" * 6 + b"\xc3" + b"\xcc" * 7
    sections = [
        (".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXEC, TEXT_VA, bytes(text)),
        (".rodata", SHT_PROGBITS, SHF_ALLOC, RODATA_VA, bytes(rodata)),
        (".data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, DATA_VA, bytes(data)),
        (".init.text", SHT_PROGBITS, SHF_ALLOC | SHF_EXEC, INIT_TEXT_VA, init_text),
    ]
    if alt:
        # struct alt_instr (6.1): s32 instr_offset, s32 repl_offset, u16 cpuid, u8 instrlen, u8 replacementlen
        alt_va = INIT_TEXT_VA + 0x1000
        rows = b"".join(
            struct.pack("<iiHBB", TEXT_VA + f * FUNC + 32 - (alt_va + 12 * i), RODATA_VA - (alt_va + 12 * i + 4), 3, 3, 3)
            for i, f in enumerate(range(10, 20))
        )
        sections.append((".altinstructions", SHT_PROGBITS, SHF_ALLOC, alt_va, rows))
    tiny.elf, tiny.text, tiny.rodata = write_elf(sections, machine), bytes(text), bytes(rodata)
    return tiny


def size_append(raw: bytes) -> bytes:
    """scripts/Makefile.lib: the decompressed size, u32 LE, after the stream."""
    return struct.pack("<I", len(raw))


def lz4_legacy(raw: bytes, chunk: int = 8192) -> bytes:
    """The kernel's `lz4 -l` framing: magic, then (u32 size, LZ4 block) chunks; the magic again
    after the second chunk, as in concatenated streams; then size_append."""
    block = pytest.importorskip("lz4.block")
    out = bytearray(struct.pack("<I", 0x184C2102))
    for i, at in enumerate(range(0, len(raw), chunk)):
        blk = block.compress(raw[at : at + chunk], store_size=False)
        out += struct.pack("<I", len(blk)) + blk
        if i == 1:
            out += struct.pack("<I", 0x184C2102)
    return bytes(out) + size_append(raw)


def compress(fmt: str, raw: bytes) -> bytes:
    if fmt == "gzip":
        return gzip.compress(raw, mtime=0)  # the build adds no size: gzip has its own
    if fmt == "xz":
        return lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + size_append(raw)
    if fmt == "lzma":
        return lzma.compress(raw, format=lzma.FORMAT_ALONE) + size_append(raw)
    if fmt == "bzip2":
        return bz2.compress(raw) + size_append(raw)
    if fmt == "zstd":
        zstd = pytest.importorskip("zstandard")
        return zstd.ZstdCompressor(level=19, write_content_size=False).compress(raw) + size_append(raw)
    if fmt == "lz4-legacy":
        return lz4_legacy(raw)
    raise AssertionError(fmt)


FORMAT_NAMES = ("gzip", "xz", "lzma", "bzip2", "zstd", "lz4-legacy")


def bzimage(payload: bytes, setup_sects: int = 3) -> bytes:
    """A minimal bzImage: the setup header (arch/x86/boot/header.S) with payload_offset and
    payload_length relative to the protected-mode code at (setup_sects + 1) * 512."""
    setup = bytearray((max(setup_sects, 0) or 4) * 512 + 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    pm = b"\x90" * 0x300  # stands for the decompressor stub
    struct.pack_into("<II", setup, 0x248, len(pm), len(payload))
    return bytes(setup) + pm + payload + b"\0" * 32


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    return tiny_vmlinux()


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def write(tmp_path, name: str, blob: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(blob)
    return str(p)


def load(tmp_path, blob: bytes, name: str = "vmlinux"):
    return load_image(write(tmp_path, name, blob))


def refused(tmp_path, blob: bytes, name: str = "vmlinux") -> str:
    with pytest.raises(UsageError) as exc:
        load(tmp_path, blob, name)
    assert exc.value.parameter == "--image"
    return exc.value.rule


# ----------------------------------------------------------------------------------------------
# The ELF


def test_sections_layout_and_bytes(tmp_path, tiny: Tiny) -> None:
    img = load(tmp_path, tiny.elf)
    assert img.arch == "x86_64" and img.base == TEXT_VA != KERNEL_BASE
    text, rodata = img.section(".text"), img.section(".rodata")
    assert (text.vaddr, text.size, text.offset) == (TEXT_VA, len(tiny.text), 0)
    assert (rodata.vaddr, rodata.size, rodata.offset) == (RODATA_VA, 4096, RODATA_VA - TEXT_VA)
    assert [s.name for s in img.sections] == [".text", ".rodata"]
    assert len(img.data) == RODATA_VA - TEXT_VA + PAGE_SIZE and not img.data.flags.writeable
    assert bytes(img.data[rodata.offset : rodata.offset + 4096]) == tiny.rodata
    assert not img.data[len(tiny.text) : rodata.offset].any()  # the gap is unmapped
    assert img.mapped_pages().tolist() == list(range(5)) + [rodata.offset // PAGE_SIZE]
    # Outside the patch sites, .text is the file's.
    sites = np.zeros(len(tiny.text), bool)
    for s in tiny.ftrace:
        sites[s : s + 5] = True
    for s, (n, _, _) in tiny.jump.items():
        sites[s : s + n] = True
    assert np.array_equal(img.data[: len(tiny.text)][~sites], np.frombuffer(tiny.text, np.uint8)[~sites])
    assert img.name == "vmlinux (Linux 6.1.0-tiny)"
    assert img.source.version == BANNER.decode().strip()
    assert (img.seed, img.scale) == (0, 1.0)


def test_ftrace_sites_found_and_nopped(tmp_path, tiny: Tiny) -> None:
    img = load(tmp_path, tiny.elf)
    assert img.functions.tolist() == tiny.functions == img.ftrace_sites.tolist()
    assert img.ftrace_offsets is None
    assert (img.source.ftrace_calls, img.source.ftrace_nops) == (tiny.calls, tiny.nops) == (288, 11)
    assert img.source.fentry == TEXT_VA  # function 0, the most-called target
    for s in tiny.ftrace:
        assert bytes(img.data[s : s + 5]) == NOP5  # as ftrace_make_nop() leaves them at boot
    # Each function up to its INT3 padding (64 - 8 bytes).
    assert img.function_sizes.tolist() == [FUNC - 8] * len(tiny.functions)


def test_jump_sites_keys_and_targets(tmp_path, tiny: Tiny) -> None:
    img = load(tmp_path, tiny.elf)
    want = sorted(tiny.jump)
    assert img.jump_sites.tolist() == want
    assert img.jump_lengths.tolist() == [tiny.jump[s][0] for s in want]
    assert img.jump_targets.tolist() == [tiny.jump[s][1] for s in want]
    # Keys are numbered by address; same key address, same key.
    assert img.n_keys == N_KEYS
    assert img.jump_keys.tolist() == [tiny.jump[s][2] for s in want]
    src = img.source
    assert src.jump_table == DATA_VA + TABLE_AT
    assert (src.jump_entries, src.jump_skipped, src.jump_sites_jmp) == (tiny.entries, tiny.skipped, tiny.jmp)
    assert tiny.jmp > 0
    for s in want:  # every key starts disabled: every site holds its NOP
        n = tiny.jump[s][0]
        assert bytes(img.data[s : s + n]) == (NOP2 if n == 2 else NOP5)
    s = img.summary()
    assert (s["jump_label_sites"], s["static_keys"]) == (len(want), N_KEYS)
    assert s["jump_label_sites_2byte"] == sum(1 for v in tiny.jump.values() if v[0] == 2)


def test_site_table_jumps_land_on_the_real_targets(tmp_path, tiny: Tiny) -> None:
    img = with_module_area(load(tmp_path, tiny.elf))
    t = site_table(img)
    assert t.n_jump == len(tiny.jump)
    for s in range(t.n_core):
        o, n = int(t.offset[s]), int(t.length[s])
        assert bytes(img.data[o : o + n]) == t.encoding(s, 0)  # state 0 holds in the master
    for s in np.flatnonzero(t.kind == KIND_JUMP)[: t.n_jump]:
        o, enc = int(t.offset[s]), t.encoding(s, 1)
        if enc[0] == 0xEB:
            dest = o + 2 + struct.unpack("<b", enc[1:2])[0]
        else:
            assert enc[0] == 0xE9
            dest = o + 5 + struct.unpack("<i", enc[1:5])[0]
        assert dest == tiny.jump[o][1]
    f = np.flatnonzero(t.kind == KIND_FTRACE)[0]
    enc = t.encoding(f, FTRACE_CALLER)
    assert enc[0] == 0xE8 and int(t.offset[f]) + 5 + struct.unpack("<i", enc[1:5])[0] == img.functions[1]
    # The module area pads with INT3 after .rodata, at the next 2 MiB.
    mods = img.section(".modules")
    assert mods.offset == 2 << 20 and np.all(img.data[mods.offset :] == 0xCC)


def test_endbr64_entries(tmp_path) -> None:
    tiny = tiny_vmlinux(ibt=True)
    img = load(tmp_path, tiny.elf)
    assert img.functions.tolist() == tiny.functions
    assert img.ftrace_sites.tolist() == tiny.ftrace == [f + 4 for f in tiny.functions]
    assert img.source.ftrace_endbr == len(tiny.ftrace)
    for f in tiny.functions:
        assert bytes(img.data[f : f + 9]) == ENDBR64 + NOP5
    t = site_table(img)
    assert t.offset[t.n_jump : t.n_core].tolist() == tiny.ftrace


def test_other_site_tables_counted(tmp_path, tiny: Tiny) -> None:
    s = load(tmp_path, tiny.elf).summary()
    assert s["other_site_tables"] == {".altinstructions": 10}
    assert s["source"]["container"] == "ELF"


def test_no_jump_table(tmp_path) -> None:
    img = load(tmp_path, tiny_vmlinux(jump_entries=False).elf)
    assert len(img.jump_sites) == 0 and img.n_keys == 0 and img.source.jump_table is None
    t = site_table(with_module_area(img))
    assert t.n_jump == 0
    plan = plan_sources("mixed", t, img.n_keys)
    assert "static_keys" not in plan.names and "ftrace" in plan.names
    assert len(plan_sources("static_keys", t, img.n_keys).keys) == 0


def test_too_short_a_run_is_not_a_jump_table(tmp_path) -> None:
    img = load(tmp_path, tiny_vmlinux(n_entries=MIN_JUMP_ENTRIES - 1).elf)
    assert len(img.jump_sites) == 0 and img.source.jump_table is None
    img = load(tmp_path, tiny_vmlinux(n_entries=MIN_JUMP_ENTRIES).elf, "v2")
    assert img.source.jump_entries == MIN_JUMP_ENTRIES
    assert len(img.jump_sites) == MIN_JUMP_ENTRIES - 2  # less the duplicate and the .init.text one


def test_jump_entries_on_an_ftrace_site_outside_text_or_twice_are_skipped() -> None:
    code = np.array([10, 64, 66, 100, 100, 126, 300], dtype=np.int64)
    length = np.array([2, 5, 2, 2, 5, 5, 2], dtype=np.int8)
    jt = JumpTable(0, code, code + 20, np.arange(7, dtype=np.int64) * 16, length, np.zeros(7, bool))
    sites, lengths, targets, keys, jmp, skipped = jump_sites(jt, 256, np.array([64, 128], dtype=np.int64))
    # 64 and 66 lie on the ftrace site at 64; 126 (5 bytes) runs into the one at 128; 300 is past
    # .text; 100 is kept once, with its first entry.
    assert sites.tolist() == [10, 100] and lengths.tolist() == [2, 2]
    assert targets.tolist() == [30, 120] and keys.tolist() == [0, 48]
    assert (jmp, skipped) == (0, 5)


def test_loaded_once_per_path(tmp_path, tiny: Tiny) -> None:
    path = write(tmp_path, "vmlinux", tiny.elf)
    assert load_image(path) is load_image(path)


# ----------------------------------------------------------------------------------------------
# Containers


def _same(a, b) -> None:
    assert np.array_equal(a.data, b.data)
    assert np.array_equal(a.functions, b.functions)
    assert np.array_equal(a.jump_sites, b.jump_sites) and np.array_equal(a.jump_targets, b.jump_targets)
    assert a.sections == b.sections


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_bzimage_each_compressor(tmp_path, tiny: Tiny, fmt: str) -> None:
    blob = bzimage(compress(fmt, tiny.elf))
    img = load(tmp_path, blob, "vmlinuz")
    assert img.source.container == f"bzImage ({fmt})"
    _same(img, load(tmp_path, tiny.elf))


def test_setup_sects_zero_means_four(tmp_path, tiny: Tiny) -> None:
    img = load(tmp_path, bzimage(compress("gzip", tiny.elf), setup_sects=0))
    _same(img, load(tmp_path, tiny.elf, "elf"))


@pytest.mark.parametrize("fmt", ["gzip", "xz", "bzip2"])
def test_bare_compressed_vmlinux(tmp_path, tiny: Tiny, fmt: str) -> None:
    img = load(tmp_path, compress(fmt, tiny.elf), "vmlinux.z")
    assert img.source.container == fmt
    _same(img, load(tmp_path, tiny.elf))


def test_stream_found_by_scanning(tmp_path, tiny: Tiny) -> None:
    # No header numaemu knows: a stub, then the compressed kernel (as an EFI zboot image is).
    blob = b"MZ" + bytes(range(256)) * 4 + compress("xz", tiny.elf)
    img = load(tmp_path, blob)
    assert img.source.container.startswith("xz at byte ")
    _same(img, load(tmp_path, tiny.elf, "elf"))


def test_missing_optional_package_is_named(tmp_path, tiny: Tiny, monkeypatch) -> None:
    blob = bzimage(compress("lz4-legacy", tiny.elf))
    monkeypatch.setitem(sys.modules, "lz4", None)
    monkeypatch.setitem(sys.modules, "lz4.block", None)
    rule = refused(tmp_path, blob)
    assert "lz4-legacy-compressed payload" in rule and "'lz4'" in rule and EXTRA_HINT in rule
    blob = bzimage(compress("zstd", tiny.elf))
    monkeypatch.setitem(sys.modules, "zstandard", None)
    rule = refused(tmp_path, blob, "z")
    assert "'zstandard'" in rule and "pip install 'numaemu[kernel]'" in rule


# ----------------------------------------------------------------------------------------------
# Bad input


def test_missing_file(tmp_path) -> None:
    with pytest.raises(UsageError, match=r"^--image: '.*nosuch': no such file$"):
        load_image(tmp_path / "nosuch")


def test_directory(tmp_path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        load_image(tmp_path)


@pytest.mark.parametrize(
    "blob, expect",
    [
        (b"", "is empty"),
        (np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8).tobytes(), "is not a kernel image"),
        (b"just some text\n" * 100, "is not a kernel image"),
    ],
    ids=["empty", "random", "text"],
)
def test_not_a_kernel(tmp_path, blob: bytes, expect: str) -> None:
    assert expect in refused(tmp_path, blob)


def test_truncated_elf(tmp_path, tiny: Tiny) -> None:
    assert "is truncated" in refused(tmp_path, tiny.elf[: len(tiny.elf) // 2])
    assert "is truncated" in refused(tmp_path, tiny.elf[:40], "head")


def test_truncated_bzimage(tmp_path, tiny: Tiny) -> None:
    blob = bzimage(compress("xz", tiny.elf))
    assert "is truncated: its bzImage header puts the payload at bytes" in refused(tmp_path, blob[: len(blob) // 2])


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_truncated_payload(tmp_path, tiny: Tiny, fmt: str) -> None:
    # The header agrees with the cut payload: the stream itself ends early.
    payload = compress(fmt, tiny.elf)
    assert "is truncated" in refused(tmp_path, bzimage(payload[: len(payload) // 2]))


def test_elf_without_text(tmp_path) -> None:
    elf = write_elf([(".data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, DATA_VA, b"\0" * 64)])
    assert "without an executable .text section" in refused(tmp_path, elf)


def test_arm64_elf_refused(tmp_path) -> None:
    rule = refused(tmp_path, tiny_vmlinux(machine=EM_AARCH64).elf)
    assert "arm64 (AArch64) vmlinux" in rule and "--arch arm64" in rule


def test_raw_arm64_image_refused(tmp_path) -> None:
    raw = bytearray(4096)
    raw[0x38:0x3C] = b"ARM\x64"
    rule = refused(tmp_path, bytes(raw), "Image")
    assert "raw arm64 Image" in rule and "section headers" in rule and "vmlinux" in rule
    # An arm64 vmlinuz is a gzip of the raw Image: refused after decompressing.
    rule = refused(tmp_path, gzip.compress(bytes(raw)), "vmlinuz")
    assert "raw arm64 Image" in rule


def test_too_few_ftrace_sites(tmp_path) -> None:
    text = b"\x48" * 4096
    elf = write_elf([
        (".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXEC, TEXT_VA, text),
        (".rodata", SHT_PROGBITS, SHF_ALLOC, RODATA_VA, b"\0" * 64),
    ])
    assert "0 ftrace sites" in refused(tmp_path, elf)


def test_parse_image_names_the_file(tiny: Tiny) -> None:
    with pytest.raises(UsageError, match=r"^--image: 'some/where' is empty$"):
        parse_image(b"", "some/where")


# ----------------------------------------------------------------------------------------------
# The command line


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny_bz(tmp_path_factory, tiny: Tiny) -> str:
    p = tmp_path_factory.mktemp("kern") / "vmlinuz-tiny"
    p.write_bytes(bzimage(compress("gzip", tiny.elf)))
    return str(p)


@pytest.fixture(scope="module")
def no_keys_elf(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("kern") / "vmlinux-nokeys"
    p.write_bytes(tiny_vmlinux(jump_entries=False).elf)
    return str(p)


def test_cli_image_json(tiny_bz: str, tiny: Tiny) -> None:
    proc = numaemu("image", tiny_bz, "--json", "-")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)["image"]
    assert s["name"] == "vmlinuz-tiny (Linux 6.1.0-tiny)"
    assert s["base"] == hex(TEXT_VA)
    assert [(x["name"], x["vaddr"], x["size"]) for x in s["sections"]] == [(".text", hex(TEXT_VA), len(tiny.text)), (".rodata", hex(RODATA_VA), 4096)]
    assert s["ftrace_sites"] == 299 and s["source"]["ftrace_calls_converted"] == 288 and s["source"]["ftrace_already_nop5"] == 11
    assert s["jump_label_sites"] == len(tiny.jump) and s["static_keys"] == N_KEYS
    assert s["source"]["container"] == "bzImage (gzip)"
    assert s["other_site_tables"] == {".altinstructions": 10}


def test_cli_image_text(capsys, tiny_bz: str, tiny: Tiny) -> None:
    code, out, _ = run_cli(capsys, "image", "--image", tiny_bz)
    assert code == 0
    assert "ftrace sites: 299" in out and "288 'call __fentry__'" in out and "11 already NOP5" in out
    assert f"jump-label sites: {len(tiny.jump)}" in out and f"over {N_KEYS} static keys" in out
    assert "other site tables (counted, not patched): .altinstructions 10" in out


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["image", "{bz}", "--image-scale", "0.5"], "--image: cannot be combined with --image-scale 0.5"),
        (["run", "--image", "{bz}", "--image-scale", "0.5"], "--image: cannot be combined with --image-scale 0.5"),
        (["image", "{bz}", "--image", "other"], "--image: two images given"),
        (["stress", "--image", "{bz}", "--arch", "arm64"], "--arch: arm64 does not match --image"),
        (["stress", "--image", "{nokeys}"], "--source: static_keys needs static keys"),
        (["stress", "--image", "{nokeys}", "--source", "mixed", "--inject-bug", "key-race"], "--inject-bug: key-race is a static-key bug, and image"),
        (["image", "/nonexistent/vmlinuz"], "--image: '/nonexistent/vmlinuz': no such file"),
        (["bench", "--image", "{bz}", "--image-scale", "0.5"], "--image: cannot be combined with --image-scale 0.5"),
        (["bench", "--image", "/nonexistent/vmlinuz"], "--image: '/nonexistent/vmlinuz': no such file"),
    ],
)
def test_cli_bad_image_input(capsys, tiny_bz: str, no_keys_elf: str, argv: list[str], expect: str) -> None:
    argv = [a.format(bz=tiny_bz, nokeys=no_keys_elf) for a in argv]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: " + expect), err
    assert err.count("\n") == 1


def test_cli_error_from_a_fresh_process(tmp_path) -> None:
    bad = write(tmp_path, "junk", b"\x01" * 1000)
    proc = numaemu("image", bad)
    assert proc.returncode == 2
    assert proc.stderr == f"error: --image: '{bad}' is not a kernel image: not an ELF vmlinux, not a bzImage, and no compressed kernel inside\n"


@pytest.mark.slow
def test_stress_and_run_on_a_real_image_file(no_leaks, tmp_path, tiny_bz: str, no_keys_elf: str) -> None:
    out = tmp_path / "stress.json"
    # The tiny image is dense with sites, so its timeline runs at ~12,000 wall ns per emulated ns
    # and a static-key call at the default 1 us a site and copy takes ~3 s: cheaper writes let a
    # 0.5 s run make several calls and end within ~3 s (the image file is what is tested here).
    cheap = ("--timeline", "text_poke_ns=50")
    proc = numaemu("stress", "--image", tiny_bz, "--source", "ftrace", "--duration", "0.5", *cheap, "--json", str(out), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["ok"] and doc["image"]["name"] == "vmlinuz-tiny (Linux 6.1.0-tiny)"
    assert len(doc["topology"]["nodes"]) == 2
    # static keys on the tiny image's own keys, and mixed without any keys.
    for image, source in ((tiny_bz, "static_keys"), (no_keys_elf, "mixed")):
        proc = numaemu("stress", "--image", image, "--source", source, "--duration", "0.5", *cheap, "--json", str(out), timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(out.read_text())["patches_applied"] > 0, source
    run = tmp_path / "run.json"
    proc = numaemu("run", "--image", tiny_bz, "--duration", "0.3", "--verify", "--json", str(run), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(run.read_text())
    assert doc["image"]["source"]["container"] == "bzImage (gzip)"
    assert all(r["verified"] for r in doc["results"])
