"""Make numaemu/data/layout-*.npz: the embedded image's function layout, from a real kernel.

The embedded image (`numaemu.model.image.synthetic_image`) keeps a real distribution kernel's
text functions: their names, link order, offsets from ``_text`` and sizes. This script takes them
from the kernel's own kallsyms tables, recovered from its stripped vmlinuz (numaemu's
``load_image``, the ``kallsyms`` extra), and the sizes from the image's bytes: a function runs to
the next symbol, less the INT3 padding before it (``-falign-functions=16``). The bytes of the
embedded image stay synthetic; only this layout is shipped (about 0.4 MiB).

Made with (Debian 12's 6.12 cloud kernel; any 6.x distro kernel works the same way):

    apt-get download linux-image-6.12.118+deb12-cloud-amd64-unsigned
    dpkg -x linux-image-6.12.118+deb12-cloud-amd64-unsigned_6.12.118-1~deb12u1_amd64.deb pkg
    python scripts/make_kernel_layout.py pkg/boot/vmlinuz-6.12.118+deb12-cloud-amd64 \
        linux-image-6.12.118+deb12-cloud-amd64-unsigned_6.12.118-1~deb12u1_amd64.deb
"""

from __future__ import annotations

import json
import lzma
import sys
from pathlib import Path

import numpy as np

from numaemu.host.files import load_image
from numaemu.model.symbols import TEXT_TYPES

INT3 = 0xCC
PADDING = ("__pfx_", "__cfi_")


def main(vmlinuz: str, package: str) -> None:
    image = load_image(vmlinuz)
    syms = image.symbols
    if syms is None:
        sys.exit(f"error: no symbols recovered from {vmlinuz} (install numaemu[kallsyms])")
    text, rodata = image.section(".text"), image.section(".rodata")
    inside = [i for i, t in enumerate(syms.types) if t in TEXT_TYPES and text.vaddr <= int(syms.addresses[i]) < text.vaddr + text.size]
    # __pfx_/__cfi_ symbols (6.2+, CONFIG_CALL_PADDING and kCFI) name the 16 bytes of padding
    # before each function: they bound the function before, but are not functions.
    pick = [i for i in inside if not syms.names[i].startswith(PADDING)]
    bounds = np.unique((syms.addresses[inside] - np.uint64(text.vaddr)).astype(np.int64))
    addr = (syms.addresses[pick] - np.uint64(text.vaddr)).astype(np.int64)
    # Aliases share an address (SYSCALL_DEFINE0's __x64_sys_getpid and __ia32_sys_getpid): all
    # names are kept, since a recording may name any of them; each has its function's size.
    offsets = addr
    names = [syms.names[i] for i in pick]
    starts, which = np.unique(addr, return_inverse=True)
    ends = np.append(bounds, text.size)[np.searchsorted(bounds, starts, side="right")]
    unique_sizes = ends - starts
    data = image.data[text.offset : text.offset + text.size]
    for i in range(len(starts)):  # trailing INT3 padding is not the function's
        while unique_sizes[i] > 1 and data[starts[i] + unique_sizes[i] - 1] == INT3:
            unique_sizes[i] -= 1
    sizes = unique_sizes[which]
    meta = {
        "kernel": image.source.version if image.source else None,
        "release": Path(vmlinuz).name.removeprefix("vmlinuz-"),
        "package": Path(package).name,
        "symbols_from": syms.source,
        "text_size": text.size,
        "rodata_size": rodata.size,
        "functions": len(starts),
        "names": len(names),
        "command": "python scripts/make_kernel_layout.py " + " ".join(Path(a).name for a in sys.argv[1:]),
    }
    out = Path(__file__).resolve().parent.parent / "numaemu" / "data" / f"layout-{meta['release']}.npz"
    np.savez_compressed(
        out,
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        names=np.frombuffer(lzma.compress("\n".join(names).encode(), preset=9 | lzma.PRESET_EXTREME), dtype=np.uint8),
        offsets=np.diff(offsets, prepend=0).astype(np.uint32),
        sizes=sizes.astype(np.uint32),
    )
    print(f"{out}: {len(names):,} functions, {out.stat().st_size / 1024:.0f} KiB; {meta['kernel']}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
