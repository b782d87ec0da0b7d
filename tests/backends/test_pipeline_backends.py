"""Pipeline stages on every backend: threads, worker processes, Ray actors (the fake
remote of test_ray_backend.py; the real cluster is exercised there).

The behaviours of tests/test_pipeline.py that a remote stage must keep, each run on all
three backends with the same expectations: composition, sinks, per-key order,
``ordered=True``, errors (continue and fail fast), exact accounting, and the lifecycle;
then what only remote stages have (a worker that dies, values that cannot be sent back,
functions that cannot be sent, guards refused).
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pipeline_fns as pf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ray_backend import FakeRayBackend

import shardflow
from shardflow.backends import ProcessBackend
from shardflow.backends.process import WorkerLost
from shardflow.pipeline import Pipeline, PipelineReport
from test_pipeline import build, reference  # the model check's builder and oracle

BACKENDS = ["thread", "process", "fake-ray"]

needs_linux = pytest.mark.skipif(
    sys.platform != "linux", reason="the process backend is tested on Linux here"
)


def make_backend(name: str, **kw: Any) -> Any:
    """A backend for a stage; small per-message batches so that a few hundred items make
    several messages per shard."""
    if name == "process":
        if sys.platform != "linux":
            pytest.skip("the process backend is tested on Linux here")
        return ProcessBackend(ship_batch_size=kw.pop("batch", 64), **kw)
    if name == "fake-ray":
        return FakeRayBackend(batch_size=kw.pop("batch", 64), **kw)
    return name


def check_accounting(report: PipelineReport) -> None:
    """Every stage balanced and fed exactly what the one before emitted."""
    assert report.balanced, report
    upstream = report.source_items - report.source_unsent
    for s in report.stages:
        assert s.received == upstream, s
        assert s.received == s.succeeded + s.filtered + s.failed + s.dead_lettered, s
        upstream = s.emitted


# --------------------------------------------------------------------------- composition


@pytest.mark.parametrize("backend", BACKENDS)
def test_map_filter_flat_map_compose(backend: str) -> None:
    b = make_backend(backend)
    p = (
        Pipeline(range(1000))
        .map(pf.triple, workers=2, backend=b)
        .filter(pf.even, backend=b)
        .flat_map(pf.pair_if_div4, backend=b)
    )
    got = sorted(p)
    want = sorted(y for x in range(1000) for y in ([3 * x, -3 * x] if 3 * x % 4 == 0 else []))
    assert got == want
    assert p.report is not None
    check_accounting(p.report)
    assert p.report.stage("flat_map-3").emitted == len(want)
    assert p.report.stage("filter-2").filtered == 500


@pytest.mark.parametrize("backend", BACKENDS)
def test_sink_sees_every_item_and_counts_them(backend: str, tmp_path: Path) -> None:
    report = (
        Pipeline(range(2000))
        .map(pf.triple, backend=make_backend(backend))
        .sink(pf.AppendTo(str(tmp_path)), backend=make_backend(backend))
        .run()
    )
    assert sorted(int(x) for x in pf.read_lines(str(tmp_path))) == [3 * x for x in range(2000)]
    assert report.results == 2000
    assert report.stage("sink-2").succeeded == 2000
    check_accounting(report)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pipeline_wide_backend_is_the_stages_default(backend: str) -> None:
    p = (
        Pipeline(range(300), backend=make_backend(backend))
        .map(pf.triple)
        .batch(7)
        .map(len, backend="thread")
    )
    assert sorted(p) == [6] + [7] * 42
    assert p._stages[0].backend is (None if backend == "thread" else p.backend)
    assert p._stages[1].backend is None  # batch() groups in this process
    assert p._stages[2].backend is None
    assert p.report is not None
    check_accounting(p.report)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyed_stage_keeps_per_key_order(backend: str) -> None:
    seen: list[tuple[int, int]] = []
    items = [(i % 5, i) for i in range(3000)]
    Pipeline(items).map(pf.ident, workers=2, key=pf.kv_key, backend=make_backend(backend)).sink(
        seen.append
    ).run()
    for k in range(5):
        mine = [i for key, i in seen if key == k]
        assert mine == sorted(mine)
        assert len(mine) == 600


# --------------------------------------------------------------------------- ordering


@pytest.mark.parametrize("backend", BACKENDS)
def test_ordered_yields_in_source_order(backend: str) -> None:
    b = make_backend(backend, batch=8)
    p = (
        Pipeline(range(1500), ordered=True, window=64)
        .map(pf.shuffled_latency, workers=2, backend=b)
        .flat_map(pf.repeat_mod3, backend=b)
        .filter(pf.not_mod5)  # a thread stage between remote ones
        .map(pf.shuffled_latency, workers=2, backend=b)
    )
    assert list(p) == [y for x in range(1500) for y in [x] * (x % 3) if y % 5 != 0]
    assert p.report is not None
    check_accounting(p.report)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ordered_sink_sees_source_order(backend: str, tmp_path: Path) -> None:
    report = (
        Pipeline(range(600), ordered=True, window=32)
        .map(pf.shuffled_latency, workers=2, backend=make_backend(backend, batch=4))
        .sink(pf.AppendTo(str(tmp_path)), backend=make_backend(backend, batch=4))
        .run()
    )
    assert pf.read_lines(str(tmp_path)) == [str(x) for x in range(600)]
    check_accounting(report)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ordered_with_a_keyed_remote_stage(backend: str) -> None:
    # A key makes the ordered pipeline move one-item units (after the flat_map, one
    # source item's expansion); the keyed stage's step takes whole units.
    dead: list[tuple[Any, BaseException]] = []
    p = (
        Pipeline(range(1500), ordered=True, errors="continue", window=100)
        .flat_map(pf.repeat_mod3)
        .map(pf.fail7, workers=2, key=pf.mod5, backend=make_backend(backend), dead_letter=dead)
    )
    assert list(p) == [y + 1 for x in range(1500) for y in [x] * (x % 3) if y % 7]
    assert sorted(x for x, _ in dead) == [
        y for x in range(1500) for y in [x] * (x % 3) if y % 7 == 0
    ]
    assert p.report is not None
    check_accounting(p.report)


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_continue_routes_each_failed_item_to_its_stage_dead_letter(
    backend: str, ordered: bool
) -> None:
    listed: list[tuple[Any, BaseException]] = []
    called: list[tuple[Any, BaseException]] = []
    b = make_backend(backend, batch=10)
    p = (
        Pipeline(range(1000), errors="continue", ordered=ordered)
        .map(pf.fail7, workers=2, dead_letter=listed, backend=b)
        .filter(pf.odd_or_fail11, dead_letter=lambda x, e: called.append((x, e)), backend=b)
        .flat_map(pf.gen_fails_on_4, backend=b, name="kept")
    )
    got = list(p)
    after_map = [x + 1 for x in range(1000) if x % 7]
    assert sorted(x for x, _ in listed) == [x for x in range(1000) if x % 7 == 0]
    assert all(isinstance(e, ValueError) and "bad item" in str(e) for _, e in listed)
    assert sorted(x for x, _ in called) == [x for x in after_map if x % 11 == 0]
    assert all(isinstance(e, KeyError) for _, e in called)
    kept = [x for x in after_map if x % 11 and x % 2 == 1]
    want = [y for x in kept if x != 4 for y in (x, x)]
    assert (got if ordered else sorted(got)) == want
    assert p.report is not None
    assert p.report.stage("kept").dead_lettered == (1 if 4 in kept else 0)
    assert not p.report.stopped_early
    check_accounting(p.report)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fail_fast_raises_the_first_error_and_stops_the_source(backend: str) -> None:
    n = 200_000
    p = (
        Pipeline(range(n), capacity=256)
        .map(pf.ident)
        .map(pf.fail_at_500, backend=make_backend(backend))
    )
    with pytest.raises(ValueError, match="bad item 500") as info:
        p.run()
    report = info.value.pipeline_report  # type: ignore[attr-defined]
    assert report is p.report
    assert report.stopped_early
    assert report.source_items < n
    bad = report.stage("map-2")
    assert bad.failed == 1
    assert bad.errors[0][0] == 500
    check_accounting(report)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fail_fast_in_an_ordered_pipeline(backend: str) -> None:
    p = Pipeline(range(50_000), ordered=True, window=512, capacity=64).map(
        pf.fail_at_500, workers=2, backend=make_backend(backend)
    )
    got: list[int] = []
    with pytest.raises(ValueError, match="bad item 500"):
        for x in p:
            got.append(x)
    # In source order, the failed item left out; what was inside drained.
    assert got[:500] == list(range(500))
    assert got == sorted(set(got)) and 500 not in got
    assert p.report is not None
    check_accounting(p.report)


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_leaving_the_loop_early_stops_the_pipeline(backend: str, ordered: bool) -> None:
    before = set(multiprocessing.active_children())
    threads = threading.active_count()
    p = Pipeline(range(10**9), ordered=ordered).map(
        pf.ident, workers=2, backend=make_backend(backend)
    )
    for x in p:
        if x > 1000:
            break
    # The stage's workers go away: threads, and the worker processes of a process stage.
    from helpers import wait_until

    assert wait_until(lambda: threading.active_count() <= threads)
    assert wait_until(lambda: set(multiprocessing.active_children()) <= before)


# --------------------------------------------------------------------------- remote only


@needs_linux
@pytest.mark.parametrize("ordered", [False, True])
def test_a_worker_that_dies_once_loses_nothing(ordered: bool, tmp_path: Path) -> None:
    p = Pipeline(range(500), ordered=ordered).map(
        pf.ExitOn(str(tmp_path), 123), workers=2, backend=make_backend("process")
    )
    got = list(p)
    assert (got if ordered else sorted(got)) == [x + 1 for x in range(500)]
    assert p.report is not None
    assert p.report.stages[0].succeeded == 500
    check_accounting(p.report)


@needs_linux
@pytest.mark.parametrize("ordered", [False, True])
def test_an_item_that_always_kills_its_worker_fails_alone(ordered: bool, tmp_path: Path) -> None:
    dead: list[tuple[Any, BaseException]] = []
    p = Pipeline(range(400), ordered=ordered, errors="continue").map(
        pf.ExitOn(str(tmp_path), 77, times=100),
        workers=2,
        backend=make_backend("process", max_attempts=2),
        dead_letter=dead,
    )
    got = list(p)
    assert (got if ordered else sorted(got)) == [x + 1 for x in range(400) if x != 77]
    assert [x for x, _ in dead] == [77]
    assert isinstance(dead[0][1], WorkerLost) and dead[0][1].attempts == 2
    assert p.report is not None
    stage = p.report.stages[0]
    assert (stage.succeeded, stage.dead_lettered) == (399, 1)
    check_accounting(p.report)


@needs_linux
def test_keyed_ordered_an_item_that_always_kills_its_worker_fails_alone(tmp_path: Path) -> None:
    dead: list[tuple[Any, BaseException]] = []
    p = Pipeline(range(300), ordered=True, errors="continue").map(
        pf.ExitOn(str(tmp_path), 77, times=100),
        workers=2,
        key=pf.mod5,
        backend=make_backend("process", max_attempts=2),
        dead_letter=dead,
    )
    assert list(p) == [x + 1 for x in range(300) if x != 77]
    assert [x for x, _ in dead] == [77] and isinstance(dead[0][1], WorkerLost)
    assert p.report is not None
    check_accounting(p.report)


@needs_linux
def test_an_item_that_kills_its_worker_fails_fast(tmp_path: Path) -> None:
    p = Pipeline(range(300)).map(
        pf.ExitOn(str(tmp_path), 50, times=100), backend=make_backend("process", max_attempts=1)
    )
    with pytest.raises(WorkerLost):
        p.run()
    assert p.report is not None
    stage = p.report.stages[0]
    assert stage.failed == 1 and stage.errors[0][0] == 50
    check_accounting(p.report)


@pytest.mark.parametrize("backend", ["process", "fake-ray"])
def test_a_value_that_cannot_be_sent_back_fails_its_item_only(backend: str) -> None:
    dead: list[tuple[Any, BaseException]] = []
    p = Pipeline(range(20), errors="continue").map(
        pf.lock_for_5, backend=make_backend(backend), dead_letter=dead
    )
    assert sorted(p) == [x for x in range(20) if x != 5]
    assert [x for x, _ in dead] == [5]
    assert isinstance(dead[0][1], TypeError)
    assert p.report is not None
    check_accounting(p.report)


@needs_linux
def test_an_item_that_cannot_be_pickled_fails_alone() -> None:
    lock = threading.Lock()
    dead: list[tuple[Any, BaseException]] = []
    p = Pipeline([1, 2, lock, 4], errors="continue").map(
        pf.ident, backend=make_backend("process"), dead_letter=dead
    )
    assert sorted(p) == [1, 2, 4]
    assert [x for x, _ in dead] == [lock]
    assert isinstance(dead[0][1], TypeError) and "lock" in str(dead[0][1])


def test_a_function_that_cannot_be_sent_is_refused_when_the_stage_is_added() -> None:
    with pytest.raises(TypeError, match="fn: a map stage on backend='process'"):
        Pipeline(range(3)).map(pf.HoldsLock(), backend="process")
    with pytest.raises(TypeError, match="fn: a filter stage"):
        Pipeline(range(3), backend="process").filter(pf.HoldsLock())


@needs_linux
def test_lambdas_travel_by_value_with_cloudpickle() -> None:
    pytest.importorskip("cloudpickle")  # in the test extra; optional for users
    offset = 10
    p = (
        Pipeline(range(300), backend=make_backend("process"))
        .map(lambda x: x + offset)
        .filter(lambda x: x % 2 == 0)
    )
    assert sorted(p) == [x + offset for x in range(300) if (x + offset) % 2 == 0]


def test_retry_is_refused_on_remote_stages() -> None:
    with pytest.raises(ValueError, match="retry= is not supported on a stage with backend"):
        Pipeline(range(3)).map(pf.ident, backend="process", retry=shardflow.Retry(2))


@pytest.mark.parametrize("backend", ["process", "fake-ray"])
def test_breaker_limiter_and_rate_limiter_stay_in_this_process(backend: str) -> None:
    breaker = shardflow.CircuitBreaker(max_failures=3, reset_timeout=3600)
    dead: list[tuple[Any, BaseException]] = []
    p = Pipeline(range(400), errors="continue").map(
        pf.fail_from_100,
        workers=2,
        backend=make_backend(backend, batch=8),
        breaker=breaker,
        limiter=shardflow.Limiter(2),
        rate_limiter=shardflow.RateLimiter(1e6, burst=8),
        dead_letter=dead,
    )
    got = sorted(p)
    # One breaker for both workers: once open (3 failures), items are refused here with
    # CircuitOpen, never shipped; only the lists already shipped could still fail.
    assert set(got) <= set(range(100))
    assert sorted(got + [x for x, _ in dead]) == list(range(400))
    failed = [x for x, e in dead if isinstance(e, ConnectionError)]
    assert 3 <= len(failed) <= 3 + 2 * 2 * 8 and all(x >= 100 for x in failed)
    assert {type(e).__name__ for _, e in dead} == {"ConnectionError", "CircuitOpen"}
    assert p.report is not None
    check_accounting(p.report)


def test_bad_backends_are_refused_early() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        Pipeline(range(3), backend="gpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend must be one of"):
        Pipeline(range(3)).map(pf.ident, backend="processes")
    with pytest.raises(TypeError, match="backend must be"):
        Pipeline(range(3)).sink(pf.ident, backend=3)  # type: ignore[arg-type]


def test_a_stage_given_by_name_ships_its_batch_size() -> None:
    p = (
        Pipeline(range(3))
        .map(pf.ident, backend="process", batch_size=33)
        .map(pf.ident, backend="process")
        .map(pf.ident, backend=ProcessBackend(ship_batch_size=7), batch_size=99)
    )
    given, default, own = (s.backend for s in p._stages)
    assert isinstance(given, ProcessBackend) and given.ship_batch_size == 33
    # Without a batch_size, the backend's own default (not the thread stages' 512).
    assert isinstance(default, ProcessBackend)
    assert p._stages[1].batch_size == default.ship_batch_size == ProcessBackend().ship_batch_size
    # A Backend instance is used as it is.
    assert isinstance(own, ProcessBackend) and own.ship_batch_size == 7


def test_fake_ray_actor_death_loses_nothing() -> None:
    calls: Counter[tuple[int, int]] = Counter()

    def die(shard: int, seq: int, attempt: int) -> int | None:
        calls[(shard, seq)] += 1
        return 5 if (seq == 3 and attempt == 1) else None

    p = Pipeline(range(2000), ordered=True).map(
        pf.triple, workers=2, backend=FakeRayBackend(die=die, batch_size=50)
    )
    assert list(p) == [3 * x for x in range(2000)]
    assert p.report is not None
    check_accounting(p.report)
    assert any(n > 1 for n in calls.values())  # a batch was sent again


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_continue_a_key_function_that_raises_dead_letters_the_item(
    backend: str, ordered: bool
) -> None:
    dead: list[tuple[Any, BaseException]] = []
    p = (
        Pipeline(range(3000), errors="continue", capacity=64, ordered=ordered)
        .map(pf.ident, batch_size=16)
        .map(
            pf.ident,
            workers=2,
            key=pf.KeyFailsOn(1234),
            backend=make_backend(backend, batch=16),
            dead_letter=dead,
        )
    )
    got = list(p)
    want = [x for x in range(3000) if x != 1234]
    assert (got if ordered else sorted(got)) == want
    assert [(x, type(e)) for x, e in dead] == [(1234, LookupError)]
    assert p.report is not None
    keyed = p.report.stages[1]
    assert (keyed.received, keyed.dead_lettered, keyed.succeeded) == (3000, 1, 2999)
    check_accounting(p.report)


class StuckSink:
    """A counting source and a (thread) sink that blocks on item 0 until released."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.yielded = 0
        self.gate = threading.Event()
        self.entered = threading.Event()

    def source(self) -> Any:
        for i in range(self.n):
            self.yielded += 1
            yield i

    def sink(self, x: int) -> None:
        if x == 0:
            self.entered.set()
            assert self.gate.wait(30)


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("backend", ["process", "fake-ray"])
def test_a_stuck_sink_bounds_what_the_source_yields_ahead(backend: str, ordered: bool) -> None:
    from helpers import wait_until

    n = 100_000
    stuck = StuckSink(n)
    p = (
        Pipeline(stuck.source(), capacity=256, ordered=ordered, window=2000)
        .map(pf.ident, batch_size=32)
        .map(pf.ident, backend=make_backend(backend, batch=32))
        .sink(stuck.sink, batch_size=32)
    )
    result: list[PipelineReport] = []
    runner = threading.Thread(target=lambda: result.append(p.run()))
    runner.start()
    try:
        assert stuck.entered.wait(30)
        # With the sink stuck, the source stops: well before the end, within the bound.
        seen: list[int] = []

        def settled() -> bool:
            seen.append(stuck.yielded)
            return len(seen) > 5 and seen[-1] == seen[-5]

        assert wait_until(settled)
        assert stuck.yielded <= p.max_in_flight() < n
    finally:
        stuck.gate.set()
        runner.join(30)
    assert not runner.is_alive()
    assert result[0].results == n
    check_accounting(result[0])


