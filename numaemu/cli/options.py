"""What every command shares: the parser whose errors are one line, the options of the machine
(topology, image, design), output paths checked before any work, and writing documents.

Options are parsed here and mapped onto the API's records (`numaemu.api.config`), which validate
them: the command line holds no rule of its own beyond the syntax of each option's text.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import IO, Any

from numaemu.api import params
from numaemu.api.config import MachineConfig
from numaemu.errors import UsageError
from numaemu.model.hardware_presets import PROFILES
from numaemu.runtime.results import write_json

__all__ = [
    "Parser", "add_topology_options", "add_image_options", "add_design_options", "machine_options",
    "output_path", "write_doc", "write_partial", "log_for",
]


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one `UsageError` line like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        param, _, rule = message.partition(": ")
        if message.startswith("argument ") and rule:
            raise UsageError(param.removeprefix("argument ").split("/")[-1], rule)
        if param == "the following arguments are required":  # name the first one missing
            usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
            raise UsageError(rule.split(", ")[0], f"is required; usage: {usage}")
        if param == "ambiguous option":  # --dur could match --duration, --delays
            option, _, matches = rule.partition(" could match ")
            raise UsageError(option.split("=")[0], f"is ambiguous: it could be {matches}")
        raise UsageError(self.prog, message)


def add_topology_options(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("topology", nargs="?", default="2s-xeon", metavar="TOPO", help="preset, spec, file or 'host' (default 2s-xeon)")
    else:
        p.add_argument("--topology", default="2s-xeon", help="preset (2s-xeon, kunpeng920, epyc-nps4), numa=fake-style spec (4, 2:10,21,21,10), .json/.toml file, or 'host' (default 2s-xeon)")
    p.add_argument("--host-cpus", help="host CPUs for each node, ';'-separated cpulists, e.g. '0-1;2-3' (default: automatic)")
    p.add_argument("--local-ns", type=params.LOCAL_NS, help="derive the latency matrix from the distances with this local latency (ns)")
    p.add_argument("--sysfs-root", default="/sys", help=argparse.SUPPRESS)


def add_image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", metavar="PATH", help="an ELF vmlinux or a compressed vmlinuz/bzImage (x86-64); default: the embedded synthetic image")
    p.add_argument("--image-scale", type=params.image_scale, default=1.0, help="shrink the embedded image by this factor (0, 1] (for tests; default 1)")
    p.add_argument("--symbols", metavar="FILE", help="the image's symbols: its kernel's System.map, or /proc/kallsyms read as root (default: the ELF .symtab, if any)")


def add_design_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pt-style", default="none",
                   help="page-table design: arm64 (King: per-node lower tables, 4 KiB pages), x86 (Kuzin: per-node PGD..PMD, 2 MiB pages) or none (not modelled, default)")
    p.add_argument("--hardware", metavar="PROFILE",
                   help="the caches, TLBs and memory charged: " + ", ".join(PROFILES) + " (default: the topology's own; simple is the first model's direct-mapped cache)")
    p.add_argument("--kaslr", action="store_true", help="randomise the image's virtual base from --seed (x86 design only: King's arm64 series disables KASLR)")
    p.add_argument("--replicas-every", type=params.REPLICAS_EVERY, default=1, metavar="K",
                   help="replicate: a copy on every K-th node only (IRIX-style), the others map the nearest copy (default 1: every node)")


def machine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `MachineConfig` fields a command's options give (those it has; each option's dest is
    the field's name)."""
    return {f.name: getattr(args, f.name) for f in fields(MachineConfig) if getattr(args, f.name, None) is not None}


def log_for(json_path: str) -> IO[str]:
    """Where a command's report goes: stdout, unless its JSON does."""
    return sys.stderr if json_path == "-" else sys.stdout


def output_path(path: str | None, command: str = "run", param: str = "--json") -> str:
    """An output file given as `param` (JSON, CSV, PNG), checked writable before any work;
    None: the default JSON path results/<command>-<time>.json. ``-`` is standard output."""
    if path is None:
        default = os.path.join("results", time.strftime(f"{command}-%Y%m%d-%H%M%S.json"))
        if os.path.isdir("results"):  # else write_json makes it, in the working directory
            _try_writing(Path(default), default, param)
        elif os.path.exists("results") or not os.access(".", os.W_OK):
            raise UsageError(param, f"the default '{default}' cannot be written here; give --json PATH")
        return default
    if path == "-":
        return path
    if not path.strip():
        raise UsageError(param, "is empty; give a file path")
    p = Path(path)
    if p.is_dir():
        raise UsageError(param, f"'{path}' is a directory; give a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise UsageError(param, f"'{path}': directory '{parent}' {what}")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(param, f"'{path}' is not writable")
    _try_writing(p, path, param)
    return path


def _try_writing(p: Path, path: str, param: str) -> None:
    """Open the output as it will be written, now, so a read-only file system (or, for root,
    whom os.access never refuses, /proc and /sys) fails before the run, not after it. A file
    made for the test is removed at once."""
    if p.exists() and not p.is_file():
        return  # a device or a FIFO (--json /dev/null): written through, as it is
    try:
        # write_json writes PATH.tmp next to it and renames it over PATH: try that name.
        probe = p.with_name(p.name + ".tmp")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        return  # PATH.tmp of an earlier run: the directory takes files
    except OSError as exc:
        raise UsageError(param, f"'{path}' is not writable: {exc.strerror}") from None


def write_doc(doc: dict[str, Any], json_path: str, log: IO[str]) -> None:
    """Write a command's JSON; say where on the log, unless it went to stdout itself."""
    where = write_json(doc, json_path)
    if where != "stdout":
        print(f"wrote {where}", file=log)


def write_partial(exc: BaseException, json_path: str, log: IO[str], summary: Callable[[dict[str, Any]], str]) -> None:
    """A run stopped early (a node failed: `NodeFailure`; Ctrl-C or SIGTERM: KeyboardInterrupt):
    say and write what it had produced, the API's record on ``exc.partial`` (already marked
    with ``failure`` or ``interrupted``, `records.mark_stopped`), before `main` prints the one
    error line. Nothing to write if the run produced nothing."""
    partial = getattr(exc, "partial", None)
    if partial is None:
        return
    doc = {**partial.to_json(), "argv": sys.argv[1:]}
    print(summary(doc), file=log)
    write_doc(doc, json_path, log)
