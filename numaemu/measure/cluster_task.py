"""``bench --cluster``, the worker's side: the Dask task that runs one repetition on its host.

`run_task` is what the client submits (`cluster_sweep.ClusterSweep`); Dask runs it in a thread of
the host's worker process. It runs the task in a fresh process (``python -m
numaemu.measure.runner``, which says why) and keeps, per sweep and point, what this host has
already done for the point: its calibrated time scale and whether it ran the point's warmups. So
a host calibrates and warms up once per point, as a local sweep does, not once per task.

The task's process never outlives the thread that waits on it (`run_in_process`): cancelled, it
is sent SIGTERM and waited for; should this thread be interrupted, it is stopped and reaped
before the exception goes on. That thread is also the one whose end the process's
PR_SET_PDEATHSIG follows (runner.py), so it must be the one that starts it, and it lives until the
process has ended.
"""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from numaemu.measure.cluster import ATTEMPTS, POLL_S, STOP_WAIT_S, distributed_module
from numaemu.measure.experiment import Experiment, RunTask
from numaemu.measure.runner import RunRequest
from numaemu.measure.sweep import RunFailure, RunOutcome
from numaemu.runtime.results import host_id, host_metadata

__all__ = ["run_task", "run_in_process", "RUNNER"]

RUNNER = "numaemu.measure.runner"  # the module a task's process runs


@dataclass(frozen=True)
class _HostPoint:
    """What this host has done for one point of one sweep."""

    calibrated: tuple[float, dict[str, Any]] | None = None
    warmed: bool = False


_HOST_POINTS: dict[tuple[str, int], _HostPoint] = {}  # (sweep, point index): one worker process = one host
_HOST_LOCK = threading.Lock()


def run_task(sweep: str, exp: Experiment, task: RunTask) -> RunOutcome | None:
    """A Dask task: run `task` of sweep `sweep` on this host, in a fresh process (`runner`).
    Returns its outcome (its failure included), or None when the task was cancelled meanwhile
    (Ctrl-C on the client): its process is stopped then, not left to finish."""
    worker = distributed_module().get_worker()
    key = worker.get_current_task()
    event = {"sweep": sweep, "task": task.index, "worker": worker.address, "host": host_id(host_metadata())}
    worker.log_event(ATTEMPTS, {**event, "event": "start"})
    try:
        return _run_task(sweep, exp, task, worker, key)
    finally:  # its process has ended: the client, cancelling, waits for this (ClusterSweep._cancel)
        worker.log_event(ATTEMPTS, {**event, "event": "end"})


def _run_task(sweep: str, exp: Experiment, task: RunTask, worker: Any, key: object) -> RunOutcome | None:
    with _HOST_LOCK:
        for old in [k for k in _HOST_POINTS if k[0] != sweep]:  # a later sweep on a long-lived worker
            del _HOST_POINTS[old]
        done = _HOST_POINTS.get((sweep, task.point_index), _HostPoint())
    request = RunRequest(exp, task, 0 if done.warmed else exp.warmup, done.calibrated)
    outcome = run_in_process(request, lambda: _cancelled(worker, key))
    if outcome is not None:  # a failed repetition may still have calibrated, or warmed up, first
        with _HOST_LOCK:
            _HOST_POINTS[(sweep, task.point_index)] = _HostPoint(outcome.calibrated or done.calibrated, done.warmed or outcome.warmups == request.warmups)
    return outcome


def _cancelled(worker: Any, key: object) -> bool:
    """Whether the scheduler no longer wants `key` from `worker`: the client cancelled it (or
    went away), or the worker is closing."""
    from distributed.core import Status

    ts = worker.state.tasks.get(key)
    return ts is None or ts.state in ("cancelled", "released", "forgotten") or worker.status not in (Status.running, Status.paused)


def run_in_process(request: RunRequest, cancelled: Callable[[], bool]) -> RunOutcome | None:
    """Run `request` in ``python -m numaemu.measure.runner`` and return its outcome; a process that ends
    without one is a failure of the run. `cancelled` is asked every `POLL_S`: once it says so,
    the process is sent SIGTERM (it stops its nodes and removes its segments), waited for, and
    None returned."""
    proc = subprocess.Popen([sys.executable, "-m", RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    data: bytes | None = pickle.dumps(request)
    try:
        while True:
            try:
                out, err = proc.communicate(data, timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                data = None  # sent (or being sent: communicate goes on where it stopped)
                if cancelled():
                    _stop(proc)
                    return None
    except BaseException:  # this thread is going away: the process must not outlive it
        _stop(proc)
        raise
    return _outcome(request.task, proc.returncode, out, err)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the process stops its nodes and removes its segments within a second or so),
    then, past `STOP_WAIT_S`, SIGKILL; it is reaped either way, its pipes drained and closed."""
    proc.terminate()
    try:
        proc.communicate(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def _outcome(task: RunTask, rc: int, out: bytes, err: bytes) -> RunOutcome:
    """The outcome the process sent, or its failure: how it ended and the last line it said."""
    if rc == 0:
        try:
            outcome: RunOutcome = pickle.loads(out)
            return outcome
        except Exception as exc:
            why = f"its outcome could not be read ({type(exc).__name__}: {exc})"
    else:
        why = f"its process exited with code {rc}" if rc > 0 else f"its process was killed by {signal.Signals(-rc).name}"
    tail = err.decode(errors="replace").strip().splitlines()
    last = f": {tail[-1]}" if tail else ""
    return RunOutcome(task, failure=RunFailure(task, host_id(host_metadata()), f"{why}{last} (at {task.label()})"))
