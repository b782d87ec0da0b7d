"""Handlers for tests/backends/test_process_backend.py: importable by worker processes
(backend="process" pickles the handler by reference)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def noop(x: Any) -> None:
    pass


class Recorder:
    """Appends ``"<monotonic_ns> <pid> <item>"`` per item to ``<dir>/<pid>``, so a test
    can rebuild the order in which the workers (across restarts) handled items.
    Item 13 raises; ``exit_on`` items end the worker (os._exit); ``sleep_on`` items
    sleep ``sleep`` seconds first."""

    def __init__(
        self,
        directory: str,
        *,
        exit_on: frozenset[Any] = frozenset(),
        sleep_on: frozenset[Any] = frozenset(),
        sleep: float = 0.0,
        fail_on: frozenset[Any] = frozenset(),
    ) -> None:
        self.directory = directory
        self.exit_on = exit_on
        self.sleep_on = sleep_on
        self.sleep = sleep
        self.fail_on = fail_on

    def __call__(self, item: Any) -> None:
        if item in self.sleep_on:
            time.sleep(self.sleep)
        if item in self.exit_on:
            os._exit(7)
        if item in self.fail_on:
            raise ValueError(f"bad item {item!r}")
        with open(Path(self.directory) / str(os.getpid()), "a") as f:
            f.write(f"{time.monotonic_ns()} {os.getpid()} {item!r}\n")


def read_records(directory: str) -> list[tuple[int, int, str]]:
    """Every record of a Recorder's directory, in the order they were written."""
    out = []
    for path in Path(directory).iterdir():
        for line in path.read_text().splitlines():
            t, pid, item = line.split(" ", 2)
            out.append((int(t), int(pid), item))
    out.sort()
    return out


class Unsendable(Exception):
    """An exception that does not survive pickling (its __init__ takes two arguments)."""

    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(f"{a}/{b}")
        self.lock = __import__("threading").Lock()


def raise_unsendable(x: Any) -> None:
    raise Unsendable(x, "lock")


def batch_sum(batch: list[int]) -> None:
    if 13 in batch:
        raise ValueError("13 in batch")


class LoadsOnlyHere:
    """Pickles fine, but refuses to be unpickled in another process: a handler whose
    worker cannot start."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["pid"] != os.getpid():
            raise RuntimeError("cannot be loaded in a worker")
        self.__dict__.update(state)

    def __call__(self, x: Any) -> None:
        pass


class BatchLog:
    """Appends each batch's length and items to ``<dir>/<pid>`` (a batch handler)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __call__(self, batch: list[Any]) -> None:
        with open(Path(self.directory) / str(os.getpid()), "a") as f:
            f.write(" ".join(map(str, batch)) + "\n")


def square(x: int) -> int:
    if x % 7 == 3:
        raise ValueError(f"bad item {x}")
    return x * x


def total(batch: list[int]) -> int:
    return sum(batch)


def lock_for_5(x: int) -> Any:
    """Returns something that does not pickle for item 5."""
    return __import__("threading").Lock() if x == 5 else x


class ExitOnceOn:
    """Returns ``x + 1``; the first time it meets ``item`` (a marker file in ``directory``
    remembers it across workers) its worker exits: the values of the items before it die
    with that worker."""

    def __init__(self, directory: str, item: int, times: int = 1) -> None:
        self.directory = directory
        self.item = item
        self.times = times

    def __call__(self, x: int) -> int:
        if x == self.item:
            marker = Path(self.directory) / "exits"
            done = len(marker.read_text()) if marker.exists() else 0
            if done < self.times:
                with open(marker, "a") as f:
                    f.write("x")
                os._exit(9)
        return x + 1


def fail_below_100(x: int) -> None:
    if x < 100:
        raise ConnectionError(f"downstream refused {x}")


