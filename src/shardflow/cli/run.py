"""``shardflow run FILE --handler module:function``: a file of records through a pool.

Records are dicts: one JSON object per line (``jsonl``) or one CSV row keyed by the
header (``csv``). The main thread reads and parses, and hands records to a
``ShardedPool`` in chunks (``submit_many``); the workers call the user's handler with a
record, or with a list of records when ``batch_size > 1``. With ``--key FIELD`` records
are routed by that field, so records with the same value are handled in file order.

Nothing stops the run but Ctrl-C:

* a malformed line (invalid JSON or UTF-8, not an object, wrong number of CSV fields, a
  missing or unhashable key field) is written to the dead-letter file with its line
  number and the error, and reading goes on;
* a handler exception sends the record (each record of a failed batch) to the same file,
  with the line number and the exception, and the worker goes on.

The dead-letter file (default ``FILE.dead.jsonl``) is rewritten on every run; each line
is a JSON object ``{"line", "kind": "malformed" | "handler", "error", ...}`` with the raw
text (malformed) or the record (handler errors).

Exit status: 0 when every record was processed; 1 when the run finished but some lines
were dead-lettered (or the accounting did not balance); 2 when the run could not start
(usage error: missing file, unimportable handler, bad option), with one line on stderr;
130 after Ctrl-C.

Example:
    $ printf '{"user": 1, "n": 2}\\n{"user": 2, "n": 3}\\n' > events.jsonl
    $ printf 'def handle(rec):\\n    print(rec["n"])\\n' > jobs.py
    $ shardflow run events.jsonl --handler jobs:handle --key user --workers 2
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from shardflow.cli.demo import Check, accounting_lines, pool_equation, shard_table
from shardflow.cli.progress import Progress, from_metrics, want_progress
from shardflow.pool import ShardedPool

__all__ = [
    "FORMATS",
    "RunConfig",
    "UsageError",
    "default_dead_letter_path",
    "detect_format",
    "load_handler",
    "run_file",
]

FORMATS = ("jsonl", "csv")
#: Records per ``submit_many`` call.
CHUNK = 1_024
#: Characters of a malformed line kept in the dead-letter file.
RAW_LIMIT = 10_000

#: An item in the pool: the record's line number and the record.
Item = tuple[int, dict[str, Any]]


class UsageError(Exception):
    """The run cannot start; the message is one line naming the option and the value."""


@dataclass(frozen=True)
class RunConfig:
    """Options of ``shardflow run`` (see the module docstring)."""

    path: str
    handler: str
    workers: int = 2
    key: str | None = None
    batch_size: int = 1
    format: str | None = None
    dead_letter: str | None = None
    progress: bool | None = None


def detect_format(path: str, fmt: str | None) -> str:
    """``fmt`` if given, else ``csv`` for a ``.csv`` file and ``jsonl`` for anything else."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    return "csv" if path.lower().endswith(".csv") else "jsonl"


def default_dead_letter_path(path: str) -> str:
    """``FILE.dead.jsonl`` next to the input."""
    return path + ".dead.jsonl"


