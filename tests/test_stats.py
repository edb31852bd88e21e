"""Statistics of repeated measurements: each test shows the check can fail as well as pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numaemu.measure.stats import paired_test, summarise, welch_test


def test_summary_of_known_values():
    s = summarise([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.median == 3.0
    assert s.mad == 1.0  # |x - 3| = 2, 1, 0, 1, 97 -> median 1
    assert (s.min, s.max, s.n) == (1.0, 100.0, 5)
    assert s.ci_low <= s.median <= s.ci_high
    assert s.contains(3.0) and not s.contains(200.0)


def test_one_sample_has_no_interval_and_constant_data_a_point_interval():
    one = summarise([1.5])
    assert one.ci_low is None and one.ci_half_width_pct is None
    assert one.contains(1.5) and not one.contains(1.6)
    const = summarise([2.0, 2.0, 2.0])
    assert const.ci_low == const.ci_high == 2.0


def test_summary_rejects_nothing_and_nonfinite():
    with pytest.raises(ValueError):
        summarise([])
    with pytest.raises(ValueError):
        summarise([1.0, math.nan])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.5, 2.0), min_size=2, max_size=12))
def test_interval_brackets_the_median_and_stays_in_range(values):
    s = summarise(values)
    assert s.min <= s.ci_low <= s.median <= s.ci_high <= s.max


def test_bootstrap_is_reproducible_for_a_seed():
    x = [1.01, 1.05, 1.03, 1.08, 1.02, 1.04]
    assert summarise(x, seed=3) == summarise(x, seed=3)


def test_paired_test_finds_a_consistent_speedup_and_not_noise():
    assert paired_test([1.06, 1.07, 1.065, 1.062, 1.068]).significant
    rng = np.random.default_rng(1)
    noise = np.exp(rng.normal(0.0, 0.05, 5))
    noise = noise / np.exp(np.mean(np.log(noise)))  # geometric mean exactly 1
    t = paired_test(noise)
    assert not t.significant and t.p_value > 0.5


def test_paired_test_edge_cases():
    assert paired_test([1.1]).p_value is None  # one repetition: nothing to test
    assert not paired_test([1.0, 1.0, 1.0]).significant  # no difference, no spread
    assert paired_test([1.2, 1.2, 1.2]).significant  # a difference with no spread at all
    assert paired_test([0.0, 1.0]).p_value is None  # a ratio must be positive


def test_welch_test_separates_two_samples_and_not_one_sample_split():
    a = [100.0, 101.0, 99.5, 100.5]
    assert welch_test(a, [110.0, 111.0, 109.0, 110.5]).significant
    assert not welch_test(a, [100.2, 100.8, 99.7, 100.1]).significant
    assert welch_test(a, [100.0]).p_value is None
