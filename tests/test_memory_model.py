"""The hardware model end to end: what `numaemu topology` shows of a profile, and what a run's
JSON gives of it (real node processes; the runs are marked slow)."""

from __future__ import annotations

import json

import pytest

from .conftest import numaemu
from .test_cli import run_cli


def test_topology_shows_the_hierarchy(capsys) -> None:
    code, out, _ = run_cli(capsys, "topology", "2s-xeon")
    assert code == 0
    for line in ("hardware: e5-2690", "  L1i     32 KiB, 8-way", "  L2      256 KiB, 8-way", "  LLC     20 MiB, 20-way", "  iTLB    4K 64 (4-way), 2M 8",
                 "  STLB    4K 512 (4-way), 2M none", "  memory  78.3 ns local, 51.2 GB/s"):
        assert line in out
    code, out, _ = run_cli(capsys, "topology", "2s-xeon", "--hardware", "altra", "--sources")
    assert "hardware: altra:" in out and "sources:" in out and "[AT-ALTRA]" in out


def test_topology_json_carries_the_profile(capsys) -> None:
    code, out, _ = run_cli(capsys, "topology", "epyc-nps4", "--json", "-")
    doc = json.loads(out)
    assert code == 0 and doc["hardware"]["name"] == "epyc-7713-nps4" and doc["hardware"]["llc"]["size_bytes"] == 32 << 20
    assert doc["hardware"]["sources"]["llc"].startswith("[ILX-MILAN]") and doc["topology"]["hardware"] == "epyc-7713-nps4"


@pytest.mark.slow
def test_run_json_gives_levels_tlbs_walks_and_queueing(tmp_path) -> None:
    out = tmp_path / "r.json"
    proc = numaemu("run", "--topology", "4", "--workload", "db", "--cache", "cold", "--policy", "single,replicate", "--duration", "0.3",
                   "--image-scale", "0.2", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    single, repl = json.loads(out.read_text())["results"]
    for r in (single, repl):
        hw = r["hardware"]
        assert hw["profile"] == "e5-2690"
        served = hw["served_per_request"]["text"]
        assert set(served) == {"l1", "l2", "llc", "memory"} and served["memory"] > 10  # cold: every line from memory
        assert hw["walks_per_request"] > 0 and hw["itlb_misses_per_request"] >= hw["walks_per_request"]
        assert len(hw["queueing"]["memory_wait_ns"]) == 4
        assert all("hierarchy" in n and n["queue_ns_per_request"] >= 0 for n in r["per_node"])
    # Four nodes read node 0 under single: it queues; under replicate each reads its own.
    assert single["hardware"]["queueing"]["memory_utilisation"][0] > 2 * repl["hardware"]["queueing"]["memory_utilisation"][0]
    assert single["hardware"]["queue_ns_per_request"] > repl["hardware"]["queue_ns_per_request"] > 0


@pytest.mark.slow
def test_simple_profile_is_the_old_model(tmp_path) -> None:
    out = tmp_path / "r.json"
    proc = numaemu("run", "--hardware", "simple", "--duration", "0.3", "--image-scale", "0.2", "--policy", "single,replicate", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    for r in json.loads(out.read_text())["results"]:
        assert r["hardware"] == {"profile": "simple"} and "hierarchy" not in r["per_node"][0]
