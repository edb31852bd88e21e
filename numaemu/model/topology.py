"""The emulated NUMA machine: nodes, SLIT distances, memory latencies, and host placement.

A `Topology` comes from one of four sources, tried in this order by `load_topology`:

1. a preset name (``2s-xeon``, ``kunpeng920``, ``epyc-nps4``), machines with published numbers;
2. ``host``: this machine's own topology, read from sysfs (`read_sysfs`);
3. a ``numa=fake``-style spec, ``4`` or ``2:10,21,21,10`` (`parse_spec`);
4. a ``.json`` or ``.toml`` file (`from_mapping` documents the schema).

Distances follow the ACPI System Locality Information Table (SLIT, ACPI 6.5 section 5.2.17):
a square matrix of one-byte relative distances, 10 on the diagonal (local), 11..254 between
different nodes, and 255 for "unreachable". QEMU's ``-numa dist`` enforces the same range
(include/sysemu/numa.h: NUMA_DISTANCE_MIN 10, NUMA_DISTANCE_MAX 254,
NUMA_DISTANCE_UNREACHABLE 255). ACPI does not require the matrix to be symmetric, so neither
do we.

Latencies in nanoseconds are either given (a preset's or a file's measured table) or derived
from the distances by `derive_latency`, a fit to one Intel MLC measurement; see there.

`place_on_host` decides which host CPUs each emulated node's worker process runs on, and
`format_numactl` prints the machine the way ``numactl --hardware`` does.

Everything here is pure except `read_sysfs` (file reads) and `load_topology` (which may call it
or read a topology file). Every bad input raises `UsageError` naming ``--topology`` (or
``--host-cpus``) and the rule that was broken.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from numaemu.errors import UsageError
from numaemu.host.cpus import format_cpu_list, parse_cpu_list

__all__ = [
    "SLIT_LOCAL",
    "SLIT_UNREACHABLE",
    "SLIT_MAX_REMOTE",
    "MAX_NODES",
    "DEFAULT_LOCAL_NS",
    "DEFAULT_NODE_CPUS",
    "DEFAULT_NODE_MEMORY_BYTES",
    "Distance",
    "Latency",
    "Node",
    "Topology",
    "HostPlacement",
    "PRESETS",
    "load_topology",
    "parse_spec",
    "from_mapping",
    "read_sysfs",
    "validate_distance",
    "derive_latency",
    "with_derived_latency",
    "place_on_host",
    "memory_only_nodes",
    "parse_host_cpus",
    "format_numactl",
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

_SPEC_RE = re.compile(r"\d+(:.*)?", re.DOTALL)
_UINT_RE = re.compile(r"\d{1,18}")  # at most 18 digits: int() refuses 4300+, and no count is that big
_FILE_SUFFIXES = (".json", ".toml")


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Node:
    """One emulated node: its emulated CPU ids (as ``numactl -H`` lists them) and memory size.

    `host_cpus` is the host CPU set a user asked this node's worker to run on (None: let
    `place_on_host` choose). `host_node` is the host NUMA node this node is (``--topology
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
        if not _is_int(self.id) or self.id < 0:
            raise UsageError("--topology", f"node id {self.id!r} must be an integer >= 0")
        where = f"node {self.id}"
        _check_cpu_tuple(self.cpus, f"{where}: cpus", allow_empty=True)
        if not _is_int(self.memory_bytes) or self.memory_bytes < 0:
            raise UsageError(
                "--topology", f"{where}: memory_bytes is {self.memory_bytes!r}; need an integer >= 0"
            )
        if self.host_cpus is not None:
            _check_cpu_tuple(self.host_cpus, f"{where}: host_cpus", allow_empty=False)
        if self.host_node is not None and (not _is_int(self.host_node) or self.host_node < 0):
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
        }


@dataclass(frozen=True)
class HostPlacement:
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


# --------------------------------------------------------------------------------------------
# Distances and latencies


