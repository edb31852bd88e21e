"""The ``nosync`` protocol (arm64 ``aarch64_insn_patch_text_nosync`` + ``kick_all_cpus_sync``).

An arm64 instruction is one aligned 4-byte word, and such a store is single-copy atomic: a reader
sees the old instruction or the new one, never a mix. So each site is written with one store per
copy (the master first, then every node's copy, as King's patch does), and then every node is
kicked: the call returns once all have synchronised (an ISB), so none still runs what it fetched
before. ``no-sync`` skips the kick; ``no-final-sync`` kicks but does not wait for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numaemu.patching.kernel import NodeKernel

__all__ = ["nosync_batch"]


def nosync_batch(k: NodeKernel, sites: np.ndarray, new: np.ndarray) -> None:
    """Patch `sites` (sorted by address) to encodings `new`: one word store each, then the kick."""
    offset = k.sites.offset
    k.step("nosync: word stores")
    for s, row in zip(sites.tolist(), new, strict=True):
        k.text.write_word(int(offset[s]), bytes(row[:4]))
    k.step("nosync: the kick")
    if k.bug != "no-sync":
        k.sync(wait=k.bug != "no-final-sync")
