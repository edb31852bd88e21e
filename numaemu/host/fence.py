"""A full memory barrier between processes sharing memory: `fence()`.

The patching protocols order stores and loads across node processes through plain shared memory
(numpy and memoryview stores). x86's TSO keeps stores in order and loads in order but lets a load
pass an earlier store to another address, and arm64 reorders all of them; where a protocol needs
an order (the INT3 handler's reference against the patcher's release, a module reference against
the unloader's check, a request published after the writes it announces, a site's sequence
numbers around the execution), it calls `fence()`.

It is LLVM's ``fence seq_cst``, JIT-compiled once per process by llvmlite (numba's own LLVM
binding, so no other dependency): a locked instruction on x86, ``dmb ish`` on arm64, the same as
C11's ``atomic_thread_fence(memory_order_seq_cst)`` and the kernel's ``smp_mb()``. Compiling
takes ~60 ms; a call, through ctypes, ~300 ns.
"""

from __future__ import annotations

import ctypes
from typing import Any

__all__ = ["fence", "assembly"]

_IR = "define void @numaemu_fence() {\n  fence seq_cst\n  ret void\n}\n"
_state: dict[str, Any] = {}


def _build() -> Any:
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    module = llvm.parse_assembly(_IR)
    module.verify()
    machine = llvm.Target.from_default_triple().create_target_machine()
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    _state.update(engine=engine, machine=machine, module=module)  # the code lives as long as the engine
    return ctypes.CFUNCTYPE(None)(engine.get_function_address("numaemu_fence"))


def fence() -> None:
    """smp_mb(): no load or store after it is seen before any load or store ahead of it."""
    f = _state.get("fn")
    if f is None:
        f = _state["fn"] = _build()
    f()


def assembly() -> str:
    """The machine code `fence` runs, as assembly (for the test that it is a full barrier)."""
    fence()
    text: str = _state["machine"].emit_assembly(_state["module"])
    return text
