"""``shardflow run FILE --handler module:function``: records reach the user's handler
(routed by ``--key`` in file order), malformed lines and handler exceptions go to the
dead-letter file with their line numbers and never stop the run, and anything that keeps
the run from starting is one line on stderr with exit status 2, never a traceback."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shardflow.cli.run import UsageError, detect_format, load_handler

CHILD_TIMEOUT = 120

#: The handler module every test writes into its tmp_path. Each call appends
#: "<thread> <json record>" to seen.txt (one write per line: lines do not interleave), so
#: the test can check what ran, where and in which order.
JOBS = """
import json, threading

_lock = threading.Lock()

def _log(rec):
    with _lock, open("seen.txt", "a", encoding="utf-8") as f:
        f.write(threading.current_thread().name + " " + json.dumps(rec) + "\\n")

def handle(rec):
    if rec.get("fail"):
        raise ValueError("refused record " + str(rec.get("id")))
    _log(rec)

def handle_batch(recs):
    assert isinstance(recs, list)
    if any(r.get("fail") for r in recs):
        raise RuntimeError("batch of " + str(len(recs)) + " refused")
    for r in recs:
        _log(r)

NOT_CALLABLE = 42
"""


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``shardflow run`` in ``tmp_path``, as the console script would run it: the current
    directory is NOT on sys.path by the interpreter's doing (``-c`` puts "" first; it is
    removed), so importing the handler relies on ``run`` adding it."""
    code = (
        "import sys; sys.path.remove(''); from shardflow.cli.main import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "run", *args],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        cwd=tmp_path,
        check=False,
    )


def seen(tmp_path: Path) -> list[tuple[str, dict[str, Any]]]:
    path = tmp_path / "seen.txt"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        thread, rec = line.split(" ", 1)
        out.append((thread, json.loads(rec)))
    return out


