"""RateLimiter: token-bucket arithmetic on a fake clock, reservations, threads, asyncio."""

from __future__ import annotations

import asyncio
import threading

import pytest

from shardflow.resilience.ratelimiter import RateLimiter, RateLimiterMetrics


class FakeTime:
    """A clock and a sleep that advances it: waiting takes no real time."""

    def __init__(self, t: float = 50.0) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def make(rate=10.0, burst=3):
    ft = FakeTime()
    return RateLimiter(rate, burst=burst, clock=ft.clock, sleep=ft.sleep), ft


def test_starts_full_then_refills_at_rate():
    rl, ft = make(rate=10, burst=3)
    assert [rl.try_acquire() for _ in range(4)] == [True, True, True, False]
    ft.t += 0.05  # half a token
    assert rl.try_acquire() is False
    ft.t += 0.05
    assert rl.try_acquire() is True
    ft.t += 100  # idle: the bucket holds at most `burst`
    assert [rl.try_acquire() for _ in range(4)] == [True, True, True, False]


def test_multi_token_acquire_and_metrics():
    rl, ft = make(rate=4, burst=4)
    assert rl.try_acquire(3)
    assert not rl.try_acquire(2)
    ft.t += 0.25
    assert rl.try_acquire(2)
    m = rl.metrics()
    assert isinstance(m, RateLimiterMetrics)
    assert (m.acquired, m.rejected, m.burst) == (5, 1, 4)
    assert m.available == pytest.approx(0.0)


def test_blocking_acquire_reserves_in_order_and_sleeps_until_due():
    rl, ft = make(rate=10, burst=1)
    assert rl.acquire()  # from the full bucket: no sleep
    assert rl.acquire()  # next token due in 0.1 s
    assert rl.acquire(2 - 1)
    assert ft.sleeps == pytest.approx([0.1, 0.1])


def test_acquire_timeout_reserves_nothing_when_too_far():
    rl, ft = make(rate=1, burst=1)
    assert rl.acquire()
    assert rl.acquire(timeout=0.5) is False  # the next token is 1 s away
    assert ft.sleeps == []
    assert rl.acquire(timeout=1.0) is True
    assert ft.sleeps == pytest.approx([1.0])
    assert rl.metrics().rejected == 1


def test_threads_take_exactly_the_burst_on_a_frozen_clock():
    ft = FakeTime()
    rl = RateLimiter(1.0, burst=1000, clock=ft.clock)
    barrier = threading.Barrier(4)
    got = []

    def grab():
        barrier.wait()
        got.append(sum(rl.try_acquire() for _ in range(600)))

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(got) == 1000  # every token handed out once, no more (CAS loop)


def test_aacquire_waits_and_is_not_bound_to_a_loop():
    rl = RateLimiter(1000.0, burst=2)  # real clock: 1 ms per token

    async def main():
        return [await rl.aacquire() for _ in range(5)]

    assert asyncio.run(main()) == [True] * 5
    assert asyncio.run(main()) == [True] * 5  # a second loop, same limiter

    async def too_far():
        return await rl.aacquire(2, timeout=0)

    rl2 = RateLimiter(0.001, burst=2)
    assert rl2.try_acquire(2)
    rl = rl2
    assert asyncio.run(too_far()) is False


@pytest.mark.parametrize(
    "args, kwargs, exc, words",
    [
        ((0,), {"burst": 1}, ValueError, "rate"),
        (("5",), {"burst": 1}, TypeError, "rate"),
        ((float("nan"),), {"burst": 1}, ValueError, "rate"),
        ((5,), {"burst": 0}, ValueError, "burst"),
        ((5,), {"burst": 1.5}, TypeError, "burst"),
        ((1e-9,), {"burst": 10**9}, ValueError, "burst"),
        ((5,), {"burst": 1, "clock": 3}, TypeError, "clock"),
    ],
)
def test_bad_configuration(args, kwargs, exc, words):
    with pytest.raises(exc) as info:
        RateLimiter(*args, **kwargs)
    assert words in str(info.value)


def test_bad_tokens_and_timeout():
    rl, _ = make(burst=3)
    with pytest.raises(ValueError, match="burst=3"):
        rl.try_acquire(4)
    with pytest.raises(ValueError, match="tokens"):
        rl.acquire(0)
    with pytest.raises(TypeError, match="tokens"):
        rl.acquire(1.0)
    with pytest.raises(ValueError, match="timeout"):
        rl.acquire(1, timeout=-1)
    with pytest.raises(TypeError):
        RateLimiter(5)  # burst is required
