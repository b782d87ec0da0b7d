"""Calls for tests/backends/test_executor_backends.py: importable by worker processes
(``Executor(backend="process")`` pickles functions by reference).

Gates are files: a call waits until its gate file exists, which works the same for
threads, worker processes and in-process fake actors."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

WAIT = 30.0  # seconds a gated call waits at most (reached only by a broken test)

_initialized: list[Any] = []


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def raise_system_exit() -> None:
    raise SystemExit(3)


def pid(_: Any = None) -> int:
    return os.getpid()


def gated(directory: str, name: str, value: Any = None) -> Any:
    """Touch ``<directory>/started-<name>``, then wait for ``<directory>/open``."""
    d = Path(directory)
    (d / f"started-{name}").touch()
    deadline = time.monotonic() + WAIT
    while not (d / "open").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {directory} never opened")
        time.sleep(0.002)
    return value


def wait_started(directory: str, *names: str) -> None:
    """Wait (in the test) until the gated calls ``names`` have started."""
    d = Path(directory)
    deadline = time.monotonic() + WAIT
    while not all((d / f"started-{n}").exists() for n in names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"calls {names} never started")
        time.sleep(0.002)


def open_gate(directory: str) -> None:
    (Path(directory) / "open").touch()


def record_init(directory: str, tag: str) -> None:
    """An initializer: one file per run, named after the process and a counter."""
    _initialized.append(tag)
    (Path(directory) / f"init-{os.getpid()}-{len(_initialized)}").touch()


def initialized_with() -> tuple[int, list[Any]]:
    return os.getpid(), list(_initialized)


def failing_init() -> None:
    raise RuntimeError("initializer says no")


def die(how: str) -> None:
    """End this worker process abruptly."""
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(9)


def slow_square(x: int, delay: float) -> int:
    time.sleep(delay)
    return x * x


def return_lock() -> Any:
    import threading

    return threading.Lock()


def touch(directory: str, name: Any) -> None:
    (Path(directory) / str(name)).touch()
