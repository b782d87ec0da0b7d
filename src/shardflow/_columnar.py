"""Columnar batches: numpy columns in, per-shard (or per-part) column views out.

Private for now: the foundation of ``submit_array`` / ``Pipeline.from_array`` (issue 15).
Two operations on a *table* -- a numpy array (plain or structured), or a dict of numpy
arrays with as many rows each (rows are the first axis):

* ``partition(data, key, nshards)``: rows routed by the hash of their key (the compiled
  kernel ``shardflow._partition``: a stable counting-sort scatter, GIL released), one
  batch per shard, each a view into one partitioned buffer per column, rows of one key in
  source order;
* ``split(data, nparts)`` / ``batches(data, rows)``: unkeyed, contiguous zero-copy slices.

A batch has the input's form: a dict of arrays for a dict, an array (structured or not)
for an array, so ``batch["price"]`` reads a column either way. numpy is imported when
one of these is called, not with shardflow (it is the optional ``numpy`` extra).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Batch = dict[str, np.ndarray[Any, Any]] | np.ndarray[Any, Any]

__all__ = ["batches", "partition", "split"]


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is in the test extra
        raise ImportError("columnar batches need numpy: pip install 'shardflow[numpy]'") from None
    return numpy


def _columns(data: Any, copy: bool) -> tuple[dict[str, Any] | None, Any, int]:
    """Validate ``data``: returns ``(columns, array, rows)`` where exactly one of
    ``columns`` (a dict input) and ``array`` (an ndarray input) is not None."""
    np = _numpy()
    if isinstance(data, np.generic):
        raise ValueError(f"data must have at least one dimension (rows), got a scalar {data!r}")
    if isinstance(data, np.ndarray):
        arr = _checked("data", data, copy)
        return None, arr, arr.shape[0]
    if isinstance(data, Mapping):
        if not data:
            raise ValueError("data has no columns: give a dict of one or more arrays")
        cols: dict[str, Any] = {}
        for name, col in data.items():
            if not isinstance(name, str):
                raise TypeError(f"column names must be str, got {name!r} in data")
            cols[name] = _checked(f"data[{name!r}]", np.asarray(col), copy)
        lengths = {name: col.shape[0] for name, col in cols.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"columns have different lengths (ragged): {lengths}; every column of "
                "data must have as many rows"
            )
        return cols, None, next(iter(lengths.values()))
    raise TypeError(
        "data must be a numpy array (plain or structured) or a dict of numpy arrays, got "
        f"{type(data).__name__}"
    )


def _checked(name: str, arr: Any, copy: bool) -> Any:
    if arr.ndim < 1:
        raise ValueError(f"{name} must have at least one dimension (rows), got a scalar")
    if arr.dtype.hasobject:
        raise TypeError(
            f"{name} has dtype {arr.dtype} holding Python objects: columnar batches take "
            "fixed-width numbers, bytes ('S') and records of them"
        )
    if not arr.flags.c_contiguous:
        if not copy:
            raise ValueError(
                f"{name} is not C-contiguous (a strided view): pass copy=True to copy it, "
                "or numpy.ascontiguousarray() it first"
            )
        arr = _numpy().ascontiguousarray(arr)
    return arr


def _key(key: Any, cols: dict[str, Any] | None, arr: Any, rows: int, copy: bool) -> Any:
    np = _numpy()
    if isinstance(key, str):
        if cols is not None:
            if key not in cols:
                raise ValueError(f"key {key!r} is not a column; the columns are {list(cols)}")
            k = cols[key]
        elif arr.dtype.names is not None:
            if key not in arr.dtype.names:
                raise ValueError(
                    f"key {key!r} is not a field of data; its fields are {list(arr.dtype.names)}"
                )
            k = arr[key]  # a strided view: the kernel reads it in place
        else:
            raise ValueError(
                f"key {key!r} names a column, but data is a plain array: give the keys "
                "as an array of len(data) instead"
            )
    elif isinstance(key, (np.ndarray, list, tuple)):
        k = np.asarray(key)
    else:
        raise TypeError(
            "key must be a column name (str) or an array of keys (integers or bytes 'S'), "
            f"got {type(key).__name__}"
        )
    if k.ndim != 1 or k.shape[0] != rows:
        raise ValueError(
            f"key must be one key per row: a 1-D array of {rows} keys, got shape {k.shape}"
        )
    if k.dtype.kind not in "iuS":
        raise TypeError(
            f"key must hold integers (int8..int64, uint8..uint64) or fixed-width bytes "
            f"('S'), got dtype {k.dtype}"
        )
    if not k.dtype.isnative:
        if not copy:
            raise ValueError(
                f"key has non-native byte order ({k.dtype}): pass copy=True to convert it"
            )
        k = k.astype(k.dtype.newbyteorder("="))
    return k


def partition(data: Any, key: Any, nshards: int, *, copy: bool = False) -> list[Batch]:
    """Route the rows of ``data`` to ``nshards`` shards by the hash of their key.

    Args:
        data: a numpy array (plain or structured; rows are the first axis) or a dict of
            numpy arrays with as many rows each.
        key: the name of a column (dict) or field (structured array), or an array of one
            key per row; integers (int8..int64, uint8..uint64, routed by value) or
            fixed-width bytes (``'S'``, trailing NULs ignored).
        nshards: 1 to ``shardflow._partition.MAX_SHARDS``.
        copy: copy non-contiguous columns (and convert a non-native-endian key) instead
            of refusing them.

    Returns:
        One batch per shard, in shard order: the same form as ``data`` (a dict of arrays,
        or an array), views into one new buffer per column in which each shard's rows
        are contiguous. Rows of one shard keep their source order.

    Raises:
        TypeError: object dtypes, a key that is neither integers nor bytes.
        ValueError: ragged columns, non-contiguous columns without ``copy``, a key
            column that does not exist, ``nshards`` out of range.
    """
    from shardflow import _partition

    np = _numpy()
    cols, arr, rows = _columns(data, copy)
    k = _key(key, cols, arr, rows, copy)
    srcs = list(cols.values()) if cols is not None else [arr]
    outs = [np.empty_like(c, order="C") for c in srcs]
    offsets_mv, _, _ = _partition.partition(k, nshards, srcs, outs)
    offsets = np.frombuffer(offsets_mv, dtype=np.int64)
    bounds = offsets.tolist()
    result: list[Batch] = []
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        if cols is not None:
            result.append({name: out[lo:hi] for name, out in zip(cols, outs, strict=True)})
        else:
            result.append(outs[0][lo:hi])
    return result


def split(data: Any, nparts: int, *, copy: bool = False) -> list[Batch]:
    """Unkeyed: ``nparts`` contiguous slices of ``data`` (zero-copy views), sizes
    differing by at most one row (the first ``rows % nparts`` parts get the extra row).
    ``data`` and ``copy`` as for ``partition``."""
    if isinstance(nparts, bool) or not isinstance(nparts, int):
        raise TypeError(f"nparts must be an int, got {nparts!r} ({type(nparts).__name__})")
    if nparts < 1:
        raise ValueError(f"nparts must be >= 1, got {nparts!r}")
    cols, arr, rows = _columns(data, copy)
    base, extra = divmod(rows, nparts)
    bounds = [0]
    for p in range(nparts):
        bounds.append(bounds[-1] + base + (1 if p < extra else 0))
    return [_slice(cols, arr, bounds[p], bounds[p + 1]) for p in range(nparts)]


def batches(data: Any, rows: int, *, copy: bool = False) -> list[Batch]:
    """Unkeyed: consecutive slices of ``rows`` rows (the last may be shorter), zero-copy
    views. ``data`` and ``copy`` as for ``partition``."""
    if isinstance(rows, bool) or not isinstance(rows, int):
        raise TypeError(f"rows must be an int, got {rows!r} ({type(rows).__name__})")
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows!r}")
    cols, arr, total = _columns(data, copy)
    return [_slice(cols, arr, lo, min(lo + rows, total)) for lo in range(0, total, rows)]


def _slice(cols: dict[str, Any] | None, arr: Any, lo: int, hi: int) -> Batch:
    if cols is not None:
        return {name: col[lo:hi] for name, col in cols.items()}
    out: npt.NDArray[Any] = arr[lo:hi]
    return out


# --------------------------------------------------------------------------- pools
# What ShardedPool.submit_array and Pipeline.from_array build on: batches of at most
# ``batch_rows`` rows streamed shard by shard, and the row ledger of an array pool.

#: Rows per array batch when ``submit_array`` is not told (one batch of an int64 key and
#: two float64 columns is 1.5 MiB).
DEFAULT_BATCH_ROWS = 65536
#: Rows the kernel partitions per call. A keyed input is partitioned chunk by chunk, so
#: that the partition buffers alive at once are bounded (the chunks whose batches are
#: still queued: the pool's capacity bounds those), never a second copy of a large input.
CHUNK_ROWS = 1 << 20


def prepare(data: Any, key: Any, copy: bool) -> tuple[dict[str, Any] | None, Any, int, Any]:
    """Validate ``data`` and ``key`` once: ``(columns, array, rows, keys)`` (``keys`` is
    None unkeyed; exactly one of ``columns`` and ``array`` is not None)."""
    cols, arr, rows = _columns(data, copy)
    k = None if key is None else _key(key, cols, arr, rows, copy)
    return cols, arr, rows, k


def row_bytes(cols: dict[str, Any] | None, arr: Any) -> int:
    """Bytes one row takes over all columns."""
    srcs = list(cols.values()) if cols is not None else [arr]
    total = 0
    for c in srcs:
        width = c.dtype.itemsize
        for d in c.shape[1:]:
            width *= d
        total += width
    return total


def _form(cols: dict[str, Any] | None, parts: list[Any]) -> Batch:
    """Per-column arrays -> a batch in the input's form."""
    if cols is not None:
        return dict(zip(cols, parts, strict=True))
    out: npt.NDArray[Any] = parts[0]
    return out


