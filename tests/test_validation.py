"""Bad input is refused at construction (or at the call) with an error naming the
parameter and the value (GUIDE.md §2.7)."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from helpers import WAIT
from shardflow import ShardedPool


def noop(item: Any) -> None:
    return None


def message_for(name: str, value: Any) -> str:
    """A regex requiring the parameter's name and the repr of the value in the message."""
    return rf"{re.escape(name)}\b.*{re.escape(repr(value))}"


@pytest.mark.parametrize(
    ("kwargs", "error", "name", "value"),
    [
        ({"workers": 0}, ValueError, "workers", 0),
        ({"workers": -1}, ValueError, "workers", -1),
        ({"workers": "2"}, TypeError, "workers", "2"),
        ({"workers": True}, TypeError, "workers", True),
        ({"workers": 2.0}, TypeError, "workers", 2.0),
        ({"capacity": 0}, ValueError, "capacity", 0),
        ({"capacity": -5}, ValueError, "capacity", -5),
        ({"capacity": 2**31}, ValueError, "capacity", 2**31),
        ({"capacity": 1.5}, TypeError, "capacity", 1.5),
        ({"batch_size": 0}, ValueError, "batch_size", 0),
        ({"batch_size": -3}, ValueError, "batch_size", -3),
        ({"batch_timeout": -1}, ValueError, "batch_timeout", -1),
        ({"batch_timeout": "x"}, TypeError, "batch_timeout", "x"),
        ({"batch_timeout": math.nan}, ValueError, "batch_timeout", math.nan),
        ({"batch_timeout": math.inf}, ValueError, "batch_timeout", math.inf),
        ({"on_full": "explode"}, ValueError, "on_full", "explode"),
        ({"on_full": None}, ValueError, "on_full", None),
        ({"on_error": "log"}, TypeError, "on_error", "log"),
        ({"key": 42}, TypeError, "key", 42),
        ({"name": 7}, TypeError, "name", 7),
        ({"name": b"pool"}, TypeError, "name", b"pool"),
    ],
    ids=lambda v: repr(v) if not isinstance(v, dict) else ",".join(f"{k}={v[k]!r}" for k in v),
)
def test_bad_argument_is_refused_naming_parameter_and_value(
    kwargs: dict[str, Any], error: type[Exception], name: str, value: Any
) -> None:
    with pytest.raises(error, match=message_for(name, value)):
        ShardedPool(noop, **kwargs)


@pytest.mark.parametrize("handler", [None, 42, "print"])
def test_non_callable_handler_is_refused(handler: Any) -> None:
    with pytest.raises(TypeError, match=message_for("handler", handler)):
        ShardedPool(handler)


def test_on_full_error_lists_the_accepted_choices() -> None:
    with pytest.raises(ValueError, match=r"'block'.*'raise'.*'drop'"):
        ShardedPool(noop, on_full="explode")


def test_range_errors_say_what_is_accepted() -> None:
    with pytest.raises(ValueError, match=r"capacity must be between 1 and 1073741824"):
        ShardedPool(noop, capacity=0)


def test_a_refused_construction_starts_no_thread() -> None:
    import threading

    before = threading.active_count()
    with pytest.raises(ValueError):
        ShardedPool(noop, workers=2, on_full="explode")
    assert threading.active_count() == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workers": 1, "capacity": 1, "batch_size": 1},
        # Not 2**30 (MAX_CAPACITY): the rings are written slot by slot at construction, so
        # that would commit 8 GiB per shard.
        {"workers": 2, "capacity": 2**20 + 1, "batch_size": 2},
        {"batch_size": 2**20},
        {"batch_timeout": 0},
        {"batch_timeout": 0.5, "batch_size": 4},
        {"on_full": "drop", "on_error": print, "key": str, "name": "ok"},
    ],
)
def test_boundary_values_are_accepted(kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("workers", 1)
    pool = ShardedPool(noop, **kwargs)
    pool.shutdown()


def test_negative_submit_timeout_is_a_value_error() -> None:
    pool = ShardedPool(noop, workers=1)
    try:
        with pytest.raises(ValueError, match=r"timeout.*-1"):
            pool.submit(1, timeout=-1)
        with pytest.raises(ValueError, match=r"timeout.*-1"):
            pool.submit_many([1], timeout=-1)
        with pytest.raises(TypeError, match="timeout"):
            pool.submit(1, timeout="soon")
    finally:
        pool.shutdown()
    assert pool.metrics().submitted == 0  # refused items were not queued


def test_join_timeout_of_wrong_type_is_a_type_error() -> None:
    pool = ShardedPool(noop, workers=1)
    pool.close()
    with pytest.raises(TypeError, match=message_for("timeout", "x")):
        pool.join(timeout="x")
    with pytest.raises(ValueError, match=message_for("timeout", -1)):
        pool.join(timeout=-1)
    assert pool.join(WAIT)
