"""End to end: real node processes, real shared memory, real pinning (marked slow; CI runs them)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import numpy as np
import psutil
import pytest

from numaemu.errors import NodeFailure
from numaemu.host.cpus import host_cpus
from numaemu.host.files import load_topology
from numaemu.model.binding import bind_to_host
from numaemu.model.image import synthetic_image
from numaemu.model.placement import place
from numaemu.model.workloads import build_workload
from numaemu.runtime.inprocess import expected_checksum
from numaemu.runtime.policy_run import RunSpec, run_policy

from .conftest import numaemu

pytestmark = pytest.mark.slow

IMAGE = synthetic_image(0.05)


def spec(topology="2s-xeon", workload="db", requests=None, duration=None, migrate=0.0, method="fork", cold=False):
    topo = load_topology(topology)
    return RunSpec(
        topology=topo,
        host=bind_to_host(topo, host_cpus()),
        image=IMAGE,
        workload=build_workload(workload, IMAGE, 0),
        cold=cold,
        user_local=True,
        duration_s=duration,
        requests=requests,
        migrate_rate=migrate,
        seed=0,
        start_method=method,
        time_scale=1.0,
    )


def checksums_ok(s: RunSpec, tasks: np.ndarray) -> bool:
    return all(
        expected_checksum(IMAGE.data, s.workload, s.seed, t, int(tasks["done"][t])) == int(tasks["checksum"][t])
        for t in range(len(tasks))
    )


def text_fetches(run) -> np.ndarray:
    return np.array([r.text_fetches_by_home for r in run["reports"]])


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_start_methods_run_every_request_and_read_the_master_bytes(no_leaks, method):
    s = spec(requests=48, method=method)
    run = run_policy(s, "replicate")
    assert sum(r.requests for r in run["reports"]) == 48
    assert int(run["tasks"]["done"].sum()) == 48
    fetches = text_fetches(run)
    assert fetches[0, 1] == 0 and fetches[1, 0] == 0  # replicate: every text fetch is local
    assert fetches[0, 0] > 0 and fetches[1, 1] > 0
    assert checksums_ok(s, run["tasks"])


def test_single_sends_node1_remote_and_interleave_spreads(no_leaks):
    s = spec(requests=64)
    single = text_fetches(run_policy(s, "single"))
    assert single[:, 1].sum() == 0  # every copy lives on node 0
    share = single[1, 0] / single.sum()
    assert 0.35 < share < 0.65  # about half of the fetches come from node 1, all remote
    inter = text_fetches(run_policy(s, "interleave"))
    assert 0.35 < inter[0, 1] / inter[0].sum() < 0.65


def test_migrating_tasks_read_the_same_bytes_on_their_new_node(no_leaks):
    s = spec(topology="4", requests=400, migrate=0.3)
    run = run_policy(s, "replicate")
    assert int(run["tasks"]["migrations"].sum()) > 10
    assert checksums_ok(s, run["tasks"])


def test_the_checksum_check_catches_a_corrupted_copy(no_leaks):
    s = spec(requests=64)
    placement = place(IMAGE, 2, "replicate")

    def corrupt(mem, layout, placement_, pids):
        # Flip one byte in every page of node 1's copy: whatever node 1 reads is wrong.
        view = mem.array(np.uint8)
        pages = layout.part_offset[1] + np.arange(len(placement.hosted[1])) * 4096 + 100
        view[pages] ^= 0xFF
        del view

    run = run_policy(s, "replicate", on_ready=corrupt)
    assert not checksums_ok(s, run["tasks"])


def test_a_killed_node_is_named_with_its_phase_and_nothing_leaks(no_leaks):
    s = spec(duration=30.0)
    pids = []

    def kill_node1(mem, layout, placement, node_pids):
        pids.extend(node_pids)
        os.kill(node_pids[1], signal.SIGKILL)

    with pytest.raises(NodeFailure) as info:
        run_policy(s, "single", on_ready=kill_node1)
    assert info.value.node == 1
    assert info.value.pid == pids[1]
    assert info.value.phase in ("ready", "run")
    assert str(info.value).startswith(f"node 1 (pid {pids[1]}) failed in phase '")
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def test_oversubscribed_run_keeps_emulated_time_exact(no_leaks):
    # 4 nodes on at most 2 CPUs: wall-clock pacing suffers, emulated counters must not.
    s = spec(topology="kunpeng920", requests=80)
    run = run_policy(s, "replicate")
    assert s.host.oversubscribed or len(host_cpus()) >= 4
    fetches = text_fetches(run)
    assert np.count_nonzero(fetches - np.diag(np.diag(fetches))) == 0
    assert checksums_ok(s, run["tasks"])


def test_cli_run_end_to_end(no_leaks, tmp_path):
    out = tmp_path / "r.json"
    proc = numaemu("run", "--image-scale", "0.05", "--duration", "0.4", "--json", str(out), "--verify", "--migrate-rate", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert "verify: every task read the master's bytes" in proc.stdout
    assert f"wrote {out}" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["schema"] == 2 and doc["command"] == "run"
    assert set(doc["topology"]) >= {"nodes", "distance", "latency_ns"}
    assert set(doc["host"]) >= {"cpu_model", "cpu_count", "python", "numpy"}
    by = {r["policy"]: r for r in doc["results"]}
    assert list(by) == ["single", "interleave", "replicate"]
    for r in by.values():
        assert set(r) >= {"policy", "wall_s", "requests", "throughput_rps", "fetches_local", "fetches_remote",
                          "extra_memory_bytes", "speedup_vs_single", "per_node"}
        assert r["requests"] > 0 and r["verified"]
        for n in r["per_node"]:
            assert set(n) >= {"node", "cpus", "wall_s", "requests", "fetches_local", "fetches_remote"}
    assert by["replicate"]["fetches_remote"] == 0
    assert 0.3 < by["single"]["remote_fetch_share"] < 0.7
    assert by["single"]["extra_memory_bytes"] == 0
    assert by["replicate"]["extra_memory_bytes"] == by["replicate"]["memory_bytes"] // 2
    assert by["single"]["speedup_vs_single"] == 1.0


def test_cli_trace_workload_and_json_to_stdout(no_leaks, tmp_path):
    trace = tmp_path / "trace.txt"
    base = 0xFFFFFFFF81000000
    trace.write_text("".join(f"{base + 64 * i:#x}\n" for i in range(200)) + "\n" + f"{base + 4096:#x}\n")
    proc = numaemu("run", "--image-scale", "0.05", "--workload", "trace", "--trace", str(trace), "--requests", "50",
                   "--policy", "replicate", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["results"][0]["requests"] == 50
    assert doc["workload"]["templates"] == 2


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_cleanly(no_leaks, tmp_path, sig):
    import subprocess
    import sys
    import time

    from numaemu.host.segments import list_segments

    from .conftest import ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "numaemu", "run", "--image-scale", "0.05", "--duration", "60",
                             "--policy", "single,replicate", "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    mine = f"numaemu-{proc.pid}-"
    deadline = time.monotonic() + 60
    while not any(n.startswith(mine) for n in list_segments()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    time.sleep(0.5)  # let the nodes get going
    nodes = psutil.Process(proc.pid).children(recursive=True)
    assert nodes, "no node processes"
    t0 = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "error: interrupted; every node stopped and every segment removed"
    assert took < 1.0, f"a clean stop took {took:.2f} s"  # measured: ~0.2 s
    assert not any(n.startswith(mine) for n in list_segments())
    gone, alive = psutil.wait_procs(nodes, timeout=5)
    assert not alive, f"node processes left running: {alive}"
    doc = json.loads(out.read_text())  # what was done is written: here no policy had completed
    assert doc["interrupted"] is True and doc["results"] == [] and doc["failure"] is None


def test_partial_replication_reads_the_nearest_copy_and_verifies(no_leaks):
    # kunpeng920 with copies on nodes 0 and 2: node 1 reads node 0's copy, node 3 node 2's.
    s = dataclasses.replace(spec(topology="kunpeng920", requests=80), replicas_every=2)
    run = run_policy(s, "replicate")
    fetches = text_fetches(run)
    served = {0: 0, 1: 0, 2: 2, 3: 2}
    for node, copy in served.items():
        assert fetches[node].sum() > 0
        assert fetches[node][copy] == fetches[node].sum(), (node, fetches[node])
    assert [len(h) for h in run["placement"].hosted][1::2] == [0, 0]
    assert checksums_ok(s, run["tasks"])


def test_memoryless_node_and_page_tables_end_to_end(no_leaks, tmp_path):
    topo = tmp_path / "m.toml"
    topo.write_text('distance = [[10, 21], [21, 10]]\n[[nodes]]\ncpus = "0"\nmemory_mb = 4096\n[[nodes]]\ncpus = "1"\nmemory_mb = 0\n')
    out = tmp_path / "r.json"
    proc = numaemu("run", "--topology", str(topo), "--image-scale", "0.05", "--requests", "120", "--policy", "single,replicate", "--workload", "synthetic-db",
                   "--cache", "cold", "--pt-style", "arm64", "--verify", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "page tables (arm64" in proc.stdout
    by = {r["policy"]: r for r in json.loads(out.read_text())["results"]}
    for r in by.values():
        n1 = r["per_node"][1]
        assert r["verified"]
        assert n1["image_bytes"] == 0 and n1["fetches_local"] == 0 and n1["fetches_remote"] > 0
        assert n1["user_local"] == 0 and n1["user_remote"] > 0  # its "local" data is node 0's
        assert r["page_tables"]["table_pages"][1] == 0 and r["page_tables"]["walks_per_request"] > 0
    # Memoryless node 1 maps node 0's copy: replicate makes no second copy and gains nothing.
    assert by["replicate"]["copy_nodes"] == [0] and by["replicate"]["extra_memory_bytes"] == 0
    assert by["replicate"]["predicted_speedup_vs_single"] == pytest.approx(1.0, abs=0.01)
