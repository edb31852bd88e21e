"""How a node executes patch sites, and the checker that judges what it observed.

Real cores may run bytes they fetched before a patch until a serialising event (x86 ``sync_core``
after the IPI, arm64 ISB): that is what the protocols' syncs are for. So a node here keeps the
64-byte lines it fetched in an *instruction buffer* (direct-mapped, `IBUF_LINES` lines) that is
only flushed when the node takes part in a sync or a stop_machine round, and it fetches each x86
instruction in two steps: the first byte decides (through the buffer), the rest is read from its
copy in memory the timeline's ``fetch_gap_ns`` later. A skipped or early sync can then really
produce a torn or stale execution. (Stores do not invalidate the buffer: x86 fetch snoops them and
arm64's patcher issues IC IVAU, so real stale windows are shorter; numaemu/model/timeline.py and
the README say what that changes.) An arm64 instruction is one aligned 4-byte load, single-copy
atomic.

`execute` runs a batch of sites: step 1 for all, the gap, step 2 for all, then the INT3 handler for
sites whose first byte was INT3 (`text_poke_bp.poke_int3_handler`: interrupts off, so it answers no
sync; it bsearches the descriptor and emulates the new instruction; a site it does not find is a
kprobe's, whose handler runs the probed instruction). The node reads each site's sequence number
before and after, and the state the last returned call committed.

`check_batch` is the checker. It is told nothing about bugs; it judges only the observations:
- a *stable* site (sequence even and unchanged across the batch: no call in flight) must hold
  exactly its committed encoding: anything else is ``stale`` (old code after the call returned)
  or ``int3-after-return``;
- any site must hold one of its valid encodings (after INT3 emulation): anything else is
  ``torn``; an INT3 with no live descriptor, or a descriptor that changed or was poisoned under
  the handler, is ``int3-no-descriptor`` (a kprobe's armed INT3 is a state of its own).
"""

from __future__ import annotations

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

__all__ = ["IBUF_LINES", "Observation", "Reader", "check_batch", "Violation"]

IBUF_LINES = 512  # 32 KiB, an L1i


