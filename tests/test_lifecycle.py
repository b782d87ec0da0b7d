"""Process-level lifecycle (GUIDE.md §2.5): interpreter exit, fork, Ctrl-C.

Each test runs a small script in a fresh interpreter, because what is tested is how that
interpreter ends. Every child gets a generous timeout: reaching it means a hang, which is
the bug these tests look for.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import interrupt_when_ready, run_script

# Preamble of scripts whose handler blocks on ``gate``. The gate is opened by an atexit
# hook registered after shardflow's own, so it runs first (atexit is LIFO): items are still
# queued when the interpreter starts to exit, and shardflow's exit drain can then finish.
GATED = """
import atexit, sys, threading
import shardflow

gate = threading.Event()
entered = threading.Event()

def handler(item):
    entered.set()
    gate.wait()

atexit.register(gate.set)
"""


def test_exit_with_a_live_unclosed_pool_drains_queued_items(tmp_path: Path) -> None:
    result = run_script(
        """
        import atexit, sys, threading

        handled = []
        # Registered before shardflow is imported, so it runs after shardflow's exit hook.
        atexit.register(lambda: print("handled", len(handled), flush=True))

        import shardflow

        gate = threading.Event()
        atexit.register(gate.set)  # runs first: opens the gate once exit has begun

        def handler(item):
            gate.wait()
            handled.append(item)

        pool = shardflow.ShardedPool(handler, workers=2)
        pool.submit_many(range(1000))
        # unfinished, not depth: a worker may already hold the queue in its local buffer
        print("pending", pool.metrics().unfinished, flush=True)
        # no close(), no join(): the script just ends
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    pending = int(lines[lines.index("pending") + 1])
    assert pending > 0  # items really were waiting when the interpreter began to exit
    assert "handled 1000" in result.stdout, result.stdout


def test_exit_with_an_idle_unclosed_pool_completes(tmp_path: Path) -> None:
    result = run_script(
        """
        import shardflow
        pool = shardflow.ShardedPool(print, workers=2)
        print("made", pool.name)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "made ShardedPool-" in result.stdout


@pytest.mark.parametrize("cancel", [False, True])
def test_exit_after_shutdown_without_wait_does_not_wait_for_a_handler_that_never_returns(
    tmp_path: Path, cancel: bool
) -> None:
    result = run_script(
        f"""
        import threading
        import shardflow

        entered = threading.Event()

        def handler(item):
            entered.set()
            threading.Event().wait()  # never returns

        pool = shardflow.ShardedPool(handler, workers=1)
        pool.submit(0)
        assert entered.wait(30)
        pool.submit_many(range(1, 10))  # queued behind the stuck handler
        back = pool.shutdown(wait=False, cancel={cancel})
        print("returned", len(back), flush=True)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"returned {9 if cancel else 0}" in result.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
def test_a_forked_child_gets_a_runtime_error_mentioning_fork_and_does_not_hang(
    tmp_path: Path,
) -> None:
    result = run_script(
        """
        import os, sys, warnings
        import shardflow

        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() with threads
        seen = []
        pool = shardflow.ShardedPool(seen.append, workers=2, capacity=16)
        pool.submit_many(range(100))

        pid = os.fork()
        if pid == 0:
            errors = []
            for name, call in [
                ("submit", lambda: pool.submit(1)),
                ("submit_many", lambda: pool.submit_many([1, 2])),
                ("close", pool.close),
                ("shutdown", pool.shutdown),
            ]:
                try:
                    call()
                except RuntimeError as exc:
                    errors.append(f"{name}: {type(exc).__name__}: {exc}")
                else:
                    errors.append(f"{name}: no error")
            print("\\n".join(errors), flush=True)
            sys.exit(0)  # a normal exit: atexit hooks run in the child too
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status), flush=True)
        pool.close()
        assert pool.join(30)
        print("parent handled", len(seen), flush=True)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    submit_line = next(line for line in lines if line.startswith("submit: "))
    assert "RuntimeError" in submit_line and "fork" in submit_line
    assert "Closed" not in submit_line.split(":")[1]  # the fork error, not a plain "closed"
    for call in ("submit_many", "close", "shutdown"):
        line = next(line for line in lines if line.startswith(f"{call}: "))
        assert "fork" in line, line
    assert "child exit 0" in lines
    assert "parent handled 100" in lines  # the parent's pool is unaffected


BLOCKING_CALLS = {
    "submit": """
pool = shardflow.ShardedPool(handler, workers=1, capacity=2, on_full="block")
pool.submit(0)
assert entered.wait(30)
pool.submit_many([1, 2])
print("ready", flush=True)
pool.submit(3)
""",
    "submit_many": """
pool = shardflow.ShardedPool(handler, workers=1, capacity=2, on_full="block")
pool.submit(0)
assert entered.wait(30)
print("ready", flush=True)
pool.submit_many(range(1, 100))
""",
    "join": """
pool = shardflow.ShardedPool(handler, workers=1)
pool.submit_many(range(5))
assert entered.wait(30)
pool.close()
print("ready", flush=True)
pool.join()
""",
}


@pytest.mark.parametrize("call", sorted(BLOCKING_CALLS))
def test_ctrl_c_interrupts_a_blocked_call_promptly(tmp_path: Path, call: str) -> None:
    returncode, out, err = interrupt_when_ready(
        GATED + BLOCKING_CALLS[call] + 'print("not interrupted")\n', tmp_path
    )
    assert "not interrupted" not in out
    assert "KeyboardInterrupt" in err, err
    assert returncode != 0


def test_importing_shardflow_does_not_import_asyncio(tmp_path: Path) -> None:
    # asyncio (and ssl under it) is most of what an import would cost; only the async
    # methods need it, and they import it when first awaited.
    result = run_script(
        """
        import sys
        import shardflow
        print(sorted(m for m in ("asyncio", "ssl") if m in sys.modules))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
