"""Real kernel images (``--image PATH``): an x86-64 ELF vmlinux, or a compressed vmlinuz/bzImage.

`load_image` reads the file (and caches the result per path within the process); everything else
is pure logic on bytes. Bad input raises ``UsageError("--image", rule)``.

What is read, and how:

- **Containers.** An ELF file as is. An x86 bzImage/vmlinuz: the real-mode setup header
  (arch/x86/boot/header.S: ``HdrS`` at 0x202, ``setup_sects`` at 0x1f1 (0 means 4),
  ``payload_offset`` and ``payload_length`` at 0x248/0x24c, relative to the protected-mode code
  at ``(setup_sects + 1) * 512``) locates the compressed vmlinux. Payloads by magic: gzip, xz,
  lzma, bzip2 (the standard library), zstd (package ``zstandard``) and the kernel's legacy lz4
  framing (package ``lz4``; lib/decompress_unlz4.c). Every format but gzip is followed by the
  4-byte decompressed size (scripts/Makefile.lib, ``size_append``), which is ignored. A bare
  compressed file (vmlinux.gz) is accepted too, and so is a stream found by scanning for the
  magics (an arm64 vmlinuz is a gzip of a raw ``Image``, refused after decompressing: a raw
  Image has no section headers).
- **ELF** through pyelftools. Only section headers are needed: stripped images are the norm.
  ``.text`` and ``.rodata`` are copied into the image; the gap between them stays unmapped.
- **ftrace sites** (x86-64): with ``-mfentry`` every traceable function starts with
  ``call __fentry__``, and functions are 16-byte aligned. So: the 16-byte-aligned ``e8 rel32``
  calls, whose most frequent target is ``__fentry__``, plus aligned NOP5s the build already
  converted (those that are not another table's site), plus both forms 4 bytes after an ENDBR64
  (CONFIG_X86_KERNEL_IBT: the function starts at the ENDBR, the site is at +4). The master image
  is the text *after* boot: ``ftrace_init()`` -> ``ftrace_make_nop()`` (arch/x86/kernel/ftrace.c)
  rewrites every such call to NOP5, and so does `parse_image`, so that state 0 holds everywhere.
- **Jump labels** (x86-64): a stripped image has no ``__start___jump_table`` symbol, but the table
  has a shape nothing else has: 16-byte ``struct jump_entry { s32 code; s32 target; long key; }``
  (include/linux/jump_label.h, CONFIG_HAVE_ARCH_JUMP_LABEL_RELATIVE: each field relative to its
  own address; the key's two low bits are flags) whose code and target lie in executable
  sections, whose key lies in an allocated section, and whose code holds NOP2, NOP5, ``eb rel8``
  or ``e9 rel32`` (a JMP landing on the target). The longest run of such entries in any
  allocated, non-executable PROGBITS section is the table (in 6.1 it sits at the end of
  ``.rodata``, with ``.data..ro_after_init``); fewer than `MIN_JUMP_ENTRIES` means none.
- **Other site tables** with their own sections (``.altinstructions``, ``.retpoline_sites``, ...)
  are counted, not patched.

arm64: a raw ``Image`` is refused (no section headers), and so is an AArch64 ELF: without symbols
its ``-fpatchable-function-entry=2`` NOP pairs cannot be told reliably from the NOPs the assembler
pads code with, and a relocatable arm64 vmlinux leaves its call-site table's pointers to be
filled at boot (``--no-apply-dynamic-relocs``). The embedded arm64 image (``--arch arm64``) stays.
"""

from __future__ import annotations

import bz2
import importlib
import io
import lzma
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.elffile import ELFFile

from numaemu.errors import UsageError
from numaemu.model.image import INT3, NOP2, NOP5, PAGE_SIZE, ImageSource, KernelImage, Section

__all__ = [
    "EXTRA_HINT",
    "FORMATS",
    "MIN_JUMP_ENTRIES",
    "load_image",
    "parse_image",
    "unpack",
    "decompress",
    "clear_cache",
]

