"""``numaemu record [-o FILE] [-F HZ] -- COMMAND ...``: a command's kernel callchains, recorded
with perf (`numaemu.host.perf`), for ``--trace FILE``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from numaemu.api import params
from numaemu.errors import UsageError
from numaemu.host.perf import record

__all__ = ["add_parser", "cmd_record"]

DEFAULT_FREQUENCY = 4000  # Hz: perf's own default for -F; 250 us between samples


def add_parser(sub: Any) -> None:
    p = sub.add_parser("record", help="record a command's kernel callchains with perf, for --trace")
    p.add_argument("-o", "--output", default="numaemu.rec", metavar="FILE", help="the recording to write (default numaemu.rec)")
    p.add_argument("-F", "--frequency", default=str(DEFAULT_FREQUENCY), metavar="HZ", help=f"samples per second (default {DEFAULT_FREQUENCY})")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the command to run and record")


def cmd_record(args: argparse.Namespace) -> int:
    freq = params.check("--frequency", params.integer(1, 100_000, "must be an integer from 1 to 100000 (samples per second)"), args.frequency)
    command = list(args.argv)
    if command[:1] == ["--"]:
        command = command[1:]
    out = Path(args.output)
    if out.is_dir():
        raise UsageError("--output", f"'{out}' is a directory; give a file name")
    if not out.parent.is_dir():
        raise UsageError("--output", f"'{out.parent}' is not a directory")
    result = record(command, out, freq)
    rec = result.recording
    print(f"wrote {out}: {rec.samples:,} samples in {result.duration_s:.1f} s, {rec.kernel_share:.0%} in the kernel ({rec.kernel_samples:,}), "
          f"{len(rec.chains):,} distinct kernel callchains; kernel {result.release}")
    top = ", ".join(f"{name} {n / max(1, rec.kernel_samples):.0%}" for name, n in rec.leaf_counts().most_common(5))
    print(f"hottest kernel functions: {top}")
    return 0
