"""Drain pacing: drains at most every interval, sooner when a ring would fill."""

from __future__ import annotations

import pytest

from ebcap.capture.pacing import MIN_DRAIN_INTERVAL_S, RING_SHARE, DrainPacer


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def pacer(ring_bytes: int, fake: FakeTime) -> DrainPacer:
    return DrainPacer(ring_bytes, clock=fake.clock, sleep=fake.sleep)


def test_the_first_drain_does_not_wait_and_the_next_comes_an_interval_later() -> None:
    fake = FakeTime()
    p = pacer(8 << 20, fake)
    p.before_drain()
    fake.now += 0.0003  # the drain itself
    p.after_drain(1000)
    p.before_drain()
    assert fake.slept == [pytest.approx(MIN_DRAIN_INTERVAL_S - 0.0003)]


def test_a_fast_filling_ring_is_drained_before_a_quarter_of_it_fills() -> None:
    fake = FakeTime()
    ring = 1 << 20
    p = pacer(ring, fake)
    p.before_drain()
    p.after_drain(0)
    p.before_drain()  # one interval after the first
    fake.now += 0.0001
    p.after_drain(ring // 2)  # a burst: half a ring at once
    fake.slept.clear()
    fake.now += 0.0005
    p.before_drain()
    assert fake.slept == [], "a drain that found a quarter ring or more is followed at once"
    fake.now += 0.0001
    p.after_drain(ring // 8)  # 1/8 ring since the drain 0.6 ms before: a quarter in 1.2 ms
    p.before_drain()
    due = RING_SHARE * ring / ((ring // 8) / 0.0006)
    assert due < MIN_DRAIN_INTERVAL_S
    assert fake.slept == [pytest.approx(due - 0.0001)]


def test_a_late_drain_does_not_sleep() -> None:
    fake = FakeTime()
    p = pacer(8 << 20, fake)
    p.before_drain()
    p.after_drain(10)
    fake.now += 0.05  # a long wait for events, or a long drain
    p.before_drain()
    assert fake.slept == []
