"""The package layout that CONTRIBUTING.md maps: every subpackage shipped, the bench
harness free of import circles, the command line reachable by every documented entry."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import shardflow

ROOT = Path(__file__).resolve().parents[1]
PKG = Path(shardflow.__file__).resolve().parent


def _subpackages(base: Path) -> set[str]:
    return {
        ".".join(("shardflow", *p.parent.relative_to(base).parts)).rstrip(".")
        for p in base.rglob("__init__.py")
        if "__pycache__" not in p.parts
    }


@pytest.mark.skipif(
    not (ROOT / "pyproject.toml").exists() or not (ROOT / "src" / "shardflow").exists(),
    reason="needs the source tree (pyproject.toml, src/); these tests also run from a wheel",
)
def test_every_subpackage_on_disk_is_listed_in_pyproject() -> None:
    # setuptools ships only the listed packages: a folder left out would be missing from
    # the wheel while every test run from the tree still passed.
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^packages = \[(.*?)\]", text, re.S | re.M)
    assert block is not None, "no packages = [...] in [tool.setuptools]"
    listed = set(re.findall(r'"([\w.]+)"', block.group(1)))
    assert listed == _subpackages(ROOT / "src" / "shardflow")


def test_the_installed_package_has_every_subpackage() -> None:
    found = _subpackages(PKG)
    assert {"shardflow.backends", "shardflow.bench", "shardflow.cli"} <= found
    assert "shardflow.resilience" in found


def test_bench_modules_import_common_not_their_own_package() -> None:
    # The registry (bench/__init__.py) imports every section; a section importing the
    # package back would be an import circle (as _bench/_bench_* once were).
    for path in sorted((PKG / "bench").glob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "shardflow.bench", f"{path.name} imports shardflow.bench"
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
                assert "shardflow.bench" not in names, f"{path.name} imports shardflow.bench"


def test_library_modules_do_not_import_the_application_code() -> None:
    # The library (pool, pipeline, executor, resilience, backends ...) never depends on
    # the command line or the benchmark harness; those are built on it.
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).parts
        if rel[0] in ("cli", "bench") or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("shardflow.cli", "shardflow.bench")), (
                    f"{'/'.join(rel)} imports {node.module}"
                )


def test_public_names_resolve_from_the_top_level_and_their_subpackage() -> None:
    from shardflow import resilience

    for name in resilience.__all__:
        assert getattr(shardflow, name) is getattr(resilience, name)


def test_python_dash_m_shardflow_reaches_the_command_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shardflow", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("demo", "run", "bench"):
        assert command in proc.stdout
