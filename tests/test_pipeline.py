"""shardflow.Pipeline: composition, order, backpressure, failures, Ctrl-C, accounting."""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shardflow
from helpers import WAIT, interrupt_when_ready, wait_until
from shardflow.pipeline import CHANNEL_BATCHES, Pipeline, PipelineReport


def check_accounting(report: PipelineReport) -> None:
    """Every stage balanced and fed exactly what the one before emitted."""
    assert report.balanced, report
    upstream = report.source_items - report.source_unsent
    for s in report.stages:
        assert s.received == upstream, s
        assert s.received == s.succeeded + s.filtered + s.failed + s.dead_lettered, s
        upstream = s.emitted


# --------------------------------------------------------------------------- composition


def test_map_filter_flat_map_compose() -> None:
    p = (
        Pipeline(range(1000))
        .map(lambda x: x * 3)
        .filter(lambda x: x % 2 == 0)
        .flat_map(lambda x: [x, -x] if x % 4 == 0 else [])
    )
    got = sorted(p)
    want = sorted(y for x in range(1000) for y in ([3 * x, -3 * x] if 3 * x % 4 == 0 else []))
    assert got == want
    assert p.report is not None
    check_accounting(p.report)
    fm = p.report.stage("flat_map-3")
    assert fm.emitted == len(want)
    assert p.report.stage("filter-2").filtered == 500


def test_no_stage_yields_the_source() -> None:
    assert sorted(Pipeline(iter(range(50)))) == list(range(50))


def test_batch_groups_items_and_cuts_the_last_group_short() -> None:
    p = Pipeline(range(10)).batch(4)
    groups = list(p)
    assert sorted(len(g) for g in groups) == [2, 4, 4]
    assert sorted(x for g in groups for x in g) == list(range(10))
    assert p.report is not None
    b = p.report.stage("batch-1")
    assert (b.received, b.succeeded, b.emitted) == (10, 10, 3)


def test_batch_timeout_hands_over_a_partial_group() -> None:
    # The source blocks after 3 items until the partial group came out: only the timeout
    # can hand it over.
    out: queue.Queue[list[int]] = queue.Queue()
    release = threading.Event()

    def source() -> Iterator[int]:
        yield from range(3)
        assert release.wait(WAIT), "the partial group never came out"
        yield 3

    def sink(group: list[int]) -> None:
        out.put(group)
        release.set()

    report = Pipeline(source(), source_chunk=1).batch(100, timeout=0.05).sink(sink).run()
    assert out.get_nowait() == [0, 1, 2]
    assert out.get_nowait() == [3]
    check_accounting(report)


def test_sink_sees_every_item_and_counts_them() -> None:
    seen: list[int] = []
    report = Pipeline(range(2000)).map(lambda x: x + 1).sink(seen.append).run()
    assert sorted(seen) == list(range(1, 2001))
    assert report.results == 2000
    assert report.stage("sink-2").succeeded == 2000
    check_accounting(report)


def test_run_without_sink_counts_results() -> None:
    report = Pipeline(range(5000)).map(str).filter(lambda s: "7" in s).run()
    assert report.results == sum("7" in str(x) for x in range(5000))
    check_accounting(report)


def test_stage_options_are_passed_to_the_pools() -> None:
    p = Pipeline(range(100)).map(lambda x: x, workers=3, capacity=100, batch_size=7, name="wide")
    assert sorted(p) == list(range(100))
    m = p.metrics()["wide"]
    assert len(m.shards) == 3
    assert m.processed == 100
    assert m.batches >= 100 // 7


def test_keyed_stage_keeps_per_key_order() -> None:
    seen: list[tuple[int, int]] = []
    items = [(i % 5, i) for i in range(3000)]
    Pipeline(items).map(lambda kv: kv, workers=3, key=lambda kv: kv[0], batch_size=16).sink(
        seen.append
    ).run()
    for k in range(5):
        mine = [i for key, i in seen if key == k]
        assert mine == sorted(mine)
        assert len(mine) == 600


