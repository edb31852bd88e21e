#!/usr/bin/env python3
"""Repeat `numaemu run` and report medians, so one noisy run on a shared host decides nothing.

Each repetition runs every policy in fresh node processes, one after another, and each speedup is
a ratio against `single` measured in that same repetition. Prints, per policy: the median
measured speedup with its range, the median predicted (model) speedup, the remote-fetch share and
the pacing overrun. Any `numaemu run` option may follow `--`.

    python scripts/repeat_run.py --repeat 5 -- --duration 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from numaemu.cli import main as numaemu_main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="write the per-repetition records and medians here")
    ap.add_argument("run_args", nargs="*", help="options for numaemu run (after --)")
    args = ap.parse_args()
    reps = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            out = Path(tmp) / f"rep{i}.json"
            code = numaemu_main(["run", *args.run_args, "--json", str(out)])
            if code:
                return code
            reps.append(json.loads(out.read_text()))
    policies = [r["policy"] for r in reps[0]["results"]]
    summary = {}
    print(f"\n{args.repeat} repetitions of: numaemu run {' '.join(args.run_args)}")
    print(f"{'policy':<11}{'speedup median':>15}{'  [min, max]':<18}{'model':>7}{'remote':>8}{'overrun':>9}")
    for pol in policies:
        recs = [next(r for r in rep["results"] if r["policy"] == pol) for rep in reps]
        sp = [r["speedup_vs_single"] for r in recs]
        model = [r["predicted_speedup_vs_single"] for r in recs]
        row = {
            "speedup_median": statistics.median(sp),
            "speedup_min": min(sp),
            "speedup_max": max(sp),
            "model_median": statistics.median(model),
            "remote_fetch_share_median": statistics.median(r["remote_fetch_share"] for r in recs),
            "pacing_overrun_pct_max": max(r["pacing_overrun_pct"] for r in recs),
        }
        summary[pol] = row
        print(
            f"{pol:<11}{row['speedup_median']:>15.3f}  [{row['speedup_min']:.3f}, {row['speedup_max']:.3f}]   "
            f"{row['model_median']:>7.3f}{100 * row['remote_fetch_share_median']:>7.1f}%{row['pacing_overrun_pct_max']:>8.1f}%"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"command": sys.argv, "summary": summary, "runs": reps}, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
