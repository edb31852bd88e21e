"""Failure handling, in one process: the fault hook and the kill schedule (faults.py), the task
journal (worker.py), the node's time-gated checks and parking (worker.NodeContext), and the
recovery of the patching state after a node died at the worst moments (recovery.py).

A death is simulated exactly: the patching node's fault hook snapshots the master, every copy and
the whole ``txt`` segment at the moment it would have died (holding its locks, INT3s in the text,
a round half-done), then the snapshot is put back, the locks it held are taken again, and
`repair_text` must leave every copy equal to the master with the patch finished."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from numaemu.errors import UsageError
from numaemu.host.segments import (
    STATE_ABORT,
    STATE_RECOVER,
    STATE_RUN,
    Control,
    MemoryLayout,
    Segment,
    new_token,
    segment_name,
)
from numaemu.model.image import MODULE_SLOT_BYTES, synthetic_image, with_module_area
from numaemu.model.placement import place
from numaemu.model.sites import INT3, site_table
from numaemu.patching import module_source
from numaemu.patching.copies import TextCopies
from numaemu.patching.kernel import NodeKernel
from numaemu.patching.node_source import NodeSource
from numaemu.patching.protocols import Locks
from numaemu.patching.recovery import release_locks, repair_text
from numaemu.patching.sources import plan_sources
from numaemu.patching.stop_machine import stop_round
from numaemu.patching.text_poke_bp import publish_descriptor
from numaemu.patching.textmem import PUBLISHED, TextState, text_segment_size
from numaemu.runtime.faults import (
    Fault,
    FaultHook,
    KillSchedule,
    Launch,
    fault_from_env,
    parse_fault,
)
from numaemu.runtime.run_node import TaskJournal, restore_journal
from numaemu.runtime.worker import ALIVE_CHECK_NS, Aborted, NodeContext, fill_partition

# -- faults.py ---------------------------------------------------------------------------------


def test_parse_fault() -> None:
    assert parse_fault("1:int3_sync") == Fault(1, "int3_sync", 1, 1, "kill")
    assert parse_fault(" 0:run:50:2 ") == Fault(0, "run", 50, 2)
    assert parse_fault("3:report:1:1:stop") == Fault(3, "report", 1, 1, "stop")
    for bad in ("1", "1:nowhere", "x:run", "1:run:0", "-1:run", "1:run:1:0", "1:run:1:1:explode", "1:run:1:1:kill:9"):
        with pytest.raises(ValueError):
            parse_fault(bad)


def test_fault_from_env() -> None:
    assert fault_from_env({}) is None
    assert fault_from_env({"NUMAEMU_FAULT": ""}) is None
    assert fault_from_env({"NUMAEMU_FAULT": "1:fill"}) == Fault(1, "fill")
    with pytest.raises(UsageError, match="^NUMAEMU_FAULT: "):
        fault_from_env({"NUMAEMU_FAULT": "1:nowhere"})


def test_fault_hook_fires_once_at_the_count(monkeypatch) -> None:
    sent, recorded = [], []
    monkeypatch.setattr("numaemu.runtime.faults.os.kill", lambda pid, sig: sent.append((pid, sig)))
    hook = FaultHook(Fault(1, "run", 3), 1, recorded.append)
    for point in ("fill", "run", "ready", "run"):
        hook.reached(point)
    assert sent == []
    hook.reached("run")
    assert sent == [(os.getpid(), signal.SIGKILL)] and len(recorded) == 1
    hook.reached("run")  # fired already
    assert len(sent) == 1
    other = FaultHook(Fault(0, "run"), 1)  # another node's fault
    other.reached("run")
    unarmed = FaultHook(None, 0)
    unarmed.reached("run")
    stop = FaultHook(Fault(2, "ready", 1, 1, "stop"), 2, recorded.append)
    stop.reached("ready")
    assert len(sent) == 2 and sent[-1] == (os.getpid(), signal.SIGSTOP)
    assert len(recorded) == 1  # a stop is not a death


def test_kill_schedule_is_seeded_poisson() -> None:
    a, b = KillSchedule(2.0, 7, 0), KillSchedule(2.0, 7, 0)
    assert a.next_ns == b.next_ns
    assert not a.due(a.next_ns - 1) and a.due(a.next_ns)
    assert a.wait_s(a.next_ns - 500_000_000) == pytest.approx(0.5)
    gaps, now = [], a.next_ns
    for _ in range(4000):
        node = a.pick([0, 1, 2], now)
        assert node in (0, 1, 2)
        gaps.append(a.next_ns - now)
        now = a.next_ns
    assert np.mean(gaps) == pytest.approx(0.5e9, rel=0.08)  # rate 2 per second
    assert a.pick([], now) is None and a.next_ns > now  # nothing to kill: the next moment is drawn
    assert KillSchedule(2.0, 8, 0).next_ns != KillSchedule(2.0, 7, 0).next_ns


# -- the task journal ------------------------------------------------------------------------


@pytest.fixture
def ctl_seg():
    seg = Segment.create(segment_name("ctl", new_token()), Control.size(2, 8))
    try:
        yield seg
    finally:
        seg.close()
        seg.unlink()


def test_journal_rolls_back_a_batch_half_applied(ctl_seg) -> None:
    ctl = Control(ctl_seg, 2, 8)
    tasks = ctl.tasks
    tasks["done"] = np.arange(8) * 10
    tasks["checksum"] = np.arange(8, dtype=np.uint64) * 1000
    tasks["budget"] = -1
    before = tasks.copy()
    owned = np.array([1, 3, 5])
    journal = TaskJournal(ctl, 1)
    journal.begin(tasks, owned)
    tasks["checksum"][owned] += np.uint64(77)  # ... and here node 1 was SIGKILLed
    assert int(ctl.nodes["journal"][1]) == 3
    assert restore_journal(ctl, 1) == 3
    assert np.array_equal(tasks, before) and int(ctl.nodes["journal"][1]) == 0
    assert restore_journal(ctl, 1) == 0  # nothing in flight: nothing touched
    journal.begin(tasks, owned)
    tasks["done"][owned] += 2
    journal.end()  # completed: kept
    assert restore_journal(ctl, 1) == 0 and np.array_equal(tasks["done"][owned], before["done"][owned] + 2)


# -- NodeContext: time-gated checks and parking ---------------------------------------------


def _context(ctl_seg, node=0):
    ctl = Control(ctl_seg, 2, 8)
    ctl.set("state", STATE_RUN)
    cfg = SimpleNamespace(node=node, n_nodes=2, n_tasks=8, coordinator_pid=os.getpid())
    phases = []
    return NodeContext(cfg, ctl, [], phases.append, Launch()), ctl


def test_poll_checks_at_most_every_interval(ctl_seg, monkeypatch) -> None:
    nc, ctl = _context(ctl_seg)
    calls = []
    real = NodeContext.check_alive
    monkeypatch.setattr(NodeContext, "check_alive", lambda self: (calls.append(1), real(self)))
    t0 = time.perf_counter_ns()
    n = 0
    while time.perf_counter_ns() - t0 < 3 * ALIVE_CHECK_NS:
        nc.poll()
        n += 1
    assert n > 100 and 3 <= len(calls) <= 5
    ctl.set("state", STATE_ABORT)
    time.sleep(ALIVE_CHECK_NS / 1e9)
    with pytest.raises(Aborted):
        nc.poll()


def test_a_dead_coordinator_is_noticed(ctl_seg) -> None:
    nc, _ = _context(ctl_seg)
    proc = mp.get_context("fork").Process(target=lambda: None)
    proc.start()
    proc.join()
    nc.cfg.coordinator_pid = proc.pid  # reaped: gone
    with pytest.raises(Aborted, match="coordinator is gone"):
        nc.check_alive()


def test_park_waits_for_the_recovery_then_resumes(ctl_seg) -> None:
    nc, ctl = _context(ctl_seg, node=1)
    resumed = []
    nc.on_resume.append(lambda: resumed.append(ctl.get("state")))
    nc.check_alive()  # not parkable: nothing happens in STATE_RUN
    ctl.set("recover_gen", 4)
    ctl.set("state", STATE_RECOVER)
    nc.check_alive()  # not parkable yet (a node before its run phase): goes on
    assert resumed == []
    nc.parkable = True

    def coordinator() -> None:
        deadline = time.monotonic() + 5
        while int(ctl.nodes["parked"][1]) != 4 and time.monotonic() < deadline:
            time.sleep(0.001)
        ctl.set("state", STATE_RUN)

    t = threading.Thread(target=coordinator)
    t.start()
    nc.check_alive()  # parks until the coordinator lets it go
    t.join()
    assert resumed == [STATE_RUN] and nc.parks == 1
    ctl.set("state", STATE_RECOVER)
    threading.Timer(0.05, lambda: ctl.set("state", STATE_ABORT)).start()
    with pytest.raises(Aborted):
        nc.check_alive()


def test_mark_records_where_the_node_is(ctl_seg) -> None:
    nc, ctl = _context(ctl_seg, node=1)
    assert nc.mark(2) == 0 and int(ctl.nodes["where"][1]) == 2 and int(ctl.nodes["where"][0]) == 0
    assert nc.mark(0) == 2


# -- recovery.py: a patching node dies at the worst moments ---------------------------------------


class Died(Exception):
    pass


class Rig:
    """One node patching an image with two copies; `die_at` snapshots everything the moment
    the node reaches a fault point, then unwinds (and `revive` puts the snapshot back)."""

    def __init__(self, protocol: str, arch: str = "x86_64") -> None:
        self.image = with_module_area(synthetic_image(0.05, arch=arch))
        self.t = site_table(self.image)
        pl = place(self.image, 2, "replicate")
        lay = MemoryLayout.for_nodes(tuple(pl.image_bytes(h) for h in range(2)), user_bytes=4096)
        self.mem = np.zeros(lay.size, dtype=np.uint8)
        for h in range(2):
            fill_partition(self.mem, self.image.data, lay, h, pl.hosted[h], 0)
        self.master = self.image.data.copy()
        self.copies = TextCopies.build(pl, lay, self.image.n_pages)
        self.seg = Segment.create(segment_name("txt", new_token()), text_segment_size(1, len(self.t), self.image.n_keys, 2))
        self.st = TextState(self.seg, 1, len(self.t), self.image.n_keys, 2)
        self.locks = Locks(*(mp.Lock() for _ in range(7)))
        self.point: str | None = None
        self.snap: tuple | None = None
        self.k = NodeKernel(0, 1, self.st, self.copies, self.master, self.mem, self.t, self.locks, protocol=protocol, bug=None,
                            shared_core=False, flush=lambda: None, ipi_delay_ns=0, text_poke_ns=0, fault=self._fault)

    def _fault(self, point: str) -> None:
        if point == self.point:
            self.snap = (self.master.copy(), self.mem.copy(), bytes(self.seg.buf), self.st.lock_owner.copy())
            raise Died(point)

    def revive(self) -> None:
        """Back to the moment of death: memory as it was, the dead node's locks held."""
        master, mem, txt, owners = self.snap
        self.master[:] = master
        self.mem[:] = mem
        self.seg.buf[:] = txt
        for i, name in enumerate(Locks.__dataclass_fields__):
            if owners[i]:
                assert getattr(self.locks, name).acquire(False)

    def all_equal(self) -> bool:
        return self.copies.mismatches(self.master, self.mem, self.image.mapped_pages()) == []

    def holds(self, sites: np.ndarray, state: int) -> bool:
        return bool(np.all(self.t.holds(sites, state, self.t.read(self.master, sites))))

    def all_free(self) -> bool:
        free = []
        for name in Locks.__dataclass_fields__:
            lock = getattr(self.locks, name)
            free.append(lock.acquire(False))
            if free[-1]:
                lock.release()
        return all(free) and not self.st.lock_owner.any()

    def close(self) -> None:
        self.st.release()
        self.seg.close()
        self.seg.unlink()