@needs_linux
def test_ctrl_c_stops_a_pipeline_with_a_process_stage(tmp_path: Path) -> None:
    from helpers import interrupt_when_ready

    returncode, out, err = interrupt_when_ready(
        """
        import itertools, time
        import shardflow

        def slow(x):
            if x == "0":
                print("ready", flush=True)
            time.sleep(0.001)
            return x

        p = (
            shardflow.Pipeline(itertools.count(), capacity=64)
            .map(str, workers=2, backend="process")
            .map(slow)
        )
        p.run()
        print("not interrupted")
        """,
        tmp_path,
    )
    assert "not interrupted" not in out
    assert "KeyboardInterrupt" in err, err
    assert returncode != 0


# --------------------------------------------------------------------------- fused stages


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("backend", ["process", "fake-ray"])
def test_consecutive_remote_stages_fuse_and_keep_each_stages_accounting(
    backend: str, ordered: bool, tmp_path: Path
) -> None:
    b = make_backend(backend, batch=16)
    dead: dict[str, list[tuple[Any, BaseException]]] = {"m": [], "f": [], "fm": []}
    p = (
        Pipeline(range(2000), ordered=ordered, errors="continue", backend=b)
        .map(pf.fail7, workers=2, dead_letter=dead["m"], name="m")
        .filter(pf.odd_or_fail11, workers=2, dead_letter=dead["f"], name="f")
        .flat_map(pf.repeat_mod3, workers=2, dead_letter=dead["fm"], name="fm")
        .map(pf.fail_div3, workers=2, name="m2")
    )
    got = list(p)
    s = p._stages
    assert s[0].pool is s[1].pool is s[2].pool is s[3].pool  # one pool, one worker loop
    after_m = [x + 1 for x in range(2000) if x % 7]
    kept = [x for x in after_m if x % 11 and x % 2 == 1]
    expanded = [y for x in kept for y in [x] * (x % 3)]
    want = [y for y in expanded if y % 3]
    assert (got if ordered else sorted(got)) == want
    # Each failure went to its own stage's dead letter, with the item that stage got.
    assert sorted(x for x, _ in dead["m"]) == [x for x in range(2000) if x % 7 == 0]
    assert sorted(x for x, _ in dead["f"]) == [x for x in after_m if x % 11 == 0]
    assert all(isinstance(e, KeyError) for _, e in dead["f"])
    assert dead["fm"] == []
    assert p.report is not None
    m2 = p.report.stage("m2")
    assert sorted(x for x, _ in m2.errors) == [y for y in expanded if y % 3 == 0]
    assert (m2.received, m2.dead_lettered) == (len(expanded), len(expanded) - len(want))
    check_accounting(p.report)


