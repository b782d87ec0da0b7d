"""Fault injection (GUIDE.md §2.4 errors never kill workers, §2.5 clean lifecycle).

Complements ``test_lifecycle.py`` and ``test_pool.py``, which cover ``KeyboardInterrupt``
/``SystemExit`` from a handler, Ctrl-C in a blocked ``submit``/``submit_many``/``join``,
interpreter exit with a plain live pool, fork with a ``ShardedPool``, and a stuck handler
with ``ShardedPool.shutdown(wait=False)``. Here: other ``BaseException`` subclasses,
what Ctrl-C leaves behind (``submitted``/``unsent``), Ctrl-C in ``BatchProcessor.flush``
and in limiter waits, interpreter exit with guarded pools and batch processors, and fork
with a ``BatchProcessor``.

Process-level cases run a script in a fresh interpreter with a generous timeout: reaching
it means a hang, which is the bug looked for. No other timing is asserted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from helpers import WAIT, interrupt_when_ready, run_script
from shardflow import BatchProcessor, CircuitBreaker, Retry, ShardedPool


class Abort(BaseException):
    """A user's own BaseException: neither Exception nor KeyboardInterrupt/SystemExit."""


# --------------------------------------------------------------------------- in process


def test_a_custom_base_exception_is_counted_the_worker_goes_on_and_join_reraises_it() -> None:
    handled: list[int] = []
    routed: list[tuple[Any, BaseException]] = []

    def handler(item: int) -> None:
        if item == 5:
            raise Abort("stop")
        handled.append(item)

    pool: ShardedPool[int] = ShardedPool(
        handler, workers=1, on_error=lambda item, exc: routed.append((item, exc))
    )
    pool.submit_many(range(20))
    pool.close()
    with pytest.raises(Abort, match="stop"):
        pool.join(WAIT)
    assert handled == [i for i in range(20) if i != 5]
    assert len(routed) == 1 and routed[0][0] == 5 and isinstance(routed[0][1], Abort)
    m = pool.metrics()
    assert (m.processed, m.failed, m.dead_lettered) == (19, 1, 0)
    assert pool.join(WAIT) is True  # raised once, then cleared


def test_a_custom_base_exception_passes_the_guards_untouched_and_skips_the_dead_letter() -> None:
    # Not retried (Retry leaves BaseExceptions alone), not counted by the breaker, not
    # dead-lettered (only Exceptions are): it is routed like KeyboardInterrupt.
    attempts: list[int] = []
    dead: list[Any] = []
    routed: list[Any] = []
    breaker = CircuitBreaker(max_failures=1, reset_timeout=60)
    retry = Retry(5, base=0, jitter=False, budget=None)

    def handler(item: int) -> None:
        attempts.append(item)
        if item == 3:
            raise Abort

    pool: ShardedPool[int] = ShardedPool(
        handler,
        workers=1,
        breaker=breaker,
        retry=retry,
        dead_letter=lambda item, exc: dead.append(item),
        on_error=lambda item, exc: routed.append(item),
    )
    pool.submit_many(range(10))
    with pytest.raises(Abort):
        pool.shutdown()
    assert attempts == list(range(10))  # item 3 ran once
    assert dead == [] and routed == [3]
    assert breaker.state == "closed" and breaker.metrics().failures == 0
    m = pool.metrics()
    assert (m.processed, m.failed, m.dead_lettered) == (9, 1, 0)


def test_a_batch_processor_reraises_a_custom_base_exception_from_close_and_join() -> None:
    batches: list[list[int]] = []

    def handler(batch: list[int]) -> None:
        batches.append(list(batch))
        if 0 in batch:
            raise Abort

    bp: BatchProcessor[int] = BatchProcessor(
        handler, batch_size=4, batch_timeout=60, on_error=lambda b, e: None
    )
    bp.put_many(range(10))
    bp.close()
    with pytest.raises(Abort):
        bp.join(WAIT)
    assert sorted(x for b in batches for x in b) == list(range(10))  # the worker went on
    m = bp.metrics()
    assert (m.processed, m.failed) == (6, 4)


# --------------------------------------------------------------------------- subprocesses


# Handler blocked on ``gate``; an atexit hook registered after shardflow's opens it first
# (atexit is LIFO), so a script that dies of KeyboardInterrupt still exits.
GATED = """
import atexit, sys, threading
import shardflow

gate = threading.Event()
entered = threading.Event()
handled = []

def handler(item):
    entered.set()
    gate.wait()
    handled.append(item)

atexit.register(gate.set)
"""


