"""The ``text_poke_bp`` protocol (arch/x86/kernel/alternative.c, ``text_poke_bp_batch``) and its
INT3 handler (``poke_int3_handler``).

The patcher (`text_poke_bp_batch`) publishes up to 256 sites, sorted by address, in the descriptor
(`publish_descriptor`; stop_machine's patch function reads the same record), then:
(1) INT3 over the first byte of every site, sync; (2) bytes 1..len-1, sync; (3) the new first
byte, sync; (4) release the descriptor by one of the two 2019 fixes (`release_descriptor`:
``refcount`` waits until no INT3 handler holds a reference, ``extra-sync`` syncs once more), then
poison it. Bugs: ``descriptor-reuse`` (refcount) does not wait; ``no-int3-fix`` (extra-sync)
skips the extra sync; ``no-sync`` skips the sync after the INT3s; ``no-final-sync`` does not
wait for the last one.

A node that fetches an INT3 runs `poke_int3_handler` (reader.py calls it) with interrupts off: it
answers no sync while inside. Under ``refcount`` it takes a reference on the descriptor first;
it bsearches the descriptor for the site and emulates the site's new instruction. An INT3 that
is not in the descriptor is a kprobe's (``kprobe_int3_handler`` then emulates the probed
instruction).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from numaemu.host.clock import spin
from numaemu.host.fence import fence
from numaemu.model.sites import INT3, MAX_INSN, SiteTable
from numaemu.patching.copies import byte_ranges
from numaemu.patching.protocols import SMALL_SITES, W_INT3
from numaemu.patching.textmem import TextState

if TYPE_CHECKING:
    from numaemu.patching.kernel import NodeKernel

__all__ = ["POISON_FREE", "descriptor_bytes", "publish_descriptor", "text_poke_bp_batch", "release_descriptor", "poison_descriptor", "poke_int3_handler"]

POISON_FREE = 0x6B  # include/linux/poison.h


def publish_descriptor(k: NodeKernel, sites: np.ndarray, new: np.ndarray, live: bool = True) -> None:
    """Write the batch into the descriptor (a seqlock: generation odd while being written) and
    take the patcher's reference (``desc_live``; not with `live` False: stop_machine's patch
    function reads the same record, but sets no bp_desc for an INT3 handler to find)."""
    st = k.st
    # One record, one round at a time. text_mutex, held through every round, makes this wait
    # empty, except after a recovery that left a round to the living node applying it (the
    # dead node was its patcher: recovery.reset_protocols): the next patcher, free to take the
    # dead one's text_mutex, must not rewrite the record that node still reads.
    k.wait_for(lambda: st.get("stop_released") >= st.get("stop_seq"), "the previous stop_machine round")
    st.add("desc_gen")  # odd: being written
    fence()
    n = len(sites)
    st.desc_offset[:n] = k.sites.offset[sites]
    st.desc_site[:n] = sites
    st.desc_new[:n] = new
    st.set("desc_count", n)
    fence()  # the entries before the generation that says they are complete
    st.add("desc_gen")  # even: complete
    if live:
        st.set("desc_live", 1)


def descriptor_bytes(st: TextState, sites: SiteTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every byte of every entry's whole new instruction: (text offsets, values, entry of each
    byte), what stop_machine's patch function writes (and a recovery, for a round left open)."""
    n = st.get("desc_count")
    lens = sites.length[st.desc_site[:n].astype(np.int64)].astype(np.int64)
    owner = np.repeat(np.arange(n), lens)
    offs = np.repeat(st.desc_offset[:n], lens) + byte_ranges(lens)
    return offs, st.desc_new[:n][owner, byte_ranges(lens)], owner


