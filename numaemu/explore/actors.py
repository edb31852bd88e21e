"""The actors of the system ``numaemu check`` explores (system.py): each node's CPU (`node`: its
requests, and its patch calls or source operations when their turn comes), what it runs while
a call of its waits (`idle`), and its safe points between requests (`safe_points`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from numaemu.explore.scheduler import Failure
from numaemu.host import clock
from numaemu.patching import module_source
from numaemu.patching.reader import check_batch, check_order
from numaemu.patching.reader_tasks import LEAVING
from numaemu.patching.sources import USER_FTRACE, USER_KLP, USER_KLP2, PatchOp

if TYPE_CHECKING:
    from numaemu.explore.system import PatchSystem
    from numaemu.patching.textmem import TextState

__all__ = ["node", "idle", "safe_points", "AT_ONCE", "SHARED_USERS", "logged", "wait_point"]

AT_ONCE = ("static_keys", "shared")  # sources whose every node performs each of its ops at once
# ``shared``: node n's ftrace user of the shared function (two IPMODIFY livepatches, then tracing).
SHARED_USERS = (USER_KLP, USER_KLP2, USER_FTRACE)


def node(system: PatchSystem, n: int) -> None:
    """Node `n`'s CPU: its requests, and its patch calls when their turn comes (module docstring)."""
    cfg = system.cfg
    # static_keys, shared: every op at once on every node; else call c by node c mod nodes.
    mine = [c for c in range(cfg.calls) if cfg.source in AT_ONCE or c % cfg.nodes == n]
    while mine or system.left[n]:
        wait_point()  # the start of this CPU's next request or call
        if system.busy[n]:  # inside a stop_machine round, from a safe point between two requests
            continue
        system.busy[n] = True
        if mine and cfg.source in AT_ONCE:
            _source_op(system, n, mine.pop(0))
        elif mine and cfg.source in ("bpf", "module") and system.calls_done == mine[0]:
            c = mine.pop(0)
            if cfg.source == "bpf":
                system.sources[n].step()  # attach the trampoline, or detach and free it
            else:
                module_source.op(system.sources[n], loading=c % 2 == 1)  # unload first: loaded at the start
            system.calls_done += 1
        elif mine and system.calls_done == mine[0]:
            _call(system, n, mine.pop(0))
        elif system.left[n]:
            system.left[n] -= 1
            _request(system, n)
        elif system.tasks:  # its requests spent, its next call not its turn yet: its tasks leave
            _leave(system, n)
        system.busy[n] = False
    if system.tasks:
        _leave(system, n)


def idle(system: PatchSystem, n: int) -> None:
    """What node `n` runs while its call waits (NodeKernel.idle, stress's readers): a request
    of its tasks while it has some left, else its tasks leave what they were in (they run
    on, in stress, and a task preempted inside a trampoline leaves it at its next request)."""
    if system.left[n]:
        system.left[n] -= 1
        _request(system, n)  # which begins at a safe point
    else:
        system.kernels[n].safe_point()  # as run_batch does before each request
        _leave(system, n)


def _leave(system: PatchSystem, n: int) -> None:
    """Node `n` has spent its requests: its tasks leave what they were in, once
    (ReaderTasks.leave_all), and it is done: a task it holds, or that travels to it later
    (and leaves at once, as ReaderTasks.drain), runs no more requests, so a wait for the
    tasks counts it as having left (node_source.wait_tasks). Once only: another quiescent
    state on every wait would make every turn of a wait a new state."""
    if system.st.nodes["done"][n]:
        return
    for t in system.held[n]:
        _task_leaves(system, n, t)
    system.st.nodes["done"][n] = 1


def _task_leaves(system: PatchSystem, n: int, t: int) -> None:
    if system.tasks[n].inside(LEAVING, t):
        raise _task_failure(system, n)


def _task_failure(system: PatchSystem, n: int) -> Failure:
    example = dict(system.tasks[n].examples[-1])
    return Failure(str(example.pop("kind")), example)


