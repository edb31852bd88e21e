"""``python -m numaemu.measure.runner``: one task of a ``bench --cluster`` sweep, in a fresh process.

A Dask worker runs each task (`cluster_task.run_task`) by starting this module and waiting for it,
rather than running the emulation in the worker itself, because:

- Dask worker processes are daemonic, and multiprocessing refuses to start children of a
  daemonic process, while the coordinator starts one per emulated node;
- Dask runs tasks in threads other than the main one, where no signal handler can be installed,
  and the coordinator's cleanup on SIGINT/SIGTERM (stop the nodes, unlink every segment) needs one;
- a crash here (a node's death is handled, but anything else) must not take the worker with it.

Protocol: the `RunRequest` comes pickled on stdin; the `bench.RunOutcome` goes pickled to stdout,
exit code 0. Anything else this process prints goes to stderr (stdout is pointed there while it
works). A failure of the task's own (a node died: `NodeFailure`; bad input on this host, such as
an --image missing here: `UsageError`) is an outcome like any other, with `failure` set, so Dask
never retries it. SIGTERM or SIGINT stop it as they stop ``numaemu bench``: the nodes are stopped,
every segment removed, and it exits 130 without an outcome (SIGINT only if it was not ignored when
this process started: see `main`).

It dies with its parent, the Dask worker, learning of its death from the kernel, never from its
pid (lifetime.die_with_parent): PR_SET_PDEATHSIG sends it SIGTERM when the thread that started it
exits (prctl(2): the signal follows the parent *thread*; Dask's task thread lives as long as the
worker, and waits on this process throughout, its stop included: `cluster_task.run_in_process`);
should the parent have died before the prctl, the pipe this process's outcome goes to (stdout),
whose only reader is the parent, has no reader any more, which it checks once right after. Its
node workers exit within 20 ms of its own death (worker.py), as they do when ``numaemu bench`` dies.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from dataclasses import dataclass
from typing import Any

from numaemu import __version__
from numaemu.errors import NodeFailure, UsageError
from numaemu.host.files import load_topology
from numaemu.host.fit import check_host_fits, run_needs
from numaemu.host.segments import prune_stale
from numaemu.measure.experiment import Experiment, RunTask
from numaemu.measure.sweep import RunFailure, RunOutcome, prepare_point, run_repetition, run_warmups
from numaemu.model.image import KernelImage
from numaemu.model.topology import Topology
from numaemu.runtime.lifetime import die_with_parent
from numaemu.runtime.results import host_record

__all__ = ["RunRequest", "execute", "main"]

EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class RunRequest:
    """What a task's process is asked to do: `task` of `exp`, after `warmups` discarded
    repetitions of its point (its host's first task of the point), with the time scale this host
    already calibrated for the point (`calibrated`; None: calibrate now, unless --time-scale)."""

    exp: Experiment
    task: RunTask
    warmups: int
    calibrated: tuple[float, dict[str, Any]] | None
    version: str = __version__


def execute(request: RunRequest) -> RunOutcome:
    """Run `request` on this host; a failure of its own is returned as the outcome's `failure`."""
    exp, task = request.exp, request.task
    record = host_record()
    host = record["id"]
    if request.version != __version__:
        why = f"numaemu {__version__} on this host, {request.version} where the sweep was started: install the same version on every host"
        return RunOutcome(task, failure=RunFailure(task, host, f"{why} (at {task.label()})"))
    pruned = tuple(prune_stale())
    # What this host got done for the point stays done if the repetition then fails: its
    # calibration and its warmups are not repeated by its next task of the point.
    made: tuple[float, dict[str, Any]] | None = None
    warmups = 0
    try:
        image = exp.kernel_image()
        topo = load_topology(task.point.topology, sysfs_root=exp.sysfs_root, local_ns=exp.local_ns)
        _check_fits(exp, task, image, topo)
        spec, setup, made = prepare_point(exp, task.point, image, {}, request.calibrated, topo=topo, host=record)
        run_warmups(exp, task.point, spec, request.warmups)
        warmups = request.warmups
        records = run_repetition(exp, task, spec, setup.host)
    except NodeFailure as exc:
        return RunOutcome(task, failure=RunFailure.from_node_failure(task, host, exc), calibrated=made, warmups=warmups, pruned=pruned)
    except UsageError as exc:  # this host cannot run it: a file missing here, too little memory
        return RunOutcome(task, failure=RunFailure(task, host, f"{exc} (at {task.label()})"), calibrated=made, warmups=warmups, pruned=pruned)
    return RunOutcome(task, records, setup, calibrated=made, warmups=warmups, pruned=pruned)


def _check_fits(exp: Experiment, task: RunTask, image: KernelImage, topo: Topology) -> None:
    """What ``numaemu bench`` checks up front for its own host, checked here for this one: that
    the point's largest policy fits in this host's /dev/shm and memory."""
    needs = run_needs(topo, image, exp.policies, replicate=task.point.replicate, replicas_every=exp.replicas_every, label=f"{task.point.topology}: ")
    check_host_fits(topo, needs)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        print("usage: python -m numaemu.measure.runner (a RunRequest pickled on stdin; run by numaemu bench --cluster)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    # SIGINT too, unless it came ignored: a LocalCluster's worker ignores it, so that only
    # numaemu bench acts on a Ctrl-C in its terminal (cluster._sigint_ignored); a worker a user
    # started in a terminal does not, and a Ctrl-C there stops its task's process with it.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupt)
    if not die_with_parent(signal.SIGTERM, 1):  # its parent is gone already: no one to run it for
        return EXIT_INTERRUPTED
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever else is printed goes to stderr, never into the outcome
    try:
        request = pickle.load(sys.stdin.buffer)
        outcome = execute(request)
    except KeyboardInterrupt:  # the coordinator has stopped its nodes and removed its segments
        return EXIT_INTERRUPTED
    pickle.dump(outcome, out)
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
