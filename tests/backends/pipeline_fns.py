"""Stage functions for tests/backends/test_pipeline_backends.py: module-level, so that a
process stage can send them to its worker processes (by reference)."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from proc_handlers import ExitOnceOn, lock_for_5  # noqa: F401 - used as pf.lock_for_5


def triple(x: int) -> int:
    return 3 * x


def even(x: int) -> bool:
    return x % 2 == 0


def pair_if_div4(x: int) -> list[int]:
    return [x, -x] if x % 4 == 0 else []


def ident(x: Any) -> Any:
    return x


def kv_key(kv: tuple[int, int]) -> int:
    return kv[0]


def repeat_mod3(x: int) -> list[int]:
    return [x] * (x % 3)


def not_mod5(x: int) -> bool:
    return x % 5 != 0


def shuffled_latency(x: int) -> int:
    time.sleep(random.random() / 5000)  # items of different shards finish out of order
    return x


def fail7(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(f"bad item {x}")
    return x + 1


def odd_or_fail11(x: int) -> bool:
    if x % 11 == 0:
        raise KeyError(x)
    return x % 2 == 1


def gen_fails_on_4(x: int) -> Any:
    yield x
    if x == 4:
        raise ValueError("half way")
    yield x


def fail_at_500(x: int) -> int:
    if x == 500:
        raise ValueError(f"bad item {x}")
    return x


class AppendTo:
    """A sink: appends ``repr(item)`` per line to ``<dir>/<pid>`` (a process sink's side
    effects happen in its worker; the test reads them back)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __call__(self, item: Any) -> None:
        with open(Path(self.directory) / str(os.getpid()), "a") as f:
            f.write(f"{item!r}\n")


def read_lines(directory: str) -> list[str]:
    """Every line AppendTo wrote, per file in writing order (one file per process)."""
    out: list[str] = []
    for path in sorted(Path(directory).iterdir()):
        out += path.read_text().splitlines()
    return out


# The pool tests' helpers: a crash counted across workers by a marker file, and a
# result that cannot be sent back for item 5.
ExitOn = ExitOnceOn


def slow(x: int) -> int:
    time.sleep(0.001)
    return x


def mod5(x: int) -> int:
    return x % 5


class KeyFailsOn:
    """A key function: ``x % 3``, raising for ``bad``."""

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def __call__(self, x: int) -> int:
        if x == self.bad:
            raise LookupError(f"no key for {x}")
        return x % 3


def with_lock(x: int) -> tuple[int, Any]:
    """An output that cannot be pickled (only a fused next stage can take it)."""
    return x, __import__("threading").Lock()


def drop_lock(pair: tuple[int, Any]) -> int:
    return pair[0]


def fail_div3(x: int) -> int:
    if x % 3 == 0:
        raise ArithmeticError(x)
    return x


class HoldsLock:
    """A callable that no pickler can send (it holds a lock)."""

    def __init__(self) -> None:
        self.lock = __import__("threading").Lock()

    def __call__(self, x: Any) -> Any:
        return x


def fail_from_100(x: int) -> int:
    if x >= 100:
        raise ConnectionError(f"down at {x}")
    return x
