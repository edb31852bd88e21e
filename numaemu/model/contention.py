"""Queueing at the memory and the links of the nodes that serve the misses (pure logic).

Every node of the emulated machine runs the workload on every one of its cores at once (a
throughput benchmark, as the published microbenchmarks and database runs are). The lines they
read from node h's memory arrive at h's memory controllers, which deliver `memory_gbs`; lines
from another socket also cross the inter-socket links, `link_gbs` each way a socket. Each is
modelled as an M/D/1 queue (Poisson arrivals, a fixed service time of 64 bytes at the
bandwidth), whose mean wait is

    W = rho * S / (2 * (1 - rho)),   S = 64 B / bandwidth,   rho = arrivals * S.

A wait makes requests slower, and slower requests arrive less often, so the waits are a fixed
point, which `solve` finds. Under ``single`` every node's misses
go to node 0, whose queue then grows with the number of nodes (the scaling argument of both
replication series, and of IRIX's); under ``replicate`` each node's go to itself.

The rates come from a short pass of every node's engine in the coordinator before the run
(`runtime.policy_run`), so what each node's worker is charged per miss includes the wait at
the home that serves it, fixed for the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from numaemu.model.arrays import F64, I64

__all__ = ["Traffic", "Queueing", "solve", "LINE_BYTES"]

LINE_BYTES = 64
_MAX_RHO = 0.995  # the queue formula's pole; the fixed point itself keeps rho below 1
_SWEEPS = 100


@dataclass(frozen=True)
class Traffic:
    """Per node j, measured by the coordinator's pass: emulated ns a request without queueing;
    lines a request reads from each home h, those that stall in full (instruction fetches,
    page-walk reads) and those that overlap (data, already divided by the MLP)."""

    ns_per_request: F64  # [j]
    lines: F64  # [j, h]: memory reads (bandwidth)
    stall_lines: F64  # [j, h]: reads whose wait is charged in full (text + walks) plus data / MLP

    def to_json(self) -> dict[str, Any]:
        return {"ns_per_request": self.ns_per_request.round(2).tolist(), "lines_per_request": self.lines.round(3).tolist()}


@dataclass(frozen=True)
class Queueing:
    """The fixed point: the mean wait at each home's memory and at each socket's links (ns),
    their utilisations, and `wait_ns[j][h]` what a line from h costs node j beyond its latency."""

    memory_wait_ns: F64
    memory_rho: F64
    link_wait_ns: F64  # per socket
    link_rho: F64
    wait_ns: F64  # [j, h]
    iterations: int  # Gauss-Seidel sweeps to the fixed point

    def to_json(self) -> dict[str, Any]:
        return {
            "memory_wait_ns": self.memory_wait_ns.round(3).tolist(), "memory_utilisation": self.memory_rho.round(4).tolist(),
            "link_wait_ns": self.link_wait_ns.round(3).tolist(), "link_utilisation": self.link_rho.round(4).tolist(),
            "sweeps": self.iterations,
        }


def solve(traffic: Traffic, cores: npt.ArrayLike, memory_gbs: npt.ArrayLike, link_gbs: float, socket: npt.ArrayLike) -> Queueing:
    """The waits at which every node's request rate and every queue agree (see the module).

    The unknowns are the wait at each home's memory and at each socket's links. Each queue's
    wait, given the others, is the root of an increasing function of its own (a longer wait
    slows the requests that make it), found by Brent's method (scipy.optimize.brentq); sweeps
    over the queues repeat until no wait moves (Gauss-Seidel). A plain damped iteration
    oscillates here: the map from waits to waits falls steeply once a queue is near saturation.
    """
    from scipy.optimize import brentq  # here: scipy.optimize takes ~0.3 s to import, and most commands never queue

    n = len(traffic.ns_per_request)
    ncores = np.asarray(cores, dtype=np.float64)
    sock: I64 = np.asarray(socket, dtype=np.int64)
    n_sockets = int(sock.max()) + 1
    service = np.concatenate([LINE_BYTES / np.asarray(memory_gbs, dtype=np.float64), np.full(n_sockets, LINE_BYTES / float(link_gbs))])
    remote = sock[:, None] != sock[None, :]  # [j, h]: crosses the links

    def per_line(x: F64) -> F64:  # [j, h]: the wait a line from h costs j
        out: F64 = x[None, :n] + remote * x[n:][sock][None, :]
        return out

    def utilisation(x: F64) -> F64:
        t = traffic.ns_per_request + (traffic.stall_lines * per_line(x)).sum(axis=1)
        rate = ncores[:, None] * traffic.lines / t[:, None]  # lines per ns, [j, h]
        arrivals = np.concatenate([rate.sum(axis=0), np.bincount(sock, weights=(rate * remote).sum(axis=0), minlength=n_sockets)])
        out: F64 = arrivals * service
        return out

    x = np.zeros(n + n_sockets)
    sweeps = 0
    for sweeps in range(1, _SWEEPS + 1):  # noqa: B007 - the count is reported
        before = x.copy()
        for i in range(len(x)):
            if not traffic.lines.any():
                break

            def excess(w: float, i: int = i) -> float:
                x[i] = w
                return w - float(_md1(utilisation(x)[i : i + 1], service[i : i + 1])[0])

            top = float(_md1(np.array([_MAX_RHO]), service[i : i + 1])[0])
            x[i] = 0.0 if excess(0.0) >= 0 else brentq(excess, 0.0, top, xtol=1e-12)
        if np.allclose(x, before, rtol=1e-9, atol=1e-12):
            break
    rho = utilisation(x)
    return Queueing(x[:n].copy(), rho[:n], x[n:].copy(), rho[n:], per_line(x), sweeps)


def _md1(rho: F64, service_ns: F64) -> F64:
    r = np.minimum(rho, _MAX_RHO)
    out: F64 = r * service_ns / (2.0 * (1.0 - r))
    return out
