"""Nothing hangs, nothing leaks, no patch is lost: node deaths at every phase (the NUMAEMU_FAULT
test hook: the worker really SIGKILLs itself), ``--recover``, ``stress --kill-workers``, a dead
coordinator, and Ctrl-C / SIGTERM. End to end, through the CLI; marked slow (CI runs them).

Each run is short (a 5% image, a second or less) and every test checks the exit code, the one
error line naming node, pid and phase, what the JSON kept, the time taken, and (`no_leaks`) that
no segment and no process is left."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from numaemu.host.segments import SHM_DIR, list_segments, prune_stale

from .conftest import ROOT

pytestmark = pytest.mark.slow

SMALL = ("--image-scale", "0.05")
RUN = ("run", *SMALL, "--policy", "single", "--duration", "0.5", "--time-scale", "1")
STRESS = ("stress", *SMALL, "--duration", "1", "--source", "mixed")
LIMIT_S = 10.0  # a failing run ends within this, start-up included


def cli(*args: str, fault: str | None = None, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NUMAEMU_FAULT", None)
    if fault:
        env["NUMAEMU_FAULT"] = fault
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "numaemu", *args], capture_output=True, text=True, timeout=timeout, env=env)
    return proc, time.monotonic() - t0


def popen(*args: str, fault: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NUMAEMU_FAULT", None)
    if fault:
        env["NUMAEMU_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "numaemu", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def error_line(proc: subprocess.CompletedProcess, node: int, phase: str, where: str = "") -> int:
    """The run ends with exactly one error line naming the node, its pid and the phase; return the pid."""
    lines = proc.stderr.strip().splitlines()
    assert lines, proc.stdout
    assert sum(line.startswith("error: ") for line in lines) == 1, proc.stderr
    inside = f" \\({re.escape(where)}\\)" if where else ""
    m = re.fullmatch(rf"error: node {node} \(pid (\d+)\) failed in phase '{phase}'{inside}: process killed by SIGKILL", lines[-1])
    assert m, lines[-1]
    return int(m.group(1))


def gone(pids) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


# -- a node dies, no --recover: exit 3, one line, partial results, nothing left -----------------


@pytest.mark.parametrize("point", ["spawn", "attach", "fill", "ready", "run", "report"])
def test_run_node_killed_at(no_leaks, tmp_path, point):
    out = tmp_path / "r.json"
    proc, took = cli(*RUN, "--json", str(out), fault=f"1:{point}")
    assert proc.returncode == 3, proc.stderr
    pid = error_line(proc, 1, point)
    assert took < LIMIT_S and gone([pid])
    doc = json.loads(out.read_text())
    assert doc["results"] == [] and doc["interrupted"] is False
    failure = doc["failure"]
    assert (failure["node"], failure["pid"], failure["phase"]) == (1, pid, point)
    if point != "spawn":  # the hook records the moment of death once the control block is attached
        assert failure["detected_after_s"] is not None and failure["detected_after_s"] < 1.0


def test_run_keeps_the_policies_that_completed(no_leaks, tmp_path):
    out = tmp_path / "r.json"
    # Node 0 dies at its 10th batch of the second policy (the second set of node processes).
    proc, took = cli("run", *SMALL, "--duration", "0.5", "--time-scale", "1", "--policy", "single,replicate", "--verify",
                     "--json", str(out), fault="0:run:10:2")
    assert proc.returncode == 3, proc.stderr
    error_line(proc, 0, "run")
    assert "1 of 2 policies completed" in proc.stdout and f"wrote {out}" in proc.stdout
    doc = json.loads(out.read_text())
    assert [r["policy"] for r in doc["results"]] == ["single"] and doc["results"][0]["verified"]
    assert doc["failure"]["phase"] == "run" and took < LIMIT_S


def test_bench_keeps_the_points_that_completed(no_leaks, tmp_path):
    out = tmp_path / "b.json"
    # One run per point: the second set of node processes is the second point's.
    proc, took = cli("bench", *SMALL, "--topology", "2s-xeon,4", "--duration", "0.3", "--repeat", "1", "--warmup", "0",
                     "--policy", "single", "--time-scale", "1", "--no-progress", "--json", str(out), fault="1:run:5:2")
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: node 1 \(pid \d+\) failed in phase 'run': process killed by SIGKILL \(at 4 .+, repetition 1\)", last), last
    doc = json.loads(out.read_text())
    assert [p["point"]["topology"] for p in doc["points"]] == ["2s-xeon"] and doc["failure"]["node"] == 1
    assert "stopped early: 1 of 2 points completed" in proc.stdout and took < 2 * LIMIT_S


STRESS_POINTS = [
    ("spawn", "spawn", "", ()),
    ("attach", "attach", "", ()),
    ("fill", "fill", "", ()),
    ("ready", "ready", "", ()),
    ("run", "run", "", ()),
    ("stop_machine", "run", "inside a stop_machine rendezvous", ("--protocol", "stop_machine")),
    ("int3_sync", "run", "inside a text_poke_bp sync", ()),
    ("report", "report", "", ()),
]


@pytest.mark.parametrize(("point", "phase", "where", "extra"), STRESS_POINTS, ids=[p[0] for p in STRESS_POINTS])
def test_stress_node_killed_at(no_leaks, tmp_path, point, phase, where, extra):
    out = tmp_path / "s.json"
    proc, took = cli(*STRESS, *extra, "--json", str(out), fault=f"1:{point}")
    assert proc.returncode == 3, proc.stderr
    pid = error_line(proc, 1, phase, where)
    assert took < LIMIT_S and gone([pid])
    doc = json.loads(out.read_text())
    failure = doc["failure"]
    assert (failure["node"], failure["pid"], failure["phase"], failure["where"]) == (1, pid, phase, where or None)
    assert doc["ok"] is False and "STOPPED (a node failed)" in proc.stdout
    if phase in ("run", "report"):
        # The survivor's report and the comparisons of every copy with the master are kept.
        assert [r["node"] for r in doc["per_node"]] == [0] and doc["executions_checked"] > 0
        assert isinstance(doc["replicas_identical"], bool) and failure["detected_after_s"] < 1.0
    elif phase != "ready":  # (a node killed on entering 'ready' may be noticed just after the start)
        assert doc["per_node"] == [] and doc["replicas_identical"] is None


# -- --recover ------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "phase"), [("1:run:20", "run"), ("0:fill", "fill"), ("1:report", "report")])
def test_run_recover_replaces_the_node_and_verifies(no_leaks, tmp_path, fault, phase):
    out = tmp_path / "r.json"
    proc, _ = cli("run", *SMALL, "--policy", "single", "--duration", "1", "--time-scale", "1", "--recover", "--verify",
                  "--migrate-rate", "0.05", "--json", str(out), fault=fault)
    assert proc.returncode == 0, proc.stderr
    assert "verify: every task read the master's bytes" in proc.stdout and "recovered (single): node" in proc.stdout
    rec = json.loads(out.read_text())["results"][0]
    assert rec["verified"] and len(rec["recoveries"]) == 1
    r = rec["recoveries"][0]
    assert r["node"] == int(fault[0]) and r["phase"] == phase and r["old_pid"] != r["new_pid"] and gone([r["old_pid"]])
    assert {n["pid"] for n in rec["per_node"]} >= {r["new_pid"]}


@pytest.mark.parametrize(("fault", "extra", "where"), [
    ("1:int3_sync", (), "inside a text_poke_bp sync"),
    # Node 0's 2nd patch call: on the timeline a static-key call takes 0.1-0.3 s of wall time,
    # and in 1 s node 0 made 3 calls in 2 runs of 15 (its 4th, once asked for, never came).
    ("0:int3_sync:2", ("--source", "static_keys", "--duration", "3"), "inside a text_poke_bp sync"),
    # static_keys: the round is what is tested. A replacement's round once hung 30 s here, one
    # run in ten: the repair released a round a living node was still applying
    # (test_recovery.test_a_round_a_living_node_is_applying_is_left_to_it).
    ("1:stop_machine:3", ("--protocol", "stop_machine", "--source", "static_keys"), "inside a stop_machine rendezvous"),
    # Node 0's 3rd turn of the run loop: on the timeline (issue 16) a patch operation takes
    # 0.2-1 s of wall time and the node patches nearly back to back (it missed a 200th turn in
    # 3 s, and a 20th under the full suite's load); 4 s leave room for a loaded host.
    ("0:run:3", ("--arch", "arm64", "--duration", "4"), None),
    ("1:report", (), None),
], ids=["int3_sync", "int3_sync-static_keys", "stop_machine", "run-arm64", "report"])
def test_stress_recover_finishes_the_dead_nodes_patch(no_leaks, tmp_path, fault, extra, where):
    out = tmp_path / "s.json"
    proc, _ = cli(*STRESS[:-2], "--source", "mixed", *extra, "--recover", "--json", str(out), fault=fault)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["ok"] and doc["violations"] == 0 and doc["replicas_identical"] is True and doc["failure"] is None
    (r,) = doc["recoveries"]
    assert r["where"] == where and r["repair"]["copies_equal_master"] and gone([r["old_pid"]])
    if where == "inside a text_poke_bp sync":  # the patcher died mid-patch: its patch was finished for it
        assert r["repair"]["sites_rolled_forward"] > 0 and "text_mutex" in r["repair"]["locks_released"]
    if where == "inside a stop_machine rendezvous":  # counted in, then died: the round was completed
        repair = r["repair"]
        assert {"stop_machine_round_completed", "stop_machine_round_left_to_node"} & set(repair) or repair.get("sites_rolled_forward")
    assert "OK: nothing violated (1 node(s) recovered" in proc.stdout


def test_kill_workers_with_recover_loses_no_patch(no_leaks, tmp_path):
    """The issue's done-when: random SIGKILLs at 1/s for 6 s, every one recovered, every copy equal
    to the master, nothing violated, nothing left."""
    out = tmp_path / "s.json"
    proc, _ = cli("stress", *SMALL, "--recover", "--kill-workers", "1", "--duration", "6", "--source", "mixed", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["ok"] and doc["violations"] == 0 and doc["replicas_identical"] is True
    assert len(doc["kills"]) >= 1 and len(doc["recoveries"]) == len(doc["kills"])
    assert all(r["repair"]["copies_equal_master"] and r["detected_after_s"] < 1.0 for r in doc["recoveries"])
    assert all("(--kill-workers)" in r["detail"] for r in doc["recoveries"])
    assert gone([r["old_pid"] for r in doc["recoveries"]])
    assert proc.stdout.count("recovered: node") == len(doc["recoveries"])


def test_kill_workers_without_recover_ends_the_run(no_leaks, tmp_path):
    out = tmp_path / "s.json"
    proc, took = cli("stress", *SMALL, "--kill-workers", "5", "--duration", "5", "--json", str(out))
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: node \d \(pid \d+\) failed in phase 'run'( \(.+\))?: process killed by SIGKILL \(--kill-workers\)", last), last
    doc = json.loads(out.read_text())
    assert len(doc["kills"]) == 1 and doc["failure"]["detected_after_s"] < 1.0 and took < LIMIT_S


# -- the coordinator dies: the nodes leave, the next start removes the segments ----------------


@pytest.mark.parametrize("command", [RUN[:-4] + ("--duration", "60", "--time-scale", "1"), ("stress", *SMALL, "--duration", "60")], ids=["run", "stress"])
def test_a_killed_coordinator_is_cleaned_up_after(no_leaks, tmp_path, command):
    proc = popen(*command, "--json", str(tmp_path / "x.json"))
    mine = f"numaemu-{proc.pid}-"
    deadline = time.monotonic() + 60
    while len([n for n in list_segments() if n.startswith(mine)]) < 3 or len(psutil.Process(proc.pid).children()) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    time.sleep(1.0)
    nodes = [p.pid for p in psutil.Process(proc.pid).children()]
    t0 = time.monotonic()
    proc.kill()
    proc.communicate()  # reaped: its pid is free, as after a shell reaps it
    while not gone(nodes) and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    left_after = time.monotonic() - t0
    assert gone(nodes) and left_after < 2.0, f"nodes still running {left_after:.2f} s after the coordinator died"
    stale = sorted(n for n in list_segments() if n.startswith(mine))
    assert stale, "the dead run's segments should still be there"
    again, _ = cli(*RUN, "--json", str(tmp_path / "y.json"))
    assert again.returncode == 0, again.stderr
    assert f"removed {len(stale)} shared-memory segment(s) left by dead numaemu runs: {', '.join(stale)}" in again.stdout
    assert not [n for n in list_segments() if n.startswith(mine)]


@pytest.mark.parametrize("command", [
    RUN,
    ("stress", *SMALL, "--duration", "0.3"),
    ("bench", *SMALL, "--duration", "0.3", "--repeat", "1", "--warmup", "0", "--policy", "single", "--time-scale", "1"),
], ids=["run", "stress", "bench"])
def test_every_runner_removes_dead_runs_segments_and_says_so(no_leaks, tmp_path, command):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = f"numaemu-{dead.pid}-0badc0de-ctl"
    (SHM_DIR / name).write_bytes(b"x" * 64)
    try:
        proc, _ = cli(*command, "--json", str(tmp_path / "o.json"))
        assert proc.returncode == 0, proc.stderr
        said = [line for line in proc.stdout.splitlines() if line.startswith("removed ")]
        assert said and re.fullmatch(r"removed \d+ shared-memory segment\(s\) left by dead numaemu runs: .+", said[0])
        assert name in said[0].split(": ", 1)[1].split(", ")
        assert not (SHM_DIR / name).exists()
    finally:
        (SHM_DIR / name).unlink(missing_ok=True)


# -- Ctrl-C and SIGTERM --------------------------------------------------------------------


def _started(proc: subprocess.Popen, nodes: int = 2) -> list[int]:
    mine = f"numaemu-{proc.pid}-"
    deadline = time.monotonic() + 60
    while not any(n.startswith(mine) for n in list_segments()) or len(psutil.Process(proc.pid).children()) < nodes:
        assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    time.sleep(1.0)  # let the nodes get going
    return [p.pid for p in psutil.Process(proc.pid).children()]


def _interrupted(proc: subprocess.Popen, sig: int, pids: list[int]) -> tuple[str, str, float]:
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted; every node stopped and every segment removed"
    assert not any(n.startswith(f"numaemu-{proc.pid}-") for n in list_segments())
    assert gone(pids)
    return out, err, took


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stress_interrupt_keeps_what_the_nodes_saw(no_leaks, tmp_path, sig):
    out_json = tmp_path / "s.json"
    proc = popen("stress", *SMALL, "--duration", "60", "--source", "mixed", "--json", str(out_json))
    pids = _started(proc)
    out, _, took = _interrupted(proc, sig, pids)
    assert took < 1.0, f"stopped in {took:.2f} s"
    doc = json.loads(out_json.read_text())
    assert doc["interrupted"] is True and doc["ok"] is False and doc["failure"] is None
    assert len(doc["per_node"]) == 2 and all(r["aborted"] for r in doc["per_node"]) and doc["executions_checked"] > 0
    assert isinstance(doc["replicas_identical"], bool) and "STOPPED (interrupted)" in out


def test_bench_interrupt_keeps_the_points_completed(no_leaks, tmp_path):
    out_json = tmp_path / "b.json"
    with popen("bench", *SMALL, "--topology", "2s-xeon,4", "--duration", "0.3", "--repeat", "4", "--warmup", "0",
               "--policy", "single", "--time-scale", "1", "--no-progress", "--json", str(out_json)) as proc:
        _bench_interrupted(proc, out_json)


def _bench_interrupted(proc: subprocess.Popen, out_json: Path) -> None:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not any(" repetitions, " in line for line in lines):  # the first point is done
        assert proc.poll() is None and time.monotonic() < deadline, "no point completed"
        time.sleep(0.02)
    pids = [p.pid for p in psutil.Process(proc.pid).children()]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    took = time.monotonic() - t0
    reader.join(5)
    err = proc.stderr.read()
    assert proc.returncode == 130, err
    assert took < 1.0, f"stopped in {took:.2f} s"
    doc = json.loads(out_json.read_text())
    assert doc["interrupted"] is True and [p["point"]["topology"] for p in doc["points"]] == ["2s-xeon"]
    assert gone(pids) and not any(n.startswith(f"numaemu-{proc.pid}-") for n in list_segments())


def test_a_second_ctrl_c_forces_the_stop(no_leaks, tmp_path):
    # Node 1 hangs (SIGSTOP, the test hook's 'stop'), so the first Ctrl-C's orderly stop waits on
    # it; the second SIGKILLs every node at once.
    out_json = tmp_path / "r.json"
    proc = popen(*RUN[:-4], "--duration", "60", "--time-scale", "1", "--json", str(out_json), fault="1:run:1:1:stop")
    pids = _started(proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None, "the first Ctrl-C should still be waiting for the stopped node"
    _, _, took = _interrupted(proc, signal.SIGINT, pids)
    assert took < 1.0 and time.monotonic() - t0 < 2.0
    assert json.loads(out_json.read_text())["interrupted"] is True


def test_fault_hook_documented_and_refused_when_malformed(tmp_path):
    proc, _ = cli(*RUN, "--json", str(tmp_path / "r.json"), fault="1:nowhere")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: NUMAEMU_FAULT: '1:nowhere': point 'nowhere' is not one of spawn, attach, fill, ready, run, stop_machine, int3_sync, report"
    assert "NUMAEMU_FAULT" in Path(ROOT, "README.md").read_text()


# -- no process outlives the CLI, and a child learns of its parent's death from the kernel ------


PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


@pytest.fixture
def adopted():
    """This test process as the child subreaper of what it starts (prctl(2)): a process that
    outlives its parent is re-parented here, not to init. So once the CLI has returned and been
    reaped, whatever of its tree outlived it is a child of this process, still running or ended
    since (a zombie): race-free, however briefly it outlived the CLI. Yields the function that
    lists those children; kills and reaps them at the end."""
    libc = ctypes.CDLL(None, use_errno=True)
    # Linux 3.4+; numaemu's CLI itself relies on it (runtime/lifetime.py), so it is never skipped.
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, "no PR_SET_CHILD_SUBREAPER here (Linux 3.4+)"
    before = {p.pid for p in psutil.Process().children()}
    try:
        yield lambda: sorted(p.pid for p in psutil.Process().children() if p.pid not in before)
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        for p in psutil.Process().children():
            if p.pid not in before:
                with contextlib.suppress(psutil.Error, ChildProcessError):
                    p.kill()
                    os.waitpid(p.pid, 0)


def _tree(proc: subprocess.Popen) -> dict[int, str]:
    out = {}
    for p in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            out[p.pid] = " ".join(p.cmdline())
    return out


def _first_point_then_ctrl_c(proc: subprocess.Popen) -> dict[int, str]:
    """bench: wait for the first point's summary; then Ctrl-C, as `_bench_interrupted` does."""
    from .test_cluster import wait_for

    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    wait_for(lambda: any(" repetitions, " in line for line in lines), proc, "the first point's summary")
    tree = _tree(proc)  # the LocalCluster's worker, its task's process, its nodes, multiprocessing's helpers
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    err = proc.stderr.read()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted; every node stopped and every segment removed", err
    assert gone(tree)
    return tree


