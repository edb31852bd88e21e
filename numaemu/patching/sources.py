"""Patch sources: what asks the kernel to patch its text (BACKGROUND.md s.3).

Each node runs one instance of the source; `step` performs one operation when the node's turn
comes (at ``--rate`` operations per second over all nodes), `finish` undoes what this node still
holds at the end, and `hot_sites` tells the readers which sites to execute most. State shared
between nodes lives in the ``txt`` segment (site states, key counts, livepatch target).

- ``static_keys``: a few keys with many 2- and 5-byte use sites; every node enables and disables
  them concurrently, holding references (``static_key_slow_inc/dec``, kernel/jump_label.c): the
  0 -> 1 transition patches every site NOP -> JMP and 1 -> 0 patches them back, with the count
  and the patch under ``jump_label_mutex``. With the ``key-race`` bug the count is read and
  written outside the lock, as in the 2024 bug, so concurrent enable/disable can lose an update
  and the count and the code disagree (the next patch finds unexpected bytes).
- ``ftrace``: enable tracing on a random filter of functions or on all of them, and disable it:
  NOP5 <-> ``call ftrace_caller``, old bytes of every site verified before the batched write.
- ``module``: load a module into a free slot of the module area (its text written to the master and
  placed per the policy, its alternatives applied before it is live, its ftrace and jump-label
  sites set to the current global state), let the readers run its code, unload it.
- ``bpf``: attach and detach a trampoline at one function's ftrace site (NOP5 <-> ``call``).
- ``livepatch``: redirect a set of functions through the livepatch handler; each reader task
  switches to the new version only at a safe point between its requests, and only once every
  site of the set is patched (kernel/livepatch/transition.c), so it never runs a mix.
- ``kprobes``: arm, optimize, unoptimize and disarm kprobes on instructions after function
  entries: an INT3 over the first byte (text_poke, then text_poke_sync), a JMP32 over the INT3
  through text_poke_bp. Readers that hit an armed probe go through poke_int3_handler first, which
  looks at the text_poke_bp descriptor of whatever batch is in flight: the race of the 2019 fixes.
  arm64: arm and disarm only, a BRK over the whole instruction through stop_machine.
- ``shared``: ftrace, a BPF trampoline and two livepatches on the same few functions, as the kernel
  lets ftrace_ops share a function: one user calls its own trampoline directly, several go through
  ``ftrace_caller``'s list; a second IPMODIFY user (livepatches modify the return address) is
  refused (-EBUSY, ftrace_hash_ipmodify_enable). The end checks that every function's code fits
  its users and that no function has two IPMODIFY users (the ``ipmodify-shared`` bug allows them).
- ``mixed``: all of these in turn (without ``static_keys`` on an image with no static keys, such
  as a real kernel whose ``__jump_table`` was not found).

For ``--recover``, every operation does what it shares with other nodes (a key's count and this
node's references, the ``ftrace_all`` flag) *before* its one patch call, and journals it with the
patch (`NodeKernel.begin_op`), so a recovery that finishes the patch of a node killed half-way
leaves the count and the code in agreement. A node's key references live in the ``txt`` segment
(``key_refs``), so its replacement inherits them and drops them at the end, as it would have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from numaemu.model.sites import (
    FTRACE_BPF,
    FTRACE_CALLER,
    FTRACE_KLP,
    FTRACE_OFF,
    INT3,
    KIND_JUMP,
    SiteTable,
)
from numaemu.patching.textmem import MAX_KEYS

__all__ = ["SOURCES", "PATCH_OPS", "PatchOp", "SourcePlan", "hot_keys", "plan_sources", "key_agreement", "slot_fill", "shared_state", "sharing_agreement"]

SOURCES = ("static_keys", "ftrace", "module", "bpf", "livepatch", "kprobes", "shared", "mixed")
# What a script may ask for, one operation at a time (`PatchOp`), each as the kernel does it:
# static_key_enable/disable (static_key_slow_inc/dec, kernel/jump_label.c), ftrace_enable on N
# functions or all of them and ftrace_disable (ftrace_replace_code, kernel/trace/ftrace.c),
# module_load/unload (load_module/free_module, kernel/module/main.c).
PATCH_OPS = ("static_key_enable", "static_key_disable", "ftrace_enable", "ftrace_disable", "module_load", "module_unload")
HOT_KEYS = 8
MAX_KEY_SITES = 300
# Functions in one random filter. On the timeline a site costs 3 writes per copy at 1 us each, so
# a 64-function filter takes about as long as a static-key flip (~0.4 emulated ms); 400 (before
# issue 16) made every ftrace operation ~2.4 emulated ms, seconds of wall time in a short run.
FTRACE_FILTER = 64
FTRACE_ALL_EVERY = 8  # every n-th enable traces every function
LIVEPATCH_FUNCS = 8
SHARED_FUNCS = 4  # functions the ``shared`` source lets several ftrace users share
MAX_SHARED = 16  # the users masks the txt segment keeps
# The ``shared`` source's users, as bits of a function's mask: tracing, a BPF trampoline, and two
# livepatches (both IPMODIFY: at most one may be attached to a function).
USER_FTRACE, USER_BPF, USER_KLP, USER_KLP2 = 1, 2, 4, 8
IPMODIFY = USER_KLP | USER_KLP2
RESERVED_FUNCS = 4  # functions 1..3 are the trampolines; keep them untraced
MAX_HELD = 3
assert HOT_KEYS <= MAX_KEYS


@dataclass(frozen=True)
class PatchOp:
    """One patch operation of a script (`Emulation.patch`), which node 0 performs while every
    node's readers execute the text."""

    kind: str  # one of PATCH_OPS
    key: int = 0  # static_key_*: which of the image's hot static keys (0: the hottest)
    functions: int = 0  # ftrace_enable: how many functions to trace (0: every function)

    def __post_init__(self) -> None:
        if self.kind not in PATCH_OPS:
            raise ValueError(f"'{self.kind}' is not one of {', '.join(PATCH_OPS)}")
        if self.key < 0 or self.key >= HOT_KEYS or self.functions < 0:
            raise ValueError(f"key must be in 0..{HOT_KEYS - 1} and functions >= 0")

    @property
    def source(self) -> str:
        """The source whose sites this operation patches (the readers aim at them)."""
        return "static_keys" if self.kind.startswith("static_key") else "ftrace" if self.kind.startswith("ftrace") else "module"


