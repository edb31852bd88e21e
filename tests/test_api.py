"""The Python API: records validated once, `Emulation` runs for scripts, results read back, and
the example script; plus the interface rules the CLI shares with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import numaemu
from numaemu.api.config import RunConfig, StressConfig
from numaemu.api.records import RunResult, read_document
from numaemu.errors import UsageError
from numaemu.patching.sources import HOT_KEYS, hot_keys

from .conftest import numaemu as run_numaemu

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("kwargs", "expect"),
    [
        ({"policies": "single,,replicate"}, "--policy: 'single,,replicate' has an empty element"),
        ({"policies": ("single", "single")}, "--policy: 'single,single' names a policy twice"),
        ({"policies": ""}, "--policy: give at least one policy"),
        ({"duration_s": 0.001}, "--duration: must be at least 0.01 s, got '0.001'"),
        ({"duration_s": 1.0, "requests": 10}, "--duration: give --duration or --requests, not both"),
        ({"requests": True}, "--requests: must be a number, got True"),
        ({"migrate_rate": float("nan")}, "--migrate-rate: must be a probability per request in 0..1, got 'nan'"),
        ({"cache": "warm"}, "--cache: 'warm' is not one of hot, cold"),
        ({"delays": "none", "time_scale": 2.0}, "--time-scale: is for --delays model"),
        ({"kaslr": True}, "--kaslr: needs --pt-style x86"),
        ({"workload": "nosuch"}, "--workload: unknown workload 'nosuch'"),
        ({"seed": -1}, "--seed: must be in 0..4294967295, got '-1'"),
    ],
)
def test_a_run_config_is_refused_with_the_parameter_and_the_rule(kwargs, expect):
    with pytest.raises(UsageError) as info:
        RunConfig(**kwargs)
    assert str(info.value).startswith(expect), str(info.value)


def test_a_stress_config_checks_its_protocol_against_the_image():
    cfg = StressConfig(protocol="nosync")
    with pytest.raises(UsageError, match="--protocol: nosync .* is only for the arm64 image"):
        cfg.protocol_for("x86_64")
    assert StressConfig().protocol_for("arm64") == "nosync" and StressConfig().protocol_for("x86_64") == "text_poke_bp"
    with pytest.raises(UsageError, match="--inject-bug: key-race is a static-key bug"):
        StressConfig(source="ftrace", bug="key-race")


def test_the_cli_and_a_script_get_one_config():
    """`--policy single,,replicate` is refused by the record the CLI builds, in one line."""
    proc = run_numaemu("run", "--policy", "single,,replicate")
    assert proc.returncode == 2 and proc.stderr == "error: --policy: 'single,,replicate' has an empty element; separate values with one comma\n"
    proc = run_numaemu("bench", "--cache", "hot,")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --cache: 'hot,' has an empty element")


def test_image_json_takes_a_path(tmp_path):
    out = tmp_path / "image.json"
    proc = run_numaemu("image", "--image-scale", "0.05", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"wrote {out}\n"
    doc = json.loads(out.read_text())
    assert doc["command"] == "image" and doc["image"]["sections"][0]["name"] == ".text"
    proc = run_numaemu("topology", "kunpeng920", "--json", "-")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)["topology"]["distance"]) == 4


def test_results_of_another_command_or_schema_are_refused(tmp_path):
    run_doc = tmp_path / "run.json"
    run_doc.write_text(json.dumps({"schema": 1, "command": "stress"}))
    with pytest.raises(UsageError, match=r"is not a numaemu run result \(it is from numaemu stress\)"):
        read_document(run_doc, "FILE", "run")
    with pytest.raises(UsageError, match="has schema 7; this numaemu reads 2"):
        RunResult.from_json({"schema": 7, "command": "run", "results": []})
    with pytest.raises(UsageError, match="'.*' is a directory, not a regular file|Is a directory"):
        read_document(tmp_path, "FILE", "run")


@pytest.mark.slow
def test_an_emulation_runs_twice_without_rebuilding_and_reads_back(no_leaks):
    with numaemu.Emulation(topology="2s-xeon", image_scale=0.05) as emu:
        # Cold: with hot caches the profile's LLC holds getpid's path, and single would fetch nothing remote.
        first = emu.run("getpid", requests=2000, policies=("single", "replicate"), cache="cold")
        image, calibrated = emu.image, dict(emu._calibrations)
        second = emu.run("getpid", requests=2000, policies="single,replicate", verify=True, cache="cold")
        assert emu.image is image and emu._calibrations == calibrated  # kept, not rebuilt
    assert [p.policy for p in first.policies] == ["single", "replicate"] and first.complete
    assert first["replicate"].remote_fetch_share == 0.0 and first["single"].remote_fetch_share > 0.2
    assert all(p.verified for p in second.policies)
    again = RunResult.from_json(json.loads(json.dumps(second.to_json())))
    assert again.policies == second.policies and again.document == second.document


@pytest.mark.slow
def test_the_example_script_runs(no_leaks):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "compare_topologies.py"), "--duration", "0.3", "--image-scale", "0.05"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("2s-xeon ", "kunpeng920 "))]
    assert [(r[0], r[2]) for r in rows] == [(t, p) for t in ("2s-xeon", "kunpeng920") for p in ("single", "interleave", "replicate")]
    assert "0 violations, copies identical to the master: yes" in proc.stdout


@pytest.mark.slow
def test_patch_operations_run_on_node_0_under_load_and_are_checked(no_leaks):
    with numaemu.Emulation(image_scale=0.1) as emu:
        key = emu.flip_static_key(0, duration=0.5)
        traced = emu.enable_ftrace(50, duration=0.5, protocol="stop_machine")
        module = emu.load_module(duration=0.5)
        keys = len(hot_keys(emu.image.jump_keys, emu.image.n_keys))
        if keys < HOT_KEYS:  # a key past the image's hot keys is refused before anything starts
            with pytest.raises(UsageError, match=f"ops: static_key_enable of key {keys}: image .* has {keys} hot static keys"):
                emu.patch(numaemu.PatchOp("static_key_enable", key=keys))
    for r in (key, traced, module):
        assert r.ok and r.violations == 0 and r.replicas_identical and r.document["source_ops"] == 2
    assert key.patches_applied == 2 and key.document["sites_patched"] % 2 == 0 and key.document["sites_patched"] > 0
    assert traced.document["sites_patched"] == 100 and traced.document["stop_rounds"] >= 2
    assert module.document["module_loads"] == 1 and module.document["module_unloads"] == 1
    assert [op["kind"] for op in key.document["script"]] == ["static_key_enable", "static_key_disable"]


def test_a_patch_op_is_checked_on_construction():
    with pytest.raises(ValueError, match="'poke' is not one of static_key_enable"):
        numaemu.PatchOp("poke")
    with pytest.raises(ValueError, match="functions >= 0"):
        numaemu.PatchOp("ftrace_enable", functions=-1)
    with pytest.raises(ValueError, match=f"key must be in 0..{HOT_KEYS - 1}"):
        numaemu.PatchOp("static_key_enable", key=HOT_KEYS)


@pytest.mark.slow
def test_bench_and_calibrate_for_scripts_return_records_that_read_back(no_leaks):
    sweep = numaemu.bench(topology="2s-xeon", cache=["hot", "cold"], repeat=2, warmup=0, requests=2000, image_scale=0.05)
    assert isinstance(sweep, numaemu.BenchResult) and len(sweep.points) == 2 and sweep.failed_runs == ()
    assert sweep.speedup("single") is None and sweep.speedup("replicate", point=1) > 0
    assert numaemu.BenchResult.from_json(json.loads(json.dumps(sweep.to_json()))).points == sweep.points
    with pytest.raises(UsageError, match="--cache: 'hot,' has an empty element"):
        numaemu.bench(cache="hot,")
    with pytest.raises(UsageError, match="--colour: is not an option of bench"):
        numaemu.bench(colour="blue")
    host = numaemu.calibrate(quick=True)
    assert all(isinstance(g["met"], bool) for g in host.goals) and len(host.goals) == 7  # every goal judged
    assert set(host.missed) <= {g["name"] for g in host.goals}
    back = numaemu.CalibrationResult.from_json(json.loads(json.dumps(host.to_json())))
    assert back.figures == host.figures and back.goals == host.goals


def test_a_schema_1_result_still_loads_with_its_keys_renamed():
    """results/bench-db.json was written by schema 1 (per_node busy_s, host_placement)."""
    old = json.loads((ROOT / "results" / "bench-db.json").read_text())
    assert old["bench_schema"] == 1 and "busy_s" in json.dumps(old)
    sweep = numaemu.BenchResult.from_json(old)
    text = json.dumps(sweep.to_json())
    assert sweep.document["bench_schema"] == 2 and sweep.document["upgraded_from_schema"] == 1
    assert "busy_s" not in text and "host_placement" not in text and '"batch_wall_s"' in text
    assert sweep.speedup("replicate") == old["points"][0]["policies"]["replicate"]["speedup"]["median"]
    proc = run_numaemu("compare", str(ROOT / "results" / "bench-db.json"), str(ROOT / "results" / "bench-db.json"))
    assert proc.returncode == 0, proc.stderr
