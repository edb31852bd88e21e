"""The reconstruction from samples to requests (numaemu.model.replay), measured against a kernel
run whose exact line footprint is known (numaemu.model.groundtruth)."""

from __future__ import annotations

import numpy as np
import pytest

from numaemu.model.groundtruth import accuracy, sample, synthetic_run
from numaemu.model.image import synthetic_image
from numaemu.model.recording import Frame, recording_from_samples
from numaemu.model.replay import _Entry, _probabilities, reconstruct


@pytest.fixture(scope="module")
def image():
    return synthetic_image()


@pytest.fixture(scope="module")
def run(image):
    return synthetic_run(image, seed=0)


def test_accuracy_against_the_ground_truth(run):
    """2,000 samples (a half-second recording at 4 kHz): the figures of results/reconstruction.md
    at this size, with their margins. Measured: precision 0.994, fetch recall 0.942, miss rate
    0.196 against 0.190."""
    a = accuracy(run, sample(run, 2000, seed=0), truth_invocations=1000)
    assert a["precision"] > 0.95  # what it reconstructs, the kernel ran
    assert a["fetch_recall"] > 0.9  # the lines it misses are the rarely run ones
    assert 0.4 < a["recall"] < 1.0  # ... which a union counts as much as the hot ones
    assert abs(a["miss_rate_error"]) < 0.03
    assert 0.7 < a["reconstructed_lines_per_request"] / a["true_lines_per_request"] < 1.6


def test_the_measure_catches_a_reconstruction_of_another_run(image, run):
    """The checker itself: samples of a different kernel run reconstruct a footprint that the
    truth does not share, and the measure says so."""
    other = synthetic_run(image, seed=7)
    a = accuracy(run, sample(other, 2000, seed=0), truth_invocations=1000)
    assert a["precision"] < 0.3 and a["fetch_recall"] < 0.5


def test_probabilities_solve_the_shares_of_a_known_tree():
    """A root of 10 lines calls a child of 10 lines on half of its paths: the child holds
    5 / 15 of the time, which gives back p = 0.5; the root stays at 1."""
    e = _Entry("root", "cls", samples=300)
    e.inclusive.update({"root": 300, "child": 100})
    e.below["root"].add("child")
    p = _probabilities(e, {"root": 10.0, "child": 10.0})
    assert p["root"] == 1.0 and p["child"] == pytest.approx(0.5, abs=1e-3)


def test_request_shares_follow_samples_over_lengths(image):
    """Two syscalls sampled equally often, one four times the other's length: the short one is
    four times as frequent a request."""
    stub, disp = Frame("entry_SYSCALL_64_after_hwframe", 0x4B), Frame("do_syscall_64", 0x30)
    syms = image.symbols
    big = next(n for n, size in zip(syms.names, syms.sizes.tolist(), strict=True) if n.startswith("__x64_sys_") and size >= 512 and (syms.address_of(n) - image.base) % 64 == 0)
    short = [(Frame("__x64_sys_getpid", 0x10), disp, stub)] * 500
    long = [(Frame(big, off), disp, stub) for off in (0x10, 0x50, 0x90, 0xD0)] * 125  # lines 0-3, in equal numbers
    rec = recording_from_samples(short + long, 1000, "x", "synthetic", True, {}, {})
    r = reconstruct(rec, image)
    shares = {e["entry"]: e["request_share"] for e in r.report["top_entries"]}
    assert shares["__x64_sys_getpid"] / shares[big] == pytest.approx(4, rel=0.1)
    assert np.isclose(r.weights.sum(), 1.0)