def keyed_batches(
    cols: dict[str, Any] | None,
    arr: Any,
    keys: Any,
    rows: int,
    nshards: int,
    batch_rows: int,
    chunk_rows: int | None = None,
) -> Iterator[tuple[int, int, Batch]]:
    """``(shard, rows, batch)`` for every batch of a keyed input, in an order that keeps
    each shard's rows in source order (so rows of one key stay in source order).

    The input is partitioned ``chunk_rows`` rows at a time by the kernel (GIL released);
    a shard's batches are slices of the chunk's partition buffer (zero copy), except a
    batch that spans chunks: its pieces (views) are kept until it is full, then
    concatenated once (a shard's remainder of a chunk, < ``batch_rows`` rows, is copied
    once). Every batch holds ``batch_rows`` rows but the last of each shard. Partition
    buffers are reused once no batch or piece cut from them is alive (``_Buffers``).
    ``chunk_rows`` defaults to ``CHUNK_ROWS``."""
    from shardflow import _partition

    np = _numpy()
    if chunk_rows is None:
        chunk_rows = CHUNK_ROWS
    srcs_all = list(cols.values()) if cols is not None else [arr]
    # Per shard: the pieces of its next batch from earlier chunks (per column), and rows.
    pieces: list[list[list[Any]]] = [[] for _ in range(nshards)]
    held = [0] * nshards

    def joined(s: int) -> Batch:
        parts = pieces[s]
        pieces[s] = []
        held[s] = 0
        if len(parts) == 1:
            return _form(cols, parts[0])
        return _form(cols, [np.concatenate(col) for col in zip(*parts, strict=True)])

    buffers = _Buffers(srcs_all, min(chunk_rows, rows))
    for lo in range(0, rows, chunk_rows):
        hi = min(lo + chunk_rows, rows)
        srcs = [c[lo:hi] for c in srcs_all]
        outs = buffers.take(hi - lo)
        offsets_mv, _, _ = _partition.partition(keys[lo:hi], nshards, srcs, outs)
        bounds = np.frombuffer(offsets_mv, dtype=np.int64).tolist()
        del srcs
        for s in range(nshards):
            a, b = bounds[s], bounds[s + 1]
            if a == b:
                continue
            if held[s]:
                take = min(batch_rows - held[s], b - a)
                pieces[s].append([o[a : a + take] for o in outs])
                held[s] += take
                a += take
                if held[s] < batch_rows:
                    continue
                yield s, batch_rows, joined(s)
            while b - a >= batch_rows:
                yield s, batch_rows, _form(cols, [o[a : a + batch_rows] for o in outs])
                a += batch_rows
            if a < b:
                pieces[s].append([o[a:b] for o in outs])
                held[s] = b - a
        del outs
    for s in range(nshards):
        if held[s]:
            n = held[s]
            yield s, n, joined(s)


