"""The worker-process side of the process backend (``shardflow.backends.process``).

One worker process serves one shard. It reads batches from its task ring, calls the
handler, and writes what happened to its result ring. Protocol (records pickled with
protocol 5 by ``ShmRing.put_pickled``; every record carries the batch's sequence number):

parent -> worker (task ring)
    ``(seq, items)``      run this batch (``items`` is a list);
    ``(seq, data, n)``    the same with a ``serializer=``: ``data`` is ``dumps(items)``
                          (the whole list encoded at once), ``n`` its length, checked
                          after ``loads``;
    ``None``              no more batches: exit.
worker -> parent (result ring)
    ``(0, READY, None)``           the handler is loaded, batches may come; or
    ``(0, READY, exc)``            loading the handler failed (the worker then exits);
    ``(seq, FAILED, index, exc)``  item ``index`` of batch ``seq`` raised ``exc`` (index
                                   -1: a batch handler raised for the whole batch). Sent as
                                   it happens, so a failure reported before a crash is
                                   never lost or counted as processed;
    ``(seq, DONE, n, values)``     batch ``seq`` is finished (``n`` items ran); ``values``
                                   is None unless the parent wants return values: then
                                   the list of ``handler(item)`` results (None for items
                                   that failed) or what the list handler returned. A value
                                   that does not pickle fails its item (a FAILED record,
                                   None in its place); a list handler's, the batch.
                                   With a ``serializer=``, ``values`` is ``dumps(values)``
                                   (None stays None) and "pickle" above reads "encode".
shared progress words (two int64, one pair per worker): ``[index, seq]``
    ``seq`` is the batch the worker took last (written after ``index`` was set to -1, once
    the batch is unpickled, before a serializer's ``loads`` decodes its items: a batch
    that cannot be decoded, or whose decoding kills the worker, blames no item);
    ``index`` is -1 until its first item starts, then the index
    of the item being handled (written before each call), then -2 once every item ran
    (before DONE is sent). After a crash the parent reads the pair for the batch in flight
    at the head of its window: another ``seq`` or index -1: nothing of it started (it runs
    again, nobody is blamed); index i: the items before i ran, i is the suspect, those
    after it never started; -2: every item ran and only the DONE record was lost.

The worker ignores SIGINT (Ctrl-C is the parent's to handle: it stops feeding batches and
the worker exits when told, or when the parent dies: its task ring watches the read end
of a pipe whose only write end the parent holds).
"""

from __future__ import annotations

import pickle
import signal
import traceback
from collections.abc import Callable
from typing import Any

from shardflow._procloop import run_items
from shardflow._shmring import PeerDead, RingClosed, ShmRing

FAILED = 1
DONE = 2
READY = 3

#: A DONE record wakes the parent's collector only when fewer than this many batches (of
#: the finished one's size) are queued behind it in the task ring.
QUIET_AHEAD = 2


class RemoteError(Exception):
    """An exception a handler raised in a worker process that could not be pickled back:
    its type name, message and traceback, as text."""


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it pickles (and unpickles), else a ``RemoteError`` describing it."""
    try:
        pickle.loads(pickle.dumps(exc, 5))
        return exc
    except Exception as why:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return RemoteError(
            f"{type(exc).__qualname__}: {exc} (could not be sent back from the worker "
            f"process: {type(why).__name__}: {why})\nremote traceback:\n{text}"
        )


def main(
    tasks: ShmRing,
    results: ShmRing,
    handler_pickle: bytes,
    per_item: bool,
    collect: bool,
    progress: Any,
    death: Any,
    serializer_pickle: bytes = b"",
) -> None:
    """Worker process entry point (``multiprocessing.Process`` target).
    ``serializer_pickle``: the pickled ``(dumps, loads)`` pair of a ``serializer=``, or
    empty for plain pickle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tasks.watch(death.fileno())
    results.watch(death.fileno())
    put = results.put_pickled
    try:
        handler = pickle.loads(handler_pickle)
        dumps, loads = pickle.loads(serializer_pickle) if serializer_pickle else (None, None)
    except BaseException as exc:
        put((0, READY, _portable(exc)))
        return
    put((0, READY, None))
    mark = memoryview(progress).cast("B").cast("q")
    while True:
        try:
            msg = tasks.get()
        except (PeerDead, RingClosed):
            return  # the parent is gone (or closed the ring): nothing left to do
        if msg is None:
            return
        seq = msg[0]
        mark[0] = -1  # first: a crash from here on blames no item of the previous batch
        mark[1] = seq
        if loads is None:
            items = msg[1]
        else:
            try:
                items = _decode(loads, msg[1], msg[2])
            except BaseException as exc:
                # Nothing ran: the batch fails as a whole (the parent fails each item).
                put((seq, FAILED, -1, _portable(exc)))
                mark[0] = -2
                put((seq, DONE, 0, None))
                continue
        values: Any = None
        if per_item:
            # Compiled loop: the progress word before each item; each failure reported
            # (routed by the parent, like a thread worker's) before the next item runs.
            values = [] if collect else None
            run_items(handler, items, mark, _reporter(put, seq), values)
        else:
            mark[0] = 0
            try:
                values = handler(items)
            except BaseException as exc:
                put((seq, FAILED, -1, _portable(exc)))
                values = None
            if not collect:
                values = None
        mark[0] = -2  # every item ran: a crash now loses only the DONE record
        # Wake the parent's collector (if it sleeps) unless at least QUIET_AHEAD batches
        # of this one's size are still queued: it then settles this one with a later
        # DONE, one wake-up for several batches, while the window still has work queued
        # for this worker. The DONE before the queue runs low always wakes (liveness;
        # tools/model/shmpark.pml checks it with -DQUIET).
        wake = len(tasks) < QUIET_AHEAD * (tasks.last_len + 16)
        _finish(put, seq, len(items), values, per_item, wake, dumps)