@pytest.mark.parametrize("command", [
    (*RUN[:-4], "--duration", "60", "--time-scale", "1"),
    ("stress", *SMALL, "--duration", "60", "--source", "mixed"),
    ("run", *SMALL, "--policy", "single", "--duration", "60", "--time-scale", "1", "--start-method", "forkserver"),
    ("bench", *SMALL, "--topology", "2s-xeon,4", "--policy", "replicate", "--requests", "2000", "--time-scale", "1", "--no-progress",
     "--repeat", "2", "--warmup", "0", "--cluster", "local"),
], ids=["run", "stress", "run-forkserver", "bench-cluster-local"])
def test_no_process_outlives_the_cli_after_ctrl_c(no_leaks, adopted, tmp_path, command):
    # Every process the CLI started (nodes, multiprocessing's resource tracker and fork server,
    # the LocalCluster's worker and its task's process) has ended, and been reaped, when it returns.
    if "--cluster" in command:
        pytest.importorskip("distributed")
    with popen(*command, "--json", str(tmp_path / "o.json")) as proc:
        if "--cluster" in command:
            tree = _first_point_then_ctrl_c(proc)
        else:
            tree = {pid: "" for pid in _started(proc)} | _tree(proc)
            _interrupted(proc, signal.SIGINT, list(tree))
    left = adopted()
    assert not left, f"outlived the CLI: {[(pid, tree.get(pid, '?')) for pid in left]}"
    assert json.loads((tmp_path / "o.json").read_text())["interrupted"] is True


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_killed_coordinator_s_nodes_leave_whatever_the_start_method(no_leaks, tmp_path, method):
    # fork: test_a_killed_coordinator_is_cleaned_up_after. Under spawn a node is told by a signal
    # (PR_SET_PDEATHSIG), under forkserver (whose server outlives the coordinator) by a pipe's end.
    proc = popen(*RUN[:-4], "--duration", "60", "--time-scale", "1", "--start-method", method, "--json", str(tmp_path / "x.json"))
    children = [psutil.Process(pid) for pid in _started(proc)]
    if method == "forkserver":  # the nodes are the fork server's children
        children = [c for p in children for c in p.children()]
    nodes = [p.pid for p in children if "resource_tracker" not in " ".join(p.cmdline())]
    assert len(nodes) == 2, nodes
    t0 = time.monotonic()
    proc.kill()
    proc.communicate()
    while not gone(nodes) and time.monotonic() - t0 < 5:
        time.sleep(0.005)
    assert gone(nodes) and time.monotonic() - t0 < 2.0, f"nodes still running {time.monotonic() - t0:.2f} s after the coordinator died"
    again, _ = cli(*RUN, "--json", str(tmp_path / "y.json"))  # removes the dead run's segments
    assert again.returncode == 0 and "left by dead numaemu runs" in again.stdout, again.stderr


