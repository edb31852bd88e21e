"""numaemu bench --cluster: the plan, the ledger and the per-host summaries (pure, fast), the
worker's task and its process (with the process or Dask replaced where that is the point), and
(slow) real sweeps on Dask: ``--cluster local`` against the same sweep run locally, a run that
fails on its own merits (reported once, not retried), and a lost worker's run retried elsewhere."""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace

import psutil
import pytest

from numaemu.errors import NodeFailure, UsageError
from numaemu.measure import cluster, cluster_sweep, cluster_task
from numaemu.measure.compare import compare_docs
from numaemu.measure.experiment import Experiment, Point, RunTask, plan_tasks, repetition_order
from numaemu.measure.report import csv_rows, format_point
from numaemu.measure.runner import RunRequest, execute
from numaemu.measure.summary import PointSetup, summarise_point, summarise_runs
from numaemu.measure.sweep import RunFailure, RunOutcome, SweepLedger

from .conftest import ROOT, numaemu
from .test_bench import record

P1 = Point("2s-xeon", "db", "hot", "local", "text+rodata")
P2 = Point("2s-xeon", "db", "cold", "local", "text+rodata")
EXP = Experiment(points=(P1, P2), policies=("single", "replicate"), repeat=3, warmup=1, duration_s=None, requests=1000,
                 migrate_rate=0.0, seed=0, image_scale=0.05, start_method="fork", time_scale=1.0)


def host(name: str) -> dict:
    return {"id": f"{name} (cpu; CPUs 0-1)", "hostname": name, "cpu_model": "cpu", "usable_cpus": "0-1"}


def setup(name: str, cpus: int = 2, scale: float = 1.0) -> PointSetup:
    return PointSetup(host(name), n_nodes=2, cpus_used=cpus, oversubscribed=cpus < 2, time_scale=scale, calibration={"sharing": 2 / cpus},
                      topology_detail={"name": "2s-xeon"}, host_binding={"cpus": [[0], [1 % cpus]]})


def rep(name: str, base: float, speedup: float, model: float = 1.063, node_us: tuple[float, float] = (1300.0, 1460.0)) -> list[dict]:
    """One repetition's records on host `name`: `base` req/s for single, `speedup` times it for replicate."""
    recs = [record("single", base, 1.0, 1.0, list(node_us)), record("replicate", base * speedup, speedup, model, [t / speedup for t in node_us])]
    for r in recs:
        r["host"] = host(name)
    return recs


# -- the plan (pure) ------------------------------------------------------------------------


def test_repetition_order_rotates_by_one_each_repetition():
    assert [repetition_order(("single", "interleave", "replicate"), i) for i in range(4)] == [
        ("single", "interleave", "replicate"),
        ("interleave", "replicate", "single"),
        ("replicate", "single", "interleave"),
        ("single", "interleave", "replicate"),
    ]


def test_plan_is_one_task_per_measured_repetition_point_by_point():
    tasks = plan_tasks(EXP)
    assert [(t.index, t.point_index, t.point, t.repetition, t.order) for t in tasks] == [
        (0, 0, P1, 0, ("single", "replicate")),
        (1, 0, P1, 1, ("replicate", "single")),
        (2, 0, P1, 2, ("single", "replicate")),
        (3, 1, P2, 0, ("single", "replicate")),
        (4, 1, P2, 1, ("replicate", "single")),
        (5, 1, P2, 2, ("single", "replicate")),
    ]
    assert tasks[4].label() == "2s-xeon db, cache cold, user data local, replicate text+rodata, repetition 2"
    assert tasks[4].to_json() == {"point": P2.to_json(), "repetition": 2, "order": ["replicate", "single"]}


# -- the ledger (pure) ----------------------------------------------------------------------


def outcome(task: RunTask, name: str = "a", speedup: float = 1.06) -> RunOutcome:
    return RunOutcome(task, tuple(rep(name, 1000.0, speedup)), setup(name))


