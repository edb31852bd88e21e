"""Tests for numaemu.host.cpus: the kernel cpulist syntax, as exact-value tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from numaemu.host.cpus import format_cpu_list, host_cpus, parse_cpu_list


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("", ()),
        ("   ", ()),
        ("0", (0,)),
        ("7", (7,)),
        ("0-3", (0, 1, 2, 3)),
        ("0-1,5-6", (0, 1, 5, 6)),
        ("0-2,5", (0, 1, 2, 5)),
        ("3-3", (3,)),
        ("0-3,8,10-11", (0, 1, 2, 3, 8, 10, 11)),
        # Unsorted and overlapping parts: the result is sorted and without duplicates.
        ("5,1,3", (1, 3, 5)),
        ("2-4,3-5", (2, 3, 4, 5)),
        ("1,1,1", (1,)),
        # Whitespace around the list and around parts, as sysfs files end with a newline.
        ("0-3\n", (0, 1, 2, 3)),
        (" 0 , 2 - 3 ", (0, 2, 3)),
        ("64-66,128", (64, 65, 66, 128)),
    ],
)
def test_parse_cpu_list(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize(
    ("cpus", "text"),
    [
        ((), ""),
        ([0], "0"),
        ([0, 1], "0-1"),
        ([0, 1, 2, 5], "0-2,5"),
        ((0, 1, 5, 6), "0-1,5-6"),
        ([0, 2, 4], "0,2,4"),
        ([11, 10, 8, 3, 2, 1, 0], "0-3,8,10-11"),
        ([3, 3, 3], "3"),
        ({5, 6, 7, 9}, "5-7,9"),
        (range(0, 16), "0-15"),
    ],
)
def test_format_cpu_list(cpus, text: str) -> None:
    assert format_cpu_list(cpus) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a", r"^'a' is not a CPU number or range such as 0-3$"),
        ("0-x", r"^'0-x' is not a CPU number or range such as 0-3$"),
        ("0,,1", r"^'' is not a CPU number or range such as 0-3$"),
        ("0-", r"^'0-' is not a CPU number or range such as 0-3$"),
        ("-1", r"^'-1' is not a CPU number or range such as 0-3$"),
        ("1-2-3", r"^'1-2-3' is not a CPU number or range such as 0-3$"),
        ("3-1", r"^'3-1' is not a CPU range: need 0 <= first <= last$"),
        ("0-2,7-5", r"^'7-5' is not a CPU range: need 0 <= first <= last$"),
        ("0-99999999999", r"^'0-99999999999': CPU numbers go up to 8191"),  # not a 10^11-CPU set
        ("8192", r"^'8192': CPU numbers go up to 8191"),
    ],
)
def test_parse_cpu_list_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cpu_list(text)


@given(st.sets(st.integers(min_value=0, max_value=300), max_size=40))
def test_round_trip_from_set(cpus: set[int]) -> None:
    text = format_cpu_list(cpus)
    assert parse_cpu_list(text) == tuple(sorted(cpus))
    # The formatted list is canonical: formatting what it parses to gives it back.
    assert format_cpu_list(parse_cpu_list(text)) == text


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 20)), max_size=10))
def test_round_trip_from_ranges(ranges: list[tuple[int, int]]) -> None:
    text = ",".join(f"{lo}-{lo + width}" for lo, width in ranges)
    expected = sorted({cpu for lo, width in ranges for cpu in range(lo, lo + width + 1)})
    assert parse_cpu_list(text) == tuple(expected)
    assert parse_cpu_list(format_cpu_list(expected)) == tuple(expected)


def test_host_cpus_is_sorted_and_nonempty() -> None:
    cpus = host_cpus()
    assert cpus and list(cpus) == sorted(set(cpus))
