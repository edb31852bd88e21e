"""The leak check every multi-process test relies on (conftest.no_leaks) catches leaks: ours,
and those of a creator that died; it leaves alone segments of another live run on the host."""

from __future__ import annotations

import os
import subprocess
import sys

from numaemu.host.segments import PREFIX, Segment, list_segments

from .conftest import leaked_since


def test_leak_check_catches_our_own_and_orphaned_segments_only():
    before = set(list_segments())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    names = {
        "ours": f"{PREFIX}-{os.getpid()}-t0000001-test",
        "orphan": f"{PREFIX}-{dead}-t0000002-test",
        "foreign": f"{PREFIX}-1-t0000003-test",  # pid 1 is alive and not our descendant
    }
    segs = [Segment.create(name, 64) for name in names.values()]
    try:
        assert leaked_since(before) == {names["ours"], names["orphan"]}
    finally:
        for seg in segs:
            seg.close()
            seg.unlink()
    assert leaked_since(before) == set()
