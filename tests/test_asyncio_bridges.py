"""asyncio bridges: ``await ShardedPool.asubmit(item)`` and ``Executor`` under asyncio.

``asubmit`` must wait for room without blocking the event loop, and a cancelled or
timed-out ``asubmit`` must mean "not submitted": the item is never handled, never twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

import shardflow
from helpers import WAIT, Gate, accounted


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate(block=lambda item: item == "blocker")
    yield g
    g.release.set()


def full_pool(gate: Gate, on_full: str = "block") -> shardflow.ShardedPool[str]:
    """One worker inside ``gate`` (on "blocker") and its one-slot queue full ("queued")."""
    pool: shardflow.ShardedPool[str] = shardflow.ShardedPool(
        gate,
        workers=1,
        capacity=1,
        on_full=on_full,  # type: ignore[arg-type]
    )
    pool.submit("blocker")
    gate.wait_entered()
    pool.submit("queued")
    assert pool.metrics().depth == 1  # the queue is full now
    return pool


def test_asubmit_queues_like_submit() -> None:
    seen: list[int] = []
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(seen.append, workers=2)

    async def main() -> list[bool]:
        return [await pool.asubmit(i) for i in range(100)]

    assert asyncio.run(main()) == [True] * 100
    pool.shutdown()
    assert sorted(seen) == list(range(100))


def test_asubmit_waits_for_room_without_blocking_the_loop(gate: Gate) -> None:
    pool = full_pool(gate)
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    async def main() -> bool:
        stop = asyncio.Event()
        tick_task = asyncio.create_task(ticker(stop))
        submit = asyncio.create_task(pool.asubmit("late"))
        # The loop keeps running other coroutines while asubmit waits for room.
        while ticks < 20:
            await asyncio.sleep(0.001)
        assert not submit.done()
        gate.release.set()  # the worker drains: room appears
        ok = await asyncio.wait_for(submit, WAIT)
        stop.set()
        await tick_task
        return ok

    assert asyncio.run(main()) is True
    pool.shutdown()
    assert gate.seen == ["blocker", "queued", "late"]


def test_a_cancelled_asubmit_submitted_nothing(gate: Gate) -> None:
    pool = full_pool(gate)

    async def main() -> None:
        submit = asyncio.create_task(pool.asubmit("cancelled"))
        await asyncio.sleep(0.02)  # it is backing off now
        submit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await submit

    asyncio.run(main())
    gate.release.set()
    pool.shutdown()
    assert gate.seen == ["blocker", "queued"]
    m = pool.metrics()
    assert m.submitted == 2 and accounted(m) == 2


def test_many_cancelled_asubmits_never_run_an_item_twice() -> None:
    """Cancel asubmits at random points while the queue fills and drains: every item is
    handled at most once, and exactly the ones whose asubmit returned True."""
    seen: list[int] = []
    release = threading.Event()

    def handler(item: int) -> None:
        release.wait(WAIT)
        seen.append(item)

    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(handler, workers=1, capacity=4)

    async def main() -> set[int]:
        tasks = [asyncio.create_task(pool.asubmit(i)) for i in range(200)]
        await asyncio.sleep(0.01)
        for t in tasks[::3]:
            t.cancel()
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return {i for i, r in enumerate(results) if r is True}

    submitted = asyncio.run(main())
    pool.shutdown()
    assert len(seen) == len(set(seen))
    assert set(seen) == submitted
    assert pool.metrics().submitted == len(submitted)


def test_asubmit_timeout_raises_full_with_the_item(gate: Gate) -> None:
    pool = full_pool(gate)

    async def main() -> None:
        with pytest.raises(shardflow.Full) as info:
            await pool.asubmit("late", timeout=0.02)
        assert info.value.unsent == ["late"] and info.value.submitted == 0

    asyncio.run(main())
    gate.release.set()
    pool.shutdown()
    assert "late" not in gate.seen


def test_asubmit_follows_on_full_drop_and_raise(gate: Gate) -> None:
    async def main(pool: shardflow.ShardedPool[str]) -> bool:
        return await pool.asubmit("x")

    drop = full_pool(gate, on_full="drop")
    assert asyncio.run(main(drop)) is False
    assert drop.metrics().dropped == 1
    gate.release.set()
    drop.shutdown()

    gate2 = Gate(block=lambda item: item == "blocker")
    try:
        raising = full_pool(gate2, on_full="raise")
        with pytest.raises(shardflow.Full):
            asyncio.run(main(raising))
    finally:
        gate2.release.set()
    raising.shutdown()


def test_asubmit_after_close_raises_closed() -> None:
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(print, workers=1)
    pool.close()

    async def main() -> None:
        with pytest.raises(shardflow.Closed):
            await pool.asubmit(1)

    asyncio.run(main())
    pool.join()


def test_asubmit_refuses_a_bad_timeout() -> None:
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(print, workers=1)

    async def main() -> None:
        with pytest.raises(ValueError, match="timeout"):
            await pool.asubmit(1, timeout=-1)
        with pytest.raises(TypeError, match="timeout"):
            await pool.asubmit(1, timeout="soon")  # type: ignore[arg-type]

    asyncio.run(main())
    pool.shutdown()


def test_executor_with_run_in_executor_and_as_default_executor() -> None:
    with shardflow.Executor(max_workers=2, thread_name_prefix="aio") as ex:

        async def main() -> list[str]:
            loop = asyncio.get_running_loop()
            loop.set_default_executor(ex)
            names = await asyncio.gather(
                *(asyncio.to_thread(lambda: threading.current_thread().name) for _ in range(10))
            )
            direct = await loop.run_in_executor(ex, str.upper, "ok")
            return [*names, direct]

        out = asyncio.run(main())
    assert out[-1] == "OK"
    assert all(name.startswith("aio") for name in out[:-1])