def text_poke_bp_batch(k: NodeKernel, sites: np.ndarray, new: np.ndarray) -> None:
    """Patch `sites` (sorted by address) to encodings `new` (rows of 8 bytes) in three phases."""
    t = k.sites
    publish_descriptor(k, sites, new)
    offs = t.offset[sites]
    lens = t.length[sites].astype(np.int64)
    each = np.arange(len(sites))
    k.step("text_poke_bp: INT3 over the first bytes")
    k.text.poke(offs, np.full(len(sites), INT3, dtype=np.uint8), each)
    k.step("text_poke_bp: sync after the INT3s")
    if k.bug != "no-sync":
        k.sync(point="int3_sync")
    k.step("text_poke_bp: the tails")
    if len(sites) <= SMALL_SITES:  # a few sites: write each tail directly
        t0 = time.perf_counter_ns()
        for o, L, row in zip(offs.tolist(), lens.tolist(), new, strict=True):
            if L > 1:
                k.text.write_site(o + 1, row[1:L].tobytes())
        k.text.charge(len(sites), t0)
        k.step("text_poke_bp: sync after the tails")
        k.sync()
    elif np.any(lens > 1):
        tail = lens > 1
        tl = lens[tail] - 1
        owner = np.repeat(each[tail], tl)
        toffs = np.repeat(offs[tail], tl) + byte_ranges(tl) + 1
        tvals = new[owner, byte_ranges(tl) + 1]
        k.text.poke(toffs, tvals, owner)
        k.step("text_poke_bp: sync after the tails")
        k.sync()
    k.step("text_poke_bp: the new first bytes")
    k.text.poke(offs, new[:, 0].copy(), each)
    k.step("text_poke_bp: the final sync")
    k.sync(wait=k.bug != "no-final-sync")
    k.step("text_poke_bp: releasing the descriptor")
    release_descriptor(k)


def release_descriptor(k: NodeKernel) -> None:
    """End the batch: make sure no INT3 handler still reads the descriptor (by the run's 2019
    fix), then poison it, as the stack frame it lives on is reused (since commit 1f676247f36a the
    descriptor is on text_poke_bp_batch's stack) or bp_patching is cleared.

    ``refcount``: drop the patcher's reference and wait until no handler holds one
    (``descriptor-reuse`` does not wait). ``extra-sync``: clear the descriptor, then one more
    sync, which no node inside its handler can acknowledge (``no-int3-fix`` skips it: the kernel
    before both fixes)."""
    st, nodes = k.st, range(k.n_nodes)
    st.set("desc_live", 0)
    fence()  # dropped before the handlers' references are read (their fence pairs with this one)
    if k.int3_fix == "refcount":
        if k.bug != "descriptor-reuse":
            k.wait_for(lambda: not any(st.node_get(n, "in_int3") for n in nodes), "INT3 handlers to drop the descriptor")
    elif k.bug != "no-int3-fix":
        k.sync()
    poison_descriptor(st)


def poison_descriptor(st: TextState) -> None:
    """Overwrite the released descriptor with POISON_FREE (include/linux/poison.h), so that a
    handler still reading it finds garbage, as a use after free would (a seqlock: odd while
    being written)."""
    st.add("desc_gen")
    n = st.get("desc_count")
    st.desc_offset[:n] = -1
    st.desc_new[:n] = POISON_FREE
    st.set("desc_count", 0)
    st.add("desc_gen")


def poke_int3_handler(
    st: TextState,
    node: int,
    table: SiteTable,
    sites: np.ndarray,
    handler_ns: int = 0,
    mark: Callable[[int], int] | None = None,
    refcount: bool = True,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Node `node` hit INT3 at `sites`: find each site in the descriptor, emulate its new
    instruction. Returns (the instructions executed [n, MAX_INSN], whether the handler found a
    live, unchanged descriptor entry for each, whether what it read of the descriptor was
    consistent: not released, poisoned or rewritten under it). A site not found is left to the
    kprobe handler (the reader's part).

    The #BP handler runs with interrupts off: it answers no sync while inside (it never reaches
    a safe point), which is what Hiramatsu's extra-sync fix relies on. It spends `handler_ns`
    (the timeline's int3_ns, wall) between reading the descriptor's header and its entries, as
    the bsearch does. With `refcount` (Zijlstra's fix) it first takes a reference
    (``try_get_desc``: none if the patcher has dropped its own, then the INT3 is not ours)."""
    st.node_set(node, "in_int3", st.node_get(node, "in_int3") + 1)
    fence()  # the reference is seen before the handler looks at the descriptor (try_get_desc)
    prev = mark(W_INT3) if mark is not None else 0
    try:
        live = st.get("desc_live") == 1
        gen = st.get("desc_gen")
        if not live:
            # No batch in flight: try_get_desc() fails (refcount), or nr_entries reads 0
            # (extra-sync); the handler reads no further and leaves the INT3 to kprobes.
            n, same = 0, True
        else:
            if handler_ns:
                spin(handler_ns)  # interrupts off: no sync is answered meanwhile
            n = st.get("desc_count")
        offs = st.desc_offset[:n].copy()
        new = st.desc_new[:n].copy()
        if live:
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
    return out, ok, bool(same)
