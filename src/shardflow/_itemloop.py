"""The per-item loop a worker runs as Python bytecode (used by ``shardflow._worker``).

Why this is Python and not part of the compiled loop: since CPython 3.11 a call from
bytecode to a Python function is inlined in the interpreter loop (a frame pushed on the
thread's frame stack), while a call from C (``PyObject_CallOneArg``) enters the
interpreter afresh for every item. For a no-op handler the call from C costs ~440-540
instructions (3.11-3.13, callgrind), more than the rest of the pool's per-item path. So
when the handler is a Python function, the worker hands a whole drained run of items to
ONE call of ``run_items``; the iterator (``shardflow._worker._ItemRun``, compiled) does
the per-item bookkeeping (counters, sampled service time, the hand-back check of
``shutdown(cancel=True)``) in C between calls, and ``fail`` routes each failure alone,
exactly as the compiled loop does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def run_items(handler: Callable[[Any], object], items: Any) -> None:
    """Call ``handler(x)`` for each ``x`` of ``items``; a handler exception (any
    ``BaseException``: ``KeyboardInterrupt`` and ``SystemExit`` are routed too, the worker
    goes on) is passed to ``items.fail``, which routes it for the item in progress."""
    fail = items.fail
    for x in items:
        try:
            handler(x)
        except BaseException as exc:
            fail(exc)
    # A routed exception's traceback holds this frame, which keeps its locals once the
    # call returns: drop them so that a kept exception does not keep the pool alive.
    handler = items = fail = x = None  # type: ignore[assignment]
