"""Turning emulated time into wall-clock time.

Each worker charges emulated time per batch, never per access: one ``perf_counter_ns()`` costs
as much as an emulated access (BACKGROUND.md s.5). After a batch that emulated E ns, the worker
holds the batch's wall time to ``scale * E`` from when the batch began, as Quartz injects its
delay at the end of an epoch (Middleware 2015). If the batch's own processing took longer than
that, nothing is waited and the excess is recorded as an *overrun*: the share of paced time lost
to overruns is the fidelity the run reports.

Waiting spins for the last stretch only: longer waits sleep first (calibrated by the measured
oversleep of ``time.sleep``), and when nodes share cores every spin yields, so a waiting node
never starves one that shares its core (pure spinning collapses under oversubscription).

`time_scale` picks the scale: the smallest dilation (>= 1) at which a worker's processing
cost fits in a given share of the paced time.

`Unpaced` is the clock of ``--delays none``: the same interface, but a batch ends when its
processing ends, so no latency is injected and there is no scale to divide by.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["spin", "Pacer", "Unpaced", "measure_oversleep_ns", "time_scale", "TARGET_BUSY_SHARE", "SHARED_BUSY_SHARE", "OVERSLEEP_PROBE_NS"]

TARGET_BUSY_SHARE = 0.5  # processing may take at most half the paced time, leaving room for noise
# When nodes share cores, a node whose wait ends while another holds the core wakes late, and
# every late ns stretches its wall clock. Measured here (kunpeng920, 4 nodes on 2 cores, db hot):
# the nodes ran 12.8% beyond their paced time at scale 1.3 (busy share 0.5), 5.6% at 2.6, 3.1%
# at 4. So shared cores get half the busy share: twice the dilation.
SHARED_BUSY_SHARE = 0.25
SPIN_ONLY_NS = 200_000  # below this remaining wait, spin rather than sleep


# ``numaemu check`` (explore/scheduler.py) sets this: every deliberate window (`spin`) is then a
# point where its scheduler chooses which node runs next, instead of time passing.
point: Callable[[], None] | None = None


def spin(ns: int, clock: Callable[[], int] = time.perf_counter_ns) -> None:
    """Busy-wait `ns` nanoseconds (for short, deliberate windows; `Pacer` for pacing). Under
    ``numaemu check`` the window is a scheduling point instead (`point`)."""
    if point is not None:
        point()
        return
    end = clock() + ns
    while clock() < end:
        pass


OVERSLEEP_PROBE_NS = 1_000_000  # a db batch is held ~1-2 ms, so the pacer sleeps about this long


def measure_oversleep_ns(
    samples: int = 20,
    clock: Callable[[], int] = time.perf_counter_ns,
    sleep: Callable[[float], None] = time.sleep,
    probe_ns: int = OVERSLEEP_PROBE_NS,
) -> int:
    """The extra time `sleep(probe_ns)` takes beyond what was asked on this host: the 90th
    percentile, as the margin the pacer wakes up early by.

    Sleeps as long as the pacer's, because the overshoot grows with the sleep (timer slack,
    then wake-up latency): on the 2-core dev VM a 100 us sleep overshoots ~55 us at the median,
    a 1 ms sleep ~80 us, p90 ~100 us. A margin that is too small makes the batch late (with
    55 us, `numaemu calibrate` measured 1-2 ms delays 2.1-2.8% late); one too large only
    spins a little longer (with 80-100 us: 0.1-0.4%).
    """
    extra = []
    for _ in range(samples):
        t0 = clock()
        sleep(probe_ns / 1e9)
        extra.append(clock() - t0 - probe_ns)
    extra.sort()
    return max(0, extra[min(len(extra) - 1, (9 * len(extra)) // 10)])


@dataclass
class Pacer:
    scale: float
    shared_core: bool  # nodes outnumber the cores they run on: yield while spinning
    oversleep_ns: int = 60_000
    clock: Callable[[], int] = time.perf_counter_ns
    sleep: Callable[[float], None] = time.sleep
    yield_cpu: Callable[[], object] = os.sched_yield
    paced_ns: int = 0  # wall time the batches were held to
    overrun_ns: int = 0  # processing time beyond the paced time (fidelity lost)
    # Called between sleeps of at most `tick_ns` during a long wait (a large --time-scale holds
    # a batch for seconds): the worker's abort check, so a stop is never held up by pacing.
    tick: Callable[[], object] | None = None
    tick_ns: int = 20_000_000

    def pace(self, batch_start_ns: int, emulated_ns: float) -> int:
        """Hold the batch that began at `batch_start_ns` to `scale * emulated_ns`. Returns now."""
        target = int(self.scale * emulated_ns)
        deadline = batch_start_ns + target
        self.paced_ns += target
        now = self.clock()
        if now >= deadline:
            self.overrun_ns += now - deadline
            return now
        return self.wait_until(deadline)

    def wait_until(self, deadline_ns: int) -> int:
        now = self.clock()
        remaining = deadline_ns - now
        while self.tick is not None and remaining - self.oversleep_ns > self.tick_ns + SPIN_ONLY_NS:
            self.sleep(self.tick_ns / 1e9)
            self.tick()
            now = self.clock()
            remaining = deadline_ns - now
        if remaining > SPIN_ONLY_NS + self.oversleep_ns:
            self.sleep((remaining - self.oversleep_ns) / 1e9)
            now = self.clock()
        while now < deadline_ns:
            if self.shared_core:
                self.yield_cpu()
            now = self.clock()
        return now

    @property
    def overrun_share(self) -> float:
        return self.overrun_ns / self.paced_ns if self.paced_ns else 0.0


@dataclass
class Unpaced(Pacer):
    """``--delays none``: a batch is never held; `pace` returns at once and records nothing, so
    `paced_ns` and `overrun_ns` stay 0 (no fidelity to lose). `wait_until` (the common start
    instant) still waits as `Pacer`'s does. `scale` is unused."""

    scale: float = 1.0
    shared_core: bool = False

    def pace(self, batch_start_ns: int, emulated_ns: float) -> int:
        return self.clock()


def time_scale(processing_ns: float, emulated_ns: float, sharing: float = 1.0, busy_share: float | None = None) -> float:
    """Dilation so that processing (x `sharing` processes per core) fits in `busy_share` of the
    paced time (default `TARGET_BUSY_SHARE`, or `SHARED_BUSY_SHARE` when sharing > 1); at least
    1, rounded up to two significant digits so reports read cleanly."""
    if emulated_ns <= 0:
        raise ValueError("emulated_ns must be > 0")
    if busy_share is None:
        busy_share = SHARED_BUSY_SHARE if sharing > 1 else TARGET_BUSY_SHARE
    raw = max(1.0, processing_ns * max(1.0, sharing) / (busy_share * emulated_ns))
    exp = math.floor(math.log10(raw)) - 1
    # Scale by exact integer powers of ten, so 1.2 comes back as 1.2, not 1.2000000000000002.
    if exp >= 0:
        return float(math.ceil(raw / 10**exp) * 10**exp)
    tens: int = 10**-exp  # exp < 0 here: a positive power of ten, an int
    return math.ceil(raw * tens) / tens
