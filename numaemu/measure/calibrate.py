"""``numaemu calibrate``: what this host can emulate, and what numaemu's own mechanisms cost
against raw baselines measured in the same run.

Every figure is a median over repeated samples or blocks (as pyperf reports, BACKGROUND.md s.5),
because the host is shared and timings are noisy:

- the cost of one ``time.perf_counter_ns()`` read;
- how exactly the workers' `clock.Pacer` holds a requested delay (1 us to 10 ms), as the median
  error in % of the delay;
- numaemu's emulated fetch rate per worker (kernel text/rodata line fetches per second of
  processing through `NodeEngine`, in-process as `coordinator.calibrate_scale` runs it for db)
  against the raw numpy gather rate (random single-byte reads from an image-sized buffer),
  measured block for block alternately so that both see the same background load;
- copy population (`worker.fill_partition` writing one node's full image copy into fresh shared
  memory, first touch included, as a worker does) against a raw numpy memcpy of the image;
- a one-site stop_machine patch on 2 nodes, with the modeled delays off (`patch_bench.run_patch_bench`,
  as ``scripts/patch_speed.py`` runs it) against a shared-memory flag round trip and a
  ``multiprocessing.Barrier`` round between two processes (`baselines`).

From the delay-error curve it derives the smallest per-fetch latency difference the host can
emulate to within 2% (`min_latency_difference_ns`). Every figure that has a goal is judged against
it, met or missed (`calibration_report`, which also prints the summary): delay error <= 2% for
batch delays >= 20 us (Quartz reports 0.2-9%, HME < 5%: BACKGROUND.md s.5), an emulated fetch rate
>= 30% of the raw gather rate, and a stop_machine round <= 5x the flag round trip and under a
Barrier round (README, "Patching speed").

The measuring functions take their clocks and sizes as arguments, and the derivations are pure
functions, so tests check them with fakes (tests/test_calibrate.py).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from numaemu.host.clock import Pacer, measure_oversleep_ns, time_scale
from numaemu.host.segments import MemoryLayout, Segment, new_token, segment_name
from numaemu.measure.baselines import barrier_round_ns, flag_round_trip_ns
from numaemu.measure.calibration_report import (
    DELAY_ERROR_GOAL_PCT,
    Goal,
    batch_goal,
    copy_figure,
    delay_goal,
    fetch_goal,
    patch_barrier_goal,
    patch_flag_goal,
    simulation_goal,
)
from numaemu.model.hardware import SIMPLE, HardwareProfile
from numaemu.model.image import PAGE_SIZE, KernelImage
from numaemu.model.node_hardware import NodeHardware, page_kinds, page_shift_for
from numaemu.model.placement import place
from numaemu.model.topology import Topology
from numaemu.model.workloads import Workload
from numaemu.patching.patch_bench import BP_BATCH, measure_bp_batch_us, measure_patch_round_us
from numaemu.runtime.inprocess import local_node
from numaemu.runtime.run_node import BATCH_FETCHES
from numaemu.runtime.worker import fill_partition

__all__ = [
    "DELAYS_NS",
    "Effort",
    "FULL",
    "QUICK",
    "Calibration",
    "delay_error_pct",
    "min_emulable_delay_ns",
    "min_latency_difference_ns",
    "measure_clock_read_ns",
    "measure_delay_errors",
    "samples_for",
    "calibrate",
]

DELAYS_NS = (1_000, 5_000, 20_000, 100_000, 1_000_000, 10_000_000)  # requested busy-waits
GATHER_POOL_BLOCKS = 64  # distinct index blocks, so repeated gathers do not hit a warm CPU cache


@dataclass(frozen=True)
class Effort:
    """How many samples each figure takes."""

    clock_blocks: int  # blocks of 10,000 clock reads
    delay_budget_ns: int  # per requested delay, about this much waiting in all ...
    delay_samples: tuple[int, int]  # ... but at least / at most this many samples
    fetch_s: float  # seconds of alternating gather blocks and engine batches
    copies: int  # memcpy and fill_partition repeats
    flag_rounds: int
    barrier_rounds: int
    patch_repeats: int  # one-site stop_machine patch calls


FULL = Effort(clock_blocks=50, delay_budget_ns=400_000_000, delay_samples=(20, 2000), fetch_s=3.0, copies=15, flag_rounds=20_000, barrier_rounds=2_000, patch_repeats=200)
# Baselines time blocks of 1,000 flag rounds and 100 Barrier rounds, the first of which may
# still wait for the peer process to start: at least 5 blocks, so the median skips it.
QUICK = Effort(clock_blocks=5, delay_budget_ns=30_000_000, delay_samples=(5, 100), fetch_s=0.3, copies=3, flag_rounds=5_000, barrier_rounds=500, patch_repeats=20)


@dataclass(frozen=True)
class Calibration:
    """What one run measured (the figures of the JSON ``results`` object, before derivations)."""

    clock_read_ns: float
    delay_error_pct: dict[int, float]  # requested delay (ns) -> median error (%)
    gather_rate_per_s: float  # random reads over the whole buffer (the goal's baseline)
    gather_warm_rate_per_s: float  # the same index block again: reads a warm CPU cache serves
    fetch_rate_per_s: float
    fetches_per_batch: float  # kernel fetches in a typical (median) db batch
    time_scale: float  # what `run`'s rule (`clock.time_scale`) gives for these batches
    memcpy_gbps: float
    replicate_gbps: float
    flag_round_us: float
    barrier_round_us: float
    patch_round_us: float
    hardware: str = "simple"  # the profile whose caches and TLBs were simulated
    simulation_rate_per_s: float = 0.0  # hierarchy.Hierarchy alone, hot caches (0: not measured)
    simulation_cold_rate_per_s: float = 0.0  # ... every request starting with empty caches
    bp_one_site_us: float = 0.0  # text_poke_bp, one site, 2 nodes, modeled delays off (0: not measured)
    bp_batch_us: float = 0.0  # ... BP_BATCH sites in one call

    @property
    def min_emulable_delay_ns(self) -> int | None:
        return min_emulable_delay_ns(self.delay_error_pct)

    @property
    def min_latency_difference_ns(self) -> float | None:
        return min_latency_difference_ns(self.min_emulable_delay_ns, self.fetches_per_batch, self.time_scale)

    @property
    def goals(self) -> tuple[Goal, ...]:
        """Every goal, met or not, in the order of the figures; then copy population, which has
        no goal (`calibration_report`)."""
        return (
            delay_goal(self.delay_error_pct),
            fetch_goal(self.fetch_rate_per_s, self.gather_rate_per_s),
            simulation_goal(self.simulation_rate_per_s, self.simulation_cold_rate_per_s, self.gather_rate_per_s, self.hardware),
            patch_flag_goal(self.patch_round_us, self.flag_round_us),
            patch_barrier_goal(self.patch_round_us, self.barrier_round_us),
            copy_figure(self.replicate_gbps, self.memcpy_gbps),
            batch_goal(self.bp_batch_us, self.bp_one_site_us, BP_BATCH),
        )

    @classmethod
    def from_json(cls, results: Mapping[str, Any]) -> Calibration:
        """The figures of a calibration's JSON ``results`` (the derived ones are derived again)."""
        names = {f.name for f in fields(cls)}
        figures = {k: v for k, v in results.items() if k in names}
        figures["delay_error_pct"] = {int(k): float(v) for k, v in results["delay_error_pct"].items()}
        return cls(**figures)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["delay_error_pct"] = {str(k): v for k, v in sorted(self.delay_error_pct.items())}
        out["min_emulable_delay_ns"] = self.min_emulable_delay_ns
        out["min_latency_difference_ns"] = self.min_latency_difference_ns
        out["ratios"] = {
            "fetch_vs_gather": self.fetch_rate_per_s / self.gather_rate_per_s,
            "fetch_vs_gather_warm": self.fetch_rate_per_s / self.gather_warm_rate_per_s,
            "simulation_vs_gather": self.simulation_rate_per_s / self.gather_rate_per_s,
            "replicate_vs_memcpy": self.replicate_gbps / self.memcpy_gbps,
            "patch_vs_flag": self.patch_round_us / self.flag_round_us,
            "patch_vs_barrier": self.patch_round_us / self.barrier_round_us,
        }
        out["goals"] = [g.to_json() for g in self.goals]
        return out


