"""The embedded image's function layout: a real distribution kernel's text functions.

`numaemu/data/layout-<release>.npz` holds the names, link order, offsets from ``_text`` and sizes
of every text function of one real kernel (Debian 12's 6.12.118 cloud amd64: 50,646 functions,
50,726 names, 0.3 MiB), as ``scripts/make_kernel_layout.py`` took them from the kernel's own
kallsyms tables. 6.12 rather than bookworm's 6.1: the shipped recordings were made on 6.18, and
6.1 lacks much of what 6.12 and 6.18 share (the mmap path was rewritten in between: 9% of the
mmap recording's samples mapped onto 6.1 wholly by name, 84% onto 6.12).
`numaemu.model.image.synthetic_image` lays its synthetic bytes out along it, so a recording made
on any kernel maps onto the embedded image by function name (`numaemu.model.recording`).

Reading it is the one file access in `numaemu.model`: it is package data, the same constant input
on every machine, like a table written in the source.
"""

from __future__ import annotations

import json
import lzma
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from numaemu.model.arrays import I64

__all__ = ["DEFAULT_RELEASE", "KernelLayout", "default_layout", "package_text"]

DEFAULT_RELEASE = "6.12.118+deb12-cloud-amd64"


@dataclass(frozen=True, eq=False)
class KernelLayout:
    """Text symbols in link order: name, offset from ``_text``, size without padding. Aliases
    (several names at one address) each have a row."""

    names: tuple[str, ...]
    offsets: I64
    sizes: I64
    text_size: int
    rodata_size: int
    meta: dict[str, Any]  # kernel banner, package, the command that made the file


@cache
def default_layout() -> KernelLayout:
    with resources.files("numaemu").joinpath(f"data/layout-{DEFAULT_RELEASE}.npz").open("rb") as f, np.load(f) as z:
        meta = json.loads(z["meta"].tobytes())
        names = tuple(lzma.decompress(z["names"].tobytes()).decode().split("\n"))
        offsets = np.cumsum(z["offsets"].astype(np.int64))
        sizes = z["sizes"].astype(np.int64)
    return KernelLayout(names, offsets, sizes, int(meta["text_size"]), int(meta["rodata_size"]), meta)


def package_text(path: str) -> str:
    """A text file of the package's data (``data/workloads/db.rec``), as UTF-8."""
    return resources.files("numaemu").joinpath(path).read_text(encoding="utf-8")
