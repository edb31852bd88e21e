"""The ELF vmlinux inside a kernel image file's bytes: containers and decompression (pure).

An ELF file is taken as is. An x86 bzImage/vmlinuz: the real-mode setup header
(arch/x86/boot/header.S: ``HdrS`` at 0x202, ``setup_sects`` at 0x1f1 (0 means 4),
``payload_offset`` and ``payload_length`` at 0x248/0x24c, relative to the protected-mode code at
``(setup_sects + 1) * 512``) locates the compressed vmlinux. Payloads by magic: gzip, xz, lzma,
bzip2 (the standard library), zstd (package ``zstandard``) and the kernel's legacy lz4 framing
(package ``lz4``; lib/decompress_unlz4.c). Every format but gzip is followed by the 4-byte
decompressed size (scripts/Makefile.lib, ``size_append``), which is ignored. A bare compressed
file (vmlinux.gz) is accepted too, and so is a stream found by scanning for the magics (an arm64
vmlinuz is a gzip of a raw ``Image``, refused after decompressing: a raw Image has no section
headers).

A file that breaks a rule raises `Refused` with the rule; `numaemu.model.kernelfile.parse_image`
names the file in the `UsageError`.
"""

from __future__ import annotations

import bz2
import importlib
import lzma
import struct
import zlib
from dataclasses import dataclass
from types import ModuleType

__all__ = ["EXTRA_HINT", "ELF_MAGIC", "FORMATS", "Format", "Refused", "MissingPackage", "unpack", "decompress"]

EXTRA_HINT = "pip install 'numaemu[kernel]'"
ELF_MAGIC = b"\x7fELF"
ARM64_IMAGE_MAGIC = b"ARM\x64"  # at 0x38 of a raw arm64 Image (Documentation/arm64/booting.rst)
LZ4_LEGACY_MAGIC = 0x184C2102  # lib/decompress_unlz4.c: ARCHIVE_MAGICNUMBER
LZ4_CHUNK = 8 << 20  # lib/decompress_unlz4.c: LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE
SCAN_CANDIDATES = 32  # magics tried when a file has no known header
PROBE_BYTES = 1 << 16


class Refused(Exception):
    """A rule the file broke; `parse_image` names the file in the `UsageError`."""


class MissingPackage(Refused):
    """An optional package the payload needs is not installed."""


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


def unpack(blob: bytes) -> tuple[bytes, str]:
    """The ELF vmlinux inside `blob`, and what held it ("ELF", "gzip", "bzImage (lz4-legacy)")."""
    if not blob:
        raise Refused("is empty")
    if blob[:4] == ELF_MAGIC:
        return blob, "ELF"
    if _is_raw_arm64(blob):
        raise Refused(_RAW_ARM64)
    if len(blob) >= 0x202 + 4 and blob[0x202:0x206] == b"HdrS":
        payload = _bzimage_payload(blob)
        fmt = _format_at(payload)
        if fmt is None:
            raise Refused(f"is a bzImage whose payload starts {payload[:6].hex(' ')}: not a compression format numaemu knows ({', '.join(f.name for f in FORMATS)})")
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
        raise Refused("is truncated: it ends inside the bzImage setup header")
    version = struct.unpack_from("<H", blob, 0x206)[0]
    if version < 0x208:
        raise Refused(f"is a bzImage of boot protocol {version >> 8}.{version & 0xFF:02d}; numaemu needs 2.08 or later (payload_offset)")
    setup_sects = blob[0x1F1] or 4  # 0 means 4, for old bootloaders' sake
    start = (setup_sects + 1) * 512
    offset, length = struct.unpack_from("<II", blob, 0x248)
    begin, end = start + offset, start + offset + length
    if length == 0:
        raise Refused("is a bzImage whose setup header gives no payload (payload_length 0)")
    if end > len(blob):
        raise Refused(f"is truncated: its bzImage header puts the payload at bytes {begin:,}..{end:,}, but the file has {len(blob):,}")
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
        raise Refused(f"holds ({container}) {_RAW_ARM64.removeprefix('is ')}")
    raise Refused(f"holds {container} data that is not an ELF vmlinux (it starts {data[:8].hex(' ')})")


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
        except MissingPackage:
            missing.append(fmt)
            continue
        except Refused:
            continue  # not a stream after all: a magic by chance
        if head[:4] != ELF_MAGIC and not _is_raw_arm64(head):
            continue  # a stream, but not of a kernel
        return _inner(decompress(fmt, view[pos:]), f"{fmt.name} at byte {pos:,}")
    if missing:
        raise Refused(_missing_rule(missing[0]))
    raise Refused("is not a kernel image: not an ELF vmlinux, not a bzImage, and no compressed kernel inside")


def _find_all(data: bytes, magic: bytes, limit: int) -> list[int]:
    out: list[int] = []
    pos = data.find(magic)
    while pos >= 0 and len(out) < limit:
        out.append(pos)
        pos = data.find(magic, pos + 1)
    return out


def _missing_rule(fmt: Format) -> str:
    return f"has a {fmt.name}-compressed payload, which needs the optional package '{fmt.package}': {EXTRA_HINT}"


def _package(fmt: Format, module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackage(_missing_rule(fmt)) from None


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
        out: bytes = d.decompress(data[:PROBE_BYTES] if probe else data)
    except errors as exc:
        raise Refused(f"holds a {fmt.name} stream that does not decompress: {exc}") from None
    if not d.eof and not probe:
        raise Refused(f"is truncated: its {fmt.name} stream ends before its end marker")
    return out


def _unlz4_legacy(data: bytes | memoryview, block: ModuleType, probe: bool) -> bytes:
    """The kernel's legacy lz4 framing (lib/decompress_unlz4.c): the magic, then chunks, each a
    u32 LE compressed size and one LZ4 block of at most 8 MiB decompressed; the magic may appear
    again between chunks (concatenated streams). The build appends the u32 LE decompressed size
    (scripts/Makefile.lib, size_append): 4 bytes left that equal the output so far end it."""
    pos, n, total = 4, len(data), 0
    out: list[bytes] = []
    while pos < n:
        if n - pos < 4:
            if probe:
                break
            raise Refused("is truncated: its lz4 stream ends inside a chunk header")
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
            raise Refused(f"is truncated: an lz4 chunk of {size:,} bytes starts {n - pos:,} bytes before the end")
        try:
            chunk: bytes = block.decompress(data[pos : pos + size], uncompressed_size=LZ4_CHUNK)
        except block.LZ4BlockError as exc:
            raise Refused(f"holds an lz4 chunk that does not decompress: {exc}") from None
        out.append(chunk)
        total += len(chunk)
        pos += size
        if probe:
            break
    return b"".join(out)