def test_guards_apply_per_item() -> None:
    calls: Counter[int] = Counter()

    def flaky(x: int) -> int:
        calls[x] += 1
        if x % 10 == 0 and calls[x] == 1:
            raise ConnectionError("once")
        return x

    retry = shardflow.Retry(3, base=0.0001, retry_on=(ConnectionError,))
    report = Pipeline(range(100)).map(flaky, retry=retry).run()
    assert report.results == 100
    # A failing item is retried alone: the others of its batch ran once.
    assert all(calls[x] == (2 if x % 10 == 0 else 1) for x in range(100))


# --------------------------------------------------------------------------- ordering


def shuffled_latency(x: int) -> int:
    time.sleep(random.random() / 2000)  # releases the GIL: items finish out of order
    return x


@pytest.mark.parametrize("window", [16, 8192])
def test_ordered_yields_in_source_order_despite_shuffled_latency(window: int) -> None:
    n = 1500
    yielded = [0]

    def source() -> Iterator[int]:
        for i in range(n):
            yielded[0] += 1
            yield i

    bs = 8
    p = (
        Pipeline(source(), ordered=True, window=window)
        .map(shuffled_latency, workers=4, batch_size=bs)
        .flat_map(lambda x: [x] * (x % 3))
        .filter(lambda x: x % 5 != 0)
        .map(shuffled_latency, workers=3, batch_size=bs)
    )
    out = []
    ahead = 0
    for item in p:
        out.append(item)
        ahead = max(ahead, yielded[0] - item)
    want = [y for x in range(n) for y in [x] * (x % 3) if y % 5 != 0]
    assert out == want
    # The source never ran more than the window (plus what sits in the bounded result
    # channel between the reorder buffer and this loop) ahead of the item being read.
    assert ahead <= window + (CHANNEL_BATCHES + 2) * bs * 2
    assert p.report is not None
    check_accounting(p.report)


def test_ordered_sink_sees_source_order() -> None:
    seen: list[int] = []
    report = (
        Pipeline(range(600), ordered=True, window=32)
        .map(shuffled_latency, workers=4, batch_size=4)
        .sink(seen.append)
        .run()
    )
    assert seen == list(range(600))
    check_accounting(report)


def test_ordered_batch_cuts_groups_in_source_order() -> None:
    p = (
        Pipeline(range(1000), ordered=True, window=64)
        .map(shuffled_latency, workers=4, batch_size=4)
        .filter(lambda x: x % 3)
        .batch(10)
    )
    kept = [x for x in range(1000) if x % 3]
    assert list(p) == [kept[i : i + 10] for i in range(0, len(kept), 10)]
    assert p.report is not None
    check_accounting(p.report)


def test_ordered_batch_then_sink() -> None:
    seen: list[list[int]] = []
    report = (
        Pipeline(range(500), ordered=True)
        .map(shuffled_latency, workers=3, batch_size=4)
        .batch(7)
        .sink(seen.append)
        .run()
    )
    assert seen == [list(range(i, min(i + 7, 500))) for i in range(0, 500, 7)]
    check_accounting(report)


def test_unordered_is_the_default_and_loses_nothing() -> None:
    p = Pipeline(range(1000)).map(shuffled_latency, workers=4, batch_size=4)
    assert sorted(p) == list(range(1000))


# --------------------------------------------------------------------------- backpressure


