"""``shardflow._apply.map_extend``: the per-item loop of a pipeline stage's handler."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from shardflow._apply import map_extend


def test_appends_each_result_in_order() -> None:
    out: list[Any] = []
    map_extend(out, lambda x: x * 2, [1, 2, 3])
    assert out == [2, 4, 6]
    map_extend(out, lambda x: x, [])
    assert out == [2, 4, 6]


def test_resumes_at_len_out() -> None:
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        return -x

    out: list[Any] = ["done"]
    map_extend(out, fn, [10, 20, 30])
    assert out == ["done", -20, -30]
    assert calls == [20, 30]


def test_a_raising_call_leaves_the_results_before_it_and_each_item_runs_once() -> None:
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        if x % 3 == 0:
            raise ValueError(x)
        return x

    items = list(range(1, 10))
    out: list[Any] = []
    failed: list[int] = []
    while True:
        try:
            map_extend(out, fn, items)
            break
        except ValueError as exc:
            # The failing item is items[len(out)].
            assert exc.args[0] == items[len(out)]
            failed.append(items[len(out)])
            out.append(None)
    assert calls == items
    assert failed == [3, 6, 9]
    assert out == [1, 2, None, 4, 5, None, 7, 8, None]


def test_base_exceptions_propagate_too() -> None:
    def fn(x: int) -> int:
        if x == 2:
            raise KeyboardInterrupt
        return x

    out: list[Any] = []
    with pytest.raises(KeyboardInterrupt):
        map_extend(out, fn, [1, 2, 3])
    assert out == [1]


def test_a_function_that_empties_items_stops_the_loop_safely() -> None:
    items = [object() for _ in range(5)]
    keep = list(items)

    def fn(x: object) -> object:
        items.clear()  # the item being handled is still held by the loop
        return x

    out: list[Any] = []
    map_extend(out, fn, items)
    assert out == keep[:1]


def test_arguments_must_be_lists() -> None:
    with pytest.raises(TypeError):
        map_extend([], lambda x: x, (1, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        map_extend((), lambda x: x, [1])  # type: ignore[arg-type]


class CallableObject:
    """No vectorcall slot on its instances: map_extend falls back to a generic call."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: int) -> int:
        self.calls += 1
        return x + 100


class Box:
    def __init__(self, k: int) -> None:
        self.k = k

    def scale(self, x: int) -> int:
        return x * self.k


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x - 1,  # Python function
        abs,  # builtin (METH_O)
        str,  # a type
        Box(3).scale,  # bound method
        CallableObject(),  # instance with __call__
        functools.partial(pow, 2),  # partial over a builtin
    ],
    ids=["function", "builtin", "type", "bound method", "__call__", "partial"],
)
def test_every_kind_of_callable_gives_what_map_gives(fn: Any) -> None:
    items = list(range(-5, 300))
    out: list[Any] = []
    map_extend(out, fn, items)
    assert out == list(map(fn, items))


def test_errors_from_a_builtin_propagate_with_the_index_kept() -> None:
    items: list[Any] = [1, "x", 3]
    out: list[Any] = []
    with pytest.raises(TypeError):
        map_extend(out, abs, items)
    assert out == [1]
    out.append(None)
    map_extend(out, abs, items)
    assert out == [1, None, 3]