def _decode(loads: Callable[[Any], Any], data: Any, n: int) -> list[Any]:
    """A batch's items from a serializer's encoding of the list; a decoding that does not
    give back ``n`` items is refused (an item would be charged to the wrong index)."""
    try:
        items = loads(data)
    except Exception as exc:
        raise RuntimeError(
            f"serializer=: the worker process could not decode a batch of {n} item(s) with "
            f"{_name(loads)} ({type(exc).__name__}: {exc})"
        ) from exc
    if type(items) is not list:
        try:
            items = list(items)
        except TypeError:
            items = None
    if items is None or len(items) != n:
        raise RuntimeError(
            f"serializer=: {_name(loads)} decoded a batch of {n} item(s) into "
            f"{type(items).__qualname__ if items is None else len(items)} item(s); the pair "
            "must round-trip a list"
        )
    decoded: list[Any] = items
    return decoded


def _name(fn: Any) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}" if module else name


def _reporter(put: Any, seq: int) -> Callable[[int, BaseException], None]:
    """``on_error`` for ``run_items``: a FAILED record of batch ``seq``, sent at once."""

    def report(index: int, exc: BaseException) -> None:
        put((seq, FAILED, index, _portable(exc)))

    return report


def _finish(
    put: Any,
    seq: int,
    n: int,
    values: Any,
    per_item: bool,
    wake: bool = True,
    dumps: Callable[[Any], Any] | None = None,
) -> None:
    """Send batch ``seq``'s DONE record (without waking the reader unless ``wake``);
    values that cannot be sent (pickled, or encoded by the serializer's ``dumps``) fail
    their item (or, for a list handler, the batch) instead of the record."""
    why: Exception
    try:
        put((seq, DONE, n, _encode(dumps, values)), wake=wake)
        return
    except (PeerDead, RingClosed):
        raise
    except Exception as exc:
        why = exc
    if per_item and values is not None:
        for i, value in enumerate(values):
            try:
                if dumps is None:
                    pickle.dumps(value, 5)
                else:
                    pickle.dumps(dumps([value]), 5)
            except Exception as exc:
                put((seq, FAILED, i, _unsendable(value, exc, dumps)))
                values[i] = None
        try:
            put((seq, DONE, n, _encode(dumps, values)))
            return
        except (PeerDead, RingClosed):
            raise
        except Exception as exc:  # e.g. every value pickles but together they are too big
            why = exc
        put((seq, FAILED, -1, _unsendable(values, why, dumps)))
    elif values is not None:
        put((seq, FAILED, -1, _unsendable(values, why, dumps)))
    put((seq, DONE, n, None))


def _encode(dumps: Callable[[Any], Any] | None, values: Any) -> Any:
    return values if dumps is None or values is None else dumps(values)


def _unsendable(value: Any, why: Exception, dumps: Callable[[Any], Any] | None = None) -> TypeError:
    how = "" if dumps is None else f" with serializer {_name(dumps)}"
    return TypeError(
        f"backend='process' could not send back a result of type {type(value).__qualname__}"
        f"{how} ({type(why).__name__}: {why})"
    )
