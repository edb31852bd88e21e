"""The symbols of an ELF vmlinux, from its ``.symtab`` (pure: on the file's bytes).

pyelftools finds the section and its string table (``sh_link``); the 24-byte ``Elf64_Sym``
entries themselves are decoded as one numpy record array, since a distro vmlinux has ~100,000
of them and pyelftools' per-symbol objects take seconds. Each symbol gets the kallsyms type
letter `scripts/kallsyms` would give it (T/t text, W weak, D/d data, R/r rodata, B/b bss),
from its binding and the flags of the section it is in, so the table reads as System.map does.
"""

from __future__ import annotations

import io

import numpy as np
from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.elffile import ELFFile

from numaemu.model.symbols import SymbolTable, symbol_table

__all__ = ["elf_symbols"]

ELF64_SYM = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"), ("value", "<u8"), ("size", "<u8")])
STB_GLOBAL, STB_WEAK = 1, 2
STT_FILE, STT_SECTION = 4, 3
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
SHN_UNDEF, SHN_ABS = 0, 0xFFF1


def elf_symbols(elf: bytes, origin: str) -> SymbolTable | None:
    """The ``.symtab`` of `elf` as a `SymbolTable` (None: stripped, or no symbol in it)."""
    try:
        ef = ELFFile(io.BytesIO(elf))
        sec = ef.get_section_by_name(".symtab")
        if sec is None or sec["sh_entsize"] != ELF64_SYM.itemsize:
            return None
        strtab = ef.get_section(sec["sh_link"])
        flags = [int(s["sh_flags"]) for s in ef.iter_sections()]
        kinds = [s["sh_type"] for s in ef.iter_sections()]
        off, size = int(sec["sh_offset"]), int(sec["sh_size"])
        soff, ssize = int(strtab["sh_offset"]), int(strtab["sh_size"])
    except (ELFError, ELFParseError, ValueError):
        return None
    if off + size > len(elf) or soff + ssize > len(elf):
        return None
    syms = np.frombuffer(elf, dtype=ELF64_SYM, count=size // ELF64_SYM.itemsize, offset=off)
    strings = elf[soff : soff + ssize]
    kind = syms["info"] & 0xF
    keep = (syms["shndx"] != SHN_UNDEF) & (kind != STT_FILE) & (kind != STT_SECTION) & (syms["name"] != 0)
    syms = syms[keep]
    if not len(syms):
        return None
    names = [strings[n : strings.index(b"\0", n)].decode("ascii", "replace") for n in syms["name"].tolist()]
    types = [_type_letter(int(i) >> 4, int(x), flags, kinds) for i, x in zip(syms["info"].tolist(), syms["shndx"].tolist(), strict=True)]
    return symbol_table(names, syms["value"].tolist(), types, syms["size"].astype(np.int64).tolist(), f"{origin} (ELF .symtab)")


def _type_letter(bind: int, shndx: int, flags: list[int], kinds: list[str]) -> str:
    """scripts/kallsyms' letter: by the section's flags, upper case for a global symbol."""
    if bind == STB_WEAK:
        return "W"
    if shndx == SHN_ABS or shndx >= len(flags):
        letter = "a"
    elif flags[shndx] & SHF_EXECINSTR:
        letter = "t"
    elif kinds[shndx] == "SHT_NOBITS":
        letter = "b"
    elif flags[shndx] & SHF_WRITE:
        letter = "d"
    elif flags[shndx] & SHF_ALLOC:
        letter = "r"
    else:
        letter = "n"
    return letter.upper() if bind == STB_GLOBAL else letter
