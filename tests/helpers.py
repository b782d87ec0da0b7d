"""Small helpers shared by the pool tests (not a test module)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

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


# --------------------------------------------------------------------------- stress items
# An item is one int: (seq << 16) | (producer << 8) | key, so that a handler can stay a
# C-level list method and the checks can decode it afterwards.

PRODUCERS = 4
KEYS = 61  # prime, so keys do not line up with the shard count


def encode(producer: int, key: int, seq: int) -> int:
    return (seq << 16) | (producer << 8) | key


def item_key(item: int) -> int:
    return item & 0xFF


def producer_items(producer: int, n: int) -> list[int]:
    """Producer ``producer``'s n items, cycling over the keys, numbered per key."""
    return [encode(producer, i % KEYS, i // KEYS) for i in range(n)]


def run_producers(targets: list[Callable[[], None]], timeout: float = 4 * WAIT) -> None:
    """Run each target in its own thread; fail if one raised or hung."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # reported below, with the test's failure
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a producer hung"
    assert errors == []


# --------------------------------------------------------------------------- subprocesses

#: Bound on a child interpreter's run: only reached when it hangs.
CHILD_TIMEOUT = 60


def run_script(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) in a fresh interpreter in ``tmp_path``."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )


def interrupt(
    argv: list[str],
    tmp_path: Path,
    started: Callable[[IO[str]], None],
    wait: float = 0.3,
    timeout: float = CHILD_TIMEOUT,
) -> tuple[int, str, str]:
    """Start ``argv``; once ``started(its stdout)`` returned (it reads and checks the lines
    that say the child got going), let it run ``wait`` s more, then send SIGINT.
    Returns (returncode, stdout after what ``started`` read, stderr)."""
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        started(proc.stdout)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    except AssertionError as exc:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"{exc}\nstderr: {err}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def interrupt_when_ready(code: str, tmp_path: Path) -> tuple[int, str, str]:
    """Run ``code``; once it prints "ready", let it enter its wait, then send SIGINT
    (sent earlier it would be honoured as well, just less interestingly).
    Returns (returncode, stdout, stderr)."""

    def ready(stdout: IO[str]) -> None:
        line = stdout.readline().strip()
        assert line == "ready", line

    return interrupt([sys.executable, "-c", textwrap.dedent(code)], tmp_path, ready)


# --------------------------------------------------------------------------- producer kinds


def one_by_one(pool: Any, items: list[int]) -> Callable[[], None]:
    """A producer that submits its items one ``submit`` at a time."""

    def run() -> None:
        submit = pool.submit
        for item in items:
            submit(item)

    return run


def in_chunks(pool: Any, items: list[int], chunk: int = 1000) -> Callable[[], None]:
    """A producer that submits its items through ``submit_many`` in lists of ``chunk``."""

    def run() -> None:
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            assert pool.submit_many(part) == len(part)

    return run
