"""`PatchBench`: timing the patch calls themselves, on real node processes (``calibrate``,
scripts/patch_speed.py, the published comparisons).

A bench run is a stress run (`stress.run_stress`) in which, instead of readers and a source, node 0
times patch calls (one site, a batch, one static key's sites batched and unbatched, tracing every
function) while every other node waits at a safe point, taking part in node 0's syncs and
stop_machine rounds (or runs its readers, under ``load``). `run_patch_bench` returns node 0's
report: a dict of timings, ``*_ns`` lists of each repeat.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from numaemu.host.cpus import host_cpus
from numaemu.model.binding import bind_to_host
from numaemu.model.image import synthetic_image
from numaemu.model.sites import site_table
from numaemu.model.timeline import Timeline
from numaemu.model.topology import Topology
from numaemu.patching.kernel import NodeKernel
from numaemu.patching.stress import StressSpec, default_timeline, run_stress
from numaemu.patching.textmem import TextState

if TYPE_CHECKING:
    from numaemu.patching.reader_tasks import ReaderTasks
    from numaemu.patching.stress_node import StressNodeConfig

__all__ = ["PatchBench", "run_patch_bench", "measure_patch_round_us", "measure_bp_batch_us", "BP_BATCH"]


@dataclass(frozen=True)
class PatchBench:
    """Instead of readers and a source: node 0 times patch calls, the others wait."""

    repeats: int = 200
    batch: int = 256
    load: bool = False  # the other nodes run readers instead of idling at a safe point
    ftrace_all: bool = False  # also time tracing every function on and off
    # > 0: also time flipping one static key with this many use sites, `repeats` times each way:
    # batched (one patch call for every site) and unbatched (one call per site).
    sites: int = 0

    def __post_init__(self) -> None:
        for name in ("repeats", "batch", "sites"):
            if not isinstance(getattr(self, name), int):
                raise TypeError(f"{name} must be an int")
        if self.repeats < 1:
            raise ValueError("repeats must be >= 1")
        if self.batch < 1:
            raise ValueError("batch must be >= 1")
        if self.sites < 0:
            raise ValueError("sites must be >= 0")

    def on_node(self, cfg: StressNodeConfig, st: TextState, kernel: NodeKernel, readers: ReaderTasks, cpus: tuple[int, ...]) -> dict[str, Any]:
        """A bench node's run phase (stress_node runs it when its config has a bench): node 0
        times patch calls; every other node waits at a safe point (or runs its readers, under
        load) until node 0 is done. Returns the node's report."""
        out: dict[str, Any] = {"node": cfg.node, "pid": os.getpid(), "cpus": list(cpus)}
        if cfg.node != 0:
            while st.node_get(0, "done") != 1:
                kernel.check_alive()  # node 0 may have died
                if self.load:
                    readers.run_batch()
                else:
                    kernel.safe_point()
                    if cfg.shared_core:  # do not burn the core node 0 may be sharing
                        os.sched_yield()
            out["executions"] = readers.executions
            out["violations"] = readers.violations
            return out
        out.update(_time_patches(self, cfg, st, kernel))
        st.nodes["done"][0] = 1
        return out


