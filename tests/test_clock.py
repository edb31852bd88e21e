"""Tests for numaemu.host.clock: pacing with an injected clock (no real sleeping) and time_scale."""

from __future__ import annotations

import pytest

from numaemu.host.clock import OVERSLEEP_PROBE_NS, SPIN_ONLY_NS, Pacer, measure_oversleep_ns, time_scale


class FakeClock:
    """Time in ns. Every read of `clock()` returns the time, then advances it by `tick` (a read
    is not free); `sleep(s)` advances it by s plus `oversleep` ns; `yield_cpu()` is counted."""

    def __init__(self, now: int = 0, tick: int = 1000, oversleep: int = 0) -> None:
        self.now = now
        self.tick = tick
        self.oversleep = oversleep
        self.reads = 0
        self.sleeps: list[int] = []  # asked durations, in ns
        self.yields = 0

    def clock(self) -> int:
        t = self.now
        self.now += self.tick
        self.reads += 1
        return t

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        ns = round(seconds * 1e9)
        self.sleeps.append(ns)
        self.now += ns + self.oversleep

    def yield_cpu(self) -> None:
        self.yields += 1


def _pacer(fake: FakeClock, scale: float = 1.0, shared_core: bool = False, oversleep_ns: int = 60_000) -> Pacer:
    return Pacer(scale, shared_core, oversleep_ns, clock=fake.clock, sleep=fake.sleep, yield_cpu=fake.yield_cpu)


def test_long_wait_sleeps_then_spins_to_the_deadline() -> None:
    fake = FakeClock(now=100_000, tick=1000)
    pacer = _pacer(fake, scale=2.0)
    end = pacer.pace(0, 1_000_000.0)  # target 2 ms after the batch began at 0
    # Reads: 100,000 in pace; 101,000 in wait_until, 1,899,000 remaining, so it sleeps
    # 1,899,000 - 60,000 (the expected oversleep) = 1,839,000 ns; then spins 1000 ns a read.
    assert fake.sleeps == [1_839_000]
    assert end == 2_000_000
    assert fake.yields == 0
    assert pacer.paced_ns == 2_000_000
    assert pacer.overrun_ns == 0
    assert pacer.overrun_share == 0.0


def test_short_wait_only_spins() -> None:
    fake = FakeClock(now=0, tick=1000)
    pacer = _pacer(fake)
    end = pacer.pace(0, 150_000.0)  # 150 us: less than SPIN_ONLY_NS + oversleep, so no sleep
    assert SPIN_ONLY_NS + 60_000 > 150_000
    assert fake.sleeps == []
    assert end == 150_000
    assert fake.reads == 151  # pace's read at 0, then one read per microsecond up to 150,000


def test_sleep_boundary() -> None:
    # Exactly SPIN_ONLY_NS + oversleep remaining: spins; one ns more: sleeps. A tick as long as
    # the wait keeps the spin to one read.
    limit = SPIN_ONLY_NS + 60_000
    at_limit = FakeClock(now=0, tick=limit)
    assert _pacer(at_limit).wait_until(limit) == limit
    assert at_limit.sleeps == []
    above = FakeClock(now=0, tick=limit)
    _pacer(above).wait_until(limit + 1)
    assert above.sleeps == [SPIN_ONLY_NS + 1]


def test_spin_yields_only_when_sharing_a_core() -> None:
    alone, shared = FakeClock(tick=1000), FakeClock(tick=1000)
    _pacer(alone, shared_core=False).pace(0, 50_000.0)
    _pacer(shared, shared_core=True).pace(0, 50_000.0)
    assert alone.yields == 0
    # One yield per spin iteration: reads at 1000 (wait_until) .. 49,000 are below the deadline.
    assert shared.yields == 49
    assert alone.sleeps == shared.sleeps == []


def test_sleep_then_spin_yields_when_shared() -> None:
    fake = FakeClock(now=0, tick=1000)
    end = _pacer(fake, shared_core=True).pace(0, 1_000_000.0)
    # Reads at 0 and 1000, sleep 1,000,000 - 1000 - 60,000 = 939,000, then reads from 941,000:
    # 941,000 .. 999,000 are short of the deadline, each followed by a yield.
    assert fake.sleeps == [939_000]
    assert end == 1_000_000
    assert fake.yields == 59


def test_oversleeping_host_ends_late_but_not_as_overrun() -> None:
    # The host oversleeps by more than the calibrated 60 us: the wait ends past the deadline,
    # but the batch itself was on time, so it is not an overrun.
    fake = FakeClock(now=0, tick=1000, oversleep=100_000)
    pacer = _pacer(fake)
    end = pacer.pace(0, 1_000_000.0)
    assert fake.sleeps == [939_000]
    assert end == 2000 + 939_000 + 100_000
    assert pacer.overrun_ns == 0


def test_overrun_when_processing_exceeded_the_target() -> None:
    fake = FakeClock(now=5000, tick=1000)
    pacer = _pacer(fake, scale=1.0)
    end = pacer.pace(0, 1000.0)
    assert end == 5000  # returns at once
    assert fake.sleeps == [] and fake.yields == 0 and fake.reads == 1
    assert pacer.paced_ns == 1000
    assert pacer.overrun_ns == 4000
    assert pacer.overrun_share == 4.0


