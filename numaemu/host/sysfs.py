"""This machine's NUMA topology, read from sysfs (``/sys/devices/system/node``).

The reading is here; what is read becomes a `numaemu.model.topology.Topology`, which checks it.
Every failure raises `UsageError` naming ``--topology`` and the file at fault.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from numaemu.errors import UsageError
from numaemu.model.cpulist import parse_cpu_list
from numaemu.model.topology import Node, Topology, derive_latency, validate_distance

__all__ = ["read_sysfs"]

_UINT_RE = re.compile(r"\d{1,18}")  # at most 18 digits: int() refuses 4300+, and no count is that big


def read_sysfs(root: str | os.PathLike[str] = "/sys") -> Topology:
    """This machine's topology, from ``<root>/devices/system/node``:

    * ``online``: the node ids, cpulist syntax (drivers/base/node.c ``has_online``);
    * ``nodeN/cpulist``: node N's CPUs; empty for a memory-only node (CXL, HBM), allowed;
    * ``nodeN/distance``: node N's SLIT row, space-separated, over the online nodes in order
      (drivers/base/node.c ``node_read_distance``);
    * ``nodeN/meminfo``: its first line ``Node N MemTotal:   24576000 kB``.

    Sparse node ids (``0,2``) are renumbered 0..n-1 in order, since a `Topology` is numbered
    densely; each node keeps its sysfs id as `Node.host_node`. Each node's worker runs on that
    node's own CPUs (`Node.host_cpus` is its cpulist), so its first touch puts its memory there.

    A node without memory (``MemTotal: 0``: a memoryless node, whose allocations the kernel serves
    from the nearest node, mm/page_alloc.c build_zonelists) is kept as it is. A node without
    CPUs (memory-only: CXL, HBM; drivers/base/node.c lists them in ``has_memory`` but not
    ``has_cpu``) is read, so ``numaemu topology host`` shows it, but cannot host a worker:
    `numaemu.model.binding.bind_to_host` refuses it. Since a `Topology` has host_cpus on every node or on none, such
    a machine's nodes get none. Latency is derived from the distances at `DEFAULT_LOCAL_NS`.
    Named ``host``.
    """
    base = Path(root) / "devices" / "system" / "node"
    online_path = base / "online"
    try:
        ids = parse_cpu_list(_read_text(online_path))  # same list syntax as cpulists
    except ValueError as e:
        raise UsageError("--topology", f"{online_path}: {e}") from None
    if not ids:
        raise UsageError("--topology", f"{online_path} lists no nodes")
    nodes: list[Node] = []
    rows: list[list[int]] = []
    for index, nid in enumerate(ids):
        node_dir = base / f"node{nid}"
        cpulist_path = node_dir / "cpulist"
        try:
            cpus = parse_cpu_list(_read_text(cpulist_path))
        except ValueError as e:
            raise UsageError("--topology", f"{cpulist_path}: {e}") from None
        distance_path = node_dir / "distance"
        tokens = _read_text(distance_path).split()
        if not all(_UINT_RE.fullmatch(t) for t in tokens):
            raise UsageError("--topology", f"{distance_path}: '{' '.join(tokens)}' is not a row of integers")
        rows.append([int(t) for t in tokens])
        meminfo_path = node_dir / "meminfo"
        m = re.search(r"^Node\s+\d+\s+MemTotal:\s+(\d{1,18})\s+kB", _read_text(meminfo_path), re.M)
        if m is None:
            raise UsageError("--topology", f"{meminfo_path}: no 'Node {nid} MemTotal: N kB' line")
        nodes.append(Node(index, cpus, int(m.group(1)) * 1024, host_node=nid))
    try:
        distance = validate_distance(rows)
    except UsageError as e:
        raise UsageError("--topology", f"{base}: {e.rule}") from None
    if all(node.cpus for node in nodes):
        nodes = [replace(node, host_cpus=node.cpus) for node in nodes]
    return Topology("host", tuple(nodes), distance, derive_latency(distance))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii")
    except OSError as e:
        raise UsageError("--topology", f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError("--topology", f"{path} is not ASCII text") from None