def test_ledger_summarises_a_point_once_its_last_task_is_in_whatever_the_order():
    t = plan_tasks(EXP)
    ledger = SweepLedger(EXP)
    assert ledger.add(outcome(t[2], speedup=1.07)) is None
    assert ledger.add(outcome(t[4])) is None
    assert ledger.add(outcome(t[0], speedup=1.05)) is None
    s = ledger.add(outcome(t[1], speedup=1.06))
    assert s is not None and s["point"] == P1.to_json() and s["repetitions"] == 3
    # In repetition order, as a local sweep has them, whatever order they came in.
    assert [r[1]["speedup_vs_single"] for r in s["runs"]] == [1.05, 1.06, 1.07]
    assert s == summarise_runs(P1, [rep("a", 1000.0, x) for x in (1.05, 1.06, 1.07)], {host("a")["id"]: setup("a")})
    assert ledger.summaries() == [s] and not ledger.complete
    with pytest.raises(ValueError, match="a second outcome for .*repetition 2"):
        ledger.add(outcome(t[1]))


def test_ledger_summarises_from_the_repetitions_that_succeeded_or_marks_the_point_failed():
    t = plan_tasks(EXP)
    ledger = SweepLedger(EXP)
    boom = RunFailure.from_node_failure(t[1], host("a")["id"], NodeFailure(1, 4242, "run", "process killed by SIGKILL (at P1, repetition 2)"))
    for o in (outcome(t[0]), RunOutcome(t[1], failure=boom), outcome(t[2])):
        s = ledger.add(o)
    assert s["repetitions"] == 2 and ledger.failures == [boom]
    assert boom.line() == "run failed on a (cpu; CPUs 0-1): node 1 (pid 4242) failed in phase 'run': process killed by SIGKILL (at P1, repetition 2)"
    assert boom.to_json() == {**t[1].to_json(), "host": "a (cpu; CPUs 0-1)", "detail": boom.detail, "node": 1, "pid": 4242, "phase": "run", "where": None}
    for task in t[3:]:
        assert ledger.add(RunOutcome(task, failure=RunFailure(task, None, "lost"))) is None
    assert ledger.complete and ledger.failed_points == [P2] and len(ledger.summaries()) == 1
    assert ledger.hosts == {"a (cpu; CPUs 0-1)": host("a")}


# -- per host: absolute times from two machines are never mixed (pure) -------------------------


def mixed_hosts(s: dict) -> list[str]:
    """Where summary `s` gives an absolute figure (throughput, per-node wall time) that is not
    one host's own: the checker of the tests below."""
    problems = []
    hosts = {r[0]["host"]["id"] for r in s["runs"]}
    for policy, row in s["policies"].items():
        pi = [r["policy"] for r in s["runs"][0]].index(policy)
        if len(hosts) > 1:
            if row["throughput_rps"] is not None:
                problems.append(f"{policy}: throughput of {len(hosts)} hosts together")
            problems += [f"{policy}: node {n['node']} wall time of {len(hosts)} hosts together" for n in row["per_node"] if n["us_per_request"] is not None]
        for h in s.get("per_host", ()):
            own = sorted(rep[pi]["throughput_rps"] for rep in s["runs"] if rep[0]["host"]["id"] == h["host"]["id"])
            t = h["policies"][policy]["throughput_rps"]
            if (t["n"], t["min"], t["max"]) != (len(own), own[0], own[-1]):
                problems.append(f"{policy}: {h['host']['id']}'s throughput is not from its own runs")
    return problems


REPS_AB = [rep("a", 1000.0, 1.06), rep("b", 5000.0, 1.08), rep("a", 1010.0, 1.062), rep("b", 5100.0, 1.079), rep("a", 990.0, 1.061)]


