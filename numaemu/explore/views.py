"""What a counterexample shows of the system ``numaemu check`` explores (system.py): each actor's
name, the readable state after each step (what the step changed is the difference), and where in
numaemu's patching code an actor stopped."""

from __future__ import annotations

import linecache
from typing import TYPE_CHECKING, Any

import numpy as np

from numaemu.patching.data_protocol import node_step_name

if TYPE_CHECKING:
    from numaemu.explore.system import PatchSystem

__all__ = ["describe", "snapshot", "where"]

_HEADER_SHOWN = ("sync_seq", "stop_seq", "stop_arrived", "stop_released", "stop_writes", "desc_gen", "desc_live", "desc_count", "failures")
_NODE_SHOWN = ("sync_ack", "stop_ack", "in_int3", "step")


def describe(system: PatchSystem, actor: int) -> str:
    n = system.cfg.nodes
    return f"node {actor}" if actor < n else f"node {actor - n} (safe point)"


def snapshot(system: PatchSystem) -> dict[str, Any]:
    """The readable state, for a counterexample's steps (what each changed)."""
    st, t = system.st, system.t
    out: dict[str, Any] = {name: st.get(name) for name in _HEADER_SHOWN}
    for n in range(system.cfg.nodes):
        for name in _NODE_SHOWN:
            v = st.node_get(n, name)
            out[f"node {n} {name}"] = node_step_name(system.cfg.protocol_spec, v) if name == "step" else v
    for s in system.batch.tolist():
        o, L = int(t.offset[s]), int(t.length[s])
        out[f"site {s} master"] = bytes(system.master[o : o + L]).hex(" ")
        for c, base in enumerate(system.copies.targets(np.arange(o, o + L))):
            out[f"site {s} copy {c}"] = bytes(system.mem[base]).hex(" ") if (base >= 0).all() else "-"
        out[f"site {s} seq"] = int(st.site_seq[s])
        out[f"site {s} state"] = int(st.site_state[s])
    if system.cfg.source == "module":
        out["module generation"] = int(st.slot_gen[0])
        out["module live"] = int(st.site_live[system.patched[0]])
        for task in range(len(st.task_mod)):
            out[f"task {task} inside module"] = int(st.task_mod[task])
    elif system.cfg.source == "shared":
        out["function users"] = hex(int(st.share_users[0]))
    elif system.cfg.source == "bpf":
        out["trampoline generation"] = st.get("tramp_gen")
        for task in range(len(st.task_tramp)):
            out[f"task {task} inside trampoline"] = int(st.task_tramp[task])
    elif system.sources:
        out["key count"] = int(st.key_count[int(system.plan.keys[0])])
        for n in range(len(system.sources)):
            out[f"node {n} key references"] = int(st.key_refs[n, 0])
    out["calls returned"] = system.calls_done
    return out


def where(frame: Any) -> str:
    """Where an actor stopped: the innermost frame of numaemu's patching code, with its line."""
    f = frame
    while f is not None:
        name = f.f_code.co_filename
        if "numaemu" in name and "/explore/" not in name and not name.endswith("clock.py"):
            line = linecache.getline(name, f.f_lineno).strip()
            return f"{name.rsplit('numaemu/', 1)[-1]}:{f.f_lineno} {f.f_code.co_qualname}: {line}"
        f = f.f_back
    return "the start of its next request or call"
