"""A stress node's reader tasks (`ReaderTasks`): each batch is one task's request, executed by
the node's `Reader`, checked at once (`reader.check_batch`, and the checks that need a task's
history: livepatch's one version per request, a static key held on, code freed under a task
preempted inside it, new-then-old within one call), published, and paced to the run's timeline.
One task a node migrates to the next node after each of its requests, through a ring in the txt
segment, and its history goes with it. stress_node.py runs them, between its own operations and,
while it writes text, from inside the write (`run_until`: the node's other CPUs).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from numaemu.host.clock import spin
from numaemu.host.fence import fence
from numaemu.model.sites import FTRACE_BPF, FTRACE_KLP, MODULE_FUNCS, SITES_PER_MODULE_FUNC, SiteTable
from numaemu.patching.data_protocol import node_step_name
from numaemu.patching.node_source import NodeSource
from numaemu.patching.reader import Observation, Reader, check_batch, check_order
from numaemu.patching.sources import IPMODIFY
from numaemu.patching.textmem import TextState

if TYPE_CHECKING:
    from numaemu.patching.stress_node import StressNodeConfig

__all__ = ["ReaderTasks", "LEAVING", "READER_TASKS", "BATCH_SITES", "MAX_REPORTED"]

READER_TASKS = 4  # per node: READER_TASKS - 1 that stay, one that migrates (livepatch's per-task consistency, RCU-tasks)
BATCH_SITES = 48  # sites executed per reader batch (between two safe points)
HOT_SHARE = 0.75  # share of executions aimed at the sites the source patches
MEASURE_BATCHES = 24  # reader batches timed before the start (the time scale)
MAX_REPORTED = 10


class ReaderTasks:
    """The node's reader tasks: each batch is one task's request: its livepatch set first (one
    consistent version), then sites the source patches, then any site of the image."""

    def __init__(self, cfg: StressNodeConfig, st: TextState, reader: Reader, rng: np.random.Generator, source: NodeSource, adopt: bool = False) -> None:
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
        self.shared = cfg.plan.shared_sites if "shared" in cfg.plan.names else np.zeros(0, np.int64)
        self.klp = cfg.plan.klp_sites if "livepatch" in cfg.plan.names else None
        self.mod_sites = cfg.plan.module_sites if "module" in cfg.plan.names else np.zeros(0, np.int64)
        # Tasks: READER_TASKS - 1 stay on this node (its home tasks) and one travels: it moves to
        # the next node after each of its requests, mid-call of whatever patch is in flight, as
        # the scheduler's load balancing moves tasks between CPUs (kernel/sched/fair.c:
        # load_balance -> detach_task/attach_task). The move is a ring in the txt segment
        # (`_push`, `_pop`), and what a task saw travels with it (``task_seen``). Each request
        # goes to a task drawn at random from those the node holds, so a task preempted inside
        # a trampoline or module may stay there for several requests, as on a busy runqueue.
        n_tasks = cfg.n_nodes * READER_TASKS
        self.homes = list(range(cfg.node * READER_TASKS, (cfg.node + 1) * READER_TASKS - 1))
        self.migrate = cfg.migrate and cfg.n_nodes > 1
        self.held: list[int] = self._adopt(n_tasks) if adopt else [(cfg.node + 1) * READER_TASKS - 1]
        self.migrations = 0
        self._inside_run = False  # run_until: not again from inside one of its requests
        self.new_then_old = 0  # a task ran a site's new code, then its old code, within one call
        self.ordering: list[dict[str, Any]] = []  # the first of them, described
        self.pace_ns = 0  # wall ns each site executed takes at least (the timeline's site_ns)
        self.scale, self.start_ns = 1.0, 0  # the timeline's scale, and when the run started
        self.first: dict[str, Any] | None = None  # --stop-at-first: the first violation, in full
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
        scratch = np.zeros(len(self.cfg.sites), dtype=self.st.task_seen.dtype)
        for i in range(batches):
            t0 = time.perf_counter_ns()
            batch = self._pick(self.homes[i % len(self.homes)])
            obs = self.reader.execute(batch)
            check_batch(obs, self.cfg.sites, self.cfg.node, 0)
            check_order(obs, self.cfg.sites, scratch)  # timed as in the run, recorded nowhere
            times.append((time.perf_counter_ns() - t0) / len(batch))
        self.st.task_recent[self.homes] = -1
        return int(np.median(times)) + 1

    def run_batch(self) -> None:
        """One request of the next task: executed, checked, counted and published; then paced,
        so that it takes the wall time its sites stand for on the timeline."""
        cfg, st = self.cfg, self.st
        t0 = time.perf_counter_ns()
        self.reader.safe_point()
        while self._pop():
            pass
        pick = int(self.rng.integers(len(self.homes) + len(self.held)))
        t = self.homes[pick] if pick < len(self.homes) else self.held.pop(pick - len(self.homes))
        if self.klp is not None:
            st.task_klp[t] = st.get("klp_target")  # a task switches only here, between requests
        batch = self._pick(t)
        obs = self.reader.execute(batch)
        self.violations += self._judge(obs, t)
        self.violations += self.inside(obs, t)
        if len(self.shared):
            self.violations += self.ipmodify(obs, t)
        self._order(obs, t)
        if t not in self.homes:
            if self.migrate:
                self._push(t)
            else:
                self.held.append(t)
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

    def run_until(self, deadline_ns: int) -> None:
        """Requests of this node's tasks while there is time for a whole one before
        `deadline_ns`: the node's other CPUs, while one of its CPUs writes text (TextPoke.wait)."""
        if self._inside_run or not self.pace_ns:
            return
        self._inside_run = True
        try:
            while time.perf_counter_ns() + BATCH_SITES * self.pace_ns <= deadline_ns:
                self.run_batch()
        finally:
            self._inside_run = False

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
        # What it ran last travels with it, so a task that migrated re-executes, on its new
        # node, code it ran on the last (which is where new-then-old shows).
        prev = st.task_recent[t][st.task_recent[t] >= 0]
        if len(prev) and n_hot:
            keep = prev[rng.integers(0, len(prev), n_hot // 2)]
            if len(self.mod_sites):
                keep = keep[(keep < cfg.sites.n_core) | (st.site_live[keep] == 1)]
            picked = np.concatenate([keep, picked[: n_hot - len(keep)]])
        st.task_recent[t] = -1
        st.task_recent[t, : len(picked)] = picked
        return np.concatenate([
            self.klp if self.klp is not None else np.zeros(0, np.int64),
            picked,
            rng.integers(0, cfg.sites.n_core, BATCH_SITES - len(picked)),
        ])

    def inside(self, obs: Observation, t: int) -> int:
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
                fence()  # the reference is seen before the module's state is read
                if not st.site_live[obs.sites[in_mod[-1]]]:
                    st.task_mod[t] = 0
        if not st.task_tramp[t]:
            st.task_qs[t] += 1
        return bad

    def ipmodify(self, obs: Observation, t: int) -> int:
        """A shared function this task ran must not have two IPMODIFY users attached (its ftrace
        ops list as the task's call went through it)."""
        ran = np.flatnonzero(np.isin(self.shared, obs.sites))
        if not len(ran):
            return 0
        masks = self.st.share_users[ran] & IPMODIFY
        two = ran[(masks & (masks - 1)) != 0]
        if not len(two):
            return 0
        site = int(self.shared[two[0]])
        return self._seen(t, "ipmodify-twice", site, "the function this task ran has two IPMODIFY ftrace users attached: the second must be refused")

    def _freed(self, t: int, kind: str, site: int, what: str) -> int:
        return self._seen(t, kind, site, f"a task preempted inside {what} came back to it after it was freed")

    def _seen(self, t: int, kind: str, site: int, detail: str) -> int:
        """One violation of task `t` at `site`: kept as an example, and the first of the run
        under --stop-at-first. Returns 1 (the count to add)."""
        example = {"kind": kind, "node": self.cfg.node, "task": t, "site": site, "address": hex(int(self.cfg.sites.offset[site])), "detail": detail}
        if len(self.examples) < MAX_REPORTED:
            self.examples.append(example)
        if self.cfg.stop_at_first and self.first is None:
            self._stop_at(example, t)
        return 1

    def leave_all(self) -> None:
        """The run is over for this node: the tasks it holds leave whatever trampoline or module
        they are in (each still checked) and pass a quiescent state."""
        for t in [*self.homes, *self.held]:
            self.violations += self.inside(LEAVING, t)

    def drain(self) -> None:
        """After the run, a task that migrated here leaves what it was in, as `leave_all`, and
        stays: a finished node runs no more requests (node_source.wait_tasks counts a task a
        finished node holds as having left)."""
        while self._pop():
            t = self.held[-1]
            self.st.task_node[t] = -1  # not held by a finished node until it has left
            self.violations += self.inside(LEAVING, t)
            fence()  # it has left before the node that holds it says so
            self.st.task_node[t] = self.cfg.node

    def _pop(self) -> bool:
        """Take the next task that migrated to this node, if any (the ring's consumer)."""
        st, node = self.st, self.cfg.node
        head, tail = int(st.inbox_ptr[node, 0]), int(st.inbox_ptr[node, 1])
        if head == tail:
            return False
        fence()  # the entry after the head that published it (smp_rmb)
        t = int(st.inbox[node, tail % st.inbox.shape[1]])
        st.task_node[t] = node
        fence()
        st.inbox_ptr[node, 1] = tail + 1
        self.held.append(t)
        return True

    def _push(self, t: int) -> None:
        """Migrate task `t` to the next node (the ring's one producer). The ring holds every task
        there is, so it never fills."""
        st = self.st
        dest = (self.cfg.node + 1) % self.cfg.n_nodes
        head = int(st.inbox_ptr[dest, 0])
        st.task_node[t] = -1  # in no node's hands until `dest` takes it
        st.inbox[dest, head % st.inbox.shape[1]] = t
        fence()  # the entry before the head that publishes it (smp_wmb)
        st.inbox_ptr[dest, 0] = head + 1
        self.migrations += 1

    def _adopt(self, n_tasks: int) -> list[int]:
        """A replacement node (--recover; every other node is parked): the travelling tasks its
        predecessor held, and any it was migrating when it died (in no ring, in no node's hands)."""
        st, node = self.st, self.cfg.node
        queued = {int(st.inbox[n, i % n_tasks]) for n in range(self.cfg.n_nodes) for i in range(int(st.inbox_ptr[n, 1]), int(st.inbox_ptr[n, 0]))}
        mine = [t for t in range(n_tasks) if t % READER_TASKS == READER_TASKS - 1 and t not in queued and st.task_node[t] in (node, -1)]
        st.task_node[mine] = node
        return mine

    def _order(self, obs: Observation, t: int) -> None:
        """Task `t`'s history (``task_seen``): new-then-old within one call (`check_order`). The
        kernel promises each execution old or new code, not an order, so this is counted and
        described (``new_then_old``), not a violation."""
        back = check_order(obs, self.cfg.sites, self.st.task_seen[t])
        if not len(back):
            return
        self.new_then_old += len(back)
        if len(self.ordering) < MAX_REPORTED:
            i = int(back[0])
            site = int(obs.sites[i])
            L = int(self.cfg.sites.length[site])
            self.ordering.append({"kind": "new-then-old", "node": self.cfg.node, "task": t, "site": site,
                                  "address": hex(int(self.cfg.sites.offset[site])), "observed": bytes(obs.observed[i, :L]).hex(" "),
                                  "detail": "the task ran this site's new code earlier in the same patch call (on another node's copy), then its old code here"})

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

    def _stop_at(self, example: dict[str, Any], task: int) -> None:
        """Record the first violation in full (where every node's patch call was, when on the
        timeline) and tell every node to stop (the header's ``first_at_ns``)."""
        st, now = self.st, time.perf_counter_ns()
        self.first = {
            **example, "task": task,
            "emulated_us": round((now - self.start_ns) / self.scale / 1e3, 3),
            "steps": {n: node_step_name(self.cfg.protocol_spec, int(st.nodes["step"][n])) for n in range(self.cfg.n_nodes)},
        }
        if not st.get("first_at_ns"):
            st.set("first_at_ns", now)


LEAVING = Observation(sites=np.zeros(0, np.int64), observed=np.zeros(0, np.uint8), via_int3=np.zeros(0, bool), handler_ok=np.zeros(0, bool),
                    seq_before=np.zeros(0, np.int64), seq_after=np.zeros(0, np.int64), committed=np.zeros(0, np.int8))  # a task leaving


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
