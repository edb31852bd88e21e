"""One ``numaemu stress`` node process: its readers execute patch sites while it patches.

`stress_worker_main` is what the coordinator starts for each node (through
`worker.node_shell`). The node fills its partition, builds its `NodeKernel`, its `Reader` and its
share of the patch source, waits for the start, and then alternates between a batch of its reader
tasks (`ReaderTasks`: executed, then checked at once by `reader.check_batch`), a safe point
(where it takes part in other nodes' syncs and stop_machine rounds) and, when its turn comes at
``--rate`` operations per second over all nodes, one operation of the source (`_patch_and_read`).
After the duration it stops patching, drops what it holds, and keeps answering syncs until every
node is done. Its report (`StressNodeReport`) goes back over the pipe, also when the run is
aborted (what it saw until then). Under a `PatchBench` the node runs the bench instead.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from numaemu.host.clock import Pacer, spin
from numaemu.host.cpus import pin_to
from numaemu.host.segments import MemoryLayout
from numaemu.model.placement import PageTable
from numaemu.model.protocol_spec import ProtocolSpec
from numaemu.model.sites import FTRACE_BPF, FTRACE_KLP, MODULE_FUNCS, SITES_PER_MODULE_FUNC, SiteTable
from numaemu.model.timeline import Timeline, scale_for
from numaemu.patching.data_protocol import DATA_STEP, step_name
from numaemu.patching.kernel import NodeKernel
from numaemu.patching.node_source import NodeSource
from numaemu.patching.protocols import STEPS, Locks
from numaemu.patching.reader import Observation, Reader, check_batch
from numaemu.patching.sources import PatchOp, SourcePlan
from numaemu.patching.textmem import TextCopies, TextState
from numaemu.runtime.faults import Launch
from numaemu.runtime.worker import Aborted, NodeContext, fill_partition, node_shell

if TYPE_CHECKING:
    from numaemu.patching.patch_bench import PatchBench

__all__ = ["StressNodeConfig", "StressNodeReport", "stress_worker_main", "ReaderTasks", "READER_TASKS", "BATCH_SITES", "MAX_REPORTED"]

READER_TASKS = 2  # per node, for livepatch's per-task consistency
BATCH_SITES = 48  # sites executed per reader batch (between two safe points)
HOT_SHARE = 0.75  # share of executions aimed at the sites the source patches
MEASURE_BATCHES = 24  # reader batches timed before the start (the time scale)
MAX_REPORTED = 10


@dataclass(frozen=True)
class StressNodeConfig:
    node: int
    n_nodes: int
    n_tasks: int
    ctl_name: str
    mem_name: str
    master_name: str
    txt_name: str
    host_cpus: tuple[int, ...]
    hosted: np.ndarray
    table: PageTable
    layout: MemoryLayout
    copies: TextCopies
    sites: SiteTable
    plan: SourcePlan
    n_keys: int
    locks: Locks
    protocol: str
    bug: str | None
    rate: float
    seed: int
    shared_core: bool
    coordinator_pid: int
    bench: PatchBench | None
    timeline: Timeline  # scale 0: measured from the readers before the start
    script: tuple[PatchOp, ...] = ()  # StressSpec.script: node 0 performs these instead of the source's
    int3_fix: str = "refcount"  # protocols.INT3_FIXES
    stop_at_first: bool = False  # end the run at the first violation any node sees
    protocol_spec: ProtocolSpec | None = None  # protocol "data": its steps


@dataclass(frozen=True)
class StressNodeReport:
    """What a stress node reports to the coordinator when it is done (or aborted: `aborted`
    says why, and the figures are what it saw until then)."""

    node: int
    pid: int
    incarnation: int  # 0: the first process of this node; k: its k-th replacement (--recover)
    parks: int  # recoveries this node was parked through
    aborted: str | None
    cpus: tuple[int, ...]
    executions: int  # site executions checked
    violations: int
    examples: tuple[dict[str, Any], ...]  # the first MAX_REPORTED violations, as JSON
    int3_hits: int
    flushes: int  # of the instruction buffer
    patch_calls: int
    sites_patched: int
    syncs: int
    stop_rounds: int
    unexpected_ops: int
    source_ops: int
    module_loads: int
    ftrace_all_enables: int
    module_unloads: int
    latencies_us: tuple[float, ...]  # of each patch call
    scale: float  # the run's time scale (wall ns per emulated ns)
    first_violation: dict[str, Any] | None  # --stop-at-first: the first this node saw, in full

    # The fields of the JSON's ``per_node`` entries, in their order there.
    PER_NODE: ClassVar[tuple[str, ...]] = (
        "node", "pid", "incarnation", "cpus", "executions", "violations", "int3_hits", "flushes",
        "patch_calls", "sites_patched", "syncs", "unexpected_ops", "source_ops", "parks", "aborted",
    )

    def per_node(self) -> dict[str, Any]:
        """This node's entry of the stress document's ``per_node``."""
        out = {name: getattr(self, name) for name in self.PER_NODE}
        out["cpus"] = list(self.cpus)
        return out



def stress_worker_main(cfg: StressNodeConfig, conn: Connection, launch: Launch | None = None) -> None:
    node_shell(cfg, conn, _stress_body, launch)


def _stress_body(nc: NodeContext) -> StressNodeReport | dict[str, Any]:
    cfg: StressNodeConfig = nc.cfg
    mem_seg, master_seg, txt_seg = nc.attach(cfg.mem_name), nc.attach(cfg.master_name), nc.attach(cfg.txt_name)
    cpus = pin_to(cfg.host_cpus)
    nc.phase("fill")
    mem, master = mem_seg.array(np.uint8), master_seg.array(np.uint8)
    fill_partition(mem, master, cfg.layout, cfg.node, cfg.hosted, cfg.seed)
    st = TextState(txt_seg, cfg.n_nodes, len(cfg.sites), cfg.n_keys, cfg.n_tasks)
    reader: Reader | None = None
    kernel = NodeKernel(
        cfg.node, cfg.n_nodes, st, cfg.copies, master, mem, cfg.sites, cfg.locks,
        protocol=cfg.protocol, bug=cfg.bug, shared_core=cfg.shared_core,
        flush=lambda: reader.flush() if reader is not None else None,
        check_alive=nc.poll, int3_fix=cfg.int3_fix, data_protocol=cfg.protocol_spec, mark=nc.mark, fault=nc.fault.reached,
    )
    reader = Reader(cfg.node, mem, cfg.table, cfg.layout.part_offset, cfg.sites, st, kernel.safe_point,
                    refcount=cfg.int3_fix == "refcount", mark=nc.mark)
    incarnation = nc.launch.incarnation  # a replacement (--recover) draws its own choices
    rng = np.random.default_rng([cfg.seed, cfg.node, 0x73747273] + ([incarnation] if incarnation else []))  # "strs"
    source = NodeSource(cfg.plan, kernel, st, rng, key_race=cfg.bug == "key-race")
    readers = ReaderTasks(cfg, st, reader, rng, source)
    kernel.idle = readers.run_batch  # a node waiting for a lock runs its readers meanwhile
    if not cfg.timeline.scale:
        st.node_set(cfg.node, "site_wall_ns", readers.measure())
    start_ns, end_ns = nc.wait_start(Pacer(1.0, cfg.shared_core))
    tl = run_timeline(cfg.timeline, st)
    kernel.set_timeline(tl)
    reader.set_timeline(tl)
    readers.pace_ns, readers.scale, readers.start_ns = tl.wall_ns(tl.site_ns), tl.scale, start_ns
    source.deadline_ns = end_ns
    if cfg.bench is not None:
        nc.phase("run")
        return cfg.bench.on_node(cfg, st, kernel, readers, cpus)

    nc.phase("run")
    # From here on a recovery parks this node wherever it waits (or between two reader
    # batches), and it resynchronises before going on.
    nc.parkable = True
    nc.on_resume.append(kernel.resync)
    aborted = None
    try:
        _patch_and_read(nc, kernel, source, readers, st, rng, max(start_ns, time.perf_counter_ns()), end_ns)
    except Aborted as exc:  # the run is stopping (a node died, Ctrl-C): report what was seen
        aborted = str(exc)
    return _report(nc, kernel, source, readers, reader, cpus, aborted)


def run_timeline(timeline: Timeline, st: TextState) -> Timeline:
    """The run's timeline: `timeline` if its scale is set; else at the scale of the slowest
    node's reader (`timeline.scale_for`), measured by every node before the start and agreed in
    the header, where a replacement node (--recover) finds it too."""
    if timeline.scale:
        return timeline
    ppm = st.get("scale_ppm")
    if not ppm:
        ppm = int(scale_for(timeline, float(st.nodes["site_wall_ns"].max())) * 1e6)
        st.set("scale_ppm", ppm)  # every node computes the same value from the same figures
    return timeline.with_scale(ppm / 1e6)


def _report(nc: NodeContext, kernel: NodeKernel, source: NodeSource, readers: ReaderTasks, reader: Reader, cpus: tuple[int, ...], aborted: str | None) -> StressNodeReport:
    stats = kernel.stats
    return StressNodeReport(
        node=kernel.node, pid=os.getpid(), incarnation=nc.launch.incarnation, parks=nc.parks, aborted=aborted,
        cpus=cpus, executions=readers.executions, violations=readers.violations, examples=tuple(readers.examples),
        int3_hits=reader.int3_hits, flushes=reader.flushes, patch_calls=stats.calls, sites_patched=stats.sites,
        syncs=stats.syncs, stop_rounds=stats.stop_rounds, unexpected_ops=kernel.unexpected, source_ops=source.ops,
        module_loads=source.module_loads, ftrace_all_enables=source.ftrace_all_enables, module_unloads=source.module_unloads,
        latencies_us=tuple((np.array(stats.latencies_ns, dtype=np.float64) / 1e3).tolist()),
        scale=readers.scale, first_violation=readers.first,
    )


def _patch_and_read(nc: NodeContext, kernel: NodeKernel, source: NodeSource, readers: ReaderTasks, st: TextState, rng: np.random.Generator, start_ns: int, end_ns: int) -> None:
    """The run phase: readers, safe points and this node's share of the patch operations until
    `end_ns`, then the wind-down."""
    cfg = nc.cfg
    interval = int(1e9 * cfg.n_nodes / cfg.rate)
    # Each node issues its operations as a Poisson process at rate/n_nodes: independent CPUs do
    # not take turns, so operations of different nodes really overlap (as key-race needs).
    next_op = start_ns + int(rng.exponential(interval))
    # A script's operations: node 0's alone, the i-th at start + (i + 1) / (n + 1) of the run.
    script = list(cfg.script) if cfg.node == 0 else []
    gap = (end_ns - start_ns) // (len(cfg.script) + 1)
    while True:
        nc.poll()
        now = time.perf_counter_ns()
        if now >= end_ns or st.get("first_at_ns"):
            break
        kernel.safe_point()
        if cfg.script:
            if script and now >= start_ns + gap * (len(cfg.script) - len(script) + 1):
                source.perform(script.pop(0))
        elif now >= next_op:
            source.step()
            next_op += int(rng.exponential(interval))
            if next_op < now:  # fell behind (a slow patch): do not burst to catch up
                next_op = now + int(rng.exponential(interval))
        nc.fault.reached("run")
        readers.run_batch()

    for op in script:  # a script is done whole, even when its operations outlast the duration
        source.perform(op)
    # Wind down: drop what this node holds, then keep answering syncs until every node is done.
    source.finish()
    readers.leave_all()
    kernel.idle = None
    st.nodes["done"][cfg.node] = 1
    kernel.wait_for(lambda: bool(np.all(st.nodes["done"] == 1)), "the other nodes to finish")


class ReaderTasks:
    """The node's reader tasks: each batch is one task's request: its livepatch set first (one
    consistent version), then sites the source patches, then any site of the image."""

    def __init__(self, cfg: StressNodeConfig, st: TextState, reader: Reader, rng: np.random.Generator, source: NodeSource) -> None:
        self.cfg, self.st, self.reader, self.rng, self.source = cfg, st, reader, rng, source
        # Which hot static key each site belongs to (-1: none), to check that a key this node
        # holds a reference on is enabled wherever the node runs its code.
        plan = cfg.plan
        self.key_of = np.full(len(cfg.sites), -1, dtype=np.int64)
        if "static_keys" in plan.names:
            for i, sites in enumerate(plan.key_sites):
                self.key_of[sites] = i
            jumps = plan.module_jump_key >= 0
            self.key_of[plan.module_sites[jumps]] = plan.module_jump_key[jumps]
        self.hot = cfg.plan.hot_sites()
        self.bpf_site = int(cfg.plan.bpf_site) if "bpf" in cfg.plan.names else -1
        self.klp = cfg.plan.klp_sites if "livepatch" in cfg.plan.names else None
        self.mod_sites = cfg.plan.module_sites if "module" in cfg.plan.names else np.zeros(0, np.int64)
        self.task = 0
        self.pace_ns = 0  # wall ns each site executed takes at least (the timeline's site_ns)
        self.scale, self.start_ns = 1.0, 0  # the timeline's scale, and when the run started
        self.first: dict[str, Any] | None = None  # --stop-at-first: the first violation, in full
        self.recent = [np.zeros(0, np.int64) for _ in range(READER_TASKS)]
        self.executions = self.violations = self.batches = 0
        self.examples: list[dict[str, Any]] = []

    def _off_while_held(self, obs: Observation) -> int:
        """Executions of a static key's site that did not jump although this node holds a
        reference on the key (static_key_enabled() must be true while a reference is held)."""
        keys = self.key_of[obs.sites]
        which = np.flatnonzero(keys >= 0)
        if len(which) == 0:
            return 0
        which = which[self.source.held[keys[which]] > 0]
        if len(which) == 0:
            return 0
        ok = _jump_taken(obs, self.cfg.sites, which) & obs.handler_ok[which]
        return int(np.count_nonzero(~ok))

    def measure(self, batches: int = MEASURE_BATCHES) -> int:
        """Wall ns per site of this node's requests, executed and checked as in the run (the
        median of `batches`), before the start: what the run's time scale is set from."""
        times = []
        for i in range(batches):
            t0 = time.perf_counter_ns()
            batch = self._pick(i % READER_TASKS)
            check_batch(self.reader.execute(batch), self.cfg.sites, self.cfg.node, 0)
            times.append((time.perf_counter_ns() - t0) / len(batch))
        self.recent = [np.zeros(0, np.int64) for _ in range(READER_TASKS)]
        return int(np.median(times)) + 1

    def run_batch(self) -> None:
        """One request of the next task: executed, checked, counted and published; then paced,
        so that it takes the wall time its sites stand for on the timeline."""
        cfg, st = self.cfg, self.st
        t0 = time.perf_counter_ns()
        self.reader.safe_point()
        t = cfg.node * READER_TASKS + self.task
        self.task = (self.task + 1) % READER_TASKS
        if self.klp is not None:
            st.task_klp[t] = st.get("klp_target")  # a task switches only here, between requests
        batch = self._pick(t)
        obs = self.reader.execute(batch)
        self.violations += self._judge(obs, t)
        self.violations += self._inside(obs, t)
        self.executions += len(batch)
        self.batches += 1
        # Published as they grow: a node killed before its report still counts (recovery.py).
        node, stats = cfg.node, self.source.k.stats
        st.node_set(node, "executions", self.executions)
        st.node_set(node, "violations", self.violations)
        st.node_set(node, "patch_calls", stats.calls)
        st.node_set(node, "sites_patched", stats.sites)
        st.node_set(node, "source_ops", self.source.ops)
        if self.pace_ns:
            spin(t0 + len(batch) * self.pace_ns - time.perf_counter_ns())

    def _pick(self, t: int) -> np.ndarray:
        """Task `t`'s request: its livepatch set, hot sites (half of them re-run from its previous
        request), then sites of the whole image, BATCH_SITES in all."""
        cfg, st, rng = self.cfg, self.st, self.rng
        hot = self.hot
        if len(self.mod_sites):  # modules' sites only while they are loaded
            live = self.mod_sites[st.site_live[self.mod_sites] == 1]
            hot = np.concatenate([hot, live])
        n_hot = int(BATCH_SITES * HOT_SHARE) if len(hot) else 0
        picked = hot[rng.integers(0, len(hot), n_hot)] if n_hot else np.zeros(0, np.int64)
        # Locality, as in real code paths: a task re-executes half of the sites it ran in its
        # previous request (so its instruction buffer keeps serving them).
        prev = self.recent[t % READER_TASKS]
        if len(prev) and n_hot:
            keep = prev[rng.integers(0, len(prev), n_hot // 2)]
            if len(self.mod_sites):
                keep = keep[(keep < cfg.sites.n_core) | (st.site_live[keep] == 1)]
            picked = np.concatenate([keep, picked[: n_hot - len(keep)]])
        self.recent[t % READER_TASKS] = picked
        return np.concatenate([
            self.klp if self.klp is not None else np.zeros(0, np.int64),
            picked,
            rng.integers(0, cfg.sites.n_core, BATCH_SITES - len(picked)),
        ])

    def _inside(self, obs: Observation, t: int) -> int:
        """Task `t` and the code that can be freed under it: the BPF trampoline and modules. A
        task whose request called into one is preempted inside it and leaves it at the end of
        its next request; what it entered must not have been freed meanwhile
        (``trampoline-freed``, ``module-freed``: it would run freed memory). A request the task
        ends outside any trampoline is a voluntary context switch (RCU-tasks' quiescent state)."""
        st, cfg, bad = self.st, self.cfg, 0
        tramp, mod = int(st.task_tramp[t]), int(st.task_mod[t])
        if tramp and st.get("tramp_gen") != tramp - 1:
            bad += self._freed(t, "trampoline-freed", self.bpf_site, "the BPF trampoline")
        if mod and st.slot_gen[(mod - 1) % 1024] != (mod - 1) // 1024:
            slot = (mod - 1) % 1024
            bad += self._freed(t, "module-freed", int(cfg.sites.module_sites(slot)[0]), f"module slot {slot}'s code")
        st.task_tramp[t] = st.task_mod[t] = 0
        ok = obs.handler_ok
        if self.bpf_site >= 0:
            called = (obs.sites == self.bpf_site) & ok
            if called.any() and cfg.sites.holds(obs.sites[called], FTRACE_BPF, obs.observed[called]).any():
                st.task_tramp[t] = st.get("tramp_gen") + 1
        in_mod = np.flatnonzero((obs.sites >= cfg.sites.n_core) & ok)
        if len(in_mod):
            slot = int(obs.sites[in_mod[-1]] - cfg.sites.n_core) // (MODULE_FUNCS * SITES_PER_MODULE_FUNC)
            gen = int(st.slot_gen[slot])
            if gen:
                # try_module_get: take the reference, then check the module is not going (the
                # unloader marks it going, then waits for the references), else drop it.
                st.task_mod[t] = gen * 1024 + slot + 1
                if not st.site_live[obs.sites[in_mod[-1]]]:
                    st.task_mod[t] = 0
        if not st.task_tramp[t]:
            st.task_qs[t] += 1
        return bad

    def _freed(self, t: int, kind: str, site: int, what: str) -> int:
        example = {"kind": kind, "node": self.cfg.node, "task": t, "site": site, "address": hex(int(self.cfg.sites.offset[site])),
                   "detail": f"a task preempted inside {what} came back to it after it was freed"}
        if len(self.examples) < MAX_REPORTED:
            self.examples.append(example)
        if self.cfg.stop_at_first and self.first is None:
            self._stop_at(example, t)
        return 1

    def leave_all(self) -> None:
        """The run is over for this node: its tasks leave whatever trampoline or module they are
        in (each still checked) and pass a quiescent state."""
        none = Observation(*(np.zeros(0, dt) for dt in (np.int64, np.uint8, bool, bool, np.int64, np.int64, np.int8)))
        for t in range(self.cfg.node * READER_TASKS, (self.cfg.node + 1) * READER_TASKS):
            self.violations += self._inside(none, t)

    def _judge(self, obs: Observation, t: int) -> int:
        """The violations in task `t`'s request `obs` (the first few kept as examples)."""
        cfg, st = self.cfg, self.st
        room = MAX_REPORTED - len(self.examples)
        bad, found = check_batch(obs, cfg.sites, cfg.node, room)
        if self.klp is not None and _livepatch_mix(obs, cfg.sites, len(self.klp), int(st.task_klp[t])):
            bad += 1
            if len(self.examples) < MAX_REPORTED:
                self.examples.append({"kind": "livepatch-mix", "node": cfg.node, "task": t, "detail": "one request ran old and new versions of the patched set"})
        held = self._off_while_held(obs)
        if held:
            bad += held
            if len(self.examples) < MAX_REPORTED:
                self.examples.append({"kind": "key-off-while-held", "node": cfg.node, "detail": f"{held} sites of static keys this node holds a reference on ran their NOP"})
        self.examples += [v.to_json() for v in found][: max(0, MAX_REPORTED - len(self.examples))]
        if bad and cfg.stop_at_first and self.first is None:
            self._stop_at(found[0].to_json() if found else self.examples[-1], t)
        return bad

    def _step_name(self, index: int) -> str:
        return STEPS[index] if index < DATA_STEP else step_name(self.cfg.protocol_spec, index - DATA_STEP)

    def _stop_at(self, example: dict[str, Any], task: int) -> None:
        """Record the first violation in full (where every node's patch call was, when on the
        timeline) and tell every node to stop (the header's ``first_at_ns``)."""
        st, now = self.st, time.perf_counter_ns()
        self.first = {
            **example, "task": task,
            "emulated_us": round((now - self.start_ns) / self.scale / 1e3, 3),
            "steps": {n: self._step_name(int(st.nodes["step"][n])) for n in range(self.cfg.n_nodes)},
        }
        if not st.get("first_at_ns"):
            st.set("first_at_ns", now)


def _jump_taken(obs: Observation, sites: SiteTable, which: np.ndarray) -> np.ndarray:
    """Whether the executions `which` of `obs` ran the site's JMP (state 1)."""
    return sites.holds(obs.sites[which], 1, obs.observed[which])


def _livepatch_mix(obs: Observation, sites: SiteTable, n_klp: int, task_state: int) -> str:
    """The livepatch set is the first `n_klp` sites of the batch: which version of each
    function ran? Site NOP: the old one; site -> handler: the task's version."""
    versions = set()
    for i in range(n_klp):
        state = sites.state_of(int(obs.sites[i]), bytes(obs.observed[i, : sites.length[obs.sites[i]]]))
        if state is None:
            continue  # torn: already a violation of its own
        versions.add(task_state if state == FTRACE_KLP else 0)
    return "mix" if len(versions) > 1 else ""
