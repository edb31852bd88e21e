"""The two kinds of failure numaemu tells apart.

`UsageError` is bad input: the CLI prints ``error: <message>`` and exits 2, before anything
is started. Its message always begins with the parameter at fault (``--topology: ...``).

`NodeFailure` is a failure at run time inside one emulated node: it names the node and the
phase (``node 1 (pid 4242) failed in phase 'fill': ...``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["UsageError", "NodeFailure"]


class UsageError(Exception):
    """Bad input. The message names the parameter and the rule it broke."""

    def __init__(self, parameter: str, rule: str) -> None:
        self.parameter = parameter
        self.rule = rule
        super().__init__(f"{parameter}: {rule}")


class NodeFailure(RuntimeError):
    """A node process failed (or died) during a phase of a run.

    `where` says what it was inside of within the phase, when that is known (``inside a
    text_poke_bp sync``); `detected_after_s` how long after its death the coordinator noticed,
    when the moment of death is known (the test fault hook, ``--kill-workers``); `partial` what
    the run had produced when it failed, for the command to write (set by the runner)."""

    def __init__(self, node: int, pid: int | None, phase: str, detail: str, where: str = "", detected_after_s: float | None = None) -> None:
        self.node = node
        self.pid = pid
        self.phase = phase
        self.detail = detail
        self.where = where
        self.detected_after_s = detected_after_s
        self.partial: object = None
        who = f"node {node}" if pid is None else f"node {node} (pid {pid})"
        inside = f" ({where})" if where else ""
        super().__init__(f"{who} failed in phase '{phase}'{inside}: {detail}")

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "pid": self.pid, "phase": self.phase, "where": self.where or None, "detail": self.detail, "detected_after_s": self.detected_after_s}


def excerpt(text: str, width: int = 60) -> str:
    """`text` stripped, cut to `width` characters with ``...``: the part of a bad input line an
    error message quotes."""
    text = text.strip()
    return text if len(text) <= width else text[: width - 3] + "..."
