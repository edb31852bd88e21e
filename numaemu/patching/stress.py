"""``numaemu stress``: readers on every node execute patch sites while patches fire.

Each node process (stress_node.py) alternates between its readers and its share of the patch
source: a batch of site executions (`reader.Reader`), checked at once (`reader.check_batch`), a
safe point (where it takes part in other nodes' syncs and stop_machine rounds), and, when its turn
comes at ``--rate`` operations per second over all nodes, one patch operation of the source.
After the duration every node stops patching, drops what it holds, and keeps answering syncs
until every node is done, so no patch is left half-way.

The coordinator (`run_stress`, here) then compares every copy with the master byte for byte,
reads the unexpected ops the patchers logged, and checks that static-key counts and code agree
(`_end_checks`); stress_report.py makes the JSON document and the summary of it.

When a node dies the run stops (`NodeFailure`), and what the living nodes saw until then is kept
(`run_stress` attaches it to the exception as ``partial``, with the same comparisons). With
``--recover`` the dead node is replaced instead (`respawn.Respawning`, `recovery.repair_text`):
every other node parks where it is, the dead node's journaled operation is finished for it, a new
process of the same node refills its copy from the master and joins, and the run goes on;
``--kill-workers RATE`` kills random nodes to prove it.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from numaemu.errors import NodeFailure
from numaemu.host.fence import fence
from numaemu.host.fit import SegmentNeed, segment_need
from numaemu.host.segments import MemoryLayout, Segment
from numaemu.model.binding import HostBinding
from numaemu.model.engine import page_bases
from numaemu.model.hardware_presets import resolve_hardware
from numaemu.model.image import PAGE_SIZE, KernelImage, with_module_area
from numaemu.model.pagetables import page_table_cost
from numaemu.model.placement import Placement, check_reachable, place_for
from numaemu.model.protocol_spec import ProtocolSpec
from numaemu.model.sites import SiteTable, site_table
from numaemu.model.timeline import Timeline, timeline_for
from numaemu.model.topology import Topology
from numaemu.patching.copies import TextCopies
from numaemu.patching.protocols import Locks
from numaemu.patching.reader_tasks import READER_TASKS
from numaemu.patching.recovery import repair_text
from numaemu.patching.sources import PatchOp, SourcePlan, key_agreement, plan_sources, sharing_agreement
from numaemu.patching.stress_node import StressNodeConfig, stress_worker_main
from numaemu.patching.textmem import TextState, text_segment_size
from numaemu.runtime.supervisor import NodeSession

if TYPE_CHECKING:
    from numaemu.patching.patch_bench import PatchBench

__all__ = ["StressSpec", "run_stress", "stress_need"]


@dataclass(frozen=True)
class StressSpec:
    topology: Topology
    host: HostBinding
    image: KernelImage
    policy: str
    protocol: str
    source: str
    duration_s: float
    rate: float
    seed: int
    bug: str | None
    start_method: str
    bench: PatchBench | None = None
    # Every actor's costs in emulated ns (None: the image's default on the topology's hardware
    # profile, `timeline.timeline_for`); a scale of 0 is measured from the readers at the start.
    timeline: Timeline | None = None
    replicas_every: int = 1  # replicate: a copy on every K-th node; every copy gets every patch
    pt_style: str = "none"  # reported: the page-table memory of the design
    recover: int = 0  # node deaths replaced (--recover: MAX_RECOVERIES); 0: a death ends the run
    kill_rate: float = 0.0  # --kill-workers: SIGKILLs per second over all nodes, from the coordinator
    # A script's operations instead of the source's random ones: node 0 performs them in order,
    # evenly spread over the duration; `source` still decides which sites the readers aim at.
    script: tuple[PatchOp, ...] = ()
    int3_fix: str = "refcount"  # protocols.INT3_FIXES: what the INT3 handler's descriptor relies on
    stop_at_first: bool = False  # end the run at the first violation (--stop-at-first)
    protocol_spec: ProtocolSpec | None = None  # protocol "data": its steps
    ifetch: str = "coherent"  # reader.IFETCH: how stores reach what nodes have fetched
    timeline_settings: tuple[tuple[str, float], ...] = ()  # --timeline NAME=NS over the timeline
    migrate: bool = True  # tasks migrate between nodes (--no-migrate: each stays on its node)


@dataclass(frozen=True, eq=False)
class _Setup:
    """What a stress run derives from its spec before anything is created: where the text goes,
    its sites and the sources' plan, and the facts the document reports."""

    image: KernelImage  # with its module area
    placement: Placement
    layout: MemoryLayout
    sites: SiteTable
    plan: SourcePlan
    copies: TextCopies
    n_tasks: int
    timeline: Timeline
    facts: dict[str, Any]