def field(out: str, name: str) -> list[int]:
    line = next(line for line in out.splitlines() if line.startswith(name + " "))
    return [int(x) for x in line.split()[1:]]


def test_ctrl_c_in_submit_many_blocked_on_a_full_shard_loses_nothing(tmp_path: Path) -> None:
    code, out, err = interrupt_when_ready(
        GATED
        + """
taken = []

def items():
    for i in range(1, 100_000):
        taken.append(i)
        yield i

pool = shardflow.ShardedPool(handler, workers=1, capacity=8, on_full="block")
pool.submit(0)
assert entered.wait(30)
print("ready", flush=True)
try:
    pool.submit_many(items())
except KeyboardInterrupt as exc:
    print("interrupted", exc.submitted, len(exc.unsent), len(taken), flush=True)
    assert exc.unsent == taken[exc.submitted:], "unsent must be exactly the items not queued"
else:
    print("not interrupted", flush=True)
gate.set()
pool.close()
assert pool.join(30)
m = pool.metrics()
print("handled", len(handled), m.submitted, m.processed, flush=True)
""",
        tmp_path,
    )
    assert code == 0, err
    assert "not interrupted" not in out
    submitted, unsent, taken = field(out, "interrupted")
    assert submitted + unsent == taken  # every item taken from the iterable is accounted
    assert 0 < taken < 99_999  # interrupted mid-way, while blocked
    handled, m_submitted, m_processed = field(out, "handled")
    assert handled == m_processed == m_submitted == submitted + 1  # + the first item


def test_ctrl_c_interrupts_a_batch_processor_flush_blocked_by_a_stuck_handler(
    tmp_path: Path,
) -> None:
    code, out, err = interrupt_when_ready(
        GATED
        + """
bp = shardflow.BatchProcessor(handler, batch_size=100, batch_timeout=0.05)
bp.put(0)  # handed over by its deadline; the handler then blocks on the gate
assert entered.wait(30)
bp.put(1)
print("ready", flush=True)
try:
    bp.flush()
except KeyboardInterrupt:
    print("interrupted", flush=True)
else:
    print("not interrupted", flush=True)
gate.set()
bp.close()
assert bp.join(30)
print("handled", sum(len(b) for b in handled), flush=True)
""",
        tmp_path,
    )
    assert code == 0, err
    assert "interrupted" in out.split() and "not interrupted" not in out
    assert field(out, "handled") == [2]  # the interrupted flush lost nothing


LIMITER_WAITS = {
    "Limiter": "lim = shardflow.Limiter(1)\nlim.acquire()\nwait = lim.acquire",
    "Limiter-fair": "lim = shardflow.Limiter(1, fair=True)\nlim.acquire()\nwait = lim.acquire",
    "RateLimiter": ("rl = shardflow.RateLimiter(0.001, burst=1)\nrl.acquire()\nwait = rl.acquire"),
}


@pytest.mark.parametrize("which", sorted(LIMITER_WAITS))
def test_ctrl_c_interrupts_a_limiter_wait_promptly(tmp_path: Path, which: str) -> None:
    code, out, err = interrupt_when_ready(
        "import shardflow\n"
        + LIMITER_WAITS[which]
        + """
print("ready", flush=True)
try:
    wait()  # a Limiter with no free permit, or a token due in 1000 s
except KeyboardInterrupt:
    print("interrupted", flush=True)
else:
    print("not interrupted", flush=True)
""",
        tmp_path,
    )
    assert code == 0, err
    assert out.split() == ["interrupted"]


def test_interrupted_limiter_wait_leaves_no_permit_or_waiter_behind(tmp_path: Path) -> None:
    code, out, err = interrupt_when_ready(
        """
import shardflow
lim = shardflow.Limiter(1, fair=True)
lim.acquire()
print("ready", flush=True)
try:
    lim.acquire()
except KeyboardInterrupt:
    pass
m = lim.metrics()
print("after", m.in_use, m.waiting, flush=True)
lim.release()
print("reacquired", int(lim.acquire(timeout=0)), flush=True)
""",
        tmp_path,
    )
    assert code == 0, err
    assert field(out, "after") == [1, 0]
    assert field(out, "reacquired") == [1]