PARAM = "--image"
EXTRA_HINT = "pip install 'numaemu[kernel]'"
ELF_MAGIC = b"\x7fELF"
ARM64_IMAGE_MAGIC = b"ARM\x64"  # at 0x38 of a raw arm64 Image (Documentation/arm64/booting.rst)
ENDBR64 = bytes.fromhex("f30f1efa")
LZ4_LEGACY_MAGIC = 0x184C2102  # lib/decompress_unlz4.c: ARCHIVE_MAGICNUMBER
LZ4_CHUNK = 8 << 20  # lib/decompress_unlz4.c: LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE
FUNC_ALIGN = 16
MIN_FTRACE_SITES = 8  # functions 1..3 stand in for the trampolines (sites.py)
MIN_JUMP_ENTRIES = 64  # a shorter run of jump_entry-shaped words is not taken for the table
MAX_SPAN = 1 << 30  # .text to the end of .rodata
SCAN_CANDIDATES = 32  # magics tried when a file has no known header
PROBE_BYTES = 1 << 16

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
EM_X86_64, EM_AARCH64 = "EM_X86_64", "EM_AARCH64"


@dataclass(frozen=True)
class Format:
    """A compressed payload format the kernel build can produce."""

    name: str
    magic: bytes
    package: str | None  # the optional package that decompresses it; None: the standard library


FORMATS: tuple[Format, ...] = (
    Format("gzip", bytes.fromhex("1f8b08"), None),  # 08: deflate, the only method in use
    Format("xz", bytes.fromhex("fd377a585a00"), None),
    Format("lzma", bytes.fromhex("5d0000"), None),
    Format("bzip2", b"BZh", None),
    Format("zstd", bytes.fromhex("28b52ffd"), "zstandard"),
    Format("lz4-legacy", struct.pack("<I", LZ4_LEGACY_MAGIC), "lz4"),
)


class _Refused(Exception):
    """A rule the file broke; `parse_image` names the file in the `UsageError`."""


# ------------------------------------------------------------------------------------------
# Reading the file


_CACHE: dict[tuple[str, int, int], KernelImage] = {}


def load_image(path: str | os.PathLike) -> KernelImage:
    """The kernel image in the file at `path`; cached per (path, mtime, size) in this process
    (decompressing and scanning a distro kernel takes about a second)."""
    if not str(path).strip():
        raise UsageError(PARAM, "is empty; give a kernel image file")
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UsageError(PARAM, f"'{path}': no such file") from None
    except OSError as exc:
        raise UsageError(PARAM, f"'{path}': cannot read it: {exc.strerror}") from None
    if p.is_dir():
        raise UsageError(PARAM, f"'{path}' is a directory; give a kernel image file")
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        try:
            blob = p.read_bytes()
        except OSError as exc:
            raise UsageError(PARAM, f"'{path}': cannot read it: {exc.strerror}") from None
        _CACHE[key] = parse_image(blob, str(path))
    return _CACHE[key]


def clear_cache() -> None:
    _CACHE.clear()


# ------------------------------------------------------------------------------------------
# Pure logic from here on


def parse_image(blob: bytes, path: str) -> KernelImage:
    """The `KernelImage` in `blob` (a file's bytes; `path` names it in messages and the image)."""
    try:
        elf, container = unpack(blob)
        return _build(elf, container, path)
    except _Refused as exc:
        raise UsageError(PARAM, f"'{path}' {exc}") from None


def unpack(blob: bytes) -> tuple[bytes, str]:
    """The ELF vmlinux inside `blob`, and what held it ("ELF", "gzip", "bzImage (lz4-legacy)")."""
    if not blob:
        raise _Refused("is empty")
    if blob[:4] == ELF_MAGIC:
        return blob, "ELF"
    if _is_raw_arm64(blob):
        raise _Refused(_RAW_ARM64)
    if len(blob) >= 0x202 + 4 and blob[0x202:0x206] == b"HdrS":
        payload = _bzimage_payload(blob)
        fmt = _format_at(payload)
        if fmt is None:
            raise _Refused(f"is a bzImage whose payload starts {payload[:6].hex(' ')}: not a compression format numaemu knows ({', '.join(f.name for f in FORMATS)})")
        return _inner(decompress(fmt, payload), f"bzImage ({fmt.name})")
    fmt = _format_at(blob)
    if fmt is not None:
        return _inner(decompress(fmt, blob), fmt.name)
    return _scan(blob)


