"""Text patching as the kernel does it, executed by node processes on shared memory.

One `NodeKernel` per node process. It patches (as the node whose task called static_key_enable,
ftrace, ...) and it takes part in the other nodes' patches (syncs, stop_machine rounds) at its
*safe points*: between the instructions its readers execute, and inside its INT3 handler.

Protocols (BACKGROUND.md s.3):

``stop_machine`` (kernel/stop_machine.c, arm64 ``aarch64_insn_patch_text``): the patching node
raises a round; every node parks at a safe point and counts itself in under a lock; the LAST to
arrive applies the patch to every copy, then releases the others, which resynchronise (flush their
instruction buffers) before they run again.

``text_poke_bp`` (arch/x86/kernel/alternative.c, ``text_poke_bp_batch``): up to 256 sites sorted
by address, published in a descriptor; (1) INT3 over the first byte of every site, sync;
(2) bytes 1..len-1, sync; (3) the new first byte, sync; (4) drop the patcher's reference and
wait until no INT3 handler still holds one before the descriptor can be reused.

``nosync`` (arm64 ``aarch64_insn_patch_text_nosync`` + ``kick_all_cpus_sync``): one aligned
4-byte store per copy per site, then a kick: every node synchronises before the call returns.

A *sync* (``text_poke_sync`` / ``sync_core`` IPI, ``kick_all_cpus_sync``) completes when every
node has acknowledged it at a safe point, after flushing its instruction buffer: so no node is
still part-way through fetching what was there before. Waiting spins briefly, then yields, then
sleeps, so it does not burn a core that another node needs (BACKGROUND.md s.5). Every wait, and
every attempt on a lock, calls `check_alive` (time-gated by the worker: a clock read, the real
check every ~20 ms), so a node never waits on a dead one: it learns of the abort (or parks for a
recovery) within ~20 ms, from inside a rendezvous or a sync as from anywhere.

For ``--recover`` each node keeps a write-ahead record of the operation it is in (textmem.py:
its ``pend`` row, ``journal`` and ``j_*`` fields, and ``lock_owner``), so that if it is SIGKILLed
half-way, `recovery.repair_text` can finish its patch for it while every other node is parked.

Bugs that `--inject-bug` plants, each the kernel's own (BACKGROUND.md s.4):
``early-master`` the first node to arrive patches; ``descriptor-reuse`` the descriptor is
released while a node is still in its INT3 handler; ``no-sync`` a sync between phases is skipped
(stop_machine: the released nodes do not resynchronise); ``no-final-sync`` the call returns
before every node has synchronised; ``key-race`` a static key's count is updated outside its
lock (see sources.py).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from numaemu.host.clock import spin
from numaemu.host.segments import WHERE
from numaemu.model.sites import INT3, SiteTable
from numaemu.patching.textmem import MAX_BATCH, TextCopies, TextState

__all__ = ["PROTOCOLS", "BUGS", "Locks", "NodeKernel", "PatchTimeout"]

PROTOCOLS = ("stop_machine", "text_poke_bp", "nosync")
BUGS = ("early-master", "descriptor-reuse", "no-sync", "key-race", "no-final-sync")
SPIN_TRIES = 200  # polls before yielding; ~50 us of spinning
YIELD_TRIES = 200  # sched_yield polls before sleeping
WAIT_TIMEOUT_S = 30.0
IPI_DELAY_NS = 100_000  # mean delay before a node notices a sync request
# What one write of one site into one copy costs the patcher: text_poke() maps the page through
# poking_mm, writes, unmaps and flushes the TLB entry (arch/x86/kernel/alternative.c), and
# Kuzin's __text_poke() repeats that for every replica. About a microsecond each.
TEXT_POKE_NS = 1_000
POKE_CHUNK = 16  # sites written between two checks of the clock
SMALL_WRITE = 40  # bytes: below this, writes and checks take a scalar path (no numpy calls)
SMALL_SITES = SMALL_WRITE // 5
# What a node is inside of, for the failure message (memory.WHERE).
W_TEXT_MUTEX = WHERE.index("holding text_mutex")
W_BP_SYNC = WHERE.index("inside a text_poke_bp sync")
W_STOP = WHERE.index("inside a stop_machine rendezvous")
W_INT3 = WHERE.index("inside an INT3 handler")
W_SYNC = WHERE.index("inside a sync")


class PatchTimeout(RuntimeError):
    pass


@dataclass(frozen=True)
class Locks:
    """Cross-process locks (multiprocessing.Lock), created by the coordinator."""

    text_mutex: object  # kernel/... text_mutex: one patcher of kernel text at a time
    stop_arrival: object  # the rendezvous counter's lock (stop_machine's atomic_inc)
    jump_label: object  # jump_label_mutex
    ftrace: object  # ftrace_lock
    klp: object  # klp_mutex
    module: object  # module_mutex


@dataclass
class PatchStats:
    calls: int = 0
    sites: int = 0
    syncs: int = 0
    stop_rounds: int = 0
    latencies_ns: list[int] = field(default_factory=list)


class NodeKernel:
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
        ipi_delay_ns: int = IPI_DELAY_NS,
        text_poke_ns: int = TEXT_POKE_NS,
        mark: Callable[[int], int] = lambda where: 0,
        fault: Callable[[str], None] = lambda point: None,
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
        self.master_mv = memoryview(master)
        self.mem_mv = memoryview(mem)
        self.stats = PatchStats()
        self.unexpected = 0
        self.idle: Callable[[], None] | None = None  # what to run while blocked on a lock
        self.rng = np.random.default_rng([node, 0x697069])  # "ipi"
        self.ipi_delay_ns = ipi_delay_ns
        self.text_poke_ns = text_poke_ns
        self._due: dict[str, int] = {}  # when the pending sync / stop IPI reaches this node

    # -- waiting ------------------------------------------------------------------------------

    def wait_for(self, cond: Callable[[], bool], what: str, service: bool = True) -> None:
        """Spin, then yield, then sleep until `cond()`; take part in other nodes' syncs meanwhile
        (unless `service` is False: inside a stop_machine round nothing else can be pending).
        Every iteration calls `check_alive`: the node it waits for may be dead."""
        tries = 0
        deadline = 0.0
        resumes = self.resumes
        check = self.check_alive
        while not cond():
            check()
            if service:
                self.safe_point()
            tries += 1
            if tries < (10 if self.shared_core else SPIN_TRIES):
                continue
            if tries < SPIN_TRIES + YIELD_TRIES:
                os.sched_yield()
                continue
            if resumes != self.resumes:  # parked through a recovery: that time was not waiting
                resumes, deadline = self.resumes, 0.0
            if not deadline:
                deadline = time.monotonic() + WAIT_TIMEOUT_S
            elif time.monotonic() > deadline:
                raise PatchTimeout(f"node {self.node}: waited {WAIT_TIMEOUT_S:.0f} s for {what}")
            time.sleep(20e-6)

    def lock(self, lock, service: bool = True) -> None:
        """Take a mutex. Like a task sleeping on a mutex, the node meanwhile runs its readers
        (`idle`), which also take part in other nodes' syncs (with `service` False, inside a
        stop_machine round, it only yields). Records itself as the owner (``lock_owner``), so
        a recovery can tell the locks a dead node held from those of the living."""
        if not lock.acquire(False):
            deadline = time.monotonic() + WAIT_TIMEOUT_S
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
                    resumes, deadline = self.resumes, time.monotonic() + WAIT_TIMEOUT_S
                if time.monotonic() > deadline:
                    raise PatchTimeout(f"node {self.node}: waited {WAIT_TIMEOUT_S:.0f} s for a lock")
        # No wait between the acquire and this store (nor between the next two in `holding`):
        # a node is never parked there, which `recovery.release_locks` relies on.
        self.st.owner_q[self._lock_index[id(lock)]] = self.node + 1

    @contextmanager
    def holding(self, lock, service: bool = True) -> Iterator[None]:
        self.lock(lock, service)
        try:
            yield
        finally:
            self.st.owner_q[self._lock_index[id(lock)]] = 0
            lock.release()

    def resync(self) -> None:
        """After being parked through a recovery: forget every prefetched line and every pending
        IPI (the coordinator acknowledged every sync and round on this node's behalf, which this
        flush makes true), as a CPU coming back online starts with nothing cached."""
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
            for s, v in zip(sites.tolist(), values):
                b[base + s] = v
        else:
            self.st.pend[self.node, sites] = 0 if new_states is None else new_states + 1

    # -- taking part in other nodes' patches --------------------------------------------------

    def safe_point(self) -> None:
        st, node = self.st, self.node
        seq = st.get("sync_seq")
        if seq > st.node_get(node, "sync_ack") and self._delivered("sync_req_ns"):
            self.flush()
            st.node_set(node, "sync_ack", seq)
        stop = st.get("stop_seq")
        if stop > st.node_get(node, "stop_ack") and self._delivered("stop_req_ns"):
            self._stop_round(stop)

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

    # -- syncs and rendezvous ------------------------------------------------------------------

    def sync(self, wait: bool = True, point: str | None = None) -> None:
        """Ask every node to synchronise (the IPI); with `wait`, return once all have. `point`:
        the fault-hook point this sync is (``int3_sync``: the first sync of text_poke_bp)."""
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

    def _stop_round(self, seq: int) -> None:
        st = self.st
        prev = self.mark(W_STOP)
        try:
            with self.holding(self.locks.stop_arrival, service=False):
                # Released already: a recovery finished this round while this node was on its
                # way in (parked at the lock); it must not count itself into the next one.
                arrived = 0 if st.get("stop_released") >= seq else st.add("stop_arrived")
            if arrived:
                self.fault("stop_machine")
                first, last = arrived == 1, arrived == self.n_nodes
                if (self.bug == "early-master" and first) or (self.bug != "early-master" and last):
                    self._apply_descriptor()
                    if self.bug == "early-master":  # patched already; now wait for the others to park
                        self.wait_for(lambda: st.get("stop_arrived") >= self.n_nodes or st.get("stop_released") >= seq, "stop_machine arrivals", service=False)
                    st.set("stop_arrived", 0)
                    st.set("stop_released", seq)
                else:
                    self.wait_for(lambda: st.get("stop_released") >= seq, "stop_machine release", service=False)
            if self.bug != "no-sync":
                self.flush()  # resynchronise: nothing prefetched before the patch survives
            st.node_set(self.node, "stop_ack", seq)
        finally:
            self.mark(prev)

    # -- the descriptor -----------------------------------------------------------------------

    def _publish(self, sites: np.ndarray, new: np.ndarray) -> None:
        st = self.st
        st.add("desc_gen")  # odd: being written
        n = len(sites)
        st.desc_offset[:n] = self.sites.offset[sites]
        st.desc_site[:n] = sites
        st.desc_new[:n] = new
        st.set("desc_count", n)
        st.add("desc_gen")  # even: complete
        st.set("desc_live", 1)

    def _poke(self, offsets: np.ndarray, values: np.ndarray, site_of_byte: np.ndarray) -> None:
        """Write bytes site by site (chunks of POKE_CHUNK sites), charging TEXT_POKE_NS per site
        and copy: other nodes see the sites change one after another, as they would."""
        n_copies = self.copies.where.shape[1]
        if len(offsets) <= SMALL_WRITE:  # a few bytes: no numpy calls
            t0 = time.perf_counter_ns()
            offs, vals, owner = offsets.tolist(), values.tolist(), site_of_byte.tolist()
            start = 0
            for i in range(1, len(offs) + 1):
                if i == len(offs) or owner[i] != owner[start]:
                    self._write_site(offs[start], bytes(vals[start:i]))
                    start = i
            if self.text_poke_ns:
                n_sites = len(set(owner))
                spin(max(0, n_sites * n_copies * self.text_poke_ns - (time.perf_counter_ns() - t0)))
            return
        if not self.text_poke_ns:  # no modeled cost: one vectorised write
            self.copies.write(self.master, self.mem, offsets, values)
            return
        bounds = np.flatnonzero(np.diff(site_of_byte)) + 1
        starts = np.concatenate([[0], bounds])
        for i in range(0, len(starts), POKE_CHUNK):
            # Tracing every function pokes ~35,000 sites into every copy (0.1-0.6 s): look for
            # an abort (or park for a recovery) between chunks, each written whole everywhere.
            self.check_alive()
            lo = starts[i]
            hi = starts[i + POKE_CHUNK] if i + POKE_CHUNK < len(starts) else len(offsets)
            t0 = time.perf_counter_ns()
            self.copies.write(self.master, self.mem, offsets[lo:hi], values[lo:hi])
            n_sites = min(POKE_CHUNK, len(starts) - i)
            if self.text_poke_ns:
                spin(max(0, n_sites * n_copies * self.text_poke_ns - (time.perf_counter_ns() - t0)))

    def _write_site(self, offset: int, data: bytes) -> None:
        """Write one site's bytes (contiguous) into the master, then every copy."""
        L = len(data)
        if offset % 4096 + L > 4096:  # crosses a page: the copies' frames are not adjacent
            for i, b in enumerate(data):
                self._write_site(offset + i, bytes([b]))
            return
        self.master_mv[offset : offset + L] = data
        for t in self.copies.targets_of(offset):
            self.mem_mv[t : t + L] = data

    def _apply_descriptor(self) -> None:
        """Write every entry's whole new instruction (stop_machine's patch function)."""
        st = self.st
        n = st.get("desc_count")
        if n <= SMALL_SITES:
            t0 = time.perf_counter_ns()
            for i in range(n):
                o, s = int(st.desc_offset[i]), int(st.desc_site[i])
                self._write_site(o, st.desc_new[i, : self.sites.length[s]].tobytes())
            if self.text_poke_ns:
                spin(max(0, n * self.copies.where.shape[1] * self.text_poke_ns - (time.perf_counter_ns() - t0)))
            return
        sites = st.desc_site[:n]
        lens = self.sites.length[sites].astype(np.int64)
        owner = np.repeat(np.arange(n), lens)
        offs = np.repeat(st.desc_offset[:n], lens) + _ranges(lens)
        vals = st.desc_new[:n][owner, _ranges(lens)]
        self._poke(offs, vals, owner)

    # -- the API the patch sources call ------------------------------------------------------

    def patch(self, sites: np.ndarray, old_states: np.ndarray, new_states: np.ndarray, commit: Callable[[], None] | None = None) -> int:
        """Move `sites` from `old_states` to `new_states` with this run's protocol. The caller
        holds no text lock. Old bytes are verified first; a site whose bytes are not its old
        state's is an *unexpected op*: recorded, left untouched. Returns sites patched.

        Before anything else the call is journaled (``pend``, then the commit: `commit` if the
        caller gives one, which must call `begin_op` and may then update what the patch goes
        with, a static key's count; else `begin_op` here), and the journal is closed at the end."""
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
                ok = self._verify_old(sites, old_states)
                if not ok.all():
                    self._intend(sites[~ok], None)  # not patched: nothing for a recovery to finish
                sites, new_states = sites[ok], new_states[ok]
                if len(sites):
                    st = self.st
                    self._bump(sites)  # odd: in flight
                    for i in range(0, len(sites), MAX_BATCH):
                        self._one_batch(sites[i : i + MAX_BATCH], new_states[i : i + MAX_BATCH])
                    st.site_state[sites] = new_states
                    self._bump(sites)  # even: the call has returned
                    st.add("patch_calls")
                    self._check_copies(sites)
            finally:
                self.mark(prev)
        self._intend(sites, None)
        self.end_op()
        self.stats.calls += 1
        self.stats.sites += len(sites)
        self.stats.latencies_ns.append(time.perf_counter_ns() - t0)
        return len(sites)

    def _bump(self, sites: np.ndarray) -> None:
        if len(sites) <= SMALL_SITES:
            q = self.st.seq_q
            for s in sites.tolist():
                q[s] += 1
        else:
            self.st.site_seq[sites] += 1

    def _check_copies(self, sites: np.ndarray) -> None:
        """After the call: every copy of the patched sites equals the master."""
        t, st = self.sites, self.st
        if len(sites) <= SMALL_SITES:  # compare just the sites' bytes
            for s in sites.tolist():
                o, L = int(t.offset[s]), int(t.length[s])
                ref = self.master_mv[o : o + L]
                for copy, tgt in enumerate(self.copies.targets_of(o)):
                    if self.mem_mv[tgt : tgt + L] != ref:
                        st.record_failure(self.node, -1 - o // 4096, b"", bytes([copy]))
            return
        # Every byte of every patched site, in every copy (the whole copies are compared with
        # the master at the end of a run).
        lens = t.length[sites].astype(np.int64)
        offs = np.repeat(t.offset[sites], lens) + _ranges(lens)
        ref = self.master[offs]
        for copy, row in enumerate(self.copies.targets(offs)):
            held = row >= 0
            for o in offs[held][self.mem[row[held]] != ref[held]][:1]:
                st.record_failure(self.node, -1 - int(o) // 4096, b"", bytes([copy]))

    def _verify_old(self, sites: np.ndarray, old_states: np.ndarray) -> np.ndarray:
        t = self.sites
        if len(sites) <= SMALL_SITES:
            ok = np.ones(len(sites), dtype=bool)
            for i, (s, old) in enumerate(zip(sites.tolist(), old_states.tolist())):
                o, L = int(t.offset[s]), int(t.length[s])
                want = t.enc[s, old, :L].tobytes()
                found = self.master_mv[o : o + L].tobytes()
                if found != want:  # "unexpected op": the kernel BUG()s here
                    ok[i] = False
                    self.st.record_failure(self.node, s, want, found)
                    self.unexpected += 1
            return ok
        cur = t.read(self.master, sites)
        ok = t.holds(sites, old_states, cur)
        bad = np.flatnonzero(~ok)
        for i in bad[:8]:  # "unexpected op": the kernel BUG()s here; log the first few
            s, L = int(sites[i]), int(t.length[sites[i]])
            self.st.record_failure(self.node, s, t.encoding(s, int(old_states[i])), bytes(cur[i, :L]))
        if len(bad) > 8:
            self.st.add("failures", len(bad) - 8)  # counted, not logged
        self.unexpected += int(np.count_nonzero(~ok))
        return ok

    def _one_batch(self, sites: np.ndarray, new_states: np.ndarray) -> None:
        t = self.sites
        new = t.enc[sites, new_states]  # [n, 8]
        if self.protocol == "nosync":
            n_copies = self.copies.where.shape[1]
            for s, row in zip(sites, new):
                t0 = time.perf_counter_ns()
                self.copies.write_word(self.master, self.mem, int(t.offset[s]), bytes(row[:4]))
                if self.text_poke_ns:
                    spin(max(0, n_copies * self.text_poke_ns - (time.perf_counter_ns() - t0)))
            if self.bug != "no-sync":
                self.sync(wait=self.bug != "no-final-sync")
            return
        self._publish(sites, new)
        if self.protocol == "stop_machine":
            self.st.set("stop_req_ns", time.perf_counter_ns())
            seq = self.st.add("stop_seq")
            self.stats.stop_rounds += 1
            self._stop_round(seq)
            self.st.set("desc_live", 0)
            return
        # text_poke_bp
        offs = t.offset[sites]
        lens = t.length[sites].astype(np.int64)
        each = np.arange(len(sites))
        self._poke(offs, np.full(len(sites), INT3, dtype=np.uint8), each)
        if self.bug != "no-sync":
            self.sync(point="int3_sync")
        if len(sites) <= SMALL_SITES:  # a few sites: write each tail directly
            t0 = time.perf_counter_ns()
            for o, L, row in zip(offs.tolist(), lens.tolist(), new):
                if L > 1:
                    self._write_site(o + 1, row[1:L].tobytes())
            if self.text_poke_ns:
                spin(max(0, len(sites) * self.copies.where.shape[1] * self.text_poke_ns - (time.perf_counter_ns() - t0)))
            self.sync()
        elif np.any(lens > 1):
            tail = lens > 1
            tl = lens[tail] - 1
            owner = np.repeat(each[tail], tl)
            toffs = np.repeat(offs[tail], tl) + _ranges(tl) + 1
            tvals = new[owner, _ranges(tl) + 1]
            self._poke(toffs, tvals, owner)
            self.sync()
        self._poke(offs, new[:, 0].copy(), each)
        self.sync(wait=self.bug != "no-final-sync")
        self.st.set("desc_live", 0)  # drop the patcher's reference
        if self.bug != "descriptor-reuse":
            st, nodes = self.st, range(self.n_nodes)
            self.wait_for(lambda: not any(st.node_get(n, "in_int3") for n in nodes), "INT3 handlers to drop the descriptor")


def _ranges(lens: np.ndarray) -> np.ndarray:
    """[0..l0-1, 0..l1-1, ...] for lengths `lens`."""
    lens = np.asarray(lens, dtype=np.int64)
    return np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
