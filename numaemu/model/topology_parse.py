"""Topologies from names and text, as pure functions: presets, numa=fake specs, mappings.

* `PRESETS`: machines with published numbers (``2s-xeon``, ``kunpeng920``, ``epyc-nps4``);
* `parse_spec`: a ``numa=fake``-style spec, ``4`` or ``2:10,21,21,10``;
* `from_mapping`: a parsed ``.json`` or ``.toml`` file (it documents the schema), and
  `parse_topology_file` for such a file's bytes;
* `named_topology`: a preset name or a spec, as ``--topology`` reads them.

Reading files and sysfs is the host's (`numaemu.host.files.load_topology`). Every bad input
raises `UsageError` naming ``--topology`` and the rule that was broken.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping

from numaemu.errors import UsageError
from numaemu.model.cpulist import parse_cpu_list
from numaemu.model.hardware import profile_from_mapping
from numaemu.model.hardware_presets import PROFILES
from numaemu.model.topology import (
    DEFAULT_LOCAL_NS,
    DEFAULT_NODE_CPUS,
    DEFAULT_NODE_MEMORY_BYTES,
    MAX_NODES,
    SLIT_DEFAULT_REMOTE,
    SLIT_LOCAL,
    SLIT_UNREACHABLE,
    Distance,
    Latency,
    Node,
    Topology,
    as_list,
    check_local_ns,
    derive_latency,
    is_int,
    positive_number,
    typename,
    validate_distance,
    with_derived_latency,
)

__all__ = [
    "PRESETS",
    "TOPOLOGY_FILE_SUFFIXES",
    "named_topology",
    "is_spec",
    "parse_spec",
    "from_mapping",
    "parse_topology_file",
]

_SPEC_RE = re.compile(r"\d+(:.*)?", re.DOTALL)
_UINT_RE = re.compile(r"\d{1,18}")  # at most 18 digits: int() refuses 4300+, and no count is that big
TOPOLOGY_FILE_SUFFIXES = (".json", ".toml")


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
    # 16 cores per socket (E5-2682 v4), 64 GiB per socket. Its caches: the E5-2690 profile's.
    distance = ((10, 21), (21, 10))
    latency = ((85.0, 136.0), (136.0, 85.0))
    return Topology("2s-xeon", _uniform_nodes(2, 16, 64 << 30), distance, latency, PROFILES["e5-2690"])


def _preset_2s_e5_2690() -> Topology:
    # The x86 series' machine (Kuzin's cover letter: 2 x Xeon E5-2690), as the e5-2690 profile
    # gives it: 8 cores a socket, 78.3 ns local; remote not found, so local + 38 ns, the
    # remote-local step 7-cpu.com measured on the previous generation (hardware_presets).
    distance = ((10, 21), (21, 10))
    return Topology("2s-e5-2690", _uniform_nodes(2, 8, 64 << 30), distance, ((78.3, 116.3), (116.3, 78.3)), PROFILES["e5-2690"])


def _preset_2s_epyc_7713() -> Topology:
    # The AMD reviewer's machine: 2 x EPYC 7713 in NPS1, one node a socket of 64 cores. Its
    # firmware reports 10 / 32. Local latency: the profile's (Rome NPS1, 122 ns, AnandTech);
    # remote DERIVED from the distance by derive_latency at that local latency, not measured.
    distance = ((10, 32), (32, 10))
    return Topology("2s-epyc-7713", _uniform_nodes(2, 64, 256 << 30), distance, derive_latency(distance, PROFILES["epyc-7713-nps1"].dram_local_ns), PROFILES["epyc-7713-nps1"])


def _preset_2s_altra() -> Topology:
    # 2 x Ampere Altra Q80-30, monolithic: one node a socket of 80 cores; SLIT 10 / 20 assumed
    # (Linux's default remote distance); latency DERIVED at the profile's 85 ns stand-in.
    distance = ((10, 20), (20, 10))
    return Topology("2s-altra", _uniform_nodes(2, 80, 256 << 30), distance, derive_latency(distance), PROFILES["altra"])


def _preset_altra_quadrant() -> Topology:
    # 2 x Altra in quadrant mode: 4 nodes a socket of 20 cores, all 4 sharing the socket's SLC.
    # SLIT 10 / 11 within a socket / 20 across, assumed; latency DERIVED at 85 ns.
    distance = tuple(tuple(10 if i == j else 11 if i // 4 == j // 4 else 20 for j in range(8)) for i in range(8))
    return Topology("altra-quadrant", _uniform_nodes(8, 20, 64 << 30), distance, derive_latency(distance), PROFILES["altra-quadrant"])


def _preset_kunpeng920() -> Topology:
    # Huawei Kunpeng 920: 2 sockets x 2 dies (CPU clusters) = 4 nodes of 24 cores. The SLIT is
    # the one its firmware reports (BACKGROUND.md section 2). Latency is DERIVED from these
    # distances by derive_latency at the profile's 96 ns local (Chips and Cheese), not measured.
    distance = (
        (10, 12, 20, 22),
        (12, 10, 22, 24),
        (20, 22, 10, 12),
        (22, 24, 12, 10),
    )
    return Topology(
        "kunpeng920", _uniform_nodes(4, 24, 64 << 30), distance, derive_latency(distance, PROFILES["kunpeng-920"].dram_local_ns), PROFILES["kunpeng-920"]
    )


def _preset_epyc_nps4() -> Topology:
    # Dual-socket AMD EPYC (7002/7003) in NPS4 mode: 4 nodes per socket (nodes 0-3 socket 0,
    # 4-7 socket 1). Its firmware reports 10 local, 12 to a node of the same socket and 32 to a
    # node of the other socket (as `numactl -H` shows on such machines). Latency is DERIVED
    # from these distances at the profile's local latency (113 ns, AnandTech's Rome NPS4), not measured.
    distance = tuple(
        tuple(10 if i == j else 12 if i // 4 == j // 4 else 32 for j in range(8)) for i in range(8)
    )
    return Topology(
        "epyc-nps4", _uniform_nodes(8, 16, 32 << 30), distance, derive_latency(distance, PROFILES["epyc-7713-nps4"].dram_local_ns), PROFILES["epyc-7713-nps4"]
    )


PRESETS: dict[str, Callable[[], Topology]] = {
    "2s-xeon": _preset_2s_xeon,
    "2s-e5-2690": _preset_2s_e5_2690,
    "2s-epyc-7713": _preset_2s_epyc_7713,
    "epyc-nps4": _preset_epyc_nps4,
    "kunpeng920": _preset_kunpeng920,
    "2s-altra": _preset_2s_altra,
    "altra-quadrant": _preset_altra_quadrant,
}


# --------------------------------------------------------------------------------------------
# Names


def is_spec(arg: str) -> bool:
    """Whether `arg` has the shape of a numa=fake-style spec (`parse_spec` checks the rest)."""
    return _SPEC_RE.fullmatch(arg) is not None


def named_topology(arg: str, *, local_ns: float | None = None) -> Topology | None:
    """The ``--topology`` argument as a preset name or a spec; None when it is neither (then it
    is ``host`` or a file, which the host reads).

    `local_ns`, when given, sets the local latency and replaces the whole latency table by one
    derived from the distances (`derive_latency`), even for a preset that gives measured
    latencies: the caller asked for that local latency explicitly.
    """
    if local_ns is not None:
        local_ns = check_local_ns(local_ns)
    if arg in PRESETS:
        topo = PRESETS[arg]()
        return topo if local_ns is None else with_derived_latency(topo, local_ns)
    if is_spec(arg):
        return parse_spec(arg, local_ns=DEFAULT_LOCAL_NS if local_ns is None else local_ns)
    return None


# --------------------------------------------------------------------------------------------
# Specs and files


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


_FILE_KEYS = ("distance", "hardware", "latency_ns", "local_latency_ns", "name", "nodes")
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
        hardware = "e5-2690"                # optional: a profile, or a table with base = NAME
                                            #   and fields to change (hardware.profile_from_mapping)

    Unknown keys are refused, so that a misspelt key is not silently ignored.
    """
    if not isinstance(data, Mapping):
        raise UsageError("--topology", f"the top level must be a table/object, not {typename(data)}")
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
        local = positive_number(given)
        if local is None:
            raise UsageError(
                "--topology", f"local_latency_ns is {given!r}; need a positive number of ns"
            )
        latency = derive_latency(distance, local)

    entries = data.get("nodes")
    if entries is None:
        nodes = _uniform_nodes(n, DEFAULT_NODE_CPUS, DEFAULT_NODE_MEMORY_BYTES)
    else:
        entries = as_list(entries, "nodes")
        if len(entries) != n:
            raise UsageError(
                "--topology",
                f"nodes has {len(entries)} entries but distance is {n} x {n}; give one entry per "
                "node, or none for the default of 4 CPUs and 4096 MB each",
            )
        nodes = tuple(_read_node(i, entry) for i, entry in enumerate(entries))
    hardware = None if data.get("hardware") is None else profile_from_mapping(data["hardware"], PROFILES)
    return Topology(name, nodes, distance, latency, hardware)


