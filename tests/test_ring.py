"""``shardflow._ring.Ring``: the C ring behind every shard, checked against a model.

The stateful test drives a ring and a ``collections.deque`` with the same operations and
requires identical answers; the threaded test requires that every item pushed by several
producers is popped exactly once; the refcount test requires that the ring owns exactly
one reference per queued item and gives it up.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections import Counter, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shardflow._ring import Ring

# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    ("requested", "rounded"),
    [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 16), (1000, 1024), (1 << 20, 1 << 20)],
)
def test_capacity_rounds_up_to_a_power_of_two(requested: int, rounded: int) -> None:
    assert Ring(requested).capacity == rounded


@pytest.mark.parametrize("bad", [0, -1, (1 << 30) + 1])
def test_out_of_range_capacity_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Ring(bad)


@pytest.mark.parametrize("bad", [1.5, "8", True, None])
def test_non_int_capacity_is_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="capacity"):
        Ring(bad)


def test_pop_many_refuses_non_positive_arguments() -> None:
    ring = Ring(4)
    with pytest.raises(ValueError):
        ring.pop_many(0)
    with pytest.raises(ValueError):
        ring.pop_many(1, 0)


def test_push_many_of_nothing_pushes_nothing() -> None:
    ring = Ring(4)
    assert ring.push_many([]) == 0
    assert len(ring) == 0


def test_full_ring_refuses_push_and_takes_a_prefix_of_push_many() -> None:
    ring = Ring(4)
    assert ring.push_many(range(3)) == 3
    assert ring.push_many(["a", "b", "c"]) == 1  # only "a" fits
    assert ring.push("x") is False
    assert ring.pop_many(10) == [0, 1, 2, "a"]
    assert ring.pop_many(10) == []


def test_close_refuses_pushes_but_keeps_queued_items_poppable() -> None:
    ring = Ring(8)
    ring.push(1)
    assert ring.close() is True
    assert ring.close() is False  # already closed
    assert ring.closed
    with pytest.raises(RuntimeError, match="closed"):
        ring.push(2)
    with pytest.raises(RuntimeError, match="closed"):
        ring.push_many([2, 3])
    assert ring.pop_many(8) == [1]


def test_a_full_closed_ring_reports_closed_not_full() -> None:
    ring = Ring(2)
    ring.push_many([1, 2])
    ring.close()
    with pytest.raises(RuntimeError, match="closed"):
        ring.push(3)


def test_indices_wrap_around_many_times() -> None:
    ring = Ring(4)
    expected = 0
    for i in range(0, 1000, 3):
        assert ring.push_many([i, i + 1, i + 2]) == 3
        assert ring.pop_many(3) == [expected, expected + 1, expected + 2]
        expected += 3
    assert len(ring) == 0


def test_a_run_that_wraps_at_any_offset_keeps_its_order() -> None:
    """Pushes and pops copy a range as two contiguous runs, several slots per step: every
    start offset and every length, up to the whole ring, comes back in order."""
    for offset in range(16):
        for size in range(1, 17):
            ring = Ring(16)
            if offset:
                assert ring.push_many(list(range(offset))) == offset
                assert ring.pop_many(offset) == list(range(offset))
            items = [f"item-{offset}-{k}" for k in range(size)]
            assert ring.push_many(items) == size
            assert ring.pop_many(size) == items
            assert len(ring) == 0


# --------------------------------------------------------------------------- stateful model


class RingMachine(RuleBasedStateMachine):
    """The ring behaves like a bounded deque whose bound is capacity rounded up to 2**k."""

    def __init__(self) -> None:
        super().__init__()
        self.ring: Ring
        self.model: deque[int] = deque()
        self.capacity = 0
        self.closed = False
        self.next_value = 0

    @initialize(requested=st.integers(min_value=1, max_value=40))
    def make_ring(self, requested: int) -> None:
        self.ring = Ring(requested)
        self.capacity = self.ring.capacity
        assert self.capacity >= requested
        assert self.capacity & (self.capacity - 1) == 0  # a power of two
        assert self.capacity < 2 * requested or requested == 1

    def fresh(self, n: int) -> list[int]:
        values = list(range(self.next_value, self.next_value + n))
        self.next_value += n
        return values

    @rule()
    def push(self) -> None:
        (value,) = self.fresh(1)
        if self.closed:
            with pytest.raises(RuntimeError):
                self.ring.push(value)
            return
        fits = len(self.model) < self.capacity
        assert self.ring.push(value) is fits
        if fits:
            self.model.append(value)

    @rule(n=st.integers(min_value=1, max_value=50))
    def push_many(self, n: int) -> None:
        values = self.fresh(n)
        if self.closed:
            with pytest.raises(RuntimeError):
                self.ring.push_many(values)
            return
        room = self.capacity - len(self.model)
        pushed = self.ring.push_many(values)
        assert pushed == min(n, room)
        self.model.extend(values[:pushed])  # a prefix, in order

    @rule(max_items=st.integers(min_value=1, max_value=50), divisor=st.integers(1, 4))
    def pop_many(self, max_items: int, divisor: int) -> None:
        available = len(self.model)
        want = min(max_items, -(-available // divisor))  # ceil(available / divisor)
        got = self.ring.pop_many(max_items, divisor)
        assert got == [self.model.popleft() for _ in range(want)]

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        assert self.ring.close() is True
        self.closed = True

    @invariant()
    def same_length(self) -> None:
        if hasattr(self, "ring"):
            assert len(self.ring) == len(self.model)
            assert self.ring.closed is self.closed


RingMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50)
test_ring_matches_a_bounded_deque = RingMachine.TestCase


# --------------------------------------------------------------------------- concurrency


def test_concurrent_producers_and_consumers_deliver_every_item_exactly_once() -> None:
    producers, per_producer, consumers = 4, 25_000, 2
    ring = Ring(256)  # small: producers keep hitting "full", consumers keep hitting "empty"
    popped: list[list[int]] = [[] for _ in range(consumers)]
    producers_done = threading.Event()
    errors: list[BaseException] = []

    def produce(pid: int) -> None:
        try:
            values = list(range(pid * per_producer, (pid + 1) * per_producer))
            i = 0
            while i < len(values):
                # odd producers push batches, even ones push one by one
                pushed = (
                    ring.push_many(values[i : i + 37]) if pid % 2 else int(ring.push(values[i]))
                )
                if pushed:
                    i += pushed
                else:
                    time.sleep(0)  # full: let a consumer have the GIL
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def consume(cid: int) -> None:
        out = popped[cid]
        while True:
            got = ring.pop_many(64, 1 + cid)  # the second consumer takes halves, like a thief
            if got:
                out.extend(got)
            elif producers_done.is_set() and len(ring) == 0:
                return
            else:
                time.sleep(0)  # empty: let a producer have the GIL

    cons = [threading.Thread(target=consume, args=(c,)) for c in range(consumers)]
    prods = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in cons + prods:
        t.start()
    for t in prods:
        t.join(timeout=60)
    producers_done.set()
    for t in cons:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in cons + prods)
    assert errors == []

    counts = Counter(v for out in popped for v in out)
    assert len(counts) == producers * per_producer
    assert set(counts.values()) == {1}
    assert set(counts) == set(range(producers * per_producer))
    # Each consumer sees any one producer's items in push order (FIFO ring).
    for out in popped:
        for pid in range(producers):
            mine = [v for v in out if v // per_producer == pid]
            assert mine == sorted(mine)


# --------------------------------------------------------------------------- references


def test_ring_owns_one_reference_per_queued_item_and_releases_it() -> None:
    sentinel = object()
    gc.collect()
    baseline = sys.getrefcount(sentinel)

    ring = Ring(16)
    assert ring.push(sentinel)
    assert ring.push_many([sentinel] * 20) == 15  # 5 did not fit and must not leak
    assert sys.getrefcount(sentinel) == baseline + 16
    assert ring.push(sentinel) is False  # refused push does not keep a reference
    assert sys.getrefcount(sentinel) == baseline + 16

    got = ring.pop_many(4)
    assert sys.getrefcount(sentinel) == baseline + 16  # moved from the ring to the list
    del got
    assert sys.getrefcount(sentinel) == baseline + 12

    ring.close()
    with pytest.raises(RuntimeError):
        ring.push(sentinel)
    with pytest.raises(RuntimeError):
        ring.push_many([sentinel, sentinel])
    assert sys.getrefcount(sentinel) == baseline + 12

    del ring  # the 12 still queued are released by the destructor
    gc.collect()
    assert sys.getrefcount(sentinel) == baseline


@given(st.lists(st.sampled_from(["push", "push_many", "pop"]), max_size=40))
def test_references_return_to_baseline_after_any_operation_sequence(ops: list[str]) -> None:
    sentinel = object()
    baseline = sys.getrefcount(sentinel)
    ring = Ring(8)
    for op in ops:
        if op == "push":
            ring.push(sentinel)
        elif op == "push_many":
            ring.push_many([sentinel] * 5)
        else:
            del_me = ring.pop_many(3)
            del del_me
        assert sys.getrefcount(sentinel) == baseline + len(ring)
    del ring
    assert sys.getrefcount(sentinel) == baseline
