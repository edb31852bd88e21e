"""The shared patching state of the kernel text (the ``txt`` segment), as every patcher and reader
sees it.

Where each copy's bytes are, and how a write reaches them, is `copies.TextCopies`.

Byte layout of the ``txt`` segment (numpy dtypes below; all integers little-endian):

    0                     TXT_HEADER, 192 bytes
    192                   n_nodes x TXT_NODE, 128 bytes each
    ...                   site_seq   int64 [n_sites]  even: stable; odd: a patch call is in flight
    ...                   site_state int8  [n_sites]  state committed by the last call that returned
    ...                   site_live  uint8 [n_sites]  1 where the site may be executed (modules)
    ...                   key_count  int64 [n_keys]   static-key reference counts
    ...                   desc       TXT_DESC          the text_poke_bp descriptor (256 entries)
    ...                   task_klp   int8  [n_tasks]  each reader task's livepatch state
    ...                   task_tramp int64 [n_tasks]  trampoline instance + 1 a task is preempted inside (0: none)
    ...                   task_qs    int64 [n_tasks]  voluntary context switches of each task (RCU-tasks' quiescent states)
    ...                   task_mod   int64 [n_tasks]  module a task is preempted inside: load generation x 1024 + slot + 1 (0: none)
    ...                   slot_gen   int64 [MAX_SLOTS] the load generation of the module in each slot (0: empty)
    ...                   share_users int64 [MAX_SHARED] each shared function's ftrace users (sources.USER_*)
    ...                   failures   TXT_FAILURE [64] unexpected ops seen by patchers
    ...                   lock_owner int64 [N_LOCKS]  node + 1 holding each of `patching.Locks` (0: none)
    ...                   pend       int8  [n_nodes, n_sites]  each node's patch call in intent:
                                                      new state + 1 per site (0: none)
    ...                   key_refs   int64 [n_nodes, MAX_KEYS] static-key references each node holds
    ...                   line_gen   int32 [n_lines]  each 64-byte line of ``mem``: +1 each time a store to it
                                                      is made visible to instruction fetch (`copies.invalidate`)
    ...                   task_node  int64 [n_tasks]  the node holding each task (-1: migrating, in no node's hands)
    ...                   inbox      int64 [n_nodes, n_tasks]  each node's ring of tasks migrated to it
    ...                   inbox_ptr  int64 [n_nodes, 2]  each ring's head (its producer's) and tail (its node's)
    ...                   task_seen  int32 [n_tasks, n_sites]  the in-flight call (site_seq, odd) whose new
                                                      code each task ran at each site (0: none): its history
    ...                   task_recent int64 [n_tasks, RECENT_SITES]  the hot sites of each task's last request (-1: none)

Every field has one writer at a time: the holder of ``text_mutex`` for the header's sync and
descriptor fields and for site_seq/site_state; each node for its own TXT_NODE slot, ``pend`` row
and ``key_refs`` row; the holder of the static-key lock for key_count (unless the ``key-race`` bug
is planted); the holder of a lock for its ``lock_owner`` entry; the node holding a task for its ``task_*``
entries; a ring's producer (the node before it) for its head, its node for its tail.

``line_gen`` is how stores reach what the nodes have fetched (reader.py's instruction buffers keep
the generation of each line they hold, and refetch a line whose generation moved): x86 fetch
snoops stores by physical address (Intel SDM vol. 3, s.11.6), and arm64's patcher cleans and
invalidates the line it wrote (``caches_clean_inval_pou`` in arch/arm64/kernel/patching.c:
DC CVAU, IC IVAU, broadcast to the inner-shareable domain), both right after the store. Any writer
may bump it: an increment lost between two writers still moves the generation.

The node's ``journal`` fields, its ``pend`` row and ``lock_owner`` exist for ``--recover``: they are
the write-ahead record of what a node SIGKILLed half-way through an operation meant to do, so the
coordinator can finish it for the dead node (`recovery.repair_text`).
"""