def _read_latency(obj: object, distance: Distance) -> Latency:
    n = len(distance)
    rows = as_list(obj, "latency_ns")
    if len(rows) != n:
        raise UsageError("--topology", f"latency_ns has {len(rows)} rows; expected {n}, like distance")
    out: list[tuple[float | None, ...]] = []
    for i, row_obj in enumerate(rows):
        row = as_list(row_obj, f"latency_ns[{i}]")
        if len(row) != n:
            raise UsageError(
                "--topology", f"latency_ns[{i}] has {len(row)} entries; expected {n}, like distance"
            )
        checked: list[float | None] = []
        for j, v in enumerate(row):
            if distance[i][j] == SLIT_UNREACHABLE:
                checked.append(None)  # unreachable: whatever was written there means nothing
                continue
            value = positive_number(v)
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
        raise UsageError("--topology", f"{where} must be a table/object, not {typename(entry)}")
    _check_keys(entry, _NODE_KEYS, f"{where}: ")
    if "node" in entry and (not is_int(entry["node"]) or entry["node"] != i):
        raise UsageError(
            "--topology", f"{where}: node is {entry['node']!r}; entries must be in order, this one is {i}"
        )
    default = tuple(range(i * DEFAULT_NODE_CPUS, (i + 1) * DEFAULT_NODE_CPUS))
    cpus = _read_cpus(entry["cpus"], f"{where}: cpus", allow_empty=True) if "cpus" in entry else default
    if "memory_mb" in entry and "memory_bytes" in entry:
        raise UsageError("--topology", f"{where}: give memory_mb or memory_bytes, not both")
    memory = DEFAULT_NODE_MEMORY_BYTES
    for key, scale in (("memory_mb", 1 << 20), ("memory_bytes", 1)):
        if key in entry:
            v = entry[key]
            if not is_int(v) or v < 0:
                raise UsageError("--topology", f"{where}: {key} is {v!r}; need an integer >= 0")
            memory = int(v) * scale
    host: tuple[int, ...] | None = None
    if entry.get("host_cpus") is not None:
        host = _read_cpus(entry["host_cpus"], f"{where}: host_cpus", allow_empty=False)
    host_node = entry.get("host_node")
    if host_node is not None and (not is_int(host_node) or host_node < 0):
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
            if not is_int(c) or c < 0:
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


def parse_topology_file(raw: bytes, arg: str) -> Topology:
    """A .json/.toml topology file's bytes (`arg` names it, and its suffix says which). Every
    failure becomes a UsageError naming the file."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError("--topology", f"'{arg}' is not UTF-8 text: {e.reason}") from None
    if not text.strip():
        raise UsageError("--topology", f"'{arg}' is empty")
    data: object
    try:
        data = json.loads(text) if arg.lower().endswith(".json") else tomllib.loads(text)
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


def _check_keys(data: Mapping[object, object], allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise UsageError(
                "--topology", f"{where}unknown key {key!r}; allowed: {', '.join(allowed)}"
            )
