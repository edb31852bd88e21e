"""What the hierarchy's work costs in emulated time, and what the x86 design costs each process
(pure logic).

`Charges` turns `hierarchy.HierarchyCounts` into nanoseconds for one node:

* every instruction line costs the front end's time to deliver it (`fetch_cycles_per_line`);
  served beyond L1i it also stalls for that level's latency, in full: an instruction fetch
  miss leaves the core nothing to execute, so fetch misses serialise (Ansari et al., IEEE CAL,
  "upon an L1 cache miss, even OoO processors cannot make forward progress");
* a data line served beyond L1d costs its level's latency divided by the profile's memory-level
  parallelism (misses the out-of-order core overlaps; [CHOU05] measured ~1.5 for server work);
* a line from memory costs the topology's latency to its home node plus the queueing there
  (`contention`);
* an L1 TLB miss that hits the second level costs its hit cycles; a walk, that plus each entry
  read at the level that served it (from the page tables' node's memory on a miss).

`ProcessCosts`: the x86 series gives every mm one PGD per node (RFC 07/12, arch/x86/mm/pgtable.c
``for_each_replica(nid) per_numa_pgd(mm, nid) = _pgd_alloc_node(nid)``), so a fork allocates,
zeroes and fills ``copies - 1`` more PGDs, each on its own node, and an exit frees them. arm64
(King's series) replicates only the kernel's table, loaded in TTBR1 once per CPU, and pays none
of this: "We do not need to be concerned with each user processes page table".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from numaemu.model.arrays import F64, Ints
from numaemu.model.hardware import HardwareProfile
from numaemu.model.hierarchy import HierarchyCounts

__all__ = ["Charges", "ProcessCosts", "process_costs", "KERNEL_PGD_PTRS"]

# pgd_ctor copies KERNEL_PGD_PTRS = PTRS_PER_PGD - pgd_index(PAGE_OFFSET) entries, and
# PAGE_OFFSET is PGD slot 273 (arch/x86/include/asm/page_64_types.h): 239 entries, 1912 bytes.
KERNEL_PGD_PTRS = 512 - 273
_LINE = 64


@dataclass(frozen=True)
class Charges:
    """One node's prices, in ns, for what `HierarchyCounts` counts."""

    fetch_ns: float  # each instruction line, whatever served it
    stall_ns: tuple[float, float, float]  # served by L1, L2, LLC: the stall beyond the fetch
    memory_ns: F64  # per home node: latency plus queueing
    queue_ns: F64  # per home node: the queueing part
    mlp: float
    stlb_hit_ns: float
    walk_home: int

    @classmethod
    def of(cls, profile: HardwareProfile, latency_row: npt.ArrayLike, queue_row: npt.ArrayLike | None, walk_home: int) -> Charges:
        lat = np.asarray(latency_row, dtype=np.float64)
        queue = np.zeros(len(lat)) if queue_row is None else np.asarray(queue_row, dtype=np.float64)
        p = profile
        return cls(p.ns(p.fetch_cycles_per_line), (0.0, p.ns(p.l2.latency_cycles), p.ns(p.llc.latency_cycles)),
                   lat + queue, queue, p.mlp, p.ns(p.stlb_i.hit_cycles), walk_home)

    def cost(self, c: HierarchyCounts) -> tuple[float, float]:
        """(emulated ns, of which queueing) for the work `c` counts."""
        s = c.served
        l2, llc = self.stall_ns[1], self.stall_ns[2]
        text = float(s[0].sum()) * self.fetch_ns + s[0, 1] * l2 + s[0, 2] * llc + float(c.memory_by_home[0] @ self.memory_ns)
        data = (s[1, 1] * l2 + s[1, 2] * llc + float(c.memory_by_home[1] @ self.memory_ns)) / self.mlp
        l1_misses = int(c.tlb[0] + c.tlb[1])
        w = c.walk_served
        walks = l1_misses * self.stlb_hit_ns + w[1] * l2 + w[2] * llc + w[3] * float(self.memory_ns[self.walk_home])
        queue = float(c.memory_by_home[0] @ self.queue_ns) + float(c.memory_by_home[1] @ self.queue_ns) / self.mlp + w[3] * float(self.queue_ns[self.walk_home])
        return text + data + walks, queue


@dataclass(frozen=True)
class ProcessCosts:
    """The x86 design's per-process work on one node: `fork_ns` for each fork (and its exit)
    with `copies` PGDs a process, at `forks_per_kernel_ns` forks a nanosecond of kernel time.

    The rate is measured, not modelled (numaemu/data/workloads/calls.json: the microbenchmark's
    forks an iteration over its kernel time an iteration, scripts/measure_calls.py): a replayed
    request is one sampled path of a call, far shorter than the call, so counting the requests
    whose path reaches copy_process would charge a fork many times over. The work is charged
    as the share of the real kernel time it adds, on the modelled kernel time."""

    fork_ns: float
    forks_per_kernel_ns: float
    copies: int

    def charge(self, kernel_ns: float) -> tuple[float, float]:
        """(forks `kernel_ns` of kernel work stands for, their extra ns)."""
        forks = kernel_ns * self.forks_per_kernel_ns
        return forks, forks * self.fork_ns


def process_costs(profile: HardwareProfile, latency_row: npt.ArrayLike, pgd_nodes: Ints, forks_per_kernel_ns: float, *, pti: bool) -> ProcessCosts:
    """What the x86 design's per-process PGDs cost a node whose latencies are `latency_row`, when
    every process has one PGD on each of `pgd_nodes` (one of them the node's own, whose cost the
    base kernel pays too, so only the others are charged).

    A fork, per extra PGD (RFC 07/12, arch/x86/mm/pgtable.c): an order-0 allocate and free
    ([PAGEBENCH]'s pair, the free at exit), and its lines written to the PGD's node, as many in
    flight as the core has fill buffers (`store_mlp`): the zeroing (``GFP_PGTABLE_USER`` has
    ``__GFP_ZERO``; with PTI the PGD is an order-1 pair, 8 KiB, arch/x86/include/asm/pgalloc.h)
    and pgd_ctor's copy of the kernel half (KERNEL_PGD_PTRS entries, twice with PTI:
    ``clone_pgd_range`` also fills the user copy). A switch: the per-node CR3 is
    ``next->pgd_numa[numa_node_id()]``, one load beside the base kernel's own CR3 write (RFC
    07/12, arch/x86/mm/tlb.c): charged nothing.
    """
    lat = np.asarray(latency_row, dtype=np.float64)
    nodes = np.asarray(pgd_nodes, dtype=np.int64)
    own = int(np.argmin(lat))  # the node's own (or nearest) memory holds the PGD the base kernel has too
    extra = nodes[nodes != own] if own in nodes else nodes[1:]
    pages = 2 if pti else 1
    lines = pages * (4096 // _LINE + (KERNEL_PGD_PTRS * 8 + _LINE - 1) // _LINE)
    fork = float(sum(profile.ns(profile.page_alloc_cycles) + lines * lat[n] / profile.store_mlp for n in extra))
    return ProcessCosts(fork, forks_per_kernel_ns, 1 + len(extra))
