"""Limiter: the bound holds under threads (in C and in Python), event loops, fairness,
timeouts, Ctrl-C, and bad configuration is refused."""

from __future__ import annotations

import _thread
import asyncio
import sys
import sysconfig
import threading
import time

import pytest

from shardflow.resilience.limiter import Limiter, LimiterMetrics


def wait_for(predicate, timeout: float = 10.0) -> None:
    """Poll until predicate() is true (no timing assumption beyond a generous cap)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.001)


def test_acquire_release_and_over_release():
    lim = Limiter(2)
    assert lim.acquire() and lim.acquire()
    assert lim.in_use == 2
    assert lim.acquire(timeout=0) is False
    assert lim.try_acquire() is False
    lim.release()
    lim.release()
    with pytest.raises(ValueError, match="release"):
        lim.release()
    assert lim.in_use == 0
    m = lim.metrics()
    assert isinstance(m, LimiterMetrics)
    assert (m.concurrency, m.in_use, m.waiting, m.timeouts) == (2, 0, 0, 1)


@pytest.mark.parametrize("fair", [False, True])
def test_timeout_returns_false_and_leaves_no_permit(fair):
    lim = Limiter(1, fair=fair)
    lim.acquire()
    assert lim.acquire(timeout=0.02) is False
    assert lim.metrics().timeouts == 1 and lim.metrics().waiting == 0
    lim.release()
    assert lim.acquire(timeout=0.02) is True  # the timed-out waiter left the queue
    lim.release()


@pytest.mark.slow
@pytest.mark.parametrize("limit", [1, 2])
@pytest.mark.parametrize("fair", [False, True])
def test_hammer_bound_holds_for_a_million_pairs_in_c(limit, fair):
    lim = Limiter(limit, fair=fair)
    barrier = threading.Barrier(2)
    seen = []

    def run():
        barrier.wait()
        seen.append(lim._hammer(600_000))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(seen) <= limit
    assert lim.in_use == 0


@pytest.mark.parametrize("fair", [False, True])
def test_hammer_with_parking_bound_holds(fair):
    lim = Limiter(1, fair=fair)
    barrier = threading.Barrier(3)
    seen = []

    def run():
        barrier.wait()
        seen.append(lim._hammer(100_000, True))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(seen) == 1
    assert lim.in_use == 0 and lim.metrics().waiting == 0


@pytest.mark.parametrize("fair", [False, True])
def test_python_threads_with_statement_bound_holds(fair):
    lim = Limiter(3, fair=fair)
    lock = threading.Lock()
    inside = [0, 0]

    def work():
        for _ in range(200):
            with lim:
                with lock:
                    inside[0] += 1
                    inside[1] = max(inside[1], inside[0])
                time.sleep(0)  # let another thread in
                with lock:
                    inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= inside[1] <= 3
    assert lim.in_use == 0


def test_fair_mode_serves_blocked_threads_in_arrival_order():
    lim = Limiter(1, fair=True)
    lim.acquire()
    order = []

    def waiter(name):
        lim.acquire()
        order.append(name)
        lim.release()

    threads = []
    for i, name in enumerate("abcd"):
        t = threading.Thread(target=waiter, args=(name,))
        t.start()
        threads.append(t)
        wait_for(lambda n=i + 1: lim.metrics().waiting == n)
    # A newcomer may not barge past the queue, even when a permit is momentarily free.
    assert lim.try_acquire() is False
    lim.release()
    for t in threads:
        t.join()
    assert order == list("abcd")


@pytest.mark.parametrize("fair", [False, True])
def test_ctrl_c_interrupts_a_blocked_acquire(fair):
    lim = Limiter(1, fair=fair)
    lim.acquire()
    timer = threading.Timer(0.05, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            lim.acquire()
    finally:
        timer.cancel()
    assert lim.in_use == 1 and lim.metrics().waiting == 0
    lim.release()
    assert lim.acquire(timeout=0)


def test_decorator_sync_and_async():
    lim = Limiter(1)

    @lim
    def held():
        return lim.in_use

    @lim
    async def aheld():
        await asyncio.sleep(0)
        return lim.in_use

    assert held() == 1 and held.__name__ == "held"
    assert asyncio.run(aheld()) == 1
    assert lim.in_use == 0
    with pytest.raises(TypeError, match="fn"):
        lim(3)


def test_two_event_loops_in_two_threads_share_one_limiter():
    lim = Limiter(2)
    lock = threading.Lock()
    inside = [0, 0]

    async def task():
        async with lim:
            with lock:
                inside[0] += 1
                inside[1] = max(inside[1], inside[0])
            await asyncio.sleep(0.001)
            with lock:
                inside[0] -= 1

    async def main():
        await asyncio.gather(*(task() for _ in range(30)))

    threads = [threading.Thread(target=asyncio.run, args=(main(),)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= inside[1] <= 2
    assert lim.in_use == 0 and lim.metrics().waiting == 0


def test_threads_and_event_loop_share_one_limiter():
    lim = Limiter(1)
    lim.acquire()

    async def main():
        return await lim.aacquire(timeout=5)

    result = []
    t = threading.Thread(target=lambda: result.append(asyncio.run(main())))
    t.start()
    wait_for(lambda: lim.metrics().waiting == 1)
    lim.release()  # released by a thread, observed by the loop's poller
    t.join()
    assert result == [True] and lim.in_use == 1
    lim.release()


def test_aacquire_timeout_and_cancellation_leave_no_permit():
    lim = Limiter(1)
    lim.acquire()

    async def main():
        assert await lim.aacquire(timeout=0.01) is False
        assert await lim.aacquire(timeout=0) is False
        task = asyncio.ensure_future(lim.aacquire())
        await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert lim.in_use == 1 and lim.metrics().waiting == 0
    assert lim.metrics().timeouts == 2
    lim.release()


@pytest.mark.parametrize(
    "args, kwargs, exc, words",
    [
        ((0,), {}, ValueError, "concurrency"),
        (("2",), {}, TypeError, "concurrency"),
        ((True,), {}, TypeError, "concurrency"),
        ((2,), {"fair": 1}, TypeError, "fair"),
    ],
)
def test_bad_configuration(args, kwargs, exc, words):
    with pytest.raises(exc) as info:
        Limiter(*args, **kwargs)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "timeout, exc", [(-1, ValueError), ("1", TypeError), (float("nan"), ValueError)]
)
def test_bad_timeout(timeout, exc):
    lim = Limiter(1)
    lim.acquire()
    with pytest.raises(exc, match="timeout"):
        lim.acquire(timeout=timeout)


@pytest.mark.skipif(
    not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="free-threaded builds only"
)
def test_compiled_modules_keep_the_gil_off():
    import shardflow._breaker
    import shardflow._limiter  # noqa: F401

    assert not sys._is_gil_enabled()