# --- pure derivations ------------------------------------------------------------------------


def delay_error_pct(requested_ns: int, actual_ns: Sequence[int]) -> float:
    """Median of |actual - requested| / requested, in %."""
    return statistics.median(100.0 * abs(a - requested_ns) / requested_ns for a in actual_ns)


def min_emulable_delay_ns(errors: Mapping[int, float], limit_pct: float = DELAY_ERROR_GOAL_PCT) -> int | None:
    """The smallest requested delay from which on every requested delay was held to within
    `limit_pct` (None if even the longest was not): a threshold, so one lucky short delay
    below a failing longer one does not count."""
    best = None
    for d in sorted(errors, reverse=True):
        if errors[d] > limit_pct:
            break
        best = d
    return best


def min_latency_difference_ns(min_delay_ns: int | None, fetches_per_batch: float, scale: float) -> float | None:
    """The smallest per-fetch latency difference this host can emulate to within 2%.

    A worker paces per batch (clock.py): a batch of F fetches that each cost Delta more emulated
    ns is held scale * F * Delta wall ns longer. The pacer holds any delay from D_min up (the
    smallest delay whose error is <= 2%, `min_emulable_delay_ns`) to within 2%, so the smallest
    difference whose added delay alone is held that well is

        Delta_min = D_min / (scale * F)

    e.g. 20 us / (1.1 * 26,000 fetches) = 0.7 ns. It is a lower bound: the error of a whole
    batch's delay also counts when two runs are compared.
    """
    if min_delay_ns is None or fetches_per_batch <= 0 or scale <= 0:
        return None
    return min_delay_ns / (scale * fetches_per_batch)


