"""Tests for numaemu.model.topology (and its parsing, binding and numactl output; load_topology and
read_sysfs of numaemu.host): fast, exact values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numaemu.errors import UsageError
from numaemu.host.files import load_topology
from numaemu.host.sysfs import read_sysfs
from numaemu.model.binding import HostBinding, bind_to_host, parse_host_cpus
from numaemu.model.numactl import format_numactl
from numaemu.model.topology import (
    DEFAULT_LOCAL_NS,
    SLIT_LOCAL,
    SLIT_MAX_REMOTE,
    SLIT_UNREACHABLE,
    Node,
    Topology,
    derive_latency,
    validate_distance,
    with_derived_latency,
)
from numaemu.model.topology_parse import PRESETS, from_mapping, parse_spec

GiB = 1 << 30

KUNPENG_DISTANCE = (
    (10, 12, 20, 22),
    (12, 10, 22, 24),
    (20, 22, 10, 12),
    (22, 24, 12, 10),
)
# Derived at 85 ns local: 85 * (1 + (d - 10) * k), k = (136.3/85 - 1)/11, i.e. +4.6636 ns per unit.
# Derived by derive_latency at the kunpeng-920 profile's 96 ns local (Chips and Cheese).
KUNPENG_LATENCY = (
    (96.0, 106.5, 148.7, 159.2),
    (106.5, 96.0, 159.2, 169.7),
    (148.7, 159.2, 96.0, 106.5),
    (159.2, 169.7, 106.5, 96.0),
)


def _topo(n: int, **kw: object) -> Topology:
    return parse_spec(str(n), **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Constants and latency derivation


def test_constants() -> None:
    assert (SLIT_LOCAL, SLIT_MAX_REMOTE, SLIT_UNREACHABLE, DEFAULT_LOCAL_NS) == (10, 254, 255, 85.0)


@pytest.mark.parametrize(
    ("d", "local", "expected"),
    [
        (10, 85.0, 85.0),
        (11, 85.0, 89.7),
        (12, 85.0, 94.3),
        (20, 85.0, 131.6),
        (21, 85.0, 136.3),  # the anchor: Intel MLC E5-2682 v4, 85.0 / 136.3 ns
        (32, 85.0, 187.6),
        (254, 85.0, 1222.9),
        (255, 85.0, None),
        (10, 100.0, 100.0),
        (20, 100.0, 154.9),
        (21, 100.0, 160.4),
        (21, 78.6, 126.0),
    ],
)
def test_derive_latency_values(d: int, local: float, expected: float | None) -> None:
    lat = derive_latency([[10, d], [d, 10]] if d != 10 else [[10]], local)
    assert lat[0][0] == local
    if d != 10:
        assert lat[0][1] == expected
        assert lat[1][0] == expected


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "85", None])
def test_derive_latency_bad_local(bad: object) -> None:
    with pytest.raises(UsageError, match=r"^--local-ns: local latency is .*; need a positive number of ns$"):
        derive_latency([[10]], bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# validate_distance


def test_validate_distance_returns_tuples_and_accepts_asymmetric_and_numpy() -> None:
    assert validate_distance([[10, 21], [30, 10]]) == ((10, 21), (30, 10))
    out = validate_distance(np.array([[10, 255], [12, 10]]))
    assert out == ((10, 255), (12, 10))
    assert all(type(d) is int for row in out for d in row)
    assert validate_distance([[10]]) == ((10,),)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([], r"^--topology: distance is empty; need an n x n matrix, 1 <= n <= 64$"),
        ("10", r"^--topology: distance must be a list, not str$"),
        ({"a": 1}, r"^--topology: distance must be a list, not dict$"),
        ([10, 21], r"^--topology: distance\[0\] must be a list, not int$"),
        (
            [[10, 21], [21]],
            r"^--topology: distance\[1\] has 1 entries; expected 2 \(the matrix must be n x n\)$",
        ),
        ([[10, 21, 21], [21, 10, 21]], r"^--topology: distance\[0\] has 3 entries; expected 2"),
        ([[20]], r"^--topology: distance\[0\]\[0\] is 20; the diagonal \(local distance\) must be 10$"),
        (
            [[10, 9], [21, 10]],
            r"^--topology: distance\[0\]\[1\] is 9; remote distances must be 11\.\.254 or 255 \(unreachable\)$",
        ),
        ([[10, 21], [10, 10]], r"^--topology: distance\[1\]\[0\] is 10; remote distances must be 11"),
        ([[10, 21], [256, 10]], r"^--topology: distance\[1\]\[0\] is 256; remote distances"),
        ([[10, -21], [21, 10]], r"^--topology: distance\[0\]\[1\] is -21; remote distances"),
        ([[10, 21.0], [21, 10]], r"^--topology: distance\[0\]\[1\] is 21\.0 \(float\); distances must be integers$"),
        ([[10, True], [21, 10]], r"^--topology: distance\[0\]\[1\] is True \(bool\); distances must be integers$"),
        ([[10, "21"], [21, 10]], r"^--topology: distance\[0\]\[1\] is '21' \(str\); distances must be integers$"),
        ([[10, None], [21, 10]], r"^--topology: distance\[0\]\[1\] is None \(NoneType\)"),
    ],
)
def test_validate_distance_rejects(matrix: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        validate_distance(matrix)


def test_validate_distance_node_limit() -> None:
    big = [[10 if i == j else 20 for j in range(65)] for i in range(65)]
    with pytest.raises(UsageError, match=r"^--topology: distance has 65 rows; at most 64 nodes are supported$"):
        validate_distance(big)
    assert len(validate_distance([row[:64] for row in big[:64]])) == 64


@st.composite
def slit_matrices(draw: st.DrawFn) -> list[list[int]]:
    n = draw(st.integers(min_value=1, max_value=8))
    remote = st.integers(min_value=11, max_value=255)
    return [[10 if i == j else draw(remote) for j in range(n)] for i in range(n)]


@settings(max_examples=150, deadline=None, database=None)
@given(matrix=slit_matrices(), local=st.floats(min_value=1.0, max_value=1000.0))
def test_property_valid_slit_passes_and_latency_is_monotonic(matrix: list[list[int]], local: float) -> None:
    distance = validate_distance(matrix)
    assert distance == tuple(tuple(row) for row in matrix)
    latency = derive_latency(distance, local)
    pairs = [
        (d, lat)
        for drow, lrow in zip(distance, latency, strict=True)
        for d, lat in zip(drow, lrow, strict=True)
    ]
    for d, lat in pairs:
        assert (lat is None) == (d == SLIT_UNREACHABLE)
    reachable = sorted((d, lat) for d, lat in pairs if lat is not None)
    for (d1, l1), (d2, l2) in zip(reachable, reachable[1:], strict=False):  # neighbours: one shorter
        assert d1 <= d2 and l1 <= l2  # non-strict: rounding to 0.1 ns may tie neighbours
    assert all(lat == round(local, 1) for d, lat in reachable if d == SLIT_LOCAL)


# ---------------------------------------------------------------------------------------------
# Presets


def test_preset_names() -> None:
    assert list(PRESETS) == ["2s-xeon", "2s-e5-2690", "2s-epyc-7713", "epyc-nps4", "kunpeng920", "2s-altra", "altra-quadrant"]


def test_preset_2s_xeon() -> None:
    t = load_topology("2s-xeon")
    assert t.name == "2s-xeon"
    assert t.distance == ((10, 21), (21, 10))
    assert t.latency_ns == ((85.0, 136.0), (136.0, 85.0))
    assert t.nodes == (
        Node(0, tuple(range(0, 16)), 64 * GiB),
        Node(1, tuple(range(16, 32)), 64 * GiB),
    )
    assert t.remote_ratio() == 136.0 / 85.0


def test_preset_kunpeng920() -> None:
    t = load_topology("kunpeng920")
    assert t.name == "kunpeng920"
    assert t.distance == KUNPENG_DISTANCE
    assert t.latency_ns == KUNPENG_LATENCY
    assert [n.cpus for n in t.nodes] == [tuple(range(24 * i, 24 * i + 24)) for i in range(4)]
    assert [n.memory_bytes for n in t.nodes] == [64 * GiB] * 4
    assert t.n_nodes == 4 and t.n_cpus == 96
    assert t.node_of_cpu(47) == 1


def test_preset_epyc_nps4() -> None:
    t = load_topology("epyc-nps4")
    row0 = (10, 12, 12, 12, 32, 32, 32, 32)
    row4 = (32, 32, 32, 32, 10, 12, 12, 12)
    assert t.distance == (
        row0,
        (12, 10, 12, 12, 32, 32, 32, 32),
        (12, 12, 10, 12, 32, 32, 32, 32),
        (12, 12, 12, 10, 32, 32, 32, 32),
        row4,
        (32, 32, 32, 32, 12, 10, 12, 12),
        (32, 32, 32, 32, 12, 12, 10, 12),
        (32, 32, 32, 32, 12, 12, 12, 10),
    )
    assert t.latency_ns[0] == (113.0, 125.4, 125.4, 125.4, 249.4, 249.4, 249.4, 249.4)  # at the profile's 113 ns local
    assert t.latency_ns[4] == (249.4, 249.4, 249.4, 249.4, 113.0, 125.4, 125.4, 125.4)
    assert [n.cpus for n in t.nodes] == [tuple(range(16 * i, 16 * i + 16)) for i in range(8)]
    assert [n.memory_bytes for n in t.nodes] == [32 * GiB] * 8


def test_load_topology_local_ns_rederives_even_presets() -> None:
    t = load_topology("2s-xeon", local_ns=100.0)
    assert t.latency_ns == ((100.0, 160.4), (160.4, 100.0))
    assert t.distance == ((10, 21), (21, 10))
    assert load_topology("2:10,21,21,10", local_ns=100.0).latency_ns == ((100.0, 160.4), (160.4, 100.0))
    with pytest.raises(UsageError, match=r"^--local-ns: "):
        load_topology("2s-xeon", local_ns=-5.0)


def test_load_topology_unknown() -> None:
    with pytest.raises(
        UsageError,
        match=re.escape(
            "--topology: unknown preset, spec or file 'nosuch'; presets: 2s-xeon, 2s-e5-2690, 2s-epyc-7713, epyc-nps4, kunpeng920, "
            "2s-altra, altra-quadrant, host (this machine); a spec such as 4 or 2:10,21,21,10; or a .json/.toml file"
        ),
    ):
        load_topology("nosuch")


def test_load_topology_missing_file_and_wrong_suffix(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.json")
    with pytest.raises(UsageError, match=rf"^--topology: cannot read '{re.escape(missing)}': No such file"):
        load_topology(missing)
    yaml = tmp_path / "t.yaml"
    yaml.write_text("distance: [[10]]\n")
    with pytest.raises(UsageError, match=r"a topology file must end in \.json or \.toml$"):
        load_topology(str(yaml))


# ---------------------------------------------------------------------------------------------
# Specs


def test_spec_count_only() -> None:
    t = load_topology("4")
    assert t.name == "4"
    assert t.distance == tuple(tuple(10 if i == j else 20 for j in range(4)) for i in range(4))
    assert t.latency_ns == tuple(tuple(85.0 if i == j else 131.6 for j in range(4)) for i in range(4))
    assert t.nodes == tuple(Node(i, tuple(range(4 * i, 4 * i + 4)), 4 * GiB) for i in range(4))


def test_spec_with_distances() -> None:
    t = load_topology("2:10,21,21,10")
    assert t.distance == ((10, 21), (21, 10))
    assert t.latency_ns == ((85.0, 136.3), (136.3, 85.0))
    assert parse_spec("2: 10, 21 ,21,10").distance == t.distance
    assert parse_spec("1").distance == ((10,),)
    assert parse_spec("64").n_nodes == 64


def test_spec_unreachable_and_asymmetric() -> None:
    t = parse_spec("3:10,255,20,255,10,30,21,31,10")
    assert t.distance == ((10, 255, 20), (255, 10, 30), (21, 31, 10))
    assert t.latency_ns == ((85.0, None, 131.6), (None, 85.0, 178.3), (136.3, 182.9, 85.0))
    assert t.latency_ratio(0, 1) is None
    assert t.latency_ratio(2, 0) == 136.3 / 85.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0", r"^--topology: spec '0': 0 nodes; need 1\.\.64$"),
        ("65", r"^--topology: spec '65': 65 nodes; need 1\.\.64$"),
        ("2:10,21,21", r"^--topology: spec '2:10,21,21': 2 nodes need 4 distances \(2 x 2, row-major\), got 3$"),
        ("2:", r"^--topology: spec '2:': 2 nodes need 4 distances \(2 x 2, row-major\), got 0$"),
        ("2:10,21,21,10,10", r"need 4 distances \(2 x 2, row-major\), got 5$"),
        ("2:10,x,21,10", r"^--topology: spec '2:10,x,21,10': 'x' is not a distance \(an integer 10\.\.255\)$"),
        ("2:10,-5,21,10", r"'-5' is not a distance"),
        ("2:10,21.0,21,10", r"'21\.0' is not a distance"),
        ("2:10,,21,10", r"'' is not a distance"),
        ("2:20,21,21,10", r"^--topology: distance\[0\]\[0\] is 20; the diagonal \(local distance\) must be 10$"),
        ("2:10,9,21,10", r"^--topology: distance\[0\]\[1\] is 9; remote distances must be 11\.\.254 or 255"),
        ("2:10,21,256,10", r"^--topology: distance\[1\]\[0\] is 256; remote distances"),
    ],
)
def test_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_topology(spec)


def test_spec_255_is_accepted() -> None:
    t = load_topology("2:10,255,255,10")
    assert t.distance == ((10, 255), (255, 10))
    assert t.latency_ns == ((85.0, None), (None, 85.0))
    assert t.remote_ratio() is None


# ---------------------------------------------------------------------------------------------
# Files


GOOD_TOML = """\
name = "my box"
distance = [[10, 21], [21, 10]]
latency_ns = [[80, 130.5], [131, 80]]