def test_two_hosts_are_summarised_each_on_its_own_and_speedups_pooled():
    setups = {host("a")["id"]: setup("a"), host("b")["id"]: setup("b", cpus=1, scale=2.5)}
    s = summarise_runs(P1, REPS_AB, setups)
    assert mixed_hosts(s) == []
    assert s["hosts"] == 2 and s["repetitions"] == 5 and [h["host"]["id"] for h in s["per_host"]] == [host("a")["id"], host("b")["id"]]
    a, b = s["per_host"]
    assert a["repetitions"] == 3 and a["policies"]["single"]["throughput_rps"]["median"] == 1000.0 and a["time_scale"] == 1.0
    assert b["repetitions"] == 2 and b["policies"]["single"]["throughput_rps"]["median"] == 5050.0 and b["time_scale"] == 2.5
    assert b["fidelity"]["oversubscribed"] and not a["fidelity"]["oversubscribed"]
    # Each host's own figures are exactly a one-host summary of its own runs.
    assert {k: v for k, v in a.items() if k != "host"} == {
        k: v for k, v in summarise_runs(P1, [r for r in REPS_AB if r[0]["host"] == host("a")], setups).items() if k not in ("point", "runs", "topology_detail")
    }
    rep_row = s["policies"]["replicate"]
    assert rep_row["speedup"]["n"] == 5 and rep_row["speedup"]["median"] == pytest.approx(1.062)  # every paired ratio, pooled
    assert rep_row["significance"]["n"] == 5 and rep_row["model_speedup"] == pytest.approx(1.063)
    assert rep_row["throughput_rps"] is None and s["time_scale"] is None and s["fidelity"]["oversubscribed"]
    text = format_point(s)
    assert "5 repetitions, on 2 hosts" in text and "host a (cpu; CPUs 0-1): 2 nodes, 3 repetitions, time scale 1" in text
    assert "host b (cpu; CPUs 0-1): 2 nodes, 2 repetitions, time scale 2.5" in text
    rows = csv_rows([s])
    assert [(r["host"], r["policy"], r["throughput_median"]) for r in rows] == [
        ("all", "single", None), ("all", "replicate", None),
        (host("a")["id"], "single", 1000.0), (host("a")["id"], "replicate", a["policies"]["replicate"]["throughput_rps"]["median"]),
        (host("b")["id"], "single", 5050.0), (host("b")["id"], "replicate", b["policies"]["replicate"]["throughput_rps"]["median"]),
    ]


def test_the_mixing_checker_catches_a_summary_that_pools_two_hosts_times():
    pooled = summarise_point(P1, REPS_AB, n_nodes=2, cpus_used=2, oversubscribed=False)  # what must not happen
    assert "single: throughput of 2 hosts together" in mixed_hosts(pooled)
    s = summarise_runs(P1, REPS_AB, {host("a")["id"]: setup("a"), host("b")["id"]: setup("b")})
    swapped = copy.deepcopy(s)
    swapped["per_host"][0]["policies"]["single"]["throughput_rps"] = s["per_host"][1]["policies"]["single"]["throughput_rps"]
    assert mixed_hosts(swapped) == [f"single: {host('a')['id']}'s throughput is not from its own runs"]


def test_one_host_gives_exactly_the_local_summary():
    reps = [rep("a", 1000.0, x) for x in (1.05, 1.06)]
    s = summarise_runs(P1, reps, {host("a")["id"]: setup("a")})
    assert "per_host" not in s and mixed_hosts(s) == []
    assert s == {**summarise_point(P1, reps, n_nodes=2, cpus_used=2, oversubscribed=False),
                 "time_scale": 1.0, "delays": "model", "calibration": {"sharing": 1.0}, "topology_detail": {"name": "2s-xeon"}, "host_binding": {"cpus": [[0], [1]]}}


def test_a_point_of_two_hosts_passes_the_document_check_and_plots(tmp_path):
    from numaemu.measure.compare import bench_doc_problem

    pytest.importorskip("matplotlib")
    from numaemu.measure.plot import plot_bench

    s = summarise_runs(P1, REPS_AB, {host("a")["id"]: setup("a"), host("b")["id"]: setup("b")})
    one = summarise_runs(P2, REPS_AB[:1], {host("a")["id"]: setup("a")})
    assert bench_doc_problem({"experiment": {}, "points": [s, one]}) is None
    for points in ([s, one], [s]):  # the second: no per-node bar at all
        plot_bench(points, str(tmp_path / "p.png"), {"repeat": 5, "warmup": 1, "duration_s": 1.0})
        assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_leaves_out_the_throughput_of_a_point_of_several_hosts():
    one = {"points": [summarise_runs(P1, REPS_AB[::2], {host("a")["id"]: setup("a")})]}
    two = {"points": [summarise_runs(P1, REPS_AB, {host("a")["id"]: setup("a"), host("b")["id"]: setup("b")})]}
    rows = compare_docs(one, two)["rows"]
    assert [sorted(k for k in r if k in ("speedup", "throughput")) for r in rows] == [[], ["speedup"]]
    assert [sorted(k for k in r if k in ("speedup", "throughput")) for r in compare_docs(one, one)["rows"]] == [["throughput"], ["speedup", "throughput"]]


