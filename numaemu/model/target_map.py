"""The functions of an image by name, for mapping recorded frames onto it (pure).

`target_map` indexes an image's text symbols (the embedded layout's, an ELF's, or the kallsyms
recovered from a stripped vmlinuz) with their offsets, sizes and subsystems, once per image;
`base_name` is the name a function has in any build of the same source; `standin_start` is where
a function the image lacks is replayed (`numaemu.model.replay`, step 1).
"""

from __future__ import annotations

import weakref
import zlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from numaemu.model.arrays import I64
from numaemu.model.image import KernelImage
from numaemu.model.subsystems import OTHER, SUBSYSTEMS, by_index, classify, subsystem_of_name
from numaemu.model.symbols import TEXT_TYPES

__all__ = ["TargetMap", "target_map", "base_name", "standin_start", "subsystem_of"]


@dataclass(frozen=True, eq=False)
class TargetMap:
    """The image's functions by name: offset from the base, size, subsystem."""

    index: dict[str, int]
    names: tuple[str, ...]
    starts: I64
    sizes: I64
    subsystems: I64
    text_lo: int  # the .text span, as offsets
    text_hi: int
    by_subsystem: tuple[I64, ...]

    @cached_property
    def base_index(self) -> dict[str, int]:
        """By `base_name`: the same function under another build's name (built at the first
        name the image lacks)."""
        out: dict[str, int] = {}
        for i, n in enumerate(self.names):
            out.setdefault(base_name(n), i)
        return out


_TARGETS: weakref.WeakKeyDictionary[KernelImage, TargetMap] = weakref.WeakKeyDictionary()


def target_map(image: KernelImage) -> TargetMap:
    """Names → functions of `image` (its symbols; without them, nameless functions by index).
    Kept while the image lives: classifying 50,000 names costs ~0.2 s, and a bench builds every
    workload on one image."""
    if image not in _TARGETS:
        _TARGETS[image] = _target_map(image)
    return _TARGETS[image]


def _target_map(image: KernelImage) -> TargetMap:
    text = image.section(".text")
    syms = image.symbols
    if syms is not None:
        types = np.frombuffer(syms.types.encode("ascii"), dtype="S1")
        inside = (syms.addresses >= np.uint64(text.vaddr)) & (syms.addresses < np.uint64(text.vaddr + text.size))
        pick = np.flatnonzero(np.isin(types, [t.encode() for t in TEXT_TYPES]) & inside)
        names = [syms.names[i] for i in pick.tolist()]
        starts = (syms.addresses[pick] - np.uint64(text.vaddr)).astype(np.int64) + text.offset
        sizes = np.maximum(1, syms.sizes[pick])
        subs = classify(names)
        index: dict[str, int] = {}
        for i, n in enumerate(names):
            index.setdefault(n, i)
    else:
        index, names, starts, sizes = {}, [], image.functions.astype(np.int64), image.function_sizes.astype(np.int64)
        subs = by_index(len(starts))
    groups = tuple(np.flatnonzero(subs == s) for s in range(len(SUBSYSTEMS)))
    return TargetMap(index, tuple(names), starts, sizes, subs, text.offset, text.offset + text.size, groups)


def base_name(name: str) -> str:
    """A function's name without what differs between builds of the same source: GCC's clone
    suffixes (``.isra.0``, ``.constprop.0``, ``.part.0``, ``.cold``) and the ``_noprof`` that
    6.10's allocation profiling gave the allocators (``kmem_cache_alloc_noprof``, commit
    7bd230a26648, "mm/slab: enable slab allocation tagging for kmalloc and friends")."""
    name = name.split(".", 1)[0]
    return name.removesuffix("_noprof")


def standin_start(tm: TargetMap, name: str, subsystem: int) -> int:
    """Where a missing function's stand-in starts: at a function of its subsystem, by a hash of
    its name (any function of the image when the subsystem has none)."""
    group = tm.by_subsystem[subsystem]
    if len(group) == 0:
        group = np.arange(len(tm.starts))
    if len(group) == 0:  # an image without a function: the start of its text
        return tm.text_lo
    return int(tm.starts[group[zlib.crc32(name.encode()) % len(group)]])


def subsystem_of(tm: TargetMap, name: str) -> int:
    """The subsystem of `name`: the image's classification, else its name's rule, else other."""
    i = tm.index.get(name)
    if i is not None:
        return int(tm.subsystems[i])
    r = subsystem_of_name(name)
    return OTHER if r < 0 else r
