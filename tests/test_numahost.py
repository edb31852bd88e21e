"""Real NUMA hosts: ``--topology host`` from sysfs (host node ids, each node on its own CPUs,
memory-only and memoryless nodes), the numa_maps placement report, and ``--delays none``.

Everything but the last tests is pure and fast: a fake sysfs tree and fake numa_maps text in
tmp_path. The slow tests run the CLI on this machine and read its real numa_maps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from numaemu.cli import main
from numaemu.errors import UsageError
from numaemu.host.clock import Pacer, Unpaced
from numaemu.host.files import load_topology
from numaemu.host.numamaps import (
    HostPages,
    NodePlacement,
    NumaMapsReport,
    expected_host_nodes,
    file_pages,
    format_numa_maps,
    numa_maps_informative,
    numa_maps_warnings,
    parse_numa_maps,
    read_numa_maps,
)
from numaemu.host.segments import USER_DATA_BYTES
from numaemu.host.sysfs import read_sysfs
from numaemu.measure.report import format_point
from numaemu.measure.summary import summarise_point
from numaemu.model.binding import bind_to_host, memory_only_nodes
from numaemu.model.numactl import format_numactl
from numaemu.model.topology import Node
from numaemu.model.topology_parse import from_mapping
from numaemu.runtime.policy_run import prepare_spec

from .conftest import numaemu
from .test_bench import POINT, reps
from .test_clock import FakeClock
from .test_topology import _fake_sysfs

# ---------------------------------------------------------------------------------------------
# A fake /sys/devices/system/node (drivers/base/node.c: online, nodeN/{cpulist,distance,meminfo})


def fake_sysfs(root: Path, nodes: dict[int, tuple[str, str, int]], online: str) -> Path:
    _fake_sysfs(root, {nid: (cpus, dist, str(kb)) for nid, (cpus, dist, kb) in nodes.items()}, online)
    return root


def two_nodes(tmp_path: Path) -> Path:
    return fake_sysfs(tmp_path, {0: ("0-3", "10 21", 8 << 20), 1: ("4-7", "21 10", 4 << 20)}, "0-1")


def test_host_two_nodes_keep_ids_cpus_memory_distances(tmp_path: Path) -> None:
    t = load_topology("host", sysfs_root=two_nodes(tmp_path))
    assert t.name == "host"
    assert [(n.id, n.host_node) for n in t.nodes] == [(0, 0), (1, 1)]
    assert [n.cpus for n in t.nodes] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [n.host_cpus for n in t.nodes] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [n.memory_bytes for n in t.nodes] == [8 << 30, 4 << 30]
    assert t.distance == ((10, 21), (21, 10))
    assert t.latency_ns == ((85.0, 136.3), (136.3, 85.0))
    # Each node's worker runs on its own node's CPUs, not on an even cut of the host's.
    host = bind_to_host(t, range(8))
    assert host.cpus == ((0, 1, 2, 3), (4, 5, 6, 7)) and not host.oversubscribed
    # Only the CPUs this process may use (taskset, cpuset), still on the right node.
    assert bind_to_host(t, [1, 2, 6]).cpus == ((1, 2), (6,))
    with pytest.raises(UsageError, match=r"^--topology: node 1 \(host node 1\): none of its CPUs 4-7 is available to this process \(available: 0-3\)$"):
        bind_to_host(t, range(4))
    # --host-cpus still wins: the user chose (and the placement report will say where pages went).
    assert bind_to_host(t, range(8), [[4], [0]]).cpus == ((4,), (0,))


def test_host_sparse_ids_are_renumbered_and_kept(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, {0: ("0-1", "10 32", 1024), 2: ("2-3", "32 10", 2048)}, "0,2")
    t = read_sysfs(root)
    assert [(n.id, n.host_node, n.host_cpus, n.memory_bytes) for n in t.nodes] == [(0, 0, (0, 1), 1 << 20), (1, 2, (2, 3), 2 << 20)]
    assert t.distance == ((10, 32), (32, 10))
    assert [n["host_node"] for n in t.to_json()["nodes"]] == [0, 2]
    assert from_mapping(json.loads(json.dumps(t.to_json())), name="x") == t
    assert "host nodes (sysfs ids): node 0 is host node 0, node 1 is host node 2" in format_numactl(t)
    assert "host nodes" not in format_numactl(read_sysfs(two_nodes(tmp_path / "dense")))


def test_host_memory_only_node_is_read_but_cannot_run(tmp_path: Path, capsys) -> None:
    root = fake_sysfs(tmp_path, {0: ("0-1", "10 20", 1024), 2: ("", "20 10", 4096)}, "0,2")
    t = read_sysfs(root)
    assert t.nodes == (Node(0, (0, 1), 1 << 20, host_node=0), Node(1, (), 4 << 20, host_node=2))
    assert memory_only_nodes(t) == (2,)
    rule = "host node 2 has memory but no CPUs; numaemu runs one worker on each node's own CPUs"
    with pytest.raises(UsageError, match="^--topology: " + rule):
        bind_to_host(t, [0, 1])
    with pytest.raises(UsageError, match="^--topology: " + rule):
        bind_to_host(t, [0, 1], [[0], [1]])  # not with --host-cpus either: its memory would be elsewhere
    for argv in (["run"], ["bench"], ["stress"]):
        assert main([*argv, "--topology", "host", "--sysfs-root", str(root)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --topology: " + rule) and err.count("\n") == 1, err
    # `numaemu topology host` still shows the machine, without a host placement.
    assert main(["topology", "host", "--sysfs-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "node 1 cpus:\n" in out and "host CPUs:" not in out
    assert "no host placement: host node(s) 2 have memory but no CPUs" in out
    assert main(["topology", "host", "--sysfs-root", str(root), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["host_binding"] is None


def test_host_memoryless_node_passes_with_zero_memory(tmp_path: Path) -> None:
    root = fake_sysfs(
        tmp_path,
        {0: ("0", "10 21 31", 1024), 1: ("1", "21 10 21", 0), 2: ("2", "31 21 10", 1024)},
        "0-2",
    )
    t = read_sysfs(root)
    assert [n.memory_bytes for n in t.nodes] == [1 << 20, 0, 1 << 20]
    assert bind_to_host(t, [0, 1, 2]).cpus == ((0,), (1,), (2,))
    # Its allocations fall back to the nearest nodes with memory (both at 21 here).
    assert expected_host_nodes(t) == ((0,), (0, 2), (2,))
    assert expected_host_nodes(load_topology("2s-xeon")) == ((), ())


def test_host_node_in_a_topology_file(tmp_path: Path) -> None:
    f = tmp_path / "t.json"
    f.write_text('{"distance": [[10, 21], [21, 10]], "nodes": [{"cpus": "0", "host_node": 0}, {"cpus": "1", "host_node": -1}]}')
    with pytest.raises(UsageError, match=r"nodes\[1\]: host_node is -1; need an integer >= 0$"):
        load_topology(str(f))
    with pytest.raises(UsageError, match=r"^--topology: node 0: host_node is 'x'; need an integer >= 0$"):
        Node(0, (0,), 1, host_node="x")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# numa_maps (fs/proc/task_mmu.c show_numa_map)

MAPS = r"""00400000 default file=/usr/bin/python3.11 mapped=140 mapmax=3 N0=140 kernelpagesize_kB=4
01b3a000 default heap anon=3042 dirty=3042 N0=3042 kernelpagesize_kB=4
7f2a10000000 default file=/dev/shm/numaemu-123-abcd-mem dirty=512 mapmax=2 N0=512 N1=3 kernelpagesize_kB=4
7f2a18000000 default file=/dev/shm/numaemu-123-abcd-mem
7f2a20000000 default file=/dev/shm/numaemu-123-abcd-master dirty=70 N0=70 kernelpagesize_kB=4
7f2a30000000 bind:1 file=/dev/hugepages/buf huge dirty=4 N1=4 kernelpagesize_kB=2048
7f2a40000000 interleave:0-1 anon=1024 dirty=1024 active=0 N0=512 N1=512 kernelpagesize_kB=4
7f2a50000000 prefer (many)=static:0-1 anon=8 dirty=8 N0=8 kernelpagesize_kB=4
7f2a60000000 default file=/dev/shm/odd\040name\075x mapped=1 N1=1 kernelpagesize_kB=4
7f2a70000000 default file=/dev/shm/numaemu-123-abcd-mem dirty=10 N1=10 kernelpagesize_kB=4
7f2a80000000 default
7ffd1c000000 default stack anon=33 dirty=33 N0=33 kernelpagesize_kB=4
"""


def test_parse_numa_maps_realistic_lines() -> None:
    lines = parse_numa_maps(MAPS)
    assert len(lines) == 12
    py, heap, mem = lines[0], lines[1], lines[2]
    assert (py.start, py.policy, py.file, py.page_kb, py.node_pages) == (0x400000, "default", "/usr/bin/python3.11", 4, ((0, 140),))
    assert py.counts == (("mapped", 140), ("mapmax", 3))
    assert heap.file is None and heap.node_pages == ((0, 3042),)
    assert mem.node_pages == ((0, 512), (1, 3)) and mem.page_kb == 4
    empty = lines[3]  # mapped, nothing faulted in: the line stops after the path
    assert empty.file == "/dev/shm/numaemu-123-abcd-mem" and empty.page_kb is None and empty.node_pages == ()
    huge = lines[5]
    assert huge.huge and huge.policy == "bind:1" and huge.page_kb == 2048 and huge.node_pages == ((1, 4),)
    assert lines[6].policy == "interleave:0-1" and lines[6].node_pages == ((0, 512), (1, 512))
    assert lines[7].policy == "prefer (many)=static:0-1"  # a policy with a blank and an '='
    assert lines[8].file == "/dev/shm/odd name=x"  # seq_path escapes " \t\n=" as octal
    assert lines[10].policy == "default" and lines[10].file is None and lines[10].node_pages == ()


def test_file_pages_sums_every_mapping_of_the_segment() -> None:
    lines = parse_numa_maps(MAPS)
    pages = file_pages(lines, "numaemu-123-abcd-mem")
    assert pages == HostPages(4, ((0, 512), (1, 13)))
    assert pages.total == 525 and pages.as_dict() == {0: 512, 1: 13}
    assert pages.to_json() == {"page_kb": 4, "pages": {"0": 512, "1": 13}}
    assert file_pages(lines, "/dev/shm/numaemu-123-abcd-mem") == pages
    assert file_pages(lines, "/elsewhere/numaemu-123-abcd-mem") is None  # a full path must match
    assert file_pages(lines, "numaemu-123-abcd-master") == HostPages(4, ((0, 70),))
    assert file_pages(lines, "buf") == HostPages(2048, ((1, 4),))  # huge pages, counted as such
    assert file_pages(lines, "numaemu-999-ffff-mem") is None
    # Mapped but never touched: a reading of zero pages, not a missing one.
    assert file_pages(parse_numa_maps("7f00000000 default file=/dev/shm/x\n"), "x") == HostPages(4, ())
    # Mixed page sizes are counted in the smallest; a deleted file still counts.
    mixed = "1000 default file=/dev/shm/y N0=1 kernelpagesize_kB=2048\n2000 default file=/dev/shm/y\\040(deleted) N1=2 kernelpagesize_kB=4\n"
    assert file_pages(parse_numa_maps(mixed), "y") == HostPages(4, ((0, 512), (1, 2)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("zzzz default N0=1 kernelpagesize_kB=4", r"^line 1: does not start with a hex address"),
        ("1000 default\n1000", r"^line 2: no memory policy after the address"),
        ("1000 default N0=x kernelpagesize_kB=4", r"^line 1: N0= is 'x', not a count"),
        ("1000 default N0=4", r"^line 1: N<node>= counts without kernelpagesize_kB"),
    ],
)
def test_parse_numa_maps_refuses_malformed_lines(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_numa_maps(text)


def _proc(tmp_path: Path, pid: int, text: str) -> None:
    (tmp_path / str(pid)).mkdir()
    (tmp_path / str(pid) / "numa_maps").write_text(text)


def test_read_placement_is_failure_tolerant(tmp_path: Path) -> None:
    _proc(tmp_path, 10, MAPS)
    _proc(tmp_path, 11, "00400000 default file=/usr/bin/python3 N0=1 kernelpagesize_kB=4\n")
    _proc(tmp_path, 12, "garbage\n")
    (tmp_path / "13" / "numa_maps").mkdir(parents=True)  # a read error other than "missing"
    report = read_numa_maps([10, 11, 12, 13, 14, None], "numaemu-123-abcd-mem", [(0,)] * 6, tmp_path)
    n = report.nodes
    assert n[0] == NodePlacement(0, 10, (0,), HostPages(4, ((0, 512), (1, 13))))
    assert n[1].pages is None and n[1].error.endswith("has no mapping of numaemu-123-abcd-mem")
    assert n[2].pages is None and "line 1: does not start with a hex address" in n[2].error
    assert n[3].pages is None and n[3].error.startswith(f"cannot read {tmp_path}/13/numa_maps: Is a directory")
    assert n[4].error == f"{tmp_path}/14/numa_maps does not exist (process gone, or a kernel without CONFIG_NUMA)"
    assert n[5].error == "no process"
    assert not report.available and report.reason.startswith("node 1: ")
    doc = report.to_json()
    assert doc["available"] is False and doc["nodes"][0]["pages"] == {"0": 512, "1": 13}
    assert doc["nodes"][4]["pages"] is None and doc["nodes"][4]["page_kb"] is None
    # No /proc at all (a kernel without CONFIG_NUMA has no numa_maps): unavailable, no crash.
    assert read_numa_maps([1], "x", [()], tmp_path / "noproc").nodes[0].pages is None


# ---------------------------------------------------------------------------------------------
# Warnings and output (pure)


def report(*nodes: tuple[tuple[int, ...], dict[int, int] | None]) -> NumaMapsReport:
    return NumaMapsReport("seg", tuple(
        NodePlacement(i, 100 + i, exp, None if pages is None else HostPages(4, tuple(sorted(pages.items()))), None if pages else "gone")
        for i, (exp, pages) in enumerate(nodes)
    ))


def test_warnings_catch_a_misplaced_partition() -> None:
    good = report(((0,), {0: 2278}), ((1,), {1: 2048}))
    assert numa_maps_warnings([good]) == []
    bad = report(((0,), {0: 2278}), ((1,), {0: 300, 1: 1748}))
    assert numa_maps_warnings([bad]) == ["warning: node 1: 300 of 2048 pages on host node 0, expected 1"]
    # One line per node over every policy's run, with every wrong host node named.
    worse = report(((0,), {0: 2278}), ((1,), {0: 10, 1: 2030, 2: 8}))
    assert numa_maps_warnings([bad, worse]) == [
        "warning: node 1: 310 of 4096 pages on host node 0 and 8 on host node 2, expected 1"
    ]
    # A memoryless node: any of its nearest nodes with memory is right.
    assert numa_maps_warnings([report(((0, 2), {2: 5})), report(((0, 2), {1: 5}))]) == [
        "warning: node 0: 5 of 10 pages on host node 1, expected 0 or 2"
    ]
    # No expectation (an emulated topology) or no reading: nothing to warn about.
    assert numa_maps_warnings([report(((), {1: 5}), ((1,), None))]) == []
    assert numa_maps_warnings([]) == []


def test_format_placement_and_when_it_is_informative() -> None:
    one_host = {"single": report(((), {0: 2278}), ((), {0: 2048})), "replicate": report(((), {0: 2278}), ((), {0: 2278}))}
    assert not numa_maps_informative(list(one_host.values()))  # an emulated topology on a 1-node host
    assert format_numa_maps(one_host) == [
        "memory placement (numa_maps, each node's partition, pages per host node): every node's pages on host node 0"
    ]
    host = {"single": report(((0,), {0: 2278}))}
    assert numa_maps_informative(list(host.values()))  # --topology host: always shown
    spread = {"single": report(((), {0: 2278}), ((), {1: 2000, 0: 48}))}
    assert numa_maps_informative(list(spread.values()))
    assert format_numa_maps(spread) == [
        "memory placement (numa_maps, each node's partition, pages per host node):",
        "  single     node 0 -> host 0: 2278; node 1 -> host 0: 48, host 1: 2000",
    ]
    gone = {"single": report(((0,), None))}
    assert format_numa_maps(gone) == ["memory placement: unavailable (single: node 0: gone)"]
    partly = {"single": report(((0,), {0: 1}), ((1,), None))}
    assert format_numa_maps(partly)[1] == "  single     node 0 -> host 0: 1; node 1 -> unavailable (gone)"


# ---------------------------------------------------------------------------------------------
# --delays


def test_unpaced_clock_never_holds_a_batch() -> None:
    fake = FakeClock(now=100_000, tick=1000)
    clock = Unpaced(shared_core=True, clock=fake.clock, sleep=fake.sleep, yield_cpu=fake.yield_cpu)
    assert isinstance(clock, Pacer)
    assert clock.pace(0, 1e9) == 100_000  # a second of emulated time, and no wait at all
    assert clock.paced_ns == 0 and clock.overrun_ns == 0 and clock.overrun_share == 0.0
    assert fake.sleeps == [] and fake.yields == 0
    assert clock.wait_until(150_000) >= 150_000  # the common start instant is still waited for


def test_prepare_spec_none_skips_calibration() -> None:
    from numaemu.model.image import synthetic_image
    from numaemu.model.workloads import build_workload

    topo = load_topology("2s-xeon")
    image = synthetic_image(0.05)
    common = {"cold": False, "user_local": True, "duration_s": 1.0, "requests": None, "migrate_rate": 0.0, "seed": 0, "start_method": "fork", "replicate": "text+rodata"}
    spec, cal = prepare_spec(topo, bind_to_host(topo, [0, 1]), image, build_workload("db", image, 0), delays="none", **common)  # type: ignore[arg-type]
    assert spec.delays == "none" and cal == {}
    with pytest.raises(UsageError, match=r"^--delays: 'fast' is not one of model, none$"):
        prepare_spec(topo, bind_to_host(topo, [0, 1]), image, build_workload("db", image, 0), delays="fast", **common)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"^--time-scale: is for --delays model"):
        prepare_spec(topo, bind_to_host(topo, [0, 1]), image, build_workload("db", image, 0), delays="none", time_scale=2.0, **common)  # type: ignore[arg-type]


BAD = [
    (["run", "--delays", "fast"], "error: --delays: 'fast' is not one of model, none"),
    (["run", "--delays", "none", "--time-scale", "2"], "error: --time-scale: is for --delays model; with --delays none nothing is paced"),
    (["bench", "--delays", "fast"], "error: --delays: 'fast' is not one of model, none"),
    (["bench", "--delays", "model,none"], "error: --delays: 'model,none' is not one of model, none"),
    (["bench", "--delays", "none", "--time-scale", "2"], "error: --time-scale: is for --delays model"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_delays_are_one_line_exit_2(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_delays_in_an_experiment_file(capsys, tmp_path: Path) -> None:
    f = tmp_path / "e.toml"
    f.write_text('delays = ["model", "none"]\n')  # a scalar, not a sweep axis
    assert main(["bench", "--experiment", str(f)]) == 2
    assert f"--delays (from {f}): 'model,none' is not one of model, none" in capsys.readouterr().err


def test_bench_summary_with_delays_none_flags_no_gap() -> None:
    far = reps([1.30, 1.31, 1.29, 1.30, 1.32], model=1.06)  # far from the model, tight interval
    model = summarise_point(POINT, far, n_nodes=2, cpus_used=2, oversubscribed=False)
    assert model["policies"]["replicate"]["flag"]
    none = summarise_point(POINT, far, n_nodes=2, cpus_used=2, oversubscribed=False, delays="none")
    assert none["policies"]["replicate"]["flag"] is None  # the host against the model is the finding
    assert none["policies"]["replicate"]["gap_pct"] == model["policies"]["replicate"]["gap_pct"]
    assert none["fidelity"]["note"].startswith("delays none: nothing paced")
    none.update(time_scale=None, delays="none")
    assert "delays none (nothing injected: this host's own latencies)" in format_point(none).splitlines()[0]


# ---------------------------------------------------------------------------------------------
# On this machine (slow): real node processes, real numa_maps


def _host_nodes() -> list[int]:
    from numaemu.host.cpus import parse_cpu_list

    try:
        return list(parse_cpu_list(Path("/sys/devices/system/node/online").read_text()))
    except OSError:
        return []


@pytest.mark.slow
def test_run_topology_host_reports_where_pages_landed(no_leaks, tmp_path: Path) -> None:
    out = tmp_path / "host.json"
    proc = numaemu("run", "--topology", "host", "--duration", "0.3", "--image-scale", "0.05", "--json", str(out))
    if not _host_nodes():  # a kernel without NUMA sysfs: refused in one line, not skipped
        assert proc.returncode == 2 and proc.stderr.startswith("error: --topology: cannot read /sys/devices/system/node/online"), proc.stderr
        assert proc.stderr.count("\n") == 1 and not out.exists()
        return
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert [n["host_node"] for n in doc["topology"]["nodes"]] == _host_nodes()
    assert doc["settings"]["delays"] == "model"
    assert "memory placement (numa_maps" in proc.stdout  # a host topology always shows it
    for rec in doc["results"]:
        rep = rec["numa_maps"]
        if not os.path.exists("/proc/self/numa_maps"):  # a kernel without CONFIG_NUMA
            assert rep["available"] is False and rep["reason"]
            continue
        assert rep["available"], rep["reason"]
        for node, entry in zip(rec["per_node"], rep["nodes"], strict=True):
            assert entry["pid"] == node["pid"]
            # Every page the worker first-touched, and none of another partition: its own
            # (rounded up to the 2 MiB partition alignment, should tmpfs use huge pages).
            touched = sum(entry["pages"].values()) * entry["page_kb"] * 1024
            filled = node["image_bytes"] + USER_DATA_BYTES
            assert filled <= touched <= -(-filled // (2 << 20)) * (2 << 20)
            if len(_host_nodes()) == 1:  # this VM: one NUMA node, everything on host node 0
                assert entry["pages"].keys() == {"0"} and entry["expected_host_nodes"] == [0]
    if len(_host_nodes()) == 1:
        assert "every node's pages on host node 0" in proc.stdout
        # No placement warning (the recording's own, about names mapped, may be there).
        assert [w for w in proc.stderr.splitlines() if w.startswith("warning:") and "mapped onto" not in w] == []


@pytest.mark.slow
def test_delays_none_runs_unpaced_and_says_so(no_leaks, tmp_path: Path) -> None:
    out = tmp_path / "none.json"
    proc = numaemu("run", "--delays", "none", "--duration", "0.3", "--image-scale", "0.05", "--policy", "single,replicate", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "delays: none — nothing injected; measured times are this host's own memory latencies" in proc.stdout
    assert "time scale" not in proc.stdout
    # An emulated topology on a one-node host: the placement says nothing new, so it is not printed.
    if len(_host_nodes()) <= 1:
        assert "memory placement" not in proc.stdout
    doc = json.loads(out.read_text())
    s = doc["settings"]
    assert s["delays"] == "none" and s["time_scale"] is None and s["calibration"] == {}
    assert s["delays_note"].startswith("delays: none — nothing injected")
    by = {r["policy"]: r for r in doc["results"]}
    for r in by.values():
        assert r["requests"] > 0 and r["pacing_lost_pct"] == 0.0
        assert r["emulated_us_per_request"] > 0  # the model's figures are still there
        assert r["numa_maps"] is not None
    # A number, about 1 or more: with hot caches the profile's LLC holds the text (issue 15), so
    # the model predicts ~1.0 (once 0.999997, which a strict > 1.0 failed on).
    assert by["replicate"]["predicted_speedup_vs_single"] > 0.99