def _ask(conn, timeout: float = 10.0):
    assert conn.poll(timeout), "the child did not answer"
    return conn.recv()


def _watching_child(conn, parent: int) -> None:
    """A node's view of the process that started it: how it watches it, whether it is gone, and
    how many death signals it got, each time asked."""
    from numaemu.runtime.lifetime import watch_parent

    watch = watch_parent(parent)
    while True:
        conn.send((watch.how, watch.gone(), watch.signals))
        if conn.recv() == "stop":
            return


def test_a_node_outlives_the_thread_that_started_it_not_its_coordinator():
    # PR_SET_PDEATHSIG fires when the parent *thread* ends: a node started by a thread that then
    # ends (its coordinator living on) must not take that for its coordinator's death.
    import multiprocessing as mp

    here, there = mp.Pipe()
    child = mp.get_context("spawn").Process(target=_watching_child, args=(there, os.getpid()), daemon=True)

    def start() -> None:  # and stay until the child is watching
        child.start()
        assert _ask(here, 60) == ("signal", False, 0)

    t = threading.Thread(target=start)
    t.start()
    t.join()
    try:
        deadline = time.monotonic() + 10
        while True:  # its starting thread is gone: the kernel signals it (re-parenting it to another thread)
            here.send("again")
            how, dead, signals = _ask(here)
            assert (how, dead) == ("signal", False)
            if signals or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert signals == 1, "the death of its starting thread should have been signalled"
        here.send("stop")
    finally:
        child.join(10)


