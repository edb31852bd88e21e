"""``numaemu bench --cluster ADDRESS``: a sweep's runs spread over hosts by a Dask distributed cluster.

Each task of the sweep (`experiment.plan_tasks`: one measured repetition of one point, every policy
in it) is submitted to the scheduler at ADDRESS (``--cluster local``: a `distributed.LocalCluster`
of one worker on this machine) with the worker resource ``numaemu=1``. A host's node processes
are pinned to its CPUs, so a host must run one emulation at a time: each host runs one worker
that has that resource once (``dask worker ADDRESS --nworkers 1 --nthreads 1 --resources
numaemu=1``), and Dask never gives it a second task while one is running.

On the worker, `cluster_task.run_task` runs the task in a fresh process (`runner`, which says why)
and keeps, per sweep and point, what this host has already done for the point: its calibrated
time scale and whether it ran the point's warmups. So a host calibrates and warms up once per
point, as a local sweep does, not once per task.

Failures are told apart by whose they are. A run that fails on its own merits (a node died, a
file missing on that host, its process crashed) comes back as an outcome with its failure, a
value, so Dask never retries it: it is reported in one line, kept in the JSON, and the sweep goes
on. A lost worker (its process died, its host went away) is Dask's business: the scheduler runs
its task again elsewhere, up to ``distributed.scheduler.allowed-failures`` times (then the task
ends in KilledWorker and is reported failed); each start and end of a task is logged as an event
(`ATTEMPTS`), so the retries are counted, and Ctrl-C waits until every running task has stopped
its process.

The modules: this one, the address, the constants both sides share and the client's connection
(`ClusterSession`, which starts and closes the LocalCluster); `cluster_task`, the worker's side;
`cluster_sweep`, the sweep on the client (`ClusterSweep`: submit, gather, progress, cancel).
`distributed` is imported only in these and only when a cluster is used: it is an optional extra
(``numaemu[cluster]``); it has no type information worth the name, so its module is `Any` here
(`distributed_module`).
"""

from __future__ import annotations

import importlib
import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from numaemu.errors import UsageError

__all__ = ["RESOURCE", "ATTEMPTS", "ClusterSession", "check_available", "parse_address", "distributed_module"]

RESOURCE = "numaemu"  # the worker resource a host's one worker has once: one emulation per host
INSTALL_HINT = "needs the cluster extra: pip install 'numaemu[cluster]'"
CONNECT_TIMEOUT_S = 10.0  # to reach the scheduler
WORKER_WAIT_S = 30.0  # for a worker with the resource to be there (at the start, and whenever none is)
POLL_S = 0.5  # a task's check for its own cancellation; the wait for a worker
PROGRESS_S = 1.0  # the progress line's refresh (each asks the scheduler what runs and what started)
CANCEL_WAIT_S = 10.0  # after Ctrl-C: for running tasks to stop their processes before the client goes
STOP_WAIT_S = 30.0  # for a task's process to stop once told to (the coordinator stops within a second)
ATTEMPTS = "numaemu-attempt"  # event topic: a worker started ("start") or ended ("end") a task
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


def distributed_module() -> Any:
    """The `distributed` package (imported on first use: an optional extra)."""
    return importlib.import_module("distributed")


# --------------------------------------------------------------------------------------------
# The client's connection


class ClusterSession:
    """The client of a Dask scheduler, and the LocalCluster it started for ``--cluster local``;
    `close` closes both, on every path (idempotent), a failure or a Ctrl-C while connecting
    included."""

    def __init__(self, address: str, log: Callable[[str], None] = print) -> None:
        self.address = address
        self._cluster: Any = None  # distributed.LocalCluster, for --cluster local
        self._client: Any = None  # distributed.Client
        self.workers: dict[str, dict[str, Any]] = {}
        try:
            self._connect()
            self.workers = self.wait_for_workers()
        except BaseException:  # a LocalCluster started is not left running
            self.close()
            raise
        hosts: dict[str, list[str]] = {}
        for addr, w in self.workers.items():
            hosts.setdefault(w["host"], []).append(addr)
        for host, addrs in hosts.items():
            if len(addrs) > 1:
                log(f"note: {len(addrs)} workers with the {RESOURCE} resource on {host}: their runs share its CPUs (start one worker per host)")

    def _connect(self) -> None:
        distributed = distributed_module()
        # Workers log to stderr at WARNING by default (a restarted worker, a slow event loop),
        # and the client its reconnection tracebacks: the sweep's own lines say what matters.
        _quiet_logs()
        if self.address == "local":
            importlib.import_module("dask").config.set(QUIET)  # this process's config, which the nanny hands its worker
            with _sigint_ignored():
                self._cluster = distributed.LocalCluster(
                    n_workers=1, threads_per_worker=1, processes=True, resources={RESOURCE: 1},
                    dashboard_address=None, silence_logs=logging.CRITICAL,
                )
            self._client = distributed.Client(self._cluster)
            return
        try:
            self._client = distributed.Client(self.address, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            # Dask retries a refused or unresolvable address until the timeout, and then
            # says only that it timed out.
            start = f"start one there with `dask scheduler` (it listens on port {DEFAULT_PORT})"
            raise UsageError("--cluster", f"no Dask scheduler answered at {self.address} within {CONNECT_TIMEOUT_S:g} s; {start}") from None

    @property
    def client(self) -> Any:
        """The `distributed.Client`; RuntimeError once the session is closed."""
        if self._client is None:
            raise RuntimeError("the Dask cluster session is closed")
        return self._client

    @property
    def closed(self) -> bool:
        return self._client is None

    def wait_for_workers(self) -> dict[str, dict[str, Any]]:
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

    def workers_now(self) -> dict[str, dict[str, Any]]:
        """The scheduler's workers that have the `RESOURCE` (address -> its info)."""
        workers: dict[str, dict[str, Any]] = self.client.scheduler_info()["workers"]
        return {a: w for a, w in workers.items() if w.get("resources", {}).get(RESOURCE, 0) >= 1}

    def close(self) -> None:
        """Close the client, then the LocalCluster: its nanny stops its worker process and waits
        for it, and the worker's task thread, told so, first stops its task's process
        (`cluster_task.run_in_process`), which stops its nodes. Whatever is left after a second
        Ctrl-C, ``numaemu`` waits for, or kills, before it exits (runtime/lifetime.py)."""
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        try:
            if client is not None:
                client.close()
        finally:
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
