"""Starting and stopping node processes: CPython's spawn launcher with one fix, and signal care.

`SpawnProcess` is ``multiprocessing``'s spawn Process with `_SpawnPopen` as its launcher (see
there); `signals_deferred` holds Ctrl-C while a fork is in flight; `stop_all` joins, then kills.
"""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from multiprocessing import context, popen_spawn_posix, reduction, resource_tracker, spawn, util
from multiprocessing.context import set_spawning_popen
from multiprocessing.process import BaseProcess

__all__ = ["SpawnProcess", "signals_deferred", "stop_all", "JOIN_TIMEOUT_S"]

JOIN_TIMEOUT_S = 5.0

class _SpawnPopen(popen_spawn_posix.Popen):
    """CPython's spawn launcher (``popen_spawn_posix.Popen._launch``, the same in 3.11 to 3.13),
    except that the parent closes its copy of the child's end of the config pipe *before* writing
    the config, not after. A node's config (its page table, the site table, ...) is far bigger
    than a pipe's buffer, so the write lasts until the child has read it all; if the child dies
    first (killed while Python starts), CPython's parent, still holding the pipe's only other
    reader itself, blocks in that write forever. Here the write fails (BrokenPipeError), and the
    coordinator reports the node dead in phase 'spawn'."""

    _fds: list[int]  # set by popen_spawn_posix.Popen.__init__; typeshed leaves it out

    def _launch(self, process_obj: BaseProcess) -> None:
        tracker_fd = resource_tracker.getfd()
        assert tracker_fd is not None  # getfd() starts the tracker first, so its fd is set
        self._fds.append(tracker_fd)
        prep_data = spawn.get_preparation_data(process_obj.name)  # CPython reads ._name, which .name returns
        fp = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, fp)
            reduction.dump(process_obj, fp)
        finally:
            set_spawning_popen(None)
        parent_r: int | None = None
        child_w: int | None = None
        child_r: int | None = None
        parent_w: int | None = None
        try:
            parent_r, child_w = os.pipe()
            child_r, parent_w = os.pipe()
            cmd = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=child_r)
            self._fds.extend([child_r, child_w])
            # typeshed has path: bytes; CPython's own _launch passes this str (fork_exec takes either)
            self.pid = util.spawnv_passfds(spawn.get_executable(), cmd, self._fds)  # type: ignore[arg-type]
            self.sentinel = parent_r
            for end in (child_r, child_w):  # the change: the child's ends are closed here
                os.close(end)
            child_r = child_w = None
            try:
                with open(parent_w, "wb", closefd=False) as f:
                    f.write(fp.getbuffer())
            except OSError as exc:
                os.waitpid(self.pid, 0)  # reap it: nobody else knows it
                exc.pid = self.pid  # type: ignore[attr-defined]  # OSError has no pid; the supervisor getattr()s it
                raise
        finally:
            fds_to_close = [fd for fd in (parent_r, parent_w) if fd is not None]
            self.finalizer = util.Finalize(self, util.close_fds, fds_to_close)  # type: ignore[attr-defined]  # private, not in typeshed
            for fd in (child_r, child_w):
                if fd is not None:
                    os.close(fd)


class SpawnProcess(context.SpawnProcess):  # the class that mp.get_context("spawn").Process names
    @staticmethod
    def _Popen(process_obj: BaseProcess) -> _SpawnPopen:
        return _SpawnPopen(process_obj)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done (they are delivered right after)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def stop_all(procs: Iterable[BaseProcess]) -> None:
    """Join every process (one deadline for all), then SIGKILL and reap those still alive."""
    procs = list(procs)
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(JOIN_TIMEOUT_S)
