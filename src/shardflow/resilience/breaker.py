"""``CircuitBreaker``: stop calling a failing dependency, probe it, and recover.

The state machine lives in the compiled core (``shardflow._breaker``, C in ``_breaker.h``):
the closed-state admission check and the outcome record are lock-free atomics, and every
transition is one CAS on the state word, so it happens (and notifies listeners) exactly
once however many threads race. This module adds validation, the decorator / context
manager / asyncio forms, listeners and metrics.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, TypeVar

from shardflow._breaker import (
    STATE_CLOSED,
    STATE_DISABLED,
    STATE_FORCED_OPEN,
    STATE_HALF_OPEN,
    STATE_OPEN,
    WINDOW_COUNT,
    WINDOW_NONE,
    WINDOW_TIME,
    BreakerCore,
)
from shardflow._validate import check_callable, check_int, check_seconds, seconds_to_ns

__all__ = ["BreakerMetrics", "BreakerState", "CircuitBreaker"]

T = TypeVar("T")
_log = logging.getLogger("shardflow")


class BreakerState(str, Enum):
    """States of a ``CircuitBreaker`` (a ``str`` enum: ``BreakerState.OPEN == "open"``)."""

    CLOSED = "closed"  #: calls go through; outcomes are counted
    OPEN = "open"  #: calls are refused until ``reset_timeout`` has passed
    HALF_OPEN = "half_open"  #: up to ``half_open_max_calls`` trial calls at once
    FORCED_OPEN = "forced_open"  #: refused until ``reset()``/``disable()`` (set by hand)
    DISABLED = "disabled"  #: every call goes through, nothing trips (set by hand)


_STATES = {
    STATE_CLOSED: BreakerState.CLOSED,
    STATE_OPEN: BreakerState.OPEN,
    STATE_HALF_OPEN: BreakerState.HALF_OPEN,
    STATE_FORCED_OPEN: BreakerState.FORCED_OPEN,
    STATE_DISABLED: BreakerState.DISABLED,
}


@dataclass(frozen=True)
class BreakerMetrics:
    """A snapshot of a breaker's counters (each exact and monotonic; not an atomic cut).

    ``calls``/``failures``/``slow_calls`` count recorded outcomes since creation (excluded
    exceptions are not recorded); ``rejections`` counts refused calls. ``failure_rate`` and
    ``slow_call_rate`` are over the sliding window when one is configured, else over all
    calls; ``window_calls`` is how many calls the window holds (0 without a window).
    """

    state: BreakerState
    calls: int
    failures: int
    slow_calls: int
    rejections: int
    consecutive_failures: int
    window_calls: int
    failure_rate: float
    slow_call_rate: float


# Innermost active ``with breaker:`` block of this context: (breaker, token, start, outer).
# A context variable, not a thread-local: asyncio tasks interleave in one thread.
_active: contextvars.ContextVar[tuple[Any, int, int, Any] | None] = contextvars.ContextVar(
    "shardflow_breaker_active", default=None
)


def _split_exclude(
    exclude: Any,
) -> tuple[tuple[type[BaseException], ...], Callable[[BaseException], bool] | None]:
    accepted = "an exception type, a predicate callable(exc) -> bool, or an iterable of those"
    if exclude is None:
        return (), None
    items = [exclude] if (isinstance(exclude, type) or callable(exclude)) else exclude
    try:
        items = list(items)
    except TypeError:
        raise TypeError(f"exclude must be {accepted}, got {exclude!r}") from None
    types: list[type[BaseException]] = []
    preds: list[Callable[[BaseException], bool]] = []
    for item in items:
        if isinstance(item, type):
            if not issubclass(item, BaseException):
                raise TypeError(f"exclude must be {accepted}, got the class {item!r}")
            types.append(item)
        elif callable(item):
            preds.append(item)
        else:
            raise TypeError(f"exclude must be {accepted}, got {item!r} in {exclude!r}")
    if not preds:
        return tuple(types), None
    if len(preds) == 1:
        return tuple(types), preds[0]
    return tuple(types), functools.partial(_any_of, tuple(preds))


def _any_of(preds: tuple[Callable[[BaseException], bool], ...], exc: BaseException) -> bool:
    return any(p(exc) for p in preds)


def _ns(seconds: float) -> int:
    """Seconds to ns, saturated at ~146 years so that the C side never overflows."""
    return seconds_to_ns(seconds)


def _check_rate(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be None or a fraction in (0, 1], got {value!r} ({type(value).__name__})"
        )
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be None or a fraction in (0, 1], got {value!r}")


class CircuitBreaker(BreakerCore):
    """Refuse calls to a dependency that keeps failing, then probe it and recover.

    States: **closed** (calls go through, outcomes are counted) → **open** when a trip
    policy fires (calls raise ``shardflow.CircuitOpen`` without running) → **half_open**
    once ``reset_timeout`` has passed (at most ``half_open_max_calls`` trial calls run at
    once; ``success_threshold`` successes close it, one failure reopens it). By hand:
    ``force_open()`` (refuse until reset), ``disable()`` (let everything through, never
    trip), ``reset()`` (closed, statistics cleared), ``trip()`` (open now).

    Trip policies (any that is configured can open the breaker):
      * ``max_failures``: that many consecutive failures (a success resets the count);
      * ``failure_rate``: the failure fraction over a sliding window reaches it, once the
        window holds ``minimum_calls`` calls. The window is the last ``window`` calls
        (``window_type="count"``) or the last ``window`` seconds (``"time"``, kept in
        ``window_buckets`` buckets, so the oldest bucket's worth drops out at once);
      * ``slow_call_rate``: the fraction of calls taking ``>= slow_call_duration`` seconds
        over the same window reaches it. In half-open state a slow trial counts as a
        failure when this policy is on.

    A failure is an ``Exception`` raised by the call, unless ``exclude`` says it does not
    count (exception types, or a predicate ``exc -> bool`` returning True to exclude).
    ``BaseException``s that are not ``Exception`` (``KeyboardInterrupt``,
    ``asyncio.CancelledError``) never count. Excluded errors are re-raised untouched and
    release a half-open trial permit without counting.

    Concurrency: the closed-state check and record are lock-free (atomics; no clock read
    unless the slow-call policy or a time window needs it); each transition is one CAS on
    the state word, so it happens once and ``listeners`` hear of it once, in the thread
    that made it, as ``listener(breaker, old_state, new_state)`` (exceptions from a
    listener are logged and swallowed). Window statistics are approximate while several
    threads race a window rotation or a reset; state transitions are never.

    Args:
        max_failures: consecutive failures that open the breaker; None disables the policy.
        reset_timeout: seconds in open state before a trial call is let through.
        failure_rate: fraction in (0, 1] over the window that opens it; None: off.
        slow_call_duration: seconds from which a call is slow (None: no slow-call policy).
        slow_call_rate: fraction in (0, 1] of slow calls over the window that opens it.
        window_type: ``"count"`` or ``"time"`` (needed by the two rate policies).
        window: calls (count) or seconds (time) in the sliding window.
        window_buckets: buckets of a time window.
        minimum_calls: calls the window must hold before a rate can open the breaker.
        half_open_max_calls: trial calls allowed at once in half-open state (a trial
            still running from an earlier half-open period keeps its slot until it ends).
        success_threshold: trial successes that close the breaker.
        exclude: errors that must not count (see above).
        listeners: callables ``(breaker, old, new)`` called on each state change.
        clock: callable returning seconds (monotonic); default: the C monotonic clock.
        name: shown in ``repr``.

    Example:
        >>> import shardflow
        >>> breaker = shardflow.CircuitBreaker(max_failures=2, reset_timeout=10)
        >>> @breaker
        ... def fetch(x):
        ...     if x < 0:
        ...         raise ValueError(x)
        ...     return x * 2
        >>> fetch(21)
        42
        >>> for _ in range(2):
        ...     try:
        ...         fetch(-1)
        ...     except ValueError:
        ...         pass
        >>> breaker.state
        <BreakerState.OPEN: 'open'>
        >>> try:
        ...     fetch(1)
        ... except shardflow.CircuitOpen as exc:
        ...     0 < exc.remaining <= 10
        True
    """

    def __init__(
        self,
        max_failures: int | None = 5,
        reset_timeout: float = 30.0,
        *,
        failure_rate: float | None = None,
        slow_call_duration: float | None = None,
        slow_call_rate: float | None = None,
        window_type: str = "count",
        window: float = 100,
        window_buckets: int = 10,
        minimum_calls: int = 10,
        half_open_max_calls: int = 1,
        success_threshold: int = 1,
        exclude: Any = None,
        listeners: Iterable[Callable[[CircuitBreaker, BreakerState, BreakerState], object]] = (),
        clock: Callable[[], float] | None = None,
        name: str | None = None,
    ) -> None:
        if max_failures is not None:
            check_int("max_failures", max_failures, lo=1, hi=1 << 62)
        check_seconds("reset_timeout", reset_timeout, optional=False)
        _check_rate("failure_rate", failure_rate)
        check_seconds("slow_call_duration", slow_call_duration, positive=True)
        _check_rate("slow_call_rate", slow_call_rate)
        if (slow_call_duration is None) != (slow_call_rate is None):
            raise ValueError(
                "slow_call_duration and slow_call_rate go together: give both or neither, "
                f"got slow_call_duration={slow_call_duration!r}, slow_call_rate={slow_call_rate!r}"
            )
        if window_type not in ("count", "time"):
            raise ValueError(f"window_type must be one of 'count', 'time', got {window_type!r}")
        if window_type == "count":
            check_int("window", window, lo=1, hi=1 << 24)
        else:
            check_seconds("window", window, optional=False, positive=True)
        check_int("window_buckets", window_buckets, lo=1, hi=1 << 16)
        check_int("minimum_calls", minimum_calls, lo=1, hi=1 << 62)
        check_int("half_open_max_calls", half_open_max_calls, lo=1, hi=0xFFFF)
        check_int("success_threshold", success_threshold, lo=1, hi=0xFFFF)
        check_callable("clock", clock, optional=True)
        if max_failures is None and failure_rate is None and slow_call_rate is None:
            raise ValueError(
                "a breaker needs a trip policy: set max_failures, failure_rate or "
                "slow_call_rate (all three are None)"
            )
        exclude_types, exclude_pred = _split_exclude(exclude)
        if isinstance(listeners, (str, bytes)) or callable(listeners):
            raise TypeError(f"listeners must be an iterable of callables, got {listeners!r}")
        listeners = tuple(listeners)
        for i, listener in enumerate(listeners):
            check_callable(f"listeners[{i}]", listener)

        uses_window = failure_rate is not None or slow_call_rate is not None
        if not uses_window:
            win_kind, win_size, width_ns = WINDOW_NONE, 0, 1
        elif window_type == "count":
            win_kind, win_size, width_ns = WINDOW_COUNT, int(window), 1
        else:
            win_kind, win_size = WINDOW_TIME, window_buckets
            width_ns = max(1, _ns(window) // window_buckets)

        self.name = name
        self._listeners = listeners
        self._listeners_lock = threading.Lock()
        self._config = dict(
            max_failures=max_failures,
            reset_timeout=reset_timeout,
            failure_rate=failure_rate,
            slow_call_duration=slow_call_duration,
            slow_call_rate=slow_call_rate,
            window_type=window_type,
            window=window,
            minimum_calls=minimum_calls,
            half_open_max_calls=half_open_max_calls,
            success_threshold=success_threshold,
        )
        self._core_init(
            clock,
            exclude_types,
            exclude_pred,
            max_failures or 0,
            failure_rate or 0.0,
            slow_call_rate or 0.0,
            -1 if slow_call_duration is None else _ns(slow_call_duration),
            minimum_calls,
            win_kind,
            win_size,
            width_ns,
            _ns(reset_timeout),
            half_open_max_calls,
            success_threshold,
        )

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> BreakerState:
        """The current state (a snapshot: another thread may change it right after)."""
        return _STATES[self._state_code]

    def _on_transition(self, old: int, new: int) -> None:
        o, n = _STATES[old], _STATES[new]
        for listener in self._listeners:
            try:
                listener(self, o, n)
            except Exception:
                _log.exception("shardflow breaker listener %r failed", listener)

    def add_listener(
        self, listener: Callable[[CircuitBreaker, BreakerState, BreakerState], object]
    ) -> None:
        """Call ``listener(breaker, old, new)`` on every later state change."""
        check_callable("listener", listener)
        with self._listeners_lock:
            self._listeners = (*self._listeners, listener)

    def reset(self) -> None:
        """Close the breaker by hand and clear its statistics."""
        self._force(STATE_CLOSED)

    def trip(self) -> None:
        """Open the breaker by hand; it half-opens after ``reset_timeout`` as usual."""
        self._force(STATE_OPEN)

    def force_open(self) -> None:
        """Refuse every call until ``reset()`` or ``disable()``."""
        self._force(STATE_FORCED_OPEN)

    def disable(self) -> None:
        """Let every call through and never trip, until ``reset()`` or ``force_open()``."""
        self._force(STATE_DISABLED)

    def metrics(self) -> BreakerMetrics:
        """A snapshot of the counters and rates (see ``BreakerMetrics``)."""
        calls, fails, slow, rejections, consecutive, wc, wf, ws = self._counters()
        if self._config["failure_rate"] is None and self._config["slow_call_rate"] is None:
            base, f, s, wc = calls, fails, slow, 0
        else:
            base, f, s = wc, wf, ws
        return BreakerMetrics(
            state=self.state,
            calls=calls,
            failures=fails,
            slow_calls=slow,
            rejections=rejections,
            consecutive_failures=consecutive,
            window_calls=wc,
            failure_rate=f / base if base else 0.0,
            slow_call_rate=s / base if base else 0.0,
        )

    # ------------------------------------------------------------------ call forms

    async def acall(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker (raises ``CircuitOpen``).

        Cancellation (``asyncio.CancelledError``) does not count as a failure.
        """
        token, start = self._begin()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._finish(token, start, exc)
            raise
        self._finish(token, start)
        return result

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate ``fn`` (a function or a coroutine function) so each call goes through."""
        check_callable("fn", fn)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.acall(fn, *args, **kwargs)

            return async_wrapper
        call = self.call

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return call(fn, *args, **kwargs)

        return wrapper

    def __enter__(self) -> CircuitBreaker:
        token, start = self._begin()
        _active.set((self, token, start, _active.get()))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        top = _active.get()
        if top is None or top[0] is not self:
            raise RuntimeError("breaker context exited out of order (not the innermost `with`)")
        _active.set(top[3])
        self._finish(top[1], top[2], exc)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<CircuitBreaker{label} state={self.state.value}>"
