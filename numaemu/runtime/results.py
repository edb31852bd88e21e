"""Results: turning node reports into per-policy records, the JSON document, and the table.

JSON is versioned (`SCHEMA`), written with sorted keys, and carries the host's metadata, as
pyperf's result files do. Field names are documented in the README ("JSON formats").
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from numaemu.host.cpus import format_cpu_list
from numaemu.model.hierarchy import LEVELS
from numaemu.model.pagetables import PageTableCost
from numaemu.model.placement import Placement
from numaemu.runtime.run_node import NodeReport

__all__ = ["SCHEMA", "policy_record", "add_speedups", "host_metadata", "host_id", "host_record", "format_run_table", "write_json"]

# 2: per_node ``busy_s`` is ``batch_wall_s`` (it always included the pacing waits), and
# ``host_placement`` / ``placement_report`` are ``host_binding`` / ``numa_maps`` (one word, one
# thing: "placement" is the kernel image's). `api.records.upgrade` reads schema 1 documents.
SCHEMA = 2


def policy_record(policy: str, run: dict[str, Any], n_nodes: int, duration_s: float | None) -> dict[str, Any]:
    """Summarise one policy's raw run (from `policy_run.run_policy`) as a JSON record."""
    reports: list[NodeReport] = run["reports"]
    placement: Placement = run["placement"]
    tables: PageTableCost | None = run.get("page_tables")
    per_node: list[dict[str, Any]] = []
    for r in reports:
        node = r.node
        text = np.asarray(r.text_fetches_by_home)
        user = np.asarray(r.user_fetches_by_home)
        emulated_ns = r.kernel_ns + r.user_ns
        per_node.append(
            {
                "node": node,
                "pid": r.pid,
                "cpus": format_cpu_list(r.cpus),
                "wall_s": r.wall_s,
                "batch_wall_s": r.batch_wall_s,
                "requests": r.requests,
                "us_per_request": 1e6 * r.batch_wall_s / r.requests if r.requests else None,
                "emulated_us_per_request": emulated_ns / 1e3 / r.requests if r.requests else None,
                "fetches_local": int(text[node]),
                "fetches_remote": int(text.sum() - text[node]),
                "cache_hits": r.cache_hits,
                "user_local": int(user[node]),
                "user_remote": int(user.sum() - user[node]),
                "kernel_share": r.kernel_ns / emulated_ns if emulated_ns else 0.0,
                "pacing_overrun_pct": 100.0 * r.overrun_ns / r.paced_ns if r.paced_ns else 0.0,
                "pacing_lost_pct": _lost_pct([r]),
                "image_bytes": placement.image_bytes(node),
                "page_table_bytes": tables.table_bytes[node] if tables else None,
                "alignment_padding_bytes": tables.padding_bytes[node] if tables else None,
                "walks_per_request": r.walks / r.requests if (tables or r.hierarchy) and r.requests else None,
                **_hardware_node(r),
            }
        )
    requests = sum(n["requests"] for n in per_node)
    wall = max(n["wall_s"] for n in per_node)
    if duration_s:
        wall = max(wall, duration_s)
    fl = sum(n["fetches_local"] for n in per_node)
    fr = sum(n["fetches_remote"] for n in per_node)
    kernel = sum(r.kernel_ns for r in reports)
    emulated = kernel + sum(r.user_ns for r in reports)
    times = [n["us_per_request"] for n in per_node if n["us_per_request"]]
    paced = sum(r.paced_ns for r in reports)
    return {
        "policy": policy,
        "replicate": placement.replicate if policy == "replicate" else None,
        "wall_s": wall,
        "requests": requests,
        "throughput_rps": requests / wall if wall else 0.0,
        "emulated_us_per_request": emulated / 1e3 / requests if requests else None,
        "fetches_local": fl,
        "fetches_remote": fr,
        "remote_fetch_share": fr / (fl + fr) if fl + fr else 0.0,
        "cache_hits": sum(n["cache_hits"] for n in per_node),
        "kernel_share": kernel / emulated if emulated else 0.0,
        "node_spread_pct": 100.0 * (max(times) - min(times)) / min(times) if len(times) > 1 else 0.0,
        "pacing_overrun_pct": 100.0 * sum(r.overrun_ns for r in reports) / paced if paced else 0.0,
        "pacing_lost_pct": _lost_pct(reports),
        "memory_bytes": placement.total_bytes,
        "extra_memory_bytes": placement.extra_bytes,
        "migrations": int(run["tasks"]["migrations"].sum()),
        # Where each node's partition landed (numamaps.NumaMapsReport), read before the start.
        "numa_maps": run["numa_maps"].to_json() if run.get("numa_maps") else None,
        "copy_nodes": list(placement.copy_nodes) if policy == "replicate" else None,
        "serving_nodes": list(placement.serving) if policy == "replicate" else None,
        "page_tables": _page_tables(tables, reports, requests, kernel),
        "hardware": _hardware_record(run, reports, requests, kernel),
        "per_node": per_node,
    }


