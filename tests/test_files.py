"""Files named on the command line (numaemu.host.files): anything but a regular file is refused
before it is opened, with one error line; a device or a FIFO would otherwise be read forever or
block until a writer came.

`regular_file` only stats, so it is called in this process. Whatever would open the file (an
image, a trace, a topology file) runs in a child with a timeout, so that a regression hangs a
child, not the test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from numaemu.errors import UsageError
from numaemu.host.files import regular_file

from .conftest import ROOT, numaemu

DEV_ZERO = "/dev/zero"
needs_dev_zero = pytest.mark.skipif(not os.path.exists(DEV_ZERO), reason="no /dev/zero here")


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def _rule(path: str | os.PathLike[str], param: str = "--image") -> str:
    with pytest.raises(UsageError) as info:
        regular_file(path, param)
    assert info.value.parameter == param
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# regular_file


def test_a_regular_file_is_returned(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(b"x")
    assert regular_file(str(path), "--image") == path
    link = tmp_path / "link"
    link.symlink_to(path)
    assert regular_file(link, "--image") == link  # symlinks are followed


def test_a_directory_is_refused_as_a_read_would_say(tmp_path: Path) -> None:
    assert _rule(tmp_path, "--topology") == f"--topology: cannot read '{tmp_path}': Is a directory"


def test_a_missing_file_is_refused_as_a_read_would_say(tmp_path: Path) -> None:
    missing = tmp_path / "nosuch.trace"
    assert _rule(missing, "--trace") == f"--trace: cannot read '{missing}': No such file or directory"


def test_a_fifo_is_refused(fifo: Path) -> None:
    assert _rule(fifo) == f"--image: '{fifo}' is a FIFO, not a regular file"


@needs_dev_zero
def test_a_device_is_refused(tmp_path: Path) -> None:
    assert _rule(DEV_ZERO) == f"--image: '{DEV_ZERO}' is a device, not a regular file"
    link = tmp_path / "zero"
    link.symlink_to(DEV_ZERO)
    assert _rule(link) == f"--image: '{link}' is a device, not a regular file"


def test_the_name_is_given_as_the_user_wrote_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _rule("./nosuch.json", "--topology") == "--topology: cannot read './nosuch.json': No such file or directory"


# ---------------------------------------------------------------------------------------------
# The readers refuse before they open


def _in_child(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env)


def _refusal(call: str) -> str:
    proc = _in_child(
        "from numaemu.errors import UsageError\n"
        "from numaemu.host.files import load_image, load_topology, read_trace\n"
        f"try:\n    {call}\nexcept UsageError as e:\n    print(e)\nelse:\n    print('accepted')\n"
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@needs_dev_zero
def test_load_image_refuses_a_device_before_reading() -> None:
    assert _refusal(f"load_image({DEV_ZERO!r})") == f"--image: '{DEV_ZERO}' is a device, not a regular file"


def test_each_reader_refuses_a_fifo(tmp_path: Path) -> None:
    for name, call, param in [
        ("vmlinuz", "load_image({!r})", "--image"),
        ("kernel.trace", "read_trace({!r})", "--trace"),
        ("topo.json", "load_topology({!r})", "--topology"),
    ]:
        path = tmp_path / name
        os.mkfifo(path)
        assert _refusal(call.format(str(path))) == f"{param}: '{path}' is a FIFO, not a regular file"


# ---------------------------------------------------------------------------------------------
# The command line


def _one_error_line(proc: subprocess.CompletedProcess[str], expect: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"error: {expect}"]
    assert proc.stdout == ""


@needs_dev_zero
def test_cli_image_dev_zero_is_refused_at_once() -> None:
    start = time.monotonic()
    proc = numaemu("image", DEV_ZERO, timeout=10)
    elapsed = time.monotonic() - start
    _one_error_line(proc, f"--image: '{DEV_ZERO}' is a device, not a regular file")
    assert elapsed < 2.0, f"took {elapsed:.2f} s (interpreter start included)"


def test_cli_image_fifo_is_refused_at_once(fifo: Path) -> None:
    _one_error_line(numaemu("image", str(fifo), timeout=10), f"--image: '{fifo}' is a FIFO, not a regular file")


def test_cli_image_directory_and_missing_file(tmp_path: Path) -> None:
    _one_error_line(numaemu("image", str(tmp_path), timeout=30), f"--image: '{tmp_path}' is a directory; give a kernel image file")
    missing = tmp_path / "nosuch"
    _one_error_line(numaemu("image", str(missing), timeout=30), f"--image: '{missing}': no such file")
