"""``stress --recover``: putting the patching state back in order after nodes died.

When a stress node is SIGKILLed it may die anywhere: holding ``text_mutex`` with INT3s in the
text, counted into a stop_machine rendezvous (or as its last arrival, half-way through applying
the patch), inside an INT3 handler holding a reference on the descriptor, holding a static key's
lock with the count already changed, half-way through loading a module. The coordinator first
parks every other node (they stop inside whatever wait they are in, `worker.NodeContext.park`),
so nothing moves, and then `repair_text` makes the shared state what it would be had the dead
nodes finished what they started, before their replacements fill their copies from the master:

1. **Locks** (`release_locks`): every lock a dead node held is released. A living node is never
   parked between acquiring a lock and recording itself as its owner, so a lock that is held at
   quiescence with no living owner is a dead node's. (A dead CPU's locks have no kernel analogue:
   a CPU that dies holding text_mutex is a crashed kernel. Here the dead node's work is finished
   for it, so its locks can be let go.)
2. **Its operation** (`finish_operation`), from its write-ahead journal (textmem.py): if it had
   committed an operation, the coordinator finishes it: a static key's count and the node's
   references take their journaled values, and every site of its patch call moves to its new
   state in the master and every copy, committed (site_state) and stable (an even sequence
   number): sites in flight (odd) are rolled forward; sites not yet started get the whole call.
   No protocol is needed for these writes: no node executes anything while all are parked, as
   stop_machine's patch function writes with every other CPU held in multi_cpu_stop
   (kernel/stop_machine.c). An operation not yet committed is dropped: it had changed nothing.
   A module load or unload in progress is undone: the slot is emptied and not live.
3. **The protocols' shared state** (`reset_protocols`): a stop_machine round in progress is
   completed (its descriptor applied, then released; if a living node was half-way through
   applying it, the round is left to that node to release, and the next patcher waits for
   that in `text_poke_bp.publish_descriptor`), a text_poke_bp descriptor of a dead patcher
   is dropped (its INT3s are gone: step 2 wrote the new bytes), every node's sync and round
   acknowledgements are brought up to date (every living node resynchronises when it resumes,
   which makes that true), and a dead node's INT3-handler references and its
   ``done`` flag are cleared: its replacement starts from nothing, as a CPU brought online by
   kernel/cpu.c does.

The dead node's report is lost with it, but not its main figures: a node publishes its executions
checked, violations, patch calls, sites patched and source operations as it goes (its ``txt`` slot,
`textmem.PUBLISHED`), and the repair hands them on (``lost``), so a violation seen by a node that
then died still fails the run.

Afterwards every copy equals the master (checked, and reported); each replacement then refills
its own partition from the master in its ``fill`` phase, so it holds the current patched text.
Living nodes that were in the middle of their own patch call just go on with it when they
resume: their sites, their locks and their journal were left alone.

Pure logic on the shared arrays (no processes, no OS calls): tested in-process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from numaemu.model.sites import SiteTable
from numaemu.patching.copies import TextCopies, byte_ranges
from numaemu.patching.protocols import STEPS, Locks
from numaemu.patching.sources import SourcePlan, slot_fill
from numaemu.patching.text_poke_bp import descriptor_bytes
from numaemu.patching.textmem import PUBLISHED, TextState

__all__ = ["repair_text", "release_locks", "finish_operation", "reset_protocols"]


def release_locks(st: TextState, locks: Locks, dead: Sequence[int]) -> list[str]:
    """Release every lock a dead node holds; return their names. Call only while every living
    node is parked (a living owner is then always recorded in ``lock_owner``)."""
    names = [f for f in locks.__dataclass_fields__]
    freed = []
    dead_ids = {d + 1 for d in dead}
    for i, name in enumerate(names):
        lock = getattr(locks, name)
        owner = int(st.lock_owner[i])
        if owner in dead_ids:
            st.lock_owner[i] = 0
            lock.release()
            freed.append(name)
        elif owner == 0:
            if lock.acquire(False):  # free
                lock.release()
            else:  # held, by nobody living: a node that died between acquiring and recording
                lock.release()
                freed.append(name)
    return freed


def _write_sites(st: TextState, sites: SiteTable, copies: TextCopies, master: np.ndarray, mem: np.ndarray, which: np.ndarray, states: np.ndarray) -> None:
    """Write the encoding of `states` at `which` into the master and every copy."""
    if len(which) == 0:
        return
    lens = sites.length[which].astype(np.int64)
    offs = np.repeat(sites.offset[which], lens) + byte_ranges(lens)
    owner = np.repeat(np.arange(len(which)), lens)
    vals = sites.enc[which[owner], states[owner], byte_ranges(lens)]
    copies.write(master, mem, offs, vals, st.line_gen)


def finish_operation(st: TextState, sites: SiteTable, copies: TextCopies, master: np.ndarray, mem: np.ndarray, plan: SourcePlan, node: int) -> dict[str, int]:
    """Finish (or drop) dead `node`'s journaled operation; return what was done."""
    out: dict[str, int] = {}
    row = st.pend[node]
    which = np.flatnonzero(row).astype(np.int64)
    if st.node_get(node, "journal") == 1:
        key = st.node_get(node, "j_key")
        if key:
            k = int(plan.keys[key - 1])
            st.key_count[k] = st.node_get(node, "j_count")
            st.key_refs[node, key - 1] = st.node_get(node, "j_refs")
            out["static_key"] = k
        new = row[which].astype(np.int64) - 1
        odd = (st.site_seq[which] % 2) == 1
        # Rolled forward: in flight (odd). Applied whole: not started (committed state is not
        # the new one). Left: already committed by the call before it died.
        start = ~odd & (st.site_state[which] != new)
        if np.any(start):
            # As the call would have: verify the old bytes (the committed state's) first.
            cur = sites.read(master, which[start])
            ok = sites.holds(which[start], st.site_state[which[start]].astype(np.int64), cur)
            for s in which[start][~ok][:8]:
                L = int(sites.length[s])
                st.record_failure(node, int(s), sites.encoding(int(s), int(st.site_state[s])), bytes(sites.read(master, np.array([s]))[0, :L]))
            start[np.flatnonzero(start)[~ok]] = False
        todo = odd | start
        _write_sites(st, sites, copies, master, mem, which[todo], new[todo])
        st.site_state[which[todo]] = new[todo]
        st.site_seq[which[odd]] += 1
        st.site_seq[which[start]] += 2
        if np.any(todo):
            st.add("patch_calls")
        out["sites_rolled_forward"] = int(np.count_nonzero(odd))
        out["sites_applied"] = int(np.count_nonzero(start))
    elif len(which):
        out["intent_dropped_sites"] = len(which)
    row[:] = 0
    st.node_set(node, "journal", 0)
    st.node_set(node, "j_key", 0)
    slot = st.node_get(node, "module_op")
    if slot:
        # A load or unload half-way: leave the slot as an unload leaves it (not live, empty).
        ms = sites.module_sites(slot - 1)
        st.site_live[ms] = 0
        st.slot_gen[slot - 1] = 0  # freed: a task still inside it would find it gone
        span = sites.module_span(slot - 1)
        copies.write(master, mem, span, np.full(len(span), slot_fill(sites.arch), dtype=np.uint8), st.line_gen)
        st.node_set(node, "module_op", 0)
        out["module_slot_emptied"] = slot - 1
    return out


