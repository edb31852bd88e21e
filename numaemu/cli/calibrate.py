"""``numaemu calibrate``: this host's figures and every goal, met or not (`numaemu.api.calibrate`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from numaemu.api.calibrate import calibrate
from numaemu.cli.options import log_for, output_path, write_doc
from numaemu.runtime.policy_run import START_METHODS

__all__ = ["add_parser", "cmd_calibrate"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("calibrate", help="measure this host: clock, busy-wait accuracy, raw baselines, and numaemu's own costs against them")
    p.add_argument("--quick", action="store_true", help="fewer samples (a few seconds; for tests)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="where the JSON goes ('-' for stdout; default results/calibrate-<time>.json)")
    p.add_argument("--start-method", default=None,
                   help=f"multiprocessing start method of the baselines' and the patch round's processes: {', '.join(START_METHODS)} (default: Python's)")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from numaemu.measure.calibration_report import format_calibration

    json_path = output_path(args.json_path, "calibrate")
    log = log_for(json_path)
    doc = calibrate(quick=args.quick, start_method=args.start_method, log=lambda text: print(text, file=log)).to_json()
    print(format_calibration(doc["results"]), file=log)
    write_doc({**doc, "argv": sys.argv[1:]}, json_path, log)
    return 0