def test_exactly_on_the_deadline_is_no_overrun() -> None:
    fake = FakeClock(now=3000, tick=1000)
    pacer = _pacer(fake, scale=3.0)
    assert pacer.pace(0, 1000.0) == 3000
    assert pacer.overrun_ns == 0 and pacer.paced_ns == 3000


def test_accounting_accumulates_over_batches() -> None:
    fake = FakeClock(now=0, tick=1000)
    pacer = _pacer(fake, scale=1.5)
    t = pacer.pace(0, 10_000.0)  # target 15,000: waits
    assert t == 15_000
    fake.now = t + 40_000  # the next batch took 40 us to process
    t2 = pacer.pace(t, 20_000.0)  # target 30,000: overrun 10,000
    assert t2 == 55_000
    assert pacer.paced_ns == 45_000
    assert pacer.overrun_ns == 10_000
    assert pacer.overrun_share == pytest.approx(10_000 / 45_000)


def test_target_truncates_to_whole_ns() -> None:
    fake = FakeClock(now=10**6, tick=1)
    pacer = _pacer(fake, scale=1.5)
    pacer.pace(10**6, 3.0)  # 4.5 ns -> 4
    assert pacer.paced_ns == 4


def test_overrun_share_without_batches_is_zero() -> None:
    assert _pacer(FakeClock()).overrun_share == 0.0


@pytest.mark.parametrize(
    ("processing", "emulated", "kwargs", "scale"),
    [
        (100, 50, {}, 4.0),  # 100 / (0.5 * 50)
        (10, 100, {}, 1.0),  # never below 1
        (0, 50, {}, 1.0),
        (1234, 10, {}, 250),  # 246.8, rounded up to two significant digits
        (1.25, 2, {}, 1.3),
        (99.1, 2, {}, 100),
        (12345, 2, {}, 13000),
        (10.01, 2, {}, 11),
        (100.5, 2, {}, 110),
        (100, 50, {"sharing": 2}, 16.0),  # two processes per core: twice the processing, half the busy share
        (100, 50, {"sharing": 3}, 24.0),
        (100, 50, {"sharing": 2, "busy_share": 0.5}, 8.0),
        (100, 50, {"sharing": 0.5}, 4.0),  # sharing below 1 counts as 1
        (100, 50, {"busy_share": 1.0}, 2.0),
        (100, 50, {"busy_share": 0.25}, 8.0),
    ],
)
def test_time_scale_exact(processing, emulated, kwargs, scale) -> None:
    assert time_scale(processing, emulated, **kwargs) == scale


@pytest.mark.parametrize("emulated", [0, -1, -0.5])
def test_time_scale_rejects_non_positive_emulated(emulated) -> None:
    with pytest.raises(ValueError, match=r"^emulated_ns must be > 0$"):
        time_scale(100, emulated)


@pytest.mark.parametrize("raw", [1.2, 4.1, 9.7])
def test_time_scale_returns_clean_two_digit_values(raw: float) -> None:
    assert time_scale(raw, 2.0) == raw  # raw is already two significant digits


def test_oversleep_is_the_90th_percentile_of_pacer_length_sleeps() -> None:
    fake = FakeClock(tick=0)
    overshoots = iter(range(0, 200_000, 10_000))  # 0, 10, ..., 190 us over, one per sleep

    def sleep(seconds: float) -> None:
        fake.sleeps.append(round(seconds * 1e9))
        fake.now += round(seconds * 1e9) + next(overshoots)

    assert measure_oversleep_ns(20, clock=fake.clock, sleep=sleep) == 180_000
    assert fake.sleeps == [OVERSLEEP_PROBE_NS] * 20
    assert measure_oversleep_ns(1, clock=FakeClock(tick=0).clock, sleep=lambda s: None) == 0


def test_a_long_wait_ticks_so_a_stop_is_noticed() -> None:
    # A batch held for a second (a large --time-scale) sleeps in chunks of at most tick_ns and
    # calls `tick` (the worker's abort check) between them; it still ends on its deadline.
    fake = FakeClock(now=0, tick=1000, oversleep=80_000)
    ticks: list[int] = []
    pacer = Pacer(1.0, False, 100_000, clock=fake.clock, sleep=fake.sleep, yield_cpu=fake.yield_cpu,
                  tick=lambda: ticks.append(fake.now), tick_ns=20_000_000)
    end = pacer.wait_until(1_000_000_000)
    assert 1_000_000_000 <= end < 1_000_000_000 + 5_000
    assert 45 <= len(ticks) <= 50 and max(fake.sleeps) <= 20_000_000
    assert all(b - a <= 21_000_000 for a, b in zip([0, *ticks], ticks, strict=False))  # pairs: [0, *ticks] is one longer
    short = FakeClock(now=0)
    Pacer(1.0, False, 100_000, clock=short.clock, sleep=short.sleep, tick=lambda: ticks.append(-1)).wait_until(15_000_000)
    assert len(short.sleeps) == 1 and ticks[-1] != -1  # a batch's usual wait: one sleep, no tick