# -- the address, the worker's task and its process ------------------------------------------


@pytest.mark.parametrize("text", ["local", "tcp://10.0.0.1:8786", "sched.example.org:8786", "tls://h:1", "tcp://[::1]:8786", " local "])
def test_addresses_taken(text):
    assert cluster.parse_address(text) == text.strip()


@pytest.mark.parametrize("text", ["", " ", "tcp://h", "h", "http://h:1", "tcp://h:0", "tcp://h:65536", "tcp://h:80/x", "tcp://a b:1", "LOCAL"])
def test_addresses_refused(text):
    with pytest.raises(UsageError, match="^--cluster: "):
        cluster.parse_address(text)


class FakeWorker:
    address = "tcp://10.0.0.9:1234"

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def get_current_task(self) -> str:
        return "key-1"

    def log_event(self, topic: str, msg: dict) -> None:
        self.events.append((topic, msg))


def test_a_host_calibrates_and_warms_up_once_per_point_and_sweep(monkeypatch):
    distributed = pytest.importorskip("distributed")
    worker = FakeWorker()
    monkeypatch.setattr(distributed, "get_worker", lambda: worker)
    monkeypatch.setattr(cluster_task, "_HOST_POINTS", {})
    asked: list[RunRequest] = []
    exp = replace(EXP, time_scale=None)
    cal = (2.5, {"oversleep_ns": 70_000})

    def fake(request: RunRequest, cancelled) -> RunOutcome:
        asked.append(request)
        first = request.calibrated is None
        if request.task.repetition == 1 and request.task.point_index == 1:  # fails after its warmups and calibration
            return RunOutcome(request.task, failure=RunFailure(request.task, "a", "boom"), calibrated=cal if first else None, warmups=request.warmups)
        return outcome(request.task) if not first else replace(outcome(request.task), calibrated=cal, warmups=request.warmups)

    monkeypatch.setattr(cluster_task, "run_in_process", fake)
    t = plan_tasks(exp)
    for task in (t[0], t[1], t[4], t[5], t[3]):
        cluster_task.run_task("sweep-1", exp, task)
    assert [(r.task.index, r.warmups, r.calibrated) for r in asked] == [
        (0, 1, None), (1, 0, cal),  # point 0: calibrated and warmed up by its first task only
        (4, 1, None), (5, 0, cal), (3, 0, cal),  # point 1: its first task here failed, after both
    ]
    assert [(m["task"], m["event"]) for _, m in worker.events] == [(i, e) for i in (0, 1, 4, 5, 3) for e in ("start", "end")]
    assert {m["worker"] for _, m in worker.events} == {worker.address}
    cluster_task.run_task("sweep-2", exp, t[0])  # another sweep on the same worker starts afresh
    assert (asked[-1].warmups, asked[-1].calibrated) == (1, None) and set(cluster_task._HOST_POINTS) == {("sweep-2", 0)}


def test_a_run_missing_its_image_on_a_host_fails_there_in_one_line(tmp_path):
    exp = replace(EXP, image=tmp_path / "vmlinux", image_scale=1.0)
    task = plan_tasks(exp)[1]
    out = execute(RunRequest(exp, task, 0, None))
    assert out.records == () and out.setup is None
    assert out.failure.detail == f"--image: '{tmp_path / 'vmlinux'}': no such file (at {task.label()})"
    assert out.failure.line().startswith("run failed on ") and out.failure.node is None


def test_a_host_with_another_numaemu_refuses_the_run():
    task = plan_tasks(EXP)[0]
    out = execute(RunRequest(EXP, task, 0, None, version="0.0.1"))
    assert "install the same version on every host" in out.failure.detail and out.failure.detail.startswith("numaemu ")


