"""Tests for numaemu.patching.textmem: writes reaching the master and every copy, and the txt segment."""

from __future__ import annotations

import numpy as np
import pytest

from numaemu.host.segments import MemoryLayout, Segment, list_segments, new_token, segment_name
from numaemu.model.image import PAGE_SIZE, KernelImage, synthetic_image, with_module_area
from numaemu.model.placement import Placement, place
from numaemu.patching.copies import TextCopies
from numaemu.patching.textmem import (
    MAX_BATCH,
    RECENT_SITES,
    TXT_HEADER,
    TXT_NODE,
    TextState,
    text_segment_size,
)
from numaemu.runtime.worker import fill_partition


@pytest.fixture(scope="module")
def image() -> KernelImage:
    return with_module_area(synthetic_image(0.01))


class Setup:
    def __init__(self, image: KernelImage, n: int, policy: str, replicate: str = "text+rodata") -> None:
        self.image = image
        self.pl: Placement = place(image, n, policy, replicate)
        self.lay = MemoryLayout.for_nodes(tuple(self.pl.image_bytes(h) for h in range(n)), user_bytes=4096)
        self.mem = np.zeros(self.lay.size, dtype=np.uint8)
        for h in range(n):
            fill_partition(self.mem, image.data, self.lay, h, self.pl.hosted[h], 0)
        self.master = image.data.copy()
        self.copies = TextCopies.build(self.pl, self.lay, image.n_pages)
        self.mapped = image.mapped_pages()

    def seen_by(self, node: int, offset: int) -> int:
        home, off = self.pl.tables[node].translate(offset)
        return int(self.mem[self.lay.part_offset[home] + off])

    def n_copies_of(self, offset: int) -> int:
        return len({self.pl.tables[n].translate(offset)[0] for n in range(self.pl.n_nodes)})


CONFIGS = [(n, p) for n in (2, 3) for p in ("single", "interleave", "replicate")]


@pytest.fixture(params=CONFIGS, ids=[f"{p}-{n}" for n, p in CONFIGS])
def setup(request, image) -> Setup:
    n, policy = request.param
    return Setup(image, n, policy)


def interesting_offsets(image: KernelImage) -> np.ndarray:
    text, rodata, mods = (image.section(n) for n in (".text", ".rodata", ".modules"))
    return np.array(
        [
            0,
            1,
            PAGE_SIZE - 1,
            PAGE_SIZE,
            5 * PAGE_SIZE + 123,
            text.offset + text.size - 1,
            rodata.offset,
            rodata.offset + 4097,
            rodata.offset + rodata.size - 1,
            mods.offset,
            mods.offset + mods.size - 1,
        ],
        dtype=np.int64,
    )


def test_build_shape(setup: Setup) -> None:
    pl, where = setup.pl, setup.copies.where
    n = pl.n_nodes
    assert where.shape == (setup.image.n_pages, 1 if pl.policy == "single" else n)
    held = (where >= 0).sum(axis=1)
    unmapped = np.setdiff1d(np.arange(setup.image.n_pages), setup.mapped)
    assert np.all(held[unmapped] == 0)
    if pl.policy == "replicate":
        core = np.concatenate([np.arange(s.pages().start, s.pages().stop) for s in setup.image.sections if s.name != ".modules"])
        assert np.all(held[core] == n)  # default scope: text+rodata
    else:
        assert np.all(held[setup.mapped] == 1)
    # every frame of every node's area is used once
    used = np.sort(where[where >= 0])
    want = np.sort(np.concatenate([setup.lay.part_offset[h] + np.arange(len(pl.hosted[h])) * PAGE_SIZE for h in range(n)]))
    assert np.array_equal(used, want)


def test_filled_copies_match_master(setup: Setup) -> None:
    assert setup.copies.mismatches(setup.master, setup.mem, setup.mapped) == []
    for off in interesting_offsets(setup.image):
        for n in range(setup.pl.n_nodes):
            assert setup.seen_by(n, int(off)) == setup.master[off]


