"""What one node's engine needs of a hardware profile, decided by the coordinator (pure logic).

`node_hardware` works out, from the placement and the page-table design, what differs between
nodes and policies: the page size the kernel image is mapped with, whose page tables a node
walks, how many copies share its LLC, which nodes hold each process's PGDs (the x86 design), and
the queueing it pays per home (`contention`), and how often its workload forks. `NodeHardware.build` makes the engine's parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from numaemu.model.arrays import I8
from numaemu.model.hardware import HardwareProfile, hierarchy_levels
from numaemu.model.hierarchy import DATA, TEXT, Hierarchy
from numaemu.model.image import KernelImage
from numaemu.model.timing import Charges, ProcessCosts, process_costs

__all__ = ["NodeHardware", "page_kinds", "page_shift_for", "llc_copies"]


@dataclass(frozen=True)
class NodeHardware:
    """One node's share of a profile, as its worker gets it."""

    profile: HardwareProfile
    page_shift: int  # 21: the image mapped with 2 MiB pages; 12: 4 KiB
    llc_copies: int  # copies of the image in the LLC this node shares (1 unless shared by nodes)
    walk_home: int  # the node whose memory holds the page tables this node walks
    queue_row: tuple[float, ...] | None  # per home: the wait a line from it costs (contention)
    pgd_nodes: tuple[int, ...]  # the x86 design: nodes holding a PGD of every process; () otherwise
    forks_per_kernel_ns: float | None  # the workload's measured fork rate (Workload.forks_per_kernel_us); None: unknown

    def build(self, n_nodes: int, latency_row: npt.ArrayLike) -> tuple[Hierarchy, Charges, ProcessCosts | None]:
        p = self.profile
        hier = Hierarchy(hierarchy_levels(p, self.page_shift, self.llc_copies), n_nodes=n_nodes, page_shift=self.page_shift,
                         walk_home=self.walk_home, walk_table=self.walk_home, shared_stlb=p.shared_stlb)
        charges = Charges.of(p, latency_row, self.queue_row, self.walk_home)
        process = None
        if self.pgd_nodes and self.forks_per_kernel_ns:
            # PTI: Meltdown-affected cores (Intel before Cascade Lake) run with it by default,
            # and with it a PGD is an order-1 pair (arch/x86/include/asm/pgalloc.h).
            process = process_costs(p, latency_row, np.array(self.pgd_nodes), self.forks_per_kernel_ns, pti=p.pti)
        return hier, charges, process


def page_kinds(image: KernelImage) -> I8:
    """Per image page: `TEXT` for pages of executable sections (.text and kin), `DATA` else."""
    kinds = np.full(image.n_pages, DATA, dtype=np.int8)
    for sec in image.sections:
        if sec.name.startswith((".text", ".init.text", ".noinstr", ".entry", ".modules")):
            kinds[sec.pages().start : sec.pages().stop] = TEXT
    return kinds


def page_shift_for(pt_style: str) -> int:
    """The page size kernel text is mapped with. x86-64 maps the kernel image with 2 MiB pages,
    and Kuzin's series maps each copy at PMD granularity; King's arm64 copies are mapped with
    4 KiB pages at L3 (pagetables.py says why); with no design named, the x86 base kernel's."""
    return 12 if pt_style == "arm64" else 21


def llc_copies(profile: HardwareProfile, node: int, serving: tuple[int, ...]) -> int:
    """How many copies of the image the nodes sharing `node`'s LLC fetch from (`serving[n]`: the
    node whose copy n maps). An LLC of one node holds one."""
    group = profile.llc.nodes
    if group <= 1 or not serving:
        return 1
    first = node // group * group
    return len(set(serving[first : first + group]))
