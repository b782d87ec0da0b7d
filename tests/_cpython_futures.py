"""Run CPython's own ``test.test_concurrent_futures`` thread-pool tests against
``shardflow.Executor`` (not a test module: ``tests/test_cpython_futures.py`` starts it in a
subprocess, one per group, with a hard timeout).

Usage: ``python tests/_cpython_futures.py GROUP`` with GROUP one of ``GROUPS``. It

* swaps ``concurrent.futures.ThreadPoolExecutor`` for a subclass of ``shardflow.Executor``
  named ``ThreadPoolExecutor`` (``install()``) before the test module is imported, so the
  tests' ``ThreadPoolMixin.executor_type`` is it. The name matters: the tests build the
  code of their subprocesses from ``executor_type.__name__``;
* makes every Python subprocess the tests start through ``test.support.script_helper``
  (``assert_python_ok``/``assert_python_failure``/``spawn_python``; they use nothing else)
  run ``install()`` first: a ``-c`` prelude, which works in their isolated (``-I``) mode,
  where ``PYTHONPATH`` and ``sitecustomize`` tricks would not;
* runs the ``ThreadPool*`` test classes of the group, minus ``EXCLUDED``, with a per-test
  watchdog (``faulthandler.dump_traceback_later(..., exit=True)``): a test that hangs
  dumps every thread's stack and ends the process, so the caller fails within
  ``PER_TEST_TIMEOUT`` s, never stalls;
* prints one JSON line (``RESULT {...}``) with what ran, failed, errored and was skipped.

The layout differs between Pythons: 3.10 and 3.11 have one module,
``test.test_concurrent_futures``; 3.12+ a package with one module per group.
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import os
import sys
import unittest
from typing import Any

#: Seconds one test may take before the watchdog ends the run. The slowest tests
#: (ThreadPoolWaitTests.test_timeout, test_hang_global_shutdown_lock) take 2-6 s on the
#: 2-core machines; a hang costs this long, not a CI timeout.
PER_TEST_TIMEOUT = 30.0

#: Group -> the stdlib's thread-pool test classes it runs. The names are the same in the
#: 3.10/3.11 single module and in the 3.12+ package modules ``test_<group>``.
GROUPS: dict[str, tuple[str, ...]] = {
    "thread_pool": ("ThreadPoolExecutorTest",),
    "shutdown": ("ThreadPoolShutdownTest",),
    "wait": ("ThreadPoolWaitTests",),
    "as_completed": ("ThreadPoolAsCompletedTest",),
    "init": ("ThreadPoolInitializerTest", "ThreadPoolFailingInitializerTest"),
}

#: The only tests not run: each reads private attributes of the standard library's
#: ThreadPoolExecutor, which shardflow.Executor (a subclass that uses none of its
#: machinery) does not have. They test how the stdlib implements its pool, not what it
#: promises. Nothing else is excluded. (class, test) -> the private attribute it reads.
EXCLUDED: dict[tuple[str, str], str] = {
    # a worker thread per submit up to max_workers, counted in _threads
    ("ThreadPoolExecutorTest", "test_saturation"): "_threads",
    # threads started lazily and reused when idle: len(executor._threads)
    ("ThreadPoolExecutorTest", "test_idle_thread_reuse"): "_threads",
    # joins executor._threads after shutdown
    ("ThreadPoolShutdownTest", "test_threads_terminate"): "_threads",
    # context-manager exit: iterates executor._threads
    ("ThreadPoolShutdownTest", "test_context_manager_shutdown"): "_threads",
    # `del executor`: keeps executor._threads to join them afterwards
    ("ThreadPoolShutdownTest", "test_del_shutdown"): "_threads",
    # shutdown(wait=False): iterates executor._threads
    ("ThreadPoolShutdownTest", "test_shutdown_no_wait"): "_threads",
    # thread names read from executor._threads
    ("ThreadPoolShutdownTest", "test_thread_names_assigned"): "_threads",
    # thread names read from executor._threads
    ("ThreadPoolShutdownTest", "test_thread_names_default"): "_threads",
}


def install() -> type:
    """Make ``concurrent.futures.ThreadPoolExecutor`` a ``shardflow.Executor``."""
    import concurrent.futures
    import concurrent.futures.thread

    import shardflow

    class ThreadPoolExecutor(shardflow.Executor):
        """``shardflow.Executor`` under the standard name (see the module docstring)."""

    concurrent.futures.ThreadPoolExecutor = ThreadPoolExecutor  # type: ignore[misc]
    concurrent.futures.thread.ThreadPoolExecutor = ThreadPoolExecutor  # type: ignore[misc]
    return ThreadPoolExecutor


#: What a subprocess started by the tests runs before their code.
PRELUDE = (
    f"import runpy as _sf_runpy; _sf_runpy.run_path({os.path.abspath(__file__)!r}, "
    "run_name='_sf_cpython_futures')['install'](); del _sf_runpy\n"
)


def _with_prelude(args: tuple[Any, ...]) -> tuple[Any, ...]:
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg == "-c":
            out[i + 1] = PRELUDE + out[i + 1]
            return tuple(out)
    raise AssertionError(f"a stdlib test started a subprocess without -c: {args!r}")


def _patch_subprocesses() -> None:
    from test.support import script_helper

    run_until_end = script_helper.run_python_until_end
    spawn = script_helper.spawn_python

    def run_python_until_end(*args: Any, **env_vars: Any) -> Any:
        return run_until_end(*_with_prelude(args), **env_vars)

    def spawn_python(*args: Any, **kw: Any) -> Any:
        return spawn(*_with_prelude(args), **kw)

    script_helper.run_python_until_end = run_python_until_end
    script_helper.spawn_python = spawn_python


def _load(group: str) -> Any:
    try:
        return importlib.import_module(f"test.test_concurrent_futures.test_{group}")
    except ModuleNotFoundError as exc:
        if exc.name != f"test.test_concurrent_futures.test_{group}":
            raise
        return importlib.import_module("test.test_concurrent_futures")  # 3.10, 3.11


class _Watchdog(unittest.TextTestResult):
    """Arms the faulthandler watchdog around each test."""

    def startTest(self, test: unittest.TestCase) -> None:
        faulthandler.dump_traceback_later(PER_TEST_TIMEOUT, exit=True)
        sys.stderr.write(f"running {test.id()}\n")
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        faulthandler.cancel_dump_traceback_later()


def main(group: str) -> int:
    faulthandler.enable()
    swapped = install()
    _patch_subprocesses()
    module = _load(group)
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    ran_names = []
    excluded = []
    for name in GROUPS[group]:
        cls = getattr(module, name)
        if cls.executor_type is not swapped:
            raise AssertionError(f"{name}.executor_type is {cls.executor_type!r}, not shardflow's")
        for test in loader.loadTestsFromTestCase(cls):
            method = test.id().rsplit(".", 1)[1]
            if (name, method) in EXCLUDED:
                excluded.append(f"{name}.{method}")
                continue
            ran_names.append(f"{name}.{method}")
            suite.addTest(test)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=_Watchdog)
    result = runner.run(suite)
    summary = {
        "python": sys.version.split()[0],
        "module": module.__name__,
        "ran": ran_names,
        "excluded": excluded,
        "failures": [(t.id(), tb) for t, tb in result.failures],
        "errors": [(t.id(), tb) for t, tb in result.errors],
        "unexpected_successes": [t.id() for t in result.unexpectedSuccesses],
        "skipped": [(t.id(), reason) for t, reason in result.skipped],
    }
    sys.stdout.write("\nRESULT " + json.dumps(summary) + "\n")
    sys.stdout.flush()
    # Interpreter exit is under the watchdog too: a process that hangs there (issue 11:
    # a forked child waiting for its parent's workers) dumps its stacks and ends.
    faulthandler.dump_traceback_later(PER_TEST_TIMEOUT, exit=True)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
