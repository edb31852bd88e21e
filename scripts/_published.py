"""What the scripts/published_*.py scripts share: run numaemu, summarise repetitions, print a
table, write the results.

Each script prints our figure beside a published one and writes two files (default under
results/): ``published-<name>.json``, with the exact command (``command``), the host's metadata
(``host``, `numaemu.runtime.results.host_metadata`), the settings, every repetition's figures and the
medians; and ``published-<name>.txt``, what it printed, headed by the command.

Every speedup is a ratio against a `single` record measured in the same repetition (as
numaemu bench does); repetitions are summarised as median [min, max]. The measured
(wall-clock) figure is always shown beside the model (emulated time, exact whatever the host's
load), because this host is shared and small.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from numaemu.cli import main as numaemu_main
from numaemu.model.timeline import IPI_NS, TEXT_POKE_NS
from numaemu.patching.textmem import MAX_BATCH
from numaemu.runtime.results import SCHEMA, host_metadata, write_json

__all__ = ["Options", "Pair", "Report", "Spread", "options", "pct", "record", "run", "text_poke_bp_model_ns", "write_results"]


@dataclass(frozen=True)
class Spread:
    """Median, min and max of one figure over repetitions."""

    median: float
    lo: float
    hi: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        xs = list(values)
        if not xs:
            raise ValueError("values must not be empty")
        return cls(statistics.median(xs), min(xs), max(xs))

    def gain(self) -> str:
        """A speedup shown as a gain: ``+6.3% [+6.0, +6.9]``."""
        return f"{pct(self.median - 1)} [{pct(self.lo - 1, sign_only=True)}, {pct(self.hi - 1, sign_only=True)}]"

    def to_json(self) -> dict:
        return {"median": self.median, "min": self.lo, "max": self.hi}


def pct(x: float, digits: int = 1, sign_only: bool = False) -> str:
    """``0.063`` -> ``+6.3%`` (``+6.3`` with `sign_only`, inside brackets)."""
    return f"{100 * x:+.{digits}f}" + ("" if sign_only else "%")


@dataclass(frozen=True)
class Pair:
    """One repetition's speedup of `rec` over `base`: measured (wall-clock throughput) and model
    (emulated time per request). Comparing records of two `numaemu run` invocations is only
    fair when both ran at the same ``--time-scale`` (callers pass it on)."""

    measured: float
    model: float

    @classmethod
    def of(cls, base: dict, rec: dict) -> Pair:
        return cls(
            rec["throughput_rps"] / base["throughput_rps"],
            base["emulated_us_per_request"] / rec["emulated_us_per_request"],
        )


@dataclass(frozen=True)
class Options:
    repeat: int
    duration: float | None  # seconds per policy; None for scripts that run no workload
    quick: bool
    out: Path


def options(doc: str, duration: float | None, repeat: int = 3, quick_duration: float = 0.2) -> Options:
    """The options every script takes (--duration only when `duration` is given); the script's
    docstring is its help."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=repeat, help=f"repetitions (default {repeat})")
    if duration is not None:
        ap.add_argument("--duration", type=float, default=duration, help=f"seconds per policy (default {duration:g})")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 repetition" + (f", {quick_duration:g} s per policy" if duration else ""))
    ap.add_argument("--out", type=Path, default=None,
                    help="directory for published-<name>.json/.txt (default results; with --quick, a temporary directory, "
                         "so a smoke test never overwrites the committed tables)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if duration is not None and args.duration <= 0:
        ap.error("--duration must be > 0")
    if args.quick:
        out = args.out or Path(tempfile.gettempdir()) / "numaemu-published-quick"
        return Options(1, quick_duration if duration is not None else None, True, out)
    return Options(args.repeat, args.duration if duration is not None else None, False, args.out or Path("results"))


def run(args: Sequence[str]) -> dict:
    """``numaemu run ARGS``; its own table goes to stderr (progress); returns its JSON document."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.json"
        with contextlib.redirect_stdout(sys.stderr):
            code = numaemu_main(["run", *args, "--json", str(path)])
        if code:
            raise SystemExit(f"numaemu run {shlex.join(args)} failed with exit code {code}")
        return json.loads(path.read_text())


def record(doc: dict, policy: str) -> dict:
    """The result record of `policy` in a `numaemu run` document."""
    return next(r for r in doc["results"] if r["policy"] == policy)


def text_poke_bp_model_ns(sites: int, calls: int, copies: int, n_nodes: int, *, ipi_ns: float = IPI_NS["x86_64"], poke_ns: float = TEXT_POKE_NS) -> float:
    """What numaemu's modeled delays alone charge for patching `sites` sites in `calls` equal
    text_poke_bp calls (numaemu/patching), leaving out numaemu's own Python work; at the timeline's
    x86 costs (numaemu/model/timeline.py) and scale 1, as a patch bench runs.

    Each call is split into batches of at most MAX_BATCH sites. Per batch: 3 syncs (after the
    INT3s, the tails, the first bytes; arch/x86/kernel/alternative.c), each waiting until the
    last of the other ``n_nodes - 1`` nodes takes its IPI: the mean of the largest of n - 1
    exponential delays of mean `ipi_ns` is ``ipi_ns * H(n - 1)``. Per site: three writes (INT3,
    tail, first byte) into each copy, `poke_ns` each (text_poke through poking_mm, repeated per
    replica by Kuzin's ``__text_poke``).
    """
    if sites < 1 or calls < 1 or calls > sites or copies < 1 or n_nodes < 1:
        raise ValueError("need 1 <= calls <= sites, copies >= 1 and n_nodes >= 1")
    batches = calls * math.ceil(sites / calls / MAX_BATCH)
    harmonic = sum(1 / k for k in range(1, n_nodes))
    return batches * 3 * ipi_ns * harmonic + 3 * sites * copies * poke_ns


class Report:
    """Lines printed to stdout and kept for the .txt file."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> None:
        """Columns aligned per `align`, one letter per column: ``l`` left, ``r`` right."""
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

        def fmt(row: Sequence[str]) -> str:
            cells = [str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(row, widths, align, strict=True)]
            return "  ".join(cells).rstrip()

        self(fmt(header))
        for row in rows:
            self(fmt(row))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def command_line() -> str:
    return "python " + shlex.join(sys.argv)


def write_results(name: str, opts: Options, report: Report, doc: dict, started: float) -> None:
    """Write ``published-<name>.json`` (the command, host, settings, `doc`) and ``.txt``."""
    full = {
        "schema": SCHEMA,
        "command": command_line(),
        "host": host_metadata(),
        "settings": {"repeat": opts.repeat, "duration_s": opts.duration, "quick": opts.quick},
        "elapsed_s": time.monotonic() - started,
        **doc,
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    json_path = write_json(full, str(opts.out / f"published-{name}.json"))
    txt_path = opts.out / f"published-{name}.txt"
    txt_path.write_text(f"$ {command_line()}\n" + report.text())
    print(f"wrote {json_path} and {txt_path}")
