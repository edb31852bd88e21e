"""Process lifetimes: a child that dies with the process that started it, and a CLI that outlives
every process it started. Both halves of one rule: no numaemu process outlives its parent, and
``numaemu`` returns only once all of them have ended, on every path (Ctrl-C included).

**A child learns of its parent's death from the kernel, never from a pid.** ``os.kill(pid, 0)``
(or ``/proc/PID``) says only that *some* process has that pid, and pids are reused: a coordinator
that died and was reaped may have given its pid to any new process. So (`ParentWatch`):

- a process whose parent *is* the process to watch (a node started by ``fork`` or ``spawn``: its
  coordinator; a ``bench --cluster`` task's process: its Dask worker) has the kernel send it a
  signal when that parent dies (prctl(2) PR_SET_PDEATHSIG). The kernel sends it when the parent
  *thread* exits, re-parenting the child to another thread of the same process if there is one:
  so the handler only believes it once ``getppid()`` is no longer the watched pid (the child has
  been re-parented to a reaper, which cannot have that pid: it was alive when the parent died).
  The same comparison, once right after the prctl, covers a parent that died before it.
- a node started by ``forkserver`` has the fork server for its parent, which outlives the
  coordinator (the nodes themselves hold its "alive" pipe), so it watches a pipe instead: the
  write end that multiprocessing keeps in the coordinator for each child (its parent sentinel,
  ``multiprocessing.parent_process().sentinel``) reads end-of-file once the coordinator is gone.
  (Under ``fork`` that pipe is no use: every node forked later inherits its siblings' write ends,
  and each node its own coordinator's read ends of the report pipes, so no end closes while a
  sibling lives.)

**The CLI outlives its descendants** (`Descendants`): at the start of `cli.main` it becomes a
child subreaper (PR_SET_CHILD_SUBREAPER), so that a process whose parent dies before it (a task's
process whose Dask worker was stopped) is re-parented to the CLI, not to init, and stays in view.
At exit it waits for every process started since (`GRACE_S`), SIGKILLs what is left and waits
again, and then stops multiprocessing's helper processes it started (the resource tracker that
spawning needs, the fork server), which otherwise end only once the CLI itself has exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing as mp
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing import forkserver, resource_tracker
from types import FrameType

import psutil

__all__ = ["ParentWatch", "watch_parent", "die_with_parent", "Descendants", "DEATH_SIGNAL", "GRACE_S", "KILL_WAIT_S"]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
# A node's parent-death signal: one it does not otherwise get (a node ignores SIGINT and SIGTERM,
# which a Ctrl-C sends the whole process group: the coordinator alone decides how to stop).
DEATH_SIGNAL = signal.SIGUSR1
GRACE_S = 5.0  # at the CLI's exit: for its descendants to end by themselves (the nodes' own stop takes < 1 s)
KILL_WAIT_S = 2.0  # after SIGKILL: for the kernel to finish them
WAIT_POLL_S = 0.005


def _prctl(option: int, arg: int | ctypes.c_int) -> bool:
    """prctl(2); False where it fails or there is none (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        value = ctypes.byref(arg) if isinstance(arg, ctypes.c_int) else ctypes.c_ulong(arg)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------------------------
# The child's side


class ParentWatch:
    """Whether `parent` (the pid of the process that started this one) has died, as the kernel
    tells it (see the module docstring): `gone()` is a flag test, or one poll(2) of a pipe with
    no timeout (forkserver), cheap enough for a node's time-gated checks. Make one with
    `watch_parent`, which arms it once per process."""

    def __init__(self, parent: int) -> None:
        self.parent = parent
        # "signal" or "pipe" (see the module docstring); "self": this is that process (a node's
        # code run in-process); "none": nothing to watch it with (not the main thread of a
        # multiprocessing child, or no prctl there), so gone() never says so.
        self.how = "none"
        self._gone = False
        self._pipe: select.poll | None = None
        self.signals = 0  # death signals received: one each time the parent *thread* went away
        if parent == os.getpid():
            self.how = "self"
            return
        mp_parent = mp.parent_process()
        if mp_parent is not None and mp.get_start_method(allow_none=True) == "forkserver":
            self._watch_pipe(mp_parent.sentinel)
        elif _arm_death_signal(DEATH_SIGNAL, _death_signalled):
            self.how = "signal"
            self._gone = os.getppid() != parent  # it died before the prctl: already re-parented
        elif mp_parent is not None:  # no prctl (not Linux): the pipe, under fork too (see above)
            self._watch_pipe(mp_parent.sentinel)

    def _watch_pipe(self, fd: int) -> None:
        self.how = "pipe"
        self._pipe = select.poll()
        self._pipe.register(fd, select.POLLIN)  # nothing is ever written: readable means EOF

    def gone(self) -> bool:
        if not self._gone and self._pipe is not None and self._pipe.poll(0):
            self._gone = True
        return self._gone

    def _signalled(self) -> None:
        if self.how == "signal":
            self.signals += 1
            if os.getppid() != self.parent:
                self._gone = True


_WATCHES: dict[tuple[int, int], ParentWatch] = {}  # (this process, the parent it watches); a fork child makes its own


def watch_parent(parent: int) -> ParentWatch:
    """This process's watch on `parent`, armed on first use (a node: at its first check)."""
    key = (os.getpid(), parent)
    watch = _WATCHES.get(key)
    if watch is None:
        watch = _WATCHES[key] = ParentWatch(parent)
    return watch


def _death_signalled(signum: int, frame: FrameType | None) -> None:
    for (pid, _), watch in list(_WATCHES.items()):
        if pid == os.getpid():
            watch._signalled()


def _arm_death_signal(sig: int, handler: Callable[[int, FrameType | None], None]) -> bool:
    """Install `handler` for `sig`, then ask the kernel for `sig` at the parent's death. False
    (and nothing changed) outside the main thread, where no handler can be installed, or
    without prctl."""
    if threading.current_thread() is not threading.main_thread():
        return False
    previous = signal.signal(sig, handler)
    if _prctl(PR_SET_PDEATHSIG, sig):
        return True
    signal.signal(sig, previous)
    return False


def die_with_parent(sig: int, pipe_fd: int) -> bool:
    """For a process whose only job is its parent's (a ``bench --cluster`` task's process): have
    the kernel send it `sig` when its parent dies (its handler for `sig` is already installed).
    Returns False if the parent is gone already: `pipe_fd`, the write end of a pipe whose only
    reader is the parent, has no reader any more (poll(2) reports POLLERR on such a write end).
    That also covers a parent that died before the prctl."""
    _prctl(PR_SET_PDEATHSIG, sig)
    p = select.poll()
    p.register(pipe_fd, 0)  # POLLERR and POLLHUP are reported whatever is asked
    return not any(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, ev in p.poll(0))


# --------------------------------------------------------------------------------------------
# The CLI's side


@dataclass(frozen=True)
class _Proc:
    pid: int
    started: float  # psutil's create_time: with the pid, one process (a pid alone may be reused)


def _descendants() -> list[psutil.Process]:
    try:
        return list(psutil.Process().children(recursive=True))
    except psutil.Error:
        return []


def _key(p: psutil.Process) -> _Proc | None:
    try:
        return _Proc(p.pid, p.create_time())
    except psutil.Error:
        return None


def _running(p: psutil.Process) -> bool:
    """Still running: a zombie has ended (only its parent has not asked yet)."""
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _helper_pids() -> set[int]:
    """multiprocessing's helper processes of this process, if running: the resource tracker
    and the fork server (both end when this process closes their pipe; see `Descendants`)."""
    pids = {getattr(resource_tracker._resource_tracker, "_pid", None), getattr(forkserver._forkserver, "_forkserver_pid", None)}
    return {p for p in pids if p is not None}


class Descendants:
    """Every process this one starts from now on, and theirs: `end` waits for them all. Make it
    at the start of the command and call `end` on every way out (see the module docstring)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.before = {k for k in map(_key, _descendants()) if k is not None}
        self.helpers_before = _helper_pids()
        was = ctypes.c_int(0)
        self.was_subreaper = _prctl(PR_GET_CHILD_SUBREAPER, was) and was.value != 0
        self.subreaper = _prctl(PR_SET_CHILD_SUBREAPER, 1)

    def _new(self, exclude: Iterable[int] = ()) -> list[psutil.Process]:
        skip = set(exclude)
        return [p for p in _descendants() if p.pid not in skip and (k := _key(p)) is not None and k not in self.before]

    def end(self, grace_s: float = GRACE_S) -> list[int]:
        """Wait up to `grace_s` for every process started since, SIGKILL those still running and
        wait `KILL_WAIT_S` more, then stop the helpers started since; reap the zombies this
        process adopted. A Ctrl-C meanwhile skips to the SIGKILL. Returns the pids killed."""
        if os.getpid() != self.pid:  # a fork child of the CLI, leaving: not its business
            return []
        helpers = _helper_pids() - self.helpers_before
        killed: list[int] = []
        try:
            if not _wait(lambda: self._new(helpers), grace_s):
                killed = _kill(self._new(helpers))
                _wait(lambda: self._new(helpers), KILL_WAIT_S)
            if helpers and not any(_running(p) for p in self._new(helpers)):
                _stop_helpers(helpers)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting politely
            killed = _kill(self._new())
            _wait(self._new, KILL_WAIT_S, interruptible=False)
        finally:
            self._reap()
            if self.subreaper and not self.was_subreaper:
                _prctl(PR_SET_CHILD_SUBREAPER, 0)
        return killed

    def _reap(self) -> None:
        """Reap the zombies among this process's own children that nobody else will (adopted
        orphans); a child that multiprocessing or subprocess started is theirs to reap, and is
        by now."""
        for p in self._new():
            try:
                if p.ppid() == self.pid and p.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(p.pid, os.WNOHANG)
            except (psutil.Error, ChildProcessError):
                pass


def _wait(procs: Callable[[], list[psutil.Process]], timeout_s: float, interruptible: bool = True) -> bool:
    """Poll `procs()` until none runs or `timeout_s` passes; True if none runs."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not any(_running(p) for p in procs()):
            return True
        if time.monotonic() >= deadline:
            return False
        try:
            time.sleep(WAIT_POLL_S)
        except KeyboardInterrupt:
            if interruptible:
                raise


def _kill(procs: list[psutil.Process]) -> list[int]:
    killed = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if _running(p):
                p.kill()
                killed.append(p.pid)
    return killed


def _stop_helpers(helpers: set[int]) -> None:
    """Stop the resource tracker and the fork server that this command started, as
    multiprocessing's own tests do: closing the pipe each reads ends it, and it is then reaped.
    Objects still registered with the tracker are unregistered first where they can be (a
    collection runs the finalizers of unreachable ones), so that it is not started again at
    exit just to be told of them."""
    gc.collect()
    for helper, pid in ((resource_tracker._resource_tracker, "_pid"), (forkserver._forkserver, "_forkserver_pid")):
        stop = getattr(helper, "_stop", None)  # CPython's, 3.8 to 3.13 (its tests stop them so)
        if stop is not None and getattr(helper, pid, None) in helpers:
            with contextlib.suppress(OSError, ChildProcessError):
                stop()
