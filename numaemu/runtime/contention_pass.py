"""The coordinator's pass over every node's engine before a run, for the queueing model.

`measure_traffic` builds each node's engine in this process, exactly as its worker will
(`run_node.node_engine`), on a memory segment of zeros (calloc'd: it costs no memory, and the
counts do not depend on the bytes), runs a few batches and counts what a request costs without
queueing and which homes it reads. `contention.solve` turns that into the wait a line from each
home costs each node, which every worker then charges for the whole run (`with_queueing`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from numaemu.host.segments import TASK_SLOT
from numaemu.model.contention import Queueing, Traffic, solve
from numaemu.model.hierarchy import HierarchyCounts
from numaemu.model.tasks import TASKS_PER_NODE
from numaemu.model.topology import Topology
from numaemu.runtime.run_node import WorkerConfig, node_engine, run_batch

__all__ = ["measure_traffic", "queueing_for", "PASS_BATCHES"]

PASS_BATCHES = 3  # after the engine's warm-up (NodeEngine.warm), as a worker's


def measure_traffic(configs: list[WorkerConfig], mem_size: int) -> Traffic:
    n = len(configs)
    ns = np.zeros(n)
    lines = np.zeros((n, n))
    stall = np.zeros((n, n))
    mem = np.zeros(mem_size, dtype=np.uint8)
    for cfg in configs:
        engine = node_engine(cfg, mem)
        assert engine.hierarchy is not None and engine.charges is not None
        tasks = np.zeros(TASKS_PER_NODE, dtype=TASK_SLOT)
        tasks["budget"] = -1
        owned = np.arange(TASKS_PER_NODE)
        before = HierarchyCounts(n)
        before.add(engine.hierarchy.counts)
        requests, emulated = engine.counters.requests, 0.0
        for _ in range(PASS_BATCHES):
            emulated += run_batch(engine, tasks, owned, cfg.seed, 0.0)[0]
        k = engine.counters.requests - requests
        c = engine.hierarchy.counts
        text = (c.memory_by_home[0] - before.memory_by_home[0]) / k
        data = (c.memory_by_home[1] - before.memory_by_home[1]) / k
        walks = np.zeros(n)
        walks[cfg.hardware.walk_home if cfg.hardware else 0] = (c.walk_served[3] - before.walk_served[3]) / k
        ns[cfg.node] = emulated / k
        lines[cfg.node] = text + data + walks
        stall[cfg.node] = text + walks + data / engine.charges.mlp
    return Traffic(ns, lines, stall)


def queueing_for(configs: list[WorkerConfig], topology: Topology, mem_size: int) -> tuple[list[WorkerConfig], Queueing, Traffic]:
    """`configs` with each node's wait per home set, and the fixed point they come from."""
    hw = configs[0].hardware
    assert hw is not None
    profile = hw.profile
    traffic = measure_traffic(configs, mem_size)
    n = topology.n_nodes
    cores = [max(1, len(node.cpus)) for node in topology.nodes]
    socket = np.arange(n) // profile.nodes_per_socket
    q = solve(traffic, cores, np.full(n, profile.memory_gbs), profile.link_gbs, socket)
    out = [replace(cfg, hardware=replace(cfg.hardware, queue_row=tuple(q.wait_ns[cfg.node].tolist()))) for cfg in configs if cfg.hardware is not None]
    return out, q, traffic