class _Buffers:
    """The partition buffers of one ``keyed_batches`` run, reused from chunk to chunk.

    Fresh buffers cost a page fault per 4 KiB on first write (the kernel partitions about
    twice as fast into buffers it wrote before), so a chunk takes a set whose batches are
    all gone (handled and dropped by the pool and the handler) and allocates one only
    when every set still backs a queued batch. A batch is a view: it holds a reference
    to its buffer (``.base``), so "no view left" is the buffer's reference count back at
    what this object alone holds. A handler that keeps a batch keeps its set out of
    reuse, never overwritten. How many sets exist is bounded like the batches in flight
    (the pool's capacity), as fresh allocations would be."""

    def __init__(self, srcs: list[Any], rows: int) -> None:
        self._specs = [((rows, *c.shape[1:]), c.dtype) for c in srcs]
        self._sets: list[list[Any]] = []
        self._idle_refs = -1

    def take(self, rows: int) -> list[Any]:
        np = _numpy()
        for bufs in self._sets:
            if all(sys.getrefcount(b) == self._idle_refs for b in bufs):
                return [b[:rows] for b in bufs]
        bufs = [np.empty(shape, dtype) for shape, dtype in self._specs]
        self._sets.append(bufs)
        if self._idle_refs < 0:
            # Held by its set list, the loop variable and getrefcount's argument.
            self._idle_refs = min(sys.getrefcount(b) for b in bufs)
        return [b[:rows] for b in bufs]