def test_exit_with_a_live_batch_processor_hands_everything_over(tmp_path: Path) -> None:
    result = run_script(
        """
        import atexit, threading

        handled = []
        atexit.register(lambda: print("handled", len(handled), flush=True))

        import shardflow

        gate = threading.Event()
        atexit.register(gate.set)  # runs first: opens the gate once exit has begun

        def handler(batch):
            gate.wait()
            handled.extend(batch)

        bp = shardflow.BatchProcessor(handler, batch_size=64, batch_timeout=3600)
        bp.put_many(range(1000))
        # unfinished, not depth: a worker may already hold the queue in its local buffer
        print("pending", bp.metrics().unfinished, flush=True)
        # no close(): the script just ends with items queued and a partial batch
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert field(result.stdout, "pending")[0] > 0
    assert field(result.stdout, "handled") == [1000]


def test_exit_with_a_live_guarded_pool_drains_and_routes_every_item(tmp_path: Path) -> None:
    result = run_script(
        """
        import atexit, threading

        handled, dead = [], []
        atexit.register(
            lambda: print("handled", len(handled), "dead", len(dead), flush=True)
        )

        import shardflow

        gate = threading.Event()
        atexit.register(gate.set)

        def handler(item):
            gate.wait()
            if item % 10 == 0:
                raise ValueError(item)
            handled.append(item)

        pool = shardflow.ShardedPool(
            handler,
            workers=2,
            breaker=shardflow.CircuitBreaker(max_failures=10**6, reset_timeout=1),
            limiter=shardflow.Limiter(1),
            rate_limiter=shardflow.RateLimiter(1e6, burst=1000),
            retry=shardflow.Retry(2, base=0, jitter=False, budget=None),
            dead_letter=lambda item, exc: dead.append(item),
        )
        pool.submit_many(range(500))
        # unfinished, not depth: a worker may already hold the queue in its local buffer
        print("pending", pool.metrics().unfinished, flush=True)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert field(result.stdout, "pending")[0] > 0
    assert "handled 450 dead 50" in result.stdout, result.stdout


@pytest.mark.parametrize("cancel", [False, True])
def test_exit_after_batch_processor_shutdown_without_wait_does_not_wait_for_a_stuck_handler(
    tmp_path: Path, cancel: bool
) -> None:
    result = run_script(
        f"""
        import threading
        import shardflow

        entered = threading.Event()

        def handler(batch):
            entered.set()
            threading.Event().wait()  # never returns

        bp = shardflow.BatchProcessor(handler, batch_size=1, batch_timeout=1)
        bp.put(0)
        assert entered.wait(30)
        bp.put_many(range(1, 10))  # queued behind the stuck handler
        back = bp.shutdown(wait=False, cancel={cancel})
        print("returned", len(back), flush=True)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"returned {9 if cancel else 0}" in result.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
def test_a_forked_child_using_an_inherited_batch_processor_gets_a_fork_error(
    tmp_path: Path,
) -> None:
    result = run_script(
        """
        import os, sys, warnings
        import shardflow

        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() with threads
        got = []
        bp = shardflow.BatchProcessor(got.extend, batch_size=8, batch_timeout=60)
        bp.put_many(range(100))

        pid = os.fork()
        if pid == 0:
            lines = []
            for name, call in [
                ("put", lambda: bp.put(1)),
                ("put_many", lambda: bp.put_many([1, 2])),
                ("flush", lambda: bp.flush(5)),
                ("close", bp.close),
                ("join", lambda: bp.join(5)),
                ("shutdown", bp.shutdown),
            ]:
                try:
                    call()
                except RuntimeError as exc:
                    lines.append(f"{name}: {type(exc).__name__}: {exc}")
                except BaseException as exc:
                    lines.append(f"{name}: unexpected {type(exc).__name__}: {exc}")
                else:
                    lines.append(f"{name}: no error")
            print("\\n".join(lines), flush=True)
            sys.exit(0)  # a normal exit: atexit hooks run in the child too
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status), flush=True)
        bp.close()
        assert bp.join(30)
        print("parent handled", len(got), flush=True)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for call in ("put", "put_many", "flush", "close", "join", "shutdown"):
        line = next(line for line in lines if line.startswith(f"{call}: "))
        assert "RuntimeError" in line and "fork" in line, line
    assert "child exit 0" in lines
    assert "parent handled 100" in lines