def test_the_task_process_returns_its_outcome_or_a_failure_naming_how_it_ended(tmp_path, monkeypatch):
    exp = replace(EXP, image=tmp_path / "vmlinux", image_scale=1.0)
    task = plan_tasks(exp)[0]
    out = cluster_task.run_in_process(RunRequest(exp, task, 0, None), lambda: False)  # a real process, its image missing
    assert out.failure is not None and out.failure.detail.startswith("--image: ") and "no such file" in out.failure.detail
    monkeypatch.setattr(cluster_task, "RUNNER", "numaemu.no_such_module")  # a process that ends without an outcome
    out = cluster_task.run_in_process(RunRequest(exp, task, 0, None), lambda: False)
    assert out.failure.detail == f"its process exited with code 1: {sys.executable}: No module named numaemu.no_such_module (at {task.label()})"


class FakeFuture:
    def __init__(self, status: str, value: object = None) -> None:
        self.status = status
        self.value = value

    def result(self) -> object:
        return self.value

    def exception(self) -> BaseException:
        return self.value  # type: ignore[return-value]


def test_dask_s_own_failures_are_failed_runs():
    KilledWorker = pytest.importorskip("distributed").KilledWorker
    sweep = cluster_sweep.ClusterSweep.__new__(cluster_sweep.ClusterSweep)
    task = plan_tasks(EXP)[2]
    sweep.attempts = {2: [{"worker": "w1", "host": "a"}, {"worker": "w2", "host": "b"}, {"worker": "w3", "host": "b"}, {"worker": "w4", "host": "c"}]}
    out = sweep._outcome(FakeFuture("error", KilledWorker("key", None, 3)), task)
    assert out.failure.host == "c" and out.failure.detail.startswith("the Dask workers running it died, 4 times (distributed.scheduler.allowed-failures is 3)")
    ok = outcome(task)
    assert sweep._outcome(FakeFuture("finished", ok), task) is ok
    assert "cancelled on its worker" in sweep._outcome(FakeFuture("finished", None), task).failure.detail
    assert sweep._outcome(FakeFuture("error", RuntimeError("x")), task).failure.detail == f"Dask: RuntimeError: x (at {task.label()})"


# -- real sweeps (slow) ----------------------------------------------------------------------

SMALL = ("--image-scale", "0.05", "--policy", "replicate", "--requests", "2000", "--time-scale", "1", "--no-progress")
# Wall-clock figures: they differ from any run to the next, on one host as on a cluster.
WALL = {"throughput_rps", "wall_s", "batch_wall_s", "us_per_request", "speedup_vs_single", "speedup", "significance", "gap_pct", "flag",
        "pacing_lost_pct", "pacing_overrun_pct", "pacing_overrun_pct_max", "node_spread_pct", "pid", "numa_maps", "fidelity"}


def deterministic(x: object) -> object:
    """`x` without its wall-clock figures: what the same seeds must reproduce exactly. With
    --requests and --migrate-rate 0 every node makes the same requests in the same order, so its
    fetches, cache hits, emulated time and the model's speedups are the same on any host."""
    if isinstance(x, dict):
        return {k: deterministic(v) for k, v in x.items() if k not in WALL}
    if isinstance(x, list):
        return [deterministic(v) for v in x]
    return x


def test_the_deterministic_comparison_catches_a_difference():
    a = {"points": [summarise_runs(P1, [rep("a", 1000.0, 1.06)], {host("a")["id"]: setup("a")})]}
    b = copy.deepcopy(a)
    b["points"][0]["runs"][0][1]["per_node"][1]["batch_wall_s"] = 99.0  # wall clock: not compared
    assert deterministic(a) == deterministic(b)
    b["points"][0]["runs"][0][1]["per_node"][1]["emulated_us_per_request"] += 0.001
    assert deterministic(a) != deterministic(b)


