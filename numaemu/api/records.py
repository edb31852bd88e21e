"""The results a script gets back, as frozen records: `PolicyResult`, `RunResult`, `StressResult`.

Each keeps its whole JSON document (the fields the README's "JSON formats" lists) and gives
typed access to the figures a script compares; ``to_json()`` is that document, and
``from_json()`` reads one back, refusing one of another command or of a schema this numaemu does
not read with a one-line `UsageError`. Documents carry ``schema`` (`SCHEMA`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from numaemu.errors import NodeFailure, UsageError
from numaemu.host.files import regular_file
from numaemu.runtime.results import SCHEMA

__all__ = ["PolicyResult", "RunResult", "StressResult", "BenchResult", "CalibrationResult", "read_document", "upgrade", "mark_stopped"]


def mark_stopped(doc: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """`doc`, of a command stopped early by `exc` (README, "Errors"): ``failure`` (node, pid,
    phase, where, detail) for a `NodeFailure`, else ``interrupted`` (Ctrl-C, SIGTERM); ``ok``
    false where the document has one."""
    if isinstance(exc, NodeFailure):
        doc["failure"] = exc.to_json()
    else:
        doc["interrupted"] = True
    if "ok" in doc:
        doc["ok"] = False
    return doc


def read_document(path: str | Path, param: str, command: str, *, version_key: str = "schema", version: int = SCHEMA, needs: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON document at `path`, which must be a `command`'s (with the keys `needs`) of the
    version this numaemu reads (`version_key`: ``schema``, or ``bench_schema`` for a sweep)."""
    p = regular_file(path, param)
    try:
        doc = json.loads(p.read_text())
    except OSError as exc:
        raise UsageError(param, f"cannot read '{path}': {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError, or an integer of 4300+ digits
        raise UsageError(param, f"'{path}' is not JSON") from None
    return _checked(doc, command, param, f"'{path}'", version_key, version, needs)


# What schema 2 renamed (runtime.results.SCHEMA): every key, wherever it stands in a document.
RENAMED = {"busy_s": "batch_wall_s", "host_placement": "host_binding", "placement_report": "numa_maps"}


def upgrade(doc: Any) -> Any:
    """A schema 1 document (bench_schema 1) as schema 2 reads it: its keys renamed (`RENAMED`);
    any other document as it is. Nothing else changed between the two."""
    if not isinstance(doc, dict) or doc.get("schema", 1) != 1 or "command" not in doc:
        return doc

    def renamed(x: Any) -> Any:
        if isinstance(x, dict):
            return {RENAMED.get(k, k): renamed(v) for k, v in x.items()}
        if isinstance(x, list):
            return [renamed(v) for v in x]
        return x

    new: dict[str, Any] = renamed(doc)
    new["schema"] = SCHEMA
    if new.get("bench_schema") == 1:
        new["bench_schema"] = 2
    new["upgraded_from_schema"] = 1
    return new


def _checked(doc: object, command: str, param: str = "document", what: str = "the document",
             version_key: str = "schema", version: int = SCHEMA, needs: tuple[str, ...] = ()) -> dict[str, Any]:
    doc = upgrade(doc)
    if not isinstance(doc, dict) or doc.get("command") != command or any(k not in doc for k in needs):
        other = doc.get("command") if isinstance(doc, dict) else None
        raise UsageError(param, f"{what} is not a numaemu {command} result" + (f" (it is from numaemu {other})" if other and other != command else ""))
    if doc.get(version_key) != version:
        raise UsageError(param, f"{what} has {version_key.replace('_', ' ')} {doc.get(version_key)}; this numaemu reads {version}")
    return doc


@dataclass(frozen=True)
class PolicyResult:
    """One policy of a run: its figures, and its whole record (``per_node`` and the rest)."""

    policy: str
    throughput_rps: float
    speedup_vs_single: float | None  # measured: wall-clock throughput against single, same run
    predicted_speedup_vs_single: float | None  # the latency model: emulated time per request
    remote_fetch_share: float
    emulated_us_per_request: float | None
    extra_memory_bytes: int
    pacing_lost_pct: float
    verified: bool | None  # run --verify: every task read the master's bytes (None: not asked)
    record: Mapping[str, Any]

    @classmethod
    def from_json(cls, rec: Mapping[str, Any]) -> PolicyResult:
        return cls(
            policy=rec["policy"], throughput_rps=rec["throughput_rps"], speedup_vs_single=rec.get("speedup_vs_single"),
            predicted_speedup_vs_single=rec.get("predicted_speedup_vs_single"), remote_fetch_share=rec["remote_fetch_share"],
            emulated_us_per_request=rec["emulated_us_per_request"], extra_memory_bytes=rec["extra_memory_bytes"],
            pacing_lost_pct=rec["pacing_lost_pct"], verified=rec.get("verified"), record=dict(rec),
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.record)


@dataclass(frozen=True)
class RunResult:
    """A ``numaemu run``: each policy's result, and the document (topology, image, workload,
    host, settings, failure) as written to JSON."""

    policies: tuple[PolicyResult, ...]
    document: Mapping[str, Any]
    # Per policy, where each node's memory landed (`host.numamaps.NumaMapsReport`), read while
    # the run went; its JSON is in each record's ``numa_maps`` (not read back).
    numa_maps: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: object) -> RunResult:
        d = _checked(doc, "run")
        return cls(tuple(PolicyResult.from_json(r) for r in d["results"]), d)

    def to_json(self) -> dict[str, Any]:
        return dict(self.document)

    def __getitem__(self, policy: str) -> PolicyResult:
        for p in self.policies:
            if p.policy == policy:
                return p
        raise KeyError(policy)

    @property
    def complete(self) -> bool:
        """Every policy asked for ran, and the run was neither interrupted nor failed."""
        d = self.document
        return d.get("failure") is None and not d.get("interrupted") and len(self.policies) == len(d["settings"]["policies"])


