"""``numaemu stress``: readers on every node execute patch sites while patches fire.

Each node process alternates between its readers and its share of the patch source: a batch of
site executions (`fetch.Reader`), checked at once (`fetch.check_batch`), a safe point (where it
takes part in other nodes' syncs and stop_machine rounds), and, when its turn comes at
``--rate`` operations per second over all nodes, one patch operation of the source. After the
duration every node stops patching, drops what it holds, and keeps answering syncs until every
node is done, so no patch is left half-way.

The coordinator then compares every copy with the master byte for byte, reads the unexpected ops
the patchers logged, and checks that static-key counts and code agree.

When a node dies the run stops (`NodeFailure`), and what the living nodes saw until then is kept
(`run_stress` attaches it to the exception as ``partial``, with the same comparisons). With
``--recover`` the dead node is replaced instead (`coordinator.NodeSession._recover`,
`recovery.repair_text`): every other node parks where it is, the dead node's journaled operation
is finished for it, a new process of the same node refills its copy from the master and joins,
and the run goes on; ``--kill-workers RATE`` kills random nodes to prove it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass

import numpy as np

from numaemu.errors import NodeFailure
from numaemu.host.clock import Pacer
from numaemu.host.cpus import host_cpus, pin_to
from numaemu.host.fit import SegmentNeed, segment_need
from numaemu.host.segments import MemoryLayout
from numaemu.model.image import PAGE_SIZE, KernelImage, synthetic_image, with_module_area
from numaemu.model.pagetables import page_table_cost
from numaemu.model.placement import PageTable, check_reachable, place_for
from numaemu.model.sites import FTRACE_KLP, SiteTable, site_table
from numaemu.model.topology import HostPlacement, Topology, place_on_host
from numaemu.patching.protocols import IPI_DELAY_NS, TEXT_POKE_NS, Locks, NodeKernel
from numaemu.patching.reader import Reader, check_batch
from numaemu.patching.recovery import repair_text
from numaemu.patching.sources import NodeSource, SourcePlan, key_agreement, plan_sources
from numaemu.patching.textmem import TextCopies, TextState, text_segment_size
from numaemu.runtime.faults import Launch
from numaemu.runtime.respawn import MAX_RECOVERIES
from numaemu.runtime.results import SCHEMA
from numaemu.runtime.supervisor import NodeSession
from numaemu.runtime.worker import Aborted, NodeContext, fill_partition, node_shell

__all__ = ["StressSpec", "PatchBench", "run_stress", "run_patch_bench", "READER_TASKS", "BATCH_SITES", "MAX_RECOVERIES"]

READER_TASKS = 2  # per node, for livepatch's per-task consistency
BATCH_SITES = 48  # sites executed per reader batch (between two safe points)
HOT_SHARE = 0.75  # share of executions aimed at the sites the source patches
MAX_REPORTED = 10


@dataclass(frozen=True)
class StressSpec:
    topology: Topology
    host: HostPlacement
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
    ipi_delay_ns: int = IPI_DELAY_NS
    text_poke_ns: int = TEXT_POKE_NS
    replicas_every: int = 1  # replicate: a copy on every K-th node; every copy gets every patch
    pt_style: str = "none"  # reported: the page-table memory of the design
    recover: int = 0  # node deaths replaced (--recover: MAX_RECOVERIES); 0: a death ends the run
    kill_rate: float = 0.0  # --kill-workers: SIGKILLs per second over all nodes, from the coordinator


@dataclass(frozen=True)
class PatchBench:
    """Instead of readers and a source: node 0 times patch calls, the others wait."""

    repeats: int = 200
    batch: int = 256
    load: bool = False  # the other nodes run readers instead of idling at a safe point
    ftrace_all: bool = False  # also time tracing every function on and off
    # > 0: also time flipping one static key with this many use sites, `repeats` times each way:
    # batched (one patch call for every site) and unbatched (one call per site).
    sites: int = 0

    def __post_init__(self) -> None:
        for name in ("repeats", "batch", "sites"):
            if not isinstance(getattr(self, name), int):
                raise TypeError(f"{name} must be an int")
        if self.repeats < 1:
            raise ValueError("repeats must be >= 1")
        if self.batch < 1:
            raise ValueError("batch must be >= 1")
        if self.sites < 0:
            raise ValueError("sites must be >= 0")


@dataclass(frozen=True)
class StressConfig:
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
    ipi_delay_ns: int
    text_poke_ns: int


def stress_worker_main(cfg: StressConfig, conn, launch: Launch | None = None) -> None:
    node_shell(cfg, conn, _stress_body, launch)


def _stress_body(nc: NodeContext) -> dict:
    cfg = nc.cfg
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
        check_alive=nc.poll, ipi_delay_ns=cfg.ipi_delay_ns, text_poke_ns=cfg.text_poke_ns,
        mark=nc.mark, fault=nc.fault.reached,
    )
    reader = Reader(cfg.node, mem, cfg.table, cfg.layout.part_offset, cfg.sites, st, kernel.safe_point, mark=nc.mark)
    incarnation = nc.launch.incarnation  # a replacement (--recover) draws its own choices
    rng = np.random.default_rng([cfg.seed, cfg.node, 0x73747273] + ([incarnation] if incarnation else []))  # "strs"
    source = NodeSource(cfg.plan, kernel, st, rng, key_race=cfg.bug == "key-race")
    readers = ReaderTasks(cfg, st, reader, rng, source)
    kernel.idle = readers.run_batch  # a node waiting for a lock runs its readers meanwhile
    start_ns, end_ns = nc.wait_start(Pacer(1.0, cfg.shared_core))
    if cfg.bench is not None:
        nc.phase("run")
        return _bench(cfg, st, kernel, readers, cpus)

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
    lat = np.array(kernel.stats.latencies_ns, dtype=np.float64) / 1e3
    return {
        "node": cfg.node,
        "pid": os.getpid(),
        "incarnation": incarnation,
        "parks": nc.parks,
        "aborted": aborted,
        "cpus": list(cpus),
        "executions": readers.executions,
        "violations": readers.violations,
        "examples": readers.examples,
        "int3_hits": reader.int3_hits,
        "flushes": reader.flushes,
        "patch_calls": kernel.stats.calls,
        "sites_patched": kernel.stats.sites,
        "syncs": kernel.stats.syncs,
        "stop_rounds": kernel.stats.stop_rounds,
        "unexpected_ops": kernel.unexpected,
        "source_ops": source.ops,
        "module_loads": source.module_loads,
        "ftrace_all_enables": source.ftrace_all_enables,
        "module_unloads": source.module_unloads,
        "latencies_us": lat.tolist(),
    }


def _patch_and_read(nc: NodeContext, kernel: NodeKernel, source: NodeSource, readers: ReaderTasks, st: TextState, rng: np.random.Generator, start_ns: int, end_ns: int) -> None:
    """The run phase: readers, safe points and this node's share of the patch operations until
    `end_ns`, then the wind-down."""
    cfg = nc.cfg
    interval = int(1e9 * cfg.n_nodes / cfg.rate)
    # Each node issues its operations as a Poisson process at rate/n_nodes: independent CPUs do
    # not take turns, so operations of different nodes really overlap (as key-race needs).
    next_op = start_ns + int(rng.exponential(interval))
    while True:
        nc.poll()
        now = time.perf_counter_ns()
        if now >= end_ns:
            break
        kernel.safe_point()
        if now >= next_op:
            source.step()
            next_op += int(rng.exponential(interval))
            if next_op < now:  # fell behind (a slow patch): do not burst to catch up
                next_op = now + int(rng.exponential(interval))
        nc.fault.reached("run")
        readers.run_batch()

    # Wind down: drop what this node holds, then keep answering syncs until every node is done.
    source.finish()
    kernel.idle = None
    st.nodes["done"][cfg.node] = 1
    kernel.wait_for(lambda: bool(np.all(st.nodes["done"] == 1)), "the other nodes to finish")


def _bench(cfg: StressConfig, st: TextState, kernel: NodeKernel, readers: ReaderTasks, cpus) -> dict:
    """Node 0 times patch calls; every other node waits at a safe point (or runs its readers,
    under load) until node 0 is done."""
    b = cfg.bench
    assert b is not None
    out: dict = {"node": cfg.node, "pid": os.getpid(), "cpus": list(cpus)}
    if cfg.node != 0:
        while st.node_get(0, "done") != 1:
            kernel.check_alive()  # node 0 may have died
            if b.load:
                readers.run_batch()
            else:
                kernel.safe_point()
                if cfg.shared_core:  # do not burn the core node 0 may be sharing
                    os.sched_yield()
        out["executions"] = readers.executions
        out["violations"] = readers.violations
        return out
    t = cfg.sites
    five = np.flatnonzero(t.length[: t.n_jump] == (4 if t.arch == "arm64" else 5))
    one_site = five[:1]

    def toggle(sites: np.ndarray) -> int:
        cur = st.site_state[sites].astype(np.int64)
        t0 = time.perf_counter_ns()
        kernel.patch(sites, cur, 1 - cur)
        return time.perf_counter_ns() - t0

    for _ in range(10):  # warm up
        toggle(one_site)
    out["one_site_ns"] = [toggle(one_site) for _ in range(b.repeats)]
    batch = np.sort(np.arange(t.n_jump)[: b.batch])
    out["batch_sites"] = len(batch)
    out["batch_ns"] = [toggle(batch) for _ in range(max(10, b.repeats // 10))]
    if b.sites:
        # One static key's use sites, scattered over the text as a key's are (every k-th
        # jump-label site). Batched is jump_label_update since 2019 (arch_jump_label_transform_queue,
        # then text_poke_finish: one text_poke_bp batch, 3 syncs for all sites); unbatched is
        # what it did before (arch_jump_label_transform per site: 3 syncs each).
        key = np.arange(t.n_jump)[:: max(1, t.n_jump // b.sites)][: b.sites]
        out["flip_sites"] = len(key)
        for mode, calls in (("batched", [key]), ("unbatched", [key[i : i + 1] for i in range(len(key))])):
            syncs = kernel.stats.syncs
            out[f"flip_{mode}_ns"] = [sum(toggle(c) for c in calls) for _ in range(b.repeats)]
            out[f"flip_{mode}_syncs"] = (kernel.stats.syncs - syncs) // b.repeats
    if b.ftrace_all:
        sites = cfg.plan.ftrace_sites
        t0 = time.perf_counter_ns()
        kernel.patch(sites, np.zeros(len(sites), np.int64), np.ones(len(sites), np.int64))
        out["ftrace_on_ns"] = time.perf_counter_ns() - t0
        t0 = time.perf_counter_ns()
        kernel.patch(sites, np.ones(len(sites), np.int64), np.zeros(len(sites), np.int64))
        out["ftrace_off_ns"] = time.perf_counter_ns() - t0
        out["ftrace_sites"] = len(sites)
    out["unexpected_ops"] = kernel.unexpected
    st.nodes["done"][0] = 1
    return out


class ReaderTasks:
    """The node's reader tasks: each batch is one task's request: its livepatch set first (one
    consistent version), then sites the source patches, then any site of the image."""

    def __init__(self, cfg: StressConfig, st: TextState, reader: Reader, rng: np.random.Generator, source: NodeSource) -> None:
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
        self.klp = cfg.plan.klp_sites if "livepatch" in cfg.plan.names else None
        self.mod_sites = cfg.plan.module_sites if "module" in cfg.plan.names else np.zeros(0, np.int64)
        self.task = 0
        self.recent = [np.zeros(0, np.int64) for _ in range(READER_TASKS)]
        self.executions = self.violations = self.batches = 0
        self.examples: list[dict] = []

    def _off_while_held(self, obs) -> int:
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

    def run_batch(self) -> None:
        cfg, st, rng = self.cfg, self.st, self.rng
        self.reader.safe_point()
        t = cfg.node * READER_TASKS + self.task
        self.task = (self.task + 1) % READER_TASKS
        if self.klp is not None:
            st.task_klp[t] = st.get("klp_target")  # a task switches only here, between requests
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
        batch = np.concatenate([
            self.klp if self.klp is not None else np.zeros(0, np.int64),
            picked,
            rng.integers(0, cfg.sites.n_core, BATCH_SITES - len(picked)),
        ])
        obs = self.reader.execute(batch)
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
        self.executions += len(batch)
        self.violations += bad
        self.examples += [v.to_json() for v in found][: max(0, MAX_REPORTED - len(self.examples))]
        self.batches += 1
        # Published as they grow: a node killed before its report still counts (recovery.py).
        node, stats = cfg.node, self.source.k.stats
        st.node_set(node, "executions", self.executions)
        st.node_set(node, "violations", self.violations)
        st.node_set(node, "patch_calls", stats.calls)
        st.node_set(node, "sites_patched", stats.sites)
        st.node_set(node, "source_ops", self.source.ops)


def _jump_taken(obs, sites: SiteTable, which: np.ndarray) -> np.ndarray:
    """Whether the executions `which` of `obs` ran the site's JMP (state 1)."""
    return sites.holds(obs.sites[which], 1, obs.observed[which])


