"""The command line: ``numaemu topology|image|run|stress|bench|plot|compare|calibrate|record|check``.

Each command's module parses its options and maps them onto the API (`numaemu.api`), which
validates them and runs. Bad input raises `UsageError`, which `main` prints as one line
``error: <parameter>: <rule>`` and exit code 2 (no traceback). A node failure at run time prints
``error: node N (pid P) failed in phase 'X': ...`` and exits 3; Ctrl-C exits 130. On every path
`main` waits for every process this command started before it returns (`lifetime`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence

from numaemu import __version__
from numaemu.cli import bench, calibrate, check, inspect, record, run, stress
from numaemu.cli.options import Parser
from numaemu.errors import NodeFailure, UsageError
from numaemu.measure.baselines import BaselineFailure
from numaemu.runtime.lifetime import Descendants

__all__ = ["main", "build_parser", "EXIT_USAGE", "EXIT_NODE_FAILURE", "EXIT_INTERRUPTED"]

EXIT_USAGE = 2
EXIT_NODE_FAILURE = 3
EXIT_INTERRUPTED = 130

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "topology": inspect.cmd_topology, "image": inspect.cmd_image, "run": run.cmd_run, "stress": stress.cmd_stress,
    "bench": bench.cmd_bench, "compare": bench.cmd_compare, "plot": bench.cmd_plot, "calibrate": calibrate.cmd_calibrate,
    "record": record.cmd_record, "check": check.cmd_check,
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="numaemu", description="Emulate a NUMA machine on a multicore host to study kernel-text replication.")
    parser.add_argument("--version", action="version", version=f"numaemu {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    inspect.add_parsers(sub)
    run.add_parser(sub)
    stress.add_parser(sub)
    calibrate.add_parser(sub)
    bench.add_parsers(sub)
    record.add_parser(sub)
    check.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args: argparse.Namespace | None = None
    # SIGINT and SIGTERM take one path, so the coordinator's cleanup runs either way (also when
    # a shell started us in the background with SIGINT ignored).
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    descendants = Descendants()  # every process started from here on has ended when main returns
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()  # the commands, on stdout; then the one error line
            raise UsageError("COMMAND", f"give a command: {', '.join(COMMANDS)} (numaemu COMMAND --help for its options)")
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (NodeFailure, BaselineFailure) as exc:  # a node, or a baseline's process, failed at run time
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NODE_FAILURE
    except KeyboardInterrupt:
        print("error: interrupted; every node stopped and every segment removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into `head` and the reader left: not an error of ours (Python docs,
        # "Note on SIGPIPE"); keep the interpreter from failing again on flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return getattr(args, "outcome", 0)
    finally:
        descendants.end()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
