"""`NodeSource`: one node's instance of a patch source (`sources`), and a script's operations.

`step` performs one operation of the source when the node's turn comes, `perform` one operation
a script asked for (`PatchOp`), `finish` drops what this node still holds at the end. Each
operation takes the kernel's locks in the kernel's order (module -> jump_label -> ftrace ->
text_mutex) and journals what it shares with other nodes before its one patch call, so that a
recovery can finish it (`NodeKernel.begin_op`; see `sources` for the sources' rules).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from numaemu.host.clock import spin
from numaemu.model.sites import (
    FTRACE_BPF,
    FTRACE_CALLER,
    FTRACE_KLP,
    FTRACE_OFF,
    KIND_FTRACE,
    KPROBE_ARMED,
    KPROBE_OPTIMIZED,
    KPROBE_ORIG,
)
from numaemu.patching import module_source
from numaemu.patching.kernel import NodeKernel
from numaemu.patching.protocols import PatchTimeout
from numaemu.patching.sources import (
    FTRACE_ALL_EVERY,
    FTRACE_FILTER,
    IPMODIFY,
    MAX_HELD,
    USER_BPF,
    USER_FTRACE,
    USER_KLP,
    USER_KLP2,
    PatchOp,
    SourcePlan,
    shared_state,
)
from numaemu.patching.textmem import TextState

__all__ = ["NodeSource"]


class NodeSource:
    def __init__(self, plan: SourcePlan, kernel: NodeKernel, state: TextState, rng: np.random.Generator, key_race: bool) -> None:
        self.plan = plan
        self.k = kernel
        self.st = state
        self.rng = rng
        self.key_race = key_race
        # This node's references, shared (a replacement node inherits them), and the copy the
        # readers' check uses, which follows once an operation has completed (the references
        # change before the patch that goes with them, see `_key_change`).
        self.refs = state.key_refs[kernel.node, : len(plan.keys)]
        self.held = self.refs.copy()
        self.turn = 0
        self.ops = 0
        self.ftrace_enables = 0
        self.ftrace_all_enables = 0  # enables that traced every function at once
        self.module_loads = 0
        self.module_unloads = 0
        self.ipmodify_refused = 0  # ``shared``: second IPMODIFY users refused
        self.deadline_ns = 0  # when the run ends (perf_counter_ns; 0: no end), see `_fits`

    def step(self) -> None:
        name = self.plan.names[self.turn % len(self.plan.names)]
        self.turn += 1
        getattr(self, "_" + name)()
        self.ops += 1

    def perform(self, op: PatchOp) -> None:
        """Do one operation of a script, as the kernel does it (see PATCH_OPS)."""
        if op.kind == "static_key_enable":
            self._key_inc(op.key)
        elif op.kind == "static_key_disable":
            if self.refs[op.key] > 0:
                self._key_dec(op.key)
        elif op.kind in ("ftrace_enable", "ftrace_disable"):
            self._ftrace_set(op.kind == "ftrace_enable", op.functions)
        else:
            self._module_op(op.kind == "module_load")
        self.ops += 1

    # -- static keys -----------------------------------------------------------------------

    def _static_keys(self) -> None:
        if not len(self.plan.keys):
            return  # an image without static keys (the CLI refuses --source static_keys for it)
        i = int(self.rng.integers(len(self.plan.keys)))
        if self.refs[i] and (self.refs[i] >= MAX_HELD or self.rng.random() < 0.5):
            self._key_dec(i)
        else:
            self._key_inc(i)

    def _key_update(self, i: int, delta: int) -> int:
        """count += delta; return the count before. The caller holds jump_label_mutex, unless
        the key-race bug makes this a plain read-modify-write with nobody's lock."""
        k = int(self.plan.keys[i])
        before = int(self.st.key_count[k])
        if self.key_race and self.k.count_rmw_ns:
            # The window between the read and the write: the timeline's count_rmw_ns.
            spin(self.k.count_rmw_ns)
        self.st.key_count[k] = before + delta
        return before

    def _sites_of_key(self, i: int) -> np.ndarray:
        """The key's use sites: in the core image and in every module that is loaded."""
        mod = self.plan.module_sites[self.plan.module_jump_key == i]
        return np.concatenate([self.plan.key_sites[i], mod[self.st.site_live[mod] == 1]])

    def _key_inc(self, i: int) -> None:
        self._key_change(i, +1)
        self.held[i] = self.refs[i]

    def _key_dec(self, i: int) -> None:
        # The reference being dropped is not held while it is: the node's other CPUs may run
        # the key's sites mid-call (TextPoke.meanwhile), and see them go back to the NOP.
        self.held[i] = self.refs[i] - 1
        self._key_change(i, -1)
        self.held[i] = self.refs[i]

    def _key_change(self, i: int, delta: int) -> None:
        """static_key_slow_inc (+1: the 0 -> 1 transition patches NOP -> JMP) or _dec (-1: the
        1 -> 0 transition patches JMP -> NOP)."""
        flip_from, old, new = (0, 0, 1) if delta > 0 else (1, 1, 0)
        if self.key_race:  # the bug: the count changes outside jump_label_mutex
            before = self._key_update(i, delta)
            self.refs[i] += delta
            if before == flip_from:
                with self.k.holding(self.k.locks.jump_label):
                    self._patch_all(self._sites_of_key(i), old, new)
            return
        with self.k.holding(self.k.locks.jump_label):
            sites = self._sites_of_key(i)  # under the lock: no module comes or goes meanwhile
            k = int(self.plan.keys[i])
            before = int(self.st.key_count[k])

            def commit() -> None:
                # Journaled first (with the patch's sites, when there is one), so a recovery
                # sets exactly these values whether this node died before or after them.
                self.k.begin_op(i, before + delta, int(self.refs[i]) + delta)
                self._key_update(i, delta)
                self.refs[i] += delta

            if before == flip_from:
                self._patch_all(sites, old, new, commit)
            else:
                commit()
                self.k.end_op()

    def _patch_all(self, sites: np.ndarray, old: int, new: int, commit: Callable[[], None] | None = None) -> None:
        self.k.patch(sites, np.full(len(sites), old, np.int64), np.full(len(sites), new, np.int64), commit)

    # -- ftrace and bpf --------------------------------------------------------------------

    def _ftrace(self) -> None:
        sites = self.plan.ftrace_sites
        with self.k.holding(self.k.locks.ftrace):
            state = self.st.site_state[sites]
            on = np.concatenate([sites[state == FTRACE_CALLER], self._live_module_ftrace(FTRACE_CALLER)])
            if len(on) and self.rng.random() < 0.5:
                self.st.set("ftrace_all", 0)  # before the patch: what a recovery finishes agrees
                self._patch_all(on, FTRACE_CALLER, FTRACE_OFF)
                return
            self.ftrace_enables += 1
            if self.ftrace_enables % FTRACE_ALL_EVERY == 0 and self._fits(3 * len(sites)):
                target = np.concatenate([sites[state == FTRACE_OFF], self._live_module_ftrace(FTRACE_OFF)])
                self.st.set("ftrace_all", 1)
                self.ftrace_all_enables += 1
            else:
                pick = self.rng.choice(len(sites), size=min(FTRACE_FILTER, len(sites)), replace=False)
                target = sites[pick][state[pick] == FTRACE_OFF]
            self._patch_all(target, FTRACE_OFF, FTRACE_CALLER)

    def _fits(self, writes: int) -> bool:
        """Would `writes` site writes into every copy end before the run does? Tracing every
        function is ~140,000 writes a copy: 0.3 emulated s, minutes of wall time at a stress
        run's scale, so a run only starts it when there is time to finish (else a filter)."""
        if not self.deadline_ns:
            return True
        return bool(time.perf_counter_ns() + writes * self.k.text.n_copies * self.k.text_poke_ns < self.deadline_ns)

    def _ftrace_set(self, enable: bool, functions: int) -> None:
        """Trace the first `functions` untraced functions (0: every function), or stop tracing."""
        sites = self.plan.ftrace_sites
        with self.k.holding(self.k.locks.ftrace):
            state = self.st.site_state[sites]
            if not enable:
                on = np.concatenate([sites[state == FTRACE_CALLER], self._live_module_ftrace(FTRACE_CALLER)])
                self.st.set("ftrace_all", 0)  # before the patch: what a recovery finishes agrees
                self._patch_all(on, FTRACE_CALLER, FTRACE_OFF)
                return
            off = sites[state == FTRACE_OFF]
            if functions == 0:
                off = np.concatenate([off, self._live_module_ftrace(FTRACE_OFF)])
                self.st.set("ftrace_all", 1)
            self.ftrace_enables += 1
            self._patch_all(off[:functions] if functions else off, FTRACE_OFF, FTRACE_CALLER)

    def _live_module_ftrace(self, state: int) -> np.ndarray:
        mod = self.plan.module_sites
        mod = mod[(self.k.sites.kind[mod] == KIND_FTRACE) & (self.st.site_live[mod] == 1)]
        on: np.ndarray = mod[self.st.site_state[mod] == state]
        return on

    def _bpf(self) -> None:
        """Attach the BPF trampoline to one function, or detach it and free it: only after an
        RCU-tasks grace period (every task has passed a voluntary context switch), since a task
        may be preempted inside it (bpf_tramp_image_put; ftrace's dynamic trampolines since
        "ftrace: Add use of synchronize_rcu_tasks() with dynamic trampolines", 4.12). The
        ``trampoline-no-rcu`` bug frees it at once."""
        s = np.array([self.plan.bpf_site])
        with self.k.holding(self.k.locks.ftrace):
            attached = int(self.st.site_state[s[0]]) == FTRACE_BPF
            old, new = (FTRACE_BPF, FTRACE_OFF) if attached else (FTRACE_OFF, FTRACE_BPF)
            self._patch_all(s, old, new)
            if attached:
                if self.k.bug != "trampoline-no-rcu":
                    self._rcu_tasks_wait()
                self.st.add("tramp_gen")  # freed: a task still inside finds another instance

    def _rcu_tasks_wait(self) -> None:
        """synchronize_rcu_tasks(): wait until every task has passed a voluntary context switch
        (a request boundary not spent preempted inside a trampoline, ``task_qs``)."""
        snap = self.st.task_qs.copy()
        self.wait_tasks(lambda: self.st.task_qs > snap, "an RCU-tasks grace period")

    def wait_tasks(self, done: Callable[[], np.ndarray], what: str) -> None:
        """Wait until `done()` is true of every task (an array over tasks), running this node's
        own tasks meanwhile, as the waiting task would sleep and let them run. Tasks a node that
        has finished holds have left every trampoline and module (`ReaderTasks.drain`)."""
        st, k = self.st, self.k
        deadline = time.monotonic() + k.wait_timeout_s
        while not np.all(done() | ((st.task_node >= 0) & (st.nodes["done"][np.maximum(st.task_node, 0)] == 1))):
            k.check_alive()
            if k.idle is not None:
                k.idle()
            else:
                k.safe_point()
                os.sched_yield()
            if time.monotonic() > deadline:
                raise PatchTimeout(f"node {k.node}: waited {k.wait_timeout_s:.0f} s for {what}")

    # -- kprobes -----------------------------------------------------------------------------

    def _kprobes(self) -> None:
        """One step of a random kprobe (kernel/kprobes.c, arch/x86/kernel/kprobes/): arm it (an
        INT3 over its first byte, text_poke + text_poke_sync), optimize it (a JMP32 to its
        detour buffer over the INT3, through the run's protocol: text_poke_bp on x86),
        unoptimize it, or disarm it. On arm64 a BRK replaces the whole instruction, and arming
        and disarming go through stop_machine whatever the run's protocol: the instruction under
        the probe may be one the architecture does not let change under execution
        (arch/arm64/kernel/probes/kprobes.c, aarch64_insn_patch_text; since 693350a79980)."""
        sites = self.plan.kprobe_sites
        if not len(sites):
            return
        s = np.array([sites[int(self.rng.integers(len(sites)))]])
        with self.k.holding(self.k.locks.kprobe):
            state = int(self.st.site_state[s[0]])
            if self.k.sites.arch == "arm64":
                new = KPROBE_ARMED if state == KPROBE_ORIG else KPROBE_ORIG
                self.k.patch(s, np.array([state]), np.array([new]), protocol="stop_machine")
            elif state == KPROBE_ORIG:
                self.k.patch(s, np.array([KPROBE_ORIG]), np.array([KPROBE_ARMED]), protocol="text_poke")
            elif state == KPROBE_OPTIMIZED:
                self._patch_all(s, KPROBE_OPTIMIZED, KPROBE_ARMED)
            elif self.rng.random() < 0.5:
                self._patch_all(s, KPROBE_ARMED, KPROBE_OPTIMIZED)
            else:
                self.k.patch(s, np.array([KPROBE_ARMED]), np.array([KPROBE_ORIG]), protocol="text_poke")

    # -- ftrace users sharing a function ----------------------------------------------------

    def _shared(self) -> None:
        """Attach or detach one user of one shared function (`sources` ``shared``): the site is
        patched when the users' state changes; a second IPMODIFY user is refused, unless the
        ``ipmodify-shared`` bug lets it through."""
        i = int(self.rng.integers(len(self.plan.shared_sites)))
        self.shared_op(i, int(self.rng.choice([USER_FTRACE, USER_BPF, USER_KLP, USER_KLP2])))

    def shared_op(self, i: int, user: int) -> None:
        """Attach `user` (a sources.USER_* bit) to shared function `i`, or detach it if attached."""
        sites = self.plan.shared_sites
        with self.k.holding(self.k.locks.ftrace):
            mask = int(self.st.share_users[i])
            new = mask & ~user if mask & user else mask | user
            if not mask & user and user & IPMODIFY and mask & IPMODIFY and self.k.bug != "ipmodify-shared":
                self.ipmodify_refused += 1  # -EBUSY: the function already has an IPMODIFY user
                return
            old_state, new_state = shared_state(mask), shared_state(new)

            def commit() -> None:
                self.k.begin_op()
                self.st.share_users[i] = new

            if old_state != new_state:
                self._patch_all(sites[i : i + 1], old_state, new_state, commit)
            else:
                commit()
                self.k.end_op()

    # -- livepatch ---------------------------------------------------------------------------

    def _livepatch(self) -> None:
        """One step of the livepatch state machine (enable -> transition -> disable -> ...)."""
        sites = self.plan.klp_sites
        st = self.st
        with self.k.holding(self.k.locks.klp):
            target = st.get("klp_target")
            if not np.all(st.task_klp == target):
                return  # a transition is in progress: tasks switch at their safe points
            patched = bool(np.all(st.site_state[sites] == FTRACE_KLP))
            if target == 1:
                st.set("klp_target", 0)  # unpatch: every task switches back first
            elif not patched:
                # Redirect every function of the set first; only then may tasks switch.
                with self.k.holding(self.k.locks.ftrace):
                    self._patch_all(sites, FTRACE_OFF, FTRACE_KLP)
                st.set("klp_target", 1)
            else:
                with self.k.holding(self.k.locks.ftrace):
                    self._patch_all(sites, FTRACE_KLP, FTRACE_OFF)

    # -- modules (module_source.py) ---------------------------------------------------------

    def _module(self) -> None:
        module_source.step(self)

    def _module_op(self, load: bool) -> None:
        module_source.op(self, load)

    def finish(self) -> None:
        """Drop every static-key reference this node holds (its predecessor's too, if it
        replaced a node that died holding some)."""
        for i in range(len(self.refs)):
            while self.refs[i] > 0:
                self._key_dec(i)
