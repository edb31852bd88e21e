"""The kallsyms tables embedded in a stripped kernel, recovered with vmlinux-to-elf.

A distro vmlinuz has no ``.symtab``, but every kernel built with CONFIG_KALLSYMS carries its
symbol table compressed in .rodata (kernel/kallsyms.c: ``kallsyms_names``, ``kallsyms_offsets``
relative to ``kallsyms_relative_base`` since 4.6, ``kallsyms_token_table``), which
vmlinux-to-elf's `KallsymsFinder` finds and decodes (the ``kallsyms`` extra, GPL-3.0-or-later:
installed on demand, never imported unless asked). It is here, not in `model`, because the
library also opens its own SQLite database of kernel builds on every call.

Kallsyms has names, addresses and type letters but no sizes: a symbol runs to the next address
(`symbols.symbol_table`), as kallsyms_lookup_size_offset() itself reckons. Per-CPU symbols come
back as type ``A``, as scripts/kallsyms encodes them. On the Debian 6.1 cloud kernel it finds
87,347 symbols in ~5 s, every address equal to the -dbg package's System.map.
"""

from __future__ import annotations

import logging
from typing import Any

from numaemu.model.symbols import SymbolTable, symbol_table

__all__ = ["recover_kallsyms", "available", "EXTRA_HINT"]

EXTRA_HINT = "pip install 'numaemu[kallsyms]'"


def available() -> bool:
    try:
        import vmlinux_to_elf  # noqa: F401
    except ImportError:
        return False
    return True


def recover_kallsyms(elf: bytes, origin: str) -> SymbolTable | None:
    """The kallsyms table inside `elf` (a decompressed vmlinux), or None when the library is
    not installed or finds none (a kernel built without CONFIG_KALLSYMS)."""
    try:
        from vmlinux_to_elf.core.kallsyms import KallsymsFinder
    except ImportError:
        return None
    # The library logs through the root logger (a kernel database's URLs, guesses); it must not
    # reach a numaemu user. logging.disable is process-wide: restored at once.
    logging.disable(logging.WARNING)
    try:
        finder: Any = KallsymsFinder(elf, 64)
    except (ValueError, AssertionError, IndexError):  # KallsymsNotFoundException is a ValueError
        return None
    finally:
        logging.disable(logging.NOTSET)
    return from_finder(finder.kernel_addresses, finder.symbol_names, origin)


def from_finder(addresses: list[int], names: list[str], origin: str) -> SymbolTable | None:
    """A table from `KallsymsFinder`'s parallel lists (each name led by its type letter)."""
    if not names:
        return None
    return symbol_table([n[1:] for n in names], list(addresses), [n[0] for n in names], None, f"{origin} (kallsyms tables, vmlinux-to-elf)")
