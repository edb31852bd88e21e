"""The emulated NUMA machine: nodes, SLIT distances and memory latencies.

A `Topology` is built from one of four sources: a preset, a numa=fake-style spec or a parsed
.json/.toml mapping (all pure, in `numaemu.model.topology_parse`), or this machine's sysfs
(`numaemu.host.sysfs.read_sysfs`); `numaemu.host.files.load_topology` tries them in order for
``--topology``. Which host CPUs run each node is `numaemu.model.binding`; ``numactl -H``-style
output is `numaemu.model.numactl`.

Distances follow the ACPI System Locality Information Table (SLIT, ACPI 6.5 section 5.2.17):
a square matrix of one-byte relative distances, 10 on the diagonal (local), 11..254 between
different nodes, and 255 for "unreachable". QEMU's ``-numa dist`` enforces the same range
(include/sysemu/numa.h: NUMA_DISTANCE_MIN 10, NUMA_DISTANCE_MAX 254,
NUMA_DISTANCE_UNREACHABLE 255). ACPI does not require the matrix to be symmetric, so neither
do we.

Latencies in nanoseconds are either given (a preset's or a file's measured table) or derived
from the distances by `derive_latency`, a fit to one Intel MLC measurement; see there.

Everything here is pure. Every bad input raises `UsageError` naming ``--topology`` (or
``--local-ns``) and the rule that was broken.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeGuard

from numaemu.errors import UsageError
from numaemu.model.cpulist import format_cpu_list
from numaemu.model.hardware import HardwareProfile

__all__ = [
    "SLIT_LOCAL",
    "SLIT_UNREACHABLE",
    "SLIT_MAX_REMOTE",
    "SLIT_DEFAULT_REMOTE",
    "MAX_NODES",
    "DEFAULT_LOCAL_NS",
    "DEFAULT_NODE_CPUS",
    "DEFAULT_NODE_MEMORY_BYTES",
    "Distance",
    "Latency",
    "Node",
    "Topology",
    "validate_distance",
    "derive_latency",
    "with_derived_latency",
    "check_local_ns",
]

Distance = tuple[tuple[int, ...], ...]
Latency = tuple[tuple[float | None, ...], ...]

# ACPI SLIT (ACPI 6.5, 5.2.17): "the diagonal elements of the matrix ... are normalized to a
# value of 10"; "a value of 0xFF indicates that there is no way for a processor to access memory".
# Linux uses the same constants (include/linux/topology.h LOCAL_DISTANCE 10, REMOTE_DISTANCE 20).
SLIT_LOCAL = 10
SLIT_UNREACHABLE = 255
SLIT_MAX_REMOTE = 254
# Linux's numa=fake and QEMU's -numa without "dist" both report 20 between distinct nodes
# (mm/numa_emulation.c falls back to REMOTE_DISTANCE; the guest kernel defaults to it without SLIT).
SLIT_DEFAULT_REMOTE = 20

# One worker process per emulated node; 64 is numaemu's own limit (QEMU allows 128, MAX_NODES in
# include/sysemu/numa.h), well past any machine we model and past what a host can run usefully.
MAX_NODES = 64

# Intel MLC idle latency, Xeon E5-2682 v4, local node (BACKGROUND.md section 2).
DEFAULT_LOCAL_NS = 85.0
# The same measurement's remote latency, at SLIT distance 21; it anchors the fit below.
_MLC_REMOTE_NS = 136.3
_MLC_REMOTE_SLIT = 21

# Default size of a node from a spec or a file without [[nodes]]: small, so that a default
# emulated machine fits on a laptop.
DEFAULT_NODE_CPUS = 4
DEFAULT_NODE_MEMORY_BYTES = 4 << 30


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Node:
    """One emulated node: its emulated CPU ids (as ``numactl -H`` lists them) and memory size.

    `host_cpus` is the host CPU set a user asked this node's worker to run on (None: let
    `bind_to_host` choose). `host_node` is the host NUMA node this node is (``--topology
    host``: its sysfs node id, which may be sparse while `id` is dense); None when the node is
    emulated. A node's memory should land on its `host_node`, and the run's placement report
    (`numamaps`) checks that it did.
    """

    id: int
    cpus: tuple[int, ...]
    memory_bytes: int
    host_cpus: tuple[int, ...] | None = None
    host_node: int | None = None

    def __post_init__(self) -> None:
        if not is_int(self.id) or self.id < 0:
            raise UsageError("--topology", f"node id {self.id!r} must be an integer >= 0")
        where = f"node {self.id}"
        _check_cpu_tuple(self.cpus, f"{where}: cpus", allow_empty=True)
        if not is_int(self.memory_bytes) or self.memory_bytes < 0:
            raise UsageError(
                "--topology", f"{where}: memory_bytes is {self.memory_bytes!r}; need an integer >= 0"
            )
        if self.host_cpus is not None:
            _check_cpu_tuple(self.host_cpus, f"{where}: host_cpus", allow_empty=False)
        if self.host_node is not None and (not is_int(self.host_node) or self.host_node < 0):
            raise UsageError("--topology", f"{where}: host_node is {self.host_node!r}; need an integer >= 0")


@dataclass(frozen=True)
class Topology:
    """An emulated NUMA machine. Node ``i`` is ``nodes[i]``; ``distance[i][j]`` is the SLIT
    distance from node i's CPUs to node j's memory, ``latency_ns[i][j]`` the load latency
    (None where the distance is 255, unreachable).

    Construction checks every invariant (node ids 0..n-1, SLIT rules, matching shapes, CPU ids
    unique across nodes, host_cpus on every node or none), so any `Topology` is a valid one.
    """

    name: str
    nodes: tuple[Node, ...]
    distance: Distance
    latency_ns: Latency
    # The caches, TLBs and memory system of its CPUs (a preset's, or a file's ``hardware``);
    # None: the default profile (hardware_presets.resolve_hardware).
    hardware: HardwareProfile | None = None

    def __post_init__(self) -> None:
        n = len(self.nodes)
        if not 1 <= n <= MAX_NODES:
            raise UsageError("--topology", f"{n} nodes; need 1..{MAX_NODES}")
        for i, node in enumerate(self.nodes):
            if not isinstance(node, Node):
                raise UsageError("--topology", f"nodes[{i}] is not a Node")
            if node.id != i:
                raise UsageError("--topology", f"nodes[{i}] has id {node.id}; ids must be 0..{n - 1} in order")
        if validate_distance(self.distance) != self.distance or len(self.distance) != n:
            raise UsageError(
                "--topology",
                f"distance must be a {n} x {n} tuple of int tuples (one row per node)",
            )
        _check_latency(self.latency_ns, self.distance)
        owner: dict[int, int] = {}
        for node in self.nodes:
            for cpu in node.cpus:
                if cpu in owner:
                    raise UsageError(
                        "--topology",
                        f"emulated CPU {cpu} is listed on node {owner[cpu]} and node {node.id}; "
                        "a CPU belongs to one node",
                    )
                owner[cpu] = node.id
        with_host = [node.id for node in self.nodes if node.host_cpus is not None]
        if with_host and len(with_host) != n:
            without = [node.id for node in self.nodes if node.host_cpus is None]
            raise UsageError(
                "--topology",
                f"host_cpus is set for node(s) {_ids(with_host)} but not {_ids(without)}; "
                "set it for every node or for none",
            )

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_cpus(self) -> int:
        """Emulated CPUs over all nodes."""
        return sum(len(node.cpus) for node in self.nodes)

    def node_of_cpu(self, cpu: int) -> int:
        """The node an emulated CPU belongs to (``numactl``'s cpu-to-node). KeyError if none."""
        for node in self.nodes:
            if cpu in node.cpus:
                return node.id
        raise KeyError(cpu)

    def latency_ratio(self, src: int, dst: int) -> float | None:
        """``latency_ns[src][dst] / latency_ns[src][src]``: how much slower node `src`'s CPUs
        reach node `dst`'s memory than their own. None where unreachable."""
        remote = self.latency_ns[src][dst]
        local = self.latency_ns[src][src]
        if remote is None or local is None:
            return None
        return remote / local

    def remote_ratio(self) -> float | None:
        """Mean `latency_ratio` over all reachable pairs of distinct nodes; None when there are
        none (one node, or every remote pair unreachable)."""
        ratios = [
            r
            for i in range(self.n_nodes)
            for j in range(self.n_nodes)
            if i != j and (r := self.latency_ratio(i, j)) is not None
        ]
        return sum(ratios) / len(ratios) if ratios else None

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict; `from_mapping` reads it back to an equal `Topology`."""
        return {
            "name": self.name,
            "nodes": [
                {
                    "node": node.id,
                    "cpus": format_cpu_list(node.cpus),
                    "memory_bytes": node.memory_bytes,
                    "host_cpus": None if node.host_cpus is None else format_cpu_list(node.host_cpus),
                    "host_node": node.host_node,
                }
                for node in self.nodes
            ],
            "distance": [list(row) for row in self.distance],
            "latency_ns": [list(row) for row in self.latency_ns],
            **({"hardware": self.hardware.name} if self.hardware is not None else {}),
        }


# --------------------------------------------------------------------------------------------
# Distances and latencies


def validate_distance(matrix: object) -> Distance:
    """Check a SLIT matrix and return it as a tuple of int tuples.

    Rules (ACPI SLIT; QEMU ``-numa dist`` applies the same ones): square n x n with
    1 <= n <= `MAX_NODES`; each diagonal entry exactly 10; each other entry 11..254, or 255 for
    unreachable; integers only (bool and float are refused, even 21.0). Asymmetric matrices are
    accepted, as ACPI allows them. Raises `UsageError` ("--topology") naming the first bad entry.
    """
    rows = as_list(matrix, "distance")
    n = len(rows)
    if n == 0:
        raise UsageError("--topology", "distance is empty; need an n x n matrix, 1 <= n <= 64")
    if n > MAX_NODES:
        raise UsageError("--topology", f"distance has {n} rows; at most {MAX_NODES} nodes are supported")
    out: list[tuple[int, ...]] = []
    for i, row_obj in enumerate(rows):
        row = as_list(row_obj, f"distance[{i}]")
        if len(row) != n:
            raise UsageError(
                "--topology",
                f"distance[{i}] has {len(row)} entries; expected {n} (the matrix must be n x n)",
            )
        checked: list[int] = []
        for j, d in enumerate(row):
            where = f"distance[{i}][{j}]"
            if not is_int(d):
                raise UsageError(
                    "--topology", f"{where} is {d!r} ({type(d).__name__}); distances must be integers"
                )
            d = int(d)  # numpy integers are welcome; store plain ints
            if i == j and d != SLIT_LOCAL:
                raise UsageError(
                    "--topology", f"{where} is {d}; the diagonal (local distance) must be {SLIT_LOCAL}"
                )
            if i != j and not (SLIT_LOCAL < d <= SLIT_UNREACHABLE):
                raise UsageError(
                    "--topology",
                    f"{where} is {d}; remote distances must be {SLIT_LOCAL + 1}..{SLIT_MAX_REMOTE} "
                    f"or {SLIT_UNREACHABLE} (unreachable)",
                )
            checked.append(d)
        out.append(tuple(checked))
    return tuple(out)


# Latency from distance: a linear fit, not a law. SLIT values are relative and vendor-chosen;
# "SLIT 21 does not mean exactly 2.1x" (BACKGROUND.md section 2: measured remote/local ratios are
# about 1.5-1.8). We anchor one line at the Intel MLC idle latency of a Xeon E5-2682 v4, 85.0 ns
# local and 136.3 ns remote at SLIT 21, so that
#     lat(d) = local_ns * (1 + (d - 10) * k),   k = (136.3 / 85.0 - 1) / 11 ~= 0.0549,
# i.e. each SLIT unit above 10 adds ~5.5% of the local latency; lat(21) = 136.3 at 85 ns local.
_SLIT_SLOPE = (_MLC_REMOTE_NS / DEFAULT_LOCAL_NS - 1.0) / (_MLC_REMOTE_SLIT - SLIT_LOCAL)


def derive_latency(distance: object, local_ns: float = DEFAULT_LOCAL_NS) -> Latency:
    """Latency in ns for each SLIT entry, by the fit above; None for 255. Rounded to 0.1 ns."""
    matrix = validate_distance(distance)
    local = check_local_ns(local_ns)
    return tuple(
        tuple(
            None
            if d == SLIT_UNREACHABLE
            else round(local * (1.0 + (d - SLIT_LOCAL) * _SLIT_SLOPE), 1)
            for d in row
        )
        for row in matrix
    )


def with_derived_latency(topo: Topology, local_ns: float) -> Topology:
    """`topo` with its latency table replaced by one derived from its distances at `local_ns`."""
    return replace(topo, latency_ns=derive_latency(topo.distance, local_ns))


def check_local_ns(local_ns: object) -> float:
    value = positive_number(local_ns)
    if value is None:
        raise UsageError("--local-ns", f"local latency is {local_ns!r}; need a positive number of ns")
    return value


def _check_latency(latency: object, distance: Distance) -> None:
    n = len(distance)
    if (
        not isinstance(latency, tuple)
        or len(latency) != n
        or not all(isinstance(row, tuple) and len(row) == n for row in latency)
    ):
        raise UsageError("--topology", f"latency_ns must be a {n} x {n} tuple of tuples, like distance")
    for i, row in enumerate(latency):
        for j, v in enumerate(row):
            unreachable = distance[i][j] == SLIT_UNREACHABLE
            if unreachable != (v is None):
                raise UsageError(
                    "--topology",
                    f"latency_ns[{i}][{j}] is {v!r} but distance[{i}][{j}] is {distance[i][j]}; "
                    "latency is None exactly where the distance is 255 (unreachable)",
                )
            if v is not None and not (isinstance(v, float) and math.isfinite(v) and v > 0):
                raise UsageError(
                    "--topology", f"latency_ns[{i}][{j}] is {v!r}; need a positive float (ns)"
                )


# --------------------------------------------------------------------------------------------
# Small checks (topology_parse uses them too)


def is_int(x: object) -> TypeGuard[numbers.Integral]:
    """An integer, but not a bool (True would otherwise pass as 1)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def positive_number(x: object) -> float | None:
    """`x` as a float if it is a finite int or float > 0 (not a bool, not NaN); else None."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    try:
        value = float(x)
    except OverflowError:  # an int past 1e308
        return None
    return value if math.isfinite(value) and value > 0 else None


def as_list(obj: object, where: str) -> list[object]:
    """A list/tuple (or numpy array) as a list; anything else, strings included, is refused."""
    tolist = getattr(obj, "tolist", None)
    if callable(tolist) and not isinstance(obj, list | tuple):
        obj = tolist()
    if not isinstance(obj, list | tuple):
        raise UsageError("--topology", f"{where} must be a list, not {typename(obj)}")
    return list(obj)


def _check_cpu_tuple(cpus: object, where: str, *, allow_empty: bool) -> None:
    if not isinstance(cpus, tuple) or not all(is_int(c) and int(c) >= 0 for c in cpus):
        raise UsageError("--topology", f"{where} must be a tuple of CPU numbers >= 0, got {cpus!r}")
    if list(cpus) != sorted(set(cpus)):
        raise UsageError("--topology", f"{where} must be sorted and without repeats, got {cpus!r}")
    if not cpus and not allow_empty:
        raise UsageError("--topology", f"{where} is empty; give at least one CPU")


def typename(x: object) -> str:
    return "null" if x is None else type(x).__name__


def _ids(ids: Sequence[int]) -> str:
    return ",".join(str(i) for i in ids)