def slice_batches(
    cols: dict[str, Any] | None, arr: Any, rows: int, batch_rows: int
) -> Iterator[tuple[int, Batch]]:
    """``(rows, batch)``: consecutive zero-copy slices of ``batch_rows`` rows (the last
    may be shorter)."""
    for lo in range(0, rows, batch_rows):
        hi = min(lo + batch_rows, rows)
        yield hi - lo, _slice(cols, arr, lo, hi)


def rows_of(batch: Any) -> int:
    """Rows of an array batch, or of a list of them (what a batch-shipping backend hands
    the handler wrapper, and the dead letter a whole failed shipment)."""
    if isinstance(batch, list):
        return sum(rows_of(b) for b in batch)
    if isinstance(batch, Mapping):
        for col in batch.values():
            return int(col.shape[0])
        return 0
    return int(batch.shape[0])


class RowLedger:
    """Row counters of an array pool (``ShardedPool(arrays=True)``), kept in the caller's
    process whatever the backend: the handler wrapper the shard loops call (in this
    process: for remote backends it is the proxy that ships batches) sees every batch's
    outcome, ``settle`` the outcomes of deferred batches, the dead-letter wrapper what a
    dead letter took. One lock, taken once per batch (thousands of rows), so the counts
    are exact on free-threaded builds too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.submitted = 0
        self.processed = 0
        self.failed_any = 0  # failed + dead-lettered (the dead letter decides which)
        self.dead_lettered = 0
        self.dropped = 0
        self.returned = 0

    def add(self, field: str, rows: int) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + rows)

    def _outcome(self, batch: list[Any], outcome: object) -> None:
        """Count a shipped list of batches by its outcome (None, a BatchOutcome, or an
        exception for the whole list)."""
        from shardflow._worker import BatchOutcome

        total = rows_of(batch)
        if outcome is None:
            self.add("processed", total)
        elif type(outcome) is BatchOutcome:
            bad = 0
            for index, _exc in outcome.failures:
                if 0 <= index < len(batch):
                    bad += rows_of(batch[index])
            with self._lock:
                self.processed += total - bad
                self.failed_any += bad
        else:
            self.add("failed_any", total)

    def wrap_handler(self, inner: Callable[[Any], object], lists: bool) -> Callable[[Any], object]:
        """The callable the shard loops call: ``inner`` plus the row count of the
        outcome. ``lists``: the core hands lists of batches (a backend that ships them)."""
        from shardflow._worker import DEFERRED

        if lists:

            def counted_list(batch: list[Any]) -> object:
                try:
                    result = inner(batch)
                except BaseException:
                    self.add("failed_any", rows_of(batch))
                    raise
                if result is not DEFERRED:
                    self._outcome(batch, result)
                return result

            return counted_list

        def counted(batch: Any) -> object:
            n = rows_of(batch)
            try:
                result = inner(batch)
            except BaseException:
                self.add("failed_any", n)
                raise
            self.add("processed", n)
            return result

        return counted

    def wrap_settle(
        self, settle: Callable[[int, list[Any], object, int], None]
    ) -> Callable[[int, list[Any], object, int], None]:
        def counted_settle(index: int, batch: list[Any], outcome: object, service_ns: int) -> None:
            self._outcome(batch, outcome)
            settle(index, batch, outcome, service_ns)

        return counted_settle

    def wrap_dead_letter(
        self, dead_letter: Callable[[Any, BaseException], object]
    ) -> Callable[[Any, BaseException], object]:
        def counted_dead_letter(what: Any, exc: BaseException) -> object:
            result = dead_letter(what, exc)  # raises: the core counts it failed instead
            self.add("dead_lettered", rows_of(what))
            return result

        return counted_dead_letter