@pytest.fixture
def rigs():
    made: list[Rig] = []

    def make(*args) -> Rig:
        made.append(Rig(*args))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.mark.parametrize("protocol,point", [("text_poke_bp", "int3_sync"), ("stop_machine", "stop_machine")])
def test_a_patch_in_flight_is_rolled_forward(rigs, protocol, point) -> None:
    r = rigs(protocol)
    sites = np.flatnonzero(r.t.length[: r.t.n_jump] == 5)[:300]  # two batches: the second not started
    r.point = point
    with pytest.raises(Died):
        r.k.patch(sites, np.zeros(len(sites), np.int64), np.ones(len(sites), np.int64))
    r.revive()
    st = r.st
    assert st.node_get(0, "journal") == 1 and np.all(st.site_seq[sites] % 2 == 1)
    if protocol == "text_poke_bp":
        assert r.master[r.t.offset[sites[0]]] == INT3 and st.get("desc_live") == 1
    else:
        assert st.get("stop_released") < st.get("stop_seq") and st.get("stop_arrived") == 1
    assert not r.all_free()
    out = repair_text(st, r.t, r.copies, r.master, r.mem, plan_sources("static_keys", r.t, r.image.n_keys), r.locks, [0])[0]
    assert out["sites_rolled_forward"] == len(sites) and out["copies_equal_master"]
    assert "text_mutex" in out["locks_released"]
    assert r.holds(sites, 1) and r.all_equal() and r.all_free()
    assert np.all(st.site_state[sites] == 1) and np.all(st.site_seq[sites] == 2)
    assert np.all(st.site_seq % 2 == 0) and not st.pend.any() and st.node_get(0, "journal") == 0
    assert st.get("desc_live") == 0 and st.get("desc_gen") % 2 == 0
    assert st.get("stop_released") == st.get("stop_seq") and st.get("stop_arrived") == 0
    assert st.node_get(0, "sync_ack") == st.get("sync_seq") and st.node_get(0, "in_int3") == 0
    # The kernel goes on patching as usual afterwards (a replacement node would).
    r.point = None
    assert r.k.patch(sites, np.ones(len(sites), np.int64), np.zeros(len(sites), np.int64)) == len(sites)
    assert r.holds(sites, 0) and r.all_equal() and r.k.unexpected == 0


