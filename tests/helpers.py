"""Small helpers shared by the pool tests (not a test module)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: Upper bound for anything the tests wait on. Generous: the machine is small and noisy,
#: and a bound is only reached when something is broken (a hang), never in a passing run.
WAIT = 30.0


class Gate:
    """A handler that records items and blocks on ``release`` for the items in ``block``.

    ``entered`` is set once a blocking item is inside the handler, so a test knows the
    worker is busy and its queue is no longer being drained.
    """

    def __init__(self, block: Callable[[Any], bool] = lambda item: True) -> None:
        self.block = block
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen: list[Any] = []

    def __call__(self, item: Any) -> None:
        self.seen.append(item)
        if self.block(item):
            self.entered.set()
            if not self.release.wait(WAIT):
                raise RuntimeError("Gate was never released")

    def wait_entered(self) -> None:
        assert self.entered.wait(WAIT), "the handler was never entered"


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def accounted(metrics: Any) -> int:
    return metrics.processed + metrics.failed + metrics.dropped + metrics.returned
