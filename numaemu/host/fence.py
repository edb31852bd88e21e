"""A full memory barrier between processes sharing memory: `fence()`.

The patching protocols order stores and loads across node processes through plain shared memory
(numpy and memoryview stores). x86's TSO keeps stores in order and loads in order but lets a load
pass an earlier store to another address, and arm64 reorders all of them; where a protocol needs
an order (the INT3 handler's reference against the patcher's release, a module reference against
the unloader's check, a request published before its IPI, a site's sequence numbers around the
execution), it calls `fence()`. It is LLVM's ``fence seq_cst`` compiled by numba (a locked
instruction on x86, ``dmb ish`` on arm64), the same as C11's ``atomic_thread_fence(memory_order_seq_cst)``
and the kernel's ``smp_mb()``; a call costs ~160 ns.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fence"]

_compiled: Any = None


def _build() -> Any:
    import numba
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def _seq_cst(typingctx: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            builder.fence("seq_cst")
            return context.get_dummy_value()

        return types.void(), codegen

    def barrier() -> None:
        _seq_cst()  # type: ignore[call-arg]  # numba supplies typingctx

    return numba.njit(cache=True)(barrier)


def fence() -> None:
    """smp_mb(): no load or store after it is seen before any load or store ahead of it."""
    global _compiled
    if _compiled is None:
        _compiled = _build()
    _compiled()
