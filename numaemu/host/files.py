"""The files a user names on the command line or in a script: checked before they are read.

A path that must be a regular file (an image, a trace, a topology file, an experiment, a results
file) is refused at once when it is a directory, a device or a FIFO: ``numaemu image /dev/zero``
would otherwise read forever, and a FIFO would block until a writer came.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from numaemu.errors import UsageError

__all__ = ["regular_file"]


def regular_file(path: str | os.PathLike[str], param: str) -> Path:
    """`path` if it names a regular file this process can read (symlinks followed), else
    `UsageError(param, reason)`."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise UsageError(param, f"'{p}' does not exist") from None
    except OSError as exc:
        raise UsageError(param, f"'{p}' cannot be read: {exc.strerror}") from None
    if stat.S_ISREG(mode):
        if not os.access(p, os.R_OK):
            raise UsageError(param, f"'{p}' cannot be read: permission denied")
        return p
    kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
    raise UsageError(param, f"'{p}' is {kind}, not a regular file")
