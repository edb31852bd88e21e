"""The coordinator: owns every OS resource of a run, starts the nodes, and collects results.

`run_policy` runs one placement policy in fresh node processes (as pyperf runs each benchmark
in fresh workers): create the segments, write the master image and the control block, start one
pinned worker per node, wait until every node has filled its memory, give one start time to all,
wait for their reports, then stop and unlink everything, on every path, errors included.

A node that dies or fails is reported as `NodeFailure` with its node, pid and phase; the other
nodes are told to abort at once, and every wait has a deadline. With ``--recover`` (`RunSpec.recover`)
a dead node is replaced instead: its batch in flight is undone from its journal
(`worker.restore_journal`), and a fresh process of the same node, pinned as before, refills its
partition from the master and takes over its tasks; the other nodes never stop (a ``run`` node
shares nothing with the others but task slots, which only their owner writes).
"""

from __future__ import annotations

import io
import itertools
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from multiprocessing import popen_spawn_posix, resource_tracker, spawn, util
from multiprocessing.connection import wait as wait_any
from multiprocessing.context import reduction, set_spawning_popen

import numpy as np

from numaemu.errors import NodeFailure, UsageError
from numaemu.host.clock import measure_oversleep_ns, time_scale
from numaemu.host.numamaps import expected_host_nodes, read_placement
from numaemu.host.segments import (
    CONTROL_MAGIC,
    CONTROL_VERSION,
    PHASES,
    STATE_ABORT,
    STATE_RECOVER,
    STATE_RUN,
    TASK_SLOT,
    WHERE,
    Control,
    MemoryLayout,
    Segment,
    new_token,
    segment_name,
)
from numaemu.model.cache import DirectMappedCache
from numaemu.model.engine import NodeEngine
from numaemu.model.image import LINE_SIZE, KernelImage
from numaemu.model.pagetables import page_table_cost, walk_profile
from numaemu.model.placement import Placement, check_reachable, place, place_for
from numaemu.model.tasks import TASKS_PER_NODE, plan_requests
from numaemu.model.topology import HostPlacement, Topology
from numaemu.model.workloads import Workload
from numaemu.runtime.faults import Fault, KillSchedule, Launch, fault_from_env
from numaemu.runtime.results import add_speedups, policy_record
from numaemu.runtime.worker import (
    SETUP_TIMEOUT_S,
    WorkerConfig,
    fill_partition,
    restore_journal,
    run_batch,
    worker_main,
)

__all__ = ["NodeSession", "RunSpec", "run_policy", "run_policies", "prepare_spec", "LocalNode", "local_node", "calibrate_scale", "expected_checksum", "START_METHODS", "DELAYS"]

START_METHODS = ("fork", "spawn", "forkserver")
# --delays: "model" paces every batch to the emulated topology's latencies (clock.Pacer);
# "none" paces nothing, so wall time is this host's own (on a real NUMA host, remote frames are
# really remote) while the emulated-time (model) figures are still counted.
DELAYS = ("model", "none")
START_DELAY_NS = 20_000_000  # every node starts at the same instant, 20 ms after the signal
JOIN_TIMEOUT_S = 5.0
MAX_RECOVERIES = 10  # --recover: node deaths one run survives; the next one fails it
PARK_TIMEOUT_S = 10.0  # every live node parks within this once a recovery begins
DRAIN_TIMEOUT_S = 3.0  # after an abort: how long the living may take to send what they have
_SESSIONS = itertools.count(1)  # sets of node processes this process started (the fault hook's SESSION)


@dataclass(frozen=True)
class RunSpec:
    """Everything one run of one policy needs, already validated."""

    topology: Topology
    host: HostPlacement
    image: KernelImage
    workload: Workload
    cold: bool
    user_local: bool
    duration_s: float | None
    requests: int | None
    migrate_rate: float
    seed: int
    start_method: str
    scale: float
    replicate: str = "text+rodata"
    oversleep_ns: int = 60_000
    pt_style: str = "none"  # pagetables.PT_STYLES
    replicas_every: int = 1  # replicate: a copy on every K-th node (IRIX)
    delays: str = "model"  # DELAYS
    recover: int = 0  # node deaths replaced per policy (--recover: MAX_RECOVERIES); 0: a death fails the run