def test_targets_of_matches_targets(setup: Setup) -> None:
    for off in interesting_offsets(setup.image):
        col = setup.copies.targets(np.array([off]))[:, 0]
        assert setup.copies.targets_of(int(off)) == [int(x) for x in col if x >= 0]
        assert len(setup.copies.targets_of(int(off))) == setup.n_copies_of(int(off))
    # the gap between sections has no copies
    gap = setup.image.section(".text").offset + setup.image.section(".text").size + 2 * PAGE_SIZE
    assert setup.copies.targets_of(gap) == []
    assert np.all(setup.copies.targets(np.array([gap])) == -1)
    offs = interesting_offsets(setup.image)
    tg = setup.copies.targets(offs)
    assert tg.shape == (setup.copies.where.shape[1], len(offs))


def test_write_reaches_master_and_every_copy(setup: Setup) -> None:
    offs = interesting_offsets(setup.image)
    vals = ((setup.master[offs].astype(np.int64) + 1 + np.arange(len(offs))) % 256).astype(np.uint8)
    before = setup.mem.copy()
    setup.copies.write(setup.master, setup.mem, offs, vals)
    assert np.array_equal(setup.master[offs], vals)
    for off, v in zip(offs.tolist(), vals.tolist(), strict=True):
        for n in range(setup.pl.n_nodes):
            assert setup.seen_by(n, off) == v
    # exactly those bytes changed in mem: one per copy of each offset
    changed = np.flatnonzero(setup.mem != before)
    assert len(changed) == sum(setup.n_copies_of(int(o)) for o in offs)
    assert setup.copies.mismatches(setup.master, setup.mem, setup.mapped) == []