def load_handler(spec: str) -> Callable[[Any], object]:
    """Import ``module:function`` (``function`` may be a dotted attribute path) with the
    current directory first on ``sys.path``. Raises ``UsageError`` with a one-line reason.

    Example:
        >>> load_handler("json:dumps")({"a": 1})
        '{"a": 1}'
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise UsageError(f"--handler must be MODULE:FUNCTION (e.g. jobs:handle), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise UsageError(
                f"--handler {spec!r}: no module named {exc.name!r} (looked in the current "
                "directory and sys.path)"
            ) from None
        raise UsageError(
            f"--handler {spec!r}: importing {module_name!r} failed: {_one_line(exc)}"
        ) from None
    except Exception as exc:
        raise UsageError(
            f"--handler {spec!r}: importing {module_name!r} failed: {_one_line(exc)}"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(
                f"--handler {spec!r}: {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise UsageError(
            f"--handler {spec!r} is a {type(obj).__name__}, not a callable taking a record"
        )
    handler: Callable[[Any], object] = obj
    return handler


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


# --------------------------------------------------------------------------- dead letters


class DeadLetterFile:
    """The dead-letter file: one JSON object per line, written as errors happen (from the
    reading thread and from the workers, hence the lock), so memory stays bounded."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._f: TextIO = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.malformed = 0
        self.handler_errors = 0

    def _write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False, default=repr)
        with self._lock:
            self._f.write(line + "\n")

    def malformed_line(self, line: int, error: str, raw: Any) -> None:
        """A line that could not become a record."""
        self._write({"line": line, "kind": "malformed", "error": error, "raw": raw})
        with self._lock:
            self.malformed += 1

    def __call__(self, what: Item | list[Item], exc: BaseException) -> None:
        """The pool's ``dead_letter``: an item (or a batch) whose handler call raised."""
        items = what if isinstance(what, list) else [what]
        error = _one_line(exc)
        for line, record in items:
            self._write({"line": line, "kind": "handler", "error": error, "record": record})
        with self._lock:
            self.handler_errors += len(items)

    @property
    def total(self) -> int:
        """Lines written."""
        return self.malformed + self.handler_errors

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            self._f.close()


# --------------------------------------------------------------------------- readers


@dataclass
class ReadStats:
    """What the reader saw: physical ``lines``, ``records`` handed to the pool, ``blank``
    lines skipped, ``malformed`` lines dead-lettered, and CSV ``header`` lines."""

    lines: int = 0
    records: int = 0
    blank: int = 0
    malformed: int = 0
    header: int = 0
    unsent: int = 0  #: read, but not submitted (Ctrl-C)


def _check_key(rec: dict[str, Any], key: str | None) -> str | None:
    """Why ``rec`` cannot be routed by ``key``, or None."""
    if key is None:
        return None
    if key not in rec:
        return f"missing key field {key!r}"
    try:
        hash(rec[key])
    except TypeError:
        return f"key field {key!r} is a {type(rec[key]).__name__} (unhashable)"
    return None


def read_jsonl(f: Any, key: str | None, stats: ReadStats, dead: DeadLetterFile) -> Iterator[Item]:
    """Records of a binary JSON-lines stream; bad lines go to ``dead``."""
    for lineno, raw in enumerate(f, 1):
        stats.lines = lineno
        if not raw.strip():
            stats.blank += 1
            continue
        try:
            # utf-8-sig on the first line: a byte-order mark is not a malformed record.
            rec = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
        except UnicodeDecodeError as exc:
            stats.malformed += 1
            dead.malformed_line(
                lineno, f"invalid UTF-8: {exc}", raw.decode("utf-8", "replace")[:RAW_LIMIT]
            )
            continue
        except ValueError as exc:
            stats.malformed += 1
            dead.malformed_line(
                lineno, f"invalid JSON: {exc}", raw.decode("utf-8").rstrip("\r\n")[:RAW_LIMIT]
            )
            continue
        why = (
            f"expected a JSON object, got {type(rec).__name__}"
            if not isinstance(rec, dict)
            else _check_key(rec, key)
        )
        if why is not None:
            stats.malformed += 1
            dead.malformed_line(lineno, why, raw.decode("utf-8").rstrip("\r\n")[:RAW_LIMIT])
            continue
        stats.records += 1
        yield lineno, rec


