"""The ``stop_machine`` protocol (kernel/stop_machine.c, arm64 ``aarch64_insn_patch_text``).

The patching node publishes its batch in the descriptor (text_poke_bp.publish_descriptor: the same
record) and raises a round; every node notices it at a safe point (after its IPI delay), parks and
counts itself in under the ``stop_arrival`` lock; the LAST to arrive applies the descriptor to the
master and every copy (multi_cpu_stop's patch function), then releases the others, which
resynchronise (a serialising event; under ``--ifetch until-sync`` their buffers are emptied too)
before they run again. With the ``early-master``
bug the FIRST to arrive patches, while others may still be executing; with ``no-sync`` the
released nodes do not resynchronise (which matters only under ``until-sync``: under the default
``coherent`` rules a parked node's pipeline holds none of the patched text).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from numaemu.host.clock import spin
from numaemu.host.fence import fence
from numaemu.patching.data_protocol import node_step_name
from numaemu.patching.protocols import SMALL_SITES, W_STOP, PatchTimeout
from numaemu.patching.text_poke_bp import descriptor_bytes, publish_descriptor

if TYPE_CHECKING:
    from numaemu.patching.kernel import NodeKernel

__all__ = ["stop_machine_batch", "stop_round", "apply_descriptor"]


def stop_machine_batch(k: NodeKernel, sites: np.ndarray, new: np.ndarray) -> None:
    """Patch `sites` (sorted by address) to encodings `new` in one stop_machine round."""
    # The batch for the round's patch function: no bp_desc, so an INT3 a node hits meanwhile (an
    # armed kprobe's) is left to kprobes, as try_get_desc() fails when no text_poke_bp is on.
    publish_descriptor(k, sites, new, live=False)
    k.step("stop_machine: waiting for the round")
    k.st.set("stop_req_ns", time.perf_counter_ns())
    seq = k.st.add("stop_seq")
    k.stats.stop_rounds += 1
    stop_round(k, seq)


def stop_round(k: NodeKernel, seq: int) -> None:
    """Take part in round `seq` (as its patcher, or at a safe point): count in, patch if this
    node is the one that does, wait for the release, resynchronise."""
    st = k.st
    prev = k.mark(W_STOP)
    prev_step = st.node_get(k.node, "step")  # a node taking part in another's round goes back to its own step
    try:
        if k.stop_switch_ns:
            spin(k.stop_switch_ns)  # the switch to this CPU's stopper thread (timeline.stop_switch_ns)
        with k.holding(k.locks.stop_arrival, service=False):
            # Released already: a recovery finished this round while this node was on its
            # way in (parked at the lock); it must not count itself into the next one.
            arrived = 0 if st.get("stop_released") >= seq else st.add("stop_arrived")
        if arrived:
            k.fault("stop_machine")
            first, last = arrived == 1, arrived == k.n_nodes
            if (k.bug == "early-master" and first) or (k.bug != "early-master" and last):
                k.step("stop_machine: patching every copy")
                apply_descriptor(k)
                if k.bug == "early-master":  # patched already; now wait for the others to park
                    k.wait_for(lambda: st.get("stop_arrived") >= k.n_nodes or st.get("stop_released") >= seq, "stop_machine arrivals", service=False)
                st.set("stop_arrived", 0)
                st.set("stop_released", seq)
            else:
                try:
                    k.wait_for(lambda: st.get("stop_released") >= seq, "stop_machine release", service=False)
                except PatchTimeout as exc:
                    raise PatchTimeout(f"{exc} of round {seq} ({_round_state(k)})") from None
        if k.bug != "no-sync":
            k.flush()  # resynchronise: nothing prefetched before the patch survives
        st.node_set(k.node, "stop_ack", seq)
    finally:
        st.node_set(k.node, "step", prev_step)
        k.mark(prev)


def _round_state(k: NodeKernel) -> str:
    """The rendezvous as the header holds it, and each node's step: what a timed-out wait names."""
    st = k.st
    nodes = "; ".join(f"node {n}: left round {st.node_get(n, 'stop_ack')}, at '{node_step_name(k.data_protocol, st.node_get(n, 'step'))}'"
                      for n in range(k.n_nodes))
    return f"rounds requested {st.get('stop_seq')}, released {st.get('stop_released')}, {st.get('stop_arrived')} of {k.n_nodes} counted in; {nodes}"


def apply_descriptor(k: NodeKernel) -> None:
    """Write every entry's whole new instruction (stop_machine's patch function). Every CPU is
    in the round meanwhile: no task of the patcher's node runs while it writes. ``stop_writes``
    is odd while it writes, so that a node executing then is seen to (reader.check_batch's
    ``unsynchronized``: the exclusion this protocol exists for, which early-master breaks)."""
    meanwhile, k.text.meanwhile = k.text.meanwhile, None
    k.st.add("stop_writes")
    fence()  # the count before the stores (smp_wmb)
    try:
        _apply(k)
    finally:
        fence()
        k.st.add("stop_writes")
        k.text.meanwhile = meanwhile


def _apply(k: NodeKernel) -> None:
    st = k.st
    n = st.get("desc_count")
    if n <= SMALL_SITES:
        t0 = time.perf_counter_ns()
        for i in range(n):
            o, s = int(st.desc_offset[i]), int(st.desc_site[i])
            k.text.write_site(o, st.desc_new[i, : k.sites.length[s]].tobytes())
        k.text.charge(n, t0)
        return
    k.text.poke(*descriptor_bytes(st, k.sites))