def test_a_committed_patch_not_yet_started_is_applied_and_an_uncommitted_one_dropped(rigs) -> None:
    r = rigs("text_poke_bp")
    st, k = r.st, r.k
    a, b = np.flatnonzero(r.t.length[: r.t.n_jump] == 2)[:3], np.flatnonzero(r.t.length[: r.t.n_jump] == 5)[:3]
    k._intend(a, np.ones(3, np.int64))
    k.begin_op()  # committed, then died waiting for text_mutex
    r.locks.jump_label.acquire()  # held by it, no owner recorded (died between acquire and record)
    out = repair_text(st, r.t, r.copies, r.master, r.mem, plan_sources("static_keys", r.t, r.image.n_keys), r.locks, [0])[0]
    assert out["sites_applied"] == 3 and out["locks_released"] == ["jump_label"]
    assert r.holds(a, 1) and r.all_equal() and r.all_free() and np.all(st.site_seq[a] == 2)
    k._intend(b, np.ones(3, np.int64))  # intent written, not committed: died before begin_op
    out = repair_text(st, r.t, r.copies, r.master, r.mem, plan_sources("static_keys", r.t, r.image.n_keys), r.locks, [0])[0]
    assert out == {"locks_released": [], "intent_dropped_sites": 3, "lost": dict.fromkeys(PUBLISHED, 0), "copies_equal_master": True}
    assert r.holds(b, 0) and np.all(st.site_seq[b] == 0) and not st.pend.any()


