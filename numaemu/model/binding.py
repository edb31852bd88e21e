"""Which host CPUs run each emulated node's worker process, as pure functions.

`bind_to_host` chooses them from the CPUs this process may use (which the host reads, with
`numaemu.host.cpus.host_cpus`), the topology's own ``host_cpus`` or a ``--host-cpus`` override
(`parse_host_cpus`). Bad input raises `UsageError` naming ``--host-cpus`` or ``--topology``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from numaemu.errors import UsageError
from numaemu.model.cpulist import format_cpu_list, parse_cpu_list
from numaemu.model.topology import Node, Topology

__all__ = ["HostBinding", "parse_host_cpus", "bind_to_host", "memory_only_nodes", "sharing_nodes"]


@dataclass(frozen=True)
class HostBinding:
    """Which host CPUs each emulated node's worker runs on (``cpus[i]`` for node i).

    `oversubscribed` is True when nodes share host CPUs: then emulated time (computed from the
    latency table) stays exact, but wall-clock behaviour between nodes is less faithful.
    """

    cpus: tuple[tuple[int, ...], ...]
    oversubscribed: bool

    @property
    def n_cpus_used(self) -> int:
        return len({c for s in self.cpus for c in s})

    def to_json(self) -> dict[str, object]:
        return {
            "cpus": [format_cpu_list(cpus) for cpus in self.cpus],
            "oversubscribed": self.oversubscribed,
        }


def parse_host_cpus(text: str) -> tuple[tuple[int, ...], ...]:
    """The ``--host-cpus`` option: one cpulist per node, separated by ';' (``"0-1;2-3"``)."""
    if not text.strip():
        raise UsageError("--host-cpus", "is empty; give one cpulist per node separated by ';', e.g. 0-1;2-3")
    out: list[tuple[int, ...]] = []
    for i, part in enumerate(text.split(";")):
        try:
            cpus = parse_cpu_list(part)
        except ValueError as e:
            raise UsageError("--host-cpus", f"node {i}: {e}") from None
        if not cpus:
            raise UsageError("--host-cpus", f"node {i}: empty CPU set; every node needs a host CPU")
        out.append(cpus)
    return tuple(out)


def bind_to_host(
    topo: Topology, available: Sequence[int], override: Sequence[Sequence[int]] | None = None
) -> HostBinding:
    """Choose the host CPUs for each node's worker.

    With `override` (from ``--host-cpus``), or else when the topology gives every node its
    ``host_cpus``, those sets are used: one non-empty set per node, within `available`;
    oversubscribed when two sets overlap. Otherwise `available` is cut into n contiguous chunks
    as even as possible (earlier nodes get the extra CPUs), so that a node's worker stays on
    neighbouring CPUs; with fewer host CPUs than nodes, node i gets ``available[i % len]`` alone
    and the placement is oversubscribed.
    """
    avail = tuple(sorted(set(available)))
    n = topo.n_nodes
    if not avail:
        raise UsageError("--host-cpus", "no host CPUs are available to this process")
    for node in topo.nodes:
        # A memory-only host node (CXL, HBM) has no CPU to run its worker on. Running it on
        # another node's CPUs would first-touch its memory there (mm/mempolicy.c: the default
        # policy allocates on the faulting CPU's node), so the node would not be what it claims.
        if node.host_node is not None and not node.cpus:
            raise UsageError(
                "--topology",
                f"host node {node.host_node} has memory but no CPUs; numaemu runs one worker on "
                "each node's own CPUs, so it cannot emulate a memory-only (CXL/HBM) node. Use a "
                "topology file with the CPU nodes only (see README, 'Real NUMA hosts')",
            )
    parameter = "--host-cpus"
    sets: Sequence[Sequence[int]] | None = override
    if sets is None and topo.nodes[0].host_cpus is not None:
        parameter = "--topology"  # the sets came from the topology file's host_cpus
        sets = [_usable_host_cpus(node, avail) for node in topo.nodes]
    if sets is None:
        if len(avail) >= n:
            base, extra = divmod(len(avail), n)
            chunks: list[tuple[int, ...]] = []
            start = 0
            for i in range(n):
                size = base + (1 if i < extra else 0)
                chunks.append(avail[start : start + size])
                start += size
            return HostBinding(tuple(chunks), oversubscribed=False)
        return HostBinding(tuple((avail[i % len(avail)],) for i in range(n)), oversubscribed=True)

    if len(sets) != n:
        raise UsageError(
            parameter,
            f"got {len(sets)} CPU sets for {n} nodes; give one cpulist per node, "
            "separated by ';' (e.g. 0-1;2-3)",
        )
    avail_set = set(avail)
    placed: list[tuple[int, ...]] = []
    for i, cpus in enumerate(sets):
        chosen = tuple(sorted(set(cpus)))
        if not chosen:
            raise UsageError(parameter, f"node {i}: empty CPU set; every node needs a host CPU")
        missing = [c for c in chosen if c not in avail_set]
        if missing:
            what = f"host CPU {missing[0]}" if len(missing) == 1 else f"host CPUs {format_cpu_list(missing)}"
            verb = "does" if len(missing) == 1 else "do"
            raise UsageError(
                parameter,
                f"node {i}: {what} {verb} not exist or {'is' if len(missing) == 1 else 'are'} "
                f"not available to this process (available: {format_cpu_list(avail)})",
            )
        placed.append(chosen)
    return HostBinding(tuple(placed), oversubscribed=bool(sharing_nodes(placed)))


def _usable_host_cpus(node: Node, avail: tuple[int, ...]) -> tuple[int, ...]:
    """A node's host_cpus; for a real host node (`host_node` set), only those this process may
    use (taskset, a cgroup cpuset), since the rest of the node's CPUs still put first touches on
    the same node. Empty sets are refused by `bind_to_host`'s check."""
    cpus = node.host_cpus or ()
    if node.host_node is None:
        return cpus
    usable = tuple(c for c in cpus if c in avail)
    if not usable:
        raise UsageError(
            "--topology",
            f"node {node.id} (host node {node.host_node}): none of its CPUs {format_cpu_list(cpus)} "
            f"is available to this process (available: {format_cpu_list(avail)})",
        )
    return usable


def memory_only_nodes(topo: Topology) -> tuple[int, ...]:
    """The host node ids of the topology's memory-only host nodes (no CPUs: no worker)."""
    return tuple(node.host_node for node in topo.nodes if node.host_node is not None and not node.cpus)


def sharing_nodes(sets: Sequence[tuple[int, ...]]) -> list[int]:
    """The nodes whose host CPU set overlaps another node's."""
    return [
        i
        for i, a in enumerate(sets)
        if any(j != i and not set(a).isdisjoint(b) for j, b in enumerate(sets))
    ]