def read_csv(f: TextIO, key: str | None, stats: ReadStats, dead: DeadLetterFile) -> Iterator[Item]:
    """Records of a CSV text stream with a header row; bad rows go to ``dead``.

    A record's line number is the physical line it ends on (quoted fields may span
    lines)."""
    reader = csv.reader(f)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise UsageError(f"the CSV header of the input is unreadable: {exc}") from None
    stats.header = 1
    stats.lines = reader.line_num
    width = len(header)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            stats.lines = reader.line_num
            return
        except csv.Error as exc:
            stats.lines = reader.line_num
            stats.malformed += 1
            dead.malformed_line(reader.line_num, f"invalid CSV: {exc}", None)
            continue
        stats.lines = lineno = reader.line_num
        if not row:
            stats.blank += 1
            continue
        why: str | None = None
        if len(row) != width:
            why = f"expected {width} fields (the header's), got {len(row)}"
        else:
            try:
                "".join(row).encode("utf-8")
            except UnicodeEncodeError:
                why = "invalid UTF-8"
        if why is None:
            rec = dict(zip(header, row, strict=True))
            why = _check_key(rec, key)
            if why is None:
                stats.records += 1
                yield lineno, rec
                continue
        stats.malformed += 1
        dead.malformed_line(lineno, why, [c.encode("utf-8", "replace").decode() for c in row])


def count_records(path: str, fmt: str) -> int:
    """Non-blank lines (less the CSV header): the progress bar's total. A quick binary
    scan; with multi-line CSV fields it overcounts, and the bar is corrected at the end."""
    n = 0
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                n += 1
    return max(0, n - 1) if fmt == "csv" else n


# --------------------------------------------------------------------------- the run


def _open_input(path: str, fmt: str) -> Any:
    if fmt == "csv":
        # newline="" as the csv module wants; bad UTF-8 survives as surrogates and is
        # dead-lettered per row instead of stopping the read.
        return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")
    return open(path, "rb")


def _check_paths(cfg: RunConfig, fmt: str) -> str:
    if not os.path.exists(cfg.path):
        raise UsageError(f"FILE {cfg.path!r}: no such file")
    if os.path.isdir(cfg.path):
        raise UsageError(f"FILE {cfg.path!r} is a directory, expected a {fmt} file")
    if not os.access(cfg.path, os.R_OK):
        raise UsageError(f"FILE {cfg.path!r} is not readable")
    dl = cfg.dead_letter if cfg.dead_letter is not None else default_dead_letter_path(cfg.path)
    if os.path.abspath(dl) == os.path.abspath(cfg.path):
        raise UsageError(f"--dead-letter {dl!r} is the input file")
    parent = os.path.dirname(os.path.abspath(dl))
    if not os.path.isdir(parent):
        raise UsageError(f"--dead-letter {dl!r}: directory {parent!r} does not exist")
    if os.path.isdir(dl):
        raise UsageError(f"--dead-letter {dl!r} is a directory")
    return dl


def _csv_header(path: str) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        try:
            return next(csv.reader(f))
        except (StopIteration, csv.Error):
            return []


def _submit(pool: ShardedPool[Item], chunk: list[Item], stats: ReadStats) -> None:
    """``submit_many``; on Ctrl-C inside it, the records that did not go in are taken off
    ``stats.records`` (they were read, but never reached the pool)."""
    try:
        pool.submit_many(chunk)
    except BaseException as exc:
        stats.records -= len(chunk) - getattr(exc, "submitted", 0)
        stats.unsent += len(chunk) - getattr(exc, "submitted", 0)
        raise


