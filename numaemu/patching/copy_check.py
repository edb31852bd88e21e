"""The checks a patch call makes on the text it patches: the old bytes before (an *unexpected
op* is the kernel's BUG() in text_poke_bp's caller, e.g. arch/x86/kernel/jump_label.c
`jump_label_transform`'s bug_at()), and every copy after (each replica equals the master).

Small calls (up to SMALL_SITES sites) compare bytes through memoryviews, with no numpy; larger
ones gather every byte of every site at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from numaemu.patching.copies import byte_ranges
from numaemu.patching.protocols import SMALL_SITES

if TYPE_CHECKING:
    from numaemu.patching.kernel import NodeKernel

__all__ = ["check_copies", "verify_old"]


def check_copies(k: NodeKernel, sites: np.ndarray) -> None:
    """After the call: every copy of the patched sites equals the master."""
    t, st, mv = k.sites, k.st, k.text
    if len(sites) <= SMALL_SITES:  # compare just the sites' bytes
        for s in sites.tolist():
            o, L = int(t.offset[s]), int(t.length[s])
            ref = mv.master_mv[o : o + L]
            for copy, tgt in enumerate(k.copies.targets_of(o)):
                if mv.mem_mv[tgt : tgt + L] != ref:
                    st.record_failure(k.node, -1 - o // 4096, b"", bytes([copy]))
        return
    # Every byte of every patched site, in every copy (the whole copies are compared with
    # the master at the end of a run).
    lens = t.length[sites].astype(np.int64)
    offs = np.repeat(t.offset[sites], lens) + byte_ranges(lens)
    ref = k.master[offs]
    for copy, row in enumerate(k.copies.targets(offs)):
        held = row >= 0
        for o in offs[held][k.mem[row[held]] != ref[held]][:1]:
            st.record_failure(k.node, -1 - int(o) // 4096, b"", bytes([copy]))


def verify_old(k: NodeKernel, sites: np.ndarray, old_states: np.ndarray) -> np.ndarray:
    t = k.sites
    if len(sites) <= SMALL_SITES:
        ok = np.ones(len(sites), dtype=bool)
        for i, (s, old) in enumerate(zip(sites.tolist(), old_states.tolist(), strict=True)):
            o, L = int(t.offset[s]), int(t.length[s])
            want = t.enc[s, old, :L].tobytes()
            found = k.text.master_mv[o : o + L].tobytes()
            if found != want:  # "unexpected op": the kernel BUG()s here
                ok[i] = False
                k.st.record_failure(k.node, s, want, found)
                k.unexpected += 1
        return ok
    cur = t.read(k.master, sites)
    ok = t.holds(sites, old_states, cur)
    bad = np.flatnonzero(~ok)
    for i in bad[:8]:  # "unexpected op": the kernel BUG()s here; log the first few
        s, L = int(sites[i]), int(t.length[sites[i]])
        k.st.record_failure(k.node, s, t.encoding(s, int(old_states[i])), bytes(cur[i, :L]))
    if len(bad) > 8:
        k.st.add("failures", len(bad) - 8)  # counted, not logged
    k.unexpected += int(np.count_nonzero(~ok))
    return ok
