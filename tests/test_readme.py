"""The README's examples run as written.

- Python examples (a signature block is not an example) run in a subprocess.
- Shell blocks (```bash, ```sh, ```console) are classified by an HTML comment on the line
  right before the block: ``<!-- shell: synopsis -->`` (usage lines, not meant to run as
  written) or ``<!-- shell: ci-main-run -->`` (the test command, which ``.ci/run`` runs
  exactly; running it here would run this suite inside itself). Every other shell block
  must run as written: with ``SHARDFLOW_README_SHELL=1`` (``.ci/run``'s main run sets it;
  it takes a few minutes: pip builds the package three times) they are pasted, in order,
  into ``bash`` in a fresh copy of the repository's tracked files with a fresh virtual
  environment, and the install must work afterwards. Without it, only the
  classification is checked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
EXAMPLES = [
    block
    for block in re.findall(r"```python\n(.*?)```", TEXT, re.S)
    if block.lstrip().startswith(("import", "from"))
]

#: The kinds of shell blocks a marker may declare.
MARKS = ("synopsis", "ci-main-run")
MARKER = re.compile(r"<!--\s*shell:\s*([\w-]+)\s*-->")
FENCE = re.compile(r"^```(bash|sh|console)[ \t]*\n(.*?)^```", re.S | re.M)
#: Opt-in switch for running the shell blocks (set by .ci/run's main run).
RUN_ENV = "SHARDFLOW_README_SHELL"


@dataclass(frozen=True)
class ShellBlock:
    """A shell block of the README: where it starts, its marker (or None) and its text."""

    line: int
    lang: str
    mark: str | None
    body: str

    @property
    def commands(self) -> str:
        """What a reader pastes: the block itself, or a console block's ``$`` lines."""
        if self.lang != "console":
            return self.body
        return "".join(line[2:] + "\n" for line in self.body.splitlines() if line.startswith("$ "))


def shell_blocks(text: str) -> list[ShellBlock]:
    """Every shell block of ``text``, with the marker on the line right before it."""
    blocks = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        blocks.append(
            ShellBlock(
                line=text.count("\n", 0, m.start()) + 1,
                lang=m.group(1),
                mark=marker.group(1) if marker else None,
                body=m.group(2),
            )
        )
    return blocks


BLOCKS = shell_blocks(TEXT)
RUNNABLE = [b for b in BLOCKS if b.mark is None]


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(code: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_shell_block_extraction_reads_markers_and_console_prompts() -> None:
    text = (
        "intro\n\n<!-- shell: synopsis -->\n```bash\ntool [--x N]\n```\n\n"
        "```console\n$ echo hi\nhi\n```\n"
    )
    first, second = shell_blocks(text)
    assert (first.line, first.lang, first.mark) == (4, "bash", "synopsis")
    assert first.body == "tool [--x N]\n"
    assert (second.mark, second.commands) == (None, "echo hi\n")


def test_every_shell_marker_is_known_and_sits_right_before_a_block() -> None:
    marks = MARKER.findall(TEXT)
    assert marks, "the README marks its synopsis blocks"
    assert set(marks) <= set(MARKS), f"unknown marker(s): {sorted(set(marks) - set(MARKS))}"
    # A marker that is not on the line right before a shell block marks nothing.
    assert len(marks) == sum(b.mark is not None for b in BLOCKS)


def test_the_two_key_commands_are_shell_blocks() -> None:
    bodies = {b.body.strip(): b.mark for b in BLOCKS}
    assert bodies.get("python -m pip install . && shardflow demo", "missing") is None
    assert bodies.get("python -m pip install '.[test]' && python -m pytest") == "ci-main-run"


def test_the_ci_main_run_block_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    blocks = [b for b in BLOCKS if b.mark == "ci-main-run"]
    assert blocks
    for b in blocks:
        for line in b.commands.splitlines():
            assert line.strip() in ci, f"README line {b.line}: .ci/run does not run {line!r}"


def test_readme_shell_blocks_run_in_a_fresh_clone(tmp_path: Path) -> None:
    """Paste every unmarked shell block, in order, into a fresh copy and venv."""
    assert RUNNABLE, "the README has shell blocks that run as written"
    if os.environ.get(RUN_ENV) != "1":
        pytest.skip(f"takes minutes (pip builds the package): set {RUN_ENV}=1 (.ci/run does)")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail(f"{RUN_ENV}=1 needs a git checkout (to copy the tracked files) and git")
    clone = tmp_path / "clone"
    files = (
        subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():  # a file deleted in the working tree is not in a fresh clone
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, clone / name)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bindir = env_dir / "bin"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST", "SHARDFLOW_", "PYTHON", "VIRTUAL_ENV", "COV_"))
    }
    env.update(VIRTUAL_ENV=str(env_dir), PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}")
    for b in RUNNABLE:
        proc = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", b.commands],
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert proc.returncode == 0, (
            f"README line {b.line}: block exited {proc.returncode}\n{b.commands}\n"
            f"--- stdout (end)\n{proc.stdout[-3000:]}\n--- stderr (end)\n{proc.stderr[-3000:]}"
        )
    # The blocks leave a working install: the venv's shardflow runs a pool.
    check = (
        "import shardflow\n"
        "with shardflow.ShardedPool(lambda x: None, workers=2) as p:\n"
        "    p.submit_many(range(1000))\n"
        "assert p.metrics().processed == 1000\n"
    )
    proc = subprocess.run(
        [str(bindir / "python"), "-c", check],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
