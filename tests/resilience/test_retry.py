"""Retry: delays on a fake clock, deadline, retry budget, what is and is not retried."""

from __future__ import annotations

import asyncio

import pytest

from shardflow.errors import CircuitOpen
from shardflow.resilience.breaker import CircuitBreaker
from shardflow.resilience.retry import Retry, RetryMetrics


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


class Flaky:
    """Fails `failures` times with `exc`, then returns "ok"."""

    def __init__(self, failures: int, exc: BaseException | None = None) -> None:
        self.failures = failures
        self.exc = exc or ConnectionError("down")
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return ("ok", args, kwargs)


def make(attempts=5, **kw):
    ft = FakeTime()
    kw.setdefault("jitter", False)
    kw.setdefault("budget", None)
    return Retry(attempts, clock=ft.clock, sleep=ft.sleep, async_sleep=ft.async_sleep, **kw), ft


@pytest.mark.parametrize(
    "backoff, expected",
    [
        ("exponential", [0.1, 0.2, 0.4, 0.8]),
        ("linear", [0.1, 0.2, 0.30000000000000004, 0.4]),
        ("constant", [0.1, 0.1, 0.1, 0.1]),
    ],
)
def test_backoff_delays(backoff, expected):
    retry, ft = make(attempts=5, backoff=backoff, base=0.1)
    fn = Flaky(4)
    assert retry.call(fn, 1, k=2) == ("ok", (1,), {"k": 2})
    assert ft.sleeps == pytest.approx(expected)


def test_max_delay_caps_and_jitter_scales():
    retry, ft = make(attempts=4, base=1.0, max_delay=1.5, jitter=True, random=lambda: 0.5)
    retry.call(Flaky(3))
    assert ft.sleeps == pytest.approx([0.5, 0.75, 0.75])


def test_gives_up_after_attempts_and_reraises_last_error():
    retry, _ = make(attempts=3)
    fn = Flaky(10)
    with pytest.raises(ConnectionError):
        retry.call(fn)
    assert fn.calls == 3
    assert retry.metrics() == RetryMetrics(calls=1, retries=2, gave_up=1, budget_exhausted=0)


def test_deadline_stops_retries_whose_delay_would_overrun():
    retry, ft = make(attempts=10, base=1.0, deadline=3.5)
    fn = Flaky(10)
    with pytest.raises(ConnectionError):
        retry.call(fn)
    assert ft.sleeps == [1.0, 2.0]  # a third retry would start at 7 s > 3.5 s
    assert fn.calls == 3


def test_retry_on_types_and_predicate():
    retry, _ = make(retry_on=(ConnectionError,))
    fn = Flaky(1, ValueError("not transient"))
    with pytest.raises(ValueError):
        retry.call(fn)
    assert fn.calls == 1
    retry, _ = make(retry_on=lambda e: "transient" in str(e))
    assert retry.call(Flaky(2, ValueError("transient")))[0] == "ok"


def test_circuit_open_and_base_exceptions_are_never_retried():
    retry, _ = make(retry_on=(Exception,))
    fn = Flaky(5, CircuitOpen("open", remaining=3.0))
    with pytest.raises(CircuitOpen):
        retry.call(fn)
    assert fn.calls == 1
    fn = Flaky(5, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        retry.call(fn)
    assert fn.calls == 1


def test_retry_around_an_open_breaker_stops_at_once():
    breaker = CircuitBreaker(max_failures=2, reset_timeout=60)
    retry, ft = make(attempts=10)
    fn = Flaky(100)
    with pytest.raises(CircuitOpen):
        retry.call(breaker.call, fn)
    assert fn.calls == 2 and len(ft.sleeps) == 2


def test_budget_caps_retries_to_a_fraction_of_calls():
    ft = FakeTime()
    retry = Retry(
        3,
        base=0.0,
        jitter=False,
        budget=0.1,
        budget_window=10.0,
        budget_min_retries=0,
        clock=ft.clock,
        sleep=ft.sleep,
    )
    for _ in range(20):
        with pytest.raises(ConnectionError):
            retry.call(Flaky(100))
    m = retry.metrics()
    assert m.calls == 20
    assert m.retries <= 0.1 * 20
    assert m.retries >= 1 and m.budget_exhausted > 0
    ft.t += 100  # the window slides: old calls and retries are forgotten
    with pytest.raises(ConnectionError):
        retry.call(Flaky(100))
    assert retry.metrics().retries == m.retries  # 0.1 * 1 call < 1 retry


def test_budget_min_retries_lets_low_traffic_retry():
    retry, _ = make(attempts=3, budget=0.2, budget_min_retries=3)
    assert retry.call(Flaky(2))[0] == "ok"
    assert retry.metrics().retries == 2


def test_acall_and_decorators():
    retry, ft = make(attempts=3, base=0.5)
    flaky = Flaky(2)

    @retry
    async def coro(x):
        await asyncio.sleep(0)
        return flaky(x)

    @retry
    def sync(x):
        return Flaky(0)(x)

    assert asyncio.run(coro(7)) == ("ok", (7,), {})
    assert ft.sleeps == [0.5, 1.0]
    assert sync(3)[0] == "ok" and sync.__name__ == "sync"

    async def always_cancelled():
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(retry.acall(always_cancelled))


def test_delay_is_a_public_policy_function():
    retry, _ = make(backoff="exponential", base=2.0, max_delay=100.0)
    assert [retry.delay(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert retry.delay(10_000) == 100.0  # no overflow


@pytest.mark.parametrize(
    "args, kwargs, exc, words",
    [
        ((0,), {}, ValueError, "attempts"),
        ((3,), {"backoff": "fibonacci"}, ValueError, "'exponential'"),
        ((3,), {"base": -1}, ValueError, "base"),
        ((3,), {"max_delay": "1"}, TypeError, "max_delay"),
        ((3,), {"jitter": "yes"}, TypeError, "jitter"),
        ((3,), {"deadline": 0}, ValueError, "deadline"),
        ((3,), {"retry_on": (int,)}, TypeError, "retry_on"),
        ((3,), {"retry_on": 5}, TypeError, "retry_on"),
        ((3,), {"budget": 1.5}, ValueError, "budget"),
        ((3,), {"budget_window": 0}, ValueError, "budget_window"),
        ((3,), {"sleep": 1}, TypeError, "sleep"),
    ],
)
def test_bad_configuration(args, kwargs, exc, words):
    with pytest.raises(exc) as info:
        Retry(*args, **kwargs)
    assert words in str(info.value)