def _livepatch_mix(obs, sites: SiteTable, n_klp: int, task_state: int) -> str:
    """The livepatch set is the first `n_klp` sites of the batch: which version of each
    function ran? Site NOP: the old one; site -> handler: the task's version."""
    versions = set()
    for i in range(n_klp):
        state = sites.state_of(int(obs.sites[i]), bytes(obs.observed[i, : sites.length[obs.sites[i]]]))
        if state is None:
            continue  # torn: already a violation of its own
        versions.add(task_state if state == FTRACE_KLP else 0)
    return "mix" if len(versions) > 1 else ""


def run_stress(spec: StressSpec) -> dict:
    """Run `spec`; return the reports and the end-of-run comparisons (see `stress_document`).

    A node failure (`NodeFailure`) or an interrupt (KeyboardInterrupt) during the run stops every
    node; the reports the living send on their way out and the same comparisons are attached to
    the exception as ``partial`` (a dict like the one returned, with ``checked`` False when the
    run had not started), then it propagates."""
    topo, n = spec.topology, spec.topology.n_nodes
    image = with_module_area(spec.image)
    placement, mem_serving = place_for(topo, image, spec.policy, replicas_every=spec.replicas_every)
    check_reachable(topo, placement)
    tables = page_table_cost(image, spec.pt_style, spec.policy, n, placement.serving or mem_serving, "text+rodata")
    layout = MemoryLayout.for_nodes(tuple(placement.image_bytes(i) for i in range(n)), user_bytes=PAGE_SIZE)
    sites = site_table(image)
    plan = plan_sources(spec.source, sites, image.n_keys)
    copies = TextCopies.build(placement, layout, image.n_pages)
    n_tasks = READER_TASKS * n
    ctx = mp.get_context(spec.start_method)
    locks = Locks(*(ctx.Lock() for _ in range(6)))
    facts = {
        "plan": plan,
        "copy_nodes": list(placement.copy_nodes) or [min(mem_serving)],
        "image_bytes": [placement.image_bytes(i) for i in range(n)],
        "page_tables": tables.to_json() if tables else None,
    }
    views: dict = {}

    def repair(dead: list[int]) -> dict:
        """While every living node is parked (NodeSession._recover)."""
        return repair_text(views["st"], sites, copies, views["master"], views["mem"], plan, locks, dead)

    session = NodeSession(spec.start_method, n, n_tasks, max_recoveries=spec.recover, quiesce=True, repair=repair,
                          kill_rate=spec.kill_rate, seed=spec.seed)
    with session:
        session.open_control()
        master = session.create("master", len(image.data))
        mem = session.create("mem", layout.size)
        txt = session.create("txt", text_segment_size(n, len(sites), image.n_keys, n_tasks))
        master.array(np.uint8)[:] = image.data
        st = views["st"] = TextState(txt, n, len(sites), image.n_keys, n_tasks)
        views["master"], views["mem"] = master.array(np.uint8), mem.array(np.uint8)
        try:
            configs = [
                StressConfig(
                    node=node, n_nodes=n, n_tasks=n_tasks, ctl_name=session.ctl_name, mem_name=mem.name,
                    master_name=master.name, txt_name=txt.name, host_cpus=spec.host.cpus[node],
                    hosted=placement.hosted[node], table=placement.tables[node], layout=layout, copies=copies,
                    sites=sites, plan=plan, n_keys=image.n_keys, locks=locks, protocol=spec.protocol, bug=spec.bug,
                    rate=spec.rate, seed=spec.seed, shared_core=spec.host.oversubscribed, coordinator_pid=os.getpid(),
                    bench=spec.bench, ipi_delay_ns=spec.ipi_delay_ns, text_poke_ns=spec.text_poke_ns,
                )
                for node in range(n)
            ]
            t0 = time.perf_counter()
            try:
                session.start(stress_worker_main, configs)
                session.wait_ready()
                t0 = time.perf_counter()
                session.go(spec.duration_s)
                reports = session.collect(spec.duration_s + 120.0)
            except (NodeFailure, KeyboardInterrupt) as exc:
                # Keep what there is: the living nodes' reports, and the comparisons (once
                # they have stopped, nothing moves). Before the start there is nothing to compare.
                reports = session.abort_and_drain() if session.started else []
                exc.partial = {  # type: ignore[union-attr]
                    **facts,
                    **_end_checks(st, sites, copies, plan, views["master"], views["mem"], image.n_pages, session.started),
                    "reports": reports, "wall_s": time.perf_counter() - t0,
                    "recoveries": session.recoveries, "kills": session.kills,
                }
                raise
            result = {
                **facts,
                **_end_checks(st, sites, copies, plan, views["master"], views["mem"], image.n_pages, True),
                "reports": reports, "wall_s": time.perf_counter() - t0,
                "recoveries": session.recoveries, "kills": session.kills,
            }
        finally:
            views.clear()
            st.release()
            del st
    return result


