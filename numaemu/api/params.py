"""Every parameter's rule, written once: what a value of each option may be, and the message
that names the rule when it is broken.

A rule is a function from the option's text to its value (argparse uses it as the ``type`` of
the option, so the command line refuses bad text as it parses), and `check` applies the same
rule to a value a script passed (`RunConfig` checks every field through it). Either way the
error is one `UsageError` naming the parameter: ``--duration: must be at least 0.01 s, got '0'``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from numaemu.errors import UsageError
from numaemu.model.topology import MAX_NODES

__all__ = [
    "Rule", "check", "choice", "comma_list", "positive_float", "integer", "one_of", "probability", "image_scale",
    "file_path", "POSITIVE_INT", "SEED", "REQUESTS", "REPLICAS_EVERY", "REPEAT", "WARMUP", "DURATION", "LOCAL_NS",
    "TIME_SCALE", "PATCH_RATE", "KILL_RATE", "MAX_REQUESTS", "MIN_IMAGE_SCALE", "timeline_settings",
]

T = TypeVar("T")
Rule = Callable[[str], T]


def positive_float(name: str, lo: float | None = None, hi: float | None = None, unit: str = "") -> Rule[float]:
    """A finite number > 0 (nan and inf refused), within [lo, hi] if given."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive number, got '{text}'")
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo:g}{unit}, got '{text}'")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi:g}{unit}, got '{text}'")
        return value

    parse.__name__ = name
    return parse


def integer(lo: int, hi: int | None, rule: str, too_big: str | None = None) -> Rule[int]:
    """An integer in lo..hi (hi None: unbounded); `rule` is the message (`too_big`, if given,
    the one for a value above hi)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{too_big if too_big and value > lo else rule}, got '{text}'")
        return value

    return parse


def one_of(choices: Sequence[str]) -> Rule[str]:
    """One of `choices` (a scalar: a comma list is refused too)."""

    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"'{text}' is not one of {', '.join(choices)}")
        return text

    return parse


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 <= value <= 1:  # nan fails this too
        raise argparse.ArgumentTypeError(f"must be a probability per request in 0..1, got '{text}'")
    return value


MIN_IMAGE_SCALE = 0.01  # below it the synthetic image has too few functions for the workloads


def image_scale(text: str) -> float:
    value = positive_float("scale")(text)
    if not MIN_IMAGE_SCALE <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [{MIN_IMAGE_SCALE:g}, 1], got '{text}'")
    return value


def file_path(text: str) -> Path:
    """A file path, not empty (Path('') would be the working directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a file path")
    return Path(text)


POSITIVE_INT = integer(1, None, "must be a positive integer")
SEED = integer(0, 2**32 - 1, "must be in 0..4294967295")
# Bounds: past them a run is a typo, not an experiment (and counts past them overflow the
# control block's int64 budgets, or a worker's patch interval).
MAX_REQUESTS = 10**9
REQUESTS = integer(1, MAX_REQUESTS, "must be a positive integer", f"must be at most {MAX_REQUESTS}")
REPLICAS_EVERY = integer(1, MAX_NODES, "must be a positive integer", f"must be at most {MAX_NODES}, numaemu's most nodes")
REPEAT = integer(1, 1000, "must be a positive integer", "must be at most 1000")
WARMUP = integer(0, 1000, "must be an integer >= 0", "must be at most 1000")
DURATION = positive_float("duration", 0.01, 86400.0, " s")  # 10 ms .. one day
LOCAL_NS = positive_float("local-ns", None, 100_000.0, " ns")
TIME_SCALE = positive_float("time-scale", None, 10_000.0)
PATCH_RATE = positive_float("rate", 0.001, 1_000_000.0, " ops/s")
KILL_RATE = positive_float("kill-workers", None, 1000.0, " kills/s")


def check(param: str, rule: Rule[T], value: object) -> T:
    """`value` (from a script: a number, or text) through `rule`, as the command line would
    take its text; the rule's message, if broken, as `UsageError(param, ...)`."""
    if isinstance(value, bool):  # True is an int to Python, never a count or a rate
        raise UsageError(param, f"must be a number, got {value!r}")
    text = value if isinstance(value, str) else repr(value)
    try:
        return rule(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(param, str(exc)) from None


def choice(value: str, choices: Sequence[str], param: str) -> str:
    if value not in choices:
        raise UsageError(param, f"'{value}' is not one of {', '.join(choices)}")
    return value


def comma_list(text: str, param: str, choices: Sequence[str] | None = None, split: Callable[[str], list[str]] | None = None, noun: str = "value") -> list[str]:
    """A comma list (`split` for one with its own grammar, as topology specs): every element
    present (``single,,replicate`` is refused, as is a trailing comma), none twice, each one of
    `choices` if given."""
    tokens = [x.strip() for x in text.split(",")]
    if not any(tokens):
        raise UsageError(param, "give at least one value")
    if not all(tokens):
        raise UsageError(param, f"'{text}' has an empty element; separate values with one comma")
    raw = split(text) if split is not None else tokens
    if len(set(raw)) != len(raw):
        raise UsageError(param, f"'{text}' names a {noun} twice")
    for x in raw:
        if choices is not None:
            choice(x, choices, param)
    return raw


def timeline_settings(items: Sequence[str]) -> tuple[tuple[str, float], ...]:
    """``--timeline NAME=NS`` items as (name, ns) pairs (the names and values are checked by
    `StressConfig`, which scripts reach too)."""
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        try:
            ns = float(value)
        except ValueError:
            ns = math.nan
        if not sep or not name or not math.isfinite(ns):
            raise UsageError("--timeline", f"'{item}' is not NAME=NS (a timeline parameter and a number of emulated ns)")
        out.append((name.strip(), ns))
    return tuple(out)