def _hardware_node(r: NodeReport) -> dict[str, Any]:
    """A node's figures under a hardware profile: per level, TLBs, queueing, per-process work."""
    if r.hierarchy is None:
        return {}
    per = 1 / r.requests if r.requests else 0.0
    return {
        "hierarchy": r.hierarchy,
        "queue_ns_per_request": r.queue_ns * per,
        "process_ns_per_request": r.process_ns * per,
        "forks_per_request": r.forks * per,
    }


def _hardware_record(run: dict[str, Any], reports: list[NodeReport], requests: int, kernel_ns: float) -> dict[str, Any] | None:
    """The run's hardware profile and, summed over nodes, where accesses were served, TLB
    misses and walks, the time queueing and the x86 design's per-process work."""
    hw = run.get("hardware")
    if hw is None or hw.simple:
        return None if hw is None else {"profile": "simple"}
    per = 1 / requests if requests else 0.0
    levels = [r.hierarchy for r in reports if r.hierarchy is not None]
    served = {kind: {lv: sum(h["served"][kind][lv] for h in levels) for lv in LEVELS} for kind in ("text", "data")}  # type: ignore[index]
    tlb = {k: sum(int(h[k]) for h in levels) for k in ("itlb_misses", "dtlb_misses", "walks", "pwc_misses")}  # type: ignore[call-overload]
    queue = sum(r.queue_ns for r in reports)
    process = sum(r.process_ns for r in reports)
    q = run.get("queueing")
    return {
        "profile": hw.name,
        "served_per_request": {kind: {lv: n * per for lv, n in d.items()} for kind, d in served.items()},
        "served": served,
        **{f"{k}_per_request": v * per for k, v in tlb.items()},
        "queue_ns_per_request": queue * per,
        "queue_share_of_kernel_time": queue / kernel_ns if kernel_ns else 0.0,
        "process_ns_per_request": process * per,
        "process_share_of_kernel_time": process / kernel_ns if kernel_ns else 0.0,
        "forks_per_request": sum(r.forks for r in reports) * per,
        "queueing": q.to_json() if q is not None else None,
        "traffic": run["traffic"].to_json() if run.get("traffic") is not None else None,
    }


def _page_tables(tables: PageTableCost | None, reports: list[NodeReport], requests: int, kernel_ns: float) -> dict[str, Any] | None:
    """The page-table design's memory (beside the copies') and its walks' share of kernel time."""
    if tables is None:
        return None
    walk_ns = sum(r.walk_ns for r in reports)
    return {
        **tables.to_json(),
        "total_table_bytes": sum(tables.table_bytes),
        "total_padding_bytes": sum(tables.padding_bytes),
        "walks_per_request": sum(r.walks for r in reports) / requests if requests else None,
        "walk_share_of_kernel_time": walk_ns / kernel_ns if kernel_ns else 0.0,
    }


def _lost_pct(reports: list[NodeReport]) -> float:
    """Wall time the nodes ran beyond the time their batches were paced to, in % of the paced
    time: processing overruns, but also late wake-ups (another process held the core when a
    wait ended) and the work between batches. Every such ns stretches the wall clock that the
    measured throughput divides by, so this, not the overrun alone, is the fidelity lost."""
    paced = sum(r.paced_ns for r in reports)
    beyond = sum(max(0.0, r.wall_s * 1e9 - r.paced_ns) for r in reports)
    return 100.0 * beyond / paced if paced else 0.0


def add_speedups(records: list[dict[str, Any]]) -> None:
    """Speedup against ``single`` run in the same invocation: measured (wall-clock throughput)
    and predicted (the latency model: emulated time per request)."""
    base = next((r for r in records if r["policy"] == "single"), None)
    for r in records:
        if base is None:
            r["speedup_vs_single"] = r["predicted_speedup_vs_single"] = None
            continue
        r["speedup_vs_single"] = r["throughput_rps"] / base["throughput_rps"] if base["throughput_rps"] else None
        be, re_ = base["emulated_us_per_request"], r["emulated_us_per_request"]
        r["predicted_speedup_vs_single"] = be / re_ if be and re_ else None


