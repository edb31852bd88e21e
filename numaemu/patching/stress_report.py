"""The record of a ``numaemu stress`` run: its JSON document (`stress_document`, see the README's
JSON formats) from the nodes' reports and the end-of-run checks, and the summary a person reads
(`format_stress_summary`).

Every violation counts, wherever it was seen: by a reader (its node's report), by a patcher (an
unexpected op, a copy that differs after a call), by a node that died before reporting (what it
had published, handed on by the recovery), or by the end checks (static-key counts against their
code, the master against the committed states).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from numaemu.patching.reader_tasks import MAX_REPORTED
from numaemu.patching.stress import StressSpec
from numaemu.patching.stress_node import StressNodeReport
from numaemu.runtime.results import SCHEMA

__all__ = ["stress_document", "format_stress_summary", "format_first"]


def _violations(result: dict[str, Any], reports: list[StressNodeReport], lost: list[dict[str, int]]) -> tuple[int, list[dict[str, Any]]]:
    """(violations, the first MAX_REPORTED examples, and one line for each kind seen past the
    readers): the nodes', the patchers' log, those of nodes that died, and the end checks'."""
    examples = [e for r in reports for e in r.examples][:MAX_REPORTED]
    violations = sum(r.violations for r in reports)
    examples += result["failures"][: max(0, MAX_REPORTED - len(examples))]
    violations += result["n_failures"]
    lost_violations = sum(x.get("violations", 0) for x in lost)
    violations += lost_violations
    if lost_violations:
        examples.append({"kind": "lost-report", "detail": f"{lost_violations} violations seen by nodes that died before reporting (their examples died with them)"})
    for problem in result["key_problems"]:
        violations += 1
        if len(examples) < MAX_REPORTED:
            examples.append({"kind": "sharing-mismatch" if problem.startswith("function") else "key-mismatch", "detail": problem})
    if result["state_drift"]:
        violations += result["state_drift"]
        examples.append({"kind": "state-drift", "detail": f"{result['state_drift']} sites hold bytes other than their committed state in the master"})
    return violations, examples


