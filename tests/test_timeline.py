"""The emulated timeline of stress (model/timeline.py), and the pieces of issue 16 that are pure
logic: the INT3 handler's two fixes and the poisoned descriptor, the replica verdict read
through page tables, aligned word fetches."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import numpy as np
import pytest

from numaemu.model.image import PAGE_SIZE, synthetic_image
from numaemu.model.sites import INT3, KPROBE_ARMED, site_table
from numaemu.model.timeline import SCALE_MARGIN, Timeline, scale_for, site_ns, timeline_for
from numaemu.patching.copies import TextCopies
from numaemu.patching.text_poke_bp import POISON_FREE, poison_descriptor, poke_int3_handler, publish_descriptor


def x86() -> Timeline:
    return timeline_for("x86_64", 2.9, 4.0, 85.0, 16_000_000, 60_000)


def test_site_ns_is_the_code_between_two_sites() -> None:
    # 16 MB of text, 60,000 sites: 267 bytes = 67 instructions between sites, at 1 IPC and 2.9 GHz
    assert site_ns("x86_64", 16_000_000, 60_000, 2.9) == pytest.approx(16e6 / 6e4 / 4 / 2.9)
    assert x86().site_ns == pytest.approx(22.99, abs=0.01)


def test_every_cost_has_a_source_and_scales_to_wall_time() -> None:
    tl = x86()
    rows = tl.rows()
    assert {name for name, _, _ in rows} == {f.name for f in dataclasses.fields(Timeline)} - {"arch", "scale"}
    assert all(src for _, _, src in rows)
    assert tl.wall_ns(tl.ipi_ns) == 0  # not measured yet
    w = tl.with_scale(500.0)
    assert w.wall_ns(w.ipi_ns) == int(1317 * 500) and w.wall_ns(w.text_poke_ns) == 500_000
    assert w.emulated_s(5.0) == pytest.approx(0.01)
    # the arm64 IPI is the ThunderX2 measurement, the x86 one the Xeon's
    assert timeline_for("arm64", 3.0, 4.0, 90.0, 1, 1).ipi_ns > tl.ipi_ns


def test_the_scale_follows_the_slowest_reader() -> None:
    tl = x86()
    assert scale_for(tl, 10_000) == pytest.approx(10_000 * SCALE_MARGIN / tl.site_ns)
    assert scale_for(tl, 0.001) == 1.0  # never faster than real time


def test_bad_timeline_values_are_refused() -> None:
    with pytest.raises(ValueError, match="ipi_ns"):
        dataclasses.replace(x86(), ipi_ns=-1.0)
    with pytest.raises(ValueError, match="site_ns"):
        dataclasses.replace(x86(), site_ns=0.0)


# -- the INT3 handler, the fixes and the poisoned descriptor -----------------------------------


class _State:
    """The header, node and descriptor fields poke_int3_handler uses, in process memory."""

    def __init__(self) -> None:
        self.h = {"desc_gen": 0, "desc_live": 0, "desc_count": 0, "stop_seq": 0, "stop_released": 0}
        self.in_int3 = [0, 0]
        self.desc_offset = np.zeros(256, np.int64)
        self.desc_site = np.zeros(256, np.int64)
        self.desc_new = np.zeros((256, 8), np.uint8)

    def get(self, f: str) -> int:
        return self.h[f]

    def set(self, f: str, v: int) -> None:
        self.h[f] = v

    def add(self, f: str, v: int = 1) -> int:
        self.h[f] += v
        return self.h[f]

    def node_get(self, n: int, f: str) -> int:
        return self.in_int3[n]

    def node_set(self, n: int, f: str, v: int) -> None:
        self.in_int3[n] = v


class _Kernel:
    def __init__(self, st: _State, sites) -> None:
        self.st, self.sites = st, sites

    def wait_for(self, cond, what: str, service: bool = True) -> None:
        assert cond(), what  # one process: nothing to wait for (no stop_machine round is open)


@pytest.fixture(scope="module")
def table():
    return site_table(synthetic_image(scale=0.1))


def test_handler_emulates_the_new_instruction_of_a_live_batch(table) -> None:
    st = _State()
    s = np.array([5, 9])
    new = table.enc[s, 1]
    publish_descriptor(_Kernel(st, table), s, new)  # type: ignore[arg-type]
    out, ok, consistent = poke_int3_handler(st, 0, table, s)  # type: ignore[arg-type]
    assert ok.all() and consistent and np.array_equal(out, new)
    assert st.in_int3 == [0, 0]  # the reference is dropped on the way out


def test_a_handler_whose_descriptor_is_poisoned_under_it_sees_it(table) -> None:
    """The use after free both 2019 fixes exist to prevent: the descriptor released while a
    handler (interrupts off, so it answers no sync) is still between its header and entries."""
    st = _State()
    s = np.array([5])
    publish_descriptor(_Kernel(st, table), s, table.enc[s, 1])  # type: ignore[arg-type]

    def release() -> None:
        time.sleep(0.02)
        st.set("desc_live", 0)
        poison_descriptor(st)  # type: ignore[arg-type]

    t = threading.Thread(target=release)
    t.start()
    out, ok, consistent = poke_int3_handler(st, 0, table, s, handler_ns=100_000_000)  # type: ignore[arg-type]
    t.join()
    assert not ok.any() and not consistent
    assert np.all(st.desc_new[:1] == POISON_FREE) and st.desc_offset[0] == -1


def test_no_batch_in_flight_leaves_the_int3_to_kprobes(table) -> None:
    st = _State()
    kp = table.kprobe_sites()[:1]
    out, ok, consistent = poke_int3_handler(st, 0, table, kp)  # type: ignore[arg-type]
    assert not ok.any() and consistent  # not ours, and nothing was read: kprobe_int3_handler's
    assert table.enc[kp[0], KPROBE_ARMED, 0] == INT3


# -- the replica verdict through page tables ---------------------------------------------------


def test_a_copy_the_patcher_forgot_fails_the_verdict() -> None:
    """The verdict reads what each node's page table maps, not the patcher's list of copies: a
    frame the patcher did not write is caught, though `TextCopies.mismatches` of a list without it
    passes."""
    pages = 4
    master = np.arange(pages * PAGE_SIZE, dtype=np.int64).astype(np.uint8)
    mem = np.concatenate([master, master])  # node 0's frames, then node 1's
    bases = [np.arange(pages) * PAGE_SIZE, pages * PAGE_SIZE + np.arange(pages) * PAGE_SIZE]
    master[PAGE_SIZE + 7] ^= 0xFF  # a patch written to the master ...
    mem[PAGE_SIZE + 7] = master[PAGE_SIZE + 7]  # ... and to node 0's copy, not node 1's
    forgot = TextCopies(where=bases[0][:, None].copy())  # the patcher's list: node 0's frames only
    assert forgot.mismatches(master, mem, np.arange(pages)) == []
    assert TextCopies.mismatches_seen(master, mem, bases, np.arange(pages)) == [(1, 1)]


# -- arm64 word fetches --------------------------------------------------------------------------


def test_word_fetches_keep_each_buffered_line_whole() -> None:
    """Two sites whose lines share a buffer slot, fetched (missed) in one batch: the slot keeps
    one line, and what it holds is that line's bytes, not the other site's word (a bug once
    seen as 1 torn or stale execution per million in clean arm64 runs)."""
    from types import SimpleNamespace

    from numaemu.model.image import LINE_SIZE
    from numaemu.patching.reader import IBUF_LINES, Reader

    image = synthetic_image(scale=0.2, arch="arm64")
    t = site_table(image)
    mem = image.data.copy()
    lines = t.offset[: t.n_core] // LINE_SIZE
    slot = lines % IBUF_LINES
    pair = next((a, b) for a in range(len(lines)) for b in np.flatnonzero(slot == slot[a]) if lines[b] != lines[a] and (t.offset[a] - t.offset[b]) % LINE_SIZE)
    n_pages = len(mem) // PAGE_SIZE
    table = SimpleNamespace(home=np.zeros(n_pages, np.int64), frame=np.arange(n_pages))
    st = SimpleNamespace(site_seq=np.zeros(len(t), np.int64), site_state=np.zeros(len(t), np.int8), line_gen=np.zeros(len(mem) // LINE_SIZE, np.int32),
                         pend=np.zeros((2, len(t)), np.int8), get=lambda field: 0)
    r = Reader(0, mem, table, (0,), t, st, lambda: None)  # type: ignore[arg-type]
    r.execute(np.array(pair))
    kept = int(r.tag[slot[pair[0]]])
    words = kept * LINE_SIZE + np.arange(0, LINE_SIZE, 4)
    assert np.array_equal(r._words(words), mem[words[:, None] + np.arange(4)])


def _two_copies(arch: str, ifetch: str = "coherent") -> tuple[Any, ...]:
    """A replicated image in a ``mem`` of two copies (node 0's, then node 1's), each node's
    Reader through its own page table, and their shared state (line generations included)."""
    from types import SimpleNamespace

    from numaemu.model.image import LINE_SIZE
    from numaemu.patching.copies import TextCopies
    from numaemu.patching.reader import Reader

    image = synthetic_image(scale=0.2, arch=arch)
    t = site_table(image)
    size = len(image.data)
    n_pages = size // PAGE_SIZE
    mem = np.concatenate([image.data, image.data])
    where = np.stack([np.arange(n_pages) * PAGE_SIZE, size + np.arange(n_pages) * PAGE_SIZE], axis=1).astype(np.int64)
    st = SimpleNamespace(site_seq=np.zeros(len(t), np.int64), site_state=np.zeros(len(t), np.int8), line_gen=np.zeros(len(mem) // LINE_SIZE, np.int32),
                         pend=np.zeros((2, len(t)), np.int8), get=lambda field: 0)
    readers = [Reader(n, mem, SimpleNamespace(home=np.full(n_pages, n, np.int64), frame=np.arange(n_pages)), (0, size), t, st,  # type: ignore[arg-type]
                      lambda: None, ifetch=ifetch) for n in range(2)]
    return t, image.data.copy(), mem, TextCopies(where), st, readers


def _site_write(t: Any, site: int) -> tuple[np.ndarray, np.ndarray]:
    """The bytes of `site`'s other state (state 1), at its image offsets."""
    L = int(t.length[site])
    return int(t.offset[site]) + np.arange(L), t.enc[site, 1, :L].copy()


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_stores_reach_buffered_lines_without_a_sync(arch: str) -> None:
    """--ifetch coherent: a store to a line a node has buffered is fetched at the node's next
    execution, with no sync (x86's snoop, arm64's IC IVAU after the store); under until-sync the
    node runs the old bytes until it takes part in a sync (the checker's stale)."""
    for ifetch, fresh_before_sync in (("coherent", True), ("until-sync", False)):
        t, master, mem, copies, st, readers = _two_copies(arch, ifetch)
        site = int(t.n_core // 2)
        r = readers[1]
        before = r.execute(np.array([site])).observed[0, : t.length[site]].copy()
        offs, vals = _site_write(t, site)
        copies.write(master, mem, offs, vals, st.line_gen)
        after = r.execute(np.array([site])).observed[0, : t.length[site]]
        assert np.array_equal(after, vals) == fresh_before_sync, ifetch
        assert not np.array_equal(before, vals)
        r.flush()
        assert np.array_equal(r.execute(np.array([site])).observed[0, : t.length[site]], vals)


def test_ivau_by_the_kernel_va_leaves_the_other_replica_stale() -> None:
    """The ivau-local bug: node 0's patcher writes both replicas but invalidates only the lines
    its own page table maps; node 1 keeps its buffered old line through any number of syncs
    (an ISB does not invalidate an I-cache), node 0 runs the new bytes."""
    from numaemu.patching.text_poke import TextPoke

    t, master, mem, copies, st, readers = _two_copies("arm64")
    site = int(t.n_core // 2)
    for r in readers:
        r.execute(np.array([site]))
    poke = TextPoke(copies, master, mem, 0, lambda: None, st.line_gen, readers[0].page_base)  # node 0's frames
    word = t.enc[site, 1, :4].tobytes()
    poke.write_word(int(t.offset[site]), word)
    assert np.array_equal(mem[poke.copies.targets_of(int(t.offset[site]))[1] + np.arange(4)], np.frombuffer(word, np.uint8))
    readers[1].flush()  # the kick's ISB
    assert readers[0].execute(np.array([site])).observed[0, :4].tobytes() == word
    assert readers[1].execute(np.array([site])).observed[0, :4].tobytes() != word
    # The same write with every replica's lines invalidated reaches node 1.
    TextPoke(copies, master, mem, 0, lambda: None, st.line_gen).write_word(int(t.offset[site]), word)
    assert readers[1].execute(np.array([site])).observed[0, :4].tobytes() == word


def test_each_copy_takes_its_time_before_the_next_and_the_node_runs_meanwhile() -> None:
    """Kuzin's __text_poke loops over the replicas for each site: while the patcher writes
    node 0's copy, node 1's still holds the old bytes, for text_poke_ns; and the patching node's
    other CPUs run its tasks in that time (TextPoke.meanwhile)."""
    from numaemu.patching.text_poke import TextPoke

    for arch in ("x86_64", "arm64"):
        t, master, mem, copies, st, readers = _two_copies(arch)
        site = int(t.n_core // 2)
        off = int(t.offset[site])
        where = copies.targets_of(off)
        new = t.enc[site, 1, : t.length[site]].tobytes()
        seen: list[tuple[bool, bool]] = []

        def meanwhile(deadline: int, where=where, new=new, mem=mem, seen=seen) -> None:
            seen.append(tuple(mem[w : w + len(new)].tobytes() == new for w in where))  # type: ignore[arg-type]

        poke = TextPoke(copies, master, mem, 20_000, lambda: None, st.line_gen)
        poke.meanwhile = meanwhile
        t0 = time.perf_counter_ns()
        if arch == "arm64":
            poke.write_word(off, new)
        else:
            poke.poke(off + np.arange(len(new)), np.frombuffer(new, np.uint8), np.zeros(len(new), np.int64))
        assert seen == [(True, False), (True, True)], (arch, seen)
        assert time.perf_counter_ns() - t0 >= 2 * 20_000


def test_fence_is_a_full_barrier_instruction() -> None:
    """host.fence compiles to the architecture's full barrier (smp_mb): a locked instruction or
    mfence on x86, dmb ish on arm64."""
    import platform

    from numaemu.host.fence import assembly, fence

    fence()
    asm = assembly()
    want = ("dmb",) if platform.machine() in ("aarch64", "arm64") else ("lock", "mfence")
    assert any(w in asm for w in want), asm



# -- ftrace users sharing a function -------------------------------------------------------------


def test_shared_functions_call_their_users() -> None:
    from numaemu.model.sites import FTRACE_BPF, FTRACE_CALLER, FTRACE_KLP, FTRACE_OFF
    from numaemu.patching.sources import USER_BPF, USER_FTRACE, USER_KLP, USER_KLP2, plan_sources, shared_state, sharing_agreement

    assert shared_state(0) == FTRACE_OFF
    assert shared_state(USER_FTRACE) == FTRACE_CALLER and shared_state(USER_BPF) == FTRACE_BPF
    assert shared_state(USER_KLP) == shared_state(USER_KLP2) == FTRACE_KLP
    assert shared_state(USER_BPF | USER_KLP) == FTRACE_CALLER  # several: ftrace_caller's ops list
    t = site_table(synthetic_image(scale=0.1))
    plan = plan_sources("shared", t, 64)
    users = np.zeros(16, np.int64)
    state = np.zeros(len(t), np.int8)
    assert sharing_agreement(plan, users, state) == []
    users[0] = USER_BPF
    assert "need 2" in sharing_agreement(plan, users, state)[0]  # the code does not call the BPF trampoline
    state[plan.shared_sites[0]] = FTRACE_BPF
    assert sharing_agreement(plan, users, state) == []
    users[1] = USER_KLP | USER_KLP2
    assert "two IPMODIFY users" in sharing_agreement(plan, users, state)[0]
    assert not set(plan.shared_sites) & (set(plan.ftrace_sites) | set(plan.klp_sites) | {plan.bpf_site})
