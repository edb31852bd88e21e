"""Kernel symbols: System.map and /proc/kallsyms text, an ELF's .symtab, and the anchor check
that a symbols file belongs to the image (numaemu/model/symbols.py, kernel_symtab.py)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from numaemu.errors import UsageError
from numaemu.model.kernel_symtab import elf_symbols
from numaemu.model.symbols import parse_symbol_map

from .test_kernelfile import SHT_STRTAB, TEXT_VA, write_elf

SYSTEM_MAP = """\
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81000070 T secondary_startup_64
ffffffff81000040 t verify_cpu
ffffffff81382870 T __x64_sys_getpid
ffffffff813828a0 T __ia32_sys_getpid
ffffffff82000000 D jiffies
ffffffffc0a1b000 t nf_hook [nf_tables]
"""


def test_a_system_map_is_read_sorted_with_sizes_to_the_next_symbol():
    t = parse_symbol_map(SYSTEM_MAP, "System.map-6.1.0")
    assert len(t) == 7 and t.n_functions == 6  # the module's symbol is not the image's
    assert t.address_of("__x64_sys_getpid") == 0xFFFFFFFF81382870 and t.address_of("nf_hook") is None
    assert list(t.addresses) == sorted(t.addresses)
    assert t.names[:2] == ("_text", "startup_64")  # equal addresses keep their order
    sizes = dict(zip(t.names, t.sizes.tolist(), strict=True))
    assert sizes["_text"] == sizes["startup_64"] == 0x40 and sizes["__x64_sys_getpid"] == 0x30 and sizes["jiffies"] == -1
    assert t.summary() == {"count": 7, "functions": 6, "source": "System.map-6.1.0"}


@pytest.mark.parametrize(("text", "rule"), [
    ("ffffffff81000000 T _text\nnot a symbol line\n", "System.map: line 2: 'not a symbol line' is not 'ADDRESS TYPE NAME'"),
    ("ffffffff81000000 _text\n", "line 1: 'ffffffff81000000 _text' is not 'ADDRESS TYPE NAME'"),
    ("", "System.map: no symbols"),
    ("ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n",
     "System.map is Debian's placeholder, not a symbol map: the real one is /usr/lib/debug/boot/System.map in the package linux-image-<version>-dbg"),
    ("0000000000000000 T _text\n0000000000000000 T startup_64\n", "every address is 0 (kallsyms hides them from unprivileged readers"),
])
def test_a_malformed_symbols_file_is_one_line_naming_the_line(text, rule):
    with pytest.raises(UsageError) as info:
        parse_symbol_map(text, "System.map")
    assert str(info.value).startswith("--symbols: ") and rule in str(info.value)


def test_the_anchors_tell_a_symbols_file_of_another_kernel():
    t = parse_symbol_map(SYSTEM_MAP, "System.map-6.1.0")
    t.check_anchors(0xFFFFFFFF81000000, "vmlinuz-6.1.0")  # its own: nothing said
    with pytest.raises(UsageError, match=r"--symbols: System.map-6.1.0 belongs to another kernel: its _text is 0xffffffff81000000, but vmlinuz-x's \.text starts at 0xffffffff9a000000"):
        t.check_anchors(0xFFFFFFFF9A000000, "vmlinuz-x")
    no_anchor = parse_symbol_map("ffffffff81382870 T __x64_sys_getpid\n", "map")
    with pytest.raises(UsageError, match="has neither _text nor _stext"):
        no_anchor.check_anchors(0xFFFFFFFF81000000, "vmlinuz-x")


def _with_symtab(symbols: list[tuple[str, int, int, int, int]]) -> bytes:
    """An ELF with .text, .data, .symtab and .strtab: (name, info, shndx, value, size) each."""
    strtab = b"\0"
    entries = [b"\0" * 24]
    for name, info, shndx, value, size in symbols:
        entries.append(struct.pack("<IBBHQQ", len(strtab), info, 0, shndx, value, size))
        strtab += name.encode() + b"\0"
    secs = [(".text", 1, 0x6, TEXT_VA, b"\xc3" * 256), (".data", 1, 0x3, TEXT_VA + 0x1000, b"\0" * 64),
            (".symtab", 2, 0, 0, b"".join(entries)), (".strtab", SHT_STRTAB, 0, 0, strtab)]
    elf = bytearray(write_elf(secs))
    shoff = struct.unpack_from("<Q", elf, 40)[0]
    struct.pack_into("<IIQQ", elf, shoff + 64 * 3 + 40, 4, 1, 8, 24)  # .symtab: sh_link .strtab, sh_info, align, entsize
    return bytes(elf)


def test_an_elf_symtab_gives_names_sizes_and_kallsyms_letters():
    GLOBAL_FUNC, LOCAL_FUNC, WEAK_FUNC, GLOBAL_OBJECT, LOCAL_NOTYPE, FILE = 0x12, 0x02, 0x22, 0x11, 0x00, 0x04
    elf = _with_symtab([
        ("_text", 0x10, 1, TEXT_VA, 0), ("start", GLOBAL_FUNC, 1, TEXT_VA, 16), ("helper", LOCAL_FUNC, 1, TEXT_VA + 16, 32),
        ("maybe", WEAK_FUNC, 1, TEXT_VA + 48, 8), ("counter", GLOBAL_OBJECT, 2, TEXT_VA + 0x1000, 8),
        ("label", LOCAL_NOTYPE, 1, TEXT_VA + 64, 0), ("main.c", FILE, 0xFFF1, 0, 0), ("undefined", GLOBAL_FUNC, 0, 0, 0),
    ])
    t = elf_symbols(elf, "vmlinux")
    assert t is not None and t.source == "vmlinux (ELF .symtab)"
    assert dict(zip(t.names, t.types, strict=True)) == {"_text": "T", "start": "T", "helper": "t", "maybe": "W", "label": "t", "counter": "D"}
    assert dict(zip(t.names, t.sizes.tolist(), strict=True))["helper"] == 32  # the ELF's own sizes
    assert t.address_of("start") == TEXT_VA and np.all(np.diff(t.addresses.astype(np.int64)) >= 0)
    t.check_anchors(TEXT_VA, "vmlinux")
    stripped = write_elf([(".text", 1, 0x6, TEXT_VA, b"\xc3" * 64)])
    assert elf_symbols(stripped, "vmlinux") is None


def test_a_symbols_file_is_attached_through_the_cli_or_refused_in_one_line(tmp_path):
    from .conftest import numaemu

    good = tmp_path / "System.map"
    good.write_text("ffffffff81000000 T _text\nffffffff81000100 T foo\nffffffff81000200 d bar\n")
    proc = numaemu("image", "--image-scale", "0.05", "--symbols", str(good))
    assert proc.returncode == 0 and "symbols: 3 (2 functions), from System.map" in proc.stdout, proc.stderr
    other = tmp_path / "other.map"
    other.write_text("ffffffff9a000000 T _text\n")
    for path, rule in ((other, "--symbols: other.map belongs to another kernel: its _text is 0xffffffff9a000000"),
                       (tmp_path, "--symbols: cannot read '"), ("/dev/zero", "--symbols: '/dev/zero' is a device, not a regular file")):
        proc = numaemu("run", "--symbols", str(path))
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: {rule}") and proc.stderr.count("\n") == 1, proc.stderr


def test_kallsyms_lists_become_a_table_with_sizes_to_the_next_symbol():
    from numaemu.host.kallsyms import from_finder

    t = from_finder([0xFFFFFFFF81000000, 0xFFFFFFFF81000000, 0xFFFFFFFF810B0F40, 0x6000], ["T_text", "Tstartup_64", "T__x64_sys_getpid", "Acpu_tss_rw"], "vmlinuz")
    assert t is not None and t.source == "vmlinuz (kallsyms tables, vmlinux-to-elf)"
    assert t.names == ("cpu_tss_rw", "_text", "startup_64", "__x64_sys_getpid") and t.types == "ATTT"
    assert t.address_of("__x64_sys_getpid") == 0xFFFFFFFF810B0F40 and t.sizes.tolist()[1] == 0xB0F40
    assert from_finder([], [], "vmlinuz") is None


def test_the_kallsyms_library_is_installed_and_finds_nothing_where_there_is_none():
    """The real vmlinux-to-elf (the kallsyms extra, which tox installs) on an image built
    without kallsyms: None, quickly, and nothing logged. On Debian's 6.1.0-57 cloud vmlinuz it
    finds 87,347 symbols (README, "numaemu image")."""
    import logging

    from numaemu.host import kallsyms

    from .test_kernelfile import tiny_vmlinux

    assert kallsyms.available(), "the kallsyms extra is not installed: " + kallsyms.EXTRA_HINT
    assert kallsyms.recover_kallsyms(tiny_vmlinux().elf, "tiny") is None
    assert logging.root.manager.disable == logging.NOTSET  # the library's logging is off only meanwhile