@dataclass(frozen=True)
class StressResult:
    """A ``numaemu stress``: what the checkers found, and the document as written to JSON."""

    ok: bool  # no violation, every copy identical to the master, keys agree with their code
    violations: int
    executions_checked: int
    patches_applied: int
    replicas_identical: bool | None  # None: the run never started, nothing was compared
    document: Mapping[str, Any]

    @classmethod
    def from_json(cls, doc: object) -> StressResult:
        d = _checked(doc, "stress")
        return cls(ok=d["ok"], violations=d["violations"], executions_checked=d["executions_checked"], patches_applied=d["patches_applied"],
                   replicas_identical=d["replicas_identical"], document=d)

    def to_json(self) -> dict[str, Any]:
        return dict(self.document)


@dataclass(frozen=True)
class BenchResult:
    """A ``numaemu bench`` sweep: each point's summary (speedups with intervals, the model
    beside them), the runs that failed, and the document as written to JSON."""

    points: tuple[Mapping[str, Any], ...]
    failed_runs: tuple[Mapping[str, Any], ...]
    document: Mapping[str, Any]

    @classmethod
    def from_json(cls, doc: object) -> BenchResult:
        from numaemu.measure.compare import BENCH_SCHEMA, bench_doc_problem

        d = _checked(doc, "bench", version_key="bench_schema", version=BENCH_SCHEMA, needs=("points",))
        problem = bench_doc_problem(d)
        if problem:
            raise UsageError("document", f"the document is a damaged bench result: {problem}")
        return cls(tuple(d["points"]), tuple(d.get("failed_runs", [])), d)

    def to_json(self) -> dict[str, Any]:
        return dict(self.document)

    def speedup(self, policy: str, point: int = 0) -> float | None:
        """The median measured speedup of `policy` against single at the `point`-th point."""
        row = self.points[point]["policies"][policy]
        value = row["speedup"]["median"] if isinstance(row.get("speedup"), Mapping) else row.get("speedup")
        return None if value is None else float(value)


@dataclass(frozen=True)
class CalibrationResult:
    """A ``numaemu calibrate``: this host's figures (`measure.calibrate.Calibration`), every goal
    with its verdict, and the document as written to JSON."""

    figures: Any  # numaemu.measure.calibrate.Calibration
    goals: tuple[Mapping[str, Any], ...]  # each {name, figure, goal, met, detail, source}; met None: no goal
    document: Mapping[str, Any]

    @classmethod
    def from_json(cls, doc: object) -> CalibrationResult:
        from numaemu.measure.calibrate import Calibration

        d = _checked(doc, "calibrate", needs=("results",))
        return cls(Calibration.from_json(d["results"]), tuple(d["results"]["goals"]), d)

    def to_json(self) -> dict[str, Any]:
        return dict(self.document)

    @property
    def missed(self) -> tuple[str, ...]:
        """The goals this host missed, by name."""
        return tuple(g["name"] for g in self.goals if g["met"] is False)