@pytest.mark.slow
def test_cluster_local_gives_the_local_sweep_s_report(tmp_path, no_leaks):
    pytest.importorskip("distributed")
    pytest.importorskip("matplotlib")
    sweep = (*SMALL, "--cache", "hot,cold", "--repeat", "2", "--warmup", "0", "--migrate-rate", "0")
    local = numaemu("bench", *sweep, "--json", str(tmp_path / "local.json"), timeout=180)
    assert local.returncode == 0, local.stderr
    files = ("--json", str(tmp_path / "c.json"), "--csv", str(tmp_path / "c.csv"), "--plot", str(tmp_path / "c.png"))
    on = numaemu("bench", *sweep, "--cluster", "local", *files, timeout=180)
    assert on.returncode == 0, on.stderr
    assert on.stderr == "" and "on a Dask LocalCluster here" in on.stdout and on.stdout.count(" repetitions, time scale 1") == 2
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("local.json", "c.json"))
    assert set(b) - set(a) == {"cluster"} and set(a) <= set(b)
    assert a["experiment"] == b["experiment"]
    assert deterministic(a["points"]) == deterministic(b["points"])
    assert b["failed_runs"] == [] and b["cluster"]["retried_runs"] == [] and b["cluster"]["address"] == "local"
    assert list(b["cluster"]["hosts"]) == [b["points"][0]["runs"][0][0]["host"]["id"]]
    for p in b["points"]:
        assert p["repetitions"] == 2 and p["policies"]["replicate"]["remote_fetch_share"] == 0.0 and "per_host" not in p
    rows = list(csv.DictReader((tmp_path / "c.csv").read_text().splitlines()))
    assert [(r["cache"], r["policy"]) for r in rows] == [("hot", "single"), ("hot", "replicate"), ("cold", "single"), ("cold", "replicate")]
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = numaemu("plot", str(tmp_path / "c.json"), str(tmp_path / "again.png"))
    assert r.returncode == 0, r.stderr
    r = numaemu("compare", str(tmp_path / "local.json"), str(tmp_path / "c.json"))
    assert r.returncode == 0 and "replicate" in r.stdout, r.stderr


@pytest.mark.slow
def test_a_cancelled_task_stops_its_process_and_its_nodes(no_leaks):
    exp = replace(EXP, points=(P1,), duration_s=60.0, requests=None, image_scale=0.05)
    seen: list[int] = []

    def cancelled() -> bool:  # once the run's nodes are up: as when the client cancels it
        nodes = running([c for c in psutil.Process().children(recursive=True) if c.ppid() != os.getpid()])
        seen.extend(c.pid for c in nodes)  # what `running` says runs now, it must say has ended below
        return len(nodes) >= 2

    t0 = time.monotonic()
    assert cluster_task.run_in_process(RunRequest(exp, plan_tasks(exp)[0], 0, None), cancelled) is None
    assert time.monotonic() - t0 < 20 and seen
    assert not running([psutil.Process(p) for p in set(seen) if psutil.pid_exists(p)])