def test_a_static_key_op_keeps_count_references_and_code_together(rigs) -> None:
    r = rigs("text_poke_bp")
    plan = plan_sources("static_keys", r.t, r.image.n_keys)
    source = NodeSource(plan, r.k, r.st, np.random.default_rng(0), key_race=False)
    r.point = "int3_sync"
    with pytest.raises(Died):
        source._key_inc(0)  # 0 -> 1: NOP -> JMP on every use site
    r.revive()
    key, sites = int(plan.keys[0]), plan.key_sites[0]
    assert int(r.st.key_count[key]) == 1 and int(r.st.key_refs[0, 0]) == 1
    out = repair_text(r.st, r.t, r.copies, r.master, r.mem, plan, r.locks, [0])[0]
    assert out["static_key"] == key and set(out["locks_released"]) == {"text_mutex", "jump_label"}
    assert r.holds(sites, 1) and np.all(r.st.site_state[sites] == 1) and r.all_equal() and r.all_free()
    # A replacement inherits the reference and drops it at the end: count and code agree.
    r.point = None
    heir = NodeSource(plan, r.k, r.st, np.random.default_rng(1), key_race=False)
    assert heir.refs[0] == 1 and heir.held[0] == 1
    heir.finish()
    assert int(r.st.key_count[key]) == 0 and r.holds(sites, 0) and r.k.unexpected == 0


