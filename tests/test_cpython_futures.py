"""CPython's own ``test.test_concurrent_futures`` thread-pool tests, run against
``shardflow.Executor`` (issue 11).

Each group (the stdlib's test_thread_pool, test_shutdown, test_wait, test_as_completed and
test_init) runs in a subprocess, ``tests/_cpython_futures.py``, which swaps
``concurrent.futures.ThreadPoolExecutor`` for ``shardflow.Executor`` there and in every
Python subprocess those tests start. The only tests left out are those that read private
attributes of the standard class (``_cpython_futures.EXCLUDED``, with the reason for
each); everything else must pass. A hanging test ends its process through a per-test
faulthandler watchdog (``PER_TEST_TIMEOUT``), with every thread's stack on stderr; the
subprocess timeout below is only a backstop.

Pythons whose ``test`` package lacks ``test.test_concurrent_futures`` (some
distributions strip it) skip, saying so.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import _cpython_futures as runner

RUNNER = Path(__file__).with_name("_cpython_futures.py")
#: Backstop for a whole group (the slowest, wait, takes ~12 s); the per-test watchdog
#: normally ends a hang long before this.
GROUP_TIMEOUT = 10 * runner.PER_TEST_TIMEOUT


def _missing_reason() -> str | None:
    try:
        found = importlib.util.find_spec("test.test_concurrent_futures") is not None
    except ImportError:  # no `test` package at all
        found = False
    if found:
        return None
    return (
        f"this Python ({sys.version.split()[0]}, {sys.prefix}) has no "
        "test.test_concurrent_futures in its test package"
    )


MISSING = _missing_reason()


@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
@pytest.mark.parametrize("group", sorted(runner.GROUPS))
def test_cpython_thread_pool_tests_pass_with_shardflow_executor(group: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(RUNNER), group],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=GROUP_TIMEOUT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result (exit code {proc.returncode}); stderr:\n{proc.stderr[-8000:]}"
    result = json.loads(lines[-1][len("RESULT ") :])
    problems = result["failures"] + result["errors"]
    assert not problems, "\n\n".join(f"{name}\n{tb}" for name, tb in problems)
    assert not result["unexpected_successes"], result["unexpected_successes"]
    assert proc.returncode == 0, proc.stderr[-8000:]  # e.g. a hang at exit (watchdog)
    # Every test of the group ran: nothing skipped on this platform, and each exclusion
    # names a test that exists (a renamed test would otherwise run unnoticed, or vanish).
    assert not result["skipped"], result["skipped"]
    assert result["ran"], "no test collected"
    expected = sorted(
        f"{cls}.{test}" for cls, test in runner.EXCLUDED if cls in runner.GROUPS[group]
    )
    assert sorted(result["excluded"]) == expected


def test_every_exclusion_names_a_private_attribute() -> None:
    # The rule of the list: only tests that read the standard class's private state.
    assert runner.EXCLUDED
    for (cls, test), attribute in runner.EXCLUDED.items():
        assert cls.startswith("ThreadPool") and test.startswith("test_"), (cls, test)
        assert attribute.startswith("_") and not attribute.startswith("__"), attribute