BASELINE = "import sys; from numaemu.measure.baselines import {fn}\nif __name__ == '__main__': {fn}(10**9, 'fork')"


@pytest.mark.parametrize(("fn", "victim", "said"), [
    ("flag_round_trip_ns", 0, "flag round trip: its echo process (pid {pid}) was killed by SIGKILL before the baseline was done"),
    ("barrier_round_ns", 0, "multiprocessing.Barrier round: its timing process (pid {pid}) was killed by SIGKILL before the baseline was done"),
    ("barrier_round_ns", 1, "multiprocessing.Barrier round: its barrier peer process (pid {pid}) was killed by SIGKILL before the baseline was done"),
], ids=["flag", "barrier-timing", "barrier-peer"])
def test_a_baseline_whose_peer_dies_fails_at_once_naming_it(no_leaks, fn, victim, said):
    proc = subprocess.Popen([sys.executable, "-c", BASELINE.format(fn=fn)], stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 30
    while len(kids := [p.pid for p in sorted(psutil.Process(proc.pid).children(), key=lambda p: (p.create_time(), p.pid))]) <= victim:
        assert proc.poll() is None and time.monotonic() < deadline, "the baseline never started"
        time.sleep(0.02)
    time.sleep(0.5)
    t0 = time.monotonic()
    os.kill(kids[victim], signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and time.monotonic() - t0 < 2.0
    assert err.strip().splitlines()[-1] == "numaemu.measure.baselines.BaselineFailure: " + said.format(pid=kids[victim]), err
    assert gone(kids)


@pytest.mark.parametrize("fn", ["flag_round_trip_ns", "barrier_round_ns"])
def test_a_baseline_s_children_leave_when_it_dies(no_leaks, fn):
    proc = subprocess.Popen([sys.executable, "-c", BASELINE.format(fn=fn)], stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 30
    n = 1 if fn == "flag_round_trip_ns" else 2
    while len(kids := [p.pid for p in psutil.Process(proc.pid).children() if "resource_tracker" not in " ".join(p.cmdline())]) < n:
        assert proc.poll() is None and time.monotonic() < deadline, "the baseline never started"
        time.sleep(0.02)
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.kill()
    proc.wait()
    while not gone(kids) and time.monotonic() - t0 < 5:
        time.sleep(0.005)
    assert gone(kids) and time.monotonic() - t0 < 1.0, f"a baseline's child still running {time.monotonic() - t0:.2f} s after it died"
    left = [n for n in prune_stale() if n.startswith(f"numaemu-{proc.pid}-")]  # what the next command removes
    assert [n.rsplit("-", 1)[1] for n in left] == (["flag"] if fn == "flag_round_trip_ns" else [])