def validate_distance(matrix: object) -> Distance:
    """Check a SLIT matrix and return it as a tuple of int tuples.

    Rules (ACPI SLIT; QEMU ``-numa dist`` applies the same ones): square n x n with
    1 <= n <= `MAX_NODES`; each diagonal entry exactly 10; each other entry 11..254, or 255 for
    unreachable; integers only (bool and float are refused, even 21.0). Asymmetric matrices are
    accepted, as ACPI allows them. Raises `UsageError` ("--topology") naming the first bad entry.
    """
    rows = _as_list(matrix, "distance")
    n = len(rows)
    if n == 0:
        raise UsageError("--topology", "distance is empty; need an n x n matrix, 1 <= n <= 64")
    if n > MAX_NODES:
        raise UsageError("--topology", f"distance has {n} rows; at most {MAX_NODES} nodes are supported")
    out: list[tuple[int, ...]] = []
    for i, row_obj in enumerate(rows):
        row = _as_list(row_obj, f"distance[{i}]")
        if len(row) != n:
            raise UsageError(
                "--topology",
                f"distance[{i}] has {len(row)} entries; expected {n} (the matrix must be n x n)",
            )
        checked: list[int] = []
        for j, d in enumerate(row):
            where = f"distance[{i}][{j}]"
            if not _is_int(d):
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
    local = _check_local_ns(local_ns)
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


def _check_local_ns(local_ns: object) -> float:
    value = _positive_number(local_ns)
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
# Presets


def _uniform_nodes(n: int, cpus_per_node: int, memory_bytes: int) -> tuple[Node, ...]:
    """n nodes with consecutive CPU ids (node 0: 0..c-1, node 1: c..2c-1, ...), as Linux
    numbers them on most servers and as numa=fake shows them."""
    return tuple(
        Node(i, tuple(range(i * cpus_per_node, (i + 1) * cpus_per_node)), memory_bytes)
        for i in range(n)
    )


def _preset_2s_xeon() -> Topology:
    # Two-socket Intel Xeon: the SLIT every such BIOS reports, 10 local / 21 remote.
    # Latency measured, not derived: Intel MLC idle latency on E5-2682 v4, 85.0 ns local and
    # 136.3 ns remote (BACKGROUND.md section 2); the issue rounds remote to 136, which we keep.
    # 16 cores per socket (E5-2682 v4), 64 GiB per socket.
    distance = ((10, 21), (21, 10))
    latency = ((85.0, 136.0), (136.0, 85.0))
    return Topology("2s-xeon", _uniform_nodes(2, 16, 64 << 30), distance, latency)


def _preset_kunpeng920() -> Topology:
    # Huawei Kunpeng 920: 2 sockets x 2 dies (CPU clusters) = 4 nodes of 24 cores. The SLIT is
    # the one its firmware reports (BACKGROUND.md section 2). Latency is DERIVED from these
    # distances by derive_latency at 85 ns local, not measured on a Kunpeng.
    distance = (
        (10, 12, 20, 22),
        (12, 10, 22, 24),
        (20, 22, 10, 12),
        (22, 24, 12, 10),
    )
    return Topology(
        "kunpeng920", _uniform_nodes(4, 24, 64 << 30), distance, derive_latency(distance)
    )