def test_mismatches_finds_the_corrupted_copy(setup: Setup) -> None:
    where = setup.copies.where
    for page in (0, int(setup.mapped[-1]), int(setup.image.section(".rodata").offset // PAGE_SIZE)):
        for col in np.flatnonzero(where[page] >= 0).tolist():
            mem = setup.mem.copy()
            mem[where[page, col] + 17] ^= 0xFF
            assert setup.copies.mismatches(setup.master, mem, setup.mapped) == [(page, col)]
            assert setup.copies.mismatches(setup.master, mem, [page, page]) == [(page, col)]
            assert setup.copies.mismatches(setup.master, mem, [1 if page == 0 else 0]) == []
    # two corruptions at once, reported sorted
    mem = setup.mem.copy()
    cols = np.flatnonzero(where[3] >= 0)
    mem[where[3, cols[-1]]] ^= 1
    mem[where[0, np.flatnonzero(where[0] >= 0)[0]] + PAGE_SIZE - 1] ^= 1
    assert setup.copies.mismatches(setup.master, mem, setup.mapped) == [(0, int(np.flatnonzero(where[0] >= 0)[0])), (3, int(cols[-1]))]
    # a master change is a mismatch of every copy of the page
    master = setup.master.copy()
    master[2 * PAGE_SIZE + 5] ^= 1
    assert setup.copies.mismatches(master, setup.mem, setup.mapped) == [(2, int(c)) for c in np.flatnonzero(where[2] >= 0)]


def test_write_word(setup: Setup) -> None:
    word = bytes.fromhex("a1b2c3d4")
    for off in (0, PAGE_SIZE - 4, int(setup.image.section(".rodata").offset) + 8, int(setup.image.section(".modules").offset) + 16):
        before = setup.mem.copy()
        setup.copies.write_word(setup.master, setup.mem, off, word)
        assert bytes(setup.master[off : off + 4]) == word
        for n in range(setup.pl.n_nodes):
            assert bytes(setup.seen_by(n, off + i) for i in range(4)) == word
        assert len(np.flatnonzero(setup.mem != before)) <= 4 * setup.n_copies_of(off)
        assert np.count_nonzero(setup.mem != before) == sum(
            np.count_nonzero(before[t : t + 4] != np.frombuffer(word, np.uint8)) for t in setup.copies.targets_of(off)
        )
    assert setup.copies.mismatches(setup.master, setup.mem, setup.mapped) == []
    with pytest.raises(AssertionError):
        setup.copies.write_word(setup.master, setup.mem, 2, word)


def test_replicate_text_only(image) -> None:
    s = Setup(image, 3, "replicate", replicate="text")
    text_page, ro_page = 1, int(image.section(".rodata").offset // PAGE_SIZE)
    assert (s.copies.where[text_page] >= 0).sum() == 3
    assert (s.copies.where[ro_page] >= 0).sum() == 1
    off = ro_page * PAGE_SIZE + 9
    s.copies.write(s.master, s.mem, np.array([off, text_page * PAGE_SIZE]), np.array([7, 8], dtype=np.uint8))
    for n in range(3):
        assert s.seen_by(n, off) == 7 and s.seen_by(n, text_page * PAGE_SIZE) == 8
    assert s.copies.mismatches(s.master, s.mem, s.mapped) == []


@pytest.mark.parametrize("scope", ["text", "text+rodata"])
def test_replicate_copies_module_area(image, scope: str) -> None:
    pl = place(image, 2, "replicate", scope)
    mods = image.section(".modules").pages()
    assert [pl.tables[n].home[mods.start] for n in range(2)] == [0, 1]


# -- TextState over a real segment ---------------------------------------------------------------

N_NODES, N_SITES, N_KEYS, N_TASKS = 3, 1001, 17, 5


@pytest.fixture
def seg():
    s = Segment.create(segment_name("txt", new_token()), text_segment_size(N_NODES, N_SITES, N_KEYS, N_TASKS))
    try:
        yield s
    finally:
        s.close()
        s.unlink()
    assert s.name not in list_segments()


@pytest.fixture
def state(seg):
    st = TextState(seg, N_NODES, N_SITES, N_KEYS, N_TASKS)
    try:
        yield st
    finally:
        st.release()


def test_segment_size() -> None:
    size = 192 + 128 * N_NODES
    size += 8 * N_SITES  # site_seq
    size += N_SITES  # site_state
    size = -(-size // 8) * 8 + N_SITES  # site_live
    size = -(-size // 8) * 8 + 8 * N_KEYS
    size += MAX_BATCH * 8 * 2 + MAX_BATCH * 8  # desc
    size += N_TASKS
    size = -(-size // 8) * 8 + 8 * N_TASKS * 3 + 8 * 64 + 8 * 16  # task_tramp, task_qs, task_mod, slot_gen, share_users
    size = -(-size // 8) * 8 + 64 * (8 + 8 + 8 + 8)
    size += 8 * 7  # lock_owner
    size += N_NODES * N_SITES  # pend
    size = -(-size // 8) * 8 + 8 * N_NODES * 8  # key_refs
    size += 8 * N_TASKS + 8 * N_NODES * N_TASKS + 8 * N_NODES * 2  # task_node, inbox, inbox_ptr
    size += 4 * N_TASKS * N_SITES  # task_seen
    size = -(-size // 8) * 8 + 8 * N_TASKS * RECENT_SITES  # task_recent
    assert text_segment_size(N_NODES, N_SITES, N_KEYS, N_TASKS) == size


def test_starts_zeroed(state) -> None:
    for f in TXT_HEADER.names:
        if f != "pad":
            assert state.get(f) == 0
    assert not state.site_seq.any() and not state.site_state.any() and not state.failure_log["site"].any()


def test_header_get_set_add(state) -> None:
    fields = [f for f in TXT_HEADER.names if f != "pad"]
    for i, f in enumerate(fields):
        state.set(f, 1000 + i)
    for i, f in enumerate(fields):
        assert state.get(f) == 1000 + i
        assert int(state.header[f][0]) == 1000 + i  # the numpy view sees the memoryview write
        assert type(state.get(f)) is int
    assert state.add("sync_seq") == 1001
    assert state.add("sync_seq", 5) == 1006
    assert state.add("desc_gen", -1000 - fields.index("desc_gen")) == 0
    assert state.get("sync_seq") == 1006 and state.get("desc_gen") == 0
    state.header["stop_seq"] = -(2**40)
    assert state.get("stop_seq") == -(2**40)
    assert state.get("stop_arrived") == 1002  # neighbours untouched


def test_node_get_set(state) -> None:
    fields = [f for f in TXT_NODE.names if f != "pad"]
    for n in range(N_NODES):
        for i, f in enumerate(fields):
            state.node_set(n, f, 10 * n + i)
    for n in range(N_NODES):
        for i, f in enumerate(fields):
            assert state.node_get(n, f) == 10 * n + i
            assert int(state.nodes[f][n]) == 10 * n + i
    state.nodes["in_int3"][1] = 77
    assert state.node_get(1, "in_int3") == 77 and state.node_get(0, "in_int3") == 2 and state.node_get(2, "in_int3") == 22
    # the header is untouched by node writes
    assert all(state.get(f) == 0 for f in TXT_HEADER.names if f != "pad")


def test_site_views_and_memoryviews_share_memory(state) -> None:
    state.site_seq[:] = np.arange(N_SITES) * 3
    assert [state.seq_q[i] for i in (0, 1, N_SITES - 1)] == [0, 3, 3 * (N_SITES - 1)]
    state.seq_q[7] += 1
    assert state.site_seq[7] == 22
    state.site_state[:] = np.arange(N_SITES) % 4
    assert state.state_b[N_SITES - 1] == (N_SITES - 1) % 4
    state.state_b[5] = -1
    assert state.site_state[5] == -1
    # neighbouring arrays untouched
    assert not state.site_live.any() and not state.key_count.any() and not state.task_klp.any()
    assert state.get("failures") == 0


def test_every_section_is_disjoint_and_shared(seg, state) -> None:
    """Write every field through one TextState; a second one over another mapping of the same
    segment sees exactly those values (the descriptor views too)."""
    state.header["sync_seq"] = 11
    state.nodes["done"][:] = [1, 2, 3]
    state.site_seq[:] = 5
    state.site_state[:] = 2
    state.site_live[:] = 1
    state.key_count[:] = 9
    state.desc_offset[:] = np.arange(MAX_BATCH) * 16
    state.desc_site[:] = np.arange(MAX_BATCH) + 100
    state.desc_new[:] = 0xAB
    state.task_klp[:] = 3
    state.failure_log["node"] = 4
    other_seg = Segment.attach(seg.name)
    other = TextState(other_seg, N_NODES, N_SITES, N_KEYS, N_TASKS)
    try:
        assert other.get("sync_seq") == 11
        assert [other.node_get(n, "done") for n in range(N_NODES)] == [1, 2, 3]
        assert np.all(other.site_seq == 5) and np.all(other.site_state == 2) and np.all(other.site_live == 1)
        assert np.all(other.key_count == 9) and np.all(other.task_klp == 3)
        assert np.array_equal(other.desc_offset, np.arange(MAX_BATCH) * 16)
        assert np.array_equal(other.desc_site, np.arange(MAX_BATCH) + 100)
        assert np.all(other.desc_new == 0xAB) and other.desc_new.shape == (MAX_BATCH, 8)
        assert np.all(other.failure_log["node"] == 4) and not other.failure_log["site"].any()
        assert other.get("failures") == 0 and other.get("stop_seq") == 0
        other.set("desc_count", 42)
        other.seq_q[0] = 99
        assert state.get("desc_count") == 42 and state.site_seq[0] == 99
    finally:
        other.release()
        other_seg.close()


def test_record_failure(state) -> None:
    state.record_failure(2, 17, bytes.fromhex("0f1f440000"), bytes.fromhex("e912345678"))
    assert state.get("failures") == 1
    rec = state.failure_log[0]
    assert (int(rec["node"]), int(rec["site"])) == (2, 17)
    assert bytes(rec["expected"]) == bytes.fromhex("0f1f440000") + bytes(3)
    assert bytes(rec["found"]) == bytes.fromhex("e912345678") + bytes(3)
    state.record_failure(0, -5, b"", b"\x01")
    assert state.get("failures") == 2
    assert int(state.failure_log[1]["site"]) == -5 and bytes(state.failure_log[1]["found"][:1]) == b"\x01"
    for i in range(70):
        state.record_failure(1, 1000 + i, b"\x00", b"\x01")
    assert state.get("failures") == 72
    assert int(state.failure_log[63]["site"]) == 1000 + 61  # the log keeps the first 64
    assert int(state.failure_log[0]["site"]) == 17
