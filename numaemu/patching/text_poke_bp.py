"""The ``text_poke_bp`` protocol (arch/x86/kernel/alternative.c, ``text_poke_bp_batch``) and its
INT3 handler (``poke_int3_handler``).

The patcher (`text_poke_bp_batch`) publishes up to 256 sites, sorted by address, in the descriptor
(`publish_descriptor`; stop_machine's patch function reads the same record), then:
(1) INT3 over the first byte of every site, sync; (2) bytes 1..len-1, sync; (3) the new first
byte, sync; (4) drop the patcher's reference and wait until no INT3 handler still holds one
before the descriptor can be reused (the ``descriptor-reuse`` bug does not wait, and its
descriptor, on the patcher's stack, is overwritten as the call returns; ``no-sync``
skips the sync after the INT3s; ``no-final-sync`` does not wait for the last one).

A node that fetches an INT3 from a site being patched runs `poke_int3_handler` (reader.py calls
it): it takes a reference on the descriptor, keeps taking part in syncs while it is inside,
bsearches the descriptor for the site and emulates the site's new instruction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from numaemu.model.sites import INT3, MAX_INSN, SiteTable
from numaemu.patching.protocols import SMALL_SITES, W_INT3
from numaemu.patching.textmem import TextState, byte_ranges

if TYPE_CHECKING:
    from numaemu.patching.kernel import NodeKernel

__all__ = ["HANDLER_NS", "publish_descriptor", "text_poke_bp_batch", "poke_int3_handler"]

HANDLER_NS = 200_000  # time inside the INT3 handler before it emulates (a slow path: NMI context, tracing)


def publish_descriptor(k: NodeKernel, sites: np.ndarray, new: np.ndarray) -> None:
    """Write the batch into the descriptor (a seqlock: generation odd while being written) and
    take the patcher's reference (``desc_live``)."""
    st = k.st
    st.add("desc_gen")  # odd: being written
    n = len(sites)
    st.desc_offset[:n] = k.sites.offset[sites]
    st.desc_site[:n] = sites
    st.desc_new[:n] = new
    st.set("desc_count", n)
    st.add("desc_gen")  # even: complete
    st.set("desc_live", 1)


def text_poke_bp_batch(k: NodeKernel, sites: np.ndarray, new: np.ndarray) -> None:
    """Patch `sites` (sorted by address) to encodings `new` (rows of 8 bytes) in three phases."""
    t = k.sites
    publish_descriptor(k, sites, new)
    offs = t.offset[sites]
    lens = t.length[sites].astype(np.int64)
    each = np.arange(len(sites))
    k.text.poke(offs, np.full(len(sites), INT3, dtype=np.uint8), each)
    if k.bug != "no-sync":
        k.sync(point="int3_sync")
    if len(sites) <= SMALL_SITES:  # a few sites: write each tail directly
        t0 = time.perf_counter_ns()
        for o, L, row in zip(offs.tolist(), lens.tolist(), new, strict=True):
            if L > 1:
                k.text.write_site(o + 1, row[1:L].tobytes())
        k.text.charge(len(sites), t0)
        k.sync()
    elif np.any(lens > 1):
        tail = lens > 1
        tl = lens[tail] - 1
        owner = np.repeat(each[tail], tl)
        toffs = np.repeat(offs[tail], tl) + byte_ranges(tl) + 1
        tvals = new[owner, byte_ranges(tl) + 1]
        k.text.poke(toffs, tvals, owner)
        k.sync()
    k.text.poke(offs, new[:, 0].copy(), each)
    k.sync(wait=k.bug != "no-final-sync")
    k.st.set("desc_live", 0)  # drop the patcher's reference
    st, nodes = k.st, range(k.n_nodes)
    if k.bug != "descriptor-reuse":
        k.wait_for(lambda: not any(st.node_get(n, "in_int3") for n in nodes), "INT3 handlers to drop the descriptor")
    else:
        # The descriptor lives on the patcher's stack (text_poke_bp_batch's struct
        # bp_patching_desc since commit 1f676247f36a, 5.6, "x86/alternatives: Implement a better
        # poke_int3_handler() completion scheme"): without the wait, the frame is reused as soon
        # as the call returns, under a handler that may still be reading it. So it is
        # overwritten here at once, rather than at the next call's publish, which on a quiet
        # host may come too late for any handler to see it (the bug then went unseen in CI).
        st.add("desc_gen")
        st.set("desc_count", 0)
        st.add("desc_gen")


def poke_int3_handler(
    st: TextState,
    node: int,
    table: SiteTable,
    sites: np.ndarray,
    safe_point: Callable[[], None],
    handler_ns: int = HANDLER_NS,
    mark: Callable[[int], int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Node `node` hit INT3 at `sites`: take a reference, find each site, emulate its new
    instruction. Returns (the instructions executed [n, MAX_INSN], whether the handler found a
    live, unchanged descriptor entry for each)."""
    st.node_set(node, "in_int3", st.node_get(node, "in_int3") + 1)
    prev = mark(W_INT3) if mark is not None else 0
    try:
        live = st.get("desc_live") == 1
        gen = st.get("desc_gen")
        # Inside the handler the node still answers syncs (every read of this batch is
        # done, so it is not part-way through any fetch), so the handler can outlive the
        # patcher's syncs and even the rest of its call; only the reference keeps the
        # descriptor alive (the 2019 fix: bp_desc refcount, arch/x86/kernel/alternative.c).
        end = time.perf_counter_ns() + handler_ns
        while True:
            safe_point()
            if time.perf_counter_ns() >= end:
                break
        n = st.get("desc_count")
        offs = st.desc_offset[:n].copy()
        new = st.desc_new[:n].copy()
        same = st.get("desc_gen") == gen and gen % 2 == 0
    finally:
        st.node_set(node, "in_int3", st.node_get(node, "in_int3") - 1)
        if mark is not None:
            mark(prev)
    want = table.offset[sites]
    idx = np.minimum(np.searchsorted(offs, want), max(n - 1, 0))
    found = (offs[idx] == want) if n else np.zeros(len(sites), dtype=bool)
    ok = found & live & same
    out = np.zeros((len(sites), MAX_INSN), dtype=np.uint8)
    if n:
        out[ok] = new[idx[ok]]
    return out, ok
