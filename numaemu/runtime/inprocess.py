"""One node's engine run in this process, on all-local memory: the time-scale calibration
(`calibrate_scale`, also what ``numaemu calibrate`` times) and the verification replay
(`expected_checksum`, what ``run --verify`` compares every task's checksum with).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from numaemu.host.clock import measure_oversleep_ns, time_scale
from numaemu.host.segments import TASK_SLOT, MemoryLayout
from numaemu.model.cache import DirectMappedCache
from numaemu.model.engine import NodeEngine
from numaemu.model.hardware import SIMPLE, HardwareProfile
from numaemu.model.image import LINE_SIZE, KernelImage
from numaemu.model.node_hardware import NodeHardware, page_kinds, page_shift_for
from numaemu.model.placement import place
from numaemu.model.tasks import TASKS_PER_NODE, plan_requests
from numaemu.model.topology import Topology
from numaemu.model.workloads import Workload
from numaemu.runtime.run_node import run_batch
from numaemu.runtime.worker import fill_partition

__all__ = ["LocalNode", "local_node", "calibrate_scale", "expected_checksum"]

@dataclass(frozen=True)
class LocalNode:
    """One node's engine in-process, on all-local memory, with its tasks: what
    `calibrate_scale` (and ``numaemu calibrate``) times, batch by batch, as a worker runs them."""

    engine: NodeEngine
    tasks: np.ndarray
    seed: int

    def batch(self) -> float:
        """Run one batch of every task (no migration); return its emulated ns."""
        emulated, _ = run_batch(self.engine, self.tasks, np.arange(len(self.tasks)), self.seed, 0.0)
        return emulated


def local_node(image: KernelImage, workload: Workload, topology: Topology, *, cold: bool, user_local: bool, seed: int, hardware: HardwareProfile = SIMPLE) -> LocalNode:
    """A node holding the whole image, charged the topology's smallest latency, with its memory
    filled as a worker fills it, on `hardware` (no queueing, no per-process PGDs: the least a
    request can cost)."""
    placement = place(image, 1, "single")
    layout = MemoryLayout.for_nodes((placement.image_bytes(0),))
    mem = np.zeros(layout.size, dtype=np.uint8)
    fill_partition(mem, image.data, layout, 0, placement.hosted[0], seed)
    local = min(x for row in topology.latency_ns for x in row if x is not None)
    hier = charges = kinds = None
    if not hardware.simple:
        node_hw = NodeHardware(profile=hardware, page_shift=page_shift_for("none"), llc_copies=1, walk_home=0, queue_row=None, pgd_nodes=(), forks_per_kernel_ns=None)
        hier, charges, _ = node_hw.build(1, [local])
        kinds = page_kinds(image)
    engine = NodeEngine(0, mem, placement.tables[0], layout.part_offset, (layout.user_offset(0),), layout.user_bytes, np.array([local]), workload,
                        cold=cold, user_local=user_local, cache=DirectMappedCache(), seed=seed, hierarchy=hier, charges=charges, page_kind=kinds)
    engine.prepare()
    engine.warm()
    tasks = np.zeros(TASKS_PER_NODE, dtype=TASK_SLOT)
    tasks["budget"] = -1
    return LocalNode(engine, tasks, seed)


def calibrate_scale(image: KernelImage, workload: Workload, topology: Topology, *, cold: bool, user_local: bool, sharing: float, seed: int, seconds: float = 0.3,
                    hardware: HardwareProfile = SIMPLE) -> tuple[float, dict[str, Any]]:
    """Time the node engine in-process on all-local memory and choose the time scale.

    The all-local case has the least emulated time per request, so the scale that fits it fits
    every policy; every policy of a run then uses the same scale.
    """
    node = local_node(image, workload, topology, cold=cold, user_local=user_local, seed=seed, hardware=hardware)
    emulated = 0.0
    for _ in range(2):  # warm up: page faults, caches
        node.batch()
    t0 = time.perf_counter_ns()
    batches = 0
    while time.perf_counter_ns() - t0 < seconds * 1e9 or batches < 3:
        emulated += node.batch()
        batches += 1
    processing = time.perf_counter_ns() - t0
    scale = time_scale(processing, emulated, sharing)
    return scale, {
        "processing_ns_per_batch": processing / batches,
        "emulated_ns_per_batch": emulated / batches,
        "sharing": sharing,
        "oversleep_ns": measure_oversleep_ns(),
    }


def expected_checksum(master: np.ndarray, workload: Workload, seed: int, task: int, n_requests: int) -> int:
    """Replay `task`'s first `n_requests` requests against the master image (see tasks.py)."""
    words = master.view(np.uint64).reshape(-1, LINE_SIZE // 8)
    total = 0
    step = 4096
    for first in range(0, n_requests, step):
        count = min(step, n_requests - first)
        plan = plan_requests(seed, task, first, count, workload.n_templates, 0, 1, 0.0, workload.cdf)
        lines = workload.gather(plan.templates)
        total += int(words.take(lines, axis=0).sum(dtype=np.uint64))
    return total & ((1 << 64) - 1)