def safe_points(system: PatchSystem, n: int) -> None:
    """Node `n` between two requests (or with none left): it takes the IPIs of other nodes'
    syncs and stop_machine rounds at its safe points until the last call has returned."""
    k = system.kernels[n]
    while system.calls_done < system.cfg.total_ops:
        wait_point()
        if not system.busy[n]:
            system.busy[n] = True
            k.safe_point()
            system.busy[n] = False


def _call(system: PatchSystem, n: int, c: int) -> None:
    old = c % 2
    k, s = system.kernels[n], system.patched
    k.patch(s, np.full(len(s), old, np.int64), np.full(len(s), 1 - old, np.int64))
    system.calls_done += 1
    if system.st.get("failures"):
        raise logged(system.st, n)


def _source_op(system: PatchSystem, n: int, c: int) -> None:
    """static_keys: static_key_enable (c even) or static_key_disable (c odd) through the
    node's source; shared: attach (c even) or detach (c odd) the node's ftrace user."""
    if system.cfg.source == "shared":
        system.sources[n].shared_op(0, SHARED_USERS[n % len(SHARED_USERS)])
    else:
        system.sources[n].perform(PatchOp("static_key_enable" if c % 2 == 0 else "static_key_disable", key=0))
    system.calls_done += 1
    if system.st.get("failures"):
        raise logged(system.st, n)


def _request(system: PatchSystem, n: int) -> None:
    """One request of node `n`'s next task: every site of the batch, executed and judged."""
    k, r, held = system.kernels[n], system.readers[n], system.held[n]
    k.safe_point()
    task = held.pop(0)
    # A module's sites only while it is loaded (as stress's picks); the unload's sync
    # waits for a request that chose them to end.
    live = system.batch[(system.batch < system.t.n_core) | (system.st.site_live[system.batch] == 1)]
    obs = r.execute(live)
    bad, found = check_batch(obs, system.t, n, 1)
    if bad:
        v = found[0]
        raise Failure(v.kind, {**v.to_json(), "task": task})
    system.new_then_old += len(check_order(obs, system.t, system.st.task_seen[task]))
    if system.tasks and system.tasks[n].inside(obs, task):  # a task preempted inside code that was freed
        raise _task_failure(system, n)
    if system.cfg.source == "shared" and system.tasks[n].ipmodify(obs, task):  # it ran a function with two IPMODIFY users
        raise _task_failure(system, n)
    if system.cfg.source == "static_keys" and system.sources[n].held[0] > 0:
        # static_key_enabled() is true while a reference is held: the key's sites jump
        # (reader_tasks._off_while_held, for one key).
        at = np.isin(obs.sites, system.patched) & obs.handler_ok
        off = at & ~system.t.holds(obs.sites, 1, obs.observed)
        if off.any():
            site = int(obs.sites[np.flatnonzero(off)[0]])
            raise Failure("key-off-while-held", {"node": n, "task": task, "site": site, "address": hex(int(system.t.offset[site])),
                                                 "detail": "this node holds a reference on the key, and the key's site ran its NOP"})
    travels = system.cfg.tasks > 1 and task % system.cfg.tasks == system.cfg.tasks - 1 and system.cfg.nodes > 1
    dest = (n + 1) % system.cfg.nodes if travels else n
    system.held[dest].append(task)
    system.st.task_node[task] = dest
    if system.tasks and system.st.nodes["done"][dest]:
        _task_leaves(system, dest, task)


def logged(st: TextState, node: int | None) -> Failure:
    """The first failure a patch call logged (copy_check.py): a copy unlike the master after the
    call, or old bytes not as the call expected (an unexpected op)."""
    rec = st.failure_log[0]
    site = int(rec["site"])
    if site < 0:  # check_copies: -1 - page, and the copy in `found`
        copy = int(rec["found"][0])
        return Failure("copy-differs", {"node": int(rec["node"]), "detail": f"after the call, copy {copy} of page {-1 - site} differs from the master"})
    return Failure("unexpected-op", {"node": int(rec["node"]), "site": site, "detail": "the old bytes were not the state the call expected"})


def wait_point() -> None:
    """`NodeKernel.check_alive` under check: every iteration of a wait is a scheduling point."""
    if clock.point is not None:
        clock.point()
