"""text_poke(): writing instruction bytes into the master and every copy, at the modeled cost.

Every protocol writes kernel text through a node's `TextPoke`: the master first, then every copy
that holds the page, as Kuzin's ``__text_poke()`` loops over the replicas and King's
``aarch64_insn_patch_text_nosync()`` writes node 0's copy, then every other node's. Each site
written into each copy is charged the timeline's ``text_poke_ns`` at the run's scale (text_poke() maps the page through poking_mm,
writes, unmaps and flushes the TLB entry, arch/x86/kernel/alternative.c), so other nodes see the
sites change one after another, as they would, and each copy of a site is written its time after
the one before it (so a node's copy lags another's by ``text_poke_ns`` a site). While the patching
CPU writes, the node's other CPUs run its tasks (`TextPoke.meanwhile`): a node is several CPUs,
of which one patches.

Each store is made visible to instruction fetch right after it (copies.invalidate): x86 fetch
snoops it; arm64's ``aarch64_insn_patch_text_nosync`` cleans and invalidates the line
(``caches_clean_inval_pou``). That maintenance is by virtual address, and the VA maps the
patching CPU's own replica: under the ``ivau-local`` bug only the lines of the copy the patching
node's page table maps are invalidated (a replicated kernel that writes every replica through
its alias but keeps mainline's one maintenance call on the kernel VA), so the other replicas'
stale lines stay in their nodes' I-caches, where no ISB reaches them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from numaemu.host.clock import spin
from numaemu.host.fence import fence
from numaemu.model.image import LINE_SIZE, PAGE_SIZE
from numaemu.patching.copies import TextCopies, invalidate
from numaemu.patching.protocols import POKE_CHUNK, SMALL_WRITE

if TYPE_CHECKING:
    from numaemu.patching.kernel import NodeKernel

__all__ = ["TextPoke", "text_poke_batch", "PER_SITE_MIN_NS"]

PER_SITE_MIN_NS = 50_000  # wall ns a site and copy from which `TextPoke.poke` writes site by site


class TextPoke:
    """One node's writes of kernel text: `poke` (bytes, site by site), `write_site` (one site's
    bytes, scalar), `write_word` (one aligned 4-byte store per copy), each charging its cost."""

    def __init__(self, copies: TextCopies, master: np.ndarray, mem: np.ndarray, text_poke_ns: int, check_alive: Callable[[], None],
                 line_gen: np.ndarray | None = None, local_base: np.ndarray | None = None) -> None:
        self.copies = copies
        self.line_gen = line_gen  # copies.invalidate's generations (None: no instruction fetch to keep coherent)
        # The same, for scalar updates (a memoryview element costs ~50 ns, a numpy one ~1 us).
        self.gen_mv = memoryview(line_gen.data).cast("B").cast("i") if line_gen is not None and len(line_gen) else None
        self.local_base = local_base  # ivau-local: the patching node's frame of each page (engine.page_bases)
        self.master = master
        self.mem = mem
        self.master_mv = memoryview(master.data)
        self.mem_mv = memoryview(mem.data)
        self.text_poke_ns = text_poke_ns
        self.check_alive = check_alive
        self.n_copies = copies.where.shape[1]
        # While this CPU writes, the node's other CPUs run their tasks (stress_node sets it to
        # ReaderTasks.run_until; None inside a stop_machine round, where every CPU is parked).
        self.meanwhile: Callable[[int], None] | None = None

    def wait(self, ns: int) -> None:
        """`ns` wall ns of writing: the node's other tasks run meanwhile, if they may."""
        if ns <= 0:
            return
        deadline = time.perf_counter_ns() + ns
        if self.meanwhile is not None:
            self.meanwhile(deadline)
        spin(deadline - time.perf_counter_ns())

    def charge(self, n_sites: int, t0: int) -> None:
        """Wait out what writing `n_sites` into every copy costs, less the time since `t0`."""
        if self.text_poke_ns:
            self.wait(n_sites * self.n_copies * self.text_poke_ns - (time.perf_counter_ns() - t0))

    def poke(self, offsets: np.ndarray, values: np.ndarray, site_of_byte: np.ndarray) -> None:
        """Write bytes site by site, each site into the master and then each copy in turn,
        `text_poke_ns` (wall) a site and copy: other nodes see the sites change one after
        another, and one node's copy of a site change one copy's time after another's, as
        ``__text_poke`` loops over the replicas for each site. Site by site costs some 10 us of
        Python a site and copy: below PER_SITE_MIN_NS a site (a bench at scale 1) that would be
        more than the time modeled, so many sites are written by chunks instead, each copy's
        chunk its time after the one before."""
        if len(offsets) > SMALL_WRITE and self.text_poke_ns < PER_SITE_MIN_NS:
            self._poke_chunks(offsets, values, site_of_byte)
            return
        t0 = time.perf_counter_ns()
        offs, vals, owner = offsets.tolist(), values.tolist(), site_of_byte.tolist()
        start, n_sites = 0, 0
        for i in range(1, len(offs) + 1):
            if i == len(offs) or owner[i] != owner[start]:
                self.write_site(offs[start], bytes(vals[start:i]))
                start, n_sites = i, n_sites + 1
                if n_sites % POKE_CHUNK == 0:
                    # Tracing every function pokes ~35,000 sites into every copy: look for an
                    # abort (or park for a recovery) now and then, between whole sites.
                    self.check_alive()
        self.charge(n_sites, t0)

    def _poke_chunks(self, offsets: np.ndarray, values: np.ndarray, site_of_byte: np.ndarray) -> None:
        if not self.text_poke_ns:  # no modeled cost: one vectorised write
            self.copies.write(self.master, self.mem, offsets, values, self.line_gen, self._local(offsets))
            return
        starts = np.concatenate([[0], np.flatnonzero(np.diff(site_of_byte)) + 1])
        for i in range(0, len(starts), POKE_CHUNK):
            self.check_alive()  # an abort, or a park for a recovery, between whole chunks
            lo = starts[i]
            hi = starts[i + POKE_CHUNK] if i + POKE_CHUNK < len(starts) else len(offsets)
            chunk_ns = min(POKE_CHUNK, len(starts) - i) * self.text_poke_ns
            self.copies.write(self.master, self.mem, offsets[lo:hi], values[lo:hi], self.line_gen, self._local(offsets[lo:hi]),
                              between=functools.partial(self.wait, chunk_ns))

    def _local(self, offsets: np.ndarray) -> np.ndarray | None:
        """ivau-local: the ``mem`` offsets of `offsets` in the patching node's own copy (None:
        every copy written is invalidated)."""
        lb = self.local_base
        if lb is None:
            return None
        offsets = np.asarray(offsets, dtype=np.int64)
        base = lb[offsets // PAGE_SIZE]
        out: np.ndarray = np.where(base >= 0, base + offsets % PAGE_SIZE, -1)
        return out

    def write_site(self, offset: int, data: bytes, timed: bool = True) -> None:
        """Write one site's bytes (contiguous) into the master, then every copy, each copy
        `text_poke_ns` after the one before (unless not `timed`)."""
        L = len(data)
        if offset % 4096 + L > 4096:  # crosses a page: the copies' frames are not adjacent
            for i, b in enumerate(data):
                self.write_site(offset + i, bytes([b]), timed=False)
            if timed:
                self.wait(self.n_copies * self.text_poke_ns)
            return
        self.master_mv[offset : offset + L] = data
        if self.local_base is not None:  # ivau-local: the maintenance reaches the local copy only
            local = self._local(np.array([offset, offset + L - 1]))
            assert local is not None
            for t in self.copies.targets_of(offset):
                self.mem_mv[t : t + L] = data
                invalidate(self.line_gen, local)
                if timed:
                    self.wait(self.text_poke_ns)
            return
        gen = self.gen_mv
        for t in self.copies.targets_of(offset):
            self.mem_mv[t : t + L] = data
            if gen is not None:  # copies.invalidate, scalar: the lines of [t, t + L)
                fence()
                for line in range(t // LINE_SIZE, (t + L - 1) // LINE_SIZE + 1):
                    gen[line] += 1
            if timed:
                self.wait(self.text_poke_ns)  # this copy's time, before the next copy is written

    def write_word(self, offset: int, word: bytes) -> None:
        """One aligned 4-byte store per copy (single-copy atomic, as arm64 patching writes)."""
        local = self._local(np.array([offset]))
        self.copies.write_word(self.master, self.mem, offset, word, self.line_gen, None if local is None else int(local[0]),
                               between=lambda: self.wait(self.text_poke_ns))


def text_poke_batch(k: NodeKernel, sites: np.ndarray, new: np.ndarray) -> None:
    """Write each site's new bytes with plain text_poke, then one text_poke_sync: how x86 arms
    and disarms a kprobe (arch_arm_kprobe, arch_disarm_kprobe: a one-byte write is atomic, so no
    INT3 dance is needed for it)."""
    t0 = time.perf_counter_ns()
    for s, row in zip(sites.tolist(), new, strict=True):
        k.text.write_site(int(k.sites.offset[s]), row[: k.sites.length[s]].tobytes())
    k.text.charge(len(sites), t0)
    k.sync()
