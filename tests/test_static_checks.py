"""The static checks configured in pyproject.toml pass over the source tree.

mypy --strict (the package, its .pyi stubs, and tests/typing_examples.py), ruff check,
ruff format --check and cython-lint, each run as a subprocess from the repository root,
so that a stub, annotation or style regression fails the suite like any other bug.

They need the source tree: when the tests run against an installed wheel with only
``tests/`` copied, they are skipped. The tools come with the ``test`` extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINTED = ["src", "tests", "benchmarks"]  # what ruff checks (see [tool.ruff] in pyproject)
TIMEOUT = 120  # seconds per tool; a cold mypy run takes a few seconds

pytestmark = pytest.mark.skipif(
    not all((ROOT / p).exists() for p in ("pyproject.toml", "src/shardflow", "ext/shardflow")),
    reason="static checks need the source tree (pyproject.toml, src/, ext/); "
    "these tests run from an installed wheel with only tests/ present",
)


def run(args: list[str], *, tool: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # cython-lint runs `pycodestyle` from PATH: look in this interpreter's scripts first.
    env["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), env.get("PATH", "")])
    env.pop("MYPYPATH", None)
    try:
        return subprocess.run(
            args,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except FileNotFoundError as exc:  # pragma: no cover - broken environment
        pytest.fail(f"{tool} could not be started ({exc}); pip install -e '.[test]'")


def assert_clean(r: subprocess.CompletedProcess[str], tool: str) -> None:
    if "No module named" in r.stderr and r.returncode != 0:
        pytest.fail(f"{tool} is not installed: pip install -e '.[test]'\n{r.stderr}")
    assert r.returncode == 0, (
        f"{tool} failed (exit code {r.returncode}):\n{r.stdout}\n{r.stderr}".rstrip()
    )


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Outside the tree (nothing written to the checkout) and shared by this module's runs.
    return tmp_path_factory.mktemp("mypy_cache")


def test_mypy_strict_passes_over_the_package_stubs_and_typing_examples(mypy_cache: Path) -> None:
    # files, strictness and exceptions come from [tool.mypy] in pyproject.toml
    r = run([sys.executable, "-m", "mypy", "--cache-dir", str(mypy_cache)], tool="mypy")
    assert_clean(r, "mypy")


def test_mypy_rejects_misuse_of_the_typed_api(mypy_cache: Path, tmp_path: Path) -> None:
    """The stubs are real types, not ``Any``: wrong calls into the compiled core fail."""
    bad = tmp_path / "misuse.py"
    bad.write_text(
        "import shardflow\n"
        "pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(print)\n"
        'pool.submit(1, timeout="soon")\n'  # line 3: arg-type
        "n: str = pool.submit_many([1])\n"  # line 4: assignment (it returns int)
        "pool.capacity = 8\n"  # line 5: read-only compiled attribute
        'shardflow.Limiter(2).acquire(timeout="x")\n'  # line 6: arg-type
        "shardflow.RateLimiter(5.0, burst=1).burst = 2\n"  # line 7: read-only
    )
    r = run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            "pyproject.toml",
            "--cache-dir",
            str(mypy_cache),
            str(bad),
        ],
        tool="mypy",
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    flagged = {
        int(line.split(":")[1]) for line in out.splitlines() if line.startswith(str(bad) + ":")
    }
    assert flagged == {3, 4, 5, 6, 7}, out


def test_typing_examples_run() -> None:
    """The examples mypy checks are real code: they run and their assertions hold."""
    r = run([sys.executable, "tests/typing_examples.py"], tool="python")
    assert_clean(r, "tests/typing_examples.py")


def test_ruff_check_passes() -> None:
    r = run([sys.executable, "-m", "ruff", "check", "--no-cache", *LINTED], tool="ruff")
    assert_clean(r, "ruff check")


def test_ruff_format_leaves_the_tree_unchanged() -> None:
    r = run([sys.executable, "-m", "ruff", "format", "--check", "--no-cache", *LINTED], tool="ruff")
    assert_clean(r, "ruff format --check (run `ruff format src tests benchmarks`)")


def test_cython_lint_passes() -> None:
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "ext/shardflow").glob("*.p[yx]*"))
    assert sources, "no .pyx/.pxd files found under ext/shardflow"
    # cython-lint has no `python -m` entry point; call its console-script function.
    r = run(
        [
            sys.executable,
            "-c",
            "import sys; from cython_lint.cython_lint import main; sys.exit(main())",
            *sources,
        ],
        tool="cython-lint",
    )
    assert_clean(r, "cython-lint")
