"""The ``module`` source: load a module into a free slot of the module area, or unload one
(kernel/module/main.c), on behalf of a node's `NodeSource`.

A load writes the module's text with its sites already in the state the rest of the kernel is
in (ftrace_module_enable, jump_label_add_module, apply_alternatives before the module is live);
an unload marks it GOING, waits for the tasks inside it to leave (the references
try_module_get takes) unless the ``module-unload-running`` bug skips that, and then frees it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from numaemu.host.fence import fence
from numaemu.model.image import MODULE_SLOT_BYTES
from numaemu.model.sites import FTRACE_CALLER, KIND_ALT, KIND_FTRACE, KIND_JUMP
from numaemu.patching.sources import slot_fill

if TYPE_CHECKING:
    from numaemu.patching.kernel import NodeKernel
    from numaemu.patching.node_source import NodeSource

__all__ = ["load", "op", "step", "unload"]


def step(src: NodeSource) -> None:
    """Load a module into a free slot, or unload a loaded one (kernel/module/main.c)."""
    t = src.k.sites
    if t.module_slots == 0:
        return
    locks = src.k.locks
    # Lock order: module -> jump_label -> ftrace (-> text_mutex inside a patch).
    with src.k.holding(locks.module), src.k.holding(locks.jump_label), src.k.holding(locks.ftrace):
        live = [bool(src.st.site_live[t.module_sites(s)[0]]) for s in range(t.module_slots)]
        free = [s for s in range(t.module_slots) if not live[s]]
        loaded = [s for s in range(t.module_slots) if live[s]]
        if free and (not loaded or src.rng.random() < 0.5):
            load(src, free[int(src.rng.integers(len(free)))])
        else:
            unload(src, loaded[int(src.rng.integers(len(loaded)))])


def op(src: NodeSource, loading: bool) -> None:
    """Load a module into the first free slot, or unload the first loaded one."""
    t, locks = src.k.sites, src.k.locks
    with src.k.holding(locks.module), src.k.holding(locks.jump_label), src.k.holding(locks.ftrace):
        live = [bool(src.st.site_live[t.module_sites(s)[0]]) for s in range(t.module_slots)]
        slots = [s for s in range(t.module_slots) if live[s] != loading]
        if slots:
            (load if loading else unload)(src, slots[0])


def load(src: NodeSource, slot: int, running: bool = True) -> None:
    """Load a module into `slot`. `running=False`: before any node runs (numaemu check's start),
    so its text is written without the syncs that keep running nodes off the slot."""
    t, st = src.k.sites, src.st
    # Journaled: a node killed half-way through a load or an unload leaves the slot for a
    # recovery to unload cleanly (recovery.repair_text), as a failed load_module() frees it.
    st.node_set(src.k.node, "module_op", slot + 1)
    gen = st.add("module_gen")
    sites = t.module_sites(slot)
    body = np.random.default_rng([gen, slot, 0x6D6F64]).integers(0, 256, MODULE_SLOT_BYTES, dtype=np.uint8)
    base = int(t.offset[sites[0]])
    # Its sites start as the rest of the kernel is now: traced if every function is traced,
    # jump labels as their keys are (ftrace_module_enable, jump_label_add_module).
    states = np.zeros(len(sites), dtype=np.int64)
    kinds = t.kind[sites]
    if st.get("ftrace_all") == 1:
        states[kinds == KIND_FTRACE] = FTRACE_CALLER
    keys = src.plan.module_jump_key[src.plan.module_sites.searchsorted(sites)]
    jump = kinds == KIND_JUMP
    counts = st.key_count[src.plan.keys[np.maximum(keys, 0)]] if len(src.plan.keys) else np.zeros(len(sites))
    states[jump & (keys >= 0)] = (counts[jump & (keys >= 0)] > 0).astype(np.int64)
    for s, state in zip(sites, states, strict=True):  # alternatives are still their NOP placeholder here
        o, L = int(t.offset[s]) - base, int(t.length[s])
        body[o : o + L] = t.enc[s, state, :L]
    # Alternatives are applied to the new text before it is live (apply_alternatives()).
    for s in sites[kinds == KIND_ALT]:
        o, L = int(t.offset[s]) - base, int(t.length[s])
        body[o : o + L] = t.enc[s, 1, :L]
    states[kinds == KIND_ALT] = 1
    _write_slot(src.k, slot, body, synced=running)
    src.module_loads += 1
    st.site_state[sites] = states
    st.slot_gen[slot] = gen
    st.site_live[sites] = 1
    st.node_set(src.k.node, "module_op", 0)


def unload(src: NodeSource, slot: int) -> None:
    sites = src.k.sites.module_sites(slot)
    src.st.node_set(src.k.node, "module_op", slot + 1)
    src.st.site_live[sites] = 0  # MODULE_STATE_GOING: no task enters it from now on
    fence()  # going before the tasks' references are read (pairs with try_module_get's fence)
    if src.k.bug != "module-unload-running":
        # delete_module waits for the module's references to drop (a task running its code
        # holds one: try_module_get), here: every task preempted inside it to leave.
        code = int(src.st.slot_gen[slot]) * 1024 + slot + 1
        src.wait_tasks(lambda: src.st.task_mod != code, f"the tasks inside module slot {slot} to leave")
    src.st.slot_gen[slot] = 0
    _write_slot(src.k, slot, np.full(MODULE_SLOT_BYTES, slot_fill(src.k.sites.arch), dtype=np.uint8))
    src.module_unloads += 1
    src.st.node_set(src.k.node, "module_op", 0)


def _write_slot(k: NodeKernel, slot: int, body: np.ndarray, synced: bool = True) -> None:
    """Write a module slot in the master and every copy, then sync, so that no node still
    runs (or holds prefetched) the slot's old contents. Not `synced`: no node runs yet."""
    with k.holding(k.locks.text_mutex):
        if synced:
            k.sync()  # nobody is mid-way through a batch that chose the slot's sites
        k.copies.write(k.master, k.mem, k.sites.module_span(slot), body, k.st.line_gen)
        if synced:
            k.sync()  # and nobody holds its old lines