def dead_letters(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("shardflow run: error: "), lines[0]
    return lines[0]


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOBS, encoding="utf-8")
    return tmp_path


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_every_record_reaches_the_handler_in_key_order(jobs: Path) -> None:
    records = [{"id": i, "user": i % 7} for i in range(3_000)]
    write_jsonl(jobs / "events.jsonl", records)
    proc = run(jobs, "events.jsonl", "--handler", "jobs:handle", "--key", "user", "--workers", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""  # not a terminal: no progress unless asked
    got = seen(jobs)
    assert sorted(r["id"] for _, r in got) == list(range(3_000))
    # Per key: one worker, in file order.
    for user in range(7):
        mine = [(t, r["id"]) for t, r in got if r["user"] == user]
        assert len({t for t, _ in mine}) == 1
        assert [i for _, i in mine] == [i for i in range(3_000) if i % 7 == user]
    assert "3,000 records in" in proc.stdout and "records/s" in proc.stdout
    assert "Per shard:" in proc.stdout
    assert "records 3,000 = submitted 3,000 = processed 3,000" in proc.stdout
    # The dead-letter file is this run's: written, and empty.
    assert (jobs / "events.jsonl.dead.jsonl").read_text(encoding="utf-8") == ""


def test_malformed_lines_and_handler_errors_are_dead_lettered_with_line_numbers(
    jobs: Path,
) -> None:
    lines = [
        json.dumps({"id": 1, "user": "a"}),  # 1
        "{not json",  # 2
        "",  # 3 blank: skipped, not an error
        json.dumps([1, 2]),  # 4 not an object
        json.dumps({"id": 5}),  # 5 no key field
        json.dumps({"id": 6, "user": "b", "fail": True}),  # 6 handler raises
        json.dumps({"id": 7, "user": {"x": 1}}),  # 7 unhashable key
        json.dumps({"id": 8, "user": "a"}),  # 8
    ]
    data = ("\n".join(lines) + "\n").encode() + b'{"id": 9, "user": "\xff"}\n'  # 9 bad UTF-8
    (jobs / "in.jsonl").write_bytes(data + json.dumps({"id": 10, "user": "c"}).encode())
    proc = run(
        jobs, "in.jsonl", "--handler", "jobs:handle", "--key", "user", "--dead-letter", "bad.jsonl"
    )
    # The run went on to the end, and says it was not clean.
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(r["id"] for _, r in seen(jobs)) == [1, 8, 10]
    dead = {d["line"]: d for d in dead_letters(jobs / "bad.jsonl")}
    assert sorted(dead) == [2, 4, 5, 6, 7, 9]
    assert dead[2]["kind"] == "malformed" and "invalid JSON" in dead[2]["error"]
    assert dead[2]["raw"] == "{not json"
    assert "expected a JSON object, got list" in dead[4]["error"]
    assert "missing key field 'user'" in dead[5]["error"]
    assert dead[6] == {
        "line": 6,
        "kind": "handler",
        "error": "ValueError: refused record 6",
        "record": {"id": 6, "user": "b", "fail": True},
    }
    assert "unhashable" in dead[7]["error"]
    assert "invalid UTF-8" in dead[9]["error"]
    assert not (jobs / "in.jsonl.dead.jsonl").exists()
    out = proc.stdout
    assert "Dead letters: 6 -> bad.jsonl (malformed 5, handler errors 1)" in out
    assert "lines 10 = records 4 + malformed 5 + blank 1 + header 0" in out
    assert "dead-letter file 6 = malformed 5 + dead-lettered 1" in out
    assert "MISMATCH" not in out


def test_batches_hand_lists_and_a_failed_batch_dead_letters_each_record(jobs: Path) -> None:
    records = [{"id": i, "fail": i == 150} for i in range(300)]
    write_jsonl(jobs / "b.jsonl", records)
    proc = run(
        jobs, "b.jsonl", "--handler", "jobs:handle_batch", "--batch-size", "32", "--workers", "2"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    done = {r["id"] for _, r in seen(jobs)}
    dead = dead_letters(jobs / "b.jsonl.dead.jsonl")
    assert 1 <= len(dead) <= 32
    assert {d["kind"] for d in dead} == {"handler"}
    assert {d["error"] for d in dead} == {f"RuntimeError: batch of {len(dead)} refused"}
    # Each dead record carries its own line number (record i is on line i + 1).
    assert all(d["line"] == d["record"]["id"] + 1 for d in dead)
    assert 150 in {d["record"]["id"] for d in dead}
    assert done | {d["record"]["id"] for d in dead} == set(range(300))
    assert not done & {d["record"]["id"] for d in dead}


def test_csv_rows_become_dicts_and_bad_rows_are_dead_lettered(jobs: Path) -> None:
    (jobs / "t.csv").write_text(
        '\ufeffid,user,note\n1,a,x\n2,b\n3,c,"two\nlines"\n4,a,y,extra\n5,b,z\n',
        encoding="utf-8",
    )
    proc = run(jobs, "t.csv", "--handler", "jobs:handle", "--key", "user")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got = sorted((r["id"], r["note"]) for _, r in seen(jobs))
    assert got == [("1", "x"), ("3", "two\nlines"), ("5", "z")]
    dead = {d["line"]: d for d in dead_letters(jobs / "t.csv.dead.jsonl")}
    assert sorted(dead) == [3, 6]
    assert dead[3]["error"] == "expected 3 fields (the header's), got 2"
    assert dead[6]["raw"] == ["4", "a", "y", "extra"]
    # The quoted newline makes one record span two lines: lines >= records + ...
    assert "lines 7 >= records 3 + malformed 2 + blank 0 + header 1" in proc.stdout


def test_progress_on_request(jobs: Path) -> None:
    write_jsonl(jobs / "p.jsonl", [{"id": i} for i in range(50)])
    proc = run(jobs, "p.jsonl", "--handler", "jobs:handle", "--progress")
    assert proc.returncode == 0, proc.stderr
    assert "p.jsonl" in proc.stderr and "50/50" in proc.stderr and "100%" in proc.stderr


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        ("jobs", "--handler must be MODULE:FUNCTION (e.g. jobs:handle), got 'jobs'"),
        (":handle", "--handler must be MODULE:FUNCTION"),
        ("jobs:", "--handler must be MODULE:FUNCTION"),
        ("nosuchmodule:handle", "no module named 'nosuchmodule'"),
        ("jobs:nope", "'jobs' has no attribute 'nope'"),
        ("jobs:NOT_CALLABLE", "is a int, not a callable"),
        ("broken:handle", "importing 'broken' failed: ZeroDivisionError: division by zero"),
        ("syntax:handle", "importing 'syntax' failed: SyntaxError"),
    ],
)
def test_bad_handlers_are_one_line_exit_2(jobs: Path, handler: str, message: str) -> None:
    (jobs / "broken.py").write_text("x = 1 / 0\n", encoding="utf-8")
    (jobs / "syntax.py").write_text("def handle(:\n", encoding="utf-8")
    write_jsonl(jobs / "e.jsonl", [{"id": 1}])
    line = one_error_line(run(jobs, "e.jsonl", "--handler", handler))
    assert message in line
    assert seen(jobs) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jsonl", "--handler", "jobs:handle"], "FILE 'missing.jsonl': no such file"),
        ([".", "--handler", "jobs:handle"], "is a directory"),
        (["e.jsonl"], "the following arguments are required: --handler"),
        (["--handler", "jobs:handle"], "the following arguments are required: FILE"),
        (["e.jsonl", "--handler", "jobs:handle", "--workers", "0"], "--workers"),
        (["e.jsonl", "--handler", "jobs:handle", "--workers", "two"], "'two'"),
        (["e.jsonl", "--handler", "jobs:handle", "--batch-size", "-1"], "--batch-size"),
        (["e.jsonl", "--handler", "jobs:handle", "--format", "xml"], "invalid choice: 'xml'"),
        (
            ["e.jsonl", "--handler", "jobs:handle", "--dead-letter", "no/such/dir/d.jsonl"],
            "does not exist",
        ),
        (["e.jsonl", "--handler", "jobs:handle", "--dead-letter", "e.jsonl"], "the input file"),
        (["t.csv", "--handler", "jobs:handle", "--key", "zip"], "--key 'zip' is not a column"),
    ],
)
def test_bad_input_is_one_line_exit_2(jobs: Path, args: list[str], message: str) -> None:
    write_jsonl(jobs / "e.jsonl", [{"id": 1}])
    (jobs / "t.csv").write_text("id,user\n1,a\n", encoding="utf-8")
    line = one_error_line(run(jobs, *args))
    assert message in line, line
    assert seen(jobs) == []


