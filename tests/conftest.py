"""Shared fixtures: every test that may start node processes checks it left nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from numaemu.host.segments import list_segments

ROOT = Path(__file__).resolve().parent.parent


def numaemu(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "numaemu", *args], capture_output=True, text=True, timeout=timeout, env=env)


def _ours_or_orphaned(segment: str) -> bool:
    """A segment this test must answer for: made by this process or a child of it, or left by
    a creator that is gone. Segments of other live numaemu runs on the host (a benchmark in
    another shell) are theirs. Names are ``numaemu-<creator pid>-<token>-<kind>`` (memory.py)."""
    import psutil

    try:
        pid = int(segment.split("-")[1])
    except (IndexError, ValueError):
        return True
    if pid == os.getpid():
        return True
    try:
        creator = psutil.Process(pid)
        return creator.status() == psutil.STATUS_ZOMBIE or os.getpid() in {p.pid for p in creator.parents()}
    except psutil.NoSuchProcess:
        return True


def leaked_since(before: set[str]) -> set[str]:
    return {name for name in set(list_segments()) - before if _ours_or_orphaned(name)}


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves a numaemu segment in /dev/shm or a child process running."""
    import psutil

    before = set(list_segments())
    yield
    left = leaked_since(before)
    assert not left, f"segments left in /dev/shm: {sorted(left)}"
    children = [c for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
    # multiprocessing's own forkserver and resource tracker outlive runs by design and exit with
    # this process; no node process may.
    stray = [c for c in children if not any(k in " ".join(c.cmdline()) for k in ("forkserver", "resource_tracker"))]
    assert not stray, f"processes left running: {[(c.pid, c.cmdline()) for c in stray]}"
