"""The system ``numaemu check`` explores: a few nodes of a replicated kernel, in one process, running
the code ``numaemu stress`` runs.

Each node is two actors (actors.py): its CPU, and its safe points between requests. The CPU runs its reader requests (the node's `Reader.execute`, judged at
once by `reader.check_batch`, with `reader.check_order` over the task's history) and, when its turn
comes, a patch call through its `NodeKernel` (the protocols of stop_machine.py, text_poke_bp.py,
nosync.py or a data protocol), and at its safe points it takes part in the other nodes' syncs and
stop_machine rounds, exactly as a stress node does. What differs from stress is only what the
explorer needs: the memory is anonymous (no /dev/shm), the locks are in-process, an IPI is
delivered at the target's next safe point (when that is, the schedule decides), every timed window
is a scheduling point (host.clock.spin), the node's other CPUs do not run its tasks while it writes
(TextPoke.meanwhile; the other nodes' CPUs do), and waits never time out.

With ``--source static_keys`` the calls are static-key operations instead: each node enables, then
disables, ... one key whose use sites are the sites (`NodeSource.perform`, the code stress runs),
all nodes at once, and a node holding a reference must see the key's sites jump (as
reader_tasks._off_while_held checks); at the end the key's count equals the references held.
With ``--source bpf`` call c attaches (c even) or detaches and frees (c odd) the BPF trampoline
(`NodeSource.step`); with ``--source module`` a module of one slot is loaded before the start and
call c unloads it (c even) or loads it again (`module_source.op`); with ``--source shared`` each
node attaches, then detaches, ... its own ftrace user of one shared function, all nodes at once
(`NodeSource.shared_op`: SHARED_USERS). Stress's own task checks judge them
(`ReaderTasks.inside`: code freed under a task preempted inside it; `ReaderTasks.ipmodify`: a
function run with two IPMODIFY users), and `finish` the end (`sharing_agreement`).

The image is the synthetic one at scale 0.01 (643 sites, 32 of them kprobes). The sites patched are the first jump
labels of the instruction length of the arch (x86 5-byte NOP <-> JMP, arm64 NOP <-> B): call c (of
node c mod nodes, each after the one before has returned) moves them all from state c mod 2 to the
other. On x86 every request also runs one armed kprobe, whose INT3 sends the handler through the
text_poke_bp descriptor (poke_int3_handler reads it first, then leaves the INT3 to kprobes), which
is how a handler can be inside the descriptor while a batch is released. Tasks: each node has a
home task and, with 2 tasks, a travelling one, which moves to the next node after each of its
requests (as stress's, reader_tasks.py), so its history shows new-then-old across copies.

The state the explorer hashes (`digest`) is everything a step's outcome can depend on: the txt
header and node records (but the IPI send times, which are wall-clock stamps no decision here
reads: delivery is immediate), the sites' sequence numbers, states, intents, the descriptor, the
lock owners, the failure count and the tasks' histories; the sites' bytes in the master and every
copy and their lines' generations; each node's instruction buffer at the sites' lines; which tasks
each node holds and how many calls have returned; and each actor's stack: every frame's code
position and local values, except wall-clock stamps and spin counters (``t0``, ``deadline``,
``tries``...), which change no outcome here.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from numaemu.explore import actors
from numaemu.explore.actors import AT_ONCE, logged, wait_point
from numaemu.explore.scheduler import Failure
from numaemu.explore.stacks import stack_digest
from numaemu.host.segments import MemoryLayout, Segment
from numaemu.model.engine import page_bases
from numaemu.model.image import LINE_SIZE, PAGE_SIZE, synthetic_image, with_module_area
from numaemu.model.placement import place
from numaemu.model.protocol_spec import ProtocolSpec
from numaemu.model.sites import FTRACE_BPF, FTRACE_OFF, KPROBE_ARMED, site_table
from numaemu.patching import module_source
from numaemu.patching.copies import TextCopies
from numaemu.patching.kernel import NodeKernel
from numaemu.patching.node_source import NodeSource
from numaemu.patching.protocols import Locks
from numaemu.patching.reader import IBUF_LINES, Reader
from numaemu.patching.reader_tasks import ReaderTasks
from numaemu.patching.sources import SourcePlan, plan_sources, sharing_agreement
from numaemu.patching.stress_node import StressNodeConfig
from numaemu.patching.textmem import TXT_HEADER, TextState, text_segment_size
from numaemu.runtime.worker import fill_partition

__all__ = ["CheckConfig", "PatchSystem", "LIMITS"]

IMAGE_SCALE = 0.01
# The largest size of each dimension the search holds (api/check.py refuses more): measured on
# the 2-core dev VM, the states grow about tenfold a step in any one of them (README).
LIMITS = {"nodes": 3, "sites": 3, "tasks": 2, "calls": 2, "requests": 3}
_HEADER_CLOCKS = ("sync_req_ns", "stop_req_ns")


@dataclass(frozen=True)
class CheckConfig:
    """One configuration to explore (validated by api/check.py)."""

    protocol: str  # stop_machine, text_poke_bp, nosync, or "data" with `protocol_spec`
    arch: str
    bug: str | None = None
    nodes: int = 2
    sites: int = 2
    tasks: int = 2
    calls: int = 1
    requests: int = 2  # reader requests per node
    int3_fix: str = "refcount"
    ifetch: str = "coherent"
    kprobe: bool = True  # x86: every request also runs an armed kprobe
    protocol_spec: ProtocolSpec | None = None
    # "calls": patch calls, one after another; "static_keys": each node enables, then disables,
    # ... one static key whose use sites are the sites (NodeSource, at once on every node);
    # "bpf": attach, detach and free the BPF trampoline; "module": unload, load, ... a module
    # (loaded at the start); "shared": each node attaches, detaches, ... its own ftrace user of
    # one shared function, at once on every node (module docstring).
    source: str = "calls"

    @property
    def total_ops(self) -> int:
        return self.calls * (self.nodes if self.source in AT_ONCE else 1)

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("protocol", "arch", "bug", "nodes", "sites", "tasks", "calls", "requests", "int3_fix", "ifetch", "kprobe", "source")}
        if self.protocol_spec is not None:
            out["protocol_spec"] = self.protocol_spec.to_mapping()
        return out


class PatchSystem:
    """The nodes, their memory and their actors (module docstring); `reset` starts them afresh."""

    def __init__(self, cfg: CheckConfig) -> None:
        self.cfg = cfg
        image = synthetic_image(IMAGE_SCALE, arch=cfg.arch)
        if cfg.source == "module":
            image = with_module_area(image, slots=1)
        self.t = t = site_table(image)
        pl = place(image, cfg.nodes, "replicate")
        self.layout = lay = MemoryLayout.for_nodes(tuple(pl.image_bytes(h) for h in range(cfg.nodes)), user_bytes=4096)
        self.mem = np.zeros(lay.size, dtype=np.uint8)
        for h in range(cfg.nodes):
            fill_partition(self.mem, image.data, lay, h, pl.hosted[h], 0)
        self.master = image.data.copy()
        self.copies = TextCopies.build(pl, lay, image.n_pages)
        self.tables = pl.tables
        length = 5 if cfg.arch == "x86_64" else 4
        jumps = [s for s in range(t.n_jump) if t.length[s] == length and t.holds(np.array([s]), 0, t.read(self.master, np.array([s])))[0]]
        self.patched = np.array(jumps[: cfg.sites], dtype=np.int64)
        plan = plan_sources(cfg.source if cfg.source in ("bpf", "module", "shared") else "bpf", t, image.n_keys)
        if cfg.source == "bpf":  # the BPF trampoline's function: its ftrace site, attached and detached
            self.patched = np.array([plan.bpf_site], dtype=np.int64)
        elif cfg.source == "shared":  # the shared function's ftrace site
            self.patched = plan.shared_sites[:1]
        elif cfg.source == "module":  # the module's first sites (its first function's)
            self.patched = t.module_sites(0)[: cfg.sites]
        extra = [int(t.kprobe_sites()[0])] if cfg.arch == "x86_64" and cfg.kprobe and t.n_kprobe else []
        self.kprobe = extra[0] if extra else -1
        self.batch = np.sort(np.concatenate([self.patched, np.array(extra, dtype=np.int64)]))
        n_tasks = cfg.nodes * cfg.tasks
        size = text_segment_size(cfg.nodes, len(t), image.n_keys, n_tasks, lay.size)
        self.seg = Segment("numaemu-check-txt", size, mmap.mmap(-1, size), owner=False)  # anonymous: nothing in /dev/shm
        self.st = TextState(self.seg, cfg.nodes, len(t), image.n_keys, n_tasks, lay.size)
        if self.kprobe >= 0:  # armed before the start, as `numaemu stress --source kprobes` arms them
            self._write(self.kprobe, t.encoding(self.kprobe, KPROBE_ARMED))
            self.st.site_state[self.kprobe] = KPROBE_ARMED
        # What a step can change, by index (module docstring): each byte of the batch's sites in
        # the master and every copy, and the lines they are in.
        lens = t.length[self.batch].astype(np.int64)
        self.text_idx = np.concatenate([np.arange(o, o + L) for o, L in zip(t.offset[self.batch].tolist(), lens.tolist(), strict=True)])
        if cfg.source == "module":  # its load and unload write the whole slot
            self.text_idx = np.union1d(self.text_idx, t.module_span(0))
        self.mem_idx = self.copies.targets(self.text_idx)  # [copy, byte]
        self.lines = np.unique(self.mem_idx[self.mem_idx >= 0] // LINE_SIZE)
        self.text_lines = np.unique(self.text_idx // LINE_SIZE)
        self.slots = self.text_lines % IBUF_LINES
        self.pages = np.unique(self.text_idx // PAGE_SIZE)
        none = np.zeros(0, np.int64)
        if cfg.source in ("bpf", "module", "shared"):
            self.plan = plan
        else:  # static_keys: one key, whose use sites are the sites patched
            self.plan = SourcePlan(("static_keys",), np.array([int(t.key[self.patched[0]])]), (self.patched,), none, -1, none, none, none)
        if cfg.source == "module":  # loaded before the start (module_source.load, without the syncs)
            module_source.load(NodeSource(self.plan, self._kernel(0, _locks()), self.st, np.random.default_rng(0), False), 0, running=False)
        # What `reset` puts back: the bytes a run can change (the sites' in the master and every
        # copy, the txt segment but for the line generations, and those of the sites' lines).
        assert self.seg.buf is not None
        whole = np.frombuffer(self.seg.buf, np.uint8)
        self._lg_span = (self.st.line_gen.ctypes.data - whole.ctypes.data, self.st.line_gen.nbytes)
        lo, n = self._lg_span
        self._pristine = (self.master[self.text_idx].copy(), self.mem[self.mem_idx[self.mem_idx >= 0]].copy(),
                          whole[:lo].copy(), whole[lo + n :].copy(), self.st.line_gen[self.lines].copy())
        self.sources: list[NodeSource] = []
        self.tasks: list[ReaderTasks] = []  # stress's task checks (code freed under a task), per node
        self.kernels: list[NodeKernel] = []
        self.readers: list[Reader] = []
        self.calls_done = 0
        self.held: list[list[int]] = []
        self.busy: list[bool] = []  # a node's CPU is in a request, a call or a safe point
        self.left: list[int] = []
        self.new_then_old = 0

    def _write(self, site: int, data: bytes) -> None:
        o = int(self.t.offset[site])
        self.master[o : o + len(data)] = np.frombuffer(data, np.uint8)
        for i, b in enumerate(data):
            for tgt in self.copies.targets_of(o + i):
                self.mem[tgt] = b

    # -- the explorer's interface (scheduler.System) ------------------------------------------

    def reset(self) -> list[Callable[[], None]]:
        cfg, st = self.cfg, self.st
        master, mem_bytes, before, after, gens = self._pristine
        self.master[self.text_idx] = master
        self.mem[self.mem_idx[self.mem_idx >= 0]] = mem_bytes
        assert self.seg.buf is not None
        whole = np.frombuffer(self.seg.buf, np.uint8)
        lo, n = self._lg_span
        whole[:lo] = before
        whole[lo + n :] = after
        st.line_gen[self.lines] = gens
        locks = _locks()
        self.kernels, self.readers, self.sources, self.tasks = [], [], [], []
        for n in range(cfg.nodes):
            reader: list[Reader] = []  # the flush hook's: the reader is built after its kernel
            k = self._kernel(n, locks, functools.partial(_flush, reader))
            r = Reader(n, self.mem, self.tables[n], self.layout.part_offset, self.t, st, k.safe_point, fetch_gap_ns=1, handler_ns=1,
                       refcount=cfg.int3_fix == "refcount", ifetch=cfg.ifetch)
            reader.append(r)
            self.kernels.append(k)
            self.readers.append(r)
            if cfg.source != "calls":
                self.sources.append(NodeSource(self.plan, k, st, np.random.default_rng(n), key_race=cfg.bug == "key-race"))
                self.tasks.append(ReaderTasks(self._node_config(n, locks), st, r, np.random.default_rng(n), self.sources[-1]))
                k.idle = functools.partial(actors.idle, self, n)
        # Task n * tasks stays on node n; with 2 tasks, n * tasks + 1 travels to the next node.
        self.held = [list(range(n * cfg.tasks, (n + 1) * cfg.tasks)) for n in range(cfg.nodes)]
        for n, tasks in enumerate(self.held):
            st.task_node[tasks] = n
        self.calls_done = 0
        self.busy = [False] * cfg.nodes
        self.left = [cfg.requests] * cfg.nodes  # reader requests each node has left
        nodes: list[Callable[[], None]] = [functools.partial(actors.node, self, n) for n in range(cfg.nodes)]
        return nodes + [functools.partial(actors.safe_points, self, n) for n in range(cfg.nodes)]

    def _kernel(self, n: int, locks: Locks, flush: Callable[[], None] = lambda: None) -> NodeKernel:
        """Node `n`'s kernel, as a stress node's, but every wait is a scheduling point and never
        times out, and every timed window is one point (module docstring)."""
        cfg = self.cfg
        # ivau-local: the I-cache maintenance reaches only the copy this node's page table maps.
        local = page_bases(self.tables[n], self.layout.part_offset) if cfg.bug == "ivau-local" else None
        k = NodeKernel(n, cfg.nodes, self.st, self.copies, self.master, self.mem, self.t, locks, protocol=cfg.protocol, bug=cfg.bug,
                       shared_core=False, flush=flush, check_alive=wait_point, ipi_delay_ns=0, text_poke_ns=1,
                       int3_fix=cfg.int3_fix, data_protocol=cfg.protocol_spec, local_base=local)
        k.wait_timeout_s, k.spin_tries = float("inf"), 1 << 62
        k.count_rmw_ns = 1  # key-race's window between the count's read and write is a point
        return k

    def digest(self, frames: list[Any]) -> bytes:
        st, h = self.st, hashlib.blake2b(digest_size=16)
        header = np.array(st.hq, dtype=np.int64)
        for name in _HEADER_CLOCKS:
            header[_header_index(name)] = 0
        h.update(header.tobytes())
        h.update(bytes(st.nq))
        b = self.batch
        for arr in (st.site_seq[b], st.site_state[b], st.pend[:, b], st.desc_offset[:4], st.desc_site[:4], st.desc_new[:4], st.lock_owner,
                    st.task_seen[:, b], st.line_gen[self.lines], self.master[self.text_idx], self.mem[self.mem_idx]):
            h.update(np.ascontiguousarray(arr).tobytes())
        for r in self.readers:
            h.update(r.tag[self.slots].tobytes())
            h.update(r.gen[self.slots].tobytes())
            h.update(r.data[self.slots].tobytes())
        h.update(repr((self.calls_done, self.held, self.busy, self.left, [src.held.tolist() for src in self.sources])).encode())
        h.update(st.key_count.tobytes())
        h.update(st.key_refs.tobytes())
        # What the sources' task checks and waits read: trampolines and modules a task is inside,
        # its quiescent states, the modules' generations and liveness, the shared functions' users.
        for arr in (st.task_tramp, st.task_qs, st.task_mod, st.slot_gen, st.site_live[b], st.share_users):
            h.update(arr.tobytes())
        for f in frames:
            stack_digest(h, f)
        return h.digest()

    def finish(self) -> None:
        """The end: every copy of every site equals the master, which holds the last call's state."""
        t, st = self.t, self.st
        want: int | None = None  # the state every patched site's master bytes must hold
        if self.cfg.source == "bpf":
            want = FTRACE_BPF if self.cfg.calls % 2 else FTRACE_OFF
        elif self.cfg.source == "module":  # unloaded by call 0, loaded again by call 1, ...
            loaded = self.cfg.calls % 2 == 0
            if bool(st.site_live[self.patched[0]]) != loaded:
                raise Failure("not-patched", {"detail": f"the module is {'' if not loaded else 'not '}loaded after every call returned"})
        elif self.cfg.source == "shared":
            if problems := sharing_agreement(self.plan, st.share_users, st.site_state):
                raise Failure("sharing", {"site": int(self.patched[0]), "detail": problems[0]})
        elif self.cfg.source == "static_keys":
            key = int(self.plan.keys[0])
            count, refs = int(st.key_count[key]), int(st.key_refs[:, 0].sum())
            if count != refs:
                raise Failure("key-count", {"detail": f"the key's count is {count}, and the nodes hold {refs} references"})
            want = int(count > 0)
        else:
            want = self.cfg.calls % 2
        bad = [] if want is None else [int(s) for s in self.patched if not t.holds(np.array([s]), want, t.read(self.master, np.array([s])))[0]]
        if bad:
            raise Failure("not-patched", {"site": bad[0], "detail": f"the master does not hold state {want} after every call returned"})
        differ = self.master[self.text_idx][None, :] != np.where(self.mem_idx >= 0, self.mem[self.mem_idx], self.master[self.text_idx][None, :])
        if differ.any():
            copy = int(np.flatnonzero(differ.any(axis=1))[0])
            raise Failure("copies-differ", {"copy": copy, "detail": f"copy {copy} differs from the master after every call returned"})
        if st.get("failures"):
            raise logged(st, None)

    def _node_config(self, n: int, locks: Locks) -> StressNodeConfig:
        """What stress's task checks read of a node's config (ReaderTasks): the plan, the sites,
        the node; the rest is stress's processes', unused here."""
        cfg = self.cfg
        return StressNodeConfig(node=n, n_nodes=cfg.nodes, n_tasks=cfg.nodes * cfg.tasks, ctl_name="", mem_name="", master_name="", txt_name="",
                                host_cpus=(), hosted=np.zeros(0, np.int64), table=self.tables[n], layout=self.layout, copies=self.copies,
                                sites=self.t, plan=self.plan, n_keys=len(self.st.key_count), locks=locks, protocol=cfg.protocol, bug=cfg.bug,
                                rate=1.0, seed=0, shared_core=False, coordinator_pid=0, bench=None, timeline=cast(Any, None), migrate=False)

    def close(self) -> None:
        self.kernels, self.readers = [], []
        self.st.release()


def _locks() -> Locks:
    return Locks(*(cast(Any, threading.Lock()) for _ in range(7)))


def _flush(reader: list[Reader]) -> None:
    reader[0].flush()


def _header_index(name: str) -> int:
    fields = TXT_HEADER.fields
    assert fields is not None
    return int(fields[name][1]) // 8
