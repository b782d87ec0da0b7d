"""Array stages of a ``Pipeline`` (``Pipeline.from_array``, ``map_batches``): the array
source, the row counters of each array stage, and concatenating array results.

A ``map_batches`` stage is an ordinary ``map`` stage whose items are array batches (one
batch per handler call): its function is wrapped here to check what it returns and to
count rows, once per batch, under a lock (several workers may run it at once).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from shardflow import _columnar
from shardflow.metrics import StageRows

__all__ = ["ArraySource", "RowCounter", "concat"]


class ArraySource:
    """The source of ``Pipeline.from_array``: zero-copy slices of ``batch_rows`` rows,
    in order; counts the rows it yielded (``rows``)."""

    def __init__(self, data: Any, batch_rows: int, copy: bool) -> None:
        self._cols, self._arr, self.total, _ = _columnar.prepare(data, None, copy)
        self._batch_rows = batch_rows
        self.rows = 0
        self._used = False

    def __iter__(self) -> Iterator[Any]:
        if self._used:
            raise RuntimeError("an array source is read once")
        self._used = True
        for n, batch in _columnar.slice_batches(
            self._cols, self._arr, self.total, self._batch_rows
        ):
            self.rows += n
            yield batch


def _check_batch(out: Any, stage: str) -> int:
    """Rows of a batch a stage function returned; TypeError if it is not one."""
    import numpy as np

    if isinstance(out, np.ndarray) and out.ndim >= 1:
        return int(out.shape[0])
    if (
        isinstance(out, Mapping)
        and out
        and all(isinstance(c, np.ndarray) and c.ndim >= 1 for c in out.values())
    ):
        lengths = {int(c.shape[0]) for c in out.values()}
        if len(lengths) == 1:
            return lengths.pop()
    raise TypeError(
        f"{stage}: map_batches fn must return an array batch (a numpy array of at least "
        "one dimension, or a dict of numpy arrays with as many rows each), got "
        f"{type(out).__name__}"
    )


class RowCounter:
    """The row counts of one ``map_batches`` stage."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self.succeeded = 0
        self.failed = 0
        self.emitted = 0

    def wrap(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def counted(batch: Any) -> Any:
            n = _columnar.rows_of(batch)
            try:
                out = fn(batch)
                m = _check_batch(out, self.name)
            except BaseException:
                with self._lock:
                    self.failed += n
                raise
            with self._lock:
                self.succeeded += n
                self.emitted += m
            return out

        return counted

    def snapshot(self) -> StageRows:
        with self._lock:
            return StageRows(
                self.name,
                received=self.succeeded + self.failed,
                succeeded=self.succeeded,
                failed=self.failed,
                emitted=self.emitted,
            )


def concat(batches: list[Any]) -> Any:
    """One table from array batches of one form (dict of arrays, or arrays), in the
    order given; None when there are none."""
    import numpy as np

    if not batches:
        return None
    first = batches[0]
    if isinstance(first, Mapping):
        names = list(first)
        for b in batches:
            if not isinstance(b, Mapping) or list(b) != names:
                raise TypeError(
                    f"cannot concatenate the results: batches of different forms (columns "
                    f"{names} and {list(b) if isinstance(b, Mapping) else type(b).__name__})"
                )
        return {name: np.concatenate([b[name] for b in batches]) for name in names}
    return np.concatenate(batches)
