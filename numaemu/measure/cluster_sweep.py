"""``bench --cluster``, the sweep on the client: `ClusterSweep` submits every task of a sweep to
the scheduler, gathers their outcomes into a `SweepLedger` as they come, shows progress, says
which tasks a lost worker's death made Dask run again, and on any exit (Ctrl-C included) cancels
what is left and waits until no task of it still runs its process (see cluster.py for the whole).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from numaemu.measure.cluster import ATTEMPTS, CANCEL_WAIT_S, PROGRESS_S, RESOURCE, WORKER_WAIT_S, ClusterSession, distributed_module
from numaemu.measure.cluster_task import run_task
from numaemu.measure.experiment import Experiment, RunTask, plan_tasks
from numaemu.measure.report import format_point
from numaemu.measure.sweep import RunFailure, RunOutcome, SweepLedger

__all__ = ["ClusterSweep"]

Summary = dict[str, Any]  # a point's summary (summarise_runs)
Event = dict[str, Any]  # an `ATTEMPTS` event's message
Future = Any  # distributed.Future


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
        self.attempts: dict[int, list[dict[str, str]]] = {}  # task index -> each start of it: its worker and host

    def run(self, done: list[Summary] | None = None) -> list[Summary]:
        """Run every task; return the summaries of the points that have a successful repetition
        (`ledger.failures` and `ledger.failed_points` have the rest). `done` receives each
        point's summary as it completes."""
        client = self.session.client
        futures = {
            client.submit(run_task, self.sweep, self.exp, t, key=f"numaemu-{self.sweep[:12]}-{t.index}", resources={RESOURCE: 1}, priority=-t.index, pure=False): t
            for t in self.tasks
        }
        bar: Any = tqdm(total=len(self.tasks), unit="task", disable=None if self.progress is None else not self.progress, leave=False, dynamic_ncols=True)
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

    def _poll(self, client: Any, futures: dict[Future, RunTask], pending: set[Future], bar: Any, done: list[Summary] | None) -> tuple[set[Future], int]:
        """Wait up to `PROGRESS_S` for tasks to end; take their outcomes, say which tasks were
        started again, refresh the progress line. Returns the tasks that ended and how many of
        the others run now."""
        try:
            finished = set(distributed_module().wait(list(pending), timeout=PROGRESS_S, return_when="FIRST_COMPLETED").done)
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

    def _take(self, outcome: RunOutcome, bar: Any, done: list[Summary] | None) -> None:
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
            outcome: RunOutcome | None = future.result()
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

    def _count_attempts(self, events: list[Event]) -> list[str]:
        """Read the starts of our tasks (`ATTEMPTS` events) into `attempts`; return a line for
        each task started again since the last look (its worker was lost)."""
        attempts: dict[int, list[dict[str, str]]] = {}
        for msg in events:
            if msg["event"] == "start":
                attempts.setdefault(msg["task"], []).append({"worker": msg["worker"], "host": msg["host"]})
        lines = [
            f"{self.tasks[i].label()}: started again on {starts[-1]['worker']} ({starts[-1]['host']}): the worker running it was lost"
            for i, starts in attempts.items() if len(starts) > len(self.attempts.get(i, ())) and len(starts) > 1
        ]
        self.attempts = attempts
        return lines

    def _events(self, client: Any) -> list[Event]:
        return [m for _, m in client.get_events(ATTEMPTS) if isinstance(m, dict) and m.get("sweep") == self.sweep]

    def _running(self, client: Any, events: list[Event] | None = None) -> set[tuple[int, str]]:
        """(task, worker) of each task started on a worker still there and not ended: whose
        process may still run. (The scheduler forgets a cancelled task at once, and counts as
        processing the tasks it has queued on a worker, not started; the worker's thread goes
        on until the task returns.)"""
        events = self._events(client) if events is None else events
        started = {(m["task"], m["worker"]) for m in events if m["event"] == "start"}
        ended = {(m["task"], m["worker"]) for m in events if m["event"] == "end"}
        alive = set(client.scheduler_info()["workers"])
        return {(t, w) for t, w in started - ended if w in alive}

    def _cancel(self, pending: list[Future]) -> None:
        """Cancel what is left and wait (`CANCEL_WAIT_S` at most) until no task of ours runs:
        each running one sees its cancellation within `POLL_S` and stops its process, which
        stops its nodes and removes its segments, so none of this sweep's processes outlives
        it, on any host (a LocalCluster's worker is closed next). A second Ctrl-C stops waiting."""
        if self.session.closed:
            return
        client = self.session.client
        try:
            client.cancel(pending)
            deadline = time.monotonic() + CANCEL_WAIT_S
            while time.monotonic() < deadline and self._running(client):
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        except Exception:  # the scheduler is gone: nothing left to cancel there
            pass

    def info(self) -> dict[str, Any]:
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