# --- measurements ----------------------------------------------------------------------------


def measure_clock_read_ns(blocks: int, clock: Callable[[], int] = time.perf_counter_ns, timer: Callable[[], int] = time.perf_counter_ns) -> float:
    """Median over `blocks` blocks of 10,000 back-to-back reads of `clock`, less the same loop
    run empty (what a worker pays per read beyond its loop)."""
    per_block = []
    for _ in range(blocks):
        t0 = timer()
        for _ in range(10_000):
            clock()
        t1 = timer()
        for _ in range(10_000):
            pass
        t2 = timer()
        per_block.append(max(0, (t1 - t0) - (t2 - t1)) / 10_000)
    return statistics.median(per_block)


def samples_for(delay_ns: int, effort: Effort) -> int:
    lo, hi = effort.delay_samples
    return max(lo, min(hi, effort.delay_budget_ns // delay_ns))


def measure_delay_errors(delays: Sequence[int], effort: Effort, pacer: Pacer) -> dict[int, float]:
    """Hold each requested delay with `pacer` (scale 1) exactly as a worker holds a batch, from a
    clock read at the batch's start, and time it to the next clock read after: the median
    error (%) per delay."""
    assert pacer.scale == 1.0
    clock = pacer.clock
    out = {}
    for d in delays:
        actual = []
        for _ in range(samples_for(d, effort)):
            start = clock()
            pacer.pace(start, d)
            actual.append(clock() - start)
        out[d] = delay_error_pct(d, actual)
    return out


def measure_simulation(hardware: HardwareProfile, image: KernelImage, workload: Workload, seconds: float, seed: int = 0) -> dict[str, float]:
    """The cache and TLB simulation alone (`hierarchy.Hierarchy.run`, what a worker runs per
    batch), on batches of `workload`'s requests drawn as a worker draws them: median accesses
    per second, hot and cold. 0 for the simple profile, which simulates no hierarchy."""
    if hardware.simple:
        return {"simulation_rate_per_s": 0.0, "simulation_cold_rate_per_s": 0.0}
    rng = np.random.default_rng([seed, 0x73696D])  # "sim"
    per_batch = max(1, int(BATCH_FETCHES // float(workload.lengths.mean())))
    batches = [rng.choice(workload.n_templates, per_batch, p=workload.weights) for _ in range(8)]
    node = NodeHardware(profile=hardware, page_shift=page_shift_for("none"), llc_copies=1, walk_home=0, queue_row=None, pgd_nodes=(), forks_per_kernel_ns=None)
    line_base = np.arange(image.n_pages, dtype=np.int64) * (PAGE_SIZE // 64)
    home = np.zeros(image.n_pages, dtype=np.int64)
    kinds = page_kinds(image)
    out = {}
    for key, cold in (("simulation_rate_per_s", False), ("simulation_cold_rate_per_s", True)):
        hier, _, _ = node.build(1, [1.0])
        rates = []
        end = time.perf_counter_ns() + int(seconds / 2 * 1e9)
        i = 0
        while time.perf_counter_ns() < end or i < 5:
            t = batches[i % len(batches)]
            vlines, lens = workload.gather(t), workload.lengths[t]
            t0 = time.perf_counter_ns()
            hier.run(vlines, lens, line_base, home, kinds, cold)
            rates.append(len(vlines) * 1e9 / (time.perf_counter_ns() - t0))
            i += 1
        out[key] = statistics.median(rates[2:] or rates)  # the first batches compile and fill
    return out


def measure_gather_and_fetch(image: KernelImage, workload: Workload, topology: Topology, sharing: float, seconds: float, seed: int = 0,
                             hardware: HardwareProfile = SIMPLE) -> dict[str, float]:
    """Alternate raw gather blocks and one engine batch for `seconds`; medians of each rate.

    Raw: `BATCH_FETCHES` random single-byte reads (``take``) from a buffer of the image's size,
    a fresh index block each time from a pool of 8 MiB of indices (random reads over the whole
    buffer, so mostly from memory: the goal's baseline); and, for context, the same block
    again (its 16,384 lines stay in the CPU caches, ~4x faster on the dev VM). numaemu: one db
    batch of every task through `NodeEngine` (`coordinator.local_node`, as `calibrate_scale`
    times it); its fetches are its kernel text and rodata line fetches (hits and misses).
    """
    rng = np.random.default_rng([seed, 0x67617468])  # "gath"
    buf = rng.integers(0, 256, len(image.data), dtype=np.uint8)
    pool = rng.integers(0, len(buf), (GATHER_POOL_BLOCKS, BATCH_FETCHES))
    node = local_node(image, workload, topology, cold=False, user_local=True, seed=seed, hardware=hardware)
    c = node.engine.counters
    for i in range(3):  # warm up: page faults, caches
        buf.take(pool[i])
        node.batch()
    gather, warm, fetch, fetches = [], [], [], []
    processing = 0
    emulated = 0.0
    end = time.perf_counter_ns() + int(seconds * 1e9)
    i = 0
    while time.perf_counter_ns() < end or i < 5:
        before = c.cache_hits + int(c.text_fetches.sum())
        t0 = time.perf_counter_ns()
        buf.take(pool[i % GATHER_POOL_BLOCKS])
        t1 = time.perf_counter_ns()
        buf.take(pool[0])
        t2 = time.perf_counter_ns()
        emulated += node.batch()
        t3 = time.perf_counter_ns()
        n = c.cache_hits + int(c.text_fetches.sum()) - before
        gather.append(BATCH_FETCHES * 1e9 / (t1 - t0))
        warm.append(BATCH_FETCHES * 1e9 / (t2 - t1))
        fetch.append(n * 1e9 / (t3 - t2))
        fetches.append(n)
        processing += t3 - t2
        i += 1
    return {
        "gather_rate_per_s": statistics.median(gather),
        "gather_warm_rate_per_s": statistics.median(warm),
        "fetch_rate_per_s": statistics.median(fetch),
        "fetches_per_batch": float(statistics.median(fetches)),
        "time_scale": time_scale(processing, emulated, sharing),
    }


def measure_memcpy_gbps(nbytes: int, repeats: int) -> float:
    """numpy copy of an `nbytes` buffer into another (both touched before): bytes per ns."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)
    np.copyto(dst, src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        np.copyto(dst, src)
        times.append(time.perf_counter_ns() - t0)
    return nbytes / statistics.median(times)


def measure_replicate_gbps(image: KernelImage, repeats: int) -> float:
    """`fill_partition` writing one node's full image copy into a fresh shared-memory segment
    each time (so page faults of first touch count, as in a worker): image bytes per ns."""
    placement = place(image, 1, "single")
    layout = MemoryLayout.for_nodes((placement.image_bytes(0),), user_bytes=0)
    times = []
    for _ in range(repeats):
        seg = Segment.create(segment_name("cal", new_token()), layout.size)
        try:
            mem = seg.array(np.uint8)
            t0 = time.perf_counter_ns()
            fill_partition(mem, image.data, layout, 0, placement.hosted[0], 0)
            times.append(time.perf_counter_ns() - t0)
            del mem
        finally:
            seg.close()
            seg.unlink()
    return layout.image_bytes[0] / statistics.median(times)


def calibrate(image: KernelImage, workload: Workload, topology: Topology, sharing: float, effort: Effort, start_method: str = "fork", progress: Callable[[str], None] | None = None,
              hardware: HardwareProfile = SIMPLE) -> Calibration:
    """Measure every figure, in the order of the output."""
    say = progress or (lambda _: None)
    say("clock reads")
    clock_ns = measure_clock_read_ns(effort.clock_blocks)
    say("busy-wait accuracy")
    delays = measure_delay_errors(DELAYS_NS, effort, Pacer(1.0, shared_core=sharing > 1, oversleep_ns=measure_oversleep_ns()))
    say("gather and fetch rates")
    rates = measure_gather_and_fetch(image, workload, topology, sharing, effort.fetch_s, hardware=hardware)
    say(f"cache simulation ({hardware.name})")
    simulation = measure_simulation(hardware, image, workload, effort.fetch_s)
    say("memcpy and copy population")
    memcpy = measure_memcpy_gbps(len(image.data), effort.copies)
    replicate = measure_replicate_gbps(image, effort.copies)
    say("flag and Barrier rounds")
    flag = flag_round_trip_ns(effort.flag_rounds, start_method) / 1e3
    barrier = barrier_round_ns(effort.barrier_rounds, start_method) / 1e3
    say("stop_machine patch round")
    patch = measure_patch_round_us(topology, effort.patch_repeats, start_method)
    say("text_poke_bp: one site and a batch")
    bp_one, bp_batch = measure_bp_batch_us(topology, effort.patch_repeats, start_method)
    return Calibration(
        bp_one_site_us=bp_one,
        bp_batch_us=bp_batch,
        clock_read_ns=clock_ns,
        delay_error_pct=delays,
        memcpy_gbps=memcpy,
        replicate_gbps=replicate,
        flag_round_us=flag,
        barrier_round_us=barrier,
        patch_round_us=patch,
        hardware=hardware.name,
        **rates,
        **simulation,
    )