class StuckSink:
    """A counting source and a sink that blocks on item 0 until released: the fixture of
    the backpressure tests (how far the source runs ahead while the sink is stuck)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.yielded = 0
        self.gate = threading.Event()
        self.entered = threading.Event()

    def source(self) -> Iterator[int]:
        for i in range(self.n):
            self.yielded += 1
            yield i

    def sink(self, x: int) -> None:
        if x == 0:
            self.entered.set()
            assert self.gate.wait(WAIT)


def test_a_slow_sink_bounds_what_the_source_yields_ahead() -> None:
    n = 200_000
    stuck = StuckSink(n)
    p = (
        Pipeline(stuck.source(), capacity=256)
        .map(lambda x: x, batch_size=32)
        .map(lambda x: x, batch_size=32)
        .sink(stuck.sink, batch_size=32)
    )
    result: list[PipelineReport] = []
    runner = threading.Thread(target=lambda: result.append(p.run()))
    runner.start()
    try:
        assert stuck.entered.wait(WAIT)
        # With the sink stuck, every ring fills up and then the source must stop.
        assert wait_until(
            lambda: all(m.depth == m.shards[0].depth == 256 for m in p.metrics().values())
        ), p.metrics()
        ahead = stuck.yielded
        rings = 3 * 256
        assert rings <= ahead <= p.max_in_flight() < n
    finally:
        stuck.gate.set()
        runner.join(WAIT)
    assert not runner.is_alive()
    assert result[0].results == n
    check_accounting(result[0])


def test_ordered_backpressure_with_a_stuck_sink() -> None:
    n = 30_000
    stuck = StuckSink(n)
    p = (
        Pipeline(stuck.source(), ordered=True, window=100_000, capacity=256)
        .map(lambda x: x, batch_size=64)
        .map(lambda x: x, batch_size=64)
        .sink(stuck.sink, batch_size=64)
    )
    result: list[PipelineReport] = []
    runner = threading.Thread(target=lambda: result.append(p.run()))
    runner.start()
    try:
        assert stuck.entered.wait(WAIT)
        # Ordered stages move runs of 64 items: their rings hold 256 // 64 = 4 runs.
        # With the sink stuck every ring fills up, then the source must stop, long
        # before the (large) window would stop it.
        full = [4, 4, 256]
        assert wait_until(lambda: [m.depth for m in p.metrics().values()] == full), p.metrics()
        ahead = stuck.yielded
        assert 256 * 4 <= ahead <= p.max_in_flight()
        assert ahead < 100_000  # the window did not stop it: the rings did
    finally:
        stuck.gate.set()
        runner.join(WAIT)
    assert not runner.is_alive()
    assert result[0].results == n
    check_accounting(result[0])


# --------------------------------------------------------------------------- failures


def boom_at(bad: int) -> Any:
    def fn(x: int) -> int:
        if x == bad:
            raise ValueError(f"bad item {x}")
        return x

    return fn


def test_fail_fast_raises_the_first_error_with_its_traceback_and_stops_the_source() -> None:
    n = 1_000_000
    p = Pipeline(range(n), capacity=512).map(lambda x: x).map(boom_at(500)).map(lambda x: x)
    with pytest.raises(ValueError, match="bad item 500") as info:
        p.run()
    # The traceback reaches the function that raised.
    assert any(tb.name == "fn" for tb in info.traceback)
    report = info.value.pipeline_report  # type: ignore[attr-defined]
    assert report is p.report
    assert report.stopped_early
    assert report.source_items < n
    assert report.source_items <= 500 + p.max_in_flight()
    bad = report.stage("map-2")
    assert bad.failed == 1
    assert bad.errors[0][0] == 500
    # What was inside drained: nothing unaccounted.
    check_accounting(report)


def test_fail_fast_in_an_ordered_sink_under_backpressure() -> None:
    # The reorder buffer waits for room in the sink while the sink's handler fails.
    p = (
        Pipeline(range(100_000), ordered=True, window=512, capacity=16)
        .map(lambda x: x, batch_size=8)
        .sink(boom_at(3000), batch_size=8, capacity=16)
    )
    with pytest.raises(ValueError, match="bad item 3000"):
        p.run()
    assert p.report is not None
    check_accounting(p.report)


def test_fail_fast_from_the_iterator() -> None:
    p = Pipeline(range(10_000)).map(boom_at(7))
    got: list[int] = []
    with pytest.raises(ValueError, match="bad item 7"):
        for x in p:
            got.append(x)
    assert 7 not in got
    assert p.report is not None
    check_accounting(p.report)


def test_continue_routes_errors_to_each_stage_dead_letter() -> None:
    listed: list[tuple[Any, BaseException]] = []
    called: list[tuple[Any, BaseException]] = []
    calls: Counter[int] = Counter()

    def count_then(fn: Any) -> Any:
        def wrapped(x: int) -> Any:
            calls[x] += 1
            return fn(x)

        return wrapped

    def bad_mod(m: int) -> Any:
        def fn(x: int) -> int:
            if x % m == 0:
                raise KeyError(x)
            return x

        return fn

    report = (
        Pipeline(range(1000), errors="continue")
        .map(count_then(bad_mod(7)), dead_letter=listed, batch_size=10)
        .filter(bad_mod(11), dead_letter=lambda item, exc: called.append((item, exc)))
        .map(bad_mod(13), name="kept")
        .run()
    )
    m7 = [x for x in range(1000) if x % 7 == 0]
    m11 = [x for x in range(1000) if x % 7 and x % 11 == 0]
    m13 = [x for x in range(1000) if x % 7 and x % 11 and x % 13 == 0]
    assert sorted(x for x, _ in listed) == m7
    assert sorted(x for x, _ in called) == m11
    kept = report.stage("kept")
    assert sorted(x for x, _ in kept.errors) == m13
    assert all(isinstance(e, KeyError) for _, e in kept.errors)
    assert kept.dead_lettered == len(m13)
    assert report.results == 1000 - len(m7) - len(m11) - len(m13)
    assert not report.stopped_early
    # Exactly once: no item was given to the function twice, failures included.
    assert set(calls.values()) == {1}
    assert len(calls) == 1000
    check_accounting(report)


def key_fails_on(bad: int) -> Any:
    def key(x: int) -> int:
        if x == bad:
            raise LookupError(f"no key for {x}")
        return x % 3

    return key


@pytest.mark.parametrize("ordered", [False, True])
def test_fail_fast_a_key_function_that_raises_stops_the_pipeline_and_is_counted(
    ordered: bool,
) -> None:
    p = (
        Pipeline(range(5000), errors="fail_fast", capacity=64, ordered=ordered)
        .map(lambda x: x, batch_size=16)
        .map(lambda x: x, workers=2, key=key_fails_on(1234), batch_size=16)
    )
    with pytest.raises(LookupError, match="no key for 1234"):
        p.run()
    assert p.report is not None
    before = p.report.stages[0]
    assert before.unsent >= 1
    # ordered: the errors hold the (seq, count, values) units that were not handed on
    lost = [v for x, _ in before.errors for v in (x[2] if ordered else [x])]
    assert 1234 in lost
    check_accounting(p.report)


@pytest.mark.parametrize("ordered", [False, True])
def test_continue_a_key_function_that_raises_dead_letters_the_item_and_goes_on(
    ordered: bool,
) -> None:
    dead: list[tuple[Any, BaseException]] = []
    p = (
        Pipeline(range(5000), errors="continue", capacity=64, ordered=ordered)
        .map(lambda x: x, batch_size=16)
        .map(lambda x: x, workers=2, key=key_fails_on(1234), batch_size=16, dead_letter=dead)
    )
    got = list(p)
    want = [x for x in range(5000) if x != 1234]
    assert (got if ordered else sorted(got)) == want
    assert [(x, type(e)) for x, e in dead] == [(1234, LookupError)]
    assert p.report is not None
    keyed = p.report.stages[1]
    assert (keyed.received, keyed.dead_lettered, keyed.succeeded) == (5000, 1, 4999)
    assert p.report.stages[0].unsent == 0
    check_accounting(p.report)


def test_continue_key_errors_at_the_first_stage_and_unhashable_keys() -> None:
    def key(x: int) -> Any:
        if x % 11 == 0:
            return [x]  # unhashable: TypeError while routing
        if x % 7 == 0:
            raise LookupError(x)
        return x % 5

    report = (
        Pipeline(range(3000), errors="continue", source_chunk=100)
        .map(lambda x: x, workers=2, key=key, batch_size=32)
        .run()
    )
    bad = [x for x in range(3000) if x % 11 == 0 or x % 7 == 0]
    first = report.stages[0]
    assert report.source_unsent == 0
    assert (first.received, first.dead_lettered) == (3000, len(bad))
    assert sorted(x for x, _ in first.errors) == bad
    assert {type(e) for _, e in first.errors} == {TypeError, LookupError}
    assert report.results == 3000 - len(bad)
    check_accounting(report)


def test_continue_ordered_key_error_after_flat_map_dead_letters_the_whole_unit() -> None:
    # Keyed ordered stages move one-item units; after a flat_map a unit holds that item's
    # expansion, routed by its first value: when that key raises, all of it is refused.
    p = (
        Pipeline(range(2000), errors="continue", ordered=True)
        .flat_map(lambda x: [x, x + 0.5])
        .map(lambda x: x, workers=2, key=key_fails_on(700))
    )
    got = list(p)
    assert got == [y for x in range(2000) if x != 700 for y in (x, x + 0.5)]
    assert p.report is not None
    keyed = p.report.stages[1]
    assert sorted(x for x, _ in keyed.errors) == [700, 700.5]
    assert (keyed.received, keyed.dead_lettered) == (4000, 2)
    check_accounting(p.report)


def test_a_first_stage_key_that_raises_is_counted_at_the_source() -> None:
    p = Pipeline(range(5000)).map(lambda x: x, workers=2, key=key_fails_on(10))
    with pytest.raises(LookupError, match="no key for 10"):
        list(p)
    assert p.report is not None
    assert p.report.source_unsent >= 1
    check_accounting(p.report)


def test_continue_a_refusing_dead_letter_counts_as_failed() -> None:
    def refuse(item: Any, exc: BaseException) -> None:
        raise RuntimeError("full")

    report = Pipeline(range(20), errors="continue").map(boom_at(3), dead_letter=refuse).run()
    s = report.stages[0]
    assert (s.failed, s.dead_lettered, s.succeeded) == (1, 0, 19)
    assert isinstance(s.errors[0][1], RuntimeError)
    check_accounting(report)


def test_continue_with_a_queue_dead_letter() -> None:
    dead: queue.Queue[tuple[Any, BaseException]] = queue.Queue(maxsize=10)
    report = Pipeline(range(20), errors="continue").map(boom_at(3), dead_letter=dead).run()
    assert dead.get_nowait()[0] == 3
    check_accounting(report)


def flaky_source(n: int) -> Iterator[int]:
    yield from range(n)
    raise OSError("source broke")


def test_a_failing_source_fails_fast() -> None:
    p = Pipeline(flaky_source(300)).map(lambda x: x)
    with pytest.raises(OSError, match="source broke"):
        p.run()
    assert p.report is not None
    assert p.report.source_items == 300
    assert p.report.stages[0].succeeded == 300
    check_accounting(p.report)


def test_a_failing_source_is_reported_with_continue() -> None:
    p = Pipeline(flaky_source(300), errors="continue").map(lambda x: x)
    assert sorted(p) == list(range(300))
    assert p.report is not None
    assert isinstance(p.report.source_error, OSError)
    check_accounting(p.report)


def test_flat_map_error_while_iterating_fails_the_item_only() -> None:
    def gen(x: int) -> Iterator[int]:
        yield x
        if x == 4:
            raise ValueError("half way")
        yield x

    p = Pipeline(range(10), errors="continue").flat_map(gen)
    assert sorted(p) == sorted([x for x in range(10) if x != 4] * 2)
    assert p.report is not None
    s = p.report.stages[0]
    assert (s.dead_lettered, s.emitted) == (1, 18)


# --------------------------------------------------------------------------- lifecycle


def test_leaving_the_loop_early_stops_the_pipeline() -> None:
    started = threading.active_count()
    p = Pipeline(range(10**9)).map(lambda x: x)
    for x in p:
        if x > 1000:
            break
    assert wait_until(lambda: threading.active_count() <= started)


def test_a_pipeline_runs_once_and_is_built_before_it_runs() -> None:
    p = Pipeline(range(3)).map(str)
    p.run()
    with pytest.raises(RuntimeError, match="runs once"):
        p.run()
    with pytest.raises(RuntimeError, match="started"):
        p.map(str)


def test_sink_ends_the_pipeline() -> None:
    p = Pipeline(range(3)).sink(print)
    with pytest.raises(ValueError, match="sink"):
        p.map(str)
    with pytest.raises(ValueError, match="run"):
        iter(p).__next__()


@pytest.mark.parametrize(
    ("build", "exc", "words"),
    [
        (lambda: Pipeline(5), TypeError, "source"),  # type: ignore[arg-type]
        (lambda: Pipeline([], errors="ignore"), ValueError, "errors"),  # type: ignore[arg-type]
        (lambda: Pipeline([], window=0), ValueError, "window"),
        (lambda: Pipeline([]).map(5), TypeError, "fn"),  # type: ignore[arg-type]
        (lambda: Pipeline([]).map(str, workers=0), ValueError, "workers"),
        (lambda: Pipeline([]).map(str, batch_size=1.5), TypeError, "batch_size"),  # type: ignore[arg-type]
        (lambda: Pipeline([]).batch(0), ValueError, "size"),
        (lambda: Pipeline([]).batch(3, timeout=0), ValueError, "timeout"),
        (lambda: Pipeline([], ordered=True).batch(3).map(str), ValueError, "ordered"),
        (lambda: Pipeline([]).map(str, dead_letter=3), TypeError, "dead_letter"),
        (lambda: Pipeline([]).map(str, name="a").map(str, name="a"), ValueError, "name"),
    ],
)
def test_bad_arguments_are_refused_early(build: Any, exc: type, words: str) -> None:
    with pytest.raises(exc, match=words):
        build()


def test_metrics_per_stage() -> None:
    p = Pipeline(range(3000)).map(str, name="a").filter(bool, name="b", workers=2)
    assert p.metrics() == {}
    p.run()
    m = p.metrics()
    assert list(m) == ["a", "b"]
    assert m["a"].processed == m["b"].processed == 3000
    assert len(m["b"].shards) == 2


# --------------------------------------------------------------------------- async


def test_async_for_does_not_block_the_event_loop() -> None:
    # The first item waits for an event that only the event loop sets: if `async for`
    # blocked the loop while waiting for results, the item would never finish.
    loop_ran = threading.Event()

    def first_waits(x: int) -> int:
        if x == 0:
            assert loop_ran.wait(WAIT), "the event loop was blocked"
        return x

    async def main() -> list[int]:
        async def ticker() -> None:
            await asyncio.sleep(0)
            loop_ran.set()

        task = asyncio.create_task(ticker())
        got = [x async for x in Pipeline(range(5000)).map(first_waits, batch_size=64)]
        await task
        return got

    assert sorted(asyncio.run(main())) == list(range(5000))


def test_async_for_raises_fail_fast_errors_and_stops_on_break() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="bad item 9"):
            async for _ in Pipeline(range(100)).map(boom_at(9)):
                pass
        async for x in Pipeline(range(10**9)).map(lambda x: x):
            if x > 100:
                break

    asyncio.run(main())


# --------------------------------------------------------------------------- Ctrl-C

CTRL_C = """
import itertools, sys, time
import shardflow