def _setup(spec: StressSpec) -> _Setup:
    topo, n = spec.topology, spec.topology.n_nodes
    image = with_module_area(spec.image)
    placement, mem_serving = place_for(topo, image, spec.policy, replicas_every=spec.replicas_every)
    check_reachable(topo, placement)
    tables = page_table_cost(image, spec.pt_style, spec.policy, n, placement.serving or mem_serving, "text+rodata")
    layout = MemoryLayout.for_nodes(tuple(placement.image_bytes(i) for i in range(n)), user_bytes=PAGE_SIZE)
    sites = site_table(image)
    plan = plan_sources(spec.source, sites, image.n_keys)
    facts = {
        "plan": plan,
        "copy_nodes": list(placement.copy_nodes) or [min(mem_serving)],
        "image_bytes": [placement.image_bytes(i) for i in range(n)],
        "page_tables": tables.to_json() if tables else None,
    }
    copies = TextCopies.build(placement, layout, image.n_pages)
    timeline = (spec.timeline or default_timeline(topo, image, sites)).with_settings(spec.timeline_settings)
    return _Setup(image, placement, layout, sites, plan, copies, READER_TASKS * n, timeline, facts)


def default_timeline(topo: Topology, image: KernelImage, sites: SiteTable) -> Timeline:
    """The image's timeline on the topology's hardware profile (scale to be measured)."""
    hw = resolve_hardware(None, topo.hardware)
    return timeline_for(image.arch, hw.ghz, hw.fetch_cycles_per_line, hw.dram_local_ns, int(image.function_sizes.sum()), len(sites), hw.rob_entries)


def _node_configs(spec: StressSpec, s: _Setup, session: NodeSession, segs: dict[str, Segment], locks: Locks) -> list[StressNodeConfig]:
    n, pl = spec.topology.n_nodes, s.placement
    return [
        StressNodeConfig(
            node=node, n_nodes=n, n_tasks=s.n_tasks, ctl_name=session.ctl_name, mem_name=segs["mem"].name,
            master_name=segs["master"].name, txt_name=segs["txt"].name, host_cpus=spec.host.cpus[node],
            hosted=pl.hosted[node], table=pl.tables[node], layout=s.layout, copies=s.copies,
            sites=s.sites, plan=s.plan, n_keys=s.image.n_keys, locks=locks, protocol=spec.protocol, bug=spec.bug,
            rate=spec.rate, seed=spec.seed, shared_core=spec.host.oversubscribed, coordinator_pid=os.getpid(),
            bench=spec.bench, timeline=s.timeline, script=spec.script, int3_fix=spec.int3_fix, stop_at_first=spec.stop_at_first, protocol_spec=spec.protocol_spec,
            ifetch=spec.ifetch, migrate=spec.migrate,
        )
        for node in range(n)
    ]


def run_stress(spec: StressSpec) -> dict[str, Any]:
    """Run `spec`; return the reports and the end-of-run comparisons (see `stress_report.stress_document`).
    ``reports`` are the nodes' `StressNodeReport`s (under a `PatchBench`: the bench's dicts).

    A node failure (`NodeFailure`) or an interrupt (KeyboardInterrupt) during the run stops every
    node; the reports the living send on their way out and the same comparisons are attached to
    the exception as ``partial`` (a dict like the one returned, with ``checked`` False when the
    run had not started), then it propagates."""
    s = _setup(spec)
    fence()  # compiled here, so that forked nodes inherit it
    n, image, sites = spec.topology.n_nodes, s.image, s.sites
    ctx = mp.get_context(spec.start_method)
    locks = Locks(*(ctx.Lock() for _ in range(len(dataclasses.fields(Locks)))))
    views: dict[str, Any] = {}

    def repair(dead: list[int]) -> dict[int, dict[str, Any]]:
        """While every living node is parked (Respawning._recover)."""
        return repair_text(views["st"], sites, s.copies, views["master"], views["mem"], s.plan, locks, dead)

    session = NodeSession(spec.start_method, n, s.n_tasks, max_recoveries=spec.recover, quiesce=True, repair=repair,
                          kill_rate=spec.kill_rate, seed=spec.seed)
    with session:
        session.open_control()
        segs = {
            "master": session.create("master", len(image.data)),
            "mem": session.create("mem", s.layout.size),
            "txt": session.create("txt", text_segment_size(n, len(sites), image.n_keys, s.n_tasks, s.layout.size)),
        }
        segs["master"].array(np.uint8)[:] = image.data
        st = views["st"] = TextState(segs["txt"], n, len(sites), image.n_keys, s.n_tasks, s.layout.size)
        st.task_node[:] = np.arange(s.n_tasks) // READER_TASKS  # each node starts with its own tasks
        st.task_recent[:] = -1
        views["master"], views["mem"] = segs["master"].array(np.uint8), segs["mem"].array(np.uint8)
        try:
            return _run_nodes(spec, s, session, _node_configs(spec, s, session, segs, locks), st, views)
        finally:
            views.clear()
            st.release()
            del st