class NodeSession:
    """Owns every OS resource of one run of node processes; `close` frees them on every path.

    Create segments, open the control block, start one worker per node, wait until every node is
    ready, give one start time to all, collect their reports. As CPython's multiprocessing
    documents for shared memory: the coordinator creates and unlinks; workers only attach.

    Deaths are noticed at once: every wait is on the nodes' pipes and process sentinels together
    (`multiprocessing.connection.wait`), and a process's sentinel becomes readable the moment it
    exits, however it exits. A dead node fails the run (`NodeFailure`, naming node, pid, phase and
    what it was inside of), unless ``max_recoveries`` allows a recovery (`_recover`): the node is
    respawned as it was started (same node, same config, same pinning) after `repair` has put the
    shared state back in order for it. With ``quiesce`` (stress) every other node is parked first,
    so nothing changes under the repair, and stays parked until the replacement is ready.
    """

    def __init__(
        self,
        start_method: str,
        n_nodes: int,
        n_tasks: int,
        *,
        max_recoveries: int = 0,
        quiesce: bool = False,
        repair: Callable[[list[int]], dict] | None = None,
        kill_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.token = new_token()
        self.ctx = mp.get_context(start_method)
        self.n_nodes = n_nodes
        self.n_tasks = n_tasks
        self.segments: list[Segment] = []
        self.procs: list = []  # per node: its current process
        self.conns: list = []
        self.ctl: Control | None = None
        self.number = next(_SESSIONS)
        fault = fault_from_env()
        self.fault: Fault | None = fault if fault is not None and fault.session == self.number else None
        self.max_recoveries = max_recoveries
        self.quiesce = quiesce
        self.repair = repair
        self.kill_rate = kill_rate
        self.seed = seed
        self.kill_schedule: KillSchedule | None = None
        self.incarnations = [0] * n_nodes
        self.reports: dict[int, dict] = {}
        self.recoveries: list[dict] = []
        self.kills: list[dict] = []
        self.recovery_s = 0.0
        self.started = False
        self.go_ns = 0
        self.end_ns = 0
        self.forced = False
        self._target: Callable | None = None
        self._configs: list = []
        self._gone: set[int] = set()  # dead or failed, not (yet) replaced: no more events
        self._killed_ns: dict[int, int] = {}  # --kill-workers: when the coordinator killed a node
        self._retired: list = []  # processes of replaced nodes

    def __enter__(self) -> NodeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, kind: str, size: int) -> Segment:
        seg = Segment.create(segment_name(kind, self.token), size)
        self.segments.append(seg)
        return seg

    def open_control(self) -> Control:
        seg = self.create("ctl", Control.size(self.n_nodes, self.n_tasks))
        self.ctl_name = seg.name
        ctl = self.ctl = Control(seg, self.n_nodes, self.n_tasks)
        ctl.set("magic", CONTROL_MAGIC)
        ctl.set("version", CONTROL_VERSION)
        ctl.set("n_nodes", self.n_nodes)
        ctl.set("n_tasks", self.n_tasks)
        ctl.set("coordinator_pid", os.getpid())
        return ctl

    def start(self, target: Callable, configs: list) -> None:
        self._target, self._configs = target, list(configs)
        self.procs = [None] * self.n_nodes
        self.conns = [None] * self.n_nodes
        for node in range(self.n_nodes):
            self._spawn(node)

    def _spawn(self, node: int) -> None:
        """Start `node`'s worker (again, under --recover: only the first incarnation is armed
        with the test fault)."""
        k = self.incarnations[node]
        launch = Launch(self.fault if k == 0 else None, k)
        parent, child = self.ctx.Pipe(duplex=False)
        method = self.ctx.get_start_method()
        cls = _SpawnProcess if method == "spawn" else self.ctx.Process
        proc = cls(target=self._target, args=(self._configs[node], child, launch), name=f"numaemu-node{node}", daemon=True)
        try:
            # fork returns at once: hold Ctrl-C meanwhile, so no started process is left
            # untracked. spawn and forkserver write the config to the child, which may take
            # its whole start-up: not held (a child orphaned then exits by itself, see worker).
            with _signals_deferred() if method == "fork" else nullcontext():
                proc.start()
                self.procs[node] = proc
                self.conns[node] = parent
        except OSError as exc:  # spawn: the child died before it had read its config
            parent.close()
            self._gone.add(node)
            raise NodeFailure(node, getattr(exc, "pid", None), "spawn", f"process died while starting ({exc.strerror or exc})") from None
        finally:
            child.close()

    def wait_ready(self) -> None:
        assert self.ctl is not None
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        ready = PHASES.index("ready")
        while not all(self._phase(n) >= ready for n in range(self.n_nodes)):
            self._step(0.01)
            if time.monotonic() > deadline:
                late = [n for n in range(self.n_nodes) if self._phase(n) < ready]
                raise self._failure(late[0], "did not reach phase 'ready' in time")

    def go(self, duration_s: float | None) -> None:
        assert self.ctl is not None
        start = time.perf_counter_ns() + START_DELAY_NS
        end = start + int(duration_s * 1e9) if duration_s else 0
        self.ctl.set("start_ns", start)
        self.ctl.set("end_ns", end)
        self.ctl.set("state", STATE_RUN)
        self.started, self.go_ns, self.end_ns = True, start, end
        if self.kill_rate > 0:
            self.kill_schedule = KillSchedule(self.kill_rate, self.seed, start)

    def collect(self, limit_s: float) -> list[dict]:
        """Every node's report, in node order; recovers or fails on a death (see the class)."""
        assert self.ctl is not None
        deadline = time.monotonic() + limit_s
        while len(self.reports) < self.n_nodes:
            timeout = 0.05
            if self.kill_schedule is not None:
                timeout = min(timeout, self.kill_schedule.wait_s(time.perf_counter_ns()))
            spent = self.recovery_s
            self._step(timeout)
            deadline += self.recovery_s - spent  # time spent recovering is not the nodes' to lose
            self._chaos()
            if len(self.reports) < self.n_nodes and time.monotonic() > deadline:
                node = min(n for n in range(self.n_nodes) if n not in self.reports)
                raise self._failure(node, f"no report within {limit_s:.0f} s")
        for proc in self.procs:
            proc.join(JOIN_TIMEOUT_S)
        return [self.reports[n] for n in sorted(self.reports)]

    def abort_and_drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> list[dict]:
        """Tell every node to stop (STATE_ABORT) and take the reports the living send within
        `timeout_s` (a stress node reports what it saw until then); return every report, in
        node order. A second Ctrl-C meanwhile kills the nodes at once (`stopping`)."""
        with self.stopping():
            if self.ctl is not None:
                self.ctl.set("state", STATE_ABORT)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if all(n in self.reports or n in self._gone for n in range(self.n_nodes)):
                    break
                for node, msg in self._events(0.02):
                    if msg is None or "error" in msg:
                        self._gone.add(node)
                    else:
                        self.reports[node] = msg
        return [self.reports[n] for n in sorted(self.reports)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @contextmanager
    def stopping(self) -> Iterator[None]:
        """While stopping: a second Ctrl-C (or SIGTERM) SIGKILLs every node at once instead of
        interrupting the cleanup, which then goes on (unlink) and ends with KeyboardInterrupt."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def force(signum: int, frame: object) -> None:
            self.forced = True
            for p in [*self.procs, *self._retired]:
                if p is not None and p.pid is not None and p.exitcode is None:
                    try:
                        os.kill(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        old = {sig: signal.signal(sig, force) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def close(self) -> None:
        with self.stopping():
            try:
                if self.ctl is not None:
                    self.ctl.set("state", STATE_ABORT)
                self.ctl = None
                _stop([p for p in self.procs if p is not None])
            finally:
                for proc in self._retired:
                    proc.join(0)
                for c in self.conns:
                    if c is not None:
                        c.close()
                for seg in self.segments:
                    seg.close()
                    seg.unlink()
                self.segments = []
        if self.forced:
            self.forced = False
            raise KeyboardInterrupt

    # -- events ---------------------------------------------------------------------------------

    def _phase(self, node: int) -> int:
        assert self.ctl is not None
        return int(self.ctl.nodes["phase"][node])

    def _events(self, timeout: float, exclude: Sequence[int] = ()) -> list[tuple[int, dict | None]]:
        """Wait up to `timeout` s for a message or a death of a node still expected to send one;
        return (node, message), or (node, None) for a node whose process has ended without one."""
        live = [n for n in range(self.n_nodes) if n not in self.reports and n not in self._gone and n not in exclude]
        if not live:
            time.sleep(timeout)
            return []
        ready = set(wait_any([x for n in live for x in (self.conns[n], self.procs[n].sentinel)], timeout=timeout))
        out: list[tuple[int, dict | None]] = []
        for n in live:
            conn = self.conns[n]
            if conn in ready:
                try:
                    out.append((n, conn.recv()))
                except (EOFError, OSError):
                    out.append((n, None))
            elif self.procs[n].sentinel in ready and not conn.poll():
                out.append((n, None))
        return out

    def _step(self, timeout: float) -> None:
        events = self._events(timeout)
        # Messages first: a report read here must be recorded before a recovery waits on pipes.
        for node, msg in events:
            if msg is None:
                continue
            if "error" in msg:
                self._gone.add(node)
                raise self._failure(node, msg["error"], msg.get("phase"))
            self.reports[node] = msg
        for node, msg in events:
            if msg is None and node not in self.reports:
                self._died(node)

    def _died(self, node: int) -> None:
        detail = self._exit_detail(node)
        if len(self.recoveries) >= self.max_recoveries:
            self._gone.add(node)
            if self.max_recoveries:
                detail += f" (after {len(self.recoveries)} recoveries, the most this run allows)"
            raise self._failure(node, detail)
        self._recover([node], [self._failure(node, detail)])

    def _exit_detail(self, node: int) -> str:
        proc = self.procs[node]
        proc.join(1.0)  # its sentinel fired: it is reaped at once
        code = proc.exitcode
        by = " (--kill-workers)" if node in self._killed_ns else ""
        if code is None:
            return "process stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"process killed by {name}{by}"
        return f"process exited with code {code}"

    def _failure(self, node: int, detail: str, phase: str | None = None) -> NodeFailure:
        ctl = self.ctl
        where = WHERE[int(ctl.nodes["where"][node])] if ctl is not None else ""
        if phase is None:
            phase = PHASES[self._phase(node)] if ctl is not None else "spawn"
        died_ns = int(ctl.nodes["fault_ns"][node]) if ctl is not None else 0
        died_ns = self._killed_ns.get(node, died_ns)
        after = round((time.perf_counter_ns() - died_ns) / 1e9, 4) if died_ns else None
        return NodeFailure(node, self.procs[node].pid, phase, detail, where=where, detected_after_s=after)

    # -- --kill-workers -------------------------------------------------------------------------

    def _chaos(self) -> None:
        ks = self.kill_schedule
        now = time.perf_counter_ns()
        if ks is None or not ks.due(now) or (self.end_ns and now >= self.end_ns):
            return
        run = PHASES.index("run")
        candidates = [n for n in range(self.n_nodes) if n not in self.reports and n not in self._gone and self._phase(n) == run]
        node = ks.pick(candidates, now)
        if node is None:
            return
        pid = self.procs[node].pid
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._killed_ns[node] = now
        self.kills.append({"node": node, "pid": pid, "at_s": round((now - self.go_ns) / 1e9, 4)})

    # -- --recover ------------------------------------------------------------------------------

    def _quiescent(self, node: int, gen: int) -> bool:
        """Parked for recovery `gen`, or touching no shared text: not started running yet
        (``ready``: it parks at its first check once it does), or finished (``report``)."""
        assert self.ctl is not None
        phase = self._phase(node)
        return int(self.ctl.nodes["parked"][node]) == gen or phase <= PHASES.index("ready") or phase >= PHASES.index("report")

    def _recover(self, dead: list[int], failures: list[NodeFailure]) -> None:
        """Replace the nodes in `dead` (the kernel's analogue is CPU hotplug, kernel/cpu.c: the
        dying CPU is taken down under stop_machine, its work is finished or handed on, and a CPU
        brought back up starts from a clean state while cpus_write_lock() keeps text patching
        out). Here: park every other node (quiesce), `repair` the shared state (finish the dead
        nodes' journaled work), respawn each dead node with its config, wait until the
        replacements are ready, let everyone go on. Nodes that die meanwhile join the batch."""
        assert self.ctl is not None
        ctl = self.ctl
        t0 = time.perf_counter_ns()
        quiesce = self.quiesce and self.started
        gen = ctl.get("recover_gen") + 1
        if quiesce:
            ctl.set("recover_gen", gen)
            ctl.set("state", STATE_RECOVER)
        ready = PHASES.index("ready")
        first = len(self.recoveries)
        todo = list(zip(dead, failures))  # dead, to be repaired for and respawned
        replaced: list[int] = []
        while todo:
            if quiesce:
                deadline = time.monotonic() + PARK_TIMEOUT_S
                while True:
                    nodes = [d for d, _ in todo]
                    busy = [
                        n for n in range(self.n_nodes)
                        if n not in nodes and n not in self.reports and n not in self._gone and not self._quiescent(n, gen)
                    ]
                    if not busy:
                        break
                    todo += self._recover_events(nodes, len(self.recoveries) + len(todo))
                    if time.monotonic() > deadline:
                        raise self._failure(busy[0], f"did not park within {PARK_TIMEOUT_S:.0f} s for the recovery of node {nodes[0]}")
            nodes = [d for d, _ in todo]
            repaired = self.repair(nodes) if self.repair is not None and self.started else {}
            for d, failure in todo:
                old = self.procs[d]
                self._retired.append(old)
                self.conns[d].close()
                self.incarnations[d] += 1
                self._killed_ns.pop(d, None)
                for field in ("pid", "phase", "where", "parked", "fault_ns"):
                    ctl.nodes[field][d] = 0
                self._spawn(d)
                if d not in replaced:
                    replaced.append(d)
                self.recoveries.append({
                    "node": d, "old_pid": old.pid, "new_pid": self.procs[d].pid, "incarnation": self.incarnations[d],
                    "phase": failure.phase, "where": failure.where or None, "detail": failure.detail,
                    "at_s": round((t0 - self.go_ns) / 1e9, 4) if self.started else None,
                    "detected_after_s": failure.detected_after_s, "repair": repaired.get(d, {}),
                })
            todo = []
            if quiesce:
                # The replacements fill their copies from the master while nothing is patched;
                # one that dies meanwhile is replaced in this same recovery.
                deadline = time.monotonic() + SETUP_TIMEOUT_S
                while not todo and (starting := [d for d in replaced if self._phase(d) < ready]):
                    todo = self._recover_events([], len(self.recoveries))
                    if time.monotonic() > deadline:
                        raise self._failure(starting[0], "did not reach phase 'ready' in time")
        if quiesce:
            took = round((time.perf_counter_ns() - t0) / 1e9, 4)
            for rec in self.recoveries[first:]:
                rec["took_s"] = took
            ctl.set("state", STATE_RUN)
        self.recovery_s += (time.perf_counter_ns() - t0) / 1e9

    def _recover_events(self, dead: list[int], counted: int) -> list[tuple[int, NodeFailure]]:
        """During a recovery: record reports, fail on errors, and return new deaths (to be
        replaced in the same recovery, if --recover allows that many)."""
        new: list[tuple[int, NodeFailure]] = []
        for node, msg in self._events(0.002, exclude=dead):
            if msg is not None and "error" in msg:
                self._gone.add(node)
                raise self._failure(node, msg["error"], msg.get("phase"))
            if msg is not None:
                self.reports[node] = msg
                continue
            failure = self._failure(node, self._exit_detail(node))
            if counted + len(new) + 1 > self.max_recoveries:
                self._gone.add(node)
                raise failure
            new.append((node, failure))
        return new


def run_policy(spec: RunSpec, policy: str, *, on_ready: Callable[[Segment, MemoryLayout, Placement, list[int]], None] | None = None) -> dict:
    """Run `policy` in fresh node processes; return its raw per-node reports and run facts.

    `on_ready` (for tests) is called once every node has filled its memory, before the start,
    with the ``mem`` segment, its layout, the placement and the node pids.
    """
    topo, n = spec.topology, spec.topology.n_nodes
    placement, mem_serving = place_for(spec.topology, spec.image, policy, spec.replicate, spec.replicas_every)
    check_reachable(topo, placement)
    master_node = min(mem_serving)  # the first node with memory: the single copy, the shared tables
    tables = page_table_cost(spec.image, spec.pt_style, policy, n, placement.serving or mem_serving, spec.replicate)
    walks = None
    if tables is not None:
        wl = spec.workload
        walks = walk_profile(spec.image, wl.lines, wl.starts, wl.lengths, tables.granule, cold=spec.cold)
    has_memory = np.array([nd.memory_bytes > 0 for nd in topo.nodes])
    layout = MemoryLayout.for_nodes(tuple(placement.image_bytes(i) for i in range(n)))
    n_tasks = TASKS_PER_NODE * n
    ctl: Control | None = None

    def repair(dead: list[int]) -> dict:
        assert ctl is not None
        # The dead process's report is lost: its requests are in its tasks' slots (and verify),
        # not in the per-node figures; say how many it had published.
        return {d: {"task_slots_rolled_back": restore_journal(ctl, d), "requests_before": int(ctl.nodes["requests"][d])} for d in dead}

    with NodeSession(spec.start_method, n, n_tasks, max_recoveries=spec.recover, repair=repair) as session:
        ctl = session.open_control()
        master = session.create("master", len(spec.image.data))
        mem = session.create("mem", layout.size)
        master.array(np.uint8)[:] = spec.image.data
        ctl.tasks["owner"] = np.arange(n_tasks) % n
        if spec.requests is None:
            ctl.tasks["budget"] = -1
        else:
            share, extra = divmod(spec.requests, n_tasks)
            ctl.tasks["budget"] = share + (np.arange(n_tasks) < extra)

        configs = []
        for node in range(n):
            lat = tuple(float(x) if x is not None else float("inf") for x in topo.latency_ns[node])
            configs.append(
                WorkerConfig(
                    node=node,
                    n_nodes=n,
                    n_tasks=n_tasks,
                    mem_name=mem.name,
                    master_name=master.name,
                    ctl_name=session.ctl_name,
                    host_cpus=spec.host.cpus[node],
                    hosted=placement.hosted[node],
                    table=placement.tables[node],
                    layout=layout,
                    latency_row=lat,
                    workload=spec.workload,
                    cold=spec.cold,
                    user_local=spec.user_local,
                    seed=spec.seed,
                    migrate_rate=spec.migrate_rate,
                    scale=spec.scale,
                    shared_core=spec.host.oversubscribed,
                    oversleep_ns=spec.oversleep_ns,
                    coordinator_pid=os.getpid(),
                    delays=spec.delays,
                    walks=None if walks is None else walks.per_template,
                    walk_share=0.0 if walks is None else walks.miss_share,
                    walk_home=None if walks is None else (placement.serving[node] if placement.serving else master_node),
                    user_home=mem_serving[node],
                    user_homes=np.flatnonzero(has_memory) if not has_memory.all() else None,
                )
            )
        session.start(worker_main, configs)
        session.wait_ready()
        # Every node has first-touched its own partition and touched no other yet: where its
        # mem mapping's pages are is where its partition landed.
        placement_report = read_placement(session.pids, mem.name, expected_host_nodes(topo))
        if on_ready is not None:
            on_ready(mem, layout, placement, session.pids)
        session.go(spec.duration_s)
        reports = session.collect((spec.duration_s or 0) + 60.0 + (spec.requests or 0) * 0.01)
        return {
            "policy": policy,
            "placement": placement,
            "layout": layout,
            "reports": reports,
            "tasks": ctl.tasks.copy(),
            "placement_report": placement_report,
            "page_tables": tables,
            "walk_profile": walks,
            "recoveries": session.recoveries,
        }




def run_policies(spec: RunSpec, policies: Sequence[str], *, each: Callable[[str, dict, dict], None] | None = None) -> list[dict]:
    """Run each policy in turn, in fresh node processes; return their records with speedups
    against ``single`` of this same call. `each(policy, raw_run, record)` sees every raw run."""
    records = []
    for policy in policies:
        run = run_policy(spec, policy)
        rec = policy_record(policy, run, spec.topology.n_nodes, spec.duration_s)
        if spec.recover:
            rec["recoveries"] = run["recoveries"]
        if each is not None:
            each(policy, run, rec)
        records.append(rec)
    add_speedups(records)
    return records


def prepare_spec(
    topology: Topology,
    host: HostPlacement,
    image: KernelImage,
    workload: Workload,
    *,
    cold: bool,
    user_local: bool,
    duration_s: float | None,
    requests: int | None,
    migrate_rate: float,
    seed: int,
    start_method: str,
    replicate: str,
    time_scale: float | None = None,
    pt_style: str = "none",
    replicas_every: int = 1,
    delays: str = "model",
    calibrated: tuple[float, dict] | None = None,
) -> tuple[RunSpec, dict]:
    """A `RunSpec` with its time scale: `time_scale` if given, else calibrated on this host for
    this workload (`calibrate_scale`); also returns the calibration's figures ({} if given).
    With ``delays="none"`` nothing is paced, so nothing is calibrated ({} too).

    `calibrated`: a (scale, figures) pair `calibrate_scale` already returned on this host for
    the same point, used as if just measured (``bench --cluster`` calibrates once per host and
    point, not once per task); its figures include the measured oversleep the pacer needs."""
    if delays not in DELAYS:
        raise UsageError("--delays", f"'{delays}' is not one of {', '.join(DELAYS)}")
    if delays == "none" and time_scale:
        raise UsageError("--time-scale", "is for --delays model; with --delays none nothing is paced")
    cal: dict = {}
    if delays == "none":
        scale = 1.0  # never used: the workers run unpaced (clock.Unpaced)
    elif time_scale:
        scale = time_scale
    elif calibrated is not None:
        scale, cal = calibrated
    else:
        sharing = topology.n_nodes / host.n_cpus_used
        scale, cal = calibrate_scale(image, workload, topology, cold=cold, user_local=user_local, sharing=sharing, seed=seed)
    spec = RunSpec(
        topology=topology,
        host=host,
        image=image,
        workload=workload,
        cold=cold,
        user_local=user_local,
        duration_s=duration_s,
        requests=requests,
        migrate_rate=migrate_rate,
        seed=seed,
        start_method=start_method,
        scale=scale,
        replicate=replicate,
        oversleep_ns=cal.get("oversleep_ns", 60_000),
        pt_style=pt_style,
        replicas_every=replicas_every,
        delays=delays,
    )
    return spec, cal


class _SpawnPopen(popen_spawn_posix.Popen):
    """CPython's spawn launcher (``popen_spawn_posix.Popen._launch``, the same in 3.11 to 3.13),
    except that the parent closes its copy of the child's end of the config pipe *before* writing
    the config, not after. A node's config (its page table, the site table, ...) is far bigger
    than a pipe's buffer, so the write lasts until the child has read it all; if the child dies
    first (killed while Python starts), CPython's parent, still holding the pipe's only other
    reader itself, blocks in that write forever. Here the write fails (BrokenPipeError), and the
    coordinator reports the node dead in phase 'spawn'."""

    def _launch(self, process_obj: object) -> None:
        tracker_fd = resource_tracker.getfd()
        self._fds.append(tracker_fd)
        prep_data = spawn.get_preparation_data(process_obj._name)  # type: ignore[attr-defined]
        fp = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, fp)
            reduction.dump(process_obj, fp)
        finally:
            set_spawning_popen(None)
        parent_r = child_w = child_r = parent_w = None
        try:
            parent_r, child_w = os.pipe()
            child_r, parent_w = os.pipe()
            cmd = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=child_r)
            self._fds.extend([child_r, child_w])
            self.pid = util.spawnv_passfds(spawn.get_executable(), cmd, self._fds)
            self.sentinel = parent_r
            for fd in (child_r, child_w):  # the change: the child's ends are closed here
                os.close(fd)
            child_r = child_w = None
            try:
                with open(parent_w, "wb", closefd=False) as f:
                    f.write(fp.getbuffer())
            except OSError as exc:
                os.waitpid(self.pid, 0)  # reap it: nobody else knows it
                exc.pid = self.pid  # type: ignore[attr-defined]
                raise
        finally:
            fds_to_close = [fd for fd in (parent_r, parent_w) if fd is not None]
            self.finalizer = util.Finalize(self, util.close_fds, fds_to_close)
            for fd in (child_r, child_w):
                if fd is not None:
                    os.close(fd)


class _SpawnProcess(mp.get_context("spawn").Process):  # type: ignore[misc, name-defined]
    @staticmethod
    def _Popen(process_obj: object) -> _SpawnPopen:
        return _SpawnPopen(process_obj)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done (they are delivered right after)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _stop(procs) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(JOIN_TIMEOUT_S)


@dataclass(frozen=True)
class LocalNode:
    """One node's engine in-process, on all-local memory, with its tasks: what
    `calibrate_scale` (and ``numaemu calibrate``) times, batch by batch, as a worker runs them."""

    engine: NodeEngine
    tasks: np.ndarray
    seed: int

    def batch(self) -> float:
        """Run one batch of every task (no migration); return its emulated ns."""
        emulated, _ = run_batch(self.engine, self.tasks, np.arange(len(self.tasks)), self.seed, 0.0)
        return emulated


def local_node(image: KernelImage, workload: Workload, topology: Topology, *, cold: bool, user_local: bool, seed: int) -> LocalNode:
    """A node holding the whole image, charged the topology's smallest latency, with its memory
    filled as a worker fills it."""
    placement = place(image, 1, "single")
    layout = MemoryLayout.for_nodes((placement.image_bytes(0),))
    mem = np.zeros(layout.size, dtype=np.uint8)
    fill_partition(mem, image.data, layout, 0, placement.hosted[0], seed)
    local = min(x for row in topology.latency_ns for x in row if x is not None)
    engine = NodeEngine(0, mem, placement.tables[0], layout.part_offset, (layout.user_offset(0),), layout.user_bytes, np.array([local]), workload, cold=cold, user_local=user_local, cache=DirectMappedCache(), seed=seed)
    engine.prepare()
    tasks = np.zeros(TASKS_PER_NODE, dtype=TASK_SLOT)
    tasks["budget"] = -1
    return LocalNode(engine, tasks, seed)


def calibrate_scale(image: KernelImage, workload: Workload, topology: Topology, *, cold: bool, user_local: bool, sharing: float, seed: int, seconds: float = 0.3) -> tuple[float, dict]:
    """Time the node engine in-process on all-local memory and choose the time scale.

    The all-local case has the least emulated time per request, so the scale that fits it fits
    every policy; every policy of a run then uses the same scale.
    """
    node = local_node(image, workload, topology, cold=cold, user_local=user_local, seed=seed)
    emulated = 0.0
    for _ in range(2):  # warm up: page faults, caches
        node.batch()
    t0 = time.perf_counter_ns()
    batches = 0
    while time.perf_counter_ns() - t0 < seconds * 1e9 or batches < 3:
        emulated += node.batch()
        batches += 1
    processing = time.perf_counter_ns() - t0
    scale = time_scale(processing, emulated, sharing)
    return scale, {
        "processing_ns_per_batch": processing / batches,
        "emulated_ns_per_batch": emulated / batches,
        "sharing": sharing,
        "oversleep_ns": measure_oversleep_ns(),
    }


def expected_checksum(master: np.ndarray, workload: Workload, seed: int, task: int, n_requests: int) -> int:
    """Replay `task`'s first `n_requests` requests against the master image (see tasks.py)."""
    words = master.view(np.uint64).reshape(-1, LINE_SIZE // 8)
    total = 0
    step = 4096
    for first in range(0, n_requests, step):
        count = min(step, n_requests - first)
        plan = plan_requests(seed, task, first, count, workload.n_templates, 0, 1, 0.0)
        lines = workload.gather(plan.templates)
        total += int(words.take(lines, axis=0).sum(dtype=np.uint64))
    return total & ((1 << 64) - 1)