@dataclass(frozen=True, eq=False)
class SourcePlan:
    """Which sites each source owns; the same on every node (pure, from the image)."""

    names: tuple[str, ...]
    keys: np.ndarray  # hot static keys
    key_sites: tuple[np.ndarray, ...]
    ftrace_sites: np.ndarray  # ftrace-managed sites (excluding bpf and livepatch ones)
    bpf_site: int
    klp_sites: np.ndarray
    module_sites: np.ndarray  # every site of every module slot
    module_jump_key: np.ndarray  # per module site: index into `keys` of its static key (-1: none)
    kprobe_sites: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # x86 only
    shared_sites: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ``shared``'s functions' ftrace sites

    def hot_sites(self) -> np.ndarray:
        parts = []
        if "static_keys" in self.names:
            parts += list(self.key_sites)
        if "ftrace" in self.names:
            parts.append(self.ftrace_sites)
        if "bpf" in self.names:
            parts.append(np.array([self.bpf_site]))
        if "livepatch" in self.names:
            parts.append(self.klp_sites)
        if "kprobes" in self.names:
            parts.append(self.kprobe_sites)
        if "shared" in self.names:
            parts.append(self.shared_sites)
        parts.append(np.zeros(0, dtype=np.int64))
        return np.unique(np.concatenate(parts)).astype(np.int64)


def hot_keys(jump_keys: np.ndarray, n_keys: int) -> np.ndarray:
    """The static keys ``static_keys`` flips: the most-used ones with at most MAX_KEY_SITES sites."""
    counts = np.bincount(np.asarray(jump_keys, dtype=np.int64), minlength=n_keys)
    candidates = np.flatnonzero((counts > 0) & (counts <= MAX_KEY_SITES))
    return candidates[np.argsort(-counts[candidates], kind="stable")][:HOT_KEYS]


