"""numaemu bench and compare: the sweep's definition, summaries, gap flags, outputs, bad input,
and (slow) a real sweep end to end with its JSON, CSV and plot, and a comparison of two."""

from __future__ import annotations

import csv
import json
import os

import pytest

from numaemu.cli import main
from numaemu.errors import UsageError
from numaemu.measure.compare import compare_docs, format_compare
from numaemu.measure.experiment import Point, read_experiment_file, split_topologies
from numaemu.measure.report import csv_rows, format_bench
from numaemu.measure.stats import summarise
from numaemu.measure.summary import explain_gap, summarise_point

from .conftest import numaemu

POINT = Point("2s-xeon", "db", "hot", "local", "text+rodata")


def record(policy: str, tput: float, speedup: float | None, model: float | None, node_us: list[float], overrun: float = 0.5) -> dict:
    """The fields of a `results.policy_record` (with speedups) that bench reads."""
    return {
        "policy": policy,
        "throughput_rps": tput,
        "speedup_vs_single": speedup,
        "predicted_speedup_vs_single": model,
        "remote_fetch_share": 0.0 if policy == "replicate" else 0.47,
        "node_spread_pct": 100 * (max(node_us) - min(node_us)) / min(node_us),
        "pacing_overrun_pct": overrun / 2,
        "pacing_lost_pct": overrun,
        "extra_memory_bytes": 0,
        "per_node": [{"node": i, "us_per_request": t, "emulated_us_per_request": t / 3} for i, t in enumerate(node_us)],
    }


def reps(speedups: list[float], model: float = 1.063, overrun: float = 0.5) -> list[list[dict]]:
    out = []
    for sp in speedups:
        base = 1000.0
        out.append([
            record("single", base, 1.0, 1.0, [1300.0, 1460.0], overrun),
            record("replicate", base * sp, sp, model, [1290.0, 1291.0], overrun),
        ])
    return out


def test_split_topologies_keeps_a_spec_s_distances_together():
    assert split_topologies("2s-xeon,kunpeng920") == ["2s-xeon", "kunpeng920"]
    assert split_topologies("2s-xeon,2:10,21,21,10,4") == ["2s-xeon", "2:10,21,21,10", "4"]
    assert split_topologies("3:10,20,20,20,10,20,20,20,10") == ["3:10,20,20,20,10,20,20,20,10"]


def test_experiment_file_values_become_option_text(tmp_path):
    f = tmp_path / "e.toml"
    f.write_text('topology = ["2s-xeon", "kunpeng920"]\ncache = "cold"\nrepeat = 3\nuser_data = ["local", "interleave"]\n')
    assert read_experiment_file(str(f)) == {"topology": "2s-xeon,kunpeng920", "cache": "cold", "repeat": "3", "user-data": "local,interleave"}
    f.write_text("[bench]\nduration = 1.5\n")
    assert read_experiment_file(str(f)) == {"duration": "1.5"}


def test_the_example_experiment_file_reads():
    from .conftest import ROOT

    got = read_experiment_file(str(ROOT / "examples" / "sweep.toml"))
    assert got["topology"] == "2s-xeon,kunpeng920" and got["cache"] == "hot,cold"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 'red'\n", "unknown key 'colour'"),
        ("repeat = [ ]\n", "repeat must be"),
        ("repeat = true\n", "repeat must be"),
        ("repeat = \n", "is not valid TOML"),
    ],
)
def test_bad_experiment_files(tmp_path, text, message):
    f = tmp_path / "e.toml"
    f.write_text(text)
    with pytest.raises(UsageError, match=message):
        read_experiment_file(str(f))


def test_an_experiment_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "e.toml"
    os.mkfifo(fifo)  # opened, it would wait for a writer
    with pytest.raises(UsageError, match=r"^--experiment: '.*/e.toml' is a FIFO, not a regular file$"):
        read_experiment_file(str(fifo))
    with pytest.raises(UsageError, match=r"^--experiment: cannot read '.*': Is a directory$"):
        read_experiment_file(str(tmp_path))


def test_gap_within_tolerance_or_inside_the_interval_is_not_flagged():
    tight = summarise([1.060, 1.061, 1.062])
    assert explain_gap(tight, 1.063, lost_pct=0.1, oversubscribed=False, n_nodes=2, cpus_used=2)[1] is None
    wide = summarise([0.90, 1.00, 1.20])  # the model 1.063 is inside the interval: not flagged
    assert explain_gap(wide, 1.063, lost_pct=0.1, oversubscribed=False, n_nodes=2, cpus_used=2)[1] is None