def running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `procs` still running (a zombie has ended: only its parent has not asked)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def cli_env(fault: str | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NUMAEMU_FAULT", None)
    if fault:
        env["NUMAEMU_FAULT"] = fault
    return env


@pytest.mark.slow
def test_a_run_failing_on_its_own_merits_is_reported_once_not_retried(tmp_path, no_leaks):
    pytest.importorskip("distributed")
    out = tmp_path / "f.json"
    # The LocalCluster's worker, and every task process it starts, inherit the fault: node 1
    # kills itself at its 3rd batch in the 3rd set of node processes of a task's process. Only
    # the point's first task here runs warmups (sessions 1 and 2: one per policy), so only its
    # repetition 1 has a 3rd session; repetition 2's process, warmed up already, has two.
    proc = subprocess.run([sys.executable, "-m", "numaemu", "bench", *SMALL, "--repeat", "2", "--warmup", "1", "--cluster", "local", "--json", str(out)],
                          capture_output=True, text=True, timeout=180, env=cli_env("1:run:3:3"))
    assert proc.returncode == 3, proc.stderr
    failed = [line for line in proc.stdout.splitlines() if line.startswith("run failed on ")]
    assert len(failed) == 1, proc.stdout
    assert failed[0].endswith("failed in phase 'run': process killed by SIGKILL (at 2s-xeon db, cache hot, user data local, replicate text+rodata, repetition 1)")
    assert proc.stderr.strip().splitlines()[-1] == f"error: 1 of 2 runs failed (each named above; failed_runs in the JSON): first {failed[0]}"
    doc = json.loads(out.read_text())
    (f,) = doc["failed_runs"]
    assert (f["repetition"], f["node"], f["phase"], f["host"]) == (1, 1, "run", doc["points"][0]["runs"][0][0]["host"]["id"])
    assert f"(pid {f['pid']})" in failed[0] and not psutil.pid_exists(f["pid"])
    assert doc["cluster"]["retried_runs"] == []  # once: a failure of its own is a value, never retried
    assert doc["points"][0]["repetitions"] == 1 and doc["failed_points"] == [] and doc["failure"] is None


@pytest.mark.slow
def test_ctrl_c_cancels_the_sweep_and_keeps_the_points_completed(tmp_path, no_leaks):
    pytest.importorskip("distributed")
    out, said = tmp_path / "i.json", tmp_path / "stdout.txt"
    with open(said, "w") as stdout, subprocess.Popen(
        [sys.executable, "-m", "numaemu", "bench", *SMALL, "--topology", "2s-xeon,4", "--repeat", "2", "--warmup", "0", "--cluster", "local", "--json", str(out)],
        stdout=stdout, stderr=subprocess.PIPE, text=True, env=cli_env(),
    ) as proc:
        wait_for(lambda: " repetitions, " in said.read_text(), proc, "the first point's summary")
        tree = psutil.Process(proc.pid).children(recursive=True)  # the worker, its task's process, its nodes
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted; every node stopped and every segment removed", err
    assert took < 5.0 and not running(tree), f"stopped in {took:.2f} s; still running: {running(tree)}"
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True and [p["point"]["topology"] for p in doc["points"]] == ["2s-xeon"] and "cluster" in doc


def wait_for(ready, proc: subprocess.Popen, what: str, timeout_s: float = 90.0):
    """Poll `ready()` until it returns something true, while `proc` runs; return that."""
    deadline = time.monotonic() + timeout_s
    while not (got := ready()):
        assert proc.poll() is None, f"numaemu bench ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
        time.sleep(0.05)
    return got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_lost_worker_s_run_is_retried_on_another(tmp_path, no_leaks):
    pytest.importorskip("distributed")
    address = f"tcp://127.0.0.1:{free_port()}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": cli_env()}
    # As the README says to start them, but two on this one host, without nannies, so that the
    # one killed stays dead and its task must go to the other.
    daemons = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"], **quiet)]
    try:
        daemons += [subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nworkers", "1", "--nthreads", "1", "--resources", "numaemu=1",
                                      "--no-nanny", "--no-dashboard"], **quiet) for _ in range(2)]
        out = tmp_path / "r.json"
        with subprocess.Popen([sys.executable, "-m", "numaemu", "bench", "--image-scale", "0.05", "--policy", "replicate", "--duration", "1", "--time-scale", "1",
                               "--no-progress", "--repeat", "2", "--warmup", "0", "--cluster", address, "--json", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()) as bench:
            victim, runner = wait_for(  # a task's process, and the worker that started it
                lambda: [(w, c) for w in daemons[1:] for c in psutil.Process(w.pid).children() if "numaemu.measure.runner" in " ".join(c.cmdline())],
                bench, "a task's process",
            )[0]
            # The worker logged the task's start (cluster_task.ATTEMPTS) just before starting its
            # process, but sends events to the scheduler in batches from its event loop, which a
            # starting task starves on two cores: killed at once, the first start can be lost
            # with the worker, and the retry then looks like a first start. Let it go out first
            # (the task's process runs for its 1 s of requests and more).
            time.sleep(0.5)
            assert running([runner]), "the task ended before its worker could be killed"
            victim.kill()
            stdout, stderr = bench.communicate(timeout=120)
        assert bench.returncode == 0, stderr
        deadline = time.monotonic() + 5  # it dies with its worker (PR_SET_PDEATHSIG), after its cleanup
        while running([runner]):
            assert time.monotonic() < deadline, "the task's process outlived its worker"
            time.sleep(0.05)
        doc = json.loads(out.read_text())
        (retried,) = doc["cluster"]["retried_runs"]
        # Both repetitions started at once, one on each worker: the one whose worker was killed
        # ran again, on the other.
        assert len(retried["attempts"]) == 2 and retried["attempts"][0]["worker"] != retried["attempts"][1]["worker"]
        assert f"repetition {retried['repetition']}: started again on {retried['attempts'][1]['worker']}" in stdout
        assert doc["failed_runs"] == [] and doc["points"][0]["repetitions"] == 2
    finally:
        for p in reversed(daemons):  # the workers first, while their scheduler is there to say goodbye to
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:  # a worker's shutdown can hang on a scheduler going away
                p.kill()
                p.wait()