_RAW_ARM64 = (
    "is a raw arm64 Image: it has no ELF section headers, which numaemu needs to find .text, "
    ".rodata and the patch-site tables; give the vmlinux ELF (from the build tree or the "
    "distro's debug package), although numaemu reads x86-64 kernels only for now"
)


def _is_raw_arm64(data: bytes) -> bool:
    return data[0x38:0x3C] == ARM64_IMAGE_MAGIC


def _bzimage_payload(blob: bytes) -> bytes:
    """The compressed vmlinux of a bzImage (arch/x86/boot/header.S, boot protocol >= 2.08)."""
    if len(blob) < 0x250:
        raise _Refused("is truncated: it ends inside the bzImage setup header")
    version = struct.unpack_from("<H", blob, 0x206)[0]
    if version < 0x208:
        raise _Refused(f"is a bzImage of boot protocol {version >> 8}.{version & 0xFF:02d}; numaemu needs 2.08 or later (payload_offset)")
    setup_sects = blob[0x1F1] or 4  # 0 means 4, for old bootloaders' sake
    start = (setup_sects + 1) * 512
    offset, length = struct.unpack_from("<II", blob, 0x248)
    begin, end = start + offset, start + offset + length
    if length == 0:
        raise _Refused("is a bzImage whose setup header gives no payload (payload_length 0)")
    if end > len(blob):
        raise _Refused(f"is truncated: its bzImage header puts the payload at bytes {begin:,}..{end:,}, but the file has {len(blob):,}")
    return blob[begin:end]


def _format_at(data: bytes, pos: int = 0) -> Format | None:
    for fmt in FORMATS:
        if data.startswith(fmt.magic, pos):
            return fmt
    return None


def _inner(data: bytes, container: str) -> tuple[bytes, str]:
    if data[:4] == ELF_MAGIC:
        return data, container
    if _is_raw_arm64(data):
        raise _Refused(f"holds ({container}) {_RAW_ARM64.removeprefix('is ')}")
    raise _Refused(f"holds {container} data that is not an ELF vmlinux (it starts {data[:8].hex(' ')})")


def _scan(blob: bytes) -> tuple[bytes, str]:
    """No known header: try the compressed streams whose magic appears in the file, in order."""
    found = sorted(
        (pos, i)
        for i, fmt in enumerate(FORMATS)
        for pos in _find_all(blob, fmt.magic, SCAN_CANDIDATES)
    )[:SCAN_CANDIDATES]
    missing: list[Format] = []
    view = memoryview(blob)
    for pos, i in found:
        fmt = FORMATS[i]
        try:
            head = decompress(fmt, view[pos:], probe=True)
        except _Missing:
            missing.append(fmt)
            continue
        except _Refused:
            continue  # not a stream after all: a magic by chance
        if head[:4] != ELF_MAGIC and not _is_raw_arm64(head):
            continue  # a stream, but not of a kernel
        return _inner(decompress(fmt, view[pos:]), f"{fmt.name} at byte {pos:,}")
    if missing:
        raise _Refused(_missing_rule(missing[0]))
    raise _Refused("is not a kernel image: not an ELF vmlinux, not a bzImage, and no compressed kernel inside")


def _find_all(data: bytes, magic: bytes, limit: int) -> list[int]:
    out, pos = [], data.find(magic)
    while pos >= 0 and len(out) < limit:
        out.append(pos)
        pos = data.find(magic, pos + 1)
    return out


class _Missing(_Refused):
    """An optional package the payload needs is not installed."""


def _missing_rule(fmt: Format) -> str:
    return f"has a {fmt.name}-compressed payload, which needs the optional package '{fmt.package}': {EXTRA_HINT}"