[[nodes]]
cpus = "0-1"
memory_mb = 1024
host_cpus = "0"

[[nodes]]
cpus = [3, 2]
memory_bytes = 2048
host_cpus = [1]
"""


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "box.toml"
    path.write_text(GOOD_TOML)
    t = load_topology(str(path))
    assert t == Topology(
        "my box",
        (Node(0, (0, 1), 1024 << 20, (0,)), Node(1, (2, 3), 2048, (1,))),
        ((10, 21), (21, 10)),
        ((80.0, 130.5), (131.0, 80.0)),
    )


def test_json_file_defaults(tmp_path: Path) -> None:
    path = tmp_path / "t.JSON"
    path.write_text(json.dumps({"distance": [[10, 12], [12, 10]], "local_latency_ns": 100}))
    t = load_topology(str(path))
    assert t.name == str(path)  # no "name" key: named after the file
    assert t.latency_ns == ((100.0, 111.0), (111.0, 100.0))
    assert t.nodes == (Node(0, (0, 1, 2, 3), 4 * GiB), Node(1, (4, 5, 6, 7), 4 * GiB))


def test_json_file_unreachable_latency_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"distance": [[10, 255], [255, 10]], "latency_ns": [[80, 999], [None, 80]]}))
    assert load_topology(str(path)).latency_ns == ((80.0, None), (None, 80.0))


def _write(tmp_path: Path, suffix: str, text: str) -> str:
    path = tmp_path / f"topo{suffix}"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("suffix", "text", "message"),
    [
        (".json", "", r"'\S+topo\.json' is empty$"),
        (".toml", "  \n", r"'\S+topo\.toml' is empty$"),
        (".json", "{distance: 1}", r"'\S+topo\.json' is not valid JSON: Expecting property name"),
        (".toml", "distance = [[10, 21]", r"'\S+topo\.toml' is not valid TOML: "),
        (".json", "[1, 2]", r"'\S+topo\.json': the top level must be a table/object, not list$"),
        (".json", '{"name": "x"}', r"'\S+topo\.json': distance is missing; it is required"),
        (".json", '{"distance": "10"}', r"': distance must be a list, not str$"),
        (".json", '{"distance": [[10, 21], [21, 10]], "distances": 1}', r"': unknown key 'distances'; allowed: "),
        (".json", '{"distance": [[10]], "name": 5}', r"': name is 5; it must be a string$"),
        (".toml", "distance = [[10, 21.5], [21, 10]]", r"': distance\[0\]\[1\] is 21\.5 \(float\); distances must be integers$"),
        (".json", '{"distance": [[10, 21], [21, 10]], "latency_ns": [[85, 136]]}', r"': latency_ns has 1 rows; expected 2, like distance$"),
        (".json", '{"distance": [[10, 21], [21, 10]], "latency_ns": [[85, 136], [136]]}', r"': latency_ns\[1\] has 1 entries; expected 2"),
        (".json", '{"distance": [[10, 21], [21, 10]], "latency_ns": [[85, "x"], [136, 85]]}', r"': latency_ns\[0\]\[1\] is 'x'; latencies must be positive numbers \(ns\)$"),
        (".json", '{"distance": [[10, 21], [21, 10]], "latency_ns": [[85, 0], [136, 85]]}', r"latency_ns\[0\]\[1\] is 0; latencies must be positive"),
        (".json", '{"distance": [[10, 21], [21, 10]], "latency_ns": [[85, null], [136, 85]]}', r"latency_ns\[0\]\[1\] is None; latencies must be positive"),
        (".json", '{"distance": [[10, 21], [21, 10]], "latency_ns": [[85, NaN], [136, 85]]}', r"latency_ns\[0\]\[1\] is nan; latencies must be positive"),
        (".json", '{"distance": [[10]], "local_latency_ns": -1}', r"': local_latency_ns is -1; need a positive number of ns$"),
        (".json", '{"distance": [[10, 21], [21, 10]], "nodes": [{}]}', r"': nodes has 1 entries but distance is 2 x 2; give one entry per node"),
        (".json", '{"distance": [[10]], "nodes": {"cpus": "0"}}', r"': nodes must be a list, not dict$"),
        (".json", '{"distance": [[10]], "nodes": [5]}', r"': nodes\[0\] must be a table/object, not int$"),
        (".json", '{"distance": [[10]], "nodes": [{"memory_gb": 4}]}', r"': nodes\[0\]: unknown key 'memory_gb'; allowed: cpus, host_cpus, host_node, memory_bytes, memory_mb, node$"),
        (".json", '{"distance": [[10]], "nodes": [{"node": 1}]}', r"': nodes\[0\]: node is 1; entries must be in order, this one is 0$"),
        (".json", '{"distance": [[10]], "nodes": [{"cpus": "0-x"}]}', r"': nodes\[0\]: cpus: '0-x' is not a CPU number or range such as 0-3$"),
        (".json", '{"distance": [[10]], "nodes": [{"cpus": 4}]}', r"': nodes\[0\]: cpus is 4; give a cpulist string"),
        (".json", '{"distance": [[10]], "nodes": [{"cpus": [0, -1]}]}', r"': nodes\[0\]: cpus: -1 is not a CPU number"),
        (".json", '{"distance": [[10]], "nodes": [{"cpus": [1, 1]}]}', r"': nodes\[0\]: cpus: a CPU is listed twice in \[1, 1\]$"),
        (".json", '{"distance": [[10]], "nodes": [{"memory_mb": "4G"}]}', r"': nodes\[0\]: memory_mb is '4G'; need an integer >= 0$"),
        (".json", '{"distance": [[10]], "nodes": [{"memory_mb": 1.5}]}', r"': nodes\[0\]: memory_mb is 1\.5; need an integer >= 0$"),
        (".json", '{"distance": [[10]], "nodes": [{"memory_mb": 1, "memory_bytes": 1}]}', r"': nodes\[0\]: give memory_mb or memory_bytes, not both$"),
        (".json", '{"distance": [[10]], "nodes": [{"host_cpus": ""}]}', r"': nodes\[0\]: host_cpus is empty; give at least one CPU$"),
        (
            ".toml",
            'distance = [[10, 21], [21, 10]]\n[[nodes]]\ncpus = "0-3"\n[[nodes]]\ncpus = "3-5"\n',
            r"': emulated CPU 3 is listed on node 0 and node 1; a CPU belongs to one node$",
        ),
        (
            ".toml",
            'distance = [[10, 21], [21, 10]]\n[[nodes]]\nhost_cpus = "0"\n[[nodes]]\n',
            r"': host_cpus is set for node\(s\) 0 but not 1; set it for every node or for none$",
        ),
    ],
)
def test_bad_files(tmp_path: Path, suffix: str, text: str, message: str) -> None:
    path = _write(tmp_path, suffix, text)
    with pytest.raises(UsageError, match=r"^--topology: ") as info:
        load_topology(path)
    assert re.search(message, str(info.value)), str(info.value)
    assert path in str(info.value)


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match=r"is not UTF-8 text: invalid start byte$"):
        load_topology(str(path))


def test_from_mapping_directly() -> None:
    t = from_mapping({"distance": [[10]]}, name="inline")
    assert t == Topology("inline", (Node(0, (0, 1, 2, 3), 4 * GiB),), ((10,),), ((85.0,),))


# ---------------------------------------------------------------------------------------------
# to_json round trip


def _with_host_cpus() -> Topology:
    base = parse_spec("2")
    nodes = tuple(Node(n.id, n.cpus, n.memory_bytes, (n.id, n.id + 4)) for n in base.nodes)
    return Topology("hosted", nodes, base.distance, base.latency_ns)


@pytest.mark.parametrize(
    "make",
    [*PRESETS.values(), lambda: parse_spec("3:10,255,20,255,10,30,21,31,10"), _with_host_cpus],
)
def test_to_json_round_trip(make: object) -> None:
    topo = make()  # type: ignore[operator]
    data = json.loads(json.dumps(topo.to_json(), sort_keys=True))
    assert from_mapping(data, name="ignored") == topo


def test_to_json_shape() -> None:
    assert _with_host_cpus().to_json() == {
        "name": "hosted",
        "nodes": [
            {"node": 0, "cpus": "0-3", "memory_bytes": 4 * GiB, "host_cpus": "0,4", "host_node": None},
            {"node": 1, "cpus": "4-7", "memory_bytes": 4 * GiB, "host_cpus": "1,5", "host_node": None},
        ],
        "distance": [[10, 20], [20, 10]],
        "latency_ns": [[85.0, 131.6], [131.6, 85.0]],
    }
    assert parse_spec("2:10,255,255,10").to_json()["latency_ns"] == [[85.0, None], [None, 85.0]]


def test_topology_invariants() -> None:
    good = parse_spec("2")
    with pytest.raises(UsageError, match=r"^--topology: nodes\[1\] has id 5; ids must be 0\.\.1 in order$"):
        Topology("x", (good.nodes[0], Node(5, (9,), 1)), good.distance, good.latency_ns)
    with pytest.raises(UsageError, match=r"^--topology: distance must be a 2 x 2 tuple of int tuples"):
        Topology("x", good.nodes, [[10, 20], [20, 10]], good.latency_ns)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"^--topology: latency_ns\[0\]\[1\] is None but distance\[0\]\[1\] is 20"):
        Topology("x", good.nodes, good.distance, ((85.0, None), (131.6, 85.0)))
    with pytest.raises(UsageError, match=r"^--topology: latency_ns must be a 2 x 2 tuple of tuples"):
        Topology("x", good.nodes, good.distance, ((85.0,),))
    with pytest.raises(UsageError, match=r"^--topology: 0 nodes; need 1\.\.64$"):
        Topology("x", (), (), ())
    with pytest.raises(UsageError, match=r"^--topology: node 0: cpus must be sorted and without repeats"):
        Node(0, (1, 0), 0)
    with pytest.raises(UsageError, match=r"^--topology: node 0: memory_bytes is -1; need an integer >= 0$"):
        Node(0, (), -1)


def test_with_derived_latency() -> None:
    t = with_derived_latency(load_topology("2s-xeon"), 85.0)
    assert t.latency_ns == ((85.0, 136.3), (136.3, 85.0))


# ---------------------------------------------------------------------------------------------
# sysfs


def _fake_sysfs(root: Path, nodes: dict[int, tuple[str, str, str]], online: str) -> None:
    base = root / "devices" / "system" / "node"
    base.mkdir(parents=True)
    (base / "online").write_text(online + "\n")
    for nid, (cpulist, distance, kb) in nodes.items():
        d = base / f"node{nid}"
        d.mkdir()
        (d / "cpulist").write_text(cpulist + "\n")
        (d / "distance").write_text(distance + "\n")
        (d / "meminfo").write_text(
            f"Node {nid} MemTotal:       {kb} kB\nNode {nid} MemFree:        1000 kB\n"
        )


def test_read_sysfs_two_nodes(tmp_path: Path) -> None:
    _fake_sysfs(tmp_path, {0: ("0-3,8-11", "10 21", "24576000"), 1: ("4-7,12-15", "21 10", "16384")}, "0-1")
    t = read_sysfs(tmp_path)
    assert t == Topology(
        "host",
        (
            Node(0, (0, 1, 2, 3, 8, 9, 10, 11), 24576000 * 1024, (0, 1, 2, 3, 8, 9, 10, 11), host_node=0),
            Node(1, (4, 5, 6, 7, 12, 13, 14, 15), 16384 * 1024, (4, 5, 6, 7, 12, 13, 14, 15), host_node=1),
        ),
        ((10, 21), (21, 10)),
        ((85.0, 136.3), (136.3, 85.0)),
    )
    assert load_topology("host", sysfs_root=tmp_path) == t


def test_read_sysfs_memory_only_node_and_sparse_ids(tmp_path: Path) -> None:
    _fake_sysfs(tmp_path, {0: ("0-1", "10 20", "1024"), 2: ("", "20 10", "2048")}, "0,2")
    t = read_sysfs(tmp_path)
    # A memory-only node has no host_cpus, so (all or none) neither has node 0; placement refuses it.
    assert t.nodes == (Node(0, (0, 1), 1024 * 1024, host_node=0), Node(1, (), 2048 * 1024, host_node=2))
    assert t.distance == ((10, 20), (20, 10))
    assert format_numactl(t).splitlines()[3] == "node 1 cpus:"


def test_read_sysfs_missing_file(tmp_path: Path) -> None:
    _fake_sysfs(tmp_path, {0: ("0", "10 20", "1"), 1: ("1", "20 10", "1")}, "0-1")
    missing = tmp_path / "devices" / "system" / "node" / "node1" / "meminfo"
    missing.unlink()
    with pytest.raises(UsageError, match=rf"^--topology: cannot read {re.escape(str(missing))}: No such file or directory$"):
        read_sysfs(tmp_path)
    with pytest.raises(UsageError, match=r"^--topology: cannot read \S+/devices/system/node/online: No such file"):
        read_sysfs(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("distance1", "meminfo_kb", "message"),
    [
        ("21 10 x", "1", r"node1/distance: '21 10 x' is not a row of integers$"),
        ("21", "1", r"/devices/system/node: distance\[1\] has 1 entries; expected 2"),
        ("9 10", "1", r"/devices/system/node: distance\[1\]\[0\] is 9; remote distances"),
        ("21 10", "lots", r"node1/meminfo: no 'Node 1 MemTotal: N kB' line$"),
    ],
)
def test_read_sysfs_bad_contents(tmp_path: Path, distance1: str, meminfo_kb: str, message: str) -> None:
    _fake_sysfs(tmp_path, {0: ("0", "10 21", "1"), 1: ("1", distance1, meminfo_kb)}, "0-1")
    with pytest.raises(UsageError, match=message):
        read_sysfs(tmp_path)


# ---------------------------------------------------------------------------------------------
# Host placement


@pytest.mark.parametrize(
    ("n_nodes", "available", "cpus", "oversubscribed"),
    [
        (2, [0, 1], ((0,), (1,)), False),
        (4, [0, 1], ((0,), (1,), (0,), (1,)), True),
        (8, range(16), tuple((2 * i, 2 * i + 1) for i in range(8)), False),
        (3, range(8), ((0, 1, 2), (3, 4, 5), (6, 7)), False),
        (2, [7, 3, 5], ((3, 5), (7,)), False),  # sorted first
        (1, [4], ((4,),), False),
        (3, [9], ((9,), (9,), (9,)), True),
    ],
)
def test_place_on_host_automatic(
    n_nodes: int, available: object, cpus: tuple[tuple[int, ...], ...], oversubscribed: bool
) -> None:
    p = bind_to_host(_topo(n_nodes), list(available))  # type: ignore[call-overload]
    assert p == HostBinding(cpus, oversubscribed)


def test_place_on_host_override() -> None:
    topo = _topo(2)
    assert bind_to_host(topo, [0, 1, 2, 3], [[1, 0], [3]]) == HostBinding(((0, 1), (3,)), False)
    assert bind_to_host(topo, [0, 1, 2, 3], [[0, 1], [1, 2]]) == HostBinding(((0, 1), (1, 2)), True)


def test_place_on_host_override_errors() -> None:
    topo = _topo(2)
    with pytest.raises(
        UsageError,
        match=re.escape(
            "--host-cpus: node 1: host CPU 99 does not exist or is not available to this process (available: 0-1)"
        ),
    ):
        bind_to_host(topo, [0, 1], [[0], [1, 99]])
    with pytest.raises(UsageError, match=r"^--host-cpus: node 0: host CPUs 5-6 do not exist or are not available"):
        bind_to_host(topo, [0, 1], [[5, 6], [1]])
    with pytest.raises(
        UsageError,
        match=r"^--host-cpus: got 3 CPU sets for 2 nodes; give one cpulist per node, separated by ';' \(e\.g\. 0-1;2-3\)$",
    ):
        bind_to_host(topo, [0, 1], [[0], [1], [1]])
    with pytest.raises(UsageError, match=r"^--host-cpus: node 1: empty CPU set; every node needs a host CPU$"):
        bind_to_host(topo, [0, 1], [[0], []])
    with pytest.raises(UsageError, match=r"^--host-cpus: no host CPUs are available to this process$"):
        bind_to_host(topo, [])


def test_place_on_host_uses_topology_host_cpus() -> None:
    topo = _with_host_cpus()  # node 0 on (0, 4), node 1 on (1, 5)
    assert bind_to_host(topo, range(8)) == HostBinding(((0, 4), (1, 5)), False)
    assert bind_to_host(topo, range(8), [[2], [3]]) == HostBinding(((2,), (3,)), False)  # option wins
    with pytest.raises(UsageError, match=r"^--topology: node 0: host CPU 4 does not exist or is not available"):
        bind_to_host(topo, range(4))


def test_host_placement_to_json() -> None:
    assert HostBinding(((0, 1, 2), (5,)), False).to_json() == {"cpus": ["0-2", "5"], "oversubscribed": False}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-1;2-3", ((0, 1), (2, 3))),
        ("0", ((0,),)),
        (" 0,2 ; 1,3 ", ((0, 2), (1, 3))),
        ("0;0", ((0,), (0,))),
    ],
)
def test_parse_host_cpus(text: str, expected: tuple[tuple[int, ...], ...]) -> None:
    assert parse_host_cpus(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"^--host-cpus: is empty; give one cpulist per node separated by ';', e\.g\. 0-1;2-3$"),
        ("0;;1", r"^--host-cpus: node 1: empty CPU set; every node needs a host CPU$"),
        ("0-1;", r"^--host-cpus: node 1: empty CPU set"),
        ("0;a", r"^--host-cpus: node 1: 'a' is not a CPU number or range such as 0-3$"),
        ("3-1", r"^--host-cpus: node 0: '3-1' is not a CPU range: need 0 <= first <= last$"),
    ],
)
def test_parse_host_cpus_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_host_cpus(text)


# ---------------------------------------------------------------------------------------------
# numactl --hardware format


def test_format_numactl_kunpeng920() -> None:
    cpus = [" ".join(str(c) for c in range(24 * i, 24 * i + 24)) for i in range(4)]
    expected = (
        "available: 4 nodes (0-3)\n"
        f"node 0 cpus: {cpus[0]}\n"
        "node 0 size: 65536 MB\n"
        f"node 1 cpus: {cpus[1]}\n"
        "node 1 size: 65536 MB\n"
        f"node 2 cpus: {cpus[2]}\n"
        "node 2 size: 65536 MB\n"
        f"node 3 cpus: {cpus[3]}\n"
        "node 3 size: 65536 MB\n"
        "node distances:\n"
        "node   0   1   2   3\n"
        "  0:  10  12  20  22\n"
        "  1:  12  10  22  24\n"
        "  2:  20  22  10  12\n"
        "  3:  22  24  12  10\n"
        "\n"
        "latency (ns):\n"
        "node      0      1      2      3\n"
        "  0:   96.0  106.5  148.7  159.2\n"
        "  1:  106.5   96.0  159.2  169.7\n"
        "  2:  148.7  159.2   96.0  106.5\n"
        "  3:  159.2  169.7  106.5   96.0\n"
    )
    topo = load_topology("kunpeng920")
    assert format_numactl(topo) == expected
    placement = bind_to_host(topo, [0, 1])
    assert format_numactl(topo, placement) == expected + (
        "\n"
        "host CPUs:\n"
        "node 0 runs on host CPUs 0\n"
        "node 1 runs on host CPUs 1\n"
        "node 2 runs on host CPUs 0\n"
        "node 3 runs on host CPUs 1\n"
        "oversubscribed: 4 nodes share 2 host CPUs; emulated time stays exact, wall-clock fidelity is reduced\n"
    )


def test_format_numactl_unreachable_and_placement() -> None:
    topo = parse_spec("2:10,255,30,10")
    text = format_numactl(topo, bind_to_host(topo, range(4)))
    assert text.endswith(
        "node distances:\n"
        "node   0   1\n"
        "  0:  10 255\n"
        "  1:  30  10\n"
        "\n"
        "latency (ns):\n"
        "node      0      1\n"
        "  0:   85.0      -\n"
        "  1:  178.3   85.0\n"
        "\n"
        "host CPUs:\n"
        "node 0 runs on host CPUs 0-1\n"
        "node 1 runs on host CPUs 2-3\n"
    )
    overlap = bind_to_host(parse_spec("3"), range(4), [[0, 1], [1, 2], [3]])
    assert format_numactl(parse_spec("3"), overlap).splitlines()[-1] == (
        "oversubscribed: 2 nodes share 3 host CPUs; emulated time stays exact, wall-clock fidelity is reduced"
    )


def test_a_node_count_with_leading_zeros_is_its_number():
    # 19 characters, but 2 nodes: the 4300-digit guard counts digits after the zeros
    assert load_topology("0000000000000000002").n_nodes == 2