from __future__ import annotations

import numpy as np

from numaemu.host.segments import Segment
from numaemu.model.image import LINE_SIZE

__all__ = ["TXT_HEADER", "TXT_NODE", "TXT_DESC", "MAX_BATCH", "MAX_KEYS", "N_LOCKS", "RECENT_SITES", "PUBLISHED", "TextState", "text_segment_size"]

MAX_BATCH = 256  # text_poke_bp batch limit (TP_VEC_MAX in arch/x86/kernel/alternative.c)
MAX_FAILURES = 64
MAX_KEYS = 8  # static keys a source flips (sources.HOT_KEYS), each node's references to them
# The counters a stress node publishes in its TXT_NODE slot as it goes (its report's figures).
PUBLISHED = ("executions", "violations", "patch_calls", "sites_patched", "source_ops")
N_LOCKS = 7  # patching.Locks
MAX_SLOTS = 64  # module slots a segment keeps a generation for
RECENT_SITES = 48  # a task's hot sites remembered from one request to the next (reader_tasks.HOT_SHARE of a batch)
MAX_SHARED = 16  # sources.MAX_SHARED: the users masks of the ``shared`` source's functions

TXT_HEADER = np.dtype(
    [
        ("sync_seq", "<i8"),  # syncs requested
        ("stop_seq", "<i8"),  # stop_machine rounds requested
        ("stop_arrived", "<i8"),  # nodes parked in the current round
        ("stop_released", "<i8"),  # last round whose patch is done
        ("desc_gen", "<i8"),  # descriptor generation: odd while being written
        ("desc_live", "<i8"),  # 1 while the patcher holds its reference (bp_desc.refs)
        ("desc_count", "<i8"),
        ("patch_calls", "<i8"),
        ("failures", "<i8"),
        ("klp_target", "<i8"),  # livepatch: state every task is moving to
        ("module_gen", "<i8"),
        ("ftrace_all", "<i8"),  # 1 while every function is traced (newly loaded modules too)
        ("sync_req_ns", "<i8"),  # when the last sync was requested (perf_counter_ns)
        ("stop_req_ns", "<i8"),  # when the last stop_machine round was requested
        ("scale_ppm", "<i8"),  # the run's time scale x 10^6, once the run has started (timeline.py)
        ("first_at_ns", "<i8"),  # --stop-at-first: when a node saw the first violation (0: none yet)
        ("tramp_gen", "<i8"),  # the BPF trampoline's instance: +1 each time one is freed
        ("stop_writes", "<i8"),  # odd while a stop_machine round's patch function writes text
        ("pad", "V48"),
    ]
)
TXT_NODE = np.dtype(
    [
        ("sync_ack", "<i8"),  # last sync this node took part in
        ("stop_ack", "<i8"),  # last stop_machine round this node left
        ("in_int3", "<i8"),  # references this node holds on the descriptor (inside its INT3 handler)
        ("done", "<i8"),  # 1 once the node stopped patching and dropped what it held
        # The node's operation in intent (write-ahead, for --recover): journal is 1 from the
        # moment its intent (pend row, j_*) is complete until the operation has finished.
        ("journal", "<i8"),
        ("j_key", "<i8"),  # static-key op: hot key index + 1 (0: not a key op)
        ("j_count", "<i8"),  # ... the key's count once the op is done
        ("j_refs", "<i8"),  # ... this node's references to it once the op is done
        ("module_op", "<i8"),  # module slot + 1 being loaded or unloaded (0: none)
        # What this node has done so far (`PUBLISHED`): if it dies, its report is lost, not these.
        ("executions", "<i8"),
        ("violations", "<i8"),
        ("patch_calls", "<i8"),
        ("sites_patched", "<i8"),
        ("source_ops", "<i8"),
        ("site_wall_ns", "<i8"),  # the node's reader: wall ns per site executed, before the start (timeline.scale_for)
        ("step", "<i8"),  # the protocol step this node's patch call is at (protocols.STEPS; 0: none)
    ]
)
TXT_DESC = np.dtype(
    [
        ("offset", "<i8", (MAX_BATCH,)),  # sorted, for the handler's bsearch
        ("site", "<i8", (MAX_BATCH,)),
        ("new", "u1", (MAX_BATCH, 8)),
    ]
)
TXT_FAILURE = np.dtype([("node", "<i8"), ("site", "<i8"), ("expected", "u1", (8,)), ("found", "u1", (8,))])
assert TXT_HEADER.itemsize == 192 and TXT_NODE.itemsize == 128