def _package(fmt: Format, module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise _Missing(_missing_rule(fmt)) from None


def decompress(fmt: Format, data: bytes | memoryview, probe: bool = False) -> bytes:
    """Decompress a whole `fmt` stream. Trailing bytes after the stream's end (the build's
    size_append) are ignored. `probe`: only the start of the output (its first chunk or what
    the first PROBE_BYTES of input give), without the end-of-stream check."""
    if fmt.name == "lz4-legacy":
        return _unlz4_legacy(data, _package(fmt, "lz4.block"), probe)
    if fmt.name == "zstd":
        zstd = _package(fmt, "zstandard")
        # The kernel's zstd -22 --ultra may use a window beyond the library's default limit.
        d = zstd.ZstdDecompressor(max_window_size=1 << 31).decompressobj()
        errors: tuple[type[Exception], ...] = (zstd.ZstdError,)
    elif fmt.name == "gzip":
        d, errors = zlib.decompressobj(16 + zlib.MAX_WBITS), (zlib.error,)
    elif fmt.name == "xz":
        d, errors = lzma.LZMADecompressor(lzma.FORMAT_XZ), (lzma.LZMAError,)
    elif fmt.name == "lzma":
        d, errors = lzma.LZMADecompressor(lzma.FORMAT_ALONE), (lzma.LZMAError,)
    elif fmt.name == "bzip2":
        d, errors = bz2.BZ2Decompressor(), (OSError, ValueError)
    else:  # pragma: no cover - FORMATS and this function go together
        raise AssertionError(fmt.name)
    try:
        out = d.decompress(data[:PROBE_BYTES] if probe else data)
    except errors as exc:
        raise _Refused(f"holds a {fmt.name} stream that does not decompress: {exc}") from None
    if not d.eof and not probe:
        raise _Refused(f"is truncated: its {fmt.name} stream ends before its end marker")
    return out


def _unlz4_legacy(data: bytes, block, probe: bool) -> bytes:
    """The kernel's legacy lz4 framing (lib/decompress_unlz4.c): the magic, then chunks, each a
    u32 LE compressed size and one LZ4 block of at most 8 MiB decompressed; the magic may appear
    again between chunks (concatenated streams). The build appends the u32 LE decompressed size
    (scripts/Makefile.lib, size_append): 4 bytes left that equal the output so far end it."""
    pos, n, total, out = 4, len(data), 0, []
    while pos < n:
        if n - pos < 4:
            if probe:
                break
            raise _Refused("is truncated: its lz4 stream ends inside a chunk header")
        size = struct.unpack_from("<I", data, pos)[0]
        if size == LZ4_LEGACY_MAGIC:
            pos += 4
            continue
        if n - pos == 4 and size == total:
            break  # size_append
        pos += 4
        if size > n - pos:
            if probe:
                break
            raise _Refused(f"is truncated: an lz4 chunk of {size:,} bytes starts {n - pos:,} bytes before the end")
        try:
            chunk = block.decompress(data[pos : pos + size], uncompressed_size=LZ4_CHUNK)
        except block.LZ4BlockError as exc:
            raise _Refused(f"holds an lz4 chunk that does not decompress: {exc}") from None
        out.append(chunk)
        total += len(chunk)
        pos += size
        if probe:
            break
    return b"".join(out)


# ------------------------------------------------------------------------------------------
# ELF


@dataclass(frozen=True, eq=False)
class _Sec:
    name: str
    kind: str  # SHT_PROGBITS, SHT_NOBITS, ...
    flags: int
    vaddr: int
    size: int
    data: np.ndarray | None  # uint8; None for sections without file bytes

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC) and self.vaddr != 0  # .data..percpu sits at 0

    @property
    def exec(self) -> bool:
        return self.alloc and bool(self.flags & SHF_EXECINSTR)