def _preset_epyc_nps4() -> Topology:
    # Dual-socket AMD EPYC (7002/7003) in NPS4 mode: 4 nodes per socket (nodes 0-3 socket 0,
    # 4-7 socket 1). Its firmware reports 10 local, 12 to a node of the same socket and 32 to a
    # node of the other socket (as `numactl -H` shows on such machines). Latency is DERIVED
    # from these distances at 85 ns local, not measured.
    distance = tuple(
        tuple(10 if i == j else 12 if i // 4 == j // 4 else 32 for j in range(8)) for i in range(8)
    )
    return Topology(
        "epyc-nps4", _uniform_nodes(8, 16, 32 << 30), distance, derive_latency(distance)
    )


PRESETS: dict[str, Callable[[], Topology]] = {
    "2s-xeon": _preset_2s_xeon,
    "kunpeng920": _preset_kunpeng920,
    "epyc-nps4": _preset_epyc_nps4,
}


# --------------------------------------------------------------------------------------------
# Loading


def load_topology(
    arg: str, *, sysfs_root: str | os.PathLike[str] = "/sys", local_ns: float | None = None
) -> Topology:
    """The ``--topology`` argument, tried in order as: a preset name; ``host`` (this machine,
    via `read_sysfs`); a numa=fake-style spec (`parse_spec`); a .json/.toml file
    (`from_mapping`).

    `local_ns`, when given, sets the local latency and replaces the whole latency table by one
    derived from the distances (`derive_latency`), even for a preset or file that gives
    measured latencies: the caller asked for that local latency explicitly.
    """
    if local_ns is not None:
        local_ns = _check_local_ns(local_ns)
    if arg in PRESETS:
        topo = PRESETS[arg]()
    elif arg == "host":
        topo = read_sysfs(sysfs_root)
    elif _SPEC_RE.fullmatch(arg):
        return parse_spec(arg, local_ns=DEFAULT_LOCAL_NS if local_ns is None else local_ns)
    elif arg.lower().endswith(_FILE_SUFFIXES):
        topo = _load_file(Path(arg), arg)
    elif os.path.isfile(arg):
        raise UsageError(
            "--topology", f"'{arg}': a topology file must end in .json or .toml"
        )
    else:
        raise UsageError(
            "--topology",
            f"unknown preset, spec or file '{arg}'; presets: {', '.join(PRESETS)}, "
            "host (this machine); a spec such as 4 or 2:10,21,21,10; or a .json/.toml file",
        )
    if local_ns is not None:
        topo = with_derived_latency(topo, local_ns)
    return topo


def parse_spec(spec: str, *, local_ns: float = DEFAULT_LOCAL_NS) -> Topology:
    """A numa=fake-style spec: ``N`` (N nodes, 10 local / 20 remote, as Linux ``numa=fake=N``
    and QEMU without ``-numa dist`` give) or ``N:d00,d01,...,d(N-1)(N-1)``, exactly N*N distances
    row-major. (The kernel's ``numa=fake=N:...`` reads such a list too, in mm/numa_emulation.c,
    but fills missing entries from the physical table; we have none, so all N*N are required.)

    Each node gets 4 emulated CPUs, numbered consecutively, and 4 GiB. Latency is derived.
    """
    if not _SPEC_RE.fullmatch(spec):
        raise UsageError("--topology", f"spec '{spec}' must look like 4 or 2:10,21,21,10")
    count_s, colon, rest = spec.partition(":")
    n = int(count_s) if len(count_s.lstrip("0")) <= 18 else MAX_NODES + 1  # int() refuses 4300+ digits
    if not 1 <= n <= MAX_NODES:
        raise UsageError("--topology", f"spec '{spec}': {count_s.lstrip('0') or '0'} nodes; need 1..{MAX_NODES}")
    if colon:
        tokens = [t.strip() for t in rest.split(",")] if rest.strip() else []
        if len(tokens) != n * n:
            raise UsageError(
                "--topology",
                f"spec '{spec}': {n} nodes need {n * n} distances ({n} x {n}, row-major), "
                f"got {len(tokens)}",
            )
        for t in tokens:
            if not _UINT_RE.fullmatch(t):
                raise UsageError(
                    "--topology", f"spec '{spec}': '{t}' is not a distance (an integer 10..255)"
                )
        values = [int(t) for t in tokens]
        rows: list[list[int]] = [values[i * n : (i + 1) * n] for i in range(n)]
        distance = validate_distance(rows)
    else:
        distance = tuple(
            tuple(SLIT_LOCAL if i == j else SLIT_DEFAULT_REMOTE for j in range(n)) for i in range(n)
        )
    return Topology(
        spec,
        _uniform_nodes(n, DEFAULT_NODE_CPUS, DEFAULT_NODE_MEMORY_BYTES),
        distance,
        derive_latency(distance, local_ns),
    )


_FILE_KEYS = ("distance", "latency_ns", "local_latency_ns", "name", "nodes")
_NODE_KEYS = ("cpus", "host_cpus", "host_node", "memory_bytes", "memory_mb", "node")


def from_mapping(data: object, *, name: str) -> Topology:
    """A topology from a parsed JSON/TOML file (or `Topology.to_json` output). Schema::

        name = "optional"                   # default: the `name` argument
        local_latency_ns = 85.0             # optional; used when latency_ns is absent
        distance = [[10, 21], [21, 10]]     # required, a SLIT matrix
        latency_ns = [[85, 136], [136, 85]] # optional, positive numbers; ignored (None) where
                                            # the distance is 255, and may be null there
        [[nodes]]                           # optional; one per node, in order; default 4 CPUs
        cpus = "0-3"                        #   and 4096 MB. cpulist string or list of ints
        memory_mb = 4096                    #   or memory_bytes
        host_cpus = "0-1"                   #   optional, on every node or none
        host_node = 0                       #   optional: the host NUMA node it is (see Node)
        node = 0                            #   optional, must equal the entry's position

    Unknown keys are refused, so that a misspelt key is not silently ignored.
    """
    if not isinstance(data, Mapping):
        raise UsageError("--topology", f"the top level must be a table/object, not {_typename(data)}")
    _check_keys(data, _FILE_KEYS, "")
    if "name" in data:
        if not isinstance(data["name"], str):
            raise UsageError("--topology", f"name is {data['name']!r}; it must be a string")
        name = data["name"]
    if "distance" not in data:
        raise UsageError(
            "--topology", "distance is missing; it is required, e.g. distance = [[10, 21], [21, 10]]"
        )
    distance = validate_distance(data["distance"])
    n = len(distance)

    latency: Latency
    if data.get("latency_ns") is not None:
        latency = _read_latency(data["latency_ns"], distance)
    else:
        given = data.get("local_latency_ns", DEFAULT_LOCAL_NS)
        local = _positive_number(given)
        if local is None:
            raise UsageError(
                "--topology", f"local_latency_ns is {given!r}; need a positive number of ns"
            )
        latency = derive_latency(distance, local)

    entries = data.get("nodes")
    if entries is None:
        nodes = _uniform_nodes(n, DEFAULT_NODE_CPUS, DEFAULT_NODE_MEMORY_BYTES)
    else:
        entries = _as_list(entries, "nodes")
        if len(entries) != n:
            raise UsageError(
                "--topology",
                f"nodes has {len(entries)} entries but distance is {n} x {n}; give one entry per "
                "node, or none for the default of 4 CPUs and 4096 MB each",
            )
        nodes = tuple(_read_node(i, entry) for i, entry in enumerate(entries))
    return Topology(name, nodes, distance, latency)


def _read_latency(obj: object, distance: Distance) -> Latency:
    n = len(distance)
    rows = _as_list(obj, "latency_ns")
    if len(rows) != n:
        raise UsageError("--topology", f"latency_ns has {len(rows)} rows; expected {n}, like distance")
    out: list[tuple[float | None, ...]] = []
    for i, row_obj in enumerate(rows):
        row = _as_list(row_obj, f"latency_ns[{i}]")
        if len(row) != n:
            raise UsageError(
                "--topology", f"latency_ns[{i}] has {len(row)} entries; expected {n}, like distance"
            )
        checked: list[float | None] = []
        for j, v in enumerate(row):
            if distance[i][j] == SLIT_UNREACHABLE:
                checked.append(None)  # unreachable: whatever was written there means nothing
                continue
            value = _positive_number(v)
            if value is None:
                raise UsageError(
                    "--topology",
                    f"latency_ns[{i}][{j}] is {v!r}; latencies must be positive numbers (ns)",
                )
            checked.append(value)
        out.append(tuple(checked))
    return tuple(out)


def _read_node(i: int, entry: object) -> Node:
    where = f"nodes[{i}]"
    if not isinstance(entry, Mapping):
        raise UsageError("--topology", f"{where} must be a table/object, not {_typename(entry)}")
    _check_keys(entry, _NODE_KEYS, f"{where}: ")
    if "node" in entry and (not _is_int(entry["node"]) or entry["node"] != i):
        raise UsageError(
            "--topology", f"{where}: node is {entry['node']!r}; entries must be in order, this one is {i}"
        )
    if "cpus" in entry:
        cpus = _read_cpus(entry["cpus"], f"{where}: cpus", allow_empty=True)
    else:
        cpus = tuple(range(i * DEFAULT_NODE_CPUS, (i + 1) * DEFAULT_NODE_CPUS))
    if "memory_mb" in entry and "memory_bytes" in entry:
        raise UsageError("--topology", f"{where}: give memory_mb or memory_bytes, not both")
    memory = DEFAULT_NODE_MEMORY_BYTES
    for key, scale in (("memory_mb", 1 << 20), ("memory_bytes", 1)):
        if key in entry:
            v = entry[key]
            if not _is_int(v) or v < 0:
                raise UsageError("--topology", f"{where}: {key} is {v!r}; need an integer >= 0")
            memory = int(v) * scale
    host: tuple[int, ...] | None = None
    if entry.get("host_cpus") is not None:
        host = _read_cpus(entry["host_cpus"], f"{where}: host_cpus", allow_empty=False)
    host_node = entry.get("host_node")
    if host_node is not None and (not _is_int(host_node) or host_node < 0):
        raise UsageError("--topology", f"{where}: host_node is {host_node!r}; need an integer >= 0")
    return Node(i, cpus, memory, host, None if host_node is None else int(host_node))


def _read_cpus(obj: object, where: str, *, allow_empty: bool) -> tuple[int, ...]:
    """A cpulist string (``"0-3,8"``) or a list of distinct non-negative ints."""
    if isinstance(obj, str):
        try:
            cpus = parse_cpu_list(obj)
        except ValueError as e:
            raise UsageError("--topology", f"{where}: {e}") from None
    elif isinstance(obj, list | tuple):
        for c in obj:
            if not _is_int(c) or c < 0:
                raise UsageError("--topology", f"{where}: {c!r} is not a CPU number (an integer >= 0)")
        if len(set(obj)) != len(obj):
            raise UsageError("--topology", f"{where}: a CPU is listed twice in {list(obj)}")
        cpus = tuple(sorted(int(c) for c in obj))
    else:
        raise UsageError(
            "--topology", f"{where} is {obj!r}; give a cpulist string such as \"0-3\" or a list of ints"
        )
    if not cpus and not allow_empty:
        raise UsageError("--topology", f"{where} is empty; give at least one CPU")
    return cpus


def _load_file(path: Path, arg: str) -> Topology:
    """Read a .json/.toml topology file. Every failure becomes a UsageError naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UsageError("--topology", f"cannot read '{arg}': {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError("--topology", f"'{arg}' is not UTF-8 text: {e.reason}") from None
    if not text.strip():
        raise UsageError("--topology", f"'{arg}' is empty")
    data: object
    try:
        if arg.lower().endswith(".json"):
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError("--topology", f"'{arg}' is not valid JSON: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError("--topology", f"'{arg}' is not valid TOML: {e}") from None
    except ValueError as e:  # an integer of 4300+ digits (sys.get_int_max_str_digits)
        raise UsageError("--topology", f"'{arg}' holds a number too long to read: {str(e).split(';')[0]}") from None
    try:
        return from_mapping(data, name=arg)
    except UsageError as e:
        raise UsageError(e.parameter, f"'{arg}': {e.rule}") from None


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
    `place_on_host` refuses it. Since a `Topology` has host_cpus on every node or on none, such
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


# --------------------------------------------------------------------------------------------
# Host placement


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


def place_on_host(
    topo: Topology, available: Sequence[int], override: Sequence[Sequence[int]] | None = None
) -> HostPlacement:
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
            return HostPlacement(tuple(chunks), oversubscribed=False)
        return HostPlacement(tuple((avail[i % len(avail)],) for i in range(n)), oversubscribed=True)

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
    return HostPlacement(tuple(placed), oversubscribed=bool(_sharing_nodes(placed)))


def _usable_host_cpus(node: Node, avail: tuple[int, ...]) -> tuple[int, ...]:
    """A node's host_cpus; for a real host node (`host_node` set), only those this process may
    use (taskset, a cgroup cpuset), since the rest of the node's CPUs still put first touches on
    the same node. Empty sets are refused by `place_on_host`'s check."""
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


def _sharing_nodes(sets: Sequence[tuple[int, ...]]) -> list[int]:
    """The nodes whose host CPU set overlaps another node's."""
    return [
        i
        for i, a in enumerate(sets)
        if any(j != i and not set(a).isdisjoint(b) for j, b in enumerate(sets))
    ]


# --------------------------------------------------------------------------------------------
# Output


def format_numactl(topo: Topology, placement: HostPlacement | None = None) -> str:
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
        cpus = " ".join(str(c) for c in node.cpus)
        lines.append(f"node {node.id} cpus:{' ' + cpus if cpus else ''}")
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
            sharing = _sharing_nodes(placement.cpus)
            shared = {c for i in sharing for c in placement.cpus[i]}
            lines.append(
                f"oversubscribed: {len(sharing)} nodes share {len(shared)} host CPUs; "
                "emulated time stays exact, wall-clock fidelity is reduced"
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Small checks


def _is_int(x: object) -> bool:
    """An integer, but not a bool (True would otherwise pass as 1)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _positive_number(x: object) -> float | None:
    """`x` as a float if it is a finite int or float > 0 (not a bool, not NaN); else None."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    try:
        value = float(x)
    except OverflowError:  # an int past 1e308
        return None
    return value if math.isfinite(value) and value > 0 else None


def _as_list(obj: object, where: str) -> list[object]:
    """A list/tuple (or numpy array) as a list; anything else, strings included, is refused."""
    tolist = getattr(obj, "tolist", None)
    if callable(tolist) and not isinstance(obj, list | tuple):
        obj = tolist()
    if not isinstance(obj, list | tuple):
        raise UsageError("--topology", f"{where} must be a list, not {_typename(obj)}")
    return list(obj)


def _check_cpu_tuple(cpus: object, where: str, *, allow_empty: bool) -> None:
    if not isinstance(cpus, tuple) or not all(_is_int(c) and c >= 0 for c in cpus):
        raise UsageError("--topology", f"{where} must be a tuple of CPU numbers >= 0, got {cpus!r}")
    if list(cpus) != sorted(set(cpus)):
        raise UsageError("--topology", f"{where} must be sorted and without repeats, got {cpus!r}")
    if not cpus and not allow_empty:
        raise UsageError("--topology", f"{where} is empty; give at least one CPU")


def _check_keys(data: Mapping[object, object], allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise UsageError(
                "--topology", f"{where}unknown key {key!r}; allowed: {', '.join(allowed)}"
            )


def _typename(x: object) -> str:
    return "null" if x is None else type(x).__name__


def _ids(ids: Sequence[int]) -> str:
    return ",".join(str(i) for i in ids)