def reset_protocols(st: TextState, sites: SiteTable, copies: TextCopies, master: np.ndarray, mem: np.ndarray, dead: Sequence[int], n_nodes: int, dead_held_text_mutex: bool) -> dict[str, int]:
    """Step 3 of the module docstring; returns what was done."""
    out: dict[str, int] = {}
    stop_seq = st.get("stop_seq")
    applier = None
    if st.get("stop_released") < stop_seq:
        # A round in progress: do what its last arrival does (apply the descriptor)...
        if st.get("desc_count"):
            offs, vals, _ = descriptor_bytes(st, sites)
            copies.write(master, mem, offs, vals, st.line_gen)
        applying = STEPS.index("stop_machine: patching every copy")
        applier = next((n for n in range(n_nodes) if n not in dead and st.node_get(n, "step") == applying), None)
        if applier is None:  # ...and release it
            st.set("stop_released", stop_seq)
            out["stop_machine_round_completed"] = int(stop_seq)
    if applier is None:
        st.set("stop_arrived", 0)
    else:
        # ...unless a living node is half-way through the round's patch function: it finishes
        # and releases the round when it resumes, writing the same bytes again. Released here,
        # that node would, resuming, reset the count of the next round (and read a descriptor
        # the next patcher had rewritten). Every node that takes part has counted in by now
        # (under early-master the applier waits for that).
        st.set("stop_arrived", n_nodes)
        out["stop_machine_round_left_to_node"] = applier
    if dead_held_text_mutex:
        st.set("desc_live", 0)
        if st.get("desc_gen") % 2:
            st.add("desc_gen")
    sync_seq = st.get("sync_seq")
    for node in range(n_nodes):
        st.node_set(node, "sync_ack", sync_seq)
        st.node_set(node, "stop_ack", stop_seq)
    for d in dead:
        st.node_set(d, "in_int3", 0)
        st.node_set(d, "done", 0)
    return out


def repair_text(st: TextState, sites: SiteTable, copies: TextCopies, master: np.ndarray, mem: np.ndarray, plan: SourcePlan, locks: Locks, dead: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Steps 1-3 of the module docstring, for the nodes in `dead`, while every living node is
    parked. Returns, per dead node, what was done; ``copies_equal_master`` on each says whether
    every copy equals the master afterwards."""
    n_nodes = st.nodes.shape[0]
    text_owner = int(st.lock_owner[0])  # Locks.text_mutex is the first lock
    freed = release_locks(st, locks, dead)
    dead_text = text_owner in {d + 1 for d in dead} or (text_owner == 0 and "text_mutex" in freed)
    out: dict[int, dict[str, Any]] = {d: {"locks_released": [] if i else freed} for i, d in enumerate(dead)}
    for d in dead:
        out[d].update(finish_operation(st, sites, copies, master, mem, plan, d))
        # Its report is lost; what it had published is not (stress_document counts it).
        out[d]["lost"] = {field: st.node_get(d, field) for field in PUBLISHED}
        for field in PUBLISHED:
            st.node_set(d, field, 0)
    proto = reset_protocols(st, sites, copies, master, mem, dead, n_nodes, dead_text)
    mapped = np.flatnonzero(copies.where[:, 0] >= 0)
    mismatches = copies.mismatches(master, mem, mapped)
    for d in dead:
        out[d].update(proto)
        out[d]["copies_equal_master"] = not mismatches
    return out
