"""The two kinds of failure numaemu tells apart.

`UsageError` is bad input: the CLI prints ``error: <message>`` and exits 2, before anything
is started. Its message always begins with the parameter at fault (``--topology: ...``).

`NodeFailure` is a failure at run time inside one emulated node: it names the node and the
phase (``node 1 (pid 4242) failed in phase 'fill': ...``).
"""

from __future__ import annotations

__all__ = ["UsageError", "NodeFailure"]


class UsageError(Exception):
    """Bad input. The message names the parameter and the rule it broke."""

    def __init__(self, parameter: str, rule: str) -> None:
        self.parameter = parameter
        self.rule = rule
        super().__init__(f"{parameter}: {rule}")


class NodeFailure(RuntimeError):
    """A node process failed (or died) during a phase of a run."""

    def __init__(self, node: int, pid: int | None, phase: str, detail: str) -> None:
        self.node = node
        self.pid = pid
        self.phase = phase
        self.detail = detail
        who = f"node {node}" if pid is None else f"node {node} (pid {pid})"
        super().__init__(f"{who} failed in phase '{phase}': {detail}")