def run_file(cfg: RunConfig, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``cfg.handler`` over the records of ``cfg.path``; print the report to ``out``.

    Raises ``UsageError`` (before anything runs) for a missing file, a bad handler or a
    bad option. Returns the exit status (see the module docstring).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    fmt = detect_format(cfg.path, cfg.format)
    dl_path = _check_paths(cfg, fmt)
    if fmt == "csv" and cfg.key is not None:
        columns = _csv_header(cfg.path)
        if columns and cfg.key not in columns:
            raise UsageError(
                f"--key {cfg.key!r} is not a column of {cfg.path!r} (columns: {', '.join(columns)})"
            )
    user_handler = load_handler(cfg.handler)
    total = count_records(cfg.path, fmt)
    try:
        dead = DeadLetterFile(dl_path)
    except OSError as exc:
        raise UsageError(f"--dead-letter {dl_path!r}: {exc.strerror or exc}") from None

    handler: Callable[[Any], object]
    if cfg.batch_size > 1:

        def handler(batch: list[Item]) -> object:
            return user_handler([rec for _, rec in batch])

    else:

        def handler(item: Item) -> object:
            return user_handler(item[1])

    key = cfg.key
    pool: ShardedPool[Item] = ShardedPool(
        handler,
        workers=cfg.workers,
        key=None if key is None else (lambda item: item[1][key]),
        batch_size=cfg.batch_size,
        dead_letter=dead,
        name="run",
    )
    stats = ReadStats()
    print(
        f"shardflow run {cfg.path} ({fmt}): handler {cfg.handler}, {cfg.workers} workers, "
        f"key={key or '(round-robin)'}, batch_size={cfg.batch_size}; dead letters -> {dl_path}",
        file=out,
    )
    out.flush()
    progress = Progress(
        lambda: from_metrics(
            pool.metrics(), extra_done=stats.malformed, extra_errors=stats.malformed
        ),
        total=total,
        stream=err,
        label=os.path.basename(cfg.path),
    )
    interrupted = False
    t0 = time.perf_counter()
    try:
        if want_progress(cfg.progress, err):
            progress.start()
        with _open_input(cfg.path, fmt) as f:
            records = (
                read_csv(f, key, stats, dead) if fmt == "csv" else read_jsonl(f, key, stats, dead)
            )
            chunk: list[Item] = []
            for item in records:
                chunk.append(item)
                if len(chunk) >= CHUNK:
                    _submit(pool, chunk, stats)
                    chunk = []
            _submit(pool, chunk, stats)
        pool.close()
        pool.join()
    except KeyboardInterrupt:
        interrupted = True
        pool.shutdown(cancel=True)
    finally:
        # The real count (the quick scan overcounts multi-line CSV records).
        progress.total = stats.records + stats.malformed
        progress.stop()
        dead.close()
    elapsed = time.perf_counter() - t0
    m = pool.metrics()

    rate = stats.records / elapsed if elapsed > 0 else 0.0
    print(
        f"\n{stats.records:,} records in {elapsed:.2f} s: {rate:,.0f} records/s; processed "
        f"{m.processed:,}, handler errors {m.dead_lettered + m.failed:,}, malformed lines "
        f"{stats.malformed:,}",
        file=out,
    )
    print("\nPer shard:", file=out)
    for line in shard_table(m):
        print("  " + line, file=out)
    print(
        f"\nDead letters: {dead.total:,} -> {dl_path} (malformed {dead.malformed:,}, "
        f"handler errors {dead.handler_errors:,})",
        file=out,
    )
    if interrupted:
        print(
            f"interrupted at line {stats.lines:,}: {m.returned + stats.unsent:,} records "
            "read but not handled; the rest of the file was not read",
            file=out,
        )
    parts = stats.records + stats.malformed + stats.blank + stats.header
    # A CSV record may span lines (quoted newlines): then lines > records + ...
    op = "=" if fmt == "jsonl" or stats.lines == parts else ">="
    checks = [
        Check(
            f"lines {stats.lines:,} {op} records {stats.records:,} + malformed "
            f"{stats.malformed:,} + blank {stats.blank:,} + header {stats.header}",
            interrupted or stats.lines == parts or (op == ">=" and stats.lines > parts),
        ),
        pool_equation(m, "records", stats.records),
        Check(
            f"dead-letter file {dead.total:,} = malformed {stats.malformed:,} + "
            f"dead-lettered {m.dead_lettered:,}",
            dead.total == stats.malformed + m.dead_lettered,
        ),
    ]
    print("\nAccounting:", file=out)
    for line in accounting_lines(checks):
        print(line, file=out)
    out.flush()
    if interrupted:
        return 130
    if not all(c.ok for c in checks):
        print("error: the accounting does not balance", file=err)
        return 1
    return 0 if dead.total == 0 else 1