def _read_elf(elf: bytes) -> tuple[str, list[_Sec]]:
    """(e_machine, sections) through pyelftools."""
    if len(elf) < 64:
        raise _Refused("is truncated: it ends inside the ELF header")
    try:
        ef = ELFFile(io.BytesIO(elf))
        hdr = ef.header
        if ef.elfclass != 64 or not ef.little_endian:
            raise _Refused(f"is a {ef.elfclass}-bit {'little' if ef.little_endian else 'big'}-endian ELF; numaemu reads 64-bit little-endian kernels")
        shoff, shnum, shentsize = hdr["e_shoff"], hdr["e_shnum"], hdr["e_shentsize"]
        if shnum == 0 or shoff == 0:
            raise _Refused("is an ELF file without section headers; numaemu needs them to find .text and .rodata")
        if shoff + shnum * shentsize > len(elf):
            raise _Refused(f"is truncated: its ELF section headers lie at bytes {shoff:,}..{shoff + shnum * shentsize:,}, but it has {len(elf):,}")
        secs = []
        for s in ef.iter_sections():
            kind, size, off = s["sh_type"], s["sh_size"], s["sh_offset"]
            data = None
            if kind not in ("SHT_NOBITS", "SHT_NULL") and size:
                if off + size > len(elf):
                    raise _Refused(f"is truncated: section {s.name} lies at bytes {off:,}..{off + size:,}, but it has {len(elf):,}")
                data = np.frombuffer(elf, dtype=np.uint8, count=size, offset=off)
            secs.append(_Sec(s.name, kind, s["sh_flags"], s["sh_addr"], size, data))
        return hdr["e_machine"], secs
    except (ELFError, ELFParseError, struct.error, ValueError) as exc:
        raise _Refused(f"is not a readable ELF file ({exc}): truncated or damaged?") from None


def _build(elf: bytes, container: str, path: str) -> KernelImage:
    machine, secs = _read_elf(elf)
    if machine == EM_AARCH64:
        raise _Refused(
            "is an arm64 (AArch64) vmlinux, which numaemu does not read: without symbols its "
            "-fpatchable-function-entry NOP pairs cannot be told from alignment padding; real "
            "images are x86-64 only (use --arch arm64 for the embedded arm64 image)"
        )
    if machine != EM_X86_64:
        raise _Refused(f"is an ELF for {machine}; numaemu reads x86-64 kernels")
    by_name = {s.name: s for s in secs}
    text = by_name.get(".text")
    if text is None or text.data is None or not text.exec:
        raise _Refused("is an ELF file without an executable .text section: not a kernel vmlinux")
    rodata = by_name.get(".rodata")
    if rodata is None or rodata.data is None:
        raise _Refused("is an ELF file without a .rodata section: not a kernel vmlinux")
    ro_off = rodata.vaddr - text.vaddr
    if ro_off < text.size or ro_off + rodata.size > MAX_SPAN:
        raise _Refused(f"has .rodata at {rodata.vaddr:#x}, not within {MAX_SPAN >> 20} MiB after .text ({text.vaddr:#x}): an unexpected layout")
    return _analyse_x86(secs, text, rodata, container, path)


# ------------------------------------------------------------------------------------------
# x86-64 analysis (offsets are from the .text address throughout)