def slow(x):
    if x == 0:
        print("ready", flush=True)
    time.sleep(0.001)
    return x

p = shardflow.Pipeline(itertools.count(), capacity=64).map(lambda x: x).map(slow)
"""


@pytest.mark.parametrize(
    "drive",
    [
        "p.run()",
        "for x in p: pass",
        "import asyncio\nasync def m():\n    async for x in p: pass\nasyncio.run(m())",
    ],
    ids=["run", "iterate", "async-for"],
)
def test_ctrl_c_stops_a_running_pipeline(drive: str, tmp_path: Path) -> None:
    returncode, out, err = interrupt_when_ready(
        CTRL_C + drive + '\nprint("not interrupted")\n', tmp_path
    )
    assert "not interrupted" not in out
    assert "KeyboardInterrupt" in err, err
    assert returncode != 0


# --------------------------------------------------------------------------- model check

OPS = st.sampled_from(["double", "odd", "split", "fail7", "keyed"])


def reference(source: list[int], ops: list[str]) -> tuple[list[int], int]:
    """What the pipeline must produce (in source order) with errors="continue", and how
    many items fail."""
    items = list(source)
    failed = 0
    for op in ops:
        nxt: list[int] = []
        for x in items:
            if op == "double" or op == "keyed":
                nxt.append(2 * x if op == "double" else x)
            elif op == "odd":
                if x % 2:
                    nxt.append(x)
            elif op == "split":
                nxt.extend([x] * (x % 3))
            elif x % 7 == 0:  # fail7
                failed += 1
            else:
                nxt.append(x + 1)
        items = nxt
    return items, failed


def fail7(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(x)
    return x + 1


def build(p: Pipeline[int], ops: list[str], workers: int, bs: int) -> Pipeline[int]:
    for op in ops:
        if op == "double":
            p = p.map(lambda x: 2 * x, workers=workers, batch_size=bs)
        elif op == "odd":
            p = p.filter(lambda x: x % 2, workers=workers, batch_size=bs)
        elif op == "split":
            p = p.flat_map(lambda x: [x] * (x % 3), workers=workers, batch_size=bs)
        elif op == "fail7":
            p = p.map(fail7, workers=workers, batch_size=bs)
        else:
            p = p.map(lambda x: x, workers=workers, key=lambda x: x % 5, batch_size=bs)
    return p


@settings(max_examples=40)
@given(
    source=st.lists(st.integers(0, 1000), max_size=300),
    ops=st.lists(OPS, max_size=5),
    ordered=st.booleans(),
    workers=st.integers(1, 3),
    bs=st.sampled_from([1, 3, 64]),
    window=st.integers(1, 50),
    group=st.sampled_from([None, 1, 4]),
)
def test_any_composition_matches_the_reference(
    source: list[int],
    ops: list[str],
    ordered: bool,
    workers: int,
    bs: int,
    window: int,
    group: int | None,
) -> None:
    p = build(Pipeline(source, ordered=ordered, window=window, errors="continue"), ops, workers, bs)
    want, failed = reference(source, ops)
    if group is None:
        got = list(p)
        assert got == want if ordered else sorted(got) == sorted(want)
    else:
        groups = list(p.batch(group))
        if ordered:
            assert groups == [want[i : i + group] for i in range(0, len(want), group)]
        else:
            assert sorted(x for g in groups for x in g) == sorted(want)
            assert sum(len(g) != group for g in groups) <= 1
    assert p.report is not None
    check_accounting(p.report)
    assert sum(s.dead_lettered for s in p.report.stages) == failed


def test_ctrl_c_with_a_stage_stuck_in_its_function(tmp_path: Path) -> None:
    # The stage's call never returns; Ctrl-C must still end run() and the process.
    returncode, out, err = interrupt_when_ready(
        """
        import threading
        import shardflow

        never = threading.Event()

        def stuck(x):
            print("ready", flush=True)
            never.wait()

        shardflow.Pipeline(range(10**6), capacity=16).map(lambda x: x).sink(stuck).run()
        print("not interrupted")
        """,
        tmp_path,
    )
    assert "not interrupted" not in out
    assert "KeyboardInterrupt" in err, err
    assert returncode != 0