def stress_document(spec: StressSpec, result: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of a stress run (see the README's JSON formats)."""
    reports: list[StressNodeReport] = result["reports"]
    lat = np.array([x for r in reports for x in r.latencies_us], dtype=np.float64)
    # What replaced nodes had done before they died (their reports died with them).
    lost: list[dict[str, int]] = [r["repair"].get("lost", {}) for r in result.get("recoveries", [])]

    def lost_sum(field: str) -> int:
        return sum(x.get(field, 0) for x in lost)

    violations, examples = _violations(result, reports, lost)
    identical = not result["replica_mismatches"] if result.get("checked", True) else None
    executions = sum(r.executions for r in reports) + lost_sum("executions")
    scale = max((r.scale for r in reports), default=0.0)
    timeline = result["timeline"].with_scale(scale) if scale else result["timeline"]
    emulated_s = timeline.emulated_s(result["run_s"])
    firsts = sorted((r.first_violation for r in reports if r.first_violation), key=lambda f: f["emulated_us"])
    return {
        "schema": SCHEMA,
        "command": "stress",
        "protocol": spec.protocol,
        "protocol_spec": None if spec.protocol_spec is None else {
            "name": spec.protocol_spec.name, "arch": spec.protocol_spec.arch,
            "steps": [st.describe(i) for i, st in enumerate(spec.protocol_spec.steps)]},
        "source": spec.source,
        "script": [{"kind": op.kind, "key": op.key, "functions": op.functions} for op in spec.script],
        "policy": spec.policy,
        "arch": spec.image.arch,
        "image": spec.image.summary(),
        "inject_bug": spec.bug,
        "duration_s": spec.duration_s,
        "rate": spec.rate,
        "seed": spec.seed,
        "start_method": spec.start_method,
        "wall_s": result["wall_s"],
        "patches_applied": sum(r.patch_calls for r in reports) + lost_sum("patch_calls"),
        "source_ops": sum(r.source_ops for r in reports) + lost_sum("source_ops"),
        "sites_patched": sum(r.sites_patched for r in reports) + lost_sum("sites_patched"),
        "executions_checked": executions,
        "violations": violations,
        # One emulated timeline (numaemu/model/timeline.py): every cost in emulated ns, one scale.
        "timeline": timeline.to_json(),
        "emulated_s": emulated_s,
        "violations_per_emulated_s": violations / emulated_s if emulated_s else None,
        "violations_per_million_executions": 1e6 * violations / executions if executions else None,
        "int3_fix": spec.int3_fix,
        "ifetch": spec.ifetch,
        "stop_at_first": spec.stop_at_first,
        "first_violation": firsts[0] if firsts else None,
        "violation_examples": examples,
        "replicas_identical": identical,
        "copy_nodes": result["copy_nodes"],
        "replicas_every": spec.replicas_every,
        "image_bytes_per_node": result["image_bytes"],
        "page_tables": result["page_tables"],
        "replica_mismatches": [{"page": p, "node": n} for p, n in result["replica_mismatches"][:MAX_REPORTED]],
        "patch_latency_us": {
            "median": float(np.median(lat)) if len(lat) else None,
            "p99": float(np.percentile(lat, 99)) if len(lat) else None,
            "max": float(lat.max()) if len(lat) else None,
        },
        # The same on the timeline: what the calls would take on the emulated machine.
        "patch_latency_emulated_us": {
            "median": float(np.median(lat)) / scale if len(lat) and scale else None,
            "p99": float(np.percentile(lat, 99)) / scale if len(lat) and scale else None,
        },
        "sync_rounds": sum(r.syncs for r in reports),
        "stop_rounds": sum(r.stop_rounds for r in reports),
        "int3_hits": sum(r.int3_hits for r in reports),
        # Tasks migrating mid-call, and what replicas let them see (reader_tasks._order): counted
        # and described, not violations (the kernel promises each execution old or new code).
        "migrate": spec.migrate,
        "migrations": sum(r.migrations for r in reports),
        "new_then_old": sum(r.new_then_old for r in reports),
        "new_then_old_per_million_executions": 1e6 * sum(r.new_then_old for r in reports) / executions if executions else None,
        "new_then_old_examples": [e for r in reports for e in r.ordering][:MAX_REPORTED],
        "unexpected_ops": sum(r.unexpected_ops for r in reports),
        "module_loads": sum(r.module_loads for r in reports),
        "ftrace_all_enables": sum(r.ftrace_all_enables for r in reports),
        "module_unloads": sum(r.module_unloads for r in reports),
        "ipmodify_refused": sum(r.ipmodify_refused for r in reports),
        # Failures at run time (see the README's Errors): set by the command when the run stopped
        # early (`failure`: the node that died; `interrupted`: Ctrl-C or SIGTERM).
        "failure": None,
        "interrupted": False,
        "recover": spec.recover,
        "kill_workers": spec.kill_rate or None,
        "recoveries": result.get("recoveries", []),
        "kills": result.get("kills", []),
        "ok": violations == 0 and identical is True,
        "per_node": [r.per_node() for r in reports],
    }


def _rates(doc: dict[str, Any]) -> str:
    tl = doc.get("timeline")
    if not tl or not doc.get("emulated_s"):
        return ""
    per_s, per_m = doc["violations_per_emulated_s"], doc["violations_per_million_executions"]
    if per_s is None or per_m is None:  # a run stopped before any execution was checked
        return f" ({1e3 * doc['emulated_s']:,.3f} emulated ms at scale {tl['scale']:,.0f} wall ns per emulated ns)"
    return (f" ({per_s:,.0f} per emulated second, {per_m:,.2f} per million executions;"
            f" {1e3 * doc['emulated_s']:,.3f} emulated ms at scale {tl['scale']:,.0f} wall ns per emulated ns)")


# The invariant each kind of violation breaks, as the first violation's report names it.
INVARIANTS = {
    "torn": "every execution is one of the site's valid instructions",
    "stale": "once a patch call has returned, every node runs what it committed",
    "int3-after-return": "once a patch call has returned, no node runs its INT3",
    "int3-no-descriptor": "an INT3 handler reads a live descriptor, never a released one",
    "unsynchronized": "no CPU executes the text a stop_machine round is writing",
    "livepatch-mix": "a task runs one version of a livepatched set per request",
    "key-off-while-held": "a static key is enabled wherever a node holding a reference runs its code",
    "trampoline-freed": "a trampoline is freed only after every task has left it (RCU-tasks)",
    "module-freed": "a module is freed only after every task has left its code",
    "ipmodify-twice": "at most one IPMODIFY ftrace user per function",
}


def format_first(first: dict[str, Any]) -> str:
    """The first violation, in full (--stop-at-first): what, where, when, and where every
    node's patch call was."""
    steps = "; ".join(f"node {n}: {step}" for n, step in first["steps"].items())
    seen = f", executed {first['observed']}" if "observed" in first else ""
    want = f" (the last call that returned left {first['expected']})" if first.get("expected") else ""
    site = f" site {first['site']} at {first['address']}" if "site" in first else ""
    rule = INVARIANTS.get(first["kind"])
    return (f"FIRST VIOLATION at {first['emulated_us']:,.3f} emulated us: {first['kind']}"
            + (f" (invariant: {rule})" if rule else "") + f" on node {first['node']}, task {first['task']},"
            f"{site}{seen}{want}: {first.get('detail', '')}\n  protocol steps then: {steps}")


def format_stress_summary(doc: dict[str, Any]) -> str:
    """What a person reads of a stress document: counts, latency, the copies, the first
    violations, any recoveries, and the verdict."""
    lat = doc["patch_latency_us"]
    lines = [
        f"executions checked: {doc['executions_checked']:,} on {len(doc['per_node'])} nodes (INT3 hits {doc['int3_hits']:,})",
        f"patch calls: {doc['patches_applied']:,} from {doc['source_ops']:,} source operations, {doc['sites_patched']:,} sites patched; "
        f"sync rounds {doc['sync_rounds']:,}, stop_machine rounds {doc['stop_rounds']:,}"
        + (f"; modules loaded {doc['module_loads']:,}, unloaded {doc['module_unloads']:,}" if doc["module_loads"] else "")
        + (f"; tracing enabled on every function {doc['ftrace_all_enables']:,} times" if doc["ftrace_all_enables"] else ""),
        "patch latency: " + (f"median {lat['median']:.0f} us, p99 {lat['p99']:.0f} us" if lat["median"] is not None else "no patch calls")
        + (f" (emulated: median {emu['median']:,.1f} us, p99 {emu['p99']:,.1f} us)" if (emu := doc.get("patch_latency_emulated_us")) and emu["median"] is not None else ""),
        f"replicas identical to the master: {({True: 'yes', False: 'NO', None: 'not checked (the run never started)'})[doc['replicas_identical']]}"
        f" ({len(doc['copy_nodes'])} {'copy' if len(doc['copy_nodes']) == 1 else 'copies'}, on node{'s' if len(doc['copy_nodes']) > 1 else ''} {', '.join(map(str, doc['copy_nodes']))})",
        f"violations: {doc['violations']:,}" + _rates(doc),
    ]
    if doc.get("migrate"):
        nto = doc["new_then_old"]
        lines.insert(-1, f"tasks migrated mid-call: {doc['migrations']:,}; new-then-old seen by a task within one call: {nto:,}"
                     + (f" ({doc['new_then_old_per_million_executions']:,.2f} per million executions; the kernel allows it: not a violation)" if nto else ""))
    head = []
    if doc.get("kills"):
        head.append(f"killed by --kill-workers {doc['kill_workers']:g}/s: {len(doc['kills'])} (" + ", ".join(f"node {k['node']} at {k['at_s']:.2f} s" for k in doc["kills"]) + ")")
    for r in doc.get("recoveries", []):
        inside = f" ({r['where']})" if r.get("where") else ""
        took = f", replaced in {1e3 * r['took_s']:.0f} ms" if r.get("took_s") is not None else ""
        head.append(f"recovered: node {r['node']} (pid {r['old_pid']} -> {r['new_pid']}), died in phase '{r['phase']}'{inside}"
                    + (f" at {r['at_s']:.2f} s" if r.get("at_s") is not None else "") + f"{took}: {r['detail']}")
    lines[:0] = head
    first = doc.get("first_violation")
    if first:
        lines.append(format_first(first))
    for e in doc["violation_examples"][:5]:
        where = f" node {e['node']}" if "node" in e else ""
        addr = f" at {e['address']}" if "address" in e else ""
        seen = f": executed {e['observed']}" if "observed" in e else ""
        lines.append(f"  {e['kind']}{where}{addr}{seen} ({e.get('detail', '')})".rstrip())
    if doc.get("failure") or doc.get("interrupted"):
        why = "a node failed" if doc.get("failure") else "interrupted"
        lines.append(f"STOPPED ({why}): the figures above are what the nodes saw until then ({len(doc['per_node'])} of them reported)")
    elif doc["ok"]:
        lines.append("OK: nothing violated" + (f" ({len(doc['recoveries'])} node(s) recovered, every copy equal to the master)" if doc.get("recoveries") else ""))
    else:
        lines.append("FAILED: see the violations above")
    return "\n".join(lines)
