"""The text-patching protocols: their names, the bugs that can be planted in them, what they cost,
and the locks they take (the vocabulary every module of the patching layer shares).

One `kernel.NodeKernel` per node process. It patches (as the node whose task called
static_key_enable, ftrace, ...) and it takes part in the other nodes' patches (syncs, stop_machine
rounds) at its *safe points*: between the batches of instructions its readers execute, never
inside its INT3 handler (which runs with interrupts off). Every cost (an IPI's delivery, a write
of one site into one copy, the handler, a sync's work at its target, a CPU's switch into a
stop_machine round) is the run's timeline's, in emulated ns at one scale (numaemu/model/timeline.py).
Each protocol's steps live in a module of their own, which the kernel delegates to:

``stop_machine`` (kernel/stop_machine.c, arm64 ``aarch64_insn_patch_text``; stop_machine.py): the
patching node raises a round; every node parks at a safe point and counts itself in under a lock;
the LAST to arrive applies the patch to every copy, then releases the others, which resynchronise
(a serialising event: nothing fetched before the patch runs after it) before they run again.

``text_poke_bp`` (arch/x86/kernel/alternative.c, ``text_poke_bp_batch``; text_poke_bp.py, with the
INT3 handler): up to 256 sites sorted by address, published in a descriptor; (1) INT3 over the
first byte of every site, sync; (2) bytes 1..len-1, sync; (3) the new first byte, sync; (4) drop
the patcher's reference and wait until no INT3 handler still holds one before the descriptor can
be reused.

``nosync`` (arm64 ``aarch64_insn_patch_text_nosync`` + ``kick_all_cpus_sync``; nosync.py): one
aligned 4-byte store per copy per site, then a kick: every node synchronises before the call
returns.

Every write goes through text_poke.py (the master, then every copy, at the timeline's text_poke_ns a site and copy: numaemu/model/timeline.py).

A *sync* (``text_poke_sync`` / ``sync_core`` IPI, ``kick_all_cpus_sync``) completes when every
node has acknowledged it at a safe point, between two of its batches (a serialising event: reader.py): so
no node still holds in its pipeline what was there before. Waiting spins briefly, then yields, then
sleeps, so it does not burn a core that another node needs (BACKGROUND.md s.5). Every wait, and
every attempt on a lock, calls `check_alive` (time-gated by the worker: a clock read, the real
check every ~20 ms), so a node never waits on a dead one: it learns of the abort (or parks for a
recovery) within ~20 ms, from inside a rendezvous or a sync as from anywhere.

For ``--recover`` each node keeps a write-ahead record of the operation it is in (textmem.py:
its ``pend`` row, ``journal`` and ``j_*`` fields, and ``lock_owner``), so that if it is SIGKILLed
half-way, `recovery.repair_text` can finish its patch for it while every other node is parked.

Bugs that `--inject-bug` plants, each the kernel's own (BACKGROUND.md s.4):
``early-master`` the first node to arrive patches; ``descriptor-reuse`` the descriptor is
released while a node is still in its INT3 handler (the refcount fix without its wait);
``no-int3-fix`` the same under the extra-sync fix without its sync (the kernel before 5.5, whose
oops Hiramatsu's 285a54efe386 fixed: a kprobe's INT3 hit while bp_patching was cleared);
``late-replica`` the last node's replica is written only after the call returns (a replication
bug: Kuzin's __text_poke loops over every replica before returning, King's nosync writes node 0's
copy and then every other before the kick); ``trampoline-no-rcu`` a detached BPF trampoline is freed
without the RCU-tasks wait, under a task preempted inside it (see sources.py);
``module-unload-running`` a module is freed without waiting for the tasks inside its code to leave
(delete_module's refcount wait skipped); ``ipmodify-shared`` a second IPMODIFY ftrace user is
attached to a function instead of refused (ftrace_hash_ipmodify_enable's -EBUSY skipped);
``ivau-local`` (arm64, replicas) the I-cache maintenance after each store is issued by the kernel VA
on the patching CPU, so it reaches only that node's replica (mainline's ``caches_clean_inval_pou``
on the VA, kept by a replicated kernel that writes each replica through its own alias), and the
other nodes keep stale lines that no ISB or kick discards; ``no-sync`` a sync between phases is skipped
(stop_machine: the released nodes do not resynchronise); ``no-final-sync`` the call returns
before every node has synchronised; ``key-race`` a static key's count is updated outside its
lock (see sources.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from numaemu.host.segments import WHERE

if TYPE_CHECKING:
    from multiprocessing.synchronize import Lock

__all__ = ["PROTOCOLS", "BUGS", "INT3_FIXES", "STEPS", "Locks", "PatchStats", "PatchTimeout"]

PROTOCOLS = ("stop_machine", "text_poke_bp", "nosync")
BUGS = ("early-master", "descriptor-reuse", "no-sync", "key-race", "no-final-sync", "no-int3-fix", "late-replica", "trampoline-no-rcu", "module-unload-running", "ipmodify-shared", "ivau-local")
SPIN_TRIES = 200  # polls before yielding; ~50 us of spinning
YIELD_TRIES = 200  # sched_yield polls before sleeping
WAIT_TIMEOUT_S = 30.0
# What the INT3 handler's use of the descriptor relies on (both 2019 fixes of the race in which
# poke_int3_handler read bp_patching while text_poke_bp cleared it): ``refcount`` Zijlstra's
# bp_desc.refs, taken by the handler and waited for by the patcher (commit 1f676247f36a, 5.6);
# ``extra-sync`` Hiramatsu's one more text_poke_sync() after clearing the descriptor (commit
# 285a54efe386, 5.5), sound because the #BP handler runs with interrupts off and so cannot
# acknowledge that sync while inside.
INT3_FIXES = ("refcount", "extra-sync")
# The step a node's patch call is at (its TXT_NODE ``step``), for the report of a violation.
STEPS = (
    "none", "verifying the old bytes",
    "text_poke_bp: INT3 over the first bytes", "text_poke_bp: sync after the INT3s",
    "text_poke_bp: the tails", "text_poke_bp: sync after the tails",
    "text_poke_bp: the new first bytes", "text_poke_bp: the final sync", "text_poke_bp: releasing the descriptor",
    "stop_machine: waiting for the round", "stop_machine: patching every copy",
    "nosync: word stores", "nosync: the kick", "checking every copy",
)
POKE_CHUNK = 16  # sites written between two checks of the clock
SMALL_WRITE = 40  # bytes: below this, writes and checks take a scalar path (no numpy calls)
SMALL_SITES = SMALL_WRITE // 5
# What a node is inside of, for the failure message (memory.WHERE).
W_TEXT_MUTEX = WHERE.index("holding text_mutex")
W_BP_SYNC = WHERE.index("inside a text_poke_bp sync")
W_STOP = WHERE.index("inside a stop_machine rendezvous")
W_INT3 = WHERE.index("inside an INT3 handler")
W_SYNC = WHERE.index("inside a sync")


class PatchTimeout(RuntimeError):
    """A wait (a sync, a rendezvous, a lock) that did not end within WAIT_TIMEOUT_S."""


@dataclass(frozen=True)
class Locks:
    """Cross-process locks (multiprocessing.Lock), created by the coordinator."""

    text_mutex: Lock  # kernel/... text_mutex: one patcher of kernel text at a time
    stop_arrival: Lock  # the rendezvous counter's lock (stop_machine's atomic_inc)
    jump_label: Lock  # jump_label_mutex
    ftrace: Lock  # ftrace_lock
    klp: Lock  # klp_mutex
    module: Lock  # module_mutex
    kprobe: Lock  # kprobe_mutex (kernel/kprobes.c)


@dataclass
class PatchStats:
    """What one node's patch calls have done so far (its report's figures)."""

    calls: int = 0
    sites: int = 0
    syncs: int = 0
    stop_rounds: int = 0
    latencies_ns: list[int] = field(default_factory=list)
