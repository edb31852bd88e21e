"""A kernel's symbols: names, addresses, kallsyms types and sizes, and where they came from.

Three sources give them (issue 14): an ELF vmlinux's ``.symtab`` (sizes included), a
``System.map`` or ``/proc/kallsyms``-format file (``ADDRESS TYPE NAME``, one a line, as
scripts/mksysmap and kernel/kallsyms.c ``s_show`` write them; sizes then run to the next
symbol's address, as kallsyms_lookup_size_offset() computes them), and the kallsyms tables
embedded in a stripped image. This module is the pure half: parsing text and building the
table; files are read in `numaemu.host.files`.

A symbols file belongs to one build of one kernel: it is checked against the image through its
anchors, ``_text`` and ``_stext`` (the first bytes of .text, arch/x86/kernel/vmlinux.lds.S),
which must sit where the image's .text starts (KASLR moves both alike: the check is against
the image as loaded, before numaemu's own --kaslr).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from numaemu.errors import UsageError, excerpt
from numaemu.model.arrays import I64, U64

__all__ = ["SymbolTable", "parse_symbol_map", "symbol_table", "TEXT_TYPES", "ANCHORS"]

TEXT_TYPES = frozenset("TtWw")  # kallsyms types of code: global and local text, weak
ANCHORS = ("_text", "_stext")
MAX_SYMBOLS = 2_000_000  # a distro kernel has ~90,000 in vmlinux (+ modules in /proc/kallsyms)
_LINE = re.compile(r"([0-9a-fA-F]{1,16})\s+([A-Za-z?])\s+(\S+)(?:\s+\[(\S+)\])?\s*")


@dataclass(frozen=True, eq=False)
class SymbolTable:
    """Symbols sorted by address (ties in their original order)."""

    names: tuple[str, ...]
    addresses: U64
    types: str  # one kallsyms type letter per symbol
    sizes: I64  # bytes; from the next symbol's address where the source has none (-1: unknown)
    source: str  # where they came from, in words

    def __len__(self) -> int:
        return len(self.names)

    def address_of(self, name: str) -> int | None:
        """The first address `name` has, or None."""
        try:
            return int(self.addresses[self.names.index(name)])
        except ValueError:
            return None

    @property
    def n_functions(self) -> int:
        return sum(t in TEXT_TYPES for t in self.types)

    def check_anchors(self, text_vaddr: int, image: str, param: str = "--symbols") -> None:
        """Refuse a table of another kernel: its ``_text`` (else ``_stext``) must be where this
        image's .text starts."""
        for anchor in ANCHORS:
            at = self.address_of(anchor)
            if at is not None:
                if at != text_vaddr:
                    raise UsageError(param, f"{self.source} belongs to another kernel: its {anchor} is {at:#x}, but {image}'s .text starts at {text_vaddr:#x}")
                return
        raise UsageError(param, f"{self.source} has neither _text nor _stext, so it cannot be matched to {image}; give the System.map of this kernel")

    def summary(self) -> dict[str, Any]:
        return {"count": len(self), "functions": self.n_functions, "source": self.source}


def symbol_table(names: list[str], addresses: list[int], types: list[str], sizes: list[int] | None, source: str) -> SymbolTable:
    """A table from parallel lists (`sizes` None: each symbol runs to the next address)."""
    addr = np.array(addresses, dtype=np.uint64)
    order = np.argsort(addr, kind="stable")
    addr = addr[order]
    if sizes is None:
        size = np.full(len(addr), -1, dtype=np.int64)
        nxt = np.searchsorted(addr, addr, side="right")  # the first symbol past each address
        has = nxt < len(addr)
        size[has] = (addr[nxt[has]] - addr[has]).astype(np.int64)
    else:
        size = np.array(sizes, dtype=np.int64)[order]
    return SymbolTable(tuple(names[i] for i in order), addr, "".join(types[i] for i in order), size, source)


def parse_symbol_map(text: str, origin: str, param: str = "--symbols") -> SymbolTable:
    """A ``System.map`` or ``/proc/kallsyms``-format text (``ffffffff81000000 T _text``, a
    module's symbols followed by ``[module]``, which are left out: they are not in the image)."""
    if text.startswith("ffffffffffffffff B The real System.map is in the"):
        # Debian's kernel packages ship this one line as /boot/System.map-*; the real map is in
        # the -dbg package (/usr/lib/debug/boot/System.map-*).
        raise UsageError(param, f"{origin} is Debian's placeholder, not a symbol map: the real one is /usr/lib/debug/boot/{origin} in the package linux-image-<version>-dbg")
    names: list[str] = []
    addresses: list[int] = []
    types: list[str] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            raise UsageError(param, f"{origin}: line {i}: '{excerpt(line)}' is not 'ADDRESS TYPE NAME' (System.map or /proc/kallsyms format)")
        if m.group(4) is not None:
            continue  # a loadable module's symbol
        names.append(m.group(3))
        addresses.append(int(m.group(1), 16))
        types.append(m.group(2))
        if len(names) > MAX_SYMBOLS:
            raise UsageError(param, f"{origin}: more than {MAX_SYMBOLS:,} symbols; this is not one kernel's symbol table")
    if not names:
        raise UsageError(param, f"{origin}: no symbols")
    if not any(addresses):
        raise UsageError(param, f"{origin}: every address is 0 (kallsyms hides them from unprivileged readers, kernel.kptr_restrict): read /proc/kallsyms as root")
    return symbol_table(names, addresses, types, None, origin)
