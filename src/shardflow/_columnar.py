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

from collections.abc import Mapping
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