def plan_sources(source: str, sites: SiteTable, n_keys: int) -> SourcePlan:
    keys = hot_keys(sites.key[: sites.n_jump], n_keys)
    names: tuple[str, ...] = ("static_keys", "ftrace", "module", "bpf", "livepatch", "kprobes", "shared") if source == "mixed" else (source,)
    if source == "mixed" and len(keys) == 0:
        names = names[1:]  # nothing to flip: the other sources take the turns
    if source == "mixed" and not sites.n_kprobe:
        names = tuple(n for n in names if n != "kprobes")  # an image with no instruction to probe
    n_funcs = sites.n_ftrace
    bpf_func = min(100, n_funcs - 1)
    klp_funcs = np.arange(200, 200 + LIVEPATCH_FUNCS) % n_funcs
    shared_funcs = np.arange(220, 220 + SHARED_FUNCS) % n_funcs
    excluded = set(range(RESERVED_FUNCS)) | {bpf_func} | set(klp_funcs.tolist()) | set(shared_funcs.tolist())
    ftrace_funcs = np.array([f for f in range(n_funcs) if f not in excluded], dtype=np.int64)
    module_sites = np.concatenate([sites.module_sites(slot) for slot in range(sites.module_slots)] or [np.zeros(0, np.int64)])
    jump_rank = np.cumsum(sites.kind[module_sites] == KIND_JUMP) - 1
    module_jump_key = np.where(sites.kind[module_sites] == KIND_JUMP, jump_rank % max(1, len(keys)), -1)
    if len(keys) == 0:
        module_jump_key[:] = -1
    return SourcePlan(
        names=names,
        keys=keys.astype(np.int64),
        key_sites=tuple(sites.key_sites(int(k)) for k in keys),
        ftrace_sites=sites.n_jump + ftrace_funcs,
        bpf_site=sites.n_jump + bpf_func,
        klp_sites=sites.n_jump + klp_funcs,
        module_sites=module_sites.astype(np.int64),
        module_jump_key=module_jump_key.astype(np.int64),
        kprobe_sites=sites.kprobe_sites().astype(np.int64),
        shared_sites=(sites.n_jump + shared_funcs).astype(np.int64),
    )


def shared_state(mask: int) -> int:
    """The ftrace site's state for a function's users: none, NOP; one, a call of its own
    trampoline; several, ``ftrace_caller``, whose ops list calls each (kernel/trace/ftrace.c)."""
    one = {0: FTRACE_OFF, USER_FTRACE: FTRACE_CALLER, USER_BPF: FTRACE_BPF, USER_KLP: FTRACE_KLP, USER_KLP2: FTRACE_KLP}
    return one.get(mask, FTRACE_CALLER)


def sharing_agreement(plan: SourcePlan, users: np.ndarray, site_state: np.ndarray) -> list[str]:
    """Once the run is over: every shared function's code fits its users, and none has two
    IPMODIFY users."""
    problems = []
    for i, site in enumerate(plan.shared_sites.tolist()):
        mask = int(users[i])
        if bin(mask & IPMODIFY).count("1") > 1:
            problems.append(f"function at site {site}: two IPMODIFY users attached (users mask {mask:#x}); the second must be refused")
        elif int(site_state[site]) != shared_state(mask):
            problems.append(f"function at site {site}: state {int(site_state[site])} but its users (mask {mask:#x}) need {shared_state(mask)}")
    return problems


def slot_fill(arch: str) -> int:
    """What an empty module slot holds: INT3 padding on x86, zeros (UDF #0) on arm64."""
    return 0 if arch == "arm64" else INT3


def key_agreement(plan: SourcePlan, key_count: np.ndarray, site_state: np.ndarray, site_live: np.ndarray) -> list[str]:
    """Once every node has dropped its references, every hot key's count must be 0 and each of
    its use sites (in the core image and in loaded modules) a NOP: the count and the code agree."""
    problems = []
    for i, (k, core) in enumerate(zip(plan.keys, plan.key_sites, strict=True)):
        mod = plan.module_sites[plan.module_jump_key == i]
        sites = np.concatenate([core, mod[site_live[mod] == 1]])
        count = int(key_count[k])
        states = set(site_state[sites].tolist())
        if count != 0 or states != {0}:
            code = "/".join(["NOP", "JMP"][s] for s in sorted(states))
            problems.append(f"static key {int(k)}: count {count} but its {len(sites)} sites are {code} after every reference was dropped")
    return problems