def test_gap_reasons_name_oversubscription_noise_or_neither():
    low = summarise([0.98, 0.985, 0.99])
    gap, why = explain_gap(low, 1.063, lost_pct=12.0, oversubscribed=True, n_nodes=4, cpus_used=2)
    assert gap == pytest.approx(100 * (0.985 / 1.063 - 1))
    assert "4 nodes share 2 host CPU(s) (oversubscribed)" in why
    gap, why = explain_gap(low, 1.063, lost_pct=5.0, oversubscribed=False, n_nodes=2, cpus_used=2)
    assert "host was busy" in why
    noisy = summarise([1.2, 1.3, 1.5, 1.4])
    assert "noise" in explain_gap(noisy, 1.063, lost_pct=0.0, oversubscribed=False, n_nodes=2, cpus_used=2)[1]
    _, why = explain_gap(low, 1.063, lost_pct=0.0, oversubscribed=False, n_nodes=2, cpus_used=2)
    assert "neither pacing loss nor noise" in why


def test_point_summary_keeps_per_node_times_and_flags_a_gap():
    s = summarise_point(POINT, reps([1.06, 1.065, 1.062, 1.07, 1.064]), n_nodes=2, cpus_used=2, oversubscribed=False)
    rep = s["policies"]["replicate"]
    assert rep["speedup"]["median"] == pytest.approx(1.064)
    assert rep["significance"]["significant"]
    assert rep["flag"] is None
    single = s["policies"]["single"]
    assert [n["us_per_request"]["median"] for n in single["per_node"]] == [1300.0, 1460.0]  # disparity kept
    assert single["speedup"] is None
    bad = summarise_point(POINT, reps([0.95, 0.96, 0.955], overrun=9.0), n_nodes=4, cpus_used=2, oversubscribed=True)
    assert "oversubscribed" in bad["policies"]["replicate"]["flag"]
    assert "4 nodes on 2 host CPU(s)" in bad["fidelity"]["note"]
    text = format_bench([s, bad])
    assert "0:1300 1:1460" in text and "! replicate" in text


def test_csv_has_one_row_per_point_and_policy(tmp_path):
    s = summarise_point(POINT, reps([1.06, 1.07]), n_nodes=2, cpus_used=2, oversubscribed=False)
    rows = csv_rows([s, s])
    assert len(rows) == 4 and rows[1]["policy"] == "replicate" and rows[1]["per_node_us_per_request"] == "1290.0;1291.0"


def doc(speedups: list[float], point: Point = POINT) -> dict:
    return {"command": "bench", "points": [summarise_point(point, reps(speedups), n_nodes=2, cpus_used=2, oversubscribed=False)]}


def test_compare_finds_a_real_change_and_not_a_reshuffle():
    a = doc([1.06, 1.065, 1.062, 1.07])
    cmp = compare_docs(a, doc([1.10, 1.105, 1.11, 1.102]))
    row = next(r for r in cmp["rows"] if r["policy"] == "replicate")
    assert row["speedup"]["test"]["significant"] and row["speedup"]["change_pct"] > 3
    same = compare_docs(a, doc([1.07, 1.062, 1.065, 1.06]))
    row = next(r for r in same["rows"] if r["policy"] == "replicate")
    assert not row["speedup"]["test"]["significant"]
    other = compare_docs(a, doc([1.1, 1.1], Point("kunpeng920", "db", "hot", "local", "text+rodata")))
    assert not other["rows"] and other["only_in_a"] and other["only_in_b"]
    assert "significant: faster" in format_compare(cmp, "a.json", "b.json")


