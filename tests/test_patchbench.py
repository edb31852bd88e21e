"""PatchBench: its validation (pure) and its flip measurement (node processes, marked slow)."""

from __future__ import annotations

import statistics

import pytest

from numaemu.host.files import load_topology
from numaemu.patching.patch_bench import PatchBench, run_patch_bench


def test_defaults() -> None:
    assert PatchBench() == PatchBench(repeats=200, batch=256, load=False, ftrace_all=False, sites=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"repeats": 0}, ValueError, "repeats must be >= 1"),
        ({"batch": 0}, ValueError, "batch must be >= 1"),
        ({"sites": -1}, ValueError, "sites must be >= 0"),
        ({"repeats": 2.5}, TypeError, "repeats must be an int"),
        ({"sites": "56"}, TypeError, "sites must be an int"),
    ],
)
def test_bad_values(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=rf"^{message}$"):
        PatchBench(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["single", "replicate"])
def test_flip_batched_and_unbatched(no_leaks, policy: str) -> None:
    # text_poke_bp: 3 syncs per call, so one call for 8 sites takes 3 and one call per site 24.
    report = run_patch_bench(load_topology("2s-xeon"), PatchBench(repeats=3, sites=8), policy=policy)
    assert report["flip_sites"] == 8
    assert (report["flip_batched_syncs"], report["flip_unbatched_syncs"]) == (3, 24)
    assert len(report["flip_batched_ns"]) == len(report["flip_unbatched_ns"]) == 3
    # Each of the 24 syncs waits ~100 us for the other node's IPI; the batch needs 3 of them.
    assert statistics.median(report["flip_unbatched_ns"]) > statistics.median(report["flip_batched_ns"])
    assert report["unexpected_ops"] == 0


@pytest.mark.slow
def test_no_flips_without_sites(no_leaks) -> None:
    report = run_patch_bench(load_topology("2s-xeon"), PatchBench(repeats=2), modeled=False)
    assert not any(k.startswith("flip_") for k in report)
    assert len(report["one_site_ns"]) == 2