def _end_checks(st: TextState, sites: SiteTable, copies: TextCopies, plan: SourcePlan, m: np.ndarray, mm: np.ndarray, n_pages: int, started: bool) -> dict:
    """Every copy against the master, the patchers' log of unexpected ops, static keys' counts
    against their code, and the master against the committed states (`checked` False: the run
    never started, nothing was compared)."""
    if not started:
        return {"checked": False, "replica_mismatches": [], "failures": [], "n_failures": 0, "key_problems": [], "state_drift": 0}
    return {
        "checked": True,
        "replica_mismatches": copies.mismatches(m, mm, np.arange(n_pages)[copies.where[:, 0] >= 0]),
        "failures": [_failure_json(rec, sites) for rec in st.failure_log[: min(st.get("failures"), 10)]],
        "n_failures": st.get("failures"),
        "key_problems": key_agreement(plan, st.key_count, st.site_state, st.site_live) if "static_keys" in plan.names else [],
        # The master's bytes agree with the committed state of every site.
        "state_drift": _state_drift(m, sites, st.site_state, st.site_live),
    }


def run_patch_bench(topology: Topology, bench: PatchBench, *, policy: str = "replicate", protocol: str = "text_poke_bp",
                    modeled: bool = True, start_method: str = "fork") -> dict:
    """Run `bench` on the default x86 image, one node per host CPU share; return node 0's
    timings (see `_bench`). `modeled` False turns numaemu's modeled delays off (IPI delivery,
    per-site text_poke cost), leaving what numaemu itself costs. Raises RuntimeError if a copy
    differs from the master afterwards or a patch found unexpected bytes."""
    spec = StressSpec(
        topology, place_on_host(topology, host_cpus()), synthetic_image(), policy, protocol, "mixed", 1.0, 1.0, 0, None,
        start_method, bench=bench, ipi_delay_ns=IPI_DELAY_NS if modeled else 0, text_poke_ns=TEXT_POKE_NS if modeled else 0,
    )
    result = run_stress(spec)
    if result["replica_mismatches"] or result["n_failures"]:
        raise RuntimeError(f"patching broke a copy: {result['replica_mismatches'][:3]} {result['failures'][:3]}")
    return result["reports"][0]