@needs_linux
def test_fused_stages_pass_values_that_would_not_pickle() -> None:
    p = Pipeline(range(100), backend=make_backend("process")).map(pf.with_lock).map(pf.drop_lock)
    assert sorted(p) == list(range(100))
    with pytest.raises(TypeError):
        # Unfused, the lock must cross to this process: the item fails (fail fast).
        list(
            Pipeline(range(100), backend=make_backend("process"), fuse=False)
            .map(pf.with_lock)
            .map(pf.drop_lock)
        )


@needs_linux
def test_stages_do_not_fuse_across_different_backends_workers_or_keys() -> None:
    b = make_backend("process")
    p = (
        Pipeline(range(200))
        .map(pf.ident, backend=b)
        .map(pf.ident, backend=make_backend("process"))  # another backend
        .map(pf.ident, backend=b, workers=2)  # other workers
        .map(pf.ident, backend=b, workers=2, key=pf.mod5)  # its own routing
        .map(pf.ident, backend=b, workers=2)  # fuses with the keyed one before it
    )
    assert sorted(p) == list(range(200))
    pools = [s.pool for s in p._stages]
    assert len({id(x) for x in pools}) == 4 and pools[3] is pools[4]
    assert p.report is not None
    check_accounting(p.report)


@needs_linux
def test_a_worker_death_in_a_fused_stage_is_charged_to_the_first_stage(tmp_path: Path) -> None:
    dead: list[tuple[Any, BaseException]] = []
    p = (
        Pipeline(range(300), errors="continue", backend=make_backend("process", max_attempts=2))
        .map(pf.ident, dead_letter=dead, name="first")
        .map(pf.ExitOn(str(tmp_path), 42, times=100), name="second")
    )
    assert sorted(p) == [x + 1 for x in range(300) if x != 42]
    assert [x for x, _ in dead] == [42] and isinstance(dead[0][1], WorkerLost)
    assert p.report is not None
    assert p.report.stage("first").dead_lettered == 1
    assert p.report.stage("second").received == 299
    check_accounting(p.report)


