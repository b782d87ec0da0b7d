"""Pipeline sources that are cut by slicing (range, list, tuple) give the same items, in
the same order, with the same accounting, as any other iterable; also through a stage on
worker processes."""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shardflow.pipeline import Pipeline, PipelineReport


def check_accounting(report: PipelineReport) -> None:
    assert report.balanced, report
    upstream = report.source_items - report.source_unsent
    for s in report.stages:
        assert s.received == upstream, s
        assert s.received == s.succeeded + s.filtered + s.failed + s.dead_lettered, s
        upstream = s.emitted


def gen(n: int) -> Iterator[int]:
    yield from range(n)


SOURCES: dict[str, Callable[[int], Any]] = {
    "range": range,
    "list": lambda n: list(range(n)),
    "tuple": lambda n: tuple(range(n)),
    "range with a step": lambda n: range(0, 3 * n, 3),
    "generator": gen,
}


@pytest.mark.parametrize("kind", list(SOURCES))
@pytest.mark.parametrize("chunk", [1, 7, 1024])
@pytest.mark.parametrize("ordered", [False, True])
def test_sources_give_every_item_once(kind: str, chunk: int, ordered: bool) -> None:
    n = 2500
    expected = list(SOURCES[kind](n))
    out = list(Pipeline(SOURCES[kind](n), source_chunk=chunk, ordered=ordered).map(lambda x: x))
    assert (out if ordered else sorted(out)) == expected
    report = Pipeline(SOURCES[kind](n), source_chunk=chunk).map(lambda x: x).run()
    assert report.source_items == report.results == n
    check_accounting(report)


@pytest.mark.parametrize("kind", ["range", "list", "tuple"])
def test_a_sliced_source_stops_with_a_fail_fast_error(kind: str) -> None:
    n = 200_000

    def fn(x: int) -> int:
        if x == 300:
            raise ValueError("bad")
        return x

    p = Pipeline(SOURCES[kind](n), capacity=256, source_chunk=64).map(fn)
    with pytest.raises(ValueError, match="bad"):
        p.run()
    report = p.report
    assert report is not None
    assert report.stopped_early and report.source_items < n
    check_accounting(report)


def test_an_empty_sliced_source_runs_nothing() -> None:
    for source in (range(0), [], ()):
        report = Pipeline(source).map(lambda x: x).run()
        assert report.source_items == report.results == 0


@pytest.mark.skipif(sys.platform != "linux", reason="the process backend is tested on Linux")
@pytest.mark.parametrize("kind", ["range", "generator"])
@pytest.mark.parametrize("chunk", [1, 1024])
@pytest.mark.parametrize("ordered", [False, True])
def test_sources_through_a_process_stage(kind: str, chunk: int, ordered: bool) -> None:
    # operator.pos: the identity on ints, importable by the worker processes
    n = 2500
    expected = list(SOURCES[kind](n))
    p = Pipeline(SOURCES[kind](n), source_chunk=chunk, ordered=ordered).map(
        operator.pos, workers=2, backend="process"
    )
    out = list(p)
    assert (out if ordered else sorted(out)) == expected
    assert p.report is not None and p.report.results == n
    check_accounting(p.report)
