"""`NodeKernel`: one node's share of text patching, the part every protocol has in common.

The kernel waits (spin, yield, sleep, calling `check_alive` throughout), takes the cross-process
locks (recording itself as their owner for a recovery), keeps the operation journal (--recover),
answers other nodes' syncs and stop_machine rounds at its safe points, and runs the patch API the
sources call: verify the old bytes, bump the sites' sequence numbers, hand each batch of up to
MAX_BATCH sites to its protocol's module (stop_machine.py, text_poke_bp.py, nosync.py), and check
every copy afterwards. The protocols themselves are described in protocols.py.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from numaemu.host.clock import spin
from numaemu.host.fence import fence
from numaemu.model.protocol_spec import ProtocolSpec
from numaemu.model.sites import SiteTable
from numaemu.model.timeline import Timeline
from numaemu.patching import copy_check, data_protocol, nosync, stop_machine, text_poke, text_poke_bp
from numaemu.patching.copies import TextCopies, byte_ranges
from numaemu.patching.protocols import (
    SMALL_SITES,
    SPIN_TRIES,
    STEPS,
    W_BP_SYNC,
    W_SYNC,
    W_TEXT_MUTEX,
    WAIT_TIMEOUT_S,
    YIELD_TRIES,
    Locks,
    PatchStats,
    PatchTimeout,
)
from numaemu.patching.text_poke import TextPoke
from numaemu.patching.textmem import MAX_BATCH, TextState

if TYPE_CHECKING:
    from multiprocessing.synchronize import Lock

__all__ = ["NodeKernel"]

# Each protocol's steps for one batch of sites (sorted by address) and their new encodings.
_BATCH: dict[str, Callable[[NodeKernel, np.ndarray, np.ndarray], None]] = {
    "stop_machine": stop_machine.stop_machine_batch,
    "text_poke_bp": text_poke_bp.text_poke_bp_batch,
    "nosync": nosync.nosync_batch,
    "text_poke": text_poke.text_poke_batch,
    "data": data_protocol.data_protocol_batch,
}


class NodeKernel:
    """One node process's patching kernel (see the module docstring)."""

    def __init__(
        self,
        node: int,
        n_nodes: int,
        state: TextState,
        copies: TextCopies,
        master: np.ndarray,
        mem: np.ndarray,
        sites: SiteTable,
        locks: Locks,
        *,
        protocol: str,
        bug: str | None,
        shared_core: bool,
        flush: Callable[[], None],
        check_alive: Callable[[], None] = lambda: None,
        ipi_delay_ns: int = 0,
        text_poke_ns: int = 0,
        int3_fix: str = "refcount",
        data_protocol: ProtocolSpec | None = None,
        mark: Callable[[int], int] = lambda where: 0,
        fault: Callable[[str], None] = lambda point: None,
        local_base: np.ndarray | None = None,
    ) -> None:
        self.node = node
        self.n_nodes = n_nodes
        self.st = state
        self.copies = copies
        self.master = master
        self.mem = mem
        self.sites = sites
        self.locks = locks
        self.protocol = protocol
        self.bug = bug
        self.shared_core = shared_core
        self.flush = flush
        self.check_alive = check_alive  # cheap to call often: the worker gates it by time
        self.mark = mark  # records what this node is inside of (memory.WHERE), returns the old mark
        self.fault = fault  # the test fault hook (faults.py)
        self._lock_index = {id(getattr(locks, f.name)): i for i, f in enumerate(dataclasses.fields(locks))}
        self._pend_base = node * state.n_sites
        self.resumes = 0  # recoveries this node was parked through (a wait's deadline restarts)
        # late-replica: the protocol writes every copy but the last node's, which is written
        # only after the call has returned (`_write_late`).
        late = bug == "late-replica" and copies.where.shape[1] > 1
        # ivau-local: the I-cache maintenance reaches only the copy `local_base` (this node's
        # page table's frames) maps (text_poke.py).
        self.text = TextPoke(TextCopies(copies.where[:, :-1]) if late else copies, master, mem, text_poke_ns, check_alive,
                             state.line_gen, local_base if bug == "ivau-local" else None)
        self._late = TextCopies(copies.where[:, -1:]) if late else None
        self.stats = PatchStats()
        self.unexpected = 0
        self.idle: Callable[[], None] | None = None  # what to run while blocked on a lock
        self.rng = np.random.default_rng([node, 0x697069])  # "ipi"
        self.ipi_delay_ns = ipi_delay_ns
        self.sync_core_ns = 0  # wall ns a node spends in a sync's IPI handler (`set_timeline`)
        self.stop_switch_ns = 0  # wall ns a node takes to enter a stop_machine round
        self.count_rmw_ns = 0  # wall ns between reading and writing a shared count
        self.int3_fix = int3_fix  # which 2019 fix the INT3 handler's descriptor relies on
        self.data_protocol = data_protocol  # protocol "data": its steps (model/protocol_spec.py)
        self.data_pokes: dict[str, TextPoke] = {}  # its writers into subsets of the copies (data_protocol._poke_for)
        self._due: dict[str, int] = {}  # when the pending sync / stop IPI reaches this node
        # How long one wait may last (numaemu check: forever, its waits are scheduling points
        # while it explores other interleavings; a deadlock is found there by its states).
        self.wait_timeout_s = WAIT_TIMEOUT_S
        self.spin_tries = 10 if shared_core else SPIN_TRIES  # polls before a wait yields, then sleeps (check: never)

    def step(self, name: str) -> None:
        """Publish the protocol step this node's patch call is at (protocols.STEPS)."""
        self.st.node_set(self.node, "step", STEPS.index(name))

    def set_timeline(self, tl: Timeline) -> None:
        """Take every cost from the run's timeline at its scale (wall ns)."""
        self.ipi_delay_ns = tl.wall_ns(tl.ipi_ns)
        self.text.text_poke_ns = tl.wall_ns(tl.text_poke_ns)
        self.sync_core_ns = tl.wall_ns(tl.sync_core_ns)
        self.stop_switch_ns = tl.wall_ns(tl.stop_switch_ns)
        self.count_rmw_ns = tl.wall_ns(tl.count_rmw_ns)

    @property
    def text_poke_ns(self) -> int:
        """The modeled cost of writing one site into one copy (`TextPoke`)."""
        return self.text.text_poke_ns

    # -- waiting ------------------------------------------------------------------------------

    def wait_for(self, cond: Callable[[], bool], what: str, service: bool = True) -> None:
        """Spin, then yield, then sleep until `cond()`; take part in other nodes' syncs meanwhile
        (unless `service` is False: inside a stop_machine round nothing else can be pending).
        Every iteration calls `check_alive`: the node it waits for may be dead."""
        tries = 0
        deadline = 0.0
        resumes = self.resumes
        check = self.check_alive
        spin_tries = self.spin_tries
        while not cond():
            check()
            if service:
                self.safe_point()
            tries += 1
            if tries < spin_tries:
                continue
            if tries < SPIN_TRIES + YIELD_TRIES:
                os.sched_yield()
                continue
            if resumes != self.resumes:  # parked through a recovery: that time was not waiting
                resumes, deadline = self.resumes, 0.0
            if not deadline:
                deadline = time.monotonic() + self.wait_timeout_s
            elif time.monotonic() > deadline:
                raise PatchTimeout(f"node {self.node}: waited {self.wait_timeout_s:.0f} s for {what}")
            time.sleep(20e-6)

    def lock(self, lock: Lock, service: bool = True) -> None:
        """Take a mutex. Like a task sleeping on a mutex, the node meanwhile runs its readers
        (`idle`), which also take part in other nodes' syncs (with `service` False, inside a
        stop_machine round, it only yields). Records itself as the owner (``lock_owner``), so
        a recovery can tell the locks a dead node held from those of the living."""
        if not lock.acquire(False):
            deadline = time.monotonic() + self.wait_timeout_s
            resumes = self.resumes
            while not lock.acquire(False):
                self.check_alive()
                if service and self.idle is not None:
                    self.idle()
                else:
                    if service:
                        self.safe_point()
                    os.sched_yield()
                if resumes != self.resumes:
                    resumes, deadline = self.resumes, time.monotonic() + self.wait_timeout_s
                if time.monotonic() > deadline:
                    raise PatchTimeout(f"node {self.node}: waited {self.wait_timeout_s:.0f} s for a lock")
        # No wait between the acquire and this store (nor between the next two in `holding`):
        # a node is never parked there, which `recovery.release_locks` relies on.
        self.st.owner_q[self._lock_index[id(lock)]] = self.node + 1

    @contextmanager
    def holding(self, lock: Lock, service: bool = True) -> Iterator[None]:
        self.lock(lock, service)
        try:
            yield
        finally:
            self.st.owner_q[self._lock_index[id(lock)]] = 0
            lock.release()

    def resync(self) -> None:
        """After being parked through a recovery: resynchronise and forget every pending IPI (the
        coordinator acknowledged every sync and round on this node's behalf, which this makes
        true); the buffered lines are as fresh as the repair's stores made them (copies.invalidate)."""
        self.flush()
        self._due.clear()
        self.resumes += 1

    # -- the operation journal (--recover) ----------------------------------------------------

    def begin_op(self, key: int = -1, count: int = 0, refs: int = 0) -> None:
        """Commit this node's operation intent: its ``pend`` row (written before) and, for a
        static-key op, the key's count and this node's references once the op is done. From
        here on a recovery finishes the op if this node dies (a write-ahead log)."""
        st, node = self.st, self.node
        st.node_set(node, "j_key", key + 1)
        st.node_set(node, "j_count", count)
        st.node_set(node, "j_refs", refs)
        st.node_set(node, "journal", 1)  # the commit point: one aligned 8-byte store

    def end_op(self) -> None:
        self.st.node_set(self.node, "journal", 0)
        self.st.node_set(self.node, "j_key", 0)

    def _intend(self, sites: np.ndarray, new_states: np.ndarray | None) -> None:
        """This node's ``pend`` row: `new_states` + 1 at `sites` (None: clear them)."""
        if len(sites) <= SMALL_SITES:
            b, base = self.st.pend_b, self._pend_base
            values = [0] * len(sites) if new_states is None else [v + 1 for v in new_states.tolist()]
            for s, v in zip(sites.tolist(), values, strict=True):
                b[base + s] = v
        else:
            self.st.pend[self.node, sites] = 0 if new_states is None else new_states + 1

    # -- taking part in other nodes' patches --------------------------------------------------

    def safe_point(self) -> None:
        st, node = self.st, self.node
        seq = st.get("sync_seq")
        if seq > st.node_get(node, "sync_ack") and self._delivered("sync_req_ns"):
            if self.sync_core_ns:
                spin(self.sync_core_ns)  # the IPI handler and sync_core(), then the acknowledgement
            self.flush()
            fence()  # nothing fetched from before the request is used after the acknowledgement
            st.node_set(node, "sync_ack", seq)
        stop = st.get("stop_seq")
        if stop > st.node_get(node, "stop_ack") and self._delivered("stop_req_ns"):
            stop_machine.stop_round(self, stop)

    def _delivered(self, sent_field: str) -> bool:
        """Has the IPI of the pending request (sent at header `sent_field`) reached this node?

        An IPI is not taken the instant it is sent: the node keeps running until it notices
        (interrupts off, a long instruction, a wake-up). Modelling that delivery delay is what
        lets a protocol that does not wait for a sync really run stale code; stop_machine wakes
        every CPU's stopper thread with an IPI too, so its rounds get the same delay.
        """
        due = self._due.get(sent_field, 0)
        if due == 0:
            delay = int(self.rng.exponential(self.ipi_delay_ns)) if self.ipi_delay_ns else 0
            due = self._due[sent_field] = self.st.get(sent_field) + delay
        if time.perf_counter_ns() < due:
            return False
        self._due[sent_field] = 0
        return True

    def sync(self, wait: bool = True, point: str | None = None) -> None:
        """Ask every node to synchronise (the IPI); with `wait`, return once all have. `point`:
        the fault-hook point this sync is (``int3_sync``: the first sync of text_poke_bp)."""
        fence()  # every text write before it is seen before the request
        self.st.set("sync_req_ns", time.perf_counter_ns())
        seq = self.st.add("sync_seq")
        self.flush()
        self.st.node_set(self.node, "sync_ack", seq)
        self.stats.syncs += 1
        if not wait:
            return
        prev = self.mark(W_BP_SYNC if self.protocol == "text_poke_bp" else W_SYNC)
        try:
            if point is not None:
                self.fault(point)
            st, nodes = self.st, range(self.n_nodes)
            self.wait_for(lambda: all(st.node_get(n, "sync_ack") >= seq for n in nodes), f"sync {seq}", service=False)
        finally:
            self.mark(prev)

    # -- the API the patch sources call ------------------------------------------------------

    def patch(self, sites: np.ndarray, old_states: np.ndarray, new_states: np.ndarray, commit: Callable[[], None] | None = None,
              protocol: str | None = None) -> int:
        """Move `sites` from `old_states` to `new_states` with this run's protocol. The caller
        holds no text lock. Old bytes are verified first; a site whose bytes are not its old
        state's is an *unexpected op*: recorded, left untouched. Returns sites patched.

        Before anything else the call is journaled (``pend``, then the commit: `commit` if the
        caller gives one, which must call `begin_op` and may then update what the patch goes
        with, a static key's count; else `begin_op` here), and the journal is closed at the end.
        `protocol` overrides the run's (``text_poke``: a kprobe's one-byte write and sync)."""
        sites = np.asarray(sites, dtype=np.int64)
        if len(sites) == 0:
            if commit is not None:
                commit()
                self.end_op()
            return 0
        order = np.argsort(self.sites.offset[sites], kind="stable")
        sites, old_states, new_states = sites[order], np.asarray(old_states)[order], np.asarray(new_states)[order]
        self._intend(sites, np.asarray(new_states, dtype=np.int64))
        if commit is not None:
            commit()
        else:
            self.begin_op()
        t0 = time.perf_counter_ns()
        with self.holding(self.locks.text_mutex):
            prev = self.mark(W_TEXT_MUTEX)
            try:
                sites = self._patch_locked(sites, old_states, new_states, protocol or self.protocol)
            finally:
                self.mark(prev)
        self._intend(sites, None)
        self.end_op()
        if self._late is not None:
            self._write_late(sites)
        self.stats.calls += 1
        self.stats.sites += len(sites)
        self.stats.latencies_ns.append(time.perf_counter_ns() - t0)
        return len(sites)

    def _write_late(self, sites: np.ndarray) -> None:
        """The late-replica bug: the last node's copy of `sites` written after the call
        returned, at the usual cost a site (as if one replica's __text_poke were left to a
        worker): until then that node runs the old text although the call has returned."""
        t, late = self.sites, self._late
        assert late is not None
        lens = t.length[sites].astype(np.int64)
        offs = np.repeat(t.offset[sites], lens) + byte_ranges(lens)
        t0 = time.perf_counter_ns()
        late.write(self.master, self.mem, offs, self.master[offs], self.st.line_gen)
        if self.text.text_poke_ns:
            spin(max(0, len(sites) * self.text.text_poke_ns - (time.perf_counter_ns() - t0)))

    def _patch_locked(self, sites: np.ndarray, old_states: np.ndarray, new_states: np.ndarray, protocol: str) -> np.ndarray:
        """The call under text_mutex: verify, patch batch by batch, commit; return the sites
        patched (those whose old bytes were as expected)."""
        self.step("verifying the old bytes")
        ok = copy_check.verify_old(self, sites, old_states)
        if not ok.all():
            self._intend(sites[~ok], None)  # not patched: nothing for a recovery to finish
        sites, new_states = sites[ok], new_states[ok]
        if len(sites):
            st = self.st
            self._bump(sites)  # odd: in flight
            fence()  # readers see the call in flight before any of its writes
            batch = _BATCH[protocol]
            for i in range(0, len(sites), MAX_BATCH):
                part = sites[i : i + MAX_BATCH]
                batch(self, part, self.sites.enc[part, new_states[i : i + MAX_BATCH]])  # [n, 8]
            st.site_state[sites] = new_states
            fence()  # every write and the committed state before the sequence that says "returned"
            self._bump(sites)  # even: the call has returned
            st.add("patch_calls")
            self.step("checking every copy")
            copy_check.check_copies(self, sites)
        self.step("none")
        return sites

    def _bump(self, sites: np.ndarray) -> None:
        if len(sites) <= SMALL_SITES:
            q = self.st.seq_q
            for s in sites.tolist():
                q[s] += 1
        else:
            self.st.site_seq[sites] += 1