@needs_linux
def test_a_stage_with_a_guard_is_not_fused() -> None:
    b = make_backend("process")
    p = (
        Pipeline(range(100))
        .map(pf.ident, backend=b)
        .map(pf.ident, backend=b, limiter=shardflow.Limiter(1))
        .map(pf.ident, backend=b)
    )
    assert sorted(p) == list(range(100))
    pools = [s.pool for s in p._stages]
    assert pools[0] is not pools[1] and pools[1] is not pools[2]


@pytest.mark.parametrize("backend", ["process", "fake-ray"])
def test_async_for_over_a_pipeline_with_a_remote_stage(backend: str) -> None:
    import asyncio

    async def main() -> list[int]:
        p = Pipeline(range(500), ordered=True).map(pf.triple, backend=make_backend(backend))
        return [x async for x in p]

    assert asyncio.run(main()) == [3 * x for x in range(500)]


# --------------------------------------------------------------------------- model check

OPS = st.sampled_from(["double", "odd", "split", "fail7", "keyed"])


def _model_check(
    backend: Any, source: list[int], ops: list[str], ordered: bool, workers: int, group: Any
) -> None:
    """test_pipeline.py's reference check, every stage on ``backend`` (consecutive
    stages fuse where they can), ``errors="continue"``."""
    p = build(
        Pipeline(source, ordered=ordered, window=50, errors="continue", backend=backend),
        ops,
        workers,
        3,
    )
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
    assert p.report is not None
    check_accounting(p.report)
    assert sum(s.dead_lettered for s in p.report.stages) == failed


@settings(max_examples=40)
@given(
    source=st.lists(st.integers(0, 1000), max_size=200),
    ops=st.lists(OPS, max_size=4),
    ordered=st.booleans(),
    workers=st.integers(1, 2),
    group=st.sampled_from([None, 4]),
)
def test_any_composition_on_fake_ray_matches_the_reference(
    source: list[int], ops: list[str], ordered: bool, workers: int, group: Any
) -> None:
    _model_check(FakeRayBackend(batch_size=7), source, ops, ordered, workers, group)


@needs_linux
@settings(max_examples=8)
@given(
    source=st.lists(st.integers(0, 1000), max_size=200),
    ops=st.lists(OPS, min_size=1, max_size=3),
    ordered=st.booleans(),
    workers=st.integers(1, 2),
)
def test_any_composition_on_processes_matches_the_reference(
    source: list[int], ops: list[str], ordered: bool, workers: int
) -> None:
    pytest.importorskip("cloudpickle")  # build() uses lambdas; in the test extra
    _model_check(ProcessBackend(ship_batch_size=7), source, ops, ordered, workers, None)
