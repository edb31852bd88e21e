"""scripts/published_*.py: their pure helpers, and each script's --quick run (marked slow)."""

from __future__ import annotations

import functools
import importlib
import json
import subprocess
import sys

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
published = importlib.import_module("_published")
article = importlib.import_module("published_article")
micro = importlib.import_module("published_x86_micro")
cost = importlib.import_module("published_cost")
batching = importlib.import_module("published_batching")


def test_spread_and_gain_text() -> None:
    s = published.Spread.of([1.063, 1.060, 1.069])
    assert (s.median, s.lo, s.hi) == (1.063, 1.060, 1.069)
    assert s.gain() == "+6.3% [+6.0, +6.9]"
    assert published.Spread.of([0.9]).gain() == "-10.0% [-10.0, -10.0]"
    with pytest.raises(ValueError, match=r"^values must not be empty$"):
        published.Spread.of([])


def test_pair_of_records() -> None:
    base = {"throughput_rps": 100.0, "emulated_us_per_request": 10.0}
    rec = {"throughput_rps": 110.0, "emulated_us_per_request": 8.0}
    assert published.Pair.of(base, rec) == published.Pair(pytest.approx(1.1), 1.25)


def test_text_poke_bp_model() -> None:
    # The timeline's x86 costs by default (a bench runs at scale 1)
    assert published.text_poke_bp_model_ns(56, 1, 1, 2) == 3 * 1_317 + 3 * 56 * 1_000
    m = functools.partial(published.text_poke_bp_model_ns, ipi_ns=100_000, poke_ns=1_000)
    # 2 nodes, one copy: 3 syncs of one 100 us IPI wait, and 3 writes of 1 us per site.
    assert m(56, 1, 1, 2) == 3 * 100_000 + 3 * 56 * 1_000
    assert m(56, 56, 1, 2) == 56 * 3 * 100_000 + 3 * 56 * 1_000
    # A copy per node doubles the writes; 4 nodes wait for the last of 3 IPIs: H(3) = 11/6.
    assert m(56, 1, 2, 2) == 3 * 100_000 + 3 * 56 * 2 * 1_000
    assert m(10, 1, 1, 4) == pytest.approx(3 * 100_000 * 11 / 6 + 30_000)
    # Batches of at most 256 sites: 35,036 ftrace sites take 137.
    assert m(35_036, 1, 1, 2) == 137 * 3 * 100_000 + 3 * 35_036 * 1_000
    with pytest.raises(ValueError):
        m(5, 6, 1, 2)


def test_implied_costs_round_trip() -> None:
    s, w = batching.implied_costs(56 * (3 * 337e-6 + 7e-6), 3 * 337e-6 + 56 * 7e-6, 56)
    assert (s, w) == (pytest.approx(337e-6), pytest.approx(7e-6))
    s, w = batching.implied_costs(57e-3, 1.4e-3, 56)  # the kernel's: ~337 us a sync, ~6.9 us a site
    assert round(s * 1e6) == 337 and round(w * 1e7) == 69


def test_remote_share_needed() -> None:
    # +50% at 136/85 ns: a third of the time saved, 37.5% of each remote access saved: 8/9.
    assert article.remote_share_needed(1.5, 136 / 85) == pytest.approx(8 / 9)
    assert article.remote_share_needed(1.0, 2.0) == 0.0
    with pytest.raises(ValueError):
        article.remote_share_needed(1.5, 1.0)


def test_as_timed_speedup() -> None:
    assert micro.as_timed_speedup(1.0, 3.0, 1.0, 2.0, 1) == 1.5  # one call: all cold
    # A loop of 1024 after one flush: 1023 hot iterations dilute the cold one.
    assert micro.as_timed_speedup(1.0, 3.0, 1.0, 2.0, 1024) == pytest.approx((3 + 1023) / (2 + 1023))
    with pytest.raises(ValueError):
        micro.as_timed_speedup(1, 1, 1, 1, 0)


def test_signs_count_half_a_point_as_zero() -> None:
    shared = importlib.import_module("_micro")
    assert [shared.sign(x) for x in (0.004, -0.004, 0.02, -0.05)] == [0, 0, 1, -1]
    amd = importlib.import_module("published_amd_micro")
    assert amd.TABLE.cold["kill"] == -0.542 and set(amd.TABLE.hot) == {b.label for b in shared.BENCHMARKS} == set(micro.TABLE.cold)


def test_break_even() -> None:
    # 64 CPUs saving 2% of their time pay for 1.28 s of patching a second.
    assert cost.break_even_per_s(64, 1 / 0.98, 0.01) == pytest.approx(128.0)
    assert cost.break_even_per_s(64, 1.0, 0.01) == 0.0
    with pytest.raises(ValueError):
        cost.break_even_per_s(64, 1.1, 0.0)
    assert cost.EPYC_SOCKET == "4:10,12,12,12,12,10,12,12,12,12,10,12,12,12,12,10"


# published_amd_micro.py is published_x86_micro.py's main (scripts/_micro.py) on another table:
# its table is checked above, and its run left to tox -e published (25 s more here).
SCRIPTS = {
    "article": ("published_article.py", "replication + NUMA-aware user data"),
    "x86-micro": ("published_x86_micro.py", "Spearman rho"),
    "cost": ("published_cost.py", "Break-even"),
    "batching": ("published_batching.py", "unbatched (56 calls)"),
    "designs": ("designs.py", "Model speedup of replicate over single"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_script_quick_run(no_leaks, tmp_path, name: str) -> None:
    script, expected = SCRIPTS[name]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expected in proc.stdout
    doc = json.loads((tmp_path / f"published-{name}.json").read_text())
    assert doc["schema"] == 2 and doc["settings"]["quick"] is True
    assert doc["command"].startswith("python ") and script in doc["command"] and "--quick" in doc["command"]
    assert {"cpu_model", "python", "numpy"} <= set(doc["host"])
    assert doc["elapsed_s"] < 45  # a smoke run (x86-micro: 25 s on the 2-core VM, 14 workload builds and 56 runs)
    text = (tmp_path / f"published-{name}.txt").read_text()
    assert text.startswith(f"$ {doc['command']}\n") and expected in text