def _failure_json(rec, sites: SiteTable) -> dict:
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


def stress_document(spec: StressSpec, result: dict) -> dict:
    """The JSON record of a stress run (see the README's JSON formats)."""
    reports = result["reports"]
    lat = np.array([x for r in reports for x in r["latencies_us"]], dtype=np.float64)
    examples = [e for r in reports for e in r["examples"]][:MAX_REPORTED]
    violations = sum(r["violations"] for r in reports)
    examples += result["failures"][: max(0, MAX_REPORTED - len(examples))]
    violations += result["n_failures"]
    # What replaced nodes had done before they died (their reports died with them).
    lost = [r["repair"].get("lost", {}) for r in result.get("recoveries", [])]

    def total(field: str) -> int:
        return sum(r[field] for r in reports) + sum(x.get(field, 0) for x in lost)

    lost_violations = sum(x.get("violations", 0) for x in lost)
    violations += lost_violations
    if lost_violations:
        examples.append({"kind": "lost-report", "detail": f"{lost_violations} violations seen by nodes that died before reporting (their examples died with them)"})
    for problem in result["key_problems"]:
        violations += 1
        if len(examples) < MAX_REPORTED:
            examples.append({"kind": "key-mismatch", "detail": problem})
    if result["state_drift"]:
        violations += result["state_drift"]
        examples.append({"kind": "state-drift", "detail": f"{result['state_drift']} sites hold bytes other than their committed state in the master"})
    identical = not result["replica_mismatches"] if result.get("checked", True) else None
    return {
        "schema": SCHEMA,
        "command": "stress",
        "protocol": spec.protocol,
        "source": spec.source,
        "policy": spec.policy,
        "arch": spec.image.arch,
        "image": spec.image.summary(),
        "inject_bug": spec.bug,
        "duration_s": spec.duration_s,
        "rate": spec.rate,
        "seed": spec.seed,
        "start_method": spec.start_method,
        "wall_s": result["wall_s"],
        "patches_applied": total("patch_calls"),
        "source_ops": total("source_ops"),
        "sites_patched": total("sites_patched"),
        "executions_checked": total("executions"),
        "violations": violations,
        "violation_examples": examples,
        "replicas_identical": identical,
        "copy_nodes": result["copy_nodes"],
        "replicas_every": spec.replicas_every,
        "image_bytes_per_node": result["image_bytes"],
        "page_tables": result["page_tables"],
        "replica_mismatches": [{"page": p, "copy": c} for p, c in result["replica_mismatches"][:MAX_REPORTED]],
        "patch_latency_us": {
            "median": float(np.median(lat)) if len(lat) else None,
            "p99": float(np.percentile(lat, 99)) if len(lat) else None,
            "max": float(lat.max()) if len(lat) else None,
        },
        "sync_rounds": sum(r["syncs"] for r in reports),
        "stop_rounds": sum(r["stop_rounds"] for r in reports),
        "int3_hits": sum(r["int3_hits"] for r in reports),
        "unexpected_ops": sum(r["unexpected_ops"] for r in reports),
        "module_loads": sum(r.get("module_loads", 0) for r in reports),
        "ftrace_all_enables": sum(r.get("ftrace_all_enables", 0) for r in reports),
        "module_unloads": sum(r.get("module_unloads", 0) for r in reports),
        # Failures at run time (see the README's Errors): set by the command when the run stopped
        # early (`failure`: the node that died; `interrupted`: Ctrl-C or SIGTERM).
        "failure": None,
        "interrupted": False,
        "recover": spec.recover,
        "kill_workers": spec.kill_rate or None,
        "recoveries": result.get("recoveries", []),
        "kills": result.get("kills", []),
        "ok": violations == 0 and identical is True,
        "per_node": [
            {k: r.get(k) for k in ("node", "pid", "incarnation", "cpus", "executions", "violations", "int3_hits", "flushes", "patch_calls", "sites_patched", "syncs", "unexpected_ops", "source_ops", "parks", "aborted")}
            for r in reports
        ],
    }