def _run_nodes(spec: StressSpec, s: _Setup, session: NodeSession, configs: list[StressNodeConfig], st: TextState, views: dict[str, Any]) -> dict[str, Any]:
    """Start the nodes, run them, collect their reports; the result, or the exception with what
    there was attached as ``partial``."""

    def outcome(reports: list[Any], started: bool) -> dict[str, Any]:
        """`reports`: each node's `StressNodeReport` (a `PatchBench`'s dicts under ``bench``)."""
        return {
            **s.facts,
            **_end_checks(st, s, views["master"], views["mem"], started),
            "reports": reports, "wall_s": time.perf_counter() - t0, "run_s": time.perf_counter() - t0, "timeline": s.timeline,
            "recoveries": session.recoveries, "kills": session.kills,
        }

    t0 = time.perf_counter()
    try:
        session.start(stress_worker_main, configs)
        session.wait_ready()
        t0 = time.perf_counter()
        session.go(spec.duration_s)
        messages = session.collect(spec.duration_s + 120.0)
    except (NodeFailure, KeyboardInterrupt) as exc:
        # Keep what there is: the living nodes' reports, and the comparisons (once
        # they have stopped, nothing moves). Before the start there is nothing to compare.
        messages = session.abort_and_drain() if session.started else []
        # KeyboardInterrupt has no `partial`: the command reads it with getattr.
        exc.partial = outcome(messages, session.started)  # type: ignore[union-attr]
        raise
    return outcome(messages, True)


def _end_checks(st: TextState, s: _Setup, m: np.ndarray, mm: np.ndarray, started: bool) -> dict[str, Any]:
    """Every node's text as its page table maps it against the master, the patchers' log of
    unexpected ops, static keys' counts against their code, and the master against the committed
    states (`checked` False: the run never started, nothing was compared)."""
    if not started:
        return {"checked": False, "replica_mismatches": [], "failures": [], "n_failures": 0, "key_problems": [], "state_drift": 0}
    sites, plan = s.sites, s.plan
    bases = [page_bases(table, s.layout.part_offset) for table in s.placement.tables]
    return {
        "checked": True,
        "replica_mismatches": TextCopies.mismatches_seen(m, mm, bases, np.flatnonzero(s.copies.where[:, 0] >= 0)),
        "failures": [_failure_json(rec, sites) for rec in st.failure_log[: min(st.get("failures"), 10)]],
        "n_failures": st.get("failures"),
        "key_problems": (key_agreement(plan, st.key_count, st.site_state, st.site_live) if "static_keys" in plan.names else [])
        + (sharing_agreement(plan, st.share_users, st.site_state) if "shared" in plan.names else []),
        # The master's bytes agree with the committed state of every site.
        "state_drift": _state_drift(m, sites, st.site_state, st.site_live),
    }


def _failure_json(rec: np.void, sites: SiteTable) -> dict[str, Any]:
    """One record of the patchers' failure log (textmem.TXT_FAILURE), as the document shows it."""
    site = int(rec["site"])
    if site < 0:
        return {"kind": "replica-differs", "node": int(rec["node"]), "page": -1 - site, "copy": int(rec["found"][0])}
    L = int(sites.length[site])
    return {
        "kind": "unexpected-op",
        "node": int(rec["node"]),
        "site": site,
        "address": hex(int(sites.offset[site])),
        "expected": bytes(rec["expected"][:L]).hex(" "),
        "found": bytes(rec["found"][:L]).hex(" "),
    }


def _state_drift(master: np.ndarray, sites: SiteTable, state: np.ndarray, live: np.ndarray) -> int:
    """Sites (of the core image, and of loaded modules) whose master bytes are not the encoding
    of their committed state."""
    which = np.concatenate([np.arange(sites.n_core), sites.n_core + np.flatnonzero(live[sites.n_core :])])
    held = sites.holds(which, state[which].astype(np.int64), sites.read(master, which))
    return int(np.count_nonzero(~held))


def stress_need(topo: Topology, image: KernelImage, policy: str, *, replicas_every: int = 1) -> SegmentNeed:
    """The `SegmentNeed` of ``stress`` (`stress.run_stress`: the image with its module area,
    one page of user data per node, and the ``txt`` segment)."""
    image = with_module_area(image)
    placement, _ = place_for(topo, image, policy, replicas_every=replicas_every)
    check_reachable(topo, placement)
    n, n_tasks = topo.n_nodes, READER_TASKS * topo.n_nodes
    mem = MemoryLayout.for_nodes(tuple(placement.image_bytes(i) for i in range(n)), user_bytes=PAGE_SIZE).size
    txt = text_segment_size(n, len(site_table(image)), image.n_keys, n_tasks, mem)
    return segment_need(placement, image, label=policy, n_tasks=n_tasks, user_bytes=PAGE_SIZE, txt=txt)