@functools.cache
def _cpu_model() -> str:
    """The CPU's model name, looked up once per process: from /proc/cpuinfo where it says (x86
    Linux: at once), else py-cpuinfo, which starts a subprocess to probe the machine (~1.2 s
    here): too slow for a run stopped by Ctrl-C, which must write its results within a second."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    try:
        import cpuinfo

        return cpuinfo.get_cpu_info().get("brand_raw") or platform.processor()
    except Exception:  # py-cpuinfo probes the machine and can fail on odd platforms
        return platform.processor()


def host_metadata() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": format_cpu_list(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "hostname": platform.node(),
    }


def host_id(meta: dict[str, Any]) -> str:
    """A name for the machine `meta` (`host_metadata`) describes that stays the same from run to
    run and tells apart hosts a sweep should never mix: two hosts of one name but other CPUs, or
    one host with other CPUs usable to it (a cpuset), time requests differently."""
    return f"{meta['hostname']} ({meta['cpu_model']}; CPUs {meta['usable_cpus']})"


def host_record() -> dict[str, Any]:
    """This host's metadata with its `host_id`: what every ``bench`` run record carries, so
    that speedups are computed from runs on one host only (``bench --cluster``)."""
    meta = host_metadata()
    return {"id": host_id(meta), **meta}


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def format_run_table(records: list[dict[str, Any]]) -> str:
    head = f"{'policy':<11}{'req/s':>9}{'wall s':>8}{'remote':>8}  {'per node us/req':<22}{'spread':>7}{'extra mem':>11}{'speedup':>9}{'model':>7}"
    lines = [head]
    for r in records:
        nodes = " ".join(f"{n['node']}:{n['us_per_request']:.0f}" if n["us_per_request"] else f"{n['node']}:-" for n in r["per_node"])
        if len(nodes) > 21:
            times = [n["us_per_request"] for n in r["per_node"] if n["us_per_request"]]
            nodes = f"{min(times):.0f}..{max(times):.0f} (JSON)"
        sp = r.get("speedup_vs_single")
        pr = r.get("predicted_speedup_vs_single")
        name = r["policy"] if r["policy"] != "replicate" or r["replicate"] == "text+rodata" else "replicate:t"
        lines.append(
            f"{name:<11}{r['throughput_rps']:>9.1f}{r['wall_s']:>8.2f}{100 * r['remote_fetch_share']:>7.1f}%  {nodes:<22}"
            f"{r['node_spread_pct']:>6.1f}%{_mib(r['extra_memory_bytes']):>11}"
            f"{(f'{sp:.3f}' if sp else '-'):>9}{(f'{pr:.3f}' if pr else '-'):>7}"
        )
    lines.append("memory per node (MiB): " + "; ".join(
        f"{r['policy']} " + "/".join(f"{n['image_bytes'] / 2**20:.1f}" for n in r["per_node"]) for r in records))
    for r in records:
        if r.get("serving_nodes") and r["serving_nodes"] != list(range(len(r["per_node"]))):
            lines.append(f"copies on nodes {', '.join(map(str, r['copy_nodes']))}; node -> copy it maps: "
                         + " ".join(f"{i}->{c}" for i, c in enumerate(r["serving_nodes"])))
            break
    pts = [r for r in records if r.get("page_tables")]
    if pts:
        style = pts[0]["page_tables"]["style"]
        lines.append(f"page tables ({style}, TLB entry {pts[0]['page_tables']['granule_bytes'] // 1024} KiB), KiB per node; "
                     "2 MiB alignment padding; walks per request; walk share of kernel time:")
        for r in pts:
            t = r["page_tables"]
            kib = "/".join(f"{b // 1024}" for b in t["table_bytes"])
            pad = "/".join(f"{b / 2**20:.1f}" for b in t["padding_bytes"]) + " MiB"
            per_proc = f"; +{t['per_process_bytes'] // 1024} KiB per process" if t["per_process_bytes"] else ""
            walks = t["walks_per_request"]
            lines.append(f"  {r['policy']:<11}{kib:<16}{pad:<18}{(f'{walks:.1f}' if walks is not None else '-'):>8}"
                         f"{100 * t['walk_share_of_kernel_time']:>7.1f}%{per_proc}")
    return "\n".join(lines)


def write_json(doc: dict[str, Any], path: str) -> str:
    """Write `doc` to `path` ('-' = stdout); return where it went."""
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return "stdout"
    p = Path(path)
    if p.exists() and not p.is_file():  # /dev/null, a FIFO: write through, never replace it
        with open(p, "w") as f:
            f.write(text)
        return str(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")  # a reader never sees a half-written file
    tmp.write_text(text)
    os.replace(tmp, p)
    return str(p)
