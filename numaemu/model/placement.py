"""Placement policies and per-node page tables (pure logic).

A policy decides which node's memory backs each page of the kernel image, as seen from each node:

- ``single``: one copy, in node 0's memory; every node maps it. This is arm64 today (the image is
  wherever the boot CPU's node put it) and what King's ``CONFIG_REPLICATE_KTEXT`` fixes.
- ``interleave``: one copy, pages spread round-robin over the nodes (what x86 gets when the
  kernel is loaded interleaved; uniform but mostly remote).
- ``replicate``: every node has its own copy and maps it (King 2023, Kuzin 2023). ``--replicate
  text`` copies ``.text`` only and leaves ``.rodata`` as ``single`` would; ``text+rodata`` copies
  both, as both series do (King: ``_stext`` to ``__start_ro_after_init``; Kuzin: the top 2 GiB).

Partial replication (``--replicas-every K``, SGI IRIX's ``numa_kernel_replication_ratio``): copies
only on every K-th node, starting at the master (node 0); every other node maps the nearest copy
by SLIT distance. Nodes without memory (``memory_bytes = 0``: memoryless CPU nodes) never hold a
copy, nor, under ``single`` and ``interleave``, any page: they map the nearest node that has memory,
as Kuzin's series does (mm/numa_replication.c). `serving_nodes` decides both, from the distances.

Each node gets a `PageTable`: for every image page, the home node whose frames back it and the
frame number within that node's image area. Every node's table maps the same virtual addresses;
only the frames differ. So a task reads the same bytes at the same address whichever node it runs
on, as TTBR1 per CPU (arm64) or ``pgd_numa[numa_node_id()]`` (x86) make it in the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from numaemu.errors import UsageError
from numaemu.model.arrays import I16, I64, Intp
from numaemu.model.image import PAGE_SIZE, KernelImage
from numaemu.model.topology import Topology

__all__ = ["POLICIES", "REPLICATE_SCOPES", "PageTable", "Placement", "place", "place_for", "serving_nodes", "check_reachable", "check_replicas_every"]

POLICIES = ("single", "interleave", "replicate")
REPLICATE_SCOPES = ("text", "text+rodata")
UNMAPPED = -1


@dataclass(frozen=True, eq=False)
class PageTable:
    """One node's view of the image: page number -> (home node, frame in that node's image area)."""

    node: int
    home: I16  # per image page; UNMAPPED for the gap between sections
    frame: I64  # per image page; UNMAPPED where unmapped

    def translate(self, offset: int) -> tuple[int, int]:
        """Image offset -> (home node, byte offset in that node's image area). KeyError if unmapped."""
        page = offset // PAGE_SIZE
        if not 0 <= page < len(self.home) or self.home[page] == UNMAPPED:
            raise KeyError(f"offset {offset:#x} is not mapped")
        return int(self.home[page]), int(self.frame[page]) * PAGE_SIZE + offset % PAGE_SIZE


@dataclass(frozen=True, eq=False)
class Placement:
    """Where every page of the image lives under `policy`, and each node's page table."""

    policy: str
    replicate: str
    n_nodes: int
    hosted: tuple[Intp, ...]  # per node: image page numbers held in its frames, frame order
    tables: tuple[PageTable, ...]
    mapped_pages: int  # pages of one copy of the image
    serving: tuple[int, ...] = ()  # replicate: per node, the node whose copy it maps

    @property
    def copy_nodes(self) -> tuple[int, ...]:
        """Nodes that hold a full copy of the replicated sections (``replicate`` only)."""
        return tuple(sorted(set(self.serving))) if self.policy == "replicate" else ()

    def image_bytes(self, node: int) -> int:
        """Memory the image takes in `node`'s memory."""
        return len(self.hosted[node]) * PAGE_SIZE

    @property
    def total_bytes(self) -> int:
        return sum(self.image_bytes(n) for n in range(self.n_nodes))

    @property
    def extra_bytes(self) -> int:
        """Memory beyond one copy of the image, i.e. against ``single``."""
        return self.total_bytes - self.mapped_pages * PAGE_SIZE

    def homes_of(self, node: int) -> set[int]:
        """The nodes whose memory `node` reads image bytes from."""
        home = self.tables[node].home
        return set(np.unique(home[home != UNMAPPED]).tolist())


def serving_nodes(
    distance: Sequence[Sequence[int]], has_memory: Sequence[bool], every: int = 1
) -> tuple[int, ...]:
    """Per node, the node whose copy of the image it maps under ``replicate``.

    Copies go on the master node (the first node with memory, node 0 unless it is memoryless)
    and on every `every`-th node after it that has memory (IRIX: "a copy on every n-th node").
    Every node maps its own copy if it has one, else the nearest copy by SLIT distance, ties to
    the lower node id. Pure: the distances and memory flags come from a `Topology`.
    """
    n = len(has_memory)
    if every < 1:
        raise ValueError("every must be >= 1")
    with_memory = [i for i in range(n) if has_memory[i]]
    if not with_memory:
        raise ValueError("no node has memory")
    master = with_memory[0]
    copies = [i for i in with_memory if (i - master) % every == 0]
    return tuple(i if i in copies else min(copies, key=lambda c: (distance[i][c], c)) for i in range(n))


def place(
    image: KernelImage,
    n_nodes: int,
    policy: str,
    replicate: str = "text+rodata",
    *,
    serving: Sequence[int] | None = None,
) -> Placement:
    """Decide the frames of every copy and build each node's page table.

    `serving` (from `serving_nodes`; default: every node its own) says, per node, whose copy it
    maps under ``replicate``, and, under ``single`` and ``interleave``, which nodes have memory
    (those that serve themselves): the single copy goes to the master node, the interleave
    round-robin skips memoryless nodes.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}")
    if replicate not in REPLICATE_SCOPES:
        raise ValueError(f"replicate must be one of {', '.join(REPLICATE_SCOPES)}")
    if n_nodes < 1:
        raise ValueError("n_nodes must be >= 1")
    serving = tuple(range(n_nodes)) if serving is None else tuple(int(x) for x in serving)
    if len(serving) != n_nodes or not all(0 <= x < n_nodes and serving[x] == x for x in serving):
        raise ValueError("serving must map every node to a node that serves itself")
    holders = sorted(set(serving))  # nodes with memory that may hold pages
    mapped = image.mapped_pages()
    # A module area (stress runs) is text too: Kuzin's replica-aware vmalloc copies it per node.
    replicated_sections = {".text", ".modules"} if replicate == "text" else {".text", ".rodata", ".modules"}
    in_replica = np.zeros(image.n_pages, dtype=bool)
    for sec in image.sections:
        if sec.name in replicated_sections:
            in_replica[sec.pages().start : sec.pages().stop] = True

    # home[n, p]: the node whose frames back page p as node n sees it.
    home = np.full((n_nodes, image.n_pages), UNMAPPED, dtype=np.int16)
    master = holders[0]
    if policy == "single":
        home[:, mapped] = master
    elif policy == "interleave":
        home[:, mapped] = np.asarray(holders)[np.arange(len(mapped)) % len(holders)]
    else:
        home[:, mapped] = master
        for n in range(n_nodes):
            home[n, mapped[in_replica[mapped]]] = serving[n]

    # Node h hosts every page some node maps onto h, once, in page order (its copy is contiguous).
    hosted = tuple(np.unique(np.nonzero(home == h)[1]) for h in range(n_nodes))
    frame = np.full((n_nodes, image.n_pages), UNMAPPED, dtype=np.int64)
    for h, pages in enumerate(hosted):
        rows, cols = np.nonzero(home == h)
        frame[rows, cols] = np.searchsorted(pages, cols)
    tables = tuple(PageTable(n, home[n].copy(), frame[n].copy()) for n in range(n_nodes))
    return Placement(policy, replicate, n_nodes, hosted, tables, len(mapped), serving if policy == "replicate" else ())


def check_reachable(topology: Topology, placement: Placement) -> None:
    """Refuse a placement under which some node would read its image from a node it cannot
    reach (SLIT distance 255)."""
    for node in range(topology.n_nodes):
        for home in placement.homes_of(node):
            if topology.latency_ns[node][home] is None:
                raise UsageError(
                    "--policy",
                    f"{placement.policy}: node {node} cannot reach node {home}, whose memory backs its "
                    f"kernel image (distance {topology.distance[node][home]} = unreachable)",
                )


def place_for(
    topo: Topology, image: KernelImage, policy: str, replicate: str = "text+rodata", replicas_every: int = 1
) -> tuple[Placement, tuple[int, ...]]:
    """The placement of `policy` on `topo`, and per node the nearest node with memory (itself
    if it has some): memoryless nodes and ``--replicas-every`` are decided here."""
    has_memory = [nd.memory_bytes > 0 for nd in topo.nodes]
    if not any(has_memory):
        raise UsageError("--topology", f"{topo.name}: no node has memory; at least one must hold the image")
    mem_serving = serving_nodes(topo.distance, has_memory, 1)
    serving = serving_nodes(topo.distance, has_memory, replicas_every) if policy == "replicate" else mem_serving
    return place(image, topo.n_nodes, policy, replicate, serving=serving), mem_serving


def check_replicas_every(k: int, topologies: Sequence[Topology]) -> None:
    """--replicas-every K past the node count (of the largest topology swept) is a mistake:
    only the master would hold a copy, whatever K."""
    most = max(topologies, key=lambda topo: topo.n_nodes)
    if k > most.n_nodes:
        raise UsageError("--replicas-every", f"{k} is more than the {most.n_nodes} nodes of {most.name}: only the master node would hold a copy")
