"""``numaemu record``: run a command under ``perf record -g`` and keep its kernel callchains.

perf does the sampling; numaemu keeps what it needs and writes it in its own compact format
(`numaemu.model.recording.recording_document`). The event is the software ``cpu-clock``, which
every kernel has: hosts without a PMU (most VMs, as here) have nothing else, and a hardware
event's skid would not help a text footprint. perf samples every CPU (``-a``, see `record`) and
numaemu keeps the command's process tree; that needs root or ``perf_event_paranoid`` <= 0, and
without it perf would fall back to user-only samples without a word, so the permission is
checked first, and a recording with no kernel sample is refused.

The recording kernel's sizes of the functions touched come from /proc/kallsyms (a symbol runs
to the next one, as kallsyms_lookup_size_offset() computes it); a stand-in on another image gets
that size (`numaemu.model.replay`).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from numaemu.errors import UsageError
from numaemu.model.recording import Recording, command_samples, parse_perf_script, recording_document
from numaemu.model.symbols import parse_symbol_map

__all__ = ["RecordResult", "check_perf", "record"]

EVENT = "cpu-clock"
PARAM = "record"


@dataclass(frozen=True)
class RecordResult:
    path: Path
    recording: Recording
    duration_s: float
    release: str


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def check_perf() -> str:
    """The perf binary, or a `UsageError` naming why kernel samples cannot be had and the fix."""
    perf = shutil.which("perf")
    if perf is None:
        raise UsageError(PARAM, "perf is not installed: apt-get install linux-perf (Debian), linux-tools-$(uname -r) (Ubuntu), or dnf install perf (Fedora)")
    lockdown = _read("/sys/kernel/security/lockdown")
    if lockdown and "[confidentiality]" in lockdown:
        raise UsageError(PARAM, "the kernel is locked down (lockdown=confidentiality) and refuses perf kernel samples; boot without it (lockdown= on the command line, or Secure Boot off)")
    paranoid = _read("/proc/sys/kernel/perf_event_paranoid")
    if paranoid is None:
        raise UsageError(PARAM, "this kernel has no perf events (/proc/sys/kernel/perf_event_paranoid is missing: CONFIG_PERF_EVENTS off, or a container without it)")
    if os.geteuid() != 0 and int(paranoid) > 0:
        raise UsageError(PARAM, f"system-wide kernel samples need perf_event_paranoid <= 0 (it is {paranoid}): run as root, or sysctl -w kernel.perf_event_paranoid=0")
    return perf


def record(command: Sequence[str], output: Path, frequency: int) -> RecordResult:
    """Run `command` under perf, convert, write `output`; progress on stderr."""
    if not command:
        raise UsageError("COMMAND", "give the command to record after --, e.g. numaemu record -o getpid.rec -- python3 -c '...'")
    if shutil.which(command[0]) is None and not Path(command[0]).is_file():
        raise UsageError("COMMAND", f"cannot run '{command[0]}': no such command")
    perf = check_perf()
    with tempfile.TemporaryDirectory(prefix="numaemu-record-") as tmp:
        data = Path(tmp) / "perf.data"
        # System-wide (-a) at a fixed period (-c, ns for cpu-clock), keeping the command's own
        # process tree afterwards (`command_samples`): sampled per task (perf's default, inherited
        # by children), a task shorter than one period is never sampled, so fork's children and
        # their parent gave 86 samples in 3.3 s here, against 3,706 a second system-wide.
        period = max(1, 1_000_000_000 // frequency)
        argv = [perf, "record", "-q", "-a", "-e", EVENT, "-c", str(period), "-g", "-o", str(data), "--", *command]
        start = time.monotonic()
        # perf's stderr, and so the command's, goes to a file: a pipe read only at the end would
        # fill at 64 KiB and block a command that writes more to stderr.
        err_path = Path(tmp) / "perf.err"
        with err_path.open("w") as err_file:
            proc = subprocess.Popen(argv, stderr=err_file, text=True)
        with tqdm(desc=f"recording {command[0]}", unit="s", bar_format="{desc}: {elapsed} {postfix}", leave=False, disable=None) as bar:
            while proc.poll() is None:
                time.sleep(0.25)
                bar.set_postfix_str(f"{data.stat().st_size / 1e6:.1f} MB of samples" if data.exists() else "")
                bar.update(0)
        duration = time.monotonic() - start
        err = err_path.read_text(errors="replace")
        _check_exit(proc.returncode, err, command, data)
        text = _script(perf, data)
    rec = parse_perf_script(text, str(output))
    if not rec.callchains:
        raise UsageError(PARAM, "perf recorded no callchains (perf record -g); this kernel or perf build cannot unwind kernel stacks")
    sizes = _kallsyms_sizes({f.name for chain in rec.chains for f in chain if f.name is not None})
    release = os.uname().release
    meta: dict[str, Any] = {
        "kernel": _read("/proc/version"),
        "release": release,
        "command": list(command),
        "event": EVENT,
        "frequency_hz": frequency,
        "duration_s": round(duration, 3),
        "recorded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    rec = Recording(rec.source, rec.format, rec.chains, rec.counts, rec.sequence, rec.samples, sizes, True, meta)
    doc = recording_document(rec, meta)
    output.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return RecordResult(output, rec, duration, release)


def _check_exit(code: int, err: str, command: Sequence[str], data: Path) -> None:
    """perf's failures as one line each: the command could not start, perf was refused."""
    if "Failed to collect" in err or "No such file or directory" in err and not data.exists():
        raise UsageError("COMMAND", f"cannot run '{' '.join(command)}': {err.strip().splitlines()[-1]}")
    if "perf_event_paranoid" in err or "Access to performance monitoring" in err or "Permission denied" in err:
        raise UsageError(PARAM, "perf was refused kernel samples (perf_event_paranoid or a container's seccomp profile): run as root, or with perf_event_paranoid <= 0")
    if "Function not implemented" in err or "not supported" in err and not data.exists():
        raise UsageError(PARAM, "perf_event_open is not available here (a container without the syscall, or a kernel without CONFIG_PERF_EVENTS)")
    if not data.exists():
        last = err.strip().splitlines()[-1] if err.strip() else f"exit status {code}"
        raise UsageError(PARAM, f"perf record failed: {last}")
    # Otherwise the command's own exit status does not matter: its samples are what was asked for.


def _script(perf: str, data: Path) -> str:
    """perf script's default output of `data`, read with a progress bar."""
    argv = [perf, "script", "-i", str(data), "--show-task-events", "-F", "comm,pid,tid,time,period,event,ip,sym,symoff,dso"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    parts = []
    with tqdm(desc="converting", unit="B", unit_scale=True, leave=False, disable=None) as bar:
        for line in proc.stdout:
            parts.append(line)
            bar.update(len(line))
    if proc.wait() != 0:
        raise UsageError(PARAM, f"perf script failed on {data} (exit status {proc.returncode})")
    return command_samples("".join(parts))


def _kallsyms_sizes(names: set[str]) -> dict[str, int]:
    """The running kernel's size of each of `names`, from /proc/kallsyms (empty where its
    addresses are hidden: kptr_restrict)."""
    text = _read("/proc/kallsyms")
    if not text:
        return {}
    try:
        table = parse_symbol_map(text, "/proc/kallsyms")
    except UsageError:
        return {}
    out = {}
    for name, size in zip(table.names, table.sizes.tolist(), strict=True):
        if name in names and name not in out and size > 0:
            out[name] = int(size)
    return out
