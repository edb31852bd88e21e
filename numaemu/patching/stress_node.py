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

from numaemu.host.clock import Pacer
from numaemu.host.cpus import pin_to
from numaemu.host.fence import fence
from numaemu.host.segments import MemoryLayout
from numaemu.model.engine import page_bases
from numaemu.model.placement import PageTable
from numaemu.model.protocol_spec import ProtocolSpec
from numaemu.model.sites import SiteTable
from numaemu.model.timeline import Timeline, scale_for
from numaemu.patching.copies import TextCopies
from numaemu.patching.kernel import NodeKernel
from numaemu.patching.node_source import NodeSource
from numaemu.patching.protocols import Locks
from numaemu.patching.reader import Reader
from numaemu.patching.reader_tasks import ReaderTasks
from numaemu.patching.sources import PatchOp, SourcePlan
from numaemu.patching.textmem import TextState
from numaemu.runtime.faults import Launch
from numaemu.runtime.worker import Aborted, NodeContext, fill_partition, node_shell

if TYPE_CHECKING:
    from numaemu.patching.patch_bench import PatchBench

__all__ = ["StressNodeConfig", "StressNodeReport", "stress_worker_main", "run_timeline"]



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
    ifetch: str = "coherent"  # reader.IFETCH
    migrate: bool = True  # each node's travelling task moves to the next node after each request


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
    ipmodify_refused: int  # ``shared``: second IPMODIFY users refused
    first_violation: dict[str, Any] | None  # --stop-at-first: the first this node saw, in full
    migrations: int = 0  # tasks this node migrated to the next
    new_then_old: int = 0  # a task ran a site's new code, then its old, within one call (reader_tasks._order)
    ordering: tuple[dict[str, Any], ...] = ()  # the first of those, described

    # The fields of the JSON's ``per_node`` entries, in their order there.
    PER_NODE: ClassVar[tuple[str, ...]] = (
        "node", "pid", "incarnation", "cpus", "executions", "violations", "int3_hits", "flushes",
        "patch_calls", "sites_patched", "syncs", "unexpected_ops", "source_ops", "parks", "aborted", "migrations", "new_then_old",
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
    st = TextState(txt_seg, cfg.n_nodes, len(cfg.sites), cfg.n_keys, cfg.n_tasks, cfg.layout.size)
    reader: Reader | None = None
    kernel = NodeKernel(
        cfg.node, cfg.n_nodes, st, cfg.copies, master, mem, cfg.sites, cfg.locks,
        protocol=cfg.protocol, bug=cfg.bug, shared_core=cfg.shared_core,
        flush=lambda: reader.flush() if reader is not None else None,
        check_alive=nc.poll, int3_fix=cfg.int3_fix, data_protocol=cfg.protocol_spec, mark=nc.mark, fault=nc.fault.reached,
        local_base=page_bases(cfg.table, cfg.layout.part_offset),
    )
    reader = Reader(cfg.node, mem, cfg.table, cfg.layout.part_offset, cfg.sites, st, kernel.safe_point,
                    refcount=cfg.int3_fix == "refcount", mark=nc.mark, ifetch=cfg.ifetch)
    incarnation = nc.launch.incarnation  # a replacement (--recover) draws its own choices
    rng = np.random.default_rng([cfg.seed, cfg.node, 0x73747273] + ([incarnation] if incarnation else []))  # "strs"
    source = NodeSource(cfg.plan, kernel, st, rng, key_race=cfg.bug == "key-race")
    readers = ReaderTasks(cfg, st, reader, rng, source, adopt=incarnation > 0)
    kernel.idle = readers.run_batch  # a node waiting for a lock runs its readers meanwhile
    fence()  # compiled (or loaded from numba's cache) before the readers are timed
    if not cfg.timeline.scale:
        st.node_set(cfg.node, "site_wall_ns", readers.measure())
    start_ns, end_ns = nc.wait_start(Pacer(1.0, cfg.shared_core))
    # Every node has filled its copy now; lines this node's readers read of another node's copy
    # while timing them may predate that fill, and no store would invalidate them (copies.invalidate).
    reader.reset()
    tl = run_timeline(cfg.timeline, st)
    kernel.set_timeline(tl)
    reader.set_timeline(tl)
    readers.pace_ns, readers.scale, readers.start_ns = tl.wall_ns(tl.site_ns), tl.scale, start_ns
    source.deadline_ns = end_ns
    if cfg.bench is not None:
        nc.phase("run")
        return cfg.bench.on_node(cfg, st, kernel, readers, cpus)

    nc.phase("run")
    kernel.text.meanwhile = readers.run_until  # the node's other CPUs run its tasks while one patches
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
        scale=readers.scale, first_violation=readers.first, ipmodify_refused=source.ipmodify_refused,
        migrations=readers.migrations, new_then_old=readers.new_then_old, ordering=tuple(readers.ordering),
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

    def finished() -> bool:
        readers.drain()  # tasks still migrating here leave what they were in, and stay
        return bool(np.all(st.nodes["done"] == 1))

    kernel.wait_for(finished, "the other nodes to finish")
    readers.drain()
