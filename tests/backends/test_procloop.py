"""shardflow._procloop.run_items: the compiled per-item loop of a process-backend worker
(progress word before each item, failures reported as they happen, optional values)."""

from __future__ import annotations

import array
from typing import Any

import pytest

from shardflow._procloop import run_items


def progress_word() -> tuple[array.array[int], memoryview]:
    word = array.array("q", [-5])
    return word, memoryview(word)


def test_calls_in_order_and_marks_each_item_before_its_call() -> None:
    word, view = progress_word()
    seen: list[tuple[Any, int]] = []

    def handler(item: Any) -> Any:
        seen.append((item, word[0]))
        return item * 2

    values: list[Any] = []
    failed = run_items(handler, [10, 11, 12], view, lambda i, e: None, values)
    assert failed == 0
    assert seen == [(10, 0), (11, 1), (12, 2)]
    assert values == [20, 22, 24]
    assert word[0] == 2  # the last item's index: the caller marks the end


def test_failures_are_reported_before_the_next_item_runs() -> None:
    _, view = progress_word()
    events: list[Any] = []

    def handler(item: int) -> int:
        events.append(("run", item))
        if item % 2:
            raise ValueError(item)
        return item

    def on_error(index: int, exc: BaseException) -> None:
        events.append(("failed", index, type(exc).__name__, exc.args))

    values: list[Any] = []
    assert run_items(handler, [0, 1, 2, 3], view, on_error, values) == 2
    assert events == [
        ("run", 0),
        ("run", 1),
        ("failed", 1, "ValueError", (1,)),
        ("run", 2),
        ("run", 3),
        ("failed", 3, "ValueError", (3,)),
    ]
    assert values == [0, None, 2, None]


def test_without_values_nothing_is_kept() -> None:
    _, view = progress_word()
    assert run_items(lambda x: x, [1, 2], view, lambda i, e: None) == 0
    assert run_items(lambda x: x, [], view, lambda i, e: None) == 0


def test_an_error_in_on_error_propagates_and_leaves_the_mark_on_the_item() -> None:
    word, view = progress_word()

    def on_error(index: int, exc: BaseException) -> None:
        raise RuntimeError("report failed")

    with pytest.raises(RuntimeError, match="report failed"):
        run_items(lambda x: 1 / x, [1, 0, 1], view, on_error)
    assert word[0] == 1


def test_progress_must_be_a_writable_8_byte_buffer() -> None:
    with pytest.raises(ValueError, match="progress must be"):
        run_items(lambda x: x, [1], memoryview(bytearray(4)), lambda i, e: None)
    with pytest.raises(BufferError):
        run_items(lambda x: x, [1], b"12345678", lambda i, e: None)
    with pytest.raises(TypeError):
        run_items(lambda x: x, (1,), memoryview(bytearray(8)), lambda i, e: None)  # type: ignore[arg-type]