def test_load_handler_and_detect_format_in_process() -> None:
    assert load_handler("json:dumps")([1]) == "[1]"
    # A dotted attribute path after the colon.
    assert load_handler("json:JSONEncoder.encode")(json.JSONEncoder(), {"a": 1}) == '{"a": 1}'
    with pytest.raises(UsageError, match="MODULE:FUNCTION"):
        load_handler("json.dumps")
    assert detect_format("x.CSV", None) == "csv"
    assert detect_format("x.ndjson", None) == "jsonl"
    assert detect_format("x.csv", "jsonl") == "jsonl"
    with pytest.raises(UsageError, match="--format must be one of jsonl, csv, got 'xml'"):
        detect_format("x", "xml")


@pytest.mark.skipif(shutil.which("bash") is None, reason="the README's example is a bash script")
def test_the_readme_run_example_runs_as_written(tmp_path: Path) -> None:
    """The README's `shardflow run` block, run by bash (``shardflow`` and ``python`` are
    this interpreter, whether or not its scripts directory is on PATH)."""
    readme = Path(__file__).resolve().parents[2] / "README.md"
    blocks = re.findall(r"```bash\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)
    (block,) = [b for b in blocks if "shardflow run events.jsonl" in b]
    script = block.replace("shardflow run", f"{sys.executable} -m shardflow run").replace(
        "python -c", f"{sys.executable} -c"
    )
    proc = subprocess.run(
        ["bash", "-euc", script],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "10,000 records in" in proc.stdout
    assert "records 10,000 = submitted 10,000 = processed 10,000" in proc.stdout