BAD = [
    (["bench", "--repeat", "0"], "--repeat: must be a positive integer, got '0'"),
    (["bench", "--warmup", "-1"], "--warmup"),
    (["bench", "--cache", "hot,warm"], "--cache: 'warm' is not one of hot, cold"),
    (["bench", "--cache", "hot,hot"], "--cache: 'hot,hot' names a value twice"),
    (["bench", "--topology", "2s-xeon,nosuch"], "--topology: unknown preset, spec or file 'nosuch'"),
    (["bench", "--workload", "db,nosuch"], "--workload"),
    (["bench", "--policy", "replicate,bogus"], "--policy"),
    (["bench", "--duration", "1", "--requests", "10"], "--duration: give --duration or --requests, not both"),
    (["bench", "--duration", "0"], "--duration: must be a positive number"),
    (["bench", "--topology", "2s-xeon,kunpeng920", "--host-cpus", "0;1"], "--host-cpus"),
    (["bench", "--experiment", "/nonexistent.toml"], "--experiment: cannot read '/nonexistent.toml'"),
    (["bench", "--csv", "/nonexistent-dir/x.csv"], "--csv: '/nonexistent-dir/x.csv': directory"),
    (["bench", "--plot", "/nonexistent-dir/x.png"], "--plot"),
    (["bench", "--json", "/nonexistent-dir/x.json"], "--json"),
    (["compare", "/nonexistent-a.json", "/nonexistent-b.json"], "A.json: cannot read"),
    (["plot", "/nonexistent.json", "x.png"], "BENCH.json: cannot read '/nonexistent.json'"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_experiment_file_values_are_checked_like_options(capsys, tmp_path):
    f = tmp_path / "e.toml"
    f.write_text('cache = ["hot", "tepid"]\n')
    assert main(["bench", "--experiment", str(f)]) == 2
    assert f"--cache (from {f}): 'tepid' is not one of hot, cold" in capsys.readouterr().err


def test_a_results_file_that_is_not_a_regular_file_is_refused_at_once(capsys, tmp_path):
    fifo = tmp_path / "a.json"
    os.mkfifo(fifo)  # opened, it would wait for a writer
    assert main(["compare", str(fifo), str(fifo)]) == 2
    assert capsys.readouterr().err == f"error: A.json: '{fifo}' is a FIFO, not a regular file\n"
    assert main(["plot", str(fifo), str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err == f"error: BENCH.json: '{fifo}' is a FIFO, not a regular file\n"


def test_compare_refuses_a_run_result(capsys, tmp_path):
    f = tmp_path / "run.json"
    f.write_text(json.dumps({"command": "run", "results": []}))
    assert main(["compare", str(f), str(f)]) == 2
    assert "is not a numaemu bench result (it is from numaemu run)" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_end_to_end_with_csv_plot_and_compare(tmp_path, no_leaks):
    pytest.importorskip("matplotlib")
    exp = tmp_path / "exp.toml"
    exp.write_text('topology = "2s-xeon"\ncache = ["hot", "cold"]\npolicy = ["replicate"]\nrepeat = 2\nwarmup = 1\nduration = 0.3\nimage-scale = 0.25\n')
    out = {}
    for name in ("a", "b"):
        r = numaemu("bench", "--experiment", str(exp), "--json", str(tmp_path / f"{name}.json"), "--csv", str(tmp_path / f"{name}.csv"), "--plot", str(tmp_path / f"{name}.png"), timeout=300)
        assert r.returncode == 0, r.stderr
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())
    d = out["a"]
    assert d["command"] == "bench" and d["experiment"]["policies"] == ["single", "replicate"]
    assert [p["point"]["cache"] for p in d["points"]] == ["hot", "cold"]
    for p in d["points"]:
        assert len(p["runs"]) == 2
        rep = p["policies"]["replicate"]
        assert rep["remote_fetch_share"] == 0.0 and p["policies"]["single"]["remote_fetch_share"] > 0.3
        assert rep["model_speedup"] > 1.0  # the model always favours replication on 2s-xeon
        assert rep["speedup"]["ci_low"] <= rep["speedup"]["median"] <= rep["speedup"]["ci_high"]
    rows = list(csv.DictReader((tmp_path / "a.csv").read_text().splitlines()))
    assert [(r["cache"], r["policy"]) for r in rows] == [("hot", "single"), ("hot", "replicate"), ("cold", "single"), ("cold", "replicate")]
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = numaemu("plot", str(tmp_path / "a.json"), str(tmp_path / "again.png"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = numaemu("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert r.returncode == 0, r.stderr
    assert "replicate" in r.stdout and "Welch" in r.stdout


def test_a_node_failure_says_where_in_the_sweep(monkeypatch):
    import numaemu.measure.sweep as sweep
    from numaemu.errors import NodeFailure

    def fail(*args, **kwargs):
        raise NodeFailure(1, 4242, "run", "process exited with code -9")

    monkeypatch.setattr(sweep, "run_policies", fail)
    with pytest.raises(NodeFailure) as info:
        sweep._run_policies_at(POINT, "repetition 3", None, ["single"], None)
    assert str(info.value) == (
        "node 1 (pid 4242) failed in phase 'run': process exited with code -9 "
        "(at 2s-xeon db, cache hot, user data local, replicate text+rodata, repetition 3)"
    )


def test_fidelity_lost_counts_every_wall_ns_beyond_the_paced_time():
    from numaemu.runtime.results import _lost_pct
    from numaemu.runtime.run_node import NodeReport

    def report(paced_ns: int, wall_s: float) -> NodeReport:
        return NodeReport(node=0, pid=1, incarnation=0, cpus=(0,), wall_s=wall_s, batch_wall_s=wall_s, requests=1, batches=1, cache_hits=0,
                          text_fetches_by_home=(0,), user_fetches_by_home=(0,), kernel_ns=0.0, user_ns=0.0, walks=0.0, walk_ns=0.0,
                          paced_ns=paced_ns, overrun_ns=0, user_sink=0)

    on_time = report(1_000_000_000, 1.0)
    late = report(1_000_000_000, 1.05)  # late wake-ups, no overrun
    assert _lost_pct([on_time]) == 0.0
    assert _lost_pct([late]) == pytest.approx(5.0)
    assert _lost_pct([on_time, late]) == pytest.approx(2.5)
    assert _lost_pct([report(0, 0.1)]) == 0.0