def _analyse_x86(secs: list[_Sec], text: _Sec, rodata: _Sec, container: str, path: str) -> KernelImage:
    base = text.vaddr
    t = text.data
    assert t is not None and rodata.data is not None
    others = _other_tables(secs, base)
    jt = _find_jump_table(secs, base)
    # Aligned NOP5s that some other table owns are not ftrace sites.
    owned = np.unique(np.concatenate([jt.code if jt else np.zeros(0, np.int64)] + [p for _, _, p in others]))
    ft = _find_ftrace(t, owned)
    if len(ft.sites) < MIN_FTRACE_SITES:
        raise _Refused(
            f"has {len(ft.sites)} ftrace sites (16-byte-aligned 'call __fentry__' or NOP5): numaemu needs at least "
            f"{MIN_FTRACE_SITES}; is it built with CONFIG_DYNAMIC_FTRACE (-mfentry)?"
        )
    sizes = _function_sizes(t, ft.functions)

    if jt is not None:
        js, jl, jtarget, jkey, jmp, skipped = _jump_sites(jt, len(t), ft.sites)
    else:
        js = jtarget = jkey = np.zeros(0, np.int64)
        jl = np.zeros(0, np.int8)
        jmp = skipped = 0
    key_addr, keys = np.unique(jkey, return_inverse=True)

    ro_off = rodata.vaddr - base
    span = -(-(ro_off + rodata.size) // PAGE_SIZE) * PAGE_SIZE
    data = np.zeros(span, dtype=np.uint8)
    data[: len(t)] = t
    data[ro_off : ro_off + rodata.size] = rodata.data
    # The master is the text after boot: ftrace_init() -> ftrace_make_nop() rewrites every
    # `call __fentry__` to NOP5 (arch/x86/kernel/ftrace.c); numaemu starts every static key
    # disabled, so every jump-label site holds its NOP (state 0 of sites.py), as
    # jump_label_init() would leave a kernel whose keys are all off.
    data[ft.sites[:, None] + np.arange(5)] = np.frombuffer(NOP5, dtype=np.uint8)
    two, five = js[jl == 2], js[jl == 5]
    data[two[:, None] + np.arange(2)] = np.frombuffer(NOP2, dtype=np.uint8)
    data[five[:, None] + np.arange(5)] = np.frombuffer(NOP5, dtype=np.uint8)
    data.flags.writeable = False

    version = _version(rodata.data)
    release = version.split()[2] if version and len(version.split()) > 2 else None
    name = Path(path).name + (f" (Linux {release})" if release and release not in Path(path).name else "")
    source = ImageSource(
        path=path,
        container=container,
        version=version,
        fentry=None if ft.fentry is None else base + ft.fentry,
        ftrace_calls=ft.calls,
        ftrace_nops=ft.nops,
        ftrace_endbr=ft.endbr,
        jump_table=None if jt is None else jt.vaddr,
        jump_entries=0 if jt is None else len(jt.code),
        jump_skipped=skipped,
        jump_sites_jmp=jmp,
        other_site_tables=tuple((name_, n) for name_, n, _ in others),
    )
    return KernelImage(
        name=name,
        arch="x86_64",
        base=base,
        sections=(Section(".text", base, text.size, 0), Section(".rodata", rodata.vaddr, rodata.size, ro_off)),
        data=data,
        functions=ft.functions,
        function_sizes=sizes,
        jump_sites=js,
        jump_lengths=jl,
        jump_keys=keys.astype(np.int32),
        n_keys=len(key_addr),
        seed=0,
        scale=1.0,
        jump_targets=jtarget,
        ftrace_offsets=None if np.array_equal(ft.sites, ft.functions) else ft.sites,
        source=source,
    )


def _le32(t: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Signed little-endian 32-bit values at byte offsets `pos` of `t` (int64)."""
    b = t[pos[:, None] + np.arange(4)].astype(np.int64)
    v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)
    return (v ^ 0x80000000) - 0x80000000


def _holds(t: np.ndarray, pos: np.ndarray, pattern: bytes) -> np.ndarray:
    return np.all(t[pos[:, None] + np.arange(len(pattern))] == np.frombuffer(pattern, dtype=np.uint8), axis=1)


@dataclass(frozen=True, eq=False)
class _Ftrace:
    sites: np.ndarray  # int64, sorted
    functions: np.ndarray  # int64: the site, or the site - 4 after an ENDBR64
    fentry: int | None  # offset of __fentry__
    calls: int
    nops: int
    endbr: int


def _find_ftrace(t: np.ndarray, owned: np.ndarray) -> _Ftrace:
    """The ftrace sites of .text `t`: 16-byte-aligned ``call __fentry__`` or NOP5, at the aligned
    start or 4 bytes after an ENDBR64 there. `owned`: sites of other tables (not ftrace's)."""
    al = np.arange(0, max(0, len(t) - 8), FUNC_ALIGN, dtype=np.int64)  # room for ENDBR64 + 5
    endbr = _holds(t, al, ENDBR64)
    entry = np.where(endbr, al + 4, al)
    call = t[entry] == 0xE8
    target = entry + 5 + _le32(t, entry + 1)
    fentry = None
    hits = target[call & (target >= 0) & (target < len(t))]
    if len(hits):
        # The most-called target of aligned calls is __fentry__: every traceable function
        # calls it first, and nothing else is called from ~all function entries.
        values, counts = np.unique(hits, return_counts=True)
        fentry = int(values[np.argmax(counts)])
    is_call = call & (target == fentry) if fentry is not None else np.zeros(len(al), bool)
    is_nop = _holds(t, entry, NOP5) & ~np.isin(entry, owned)
    keep = is_call | is_nop
    return _Ftrace(
        sites=entry[keep],
        functions=al[keep],
        fentry=fentry,
        calls=int(np.count_nonzero(is_call)),
        nops=int(np.count_nonzero(is_nop)),
        endbr=int(np.count_nonzero(keep & endbr)),
    )


def _function_sizes(t: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Distance to the next function start (the last one: to the end of .text), less the INT3
    padding before it; at least 16 bytes."""
    nxt = np.append(starts[1:], len(t)).astype(np.int64)
    w = 64
    lo = np.maximum(nxt - w, starts)
    idx = lo[:, None] + np.arange(w)
    inside = idx < nxt[:, None]
    body = inside & (t[np.minimum(idx, len(t) - 1)] != INT3)
    has = body.any(axis=1)
    end = np.where(has, lo + w - np.argmax(body[:, ::-1], axis=1), lo)
    for i in np.flatnonzero(~has & (lo > starts)):  # more than `w` bytes of padding: rare
        nz = np.flatnonzero(t[starts[i] : nxt[i]] != INT3)
        end[i] = starts[i] + (nz[-1] + 1 if len(nz) else 0)
    return np.clip(end - starts, FUNC_ALIGN, nxt - starts).astype(np.int64)


def _ranges(secs: list[_Sec], base: int, pick) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (starts, ends) of the chosen sections, as offsets from `base`."""
    r = sorted((s.vaddr - base, s.vaddr - base + s.size) for s in secs if pick(s) and s.size)
    return np.array([a for a, _ in r], dtype=np.int64), np.array([b for _, b in r], dtype=np.int64)


def _inside(x: np.ndarray, ranges: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    starts, ends = ranges
    if len(starts) == 0:
        return np.zeros(len(x), bool)
    i = np.searchsorted(starts, x, side="right") - 1
    return (i >= 0) & (x < ends[np.maximum(i, 0)])


@dataclass(frozen=True, eq=False)
class _JumpTable:
    vaddr: int
    code: np.ndarray  # int64 offsets from .text
    target: np.ndarray
    key: np.ndarray  # the key's offset (flags masked)
    length: np.ndarray  # int8: 2 or 5
    jmp: np.ndarray  # bool: the build left a JMP there


def _find_jump_table(secs: list[_Sec], base: int) -> _JumpTable | None:
    """The __jump_table: the longest run of valid `struct jump_entry`s (relative form) in any
    allocated, non-executable PROGBITS section; None below MIN_JUMP_ENTRIES entries."""
    execs = [s for s in secs if s.exec and s.data is not None]
    exec_r = _ranges(secs, base, lambda s: s.exec)
    alloc_r = _ranges(secs, base, lambda s: s.alloc)
    best: tuple[int, _Sec, int, int] | None = None  # (entries, section, first byte, first word)
    for sec in secs:
        if not sec.alloc or sec.exec or sec.kind != "SHT_PROGBITS" or sec.data is None or sec.size < 16 * MIN_JUMP_ENTRIES:
            continue
        first = (-sec.vaddr) % 8  # entries are 8-aligned (_ASM_ALIGN), so 16 bytes apart from there
        words = sec.data[first : first + (sec.size - first) // 8 * 8].view("<i8")
        if len(words) < 2:
            continue
        code, target, key = _entries(words, sec.vaddr + first - base)
        ok = _inside(code, exec_r) & _inside(target, exec_r) & _inside(key, alloc_r)
        ok[ok] = _jump_insn(code[ok], target[ok], execs, base)[0]
        for phase in (0, 1):
            length, start = _longest_run(ok[phase::2])
            if length and (best is None or length > best[0]):
                best = (length, sec, first, phase + 2 * start)
    if best is None or best[0] < MIN_JUMP_ENTRIES:
        return None
    length, sec, first, w0 = best
    words = sec.data[first : first + (sec.size - first) // 8 * 8].view("<i8")
    code, target, key = _entries(words, sec.vaddr + first - base)
    pick = w0 + 2 * np.arange(length)
    code, target, key = code[pick], target[pick], key[pick]
    _, lengths, jmp = _jump_insn(code, target, execs, base)
    return _JumpTable(sec.vaddr + first + 8 * w0, code, target, key, lengths, jmp)


def _entries(words: np.ndarray, rel0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a `struct jump_entry` at every 8-byte word but the last: its code, target and key
    (flags masked), as offsets from the .text address. `rel0`: the first word's offset."""
    halves = words[:-1].view("<i4").reshape(-1, 2).astype(np.int64)
    at = rel0 + 8 * np.arange(len(words) - 1, dtype=np.int64)
    code = at + halves[:, 0]  # &entry->code + code
    target = at + 4 + halves[:, 1]  # &entry->target + target
    with np.errstate(over="ignore"):
        key = (at + 8 + words[1:]) & ~np.int64(3)  # &entry->key + key, two flag bits
    return code, target, key


def _jump_insn(code: np.ndarray, target: np.ndarray, execs: list[_Sec], base: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        pos = code[m] - lo
        b0 = t[pos]
        rel8 = t[pos + 1].astype(np.int8).astype(np.int64)
        reach = target[m] - (code[m] + 2)
        nop2 = (b0 == 0x66) & (t[pos + 1] == 0x90) & (reach >= -128) & (reach <= 127)
        jmp8 = (b0 == 0xEB) & (code[m] + 2 + rel8 == target[m])
        nop5 = _holds(t, pos, NOP5)
        jmp32 = (b0 == 0xE9) & (code[m] + 5 + _le32(t, pos + 1) == target[m])
        ok[m] = nop2 | jmp8 | nop5 | jmp32
        length[m] = np.where(nop2 | jmp8, 2, np.where(nop5 | jmp32, 5, 0))
        jmp[m] = jmp8 | jmp32
    return ok, length, jmp


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    """(length, start) of the longest run of True in `mask`; (0, 0) if none."""
    if not mask.any():
        return 0, 0
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    i = int(np.argmax(ends - starts))
    return int(ends[i] - starts[i]), int(starts[i])


def _jump_sites(jt: _JumpTable, text_size: int, ftrace: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
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


def _other_tables(secs: list[_Sec], base: int) -> list[tuple[str, int, np.ndarray]]:
    """(section, entries pointing into executable code, those pointers that are in .text)."""
    by_name = {s.name: s for s in secs}
    exec_r = _ranges(secs, base, lambda s: s.exec)
    text = by_name[".text"]
    out = []
    for name, layouts in OTHER_TABLES:
        sec = by_name.get(name)
        if sec is None or sec.data is None:
            continue
        best: tuple[int, int, np.ndarray] | None = None  # (fits, count, pointers)
        for size, kind in layouts:
            n = sec.size // size
            if n == 0:
                continue
            rows = sec.data[: n * size].reshape(n, size)
            if kind == "rel32":
                field = rows[:, :4].copy().view("<i4")[:, 0].astype(np.int64)
                ptr = (sec.vaddr - base) + size * np.arange(n, dtype=np.int64) + field
            else:
                raw = rows[:, :8].copy().view("<u8")[:, 0]
                ptr = (raw - np.uint64(base)).view(np.int64)
            good = _inside(ptr, exec_r)
            cand = (int(sec.size % size == 0), int(np.count_nonzero(good)), ptr[good])
            if best is None or cand[:2] > best[:2]:
                best = cand
        if best is not None:
            ptrs = best[2]
            out.append((name, best[1], ptrs[(ptrs >= 0) & (ptrs < text.size)]))
    return out


def _version(rodata: np.ndarray) -> str | None:
    """The ``Linux version ...`` banner (init/version.c, linux_banner), if .rodata holds it."""
    raw = rodata.tobytes()
    at = raw.find(b"Linux version ")
    if at < 0:
        return None
    end = min(x for x in (raw.find(b"\n", at), raw.find(b"\0", at), at + 512) if x >= 0)
    return raw[at:end].decode("ascii", "replace").strip()
