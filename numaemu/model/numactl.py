"""The emulated machine as ``numactl --hardware`` prints it, with its host CPUs (pure)."""

from __future__ import annotations

from numaemu.model.binding import HostBinding, sharing_nodes
from numaemu.model.cpulist import format_cpu_list
from numaemu.model.topology import Topology

__all__ = ["format_numactl"]


def format_numactl(topo: Topology, placement: HostBinding | None = None) -> str:
    """The machine as ``numactl --hardware`` prints it (numactl.c ``print_distances``: "node "
    then ``"% 3d "`` per column, rows ``"% 3d: "`` then ``"% 3d "`` per entry, so every column is
    4 wide and lines up under ``"  0:"``), minus numactl's trailing blanks and its "free" lines;
    then the latency table in the same layout at width 7 (``-`` where unreachable), and, with a
    placement, which host CPUs run each node. Ends with a newline.
    """
    n = topo.n_nodes
    ids = range(n)
    lines = [f"available: {n} nodes ({format_cpu_list(ids)})"]
    for node in topo.nodes:
        listed = " ".join(str(c) for c in node.cpus)
        lines.append(f"node {node.id} cpus:{' ' + listed if listed else ''}")
        lines.append(f"node {node.id} size: {node.memory_bytes >> 20} MB")
    lines.append("node distances:")
    lines.append("node" + "".join(f"{i:>4}" for i in ids))
    for i, row in enumerate(topo.distance):
        lines.append(f"{i:>3}:" + "".join(f"{d:>4}" for d in row))
    lines.append("")
    lines.append("latency (ns):")
    lines.append("node" + "".join(f"{i:>7}" for i in ids))
    for i, lrow in enumerate(topo.latency_ns):
        lines.append(f"{i:>3}:" + "".join(f"{'-':>7}" if v is None else f"{v:>7.1f}" for v in lrow))
    if any(node.host_node is not None and node.host_node != node.id for node in topo.nodes):
        lines.append("")
        lines.append("host nodes (sysfs ids): " + ", ".join(
            f"node {node.id} is host node {node.host_node}" for node in topo.nodes if node.host_node is not None))
    if placement is not None:
        lines.append("")
        lines.append("host CPUs:")
        for i, cpus in enumerate(placement.cpus):
            lines.append(f"node {i} runs on host CPUs {format_cpu_list(cpus)}")
        if placement.oversubscribed:
            sharing = sharing_nodes(placement.cpus)
            shared = {c for i in sharing for c in placement.cpus[i]}
            lines.append(
                f"oversubscribed: {len(sharing)} nodes share {len(shared)} host CPUs; "
                "emulated time stays exact, wall-clock fidelity is reduced"
            )
    return "\n".join(lines) + "\n"
