"""An actor's stack as part of a state (explore/scheduler.py): each frame's code position and its
local values, so that two states with the same memory but actors at different points, or holding
different values read from it, are not taken for one.

Left out, because they decide no outcome under the explorer: locals holding wall-clock stamps or
spin counters (`_NOT_STATE`: a wait's ``tries`` and ``deadline``, a window's ``t0``), objects
(their state is the memory and buffers the system hashes beside), and arrays over
`_LOCAL_ARRAY_BYTES` (views of those memories: the text, the copies).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["stack_digest"]

_NOT_STATE = frozenset({"t0", "deadline", "now", "due", "end", "tries", "resumes", "ns", "delay", "check", "clock", "last_report"})


def stack_digest(h: Any, frame: Any) -> None:
    """An actor's stack into the digest: each frame's code position and its local values (numbers,
    strings, bytes, arrays and tuples or lists of them; objects are state only through the memory
    and buffers hashed beside)."""
    if frame is None or isinstance(frame, str):
        h.update(b"done" if frame is None else frame.encode())
        return
    parts: list[Any] = []
    f = frame
    while f is not None:
        parts.append(f.f_code)
        parts.append(f.f_lasti)
        for name, value in f.f_locals.items():
            if name in _NOT_STATE:
                continue
            kind = type(value)
            if kind in _SIMPLE:
                parts.append(name)
                parts.append(value)
            elif kind is np.ndarray and value.nbytes <= _LOCAL_ARRAY_BYTES:  # larger: a view of a memory hashed beside
                parts.append(name)
                parts.append(value.tobytes())
            elif (kind is list or kind is tuple) and len(value) <= 64 and all(type(v) in _SIMPLE for v in value):
                parts.append(name)
                parts.append(tuple(value))
        f = f.f_back
    h.update(repr([id(p) if type(p) is _CODE else p for p in parts]).encode())


_LOCAL_ARRAY_BYTES = 4096
_SIMPLE = frozenset({int, float, str, bytes, bool, type(None), np.int64, np.int8, np.uint8, np.bool_})
_CODE = type(stack_digest.__code__)