def format_stress_summary(doc: dict) -> str:
    lat = doc["patch_latency_us"]
    lines = [
        f"executions checked: {doc['executions_checked']:,} on {len(doc['per_node'])} nodes (INT3 hits {doc['int3_hits']:,})",
        f"patch calls: {doc['patches_applied']:,} from {doc['source_ops']:,} source operations, {doc['sites_patched']:,} sites patched; "
        f"sync rounds {doc['sync_rounds']:,}, stop_machine rounds {doc['stop_rounds']:,}"
        + (f"; modules loaded {doc['module_loads']:,}, unloaded {doc['module_unloads']:,}" if doc["module_loads"] else "")
        + (f"; tracing enabled on every function {doc['ftrace_all_enables']:,} times" if doc["ftrace_all_enables"] else ""),
        "patch latency: " + (f"median {lat['median']:.0f} us, p99 {lat['p99']:.0f} us" if lat["median"] is not None else "no patch calls"),
        f"replicas identical to the master: {({True: 'yes', False: 'NO', None: 'not checked (the run never started)'})[doc['replicas_identical']]}"
        f" ({len(doc['copy_nodes'])} {'copy' if len(doc['copy_nodes']) == 1 else 'copies'}, on node{'s' if len(doc['copy_nodes']) > 1 else ''} {', '.join(map(str, doc['copy_nodes']))})",
        f"violations: {doc['violations']:,}",
    ]
    head = []
    if doc.get("kills"):
        head.append(f"killed by --kill-workers {doc['kill_workers']:g}/s: {len(doc['kills'])} (" + ", ".join(f"node {k['node']} at {k['at_s']:.2f} s" for k in doc["kills"]) + ")")
    for r in doc.get("recoveries", []):
        inside = f" ({r['where']})" if r.get("where") else ""
        took = f", replaced in {1e3 * r['took_s']:.0f} ms" if r.get("took_s") is not None else ""
        head.append(f"recovered: node {r['node']} (pid {r['old_pid']} -> {r['new_pid']}), died in phase '{r['phase']}'{inside}"
                    + (f" at {r['at_s']:.2f} s" if r.get("at_s") is not None else "") + f"{took}: {r['detail']}")
    lines[:0] = head
    for e in doc["violation_examples"][:5]:
        where = f" node {e['node']}" if "node" in e else ""
        addr = f" at {e['address']}" if "address" in e else ""
        seen = f": executed {e['observed']}" if "observed" in e else ""
        lines.append(f"  {e['kind']}{where}{addr}{seen} ({e.get('detail', '')})".rstrip())
    if doc.get("failure") or doc.get("interrupted"):
        why = "a node failed" if doc.get("failure") else "interrupted"
        lines.append(f"STOPPED ({why}): the figures above are what the nodes saw until then ({len(doc['per_node'])} of them reported)")
    elif doc["ok"]:
        lines.append("OK: nothing violated" + (f" ({len(doc['recoveries'])} node(s) recovered, every copy equal to the master)" if doc.get("recoveries") else ""))
    else:
        lines.append("FAILED: see the violations above")
    return "\n".join(lines)

def stress_need(topo: Topology, image: KernelImage, policy: str, *, replicas_every: int = 1) -> SegmentNeed:
    """The `SegmentNeed` of ``stress`` (`stress.run_stress`: the image with its module area,
    one page of user data per node, and the ``txt`` segment)."""
    image = with_module_area(image)
    placement, _ = place_for(topo, image, policy, replicas_every=replicas_every)
    check_reachable(topo, placement)
    n, n_tasks = topo.n_nodes, READER_TASKS * topo.n_nodes
    txt = text_segment_size(n, len(site_table(image)), image.n_keys, n_tasks)
    return segment_need(placement, image, label=policy, n_tasks=n_tasks, user_bytes=PAGE_SIZE, txt=txt)
