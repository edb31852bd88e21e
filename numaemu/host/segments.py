"""Emulated physical memory and the control block, in POSIX shared memory.

Lifecycle (as in CPython's ``multiprocessing.shared_memory``): the coordinator creates every
segment and is the only process that unlinks; workers attach and close, never unlink. Segments are
files in ``/dev/shm`` opened directly (glibc's ``shm_open`` is exactly that), not through
``SharedMemory``: before Python 3.13's ``track=False`` every attaching process registers the
segment with the resource tracker, which then unlinks it behind our back or warns of leaks
(BACKGROUND.md s.5).

Names are ``numaemu-<creator pid>-<token>-<kind>``: a segment whose creator is dead is a leak
from a killed run, and `prune_stale` removes it at the next start.

Byte layout of the ``mem`` segment, one per run, partitioned by node:

    offset 0                                  node 0 partition
    part_offset[n] (2 MiB aligned)            node n partition:
        + 0                                       image frames: hosted pages x 4096 bytes, in the
                                                  order of `Placement.hosted[n]`
        + image_bytes[n]                          user data: USER_DATA_BYTES
    total = part_offset[n_nodes]

Each node's worker writes its own partition before the run (first touch: on a real NUMA host
tmpfs pages land on the node of the CPU that first writes them).

The ``master`` segment holds the master image: `KernelImage.data`, byte for byte.

The ``ctl`` segment (see CONTROL_HEADER, NODE_SLOT, TASK_SLOT, JOURNAL_ENTRY):

    0                                    header, 64 bytes
    64                                   n_nodes node slots, 64 bytes each
    64 + 64 * n_nodes                    n_tasks task slots, 32 bytes each
    ... + 32 * n_tasks                   n_nodes x n_tasks journal entries, 32 bytes each: each
                                         node's undo record of the task slots its batch in flight
                                         is updating (see `worker.run_batch`), so a node killed
                                         half-way through an update can be rolled back
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "SHM_DIR",
    "PREFIX",
    "USER_DATA_BYTES",
    "Segment",
    "MemoryLayout",
    "Control",
    "segment_name",
    "prune_stale",
    "list_segments",
    "WHERE",
    "STATE_RECOVER",
]

SHM_DIR = Path("/dev/shm")
PREFIX = "numaemu"
PARTITION_ALIGN = 2 << 20
USER_DATA_BYTES = 8 << 20  # each node's user data: larger than the emulated cache

CONTROL_MAGIC = 0x6E756D61656D7531  # "numaemu1"
CONTROL_VERSION = 2
CONTROL_HEADER = np.dtype(
    [
        ("magic", "<u8"),
        ("version", "<u4"),
        ("n_nodes", "<u4"),
        ("n_tasks", "<u4"),
        ("state", "<u4"),  # STATE_* below, written by the coordinator
        ("start_ns", "<i8"),  # perf_counter_ns at which every node starts running
        ("end_ns", "<i8"),  # duration mode: when every node stops; 0 in request mode
        ("coordinator_pid", "<i8"),
        ("recover_gen", "<i8"),  # recoveries begun (STATE_RECOVER); a node parks with this number
        ("pad", "V8"),
    ]
)
NODE_SLOT = np.dtype(
    [
        ("pid", "<i8"),
        ("phase", "<u4"),  # PHASES index, written by the node
        ("where", "<u4"),  # WHERE index: what the node is inside of within its phase (patching)
        ("heartbeat_ns", "<i8"),
        ("requests", "<i8"),
        ("parked", "<i8"),  # the recover_gen this node is parked for (stress --recover)
        ("journal", "<i8"),  # task entries of its undo journal in force (0: no batch in flight)
        ("fault_ns", "<i8"),  # perf_counter_ns when the test fault hook killed it (0: never)
        ("pad", "V8"),
    ]
)
TASK_SLOT = np.dtype(
    [
        ("owner", "<i4"),  # node running the task; only the owner writes the slot
        ("migrations", "<i4"),
        ("done", "<i8"),  # requests completed
        ("budget", "<i8"),  # requests left; -1 = unlimited (duration mode)
        ("checksum", "<u8"),  # sum (mod 2**64) of the checksums of its requests
    ]
)
# One node's undo record of one task slot: the values before the batch in flight.
JOURNAL_ENTRY = np.dtype([("task", "<i8"), ("done", "<i8"), ("budget", "<i8"), ("checksum", "<u8")])
assert CONTROL_HEADER.itemsize == 64 and NODE_SLOT.itemsize == 64 and TASK_SLOT.itemsize == 32 and JOURNAL_ENTRY.itemsize == 32

# STATE_RECOVER: a node died and is being replaced (--recover); every other node parks at its
# next wait until the coordinator sets STATE_RUN again (see stress.py and recovery.py).
STATE_SETUP, STATE_RUN, STATE_ABORT, STATE_RECOVER = 0, 1, 2, 3
PHASES = ("spawn", "attach", "fill", "ready", "run", "report", "done")
# Finer than the phase, for the failure message: what a patching node was inside of.
WHERE = ("", "holding text_mutex", "inside a text_poke_bp sync", "inside a stop_machine rendezvous", "inside an INT3 handler", "inside a sync")


def segment_name(kind: str, token: str) -> str:
    return f"{PREFIX}-{os.getpid()}-{token}-{kind}"


def new_token() -> str:
    return secrets.token_hex(4)


class Segment:
    """A POSIX shared-memory segment. `create` in the coordinator, `attach` in workers.

    close() unmaps and is idempotent; unlink() removes the name, once, by the creator only.
    """

    def __init__(self, name: str, size: int, buf: mmap.mmap, owner: bool) -> None:
        self.name = name
        self.size = size
        self.buf: mmap.mmap | None = buf
        self.owner = owner
        self._unlinked = False

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        path = SHM_DIR / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            buf = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        return cls(name, size, buf, owner=True)

    @classmethod
    def attach(cls, name: str) -> Segment:
        fd = os.open(SHM_DIR / name, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            buf = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, size, buf, owner=False)

    def array(self, dtype: np.dtype | type = np.uint8, offset: int = 0, count: int = -1) -> np.ndarray:
        assert self.buf is not None, "segment is closed"
        return np.frombuffer(self.buf, dtype=dtype, count=count, offset=offset)

    def close(self) -> None:
        if self.buf is not None:
            # BufferError: numpy views still export the buffer; the mapping goes when they do.
            with contextlib.suppress(BufferError):
                self.buf.close()
            self.buf = None

    def unlink(self) -> None:
        if self.owner and not self._unlinked:
            self._unlinked = True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(SHM_DIR / self.name)


@dataclass(frozen=True)
class MemoryLayout:
    """Offsets of each node's partition in the ``mem`` segment (see the module docstring)."""

    image_bytes: tuple[int, ...]
    part_offset: tuple[int, ...]  # n_nodes + 1 entries; the last is the segment size
    user_bytes: int = USER_DATA_BYTES

    @classmethod
    def for_nodes(cls, image_bytes: tuple[int, ...], user_bytes: int = USER_DATA_BYTES) -> MemoryLayout:
        offsets = [0]
        for size in image_bytes:
            offsets.append(offsets[-1] + -(-(size + user_bytes) // PARTITION_ALIGN) * PARTITION_ALIGN)
        return cls(tuple(image_bytes), tuple(offsets), user_bytes)

    @property
    def size(self) -> int:
        return self.part_offset[-1]

    def user_offset(self, node: int) -> int:
        return self.part_offset[node] + self.image_bytes[node]


class Control:
    """Typed views of the ``ctl`` segment."""

    def __init__(self, seg: Segment, n_nodes: int, n_tasks: int) -> None:
        self.header = seg.array(CONTROL_HEADER, 0, 1)[0:1]
        self.nodes = seg.array(NODE_SLOT, CONTROL_HEADER.itemsize, n_nodes)
        tasks_at = CONTROL_HEADER.itemsize + NODE_SLOT.itemsize * n_nodes
        self.tasks = seg.array(TASK_SLOT, tasks_at, n_tasks)
        journal_at = tasks_at + TASK_SLOT.itemsize * n_tasks
        self.journal = seg.array(JOURNAL_ENTRY, journal_at, n_nodes * n_tasks).reshape(n_nodes, n_tasks)

    @staticmethod
    def size(n_nodes: int, n_tasks: int) -> int:
        return (
            CONTROL_HEADER.itemsize + NODE_SLOT.itemsize * n_nodes + TASK_SLOT.itemsize * n_tasks
            + JOURNAL_ENTRY.itemsize * n_nodes * n_tasks
        )

    def get(self, field: str) -> int:
        return int(self.header[field][0])

    def set(self, field: str, value: int) -> None:
        self.header[field] = value


def list_segments(shm_dir: Path = SHM_DIR) -> list[str]:
    try:
        return sorted(p.name for p in shm_dir.iterdir() if p.name.startswith(PREFIX + "-"))
    except FileNotFoundError:
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune_stale(shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove segments whose creating process no longer exists; return their names."""
    removed = []
    for name in list_segments(shm_dir):
        try:
            pid = int(name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            try:
                (shm_dir / name).unlink()
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed
