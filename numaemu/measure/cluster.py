"""``numaemu bench --cluster ADDRESS``: a sweep's runs spread over hosts by a Dask distributed cluster.

Each task of the sweep (`bench.plan_tasks`: one measured repetition of one point, every policy
in it) is submitted to the scheduler at ADDRESS (``--cluster local``: a `distributed.LocalCluster`
of one worker on this machine) with the worker resource ``numaemu=1``. A host's node processes
are pinned to its CPUs, so a host must run one emulation at a time: each host runs one worker
that has that resource once (``dask worker ADDRESS --nworkers 1 --nthreads 1 --resources
numaemu=1``), and Dask never gives it a second task while one is running.

On the worker, `run_task` runs the task in a fresh process (`runner`, which says why) and keeps,
per sweep and point, what this host has already done for the point: its calibrated time scale and
whether it ran the point's warmups. So a host calibrates and warms up once per point, as a local
sweep does, not once per task.

Failures are told apart by whose they are. A run that fails on its own merits (a node died, a
file missing on that host, its process crashed) comes back as an outcome with its failure, a
value, so Dask never retries it: it is reported in one line, kept in the JSON, and the sweep goes
on. A lost worker (its process died, its host went away) is Dask's business: the scheduler runs
its task again elsewhere, up to ``distributed.scheduler.allowed-failures`` times (then the task
ends in KilledWorker and is reported failed); each start and end of a task is logged as an event
(`ATTEMPTS`), so the retries are counted, and Ctrl-C waits until every running task has stopped
its process.

`distributed` is imported only here and only when a cluster is used: it is an optional extra
(``numaemu[cluster]``).
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from numaemu.errors import UsageError
from numaemu.measure.experiment import Experiment, RunTask, plan_tasks
from numaemu.measure.report import format_point
from numaemu.measure.runner import RunRequest
from numaemu.measure.sweep import RunFailure, RunOutcome, SweepLedger
from numaemu.runtime.results import host_id, host_metadata

__all__ = ["RESOURCE", "ClusterSession", "ClusterSweep", "check_available", "parse_address", "run_task"]

RESOURCE = "numaemu"  # the worker resource a host's one worker has once: one emulation per host
INSTALL_HINT = "needs the cluster extra: pip install 'numaemu[cluster]'"
CONNECT_TIMEOUT_S = 10.0  # to reach the scheduler
WORKER_WAIT_S = 30.0  # for a worker with the resource to be there (at the start, and whenever none is)
POLL_S = 0.5  # a task's check for its own cancellation; the wait for a worker
PROGRESS_S = 1.0  # the progress line's refresh (each asks the scheduler what runs and what started)
CANCEL_WAIT_S = 10.0  # after Ctrl-C: for running tasks to stop their processes before the client goes
STOP_WAIT_S = 30.0  # for a task's process to stop once told to (the coordinator stops within a second)
ATTEMPTS = "numaemu-attempt"  # event topic: a worker started ("start") or ended ("end") a task
RUNNER = "numaemu.measure.runner"  # the module a task's process runs
# Dask's own periodic work, made rarer for --cluster local: its scheduler, nanny and worker share
# this host's CPUs with the run's pinned nodes, and on a small host every wake-up steals paced
# time (2 nodes on 2 CPUs: pacing loss 3% run alone, 6-11% beside a LocalCluster's defaults,
# 3-7% with these). Defaults: a 20 ms event-loop tick, a 0.5 s system monitor, a 0.1 s memory
# monitor. A remote worker can be given the same through DASK_* environment variables (README).
QUIET = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
}
DEFAULT_PORT = 8786  # dask scheduler's

_ADDRESS = re.compile(r"(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})")
_SCHEMES = ("tcp", "tls")


def parse_address(text: str) -> str:
    """``--cluster``: ``local``, or a scheduler address ``[tcp://|tls://]HOST:PORT``; returns it as
    given (Dask reads ``HOST:PORT`` as tcp). Raises UsageError naming --cluster."""
    text = text.strip()
    if not text:
        raise UsageError("--cluster", f"is empty; give the scheduler's address, tcp://HOST:PORT (dask scheduler listens on {DEFAULT_PORT}), or local")
    if text == "local":
        return text
    m = _ADDRESS.fullmatch(text)
    scheme = m.group("scheme") if m else None
    if m is None or (scheme is not None and scheme not in _SCHEMES) or not 0 < int(m.group("port")) < 65536:
        raise UsageError("--cluster", f"'{text}' is not a scheduler address: give tcp://HOST:PORT (dask scheduler listens on {DEFAULT_PORT}) or local")
    return text


def check_available() -> None:
    """Fail before any work when Dask is missing (an optional extra)."""
    try:
        importlib.import_module("distributed")
    except ImportError:
        raise UsageError("--cluster", INSTALL_HINT) from None


# --------------------------------------------------------------------------------------------
# The worker's side


@dataclass(frozen=True)
class _HostPoint:
    """What this host has done for one point of one sweep."""

    calibrated: tuple[float, dict] | None = None
    warmed: bool = False


_HOST_POINTS: dict[tuple[str, int], _HostPoint] = {}  # (sweep, point index): one worker process = one host
_HOST_LOCK = threading.Lock()


def run_task(sweep: str, exp: Experiment, task: RunTask) -> RunOutcome | None:
    """A Dask task: run `task` of sweep `sweep` on this host, in a fresh process (`runner`).
    Returns its outcome (its failure included), or None when the task was cancelled meanwhile
    (Ctrl-C on the client): its process is stopped then, not left to finish."""
    import distributed

    worker = distributed.get_worker()
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
    the process is sent SIGTERM (it stops its nodes and removes its segments) and None returned."""
    task = request.task
    proc = subprocess.Popen(
        [sys.executable, "-m", RUNNER, str(os.getpid())],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    data: bytes | None = pickle.dumps(request)
    try:
        while True:
            try:
                out, err = proc.communicate(data, timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                data = None  # sent (or being sent: communicate goes on where it stopped)
                if cancelled():
                    proc.terminate()
                    proc.communicate(timeout=STOP_WAIT_S)
                    return None
    except BaseException:  # this thread is going away: the process must not outlive it
        proc.terminate()
        try:
            proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if proc.returncode == 0:
        try:
            return pickle.loads(out)
        except Exception as exc:
            why = f"its outcome could not be read ({type(exc).__name__}: {exc})"
    else:
        rc = proc.returncode
        why = f"its process exited with code {rc}" if rc > 0 else f"its process was killed by {signal.Signals(-rc).name}"
    tail = err.decode(errors="replace").strip().splitlines()
    last = f": {tail[-1]}" if tail else ""
    return RunOutcome(task, failure=RunFailure(task, host_id(host_metadata()), f"{why}{last} (at {task.label()})"))


# --------------------------------------------------------------------------------------------
# The client's side


class ClusterSession:
    """The client of a Dask scheduler, and the LocalCluster it started for ``--cluster local``;
    `close` closes both, on every path (idempotent)."""

    def __init__(self, address: str, log: Callable[[str], None] = print) -> None:
        import distributed

        self.address = address
        self.cluster = None
        self.client = None
        if address == "local":
            # Workers log to stderr at WARNING by default (a restarted worker, a slow event
            # loop): the sweep's own lines say what matters.
            _quiet_logs()
            import dask

            dask.config.set(QUIET)  # this process's config, which the nanny hands its worker
            with _sigint_ignored():
                self.cluster = distributed.LocalCluster(
                    n_workers=1, threads_per_worker=1, processes=True, resources={RESOURCE: 1},
                    dashboard_address=None, silence_logs=logging.CRITICAL,
                )
            self.client = distributed.Client(self.cluster)
        else:
            _quiet_logs()
            try:
                self.client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError):
                # Dask retries a refused or unresolvable address until the timeout, and then
                # says only that it timed out.
                raise UsageError("--cluster", f"no Dask scheduler answered at {address} within {CONNECT_TIMEOUT_S:g} s; start one there with `dask scheduler` (it listens on port {DEFAULT_PORT})") from None
        try:
            self.workers = self.wait_for_workers()
        except BaseException:
            self.close()
            raise
        hosts: dict[str, list[str]] = {}
        for addr, w in self.workers.items():
            hosts.setdefault(w["host"], []).append(addr)
        for host, addrs in hosts.items():
            if len(addrs) > 1:
                log(f"note: {len(addrs)} workers with the {RESOURCE} resource on {host}: their runs share its CPUs (start one worker per host)")

    def wait_for_workers(self) -> dict[str, dict]:
        """The scheduler's workers that have the `RESOURCE`, once there is one; UsageError
        naming --cluster if none comes within `WORKER_WAIT_S`."""
        wait_s = WORKER_WAIT_S
        deadline = time.monotonic() + wait_s
        while True:
            workers = self.workers_now()
            if workers:
                return workers
            if time.monotonic() > deadline:
                raise UsageError(
                    "--cluster",
                    f"the scheduler at {self.address} has no worker with the {RESOURCE} resource (waited {wait_s:g} s); "
                    f"start one on each host: dask worker {self.address} --nworkers 1 --nthreads 1 --resources {RESOURCE}=1",
                )
            time.sleep(POLL_S)

    def workers_now(self) -> dict[str, dict]:
        """The scheduler's workers that have the `RESOURCE` (address -> its info)."""
        return {a: w for a, w in self.client.scheduler_info()["workers"].items() if w.get("resources", {}).get(RESOURCE, 0) >= 1}

    def close(self) -> None:
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def _quiet_logs() -> None:
    """Dask's log lines off (its workers' warnings, its client's reconnection tracebacks): the
    sweep's own lines say what failed, a lost worker or scheduler included, in one line each.
    Dask configures some of its loggers one by one (distributed.client), so each is set."""
    import distributed  # noqa: F401  (its logging configuration is applied on import)

    names = ["distributed", *(n for n in logging.root.manager.loggerDict if n.startswith("distributed."))]
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while the LocalCluster starts its worker process, which inherits that (an
    ignored signal stays ignored across exec, and Python then leaves it so), and so do the
    task processes it starts (`runner` keeps an ignored SIGINT ignored). A Ctrl-C in the
    terminal reaches the whole process group: this way only ``numaemu bench`` acts on it,
    cancelling the tasks, whose processes then stop on SIGTERM, instead of the worker dying
    of a KeyboardInterrupt with a traceback, mid-task. (Ctrl-C while it starts, a second or
    so, is lost.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class ClusterSweep:
    """One sweep's tasks on a cluster: submit them all, gather their outcomes into a
    `SweepLedger` as they come, show progress, and on any exit cancel what is left.

    `ledger` and `info()` hold what was done so far, for the JSON, also after an interrupt."""

    def __init__(self, exp: Experiment, session: ClusterSession, *, progress: bool | None, log: Callable[[str], None]) -> None:
        self.exp = exp
        self.session = session
        self.progress = progress
        self.log = log
        self.ledger = SweepLedger(exp)
        self.sweep = uuid.uuid4().hex
        self.tasks = plan_tasks(exp)
        self.attempts: dict[int, list[dict]] = {}  # task index -> each start of it: its worker and host

    def run(self, done: list[dict] | None = None) -> list[dict]:
        """Run every task; return the summaries of the points that have a successful repetition
        (`ledger.failures` and `ledger.failed_points` have the rest). `done` receives each
        point's summary as it completes."""
        client = self.session.client
        futures = {
            client.submit(run_task, self.sweep, self.exp, t, key=f"numaemu-{self.sweep[:12]}-{t.index}", resources={RESOURCE: 1}, priority=-t.index, pure=False): t
            for t in self.tasks
        }
        bar = tqdm(total=len(self.tasks), unit="task", disable=None if self.progress is None else not self.progress, leave=False, dynamic_ncols=True)
        pending = set(futures)
        no_worker_since: float | None = None

        def fail_the_rest(why: str) -> None:
            for f in sorted(pending, key=lambda f: futures[f].index):
                t = futures[f]
                self._take(RunOutcome(t, failure=RunFailure(t, None, f"{why} (at {t.label()})")), bar, done)
            bar.update(len(pending))
            pending.clear()

        try:
            while pending:
                try:
                    finished, running = self._poll(client, futures, pending, bar, done)
                except Exception:
                    if client.status == "running":
                        raise
                    # The scheduler is gone and Dask gave up reconnecting (it cancels every future
                    # then): what had not come back is failed, and the sweep ends with what did.
                    fail_the_rest(f"the connection to the Dask scheduler at {self.session.address} was lost")
                    break
                pending -= finished
                if pending and not running:
                    no_worker_since = no_worker_since or time.monotonic()
                    if time.monotonic() - no_worker_since > WORKER_WAIT_S:
                        no_worker_since = None
                        if not self.session.workers_now():  # every worker gone: fail what is left, not wait forever
                            client.cancel(list(pending))
                            fail_the_rest(f"no worker with the {RESOURCE} resource for {WORKER_WAIT_S:g} s")
                else:
                    no_worker_since = None
        except BaseException:
            bar.close()
            self._cancel(list(pending))
            raise
        bar.close()
        return self.ledger.summaries()

    def _poll(self, client: Any, futures: dict, pending: set, bar: tqdm, done: list[dict] | None) -> tuple[set, int]:
        """Wait up to `PROGRESS_S` for tasks to end; take their outcomes, say which tasks were
        started again, refresh the progress line. Returns the tasks that ended and how many of
        the others run now."""
        import distributed

        try:
            finished = set(distributed.wait(list(pending), timeout=PROGRESS_S, return_when="FIRST_COMPLETED").done)
        except TimeoutError:
            finished = set()
        events = self._events(client)
        restarted = self._count_attempts(events)
        if restarted:
            bar.clear()
            for line in restarted:
                self.log(line)
        for f in sorted(finished, key=lambda f: futures[f].index):
            self._take(self._outcome(f, futures[f]), bar, done)
        waiting = {futures[f].index for f in pending - finished}
        running = len({t for t, _ in self._running(client, events)} & waiting)
        retried = sum(len(a) > 1 for a in self.attempts.values())
        failed = len(self.ledger.failures)
        bar.set_postfix_str(f"done {len(self.tasks) - len(waiting)}, running {running}, failed {failed}" + (f", retried {retried}" if retried else ""), refresh=False)
        bar.update(len(finished))
        return finished, running

    def _take(self, outcome: RunOutcome, bar: tqdm, done: list[dict] | None) -> None:
        summary = self.ledger.add(outcome)
        lines = []
        if outcome.pruned:
            host = outcome.setup.host_id if outcome.setup else outcome.failure.host if outcome.failure else None
            lines.append(f"{host or 'a host'}: removed {len(outcome.pruned)} shared-memory segment(s) left by dead numaemu runs: {', '.join(outcome.pruned)}")
        if outcome.failure is not None:
            lines.append(outcome.failure.line())
        if summary is not None:
            if done is not None:
                done.append(summary)
            lines.append(format_point(summary))
        if outcome.failure is not None and summary is None and outcome.task.point in self.ledger.failed_points:
            lines.append(f"{outcome.task.point.label()}: every repetition failed; no summary")
        if lines:
            bar.clear()
            for line in lines:
                self.log(line)

    def _outcome(self, future: Any, task: RunTask) -> RunOutcome:
        """The task's outcome, or the failure Dask reports for it (its workers kept dying:
        KilledWorker; anything else Dask raised)."""
        if future.status == "finished":
            outcome = future.result()
            if outcome is not None:
                return outcome
            why = "it was cancelled on its worker"
        elif future.status == "error":
            exc = future.exception()
            if type(exc).__name__ == "KilledWorker":  # distributed.scheduler.KilledWorker
                why = f"the Dask workers running it died, {exc.allowed_failures + 1} times (distributed.scheduler.allowed-failures is {exc.allowed_failures})"
            else:
                why = f"Dask: {type(exc).__name__}: {_reason(exc)}"
        else:
            why = f"Dask reports it {future.status}"
        starts = self.attempts.get(task.index)
        return RunOutcome(task, failure=RunFailure(task, starts[-1]["host"] if starts else None, f"{why} (at {task.label()})"))

    def _count_attempts(self, events: list[dict]) -> list[str]:
        """Read the starts of our tasks (`ATTEMPTS` events) into `attempts`; return a line for
        each task started again since the last look (its worker was lost)."""
        attempts: dict[int, list[dict]] = {}
        for msg in events:
            if msg["event"] == "start":
                attempts.setdefault(msg["task"], []).append({"worker": msg["worker"], "host": msg["host"]})
        lines = [
            f"{self.tasks[i].label()}: started again on {starts[-1]['worker']} ({starts[-1]['host']}): the worker running it was lost"
            for i, starts in attempts.items() if len(starts) > len(self.attempts.get(i, ())) and len(starts) > 1
        ]
        self.attempts = attempts
        return lines

    def _events(self, client: Any) -> list[dict]:
        return [m for _, m in client.get_events(ATTEMPTS) if isinstance(m, dict) and m.get("sweep") == self.sweep]

    def _running(self, client: Any, events: list[dict] | None = None) -> set[tuple[int, str]]:
        """(task, worker) of each task started on a worker still there and not ended: whose
        process may still run. (The scheduler forgets a cancelled task at once, and counts as
        processing the tasks it has queued on a worker, not started; the worker's thread goes
        on until the task returns.)"""
        events = self._events(client) if events is None else events
        started = {(m["task"], m["worker"]) for m in events if m["event"] == "start"}
        ended = {(m["task"], m["worker"]) for m in events if m["event"] == "end"}
        alive = set(client.scheduler_info()["workers"])
        return {(t, w) for t, w in started - ended if w in alive}

    def _cancel(self, pending: list) -> None:
        """Cancel what is left and wait (`CANCEL_WAIT_S` at most) until no task of ours runs:
        each running one sees its cancellation within `POLL_S` and stops its process, which
        stops its nodes and removes its segments, so none of this sweep's processes outlives
        it, on any host (a LocalCluster's worker is closed next). A second Ctrl-C stops waiting."""
        client = self.session.client
        if client is None:
            return
        try:
            client.cancel(pending)
            deadline = time.monotonic() + CANCEL_WAIT_S
            while time.monotonic() < deadline and self._running(client):
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        except Exception:  # the scheduler is gone: nothing left to cancel there
            pass

    def info(self) -> dict:
        """The JSON's ``cluster``: where the sweep ran and what was retried."""
        retried = [
            {**t.to_json(), "attempts": self.attempts[t.index]}
            for t in self.tasks if len(self.attempts.get(t.index, ())) > 1
        ]
        return {
            "address": self.session.address,
            "workers": [{"address": a, "host": w.get("host"), "resources": w.get("resources")} for a, w in self.session.workers.items()],
            "hosts": self.ledger.hosts,
            "retried_runs": retried,
        }