def test_a_module_load_half_done_is_undone(rigs) -> None:
    r = rigs("text_poke_bp")
    plan = plan_sources("module", r.t, r.image.n_keys)
    source = NodeSource(plan, r.k, r.st, np.random.default_rng(0), key_race=False)
    slot = 0
    ms = r.t.module_sites(slot)
    first = int(r.t.offset[ms[0]])
    r.k.lock(r.locks.module)  # held (owner recorded) when it died
    module_source.load(source, slot)
    assert r.st.site_live[ms].all()
    r.st.node_set(0, "module_op", slot + 1)  # as if it died before the journal was cleared
    r.copies.write(r.master, r.mem, np.arange(first, first + 8), np.arange(8, dtype=np.uint8))
    r.mem[r.copies.targets(np.array([first]))[0][0]] ^= 0xFF  # half-written: a copy differs
    out = repair_text(r.st, r.t, r.copies, r.master, r.mem, plan, r.locks, [0])[0]
    assert out["module_slot_emptied"] == slot and "module" in out["locks_released"]
    assert not r.st.site_live[ms].any() and r.st.node_get(0, "module_op") == 0
    assert np.all(r.master[first : first + MODULE_SLOT_BYTES] == INT3) and r.all_equal()


def test_locks_of_the_living_are_left_alone(rigs) -> None:
    r = rigs("text_poke_bp")
    locks, st = r.locks, r.st
    # Node 1 (living) holds ftrace, node 2 (dead) holds klp; text_mutex held by nobody recorded.
    for name, owner in (("ftrace", 2), ("klp", 3), ("text_mutex", 0)):
        assert getattr(locks, name).acquire(False)
        st.lock_owner[list(Locks.__dataclass_fields__).index(name)] = owner
    assert sorted(release_locks(st, locks, [2])) == ["klp", "text_mutex"]
    assert not locks.ftrace.acquire(False)  # still node 1's
    locks.ftrace.release()
    st.lock_owner[:] = 0
    assert r.all_free()


def test_a_round_a_living_node_is_applying_is_left_to_it(rigs) -> None:
    # A CI hang (issue 16): node 1, the round's patcher, counted in and died; node 0, its last
    # arrival, was parked half-way through the patch function. The repair completed the round,
    # so the replacement raised the next one and counted in, and node 0, resuming, zeroed that
    # count on its way out: both then waited 30 s for a release. Now the round is left to node 0.
    r = rigs("stop_machine")
    t = r.t
    seg = Segment.create(segment_name("txt", new_token()), text_segment_size(2, len(t), r.image.n_keys, 2))
    st = TextState(seg, 2, len(t), r.image.n_keys, 2)
    plan = plan_sources("static_keys", t, r.image.n_keys)
    repairs: list[dict] = []
    next_patcher_would_wait: list[bool] = []

    def parked() -> None:  # node 0, parked mid-write: the coordinator repairs for node 1
        if not repairs:
            repairs.append(repair_text(st, t, r.copies, r.master, r.mem, plan, r.locks, [1])[1])
            next_patcher_would_wait.append(st.get("stop_released") < st.get("stop_seq"))

    try:
        kernels = [NodeKernel(n, 2, st, r.copies, r.master, r.mem, t, r.locks, protocol="stop_machine", bug=None,
                              shared_core=False, flush=lambda: None, check_alive=parked if n == 0 else lambda: None)
                   for n in range(2)]
        kernels[0].text.text_poke_ns = 1  # written chunk by chunk, with a check (a park) between
        sites = np.flatnonzero(t.length[: t.n_jump] == 5)[:64]
        publish_descriptor(kernels[1], sites, t.enc[sites, 1], live=False)
        seq = st.add("stop_seq")
        st.add("stop_arrived")  # node 1 counted in, then died
        stop_round(kernels[0], seq)  # node 0: the last arrival, so the one that patches
        (rep,) = repairs
        assert rep["stop_machine_round_left_to_node"] == 0 and "stop_machine_round_completed" not in rep
        assert rep["copies_equal_master"] and next_patcher_would_wait == [True]
        assert st.get("stop_released") == seq and st.get("stop_arrived") == 0 and st.node_get(0, "stop_ack") == seq
        assert r.holds(sites, 1) and r.all_equal()
    finally:
        st.release()
        seg.close()
        seg.unlink()