def _time_patches(b: PatchBench, cfg: StressNodeConfig, st: TextState, kernel: NodeKernel) -> dict[str, Any]:
    """Node 0's timings (see the module docstring)."""
    out: dict[str, Any] = {}
    t = cfg.sites
    five = np.flatnonzero(t.length[: t.n_jump] == (4 if t.arch == "arm64" else 5))
    one_site = five[:1]

    def toggle(sites: np.ndarray) -> int:
        cur = st.site_state[sites].astype(np.int64)
        t0 = time.perf_counter_ns()
        kernel.patch(sites, cur, 1 - cur)
        return time.perf_counter_ns() - t0

    for _ in range(10):  # warm up
        toggle(one_site)
    out["one_site_ns"] = [toggle(one_site) for _ in range(b.repeats)]
    batch = np.sort(np.arange(t.n_jump)[: b.batch])
    out["batch_sites"] = len(batch)
    out["batch_ns"] = [toggle(batch) for _ in range(max(10, b.repeats // 10))]
    if b.sites:
        # One static key's use sites, scattered over the text as a key's are (every k-th
        # jump-label site). Batched is jump_label_update since 2019 (arch_jump_label_transform_queue,
        # then text_poke_finish: one text_poke_bp batch, 3 syncs for all sites); unbatched is
        # what it did before (arch_jump_label_transform per site: 3 syncs each).
        key = np.arange(t.n_jump)[:: max(1, t.n_jump // b.sites)][: b.sites]
        out["flip_sites"] = len(key)
        for mode, calls in (("batched", [key]), ("unbatched", [key[i : i + 1] for i in range(len(key))])):
            syncs = kernel.stats.syncs
            out[f"flip_{mode}_ns"] = [sum(toggle(c) for c in calls) for _ in range(b.repeats)]
            out[f"flip_{mode}_syncs"] = (kernel.stats.syncs - syncs) // b.repeats
    if b.ftrace_all:
        sites = cfg.plan.ftrace_sites
        t0 = time.perf_counter_ns()
        kernel.patch(sites, np.zeros(len(sites), np.int64), np.ones(len(sites), np.int64))
        out["ftrace_on_ns"] = time.perf_counter_ns() - t0
        t0 = time.perf_counter_ns()
        kernel.patch(sites, np.ones(len(sites), np.int64), np.zeros(len(sites), np.int64))
        out["ftrace_off_ns"] = time.perf_counter_ns() - t0
        out["ftrace_sites"] = len(sites)
    out["unexpected_ops"] = kernel.unexpected
    return out


def _bench_timeline(topology: Topology, modeled: bool) -> Timeline:
    """A bench patches at real speed (scale 1, no readers to keep up with): the default
    timeline's costs, or (`modeled` False) none, leaving what numaemu itself costs."""
    image = synthetic_image()
    tl = default_timeline(topology, image, site_table(image)).with_scale(1.0)
    if modeled:
        return tl
    return dataclasses.replace(tl, ipi_ns=0.0, text_poke_ns=0.0, int3_ns=0.0, sync_core_ns=0.0, stop_switch_ns=0.0, fetch_gap_ns=0.0, count_rmw_ns=0.0)


def run_patch_bench(topology: Topology, bench: PatchBench, *, policy: str = "replicate", protocol: str = "text_poke_bp",
                    modeled: bool = True, start_method: str = "fork") -> dict[str, Any]:
    """Run `bench` on the default x86 image, one node per host CPU share; return node 0's
    timings (see `PatchBench.on_node`). `modeled` False turns numaemu's modeled delays off (IPI
    delivery, per-site text_poke cost), leaving what numaemu itself costs. Raises RuntimeError if
    a copy differs from the master afterwards or a patch found unexpected bytes."""
    spec = StressSpec(
        topology, bind_to_host(topology, host_cpus()), synthetic_image(), policy, protocol, "mixed", 1.0, 1.0, 0, None,
        start_method, bench=bench, timeline=_bench_timeline(topology, modeled),
    )
    result = run_stress(spec)
    if result["replica_mismatches"] or result["n_failures"]:
        raise RuntimeError(f"patching broke a copy: {result['replica_mismatches'][:3]} {result['failures'][:3]}")
    report: dict[str, Any] = result["reports"][0]
    return report


def measure_patch_round_us(topology: Topology, repeats: int, start_method: str) -> float:
    """Median one-site stop_machine patch on `topology` (2 nodes), issued by node 0 while node 1
    waits at a safe point, modeled delays off: what numaemu's mechanism costs."""
    report = run_patch_bench(topology, PatchBench(repeats, batch=1), protocol="stop_machine", modeled=False, start_method=start_method)
    return float(statistics.median(report["one_site_ns"])) / 1e3


BP_BATCH = 256  # text_poke_bp's batch (TP_VEC_MAX)


def measure_bp_batch_us(topology: Topology, repeats: int, start_method: str) -> tuple[float, float]:
    """Median text_poke_bp call of one site and of BP_BATCH sites, in one run (as
    ``scripts/patch_speed.py`` times them), modeled delays off."""
    report = run_patch_bench(topology, PatchBench(repeats, batch=BP_BATCH), protocol="text_poke_bp", modeled=False, start_method=start_method)
    return float(statistics.median(report["one_site_ns"])) / 1e3, float(statistics.median(report["batch_ns"])) / 1e3
