"""Real kernel images (``--image PATH``): an x86-64 ELF vmlinux, or a compressed vmlinuz/bzImage.

`parse_image` turns a file's bytes into a `KernelImage`; it is pure logic on bytes (the file is
read by `numaemu.host.files.load_image`, which caches the result per path). Bad input raises
``UsageError("--image", rule)``.

What is read, and how:

- **Containers** (`numaemu.model.kernel_unpack`): an ELF file as is; a bzImage/vmlinuz's
  compressed payload (gzip, xz, lzma, bzip2, zstd, legacy lz4); a bare compressed file; a stream
  found by scanning for the magics.
- **ELF** through pyelftools (`numaemu.model.kernel_elf`). Only section headers are needed:
  stripped images are the norm. ``.text`` and ``.rodata`` are copied into the image; the gap
  between them stays unmapped.
- **ftrace sites** and **jump labels** (x86-64), found by their shape
  (`numaemu.model.kernel_sites`). The master image is the text *after* boot: ``ftrace_init()``
  -> ``ftrace_make_nop()`` (arch/x86/kernel/ftrace.c) rewrites every ``call __fentry__`` to
  NOP5, and so does `parse_image`, so that state 0 holds everywhere.
- **Other site tables** with their own sections (``.altinstructions``, ``.retpoline_sites``, ...)
  are counted, not patched.

arm64: a raw ``Image`` is refused (no section headers), and so is an AArch64 ELF: without symbols
its ``-fpatchable-function-entry=2`` NOP pairs cannot be told reliably from the NOPs the assembler
pads code with, and a relocatable arm64 vmlinux leaves its call-site table's pointers to be
filled at boot (``--no-apply-dynamic-relocs``). The embedded arm64 image (``--arch arm64``) stays.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import PurePath

import numpy as np

from numaemu.errors import UsageError
from numaemu.model.arrays import I8, I64, U8
from numaemu.model.image import NOP2, NOP5, PAGE_SIZE, ImageSource, KernelImage, Section
from numaemu.model.kernel_elf import EM_AARCH64, EM_X86_64, ElfSection, other_tables, read_elf, version_banner
from numaemu.model.kernel_sites import find_ftrace, find_jump_table, function_sizes, jump_sites
from numaemu.model.kernel_symtab import elf_symbols
from numaemu.model.kernel_unpack import Refused, unpack

__all__ = ["PARAM", "MIN_FTRACE_SITES", "parse_image", "parse_image_elf"]

PARAM = "--image"
MIN_FTRACE_SITES = 8  # functions 1..3 stand in for the trampolines (sites.py)
MAX_SPAN = 1 << 30  # .text to the end of .rodata


def parse_image(blob: bytes, path: str) -> KernelImage:
    """The `KernelImage` in `blob` (a file's bytes; `path` names it in messages and the image)."""
    return parse_image_elf(blob, path)[0]


def parse_image_elf(blob: bytes, path: str) -> tuple[KernelImage, bytes]:
    """`parse_image`, and the ELF vmlinux it was built from (decompressed from `blob`)."""
    try:
        elf, container = unpack(blob)
        return _build(elf, container, path), elf
    except Refused as exc:
        raise UsageError(PARAM, f"'{path}' {exc}") from None


def _build(elf: bytes, container: str, path: str) -> KernelImage:
    machine, secs = read_elf(elf)
    if machine == EM_AARCH64:
        raise Refused(
            "is an arm64 (AArch64) vmlinux, which numaemu does not read: without symbols its "
            "-fpatchable-function-entry NOP pairs cannot be told from alignment padding; real "
            "images are x86-64 only (use --arch arm64 for the embedded arm64 image)"
        )
    if machine != EM_X86_64:
        raise Refused(f"is an ELF for {machine}; numaemu reads x86-64 kernels")
    by_name = {s.name: s for s in secs}
    text = by_name.get(".text")
    if text is None or text.data is None or not text.exec:
        raise Refused("is an ELF file without an executable .text section: not a kernel vmlinux")
    rodata = by_name.get(".rodata")
    if rodata is None or rodata.data is None:
        raise Refused("is an ELF file without a .rodata section: not a kernel vmlinux")
    ro_off = rodata.vaddr - text.vaddr
    if ro_off < text.size or ro_off + rodata.size > MAX_SPAN:
        raise Refused(f"has .rodata at {rodata.vaddr:#x}, not within {MAX_SPAN >> 20} MiB after .text ({text.vaddr:#x}): an unexpected layout")
    image = _analyse_x86(secs, text, rodata, container, path)
    return replace(image, symbols=elf_symbols(elf, PurePath(path).name))


# ------------------------------------------------------------------------------------------
# x86-64 analysis (offsets are from the .text address throughout)


def _analyse_x86(secs: list[ElfSection], text: ElfSection, rodata: ElfSection, container: str, path: str) -> KernelImage:
    base = text.vaddr
    t = text.data
    assert t is not None and rodata.data is not None
    others = other_tables(secs, base)
    jt = find_jump_table(secs, base)
    # Aligned NOP5s that some other table owns are not ftrace sites.
    owned = np.unique(np.concatenate([jt.code if jt else np.zeros(0, np.int64)] + [p for _, _, p in others]))
    ft = find_ftrace(t, owned)
    if len(ft.sites) < MIN_FTRACE_SITES:
        raise Refused(
            f"has {len(ft.sites)} ftrace sites (16-byte-aligned 'call __fentry__' or NOP5): numaemu needs at least "
            f"{MIN_FTRACE_SITES}; is it built with CONFIG_DYNAMIC_FTRACE (-mfentry)?"
        )
    sizes = function_sizes(t, ft.functions)

    js: I64
    jl: I8
    if jt is not None:
        js, jl, jtarget, jkey, jmp, skipped = jump_sites(jt, len(t), ft.sites)
    else:
        js = jtarget = jkey = np.zeros(0, np.int64)
        jl = np.zeros(0, np.int8)
        jmp = skipped = 0
    key_addr, keys = np.unique(jkey, return_inverse=True)

    ro_off = rodata.vaddr - base
    data = _master(t, rodata.data, ro_off, ft.sites, js, jl)
    version = version_banner(rodata.data)
    release = version.split()[2] if version and len(version.split()) > 2 else None
    name = PurePath(path).name + (f" (Linux {release})" if release and release not in PurePath(path).name else "")
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


def _master(t: U8, rodata: U8, ro_off: int, ftrace: I64, js: I64, jl: I8) -> U8:
    """The image's bytes, read-only: .text at 0, .rodata at `ro_off`, the gap zero, every site
    in state 0.

    The master is the text after boot: ftrace_init() -> ftrace_make_nop() rewrites every
    `call __fentry__` to NOP5 (arch/x86/kernel/ftrace.c); numaemu starts every static key
    disabled, so every jump-label site holds its NOP (state 0 of sites.py), as
    jump_label_init() would leave a kernel whose keys are all off.
    """
    span = -(-(ro_off + len(rodata)) // PAGE_SIZE) * PAGE_SIZE
    data = np.zeros(span, dtype=np.uint8)
    data[: len(t)] = t
    data[ro_off : ro_off + len(rodata)] = rodata
    data[ftrace[:, None] + np.arange(5)] = np.frombuffer(NOP5, dtype=np.uint8)
    two, five = js[jl == 2], js[jl == 5]
    data[two[:, None] + np.arange(2)] = np.frombuffer(NOP2, dtype=np.uint8)
    data[five[:, None] + np.arange(5)] = np.frombuffer(NOP5, dtype=np.uint8)
    data.flags.writeable = False
    return data