class Interval:
    """A list handler that records ``start end`` (monotonic ns, system-wide) per batch in
    ``<dir>/<pid>``; each batch takes ``pause`` seconds."""

    def __init__(self, directory: str, pause: float) -> None:
        self.directory = directory
        self.pause = pause

    def __call__(self, batch: list[Any]) -> None:
        t0 = time.monotonic_ns()
        time.sleep(self.pause)
        with open(Path(self.directory) / str(os.getpid()), "a") as f:
            f.write(f"{t0} {time.monotonic_ns()}\n")


def read_intervals(directory: str) -> list[tuple[int, int]]:
    out = []
    for path in Path(directory).iterdir():
        for line in path.read_text().splitlines():
            a, b = line.split()
            out.append((int(a), int(b)))
    return sorted(out)


class ArrayRecorder:
    """For array pools: appends one JSON line per batch to ``<dir>/<pid>`` (its form,
    column dtypes, keys ``k`` and sequence numbers ``seq``). A batch holding key
    ``fail_key`` raises."""

    def __init__(self, directory: str, *, fail_key: int | None = None) -> None:
        self.directory = directory
        self.fail_key = fail_key

    def __call__(self, batch: Any) -> None:
        import json

        import numpy as np

        if isinstance(batch, dict):
            form, cols = "dict", batch
        else:
            form, cols = "array", {name: batch[name] for name in batch.dtype.names}
        if self.fail_key is not None and bool(np.any(cols["k"] == self.fail_key)):
            raise ValueError(f"batch with key {self.fail_key}")
        record = {
            "form": form,
            "type": type(batch).__name__,
            "dtypes": {name: str(col.dtype) for name, col in cols.items()},
            "k": cols["k"].tolist(),
            "seq": cols["seq"].tolist(),
            "xsum": float(cols["x"].sum()),
        }
        with open(Path(self.directory) / str(os.getpid()), "a") as f:
            f.write(json.dumps(record) + "\n")


def read_array_records(directory: str) -> list[dict[str, Any]]:
    """Every batch an ArrayRecorder wrote, per worker file in the order written."""
    import json

    out = []
    for path in sorted(Path(directory).iterdir()):
        out.extend(json.loads(line) for line in path.read_text().splitlines())
    return out


# ---------------------------------------------------------------- serializer= pairs


def json_dumps(x: Any) -> bytes:
    """A stdlib serializer for ProcessBackend(serializer=(json_dumps, json_loads))."""
    import json

    return json.dumps(x, separators=(",", ":")).encode()


def json_loads(data: bytes) -> Any:
    import json

    return json.loads(data)


def drop_last_loads(data: bytes) -> Any:
    """A broken loads: one item short (the worker must refuse the batch, not misname
    items)."""
    return json_loads(data)[:-1]


def enrich(record: dict[str, Any]) -> dict[str, Any]:
    """A dict-records handler: fails on id 13, returns a new dict."""
    if record["id"] == 13:
        raise ValueError("bad record 13")
    return {"id": record["id"], "total": record["a"] + record["b"], "tag": record["tag"].upper()}


def as_set(x: int) -> Any:
    """Returns a set for multiples of 10 (JSON cannot carry it), else the item."""
    return {x} if x % 10 == 0 else x


def slow_zero(x: int) -> int:
    """Item 0 takes a while (so the next batch is being pickled when it comes back)."""
    if x == 0:
        time.sleep(0.2)
    return x


def enrich_total(record: dict[str, Any]) -> int:
    return int(record["total"])


class HoldUntilOpen:
    """Items are ``(key, n, hold)``. A held item waits until ``<dir>/open-<key>`` exists
    (polling; at most 60 s), so a test can keep a shard's worker busy for as long as it
    needs; every item then appends ``"<monotonic_ns> <pid> <item>"`` to ``<dir>/<pid>``
    (``read_records`` reads them)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __call__(self, item: tuple[int, int, bool]) -> None:
        key, _, hold = item
        if hold:
            gate = Path(self.directory) / f"open-{key}"
            deadline = time.monotonic() + 60
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.005)
        with open(Path(self.directory) / str(os.getpid()), "a") as f:
            f.write(f"{time.monotonic_ns()} {os.getpid()} {item!r}\n")