@dataclass(frozen=True)
class Observation:
    sites: np.ndarray  # int64
    observed: np.ndarray  # uint8 [n, MAX_INSN]: the instruction executed (after INT3 emulation)
    via_int3: np.ndarray  # bool: the first byte fetched was INT3
    handler_ok: np.ndarray  # bool: the INT3 handler found a live, unchanged descriptor entry
    seq_before: np.ndarray  # int64
    seq_after: np.ndarray  # int64
    committed: np.ndarray  # int8: the committed state at seq_before


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
        self.refcount = refcount  # the INT3 handler takes a reference (the refcount fix)
        self.words = mem[: len(mem) // 4 * 4].view(np.uint32)  # aligned 4-byte loads (arm64)
        self.page_base = page_bases(table, part_offset)
        self.tag = np.full(IBUF_LINES, -1, dtype=np.int64)
        self.data = np.zeros((IBUF_LINES, LINE_SIZE), dtype=np.uint8)
        self.flushes = 0
        self.int3_hits = 0

    def flush(self) -> None:
        self.tag.fill(-1)
        self.flushes += 1

    def _phys(self, offsets: np.ndarray) -> np.ndarray:
        phys: np.ndarray = self.page_base[offsets // PAGE_SIZE] + offsets % PAGE_SIZE
        return phys

    def _through_buffer(self, offsets: np.ndarray, width: int) -> np.ndarray:
        """Bytes [offset, offset+width) from the buffered line (fetching it on a miss)."""
        lines = offsets // LINE_SIZE
        slot = lines % IBUF_LINES
        col = offsets % LINE_SIZE
        hit = self.tag[slot] == lines
        out = np.empty((len(offsets), width), dtype=np.uint8)
        if np.any(hit):
            out[hit] = self.data[slot[hit][:, None], col[hit][:, None] + np.arange(width)]
        miss = ~hit
        if np.any(miss):
            line_start = self._phys(lines[miss] * LINE_SIZE)
            fresh = self.mem[line_start[:, None] + np.arange(LINE_SIZE)]
            out[miss] = fresh[np.arange(len(line_start))[:, None], col[miss][:, None] + np.arange(width)]
            self.data[slot[miss]] = fresh
            self.tag[slot[miss]] = lines[miss]
        return out

    def set_timeline(self, tl: Timeline) -> None:
        """Take the fetch gap and the INT3 handler's time from the run's timeline (wall ns)."""
        self.fetch_gap_ns = tl.wall_ns(tl.fetch_gap_ns)
        self.handler_ns = tl.wall_ns(tl.int3_ns)

    def _words(self, offsets: np.ndarray) -> np.ndarray:
        """Aligned 4-byte instructions at `offsets`: from the buffered line on a hit, else one
        4-byte load each from memory (which fills the line)."""
        lines = offsets // LINE_SIZE
        slot = lines % IBUF_LINES
        hit = self.tag[slot] == lines
        out = np.empty((len(offsets), 4), dtype=np.uint8)
        if np.any(hit):
            col = offsets[hit] % LINE_SIZE
            out[hit] = self.data[slot[hit][:, None], col[:, None] + np.arange(4)]
        miss = ~hit
        if np.any(miss):
            phys = self._phys(offsets[miss])
            words = self.words[phys // 4].view(np.uint8).reshape(-1, 4)
            out[miss] = words
            self._through_buffer(offsets[miss], 1)  # the rest of each line comes in too
            # The buffered line holds the word executed (the line may have been read after a
            # later store). Two missed lines of one slot: only the one the slot kept.
            m_slot, m_line = slot[miss], lines[miss]
            kept = self.tag[m_slot] == m_line
            self.data[m_slot[kept][:, None], (offsets[miss][kept] % LINE_SIZE)[:, None] + np.arange(4)] = words[kept]
        return out

    def execute(self, sites: np.ndarray) -> Observation:
        st, t = self.st, self.sites
        s1 = st.site_seq[sites].copy()
        committed = st.site_state[sites].copy()
        fence()  # the sequence numbers and states before the bytes (smp_rmb)
        offs = t.offset[sites]
        lens = t.length[sites].astype(np.int64)
        observed = np.zeros((len(sites), MAX_INSN), dtype=np.uint8)
        via_int3 = np.zeros(len(sites), dtype=bool)
        handler_ok = np.ones(len(sites), dtype=bool)
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
            if np.any(via_int3):
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
        return Observation(sites, observed, via_int3, handler_ok, s1, s2, committed)


def check_batch(obs: Observation, sites: SiteTable, node: int, limit: int = 10) -> tuple[int, list[Violation]]:
    """(number of violations, the first `limit` described). Pure: judges observations only."""
    s = obs.sites
    lens = sites.length[s].astype(np.int64)
    # match[i, st]: execution i ran state st's encoding (a state the site has).
    match = np.stack([sites.holds(s, np.full(len(s), st), obs.observed) for st in range(sites.enc.shape[1])], axis=1)
    match &= np.arange(sites.enc.shape[1]) < sites.n_states[s][:, None]
    valid = match.any(axis=1)
    stable = (obs.seq_before == obs.seq_after) & (obs.seq_before % 2 == 0)
    exact = match[np.arange(len(s)), obs.committed.astype(np.int64)]
    kinds = np.full(len(s), "", dtype=object)
    kinds[~obs.handler_ok] = "int3-no-descriptor"
    kinds[(kinds == "") & ~valid] = "torn"
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
            "stale": f"the last call that returned left {want}",
            "int3-after-return": "INT3 executed after the patch call returned",
            "int3-no-descriptor": "INT3 handler found no live descriptor entry (or it changed under the handler)",
        }[kinds[i]]
        out.append(Violation(str(kinds[i]), node, site, int(sites.offset[site]), got, detail, want))
    return len(bad), out