def _word_index(dt: np.dtype) -> dict[str, int]:
    """Field name -> index of its 8-byte word in a record of `dt` (every field but ``pad``)."""
    assert dt.fields is not None  # a structured dtype
    return {name: offset // 8 for name, (_, offset, *_) in dt.fields.items() if name != "pad"}


_HEADER_INDEX = _word_index(TXT_HEADER)
_NODE_INDEX = _word_index(TXT_NODE)
_NODE_WORDS = TXT_NODE.itemsize // 8


def _sections(n_nodes: int, n_sites: int, n_keys: int, n_tasks: int, n_lines: int = 0) -> list[tuple[str, np.dtype, int]]:
    return [
        ("header", TXT_HEADER, 1),
        ("nodes", TXT_NODE, n_nodes),
        ("site_seq", np.dtype("<i8"), n_sites),
        ("site_state", np.dtype("i1"), n_sites),
        ("site_live", np.dtype("u1"), n_sites),
        ("key_count", np.dtype("<i8"), n_keys),
        ("desc", TXT_DESC, 1),
        ("task_klp", np.dtype("i1"), n_tasks),
        ("task_tramp", np.dtype("<i8"), n_tasks),
        ("task_qs", np.dtype("<i8"), n_tasks),
        ("task_mod", np.dtype("<i8"), n_tasks),
        ("slot_gen", np.dtype("<i8"), MAX_SLOTS),
        ("share_users", np.dtype("<i8"), MAX_SHARED),
        ("failure_log", TXT_FAILURE, MAX_FAILURES),
        ("lock_owner", np.dtype("<i8"), N_LOCKS),
        ("pend", np.dtype("i1"), n_nodes * n_sites),
        ("key_refs", np.dtype("<i8"), n_nodes * MAX_KEYS),
        ("line_gen", np.dtype("<i4"), n_lines),
        ("task_node", np.dtype("<i8"), n_tasks),
        ("inbox", np.dtype("<i8"), n_nodes * n_tasks),
        ("inbox_ptr", np.dtype("<i8"), n_nodes * 2),
        ("task_seen", np.dtype("<i4"), n_tasks * n_sites),
        ("task_recent", np.dtype("<i8"), n_tasks * RECENT_SITES),
    ]


def _layout(n_nodes: int, n_sites: int, n_keys: int, n_tasks: int, n_lines: int = 0) -> tuple[dict[str, tuple[int, np.dtype, int]], int]:
    out, off = {}, 0
    for name, dt, count in _sections(n_nodes, n_sites, n_keys, n_tasks, n_lines):
        off = -(-off // 8) * 8
        out[name] = (off, dt, count)
        off += dt.itemsize * count
    return out, off


def text_segment_size(n_nodes: int, n_sites: int, n_keys: int, n_tasks: int, mem_bytes: int = 0) -> int:
    """The ``txt`` segment's size; `mem_bytes`: the ``mem`` segment its line generations cover."""
    return _layout(n_nodes, n_sites, n_keys, n_tasks, mem_bytes // LINE_SIZE)[1]


class TextState:
    """Typed views of the ``txt`` segment."""

    def __init__(self, seg: Segment, n_nodes: int, n_sites: int, n_keys: int, n_tasks: int, mem_bytes: int = 0) -> None:
        layout, _ = _layout(n_nodes, n_sites, n_keys, n_tasks, mem_bytes // LINE_SIZE)
        views = {name: seg.array(dt, off, count) for name, (off, dt, count) in layout.items()}
        self.header = views["header"]
        self.nodes = views["nodes"]
        self.site_seq = views["site_seq"]
        self.site_state = views["site_state"]
        self.site_live = views["site_live"]
        self.key_count = views["key_count"]
        self.desc = views["desc"][0]
        self.desc_offset = self.desc["offset"]
        self.desc_site = self.desc["site"]
        self.desc_new = self.desc["new"]
        self.task_klp = views["task_klp"]
        self.task_tramp = views["task_tramp"]
        self.task_qs = views["task_qs"]
        self.task_mod = views["task_mod"]
        self.slot_gen = views["slot_gen"]
        self.share_users = views["share_users"]
        self.failure_log = views["failure_log"]
        self.lock_owner = views["lock_owner"]
        self.pend = views["pend"].reshape(n_nodes, n_sites)
        self.key_refs = views["key_refs"].reshape(n_nodes, MAX_KEYS)
        self.line_gen = views["line_gen"]
        self.task_node = views["task_node"]
        self.inbox = views["inbox"].reshape(n_nodes, n_tasks)
        self.inbox_ptr = views["inbox_ptr"].reshape(n_nodes, 2)
        self.task_seen = views["task_seen"].reshape(n_tasks, n_sites)
        self.task_recent = views["task_recent"].reshape(n_tasks, RECENT_SITES)
        # Scalar access goes through memoryviews: an element of a memoryview costs ~50 ns, a
        # numpy scalar ~1 us, and safe points and small patches are all scalar accesses.
        assert seg.buf is not None
        buf = memoryview(seg.buf)
        self.hq = buf[layout["header"][0] : layout["header"][0] + TXT_HEADER.itemsize].cast("q")
        off = layout["nodes"][0]
        self.nq = buf[off : off + TXT_NODE.itemsize * n_nodes].cast("q")
        off = layout["site_seq"][0]
        self.seq_q = buf[off : off + 8 * n_sites].cast("q")
        off = layout["site_state"][0]
        self.state_b = buf[off : off + n_sites].cast("b")
        off = layout["lock_owner"][0]
        self.owner_q = buf[off : off + 8 * N_LOCKS].cast("q")
        off = layout["pend"][0]
        self.pend_b = buf[off : off + n_nodes * n_sites].cast("b")  # [node * n_sites + site]
        self.n_sites = n_sites

    def get(self, field: str) -> int:
        return self.hq[_HEADER_INDEX[field]]

    def set(self, field: str, value: int) -> None:
        self.hq[_HEADER_INDEX[field]] = value

    def add(self, field: str, delta: int = 1) -> int:
        """Single-writer increment (the caller holds the lock that owns `field`)."""
        i = _HEADER_INDEX[field]
        value = self.hq[i] + delta
        self.hq[i] = value
        return value

    def node_get(self, node: int, field: str) -> int:
        return self.nq[node * _NODE_WORDS + _NODE_INDEX[field]]

    def node_set(self, node: int, field: str, value: int) -> None:
        self.nq[node * _NODE_WORDS + _NODE_INDEX[field]] = value

    def release(self) -> None:
        """Drop the memoryviews, so the segment can be closed."""
        for mv in (self.hq, self.nq, self.seq_q, self.state_b, self.owner_q, self.pend_b):
            mv.release()

    def record_failure(self, node: int, site: int, expected: bytes, found: bytes) -> None:
        i = self.add("failures")
        if i <= MAX_FAILURES:
            rec = self.failure_log[i - 1 : i]
            rec["node"], rec["site"] = node, site
            rec["expected"][0, : len(expected)] = np.frombuffer(expected, np.uint8)
            rec["found"][0, : len(found)] = np.frombuffer(found, np.uint8)
