"""How a node executes patch sites, and the checker that judges what it observed.

A node keeps the 64-byte lines it fetched in an *instruction buffer* (its L1i: direct-mapped,
`IBUF_LINES` lines), and the architecture's rules decide when a store reaches it (``--ifetch``):

- ``coherent`` (the default): every store to kernel text is made visible to instruction fetch
  right after it, by physical line (copies.invalidate): x86 fetch snoops stores (Intel SDM vol.
  3, s.11.6, "based on the physical address of the instruction"), arm64's patcher cleans and
  invalidates the line it wrote (``caches_clean_inval_pou``: DC CVAU, IC IVAU, broadcast to the
  inner-shareable domain). A buffered line whose generation moved is fetched again. What stays
  stale is what the core had already fetched and not yet executed: the pipeline, which only a
  serialising event discards (x86 ``sync_core``, arm64 ISB: SDM s.8.1.3's cross-modifying-code
  algorithm; Deacon's "arm64: IPI each CPU after invalidating the I-cache for kernel mappings",
  v4.19). A node's batch is fetched, then waits the timeline's ``prefetch_ns`` (the reorder
  buffer's depth at IPC 1) before it executes; a node acknowledges a sync only between batches,
  so a protocol that waits for its syncs never returns while a node still holds old bytes.
- ``until-sync``: a buffered line is kept until the node takes part in a sync or a stop_machine
  round (or is evicted), however many stores land meanwhile: numaemu's model before issue 16,
  a core whose instruction fetch neither snoops nor is invalidated (no real one), which widens
  every stale window to what the protocols' syncs alone must cover.

An x86 instruction is fetched in two steps: the first byte decides (through the buffer), the rest
is read from its copy in memory the timeline's ``fetch_gap_ns`` later, so a store landing between
the two can produce a torn execution. An arm64 instruction is one aligned 4-byte load, single-copy
atomic (ARM ARM B2.2.1): stale, never torn.

`execute` runs a batch of sites: the fetch (step 1 for all, the gap, step 2 for all), the wait in
the pipeline, then execution: the sequence numbers and committed states are read, and the INT3
handler runs for sites whose first byte was INT3 (`text_poke_bp.poke_int3_handler`: interrupts
off, so it answers no sync; it bsearches the descriptor and emulates the new instruction; a site
it does not find is a kprobe's, whose handler runs the probed instruction). The node reads each
site's sequence number at execution and after, and the state the last returned call committed.

`check_order` judges one task's executions against its history (new-then-old within one call, an
observation that replicas add, not a violation); `check_batch` is the checker. It is told nothing
about bugs; it judges only the observations:
- a *stable* site (sequence even and unchanged from execution to the batch's end: no call in
  flight) must hold exactly its committed encoding: anything else is ``stale`` (old code after
  the call returned) or ``int3-after-return``;
- any site must hold one of its valid encodings (after INT3 emulation): anything else is
  ``torn``; an INT3 with no live descriptor, or a descriptor that changed or was poisoned under
  the handler, is ``int3-no-descriptor`` (a kprobe's armed INT3 is a state of its own);
- a site of a stop_machine round, executed while the round's patch function wrote (unless, on
  arm64, both instructions are ones the architecture lets change under execution), is
  ``unsynchronized``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from numaemu.host.clock import spin
from numaemu.host.fence import fence
from numaemu.model.engine import page_bases
from numaemu.model.image import LINE_SIZE, PAGE_SIZE
from numaemu.model.placement import PageTable
from numaemu.model.sites import INT3, KIND_KPROBE, KPROBE_ARMED, MAX_INSN, SiteTable
from numaemu.model.timeline import Timeline
from numaemu.patching.text_poke_bp import poke_int3_handler
from numaemu.patching.textmem import TextState

__all__ = ["IBUF_LINES", "IFETCH", "Observation", "Reader", "check_batch", "check_order", "Violation"]

IBUF_LINES = 512  # 32 KiB, an L1i
IFETCH = ("coherent", "until-sync")  # how stores reach what a node has fetched (module docstring)


@dataclass(frozen=True)
class Observation:
    sites: np.ndarray  # int64
    observed: np.ndarray  # uint8 [n, MAX_INSN]: the instruction executed (after INT3 emulation)
    via_int3: np.ndarray  # bool: the first byte fetched was INT3
    handler_ok: np.ndarray  # bool: the INT3 handler found a live, unchanged descriptor entry
    seq_before: np.ndarray  # int64
    seq_after: np.ndarray  # int64
    committed: np.ndarray  # int8: the committed state at seq_before
    # int64: the state a call in flight is moving the site to, + 1 (0: none), read between the
    # two sequence numbers (textmem ``pend``): what "new" means while seq_before is odd.
    pending: np.ndarray | None = None
    # A stop_machine round's patch function wrote text while this batch was fetched or executed
    # (textmem ``stop_writes`` odd at the start, or moved by the end).
    round_write: bool = False


@dataclass(frozen=True)
class Violation:
    kind: str
    node: int
    site: int
    offset: int
    observed: str
    detail: str
    expected: str = field(default="", compare=False)  # the encoding the last call that returned left

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "node": self.node, "site": self.site, "address": hex(self.offset), "observed": self.observed,
                "expected": self.expected, "detail": self.detail}


class Reader:
    """One node's instruction fetch through its page table and instruction buffer."""

    def __init__(
        self,
        node: int,
        mem: np.ndarray,
        table: PageTable,
        part_offset: tuple[int, ...],
        sites: SiteTable,
        state: TextState,
        safe_point: Callable[[], None],
        *,
        fetch_gap_ns: int = 0,
        handler_ns: int = 0,
        refcount: bool = True,
        mark: Callable[[int], int] | None = None,
        ifetch: str = "coherent",
    ) -> None:
        self.node = node
        self.mark = mark  # records "inside an INT3 handler" for a failure message (memory.WHERE)
        self.mem = mem
        self.sites = sites
        self.st = state
        self.safe_point = safe_point
        self.arm = sites.arch == "arm64"
        self.fetch_gap_ns = fetch_gap_ns
        self.handler_ns = handler_ns
        self.prefetch_ns = 0  # wall ns a fetched batch waits before it executes (the timeline's prefetch_ns)
        self.coherent = ifetch == "coherent"
        # Each line's generation (copies.invalidate), and the one each buffered line was read at.
        self.line_gen = state.line_gen if self.coherent and len(state.line_gen) else None
        self.gen = np.zeros(IBUF_LINES, dtype=np.int32)
        self.refcount = refcount  # the INT3 handler takes a reference (the refcount fix)
        self.words = mem[: len(mem) // 4 * 4].view(np.uint32)  # aligned 4-byte loads (arm64)
        self.page_base = page_bases(table, part_offset)
        self.tag = np.full(IBUF_LINES, -1, dtype=np.int64)
        self.data = np.zeros((IBUF_LINES, LINE_SIZE), dtype=np.uint8)
        self.flushes = 0
        self.int3_hits = 0

    def flush(self) -> None:
        """A serialising event (the sync's sync_core or ISB, leaving a stop_machine round): what
        the pipeline held is gone (it holds nothing between batches). Under ``until-sync`` the
        buffered lines go too; under ``coherent`` they are already as fresh as stores made them."""
        if not self.coherent:
            self.tag.fill(-1)
        self.flushes += 1

    def reset(self) -> None:
        """Empty the buffer: a CPU starting, whose lines may predate the copies' fill."""
        self.tag.fill(-1)

    def _lookup(self, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(buffer slot, hit) of each of `lines`: a line is a hit if the slot holds it and (under
        ``coherent``) no store has invalidated it since it was read."""
        slot = lines % IBUF_LINES
        hit = self.tag[slot] == lines
        if self.line_gen is not None and hit.any():
            h = np.flatnonzero(hit)
            phys_line = self._phys(lines[h] * LINE_SIZE) // LINE_SIZE
            hit[h] = self.gen[slot[h]] == self.line_gen[phys_line]
        return slot, hit

    def _fill(self, lines: np.ndarray, slot: np.ndarray) -> np.ndarray:
        """Read `lines` from this node's copy into the buffer at `slot`; returns them."""
        line_start = self._phys(lines * LINE_SIZE)
        if self.line_gen is not None:
            gen = self.line_gen[line_start // LINE_SIZE]
            fence()  # the generation before the bytes: a store after it moves it (smp_rmb)
            self.gen[slot] = gen
        fresh: np.ndarray = self.mem[line_start[:, None] + np.arange(LINE_SIZE)]
        self.data[slot] = fresh
        self.tag[slot] = lines
        return fresh

    def _phys(self, offsets: np.ndarray) -> np.ndarray:
        phys: np.ndarray = self.page_base[offsets // PAGE_SIZE] + offsets % PAGE_SIZE
        return phys

    def _through_buffer(self, offsets: np.ndarray, width: int) -> np.ndarray:
        """Bytes [offset, offset+width) from the buffered line (fetching it on a miss)."""
        lines = offsets // LINE_SIZE
        slot, hit = self._lookup(lines)
        col = offsets % LINE_SIZE
        out = np.empty((len(offsets), width), dtype=np.uint8)
        if np.any(hit):
            out[hit] = self.data[slot[hit][:, None], col[hit][:, None] + np.arange(width)]
        miss = ~hit
        if np.any(miss):
            fresh = self._fill(lines[miss], slot[miss])
            out[miss] = fresh[np.arange(len(fresh))[:, None], col[miss][:, None] + np.arange(width)]
        return out

    def set_timeline(self, tl: Timeline) -> None:
        """Take the fetch gap, the wait in the pipeline and the INT3 handler's time from the run's
        timeline (wall ns)."""
        self.fetch_gap_ns = tl.wall_ns(tl.fetch_gap_ns)
        self.prefetch_ns = tl.wall_ns(tl.prefetch_ns)
        self.handler_ns = tl.wall_ns(tl.int3_ns)

    def _words(self, offsets: np.ndarray) -> np.ndarray:
        """Aligned 4-byte instructions at `offsets`: from the buffered line on a hit, else one
        4-byte load each from memory (which fills the line)."""
        lines = offsets // LINE_SIZE
        slot, hit = self._lookup(lines)
        out = np.empty((len(offsets), 4), dtype=np.uint8)
        if np.any(hit):
            col = offsets[hit] % LINE_SIZE
            out[hit] = self.data[slot[hit][:, None], col[:, None] + np.arange(4)]
        miss = ~hit
        if np.any(miss):
            phys = self._phys(offsets[miss])
            # The generation before the word: if a store lands after it, the line is refetched.
            gen0 = self.line_gen[phys // LINE_SIZE].copy() if self.line_gen is not None else None
            fence()
            words = self.words[phys // 4].view(np.uint8).reshape(-1, 4)
            out[miss] = words
            self._through_buffer(offsets[miss], 1)  # the rest of each line comes in too
            # The buffered line holds the word executed (the line may have been read after a
            # later store). Two missed lines of one slot: only the one the slot kept.
            m_slot, m_line = slot[miss], lines[miss]
            kept = self.tag[m_slot] == m_line
            self.data[m_slot[kept][:, None], (offsets[miss][kept] % LINE_SIZE)[:, None] + np.arange(4)] = words[kept]
            if gen0 is not None:
                self.gen[m_slot[kept]] = gen0[kept]
        return out

    def execute(self, sites: np.ndarray) -> Observation:
        st, t = self.st, self.sites
        t0 = time.perf_counter_ns()
        offs = t.offset[sites]
        lens = t.length[sites].astype(np.int64)
        observed = np.zeros((len(sites), MAX_INSN), dtype=np.uint8)
        via_int3 = np.zeros(len(sites), dtype=bool)
        handler_ok = np.ones(len(sites), dtype=bool)
        w1 = st.get("stop_writes")
        fence()  # the count before the bytes
        if self.arm:
            # One aligned 4-byte fetch: single-copy atomic (ARM ARM B2.2.1), never torn, but
            # it may be stale (the buffered line).
            observed[:, :4] = self._words(offs)
        else:
            observed[:, 0] = self._through_buffer(offs, 1)[:, 0]
            spin(self.fetch_gap_ns)
            via_int3 = observed[:, 0] == INT3
            rest = ~via_int3 & (lens > 1)
            if np.any(rest):
                width = int(lens[rest].max())
                idx = offs[rest][:, None] + np.arange(1, width)
                tail = self.mem[self._phys(np.minimum(idx, offs[rest][:, None] + lens[rest][:, None] - 1))]
                observed[rest, 1:width] = tail
                observed[rest] *= np.arange(MAX_INSN) < lens[rest][:, None]
        # In the pipeline until it executes: a call that returns meanwhile must have waited
        # for this node (its syncs), or it leaves this node running what it replaced.
        spin(t0 + self.prefetch_ns - time.perf_counter_ns())
        fence()  # the bytes before the sequence numbers and states (smp_rmb)
        s1 = st.site_seq[sites].copy()
        committed = st.site_state[sites].copy()
        pending = st.pend[:, sites].max(axis=0).astype(np.int64)  # one node at a time patches a site
        if np.any(via_int3):  # (x86 only)
            self.int3_hits += int(via_int3.sum())
            at = sites[via_int3]
            out, ok, consistent = poke_int3_handler(self.st, self.node, t, at, self.handler_ns, self.mark, self.refcount)
            # Not in the descriptor: a kprobe's INT3, whose handler runs the probed
            # instruction from its own copy (kprobe_int3_handler): sound if the descriptor
            # the handler looked at first was not freed under it.
            probe = ~ok & (t.kind[at] == KIND_KPROBE)
            out[probe] = t.enc[at[probe], KPROBE_ARMED]
            ok |= probe & consistent
            observed[via_int3], handler_ok[via_int3] = out, ok
        fence()  # the bytes before the sequence numbers after
        s2 = st.site_seq[sites].copy()
        round_write = w1 % 2 == 1 or st.get("stop_writes") != w1
        return Observation(sites, observed, via_int3, handler_ok, s1, s2, committed, pending, round_write)


def check_batch(obs: Observation, sites: SiteTable, node: int, limit: int = 10) -> tuple[int, list[Violation]]:
    """(number of violations, the first `limit` described). Pure: judges observations only."""
    s = obs.sites
    lens = sites.length[s].astype(np.int64)
    match = sites.matches(s, obs.observed)  # [i, st]: execution i ran state st's encoding
    valid = match.any(axis=1)
    stable = (obs.seq_before == obs.seq_after) & (obs.seq_before % 2 == 0)
    exact = match[np.arange(len(s)), obs.committed.astype(np.int64)]
    kinds = np.full(len(s), "", dtype=object)
    kinds[~obs.handler_ok] = "int3-no-descriptor"
    kinds[(kinds == "") & ~valid] = "torn"
    if obs.round_write and obs.pending is not None:
        # Executed while a stop_machine round wrote its batch: the round's exclusion is what
        # makes these stores safe. Intel allows no instruction to be stored while another CPU
        # may execute it, but through the cross-modifying-code algorithm (SDM vol. 3 s.8.1.3,
        # "unsynchronized cross-modifying code"); arm64 only between B, BL, NOP, BRK, SVC, HVC
        # and SMC (ARM ARM B2.2.5, the kernel's former aarch64_insn_hotpatch_safe). A torn
        # fetch is one outcome; the architectures promise nothing at all.
        flight = _in_flight(obs, obs.pending)
        if sites.arch == "arm64":
            flight &= ~_hotpatch_safe(sites, s, obs.committed, obs.pending)
        kinds[(kinds == "") & flight] = "unsynchronized"
    # A kprobe's INT3 is a state of its own (armed), not a patch left half-way.
    kinds[(kinds == "") & stable & obs.via_int3 & (sites.kind[s] != KIND_KPROBE)] = "int3-after-return"
    kinds[(kinds == "") & stable & ~exact] = "stale"
    bad = np.flatnonzero(kinds != "")
    out = []
    for i in bad[:limit]:
        site = int(s[i])
        L = int(lens[i])
        got = bytes(obs.observed[i, :L]).hex(" ")
        want = sites.encoding(site, int(obs.committed[i])).hex(" ")
        detail = {
            "torn": "not any valid instruction of this site",
            "unsynchronized": "executed while a stop_machine round wrote it (the round excludes every CPU)",
            "stale": f"the last call that returned left {want}",
            "int3-after-return": "INT3 executed after the patch call returned",
            "int3-no-descriptor": "INT3 handler found no live descriptor entry (or it changed under the handler)",
        }[kinds[i]]
        out.append(Violation(str(kinds[i]), node, site, int(sites.offset[site]), got, detail, want))
    return len(bad), out


def _in_flight(obs: Observation, pending: np.ndarray) -> np.ndarray:
    """Per execution: one patch call of the site was in flight from before the execution to after
    it, with its target state known (``pend`` is set before the odd sequence number and cleared
    after the even one)."""
    flight: np.ndarray = (obs.seq_before == obs.seq_after) & (obs.seq_before % 2 == 1) & (pending > 0)
    return flight


def _hotpatch_safe(sites: SiteTable, s: np.ndarray, old: np.ndarray, pending: np.ndarray) -> np.ndarray:
    """Per execution: may an arm64 CPU execute the site while it changes from state `old` to
    state `pending` - 1 (both instructions B, BL, NOP, BRK, SVC, HVC or SMC; ARM ARM B2.2.5)?"""
    def safe(state: np.ndarray) -> np.ndarray:
        w = sites.enc[s, state.astype(np.int64), :4].astype(np.uint32) @ (np.uint32(1) << np.arange(0, 32, 8, dtype=np.uint32))
        branch = (w & 0x7C000000) == 0x14000000  # B 0x14.., BL 0x94..
        exc = ((w & 0xFFE00000) == 0xD4000000) & np.isin(w & 0x1F, (1, 2, 3))  # SVC, HVC, SMC
        brk = (w & 0xFFE0001F) == 0xD4200000
        ok: np.ndarray = branch | exc | brk | (w == 0xD503201F)
        return ok
    both: np.ndarray = safe(old) & safe(np.maximum(pending - 1, 0))
    return both


def check_order(obs: Observation, sites: SiteTable, seen: np.ndarray) -> np.ndarray:
    """One task's history: the executions of `obs` at which the task ran a site's old code after
    it had run the site's new code in the same patch call (the same odd sequence number, in
    `seen`, per site); then records in `seen` the calls whose new code `obs` ran. Pure but for
    `seen`, which is the task's row of ``task_seen``.

    One copy cannot show new-then-old: a migration is a full barrier (the runqueue locks; x86's
    IRET serialises), after which the new bytes the task saw are visible to its new CPU. Replicas
    can, when a node's copy gets a step after another node's (Kuzin's ``__text_poke`` loops over
    the replicas, King writes node 0's first)."""
    s1, pend = obs.seq_before, obs.pending
    if pend is None:
        return np.zeros(0, np.int64)
    # In flight from before to after the execution, with the call's target known (``pend`` is
    # set before the odd sequence number and cleared after the even one; the committed state is
    # no safe "old": the call writes it just before its even number).
    flight = np.flatnonzero(_in_flight(obs, pend) & obs.handler_ok)
    if not len(flight):
        return flight
    at, seq = obs.sites[flight], s1[flight]
    match = sites.matches(at, obs.observed[flight])
    new = match[np.arange(len(flight)), pend[flight] - 1]
    old = match.any(axis=1) & ~new
    back: np.ndarray = flight[old & (seen[at] == seq)]
    seen[at[new]] = seq[new]
    return back
