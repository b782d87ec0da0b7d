"""Fuzz the argument handling of the public API (GUIDE.md §2.7: bad input is refused early
with ``TypeError``/``ValueError``).

Every parameter of ``ShardedPool``, ``BatchProcessor``, ``CircuitBreaker``, ``Limiter``,
``RateLimiter`` and ``Retry``, and the timeouts/arguments of ``submit``, ``submit_many``,
``join``, ``flush``, ``Limiter.acquire`` and ``RateLimiter.acquire``, gets arbitrary values
(ints of any size and sign, floats including nan/inf/-0.0/subnormals, bools, strings,
None, lists, bytes, plain objects, Decimal/Fraction). Each call must either succeed or
raise ``TypeError``/``ValueError`` (or the documented exception), never anything else
(``OverflowError`` is neither: it is an ``ArithmeticError``), never crash or hang.

Where the documented domain of a parameter is clear, an oracle also checks the other two
ways validation can be wrong: a value outside the domain that is accepted silently, and a
value inside it that is refused.

Two layers: a deterministic sweep of nasty values per parameter (a failure lists every
offending value at once), and hypothesis with ``derandomize=True`` (reproducible) for the
rest. Calls that could block with a valid value are made so that they cannot: idle pools,
a fake ``sleep`` for the rate limiter, a timer that frees the limiter's permit.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import WAIT
from shardflow import (
    BatchProcessor,
    CircuitBreaker,
    Closed,
    Full,
    Limiter,
    RateLimiter,
    Retry,
    ShardedPool,
)

ALLOWED = (TypeError, ValueError)

# Ints are kept away from (4096, 2**30]: a valid ``capacity`` there would really allocate
# rings of that many slots, a valid ``workers`` that many threads.
NASTY: list[Any] = [
    0, 1, 2, -1, -2**31, 2**31, 2**63 - 1, 2**63, 2**64, -(2**64), 10**400, -(10**400),
    0.0, -0.0, 0.5, 1.5, -0.5, 1e-320, 5e-324, 1e10, 1e300, -1e300, 1.7976931348623157e308,
    math.nan, -math.nan, math.inf, -math.inf,
    True, False, None, "", "1", "block", [], [1], (), {}, b"1", object(), 1j,
    Decimal("1"), Decimal("NaN"), Fraction(1, 3),
]  # fmt: skip

anything = st.one_of(
    st.sampled_from(NASTY),
    st.integers(min_value=-(2**70), max_value=4096),
    st.integers(min_value=2**31, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=4),
    st.none(),
    st.lists(st.integers(-3, 3), max_size=3),
)

FUZZ = settings(
    max_examples=100,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def noop(*args: Any) -> None:
    return None


# --------------------------------------------------------------------------- the oracle


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def int_in(lo: int, hi: int | None = None) -> Callable[[Any], bool | None]:
    return lambda v: is_int(v) and v >= lo and (hi is None or v <= hi)


def beyond_float(v: Any) -> bool:
    try:
        float(v)
    except OverflowError:
        return True
    return False


def seconds(optional: bool = True, positive: bool = False, inf: bool | None = None):
    """A number of seconds (>= 0 or > 0), None if optional. ``inf`` True/False: infinity
    accepted/refused; None: either is acceptable."""

    def valid(v: Any) -> bool | None:
        if v is None:
            return optional
        # v != v: nan; no math.isnan, which raises OverflowError for ints beyond floats.
        if not is_number(v) or v != v or v < 0 or (positive and v == 0):
            return False
        if v == math.inf or beyond_float(v):
            return inf  # shardflow's rule: an int too large for a float counts as inf
        return True

    return valid


def boolean(optional: bool = False) -> Callable[[Any], bool | None]:
    return lambda v: isinstance(v, bool) or (optional and v is None)


def a_callable(optional: bool = False) -> Callable[[Any], bool | None]:
    return lambda v: callable(v) or (optional and v is None)


def choice(*choices: str) -> Callable[[Any], bool | None]:
    return lambda v: isinstance(v, str) and v in choices


def fraction(optional: bool = True, zero: bool = False) -> Callable[[Any], bool | None]:
    def valid(v: Any) -> bool | None:
        if v is None:
            return optional
        if not is_number(v) or v != v:
            return False
        return (v >= 0 if zero else v > 0) and v <= 1

    return valid


def optional_str(v: Any) -> bool | None:
    return v is None or isinstance(v, str)


def instance_of(cls: type) -> Callable[[Any], bool | None]:
    return lambda v: v is None or isinstance(v, cls)


def unknown(v: Any) -> bool | None:
    return None


class _Short:
    """Formats as a short repr in messages (10**400 has 401 digits)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return short(self.value)


def outcome(call: Callable[[], Any]) -> BaseException | None:
    try:
        call()
    except BaseException as exc:
        return exc
    return None


def short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 40 else f"{r[:12]}...({len(r)} chars)"


def judge(
    label: str,
    value: Any,
    exc: BaseException | None,
    valid: bool | None,
    documented: tuple[type[BaseException], ...] = (),
) -> str | None:
    """A description of what is wrong, or None if the outcome is acceptable."""
    value = _Short(value)
    if exc is not None and not isinstance(exc, ALLOWED + documented):
        return f"{label}={value!r}: raised {type(exc).__name__}: {short(str(exc))}"
    if exc is None and valid is False:
        return f"{label}={value!r}: accepted, but it is outside the documented domain"
    if exc is not None and isinstance(exc, ALLOWED) and valid is True:
        return (
            f"{label}={value!r}: refused ({type(exc).__name__}: {short(str(exc))}) but it is valid"
        )
    return None


# --------------------------------------------------------------------------- constructors


def make_pool(**kwargs: Any) -> None:
    kwargs.setdefault("workers", 1)
    pool = ShardedPool(kwargs.pop("handler", noop), **kwargs)
    pool.shutdown()


def make_bp(**kwargs: Any) -> None:
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("batch_timeout", 0.5)
    bp = BatchProcessor(kwargs.pop("handler", noop), **kwargs)
    bp.shutdown()


def make_breaker(**kwargs: Any) -> None:
    CircuitBreaker(**kwargs)


def make_limiter(**kwargs: Any) -> None:
    kwargs.setdefault("concurrency", 2)
    Limiter(kwargs.pop("concurrency"), **kwargs)


def make_rate_limiter(**kwargs: Any) -> None:
    kwargs.setdefault("rate", 10.0)
    kwargs.setdefault("burst", 5)
    RateLimiter(kwargs.pop("rate"), **kwargs)


def make_retry(**kwargs: Any) -> None:
    Retry(**kwargs)


def rate_valid(v: Any) -> bool | None:
    if not is_number(v) or v != v:
        return False
    if v < 1e-8:  # valid alone, but burst * (1/rate) may be refused as a 36-year span
        return None if v > 0 else False
    return v <= 1e9


def dead_letter_valid(v: Any) -> bool | None:
    return v is None or callable(v) or callable(getattr(v, "put_nowait", None))


# (constructor, parameter, oracle, extra kwargs making the parameter meaningful)
CONSTRUCTOR_PARAMS: list[tuple[str, Callable[..., None], str, Any, dict[str, Any]]] = [
    ("ShardedPool", make_pool, "handler", a_callable(), {}),
    ("ShardedPool", make_pool, "workers", lambda v: v is None or int_in(1, 4096)(v), {}),
    ("ShardedPool", make_pool, "key", a_callable(optional=True), {}),
    ("ShardedPool", make_pool, "capacity", lambda v: v is None or int_in(1, 2**30)(v), {}),
    ("ShardedPool", make_pool, "batch_size", int_in(1, 2**20), {}),
    ("ShardedPool", make_pool, "batch_timeout", seconds(inf=False), {}),
    ("ShardedPool", make_pool, "on_full", choice("block", "raise", "drop"), {}),
    ("ShardedPool", make_pool, "on_error", a_callable(optional=True), {}),
    ("ShardedPool", make_pool, "name", optional_str, {}),
    ("ShardedPool", make_pool, "ordered", boolean(), {}),
    ("ShardedPool", make_pool, "steal", boolean(optional=True), {}),
    ("ShardedPool", make_pool, "reuse_batches", boolean(), {}),
    ("ShardedPool", make_pool, "lists", boolean(), {}),
    ("ShardedPool", make_pool, "breaker", instance_of(CircuitBreaker), {}),
    ("ShardedPool", make_pool, "limiter", instance_of(Limiter), {}),
    ("ShardedPool", make_pool, "rate_limiter", instance_of(RateLimiter), {}),
    ("ShardedPool", make_pool, "retry", instance_of(Retry), {}),
    ("ShardedPool", make_pool, "dead_letter", dead_letter_valid, {}),
    ("BatchProcessor", make_bp, "handler", a_callable(), {}),
    ("BatchProcessor", make_bp, "batch_size", int_in(1, 2**20), {}),
    ("BatchProcessor", make_bp, "batch_timeout", seconds(optional=False, positive=True, inf=False), {}),  # noqa: E501 (one row per parameter reads as a table)
    ("BatchProcessor", make_bp, "capacity", lambda v: v is None or int_in(1, 2**30)(v), {}),
    ("BatchProcessor", make_bp, "on_full", choice("block", "raise", "drop"), {}),
    ("BatchProcessor", make_bp, "on_error", a_callable(optional=True), {}),
    ("BatchProcessor", make_bp, "reuse_batches", boolean(), {}),
    ("BatchProcessor", make_bp, "name", optional_str, {}),
    ("CircuitBreaker", make_breaker, "max_failures", lambda v: v is None or int_in(1, 1 << 62)(v), {"failure_rate": 0.5}),  # noqa: E501 (one row per parameter reads as a table)
    ("CircuitBreaker", make_breaker, "reset_timeout", seconds(optional=False), {}),
    ("CircuitBreaker", make_breaker, "failure_rate", fraction(), {}),
    ("CircuitBreaker", make_breaker, "slow_call_duration", lambda v: None if v is None else seconds(optional=False, positive=True)(v), {"slow_call_rate": 0.5}),  # noqa: E501 (one row per parameter reads as a table)
    ("CircuitBreaker", make_breaker, "slow_call_rate", lambda v: None if v is None else fraction(optional=False)(v), {"slow_call_duration": 1.0}),  # noqa: E501 (one row per parameter reads as a table)
    ("CircuitBreaker", make_breaker, "window_type", choice("count", "time"), {"failure_rate": 0.5}),
    ("CircuitBreaker", make_breaker, "window", int_in(1, 2**24), {"failure_rate": 0.5}),
    ("CircuitBreaker", make_breaker, "window", seconds(optional=False, positive=True), {"failure_rate": 0.5, "window_type": "time"}),  # noqa: E501 (one row per parameter reads as a table)
    ("CircuitBreaker", make_breaker, "window_buckets", int_in(1, 2**16), {"failure_rate": 0.5, "window_type": "time"}),  # noqa: E501 (one row per parameter reads as a table)
    ("CircuitBreaker", make_breaker, "minimum_calls", int_in(1, 1 << 62), {"failure_rate": 0.5}),
    ("CircuitBreaker", make_breaker, "half_open_max_calls", int_in(1, 0xFFFF), {}),
    ("CircuitBreaker", make_breaker, "success_threshold", int_in(1, 0xFFFF), {}),
    ("CircuitBreaker", make_breaker, "exclude", unknown, {}),
    ("CircuitBreaker", make_breaker, "listeners", unknown, {}),
    ("CircuitBreaker", make_breaker, "clock", a_callable(optional=True), {}),
    ("CircuitBreaker", make_breaker, "name", unknown, {}),
    ("Limiter", make_limiter, "concurrency", int_in(1, 2**62), {}),
    ("Limiter", make_limiter, "fair", boolean(), {}),
    ("RateLimiter", make_rate_limiter, "rate", rate_valid, {"burst": 1}),
    ("RateLimiter", make_rate_limiter, "burst", lambda v: None if is_int(v) and v > 10**9 else int_in(1)(v), {}),  # noqa: E501 (one row per parameter reads as a table)
    ("RateLimiter", make_rate_limiter, "clock", a_callable(optional=True), {}),
    ("RateLimiter", make_rate_limiter, "sleep", a_callable(optional=True), {}),
    ("Retry", make_retry, "attempts", int_in(1, 1_000_000), {}),
    ("Retry", make_retry, "backoff", choice("exponential", "constant", "linear"), {}),
    ("Retry", make_retry, "base", seconds(optional=False, inf=None), {}),
    ("Retry", make_retry, "max_delay", seconds(optional=False, inf=None), {}),
    ("Retry", make_retry, "jitter", boolean(), {}),
    ("Retry", make_retry, "deadline", seconds(positive=True, inf=None), {}),
    ("Retry", make_retry, "retry_on", unknown, {}),
    ("Retry", make_retry, "budget", fraction(zero=True), {}),
    ("Retry", make_retry, "budget_window", seconds(optional=False, positive=True, inf=None), {}),
    ("Retry", make_retry, "budget_min_retries", int_in(0), {}),
    ("Retry", make_retry, "clock", a_callable(optional=True), {}),
    ("Retry", make_retry, "sleep", a_callable(optional=True), {}),
    ("Retry", make_retry, "async_sleep", a_callable(optional=True), {}),
    ("Retry", make_retry, "random", a_callable(optional=True), {}),
]  # fmt: skip

CONSTRUCTOR_IDS = [
    f"{cls}.{param}"
    + ("[time]" if extra.get("window_type") == "time" and param == "window" else "")
    for cls, _, param, _, extra in CONSTRUCTOR_PARAMS
]


def check_constructor(
    make: Callable[..., None], param: str, oracle: Any, extra: dict[str, Any], value: Any
) -> str | None:
    exc = outcome(lambda: make(**{**extra, param: value}))
    return judge(param, value, exc, oracle(value))


@pytest.mark.parametrize(
    ("cls", "make", "param", "oracle", "extra"), CONSTRUCTOR_PARAMS, ids=CONSTRUCTOR_IDS
)
def test_constructor_parameter_nasty_values(
    cls: str, make: Any, param: str, oracle: Any, extra: dict[str, Any]
) -> None:
    problems = [p for v in NASTY if (p := check_constructor(make, param, oracle, extra, v))]
    assert not problems, f"{cls}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("cls", sorted({c for c, *_ in CONSTRUCTOR_PARAMS}))
@FUZZ
@given(data=st.data())
def test_constructor_arbitrary_values(cls: str, data: st.DataObject) -> None:
    rows = [row for row in CONSTRUCTOR_PARAMS if row[0] == cls]
    _, make, param, oracle, extra = data.draw(st.sampled_from(rows), label="parameter")
    value = data.draw(anything, label="value")
    problem = check_constructor(make, param, oracle, extra, value)
    assert problem is None, f"{cls}: {problem}"


# --------------------------------------------------------------------------- methods

# submit/submit_many/flush: an idle pool with a large queue can never block. ``inf`` as a
# timeout is "no deadline" for submit (see _worker.pyx) but refused by join/flush: both
# are acceptable, so the oracle does not decide it.
TIMEOUT = seconds(inf=None)


@pytest.fixture(scope="module")
def idle_pool() -> Any:
    pool: ShardedPool[Any] = ShardedPool(noop, workers=2, key=hash, capacity=1 << 16)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def idle_bp() -> Any:
    bp: BatchProcessor[Any] = BatchProcessor(noop, batch_size=8, batch_timeout=0.01)
    yield bp
    bp.shutdown()


def sweep(
    label: str,
    call: Callable[[Any], Any],
    oracle: Any,
    documented: tuple[type[BaseException], ...] = (),
    values: list[Any] = NASTY,
) -> None:
    problems = [
        p
        for v in values
        if (p := judge(label, v, outcome(lambda v=v: call(v)), oracle(v), documented))
    ]
    assert not problems, "\n  ".join(problems)


def hashable(v: Any) -> bool | None:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def iterable_of_hashables(v: Any) -> bool | None:
    try:
        return all(hashable(x) for x in iter(v))
    except TypeError:
        return False


def test_submit_nasty_values(idle_pool: Any) -> None:
    sweep("submit(timeout)", lambda v: idle_pool.submit(1, timeout=v), TIMEOUT, (Full,))
    sweep("submit(item)", lambda v: idle_pool.submit(v), hashable)  # key=hash: TypeError


def test_submit_many_nasty_values(idle_pool: Any) -> None:
    sweep(
        "submit_many(timeout)", lambda v: idle_pool.submit_many([1, 2], timeout=v), TIMEOUT, (Full,)
    )
    sweep("submit_many(items)", lambda v: idle_pool.submit_many(v), iterable_of_hashables)


def test_flush_nasty_values(idle_pool: Any, idle_bp: Any) -> None:
    sweep("ShardedPool.flush(timeout)", lambda v: idle_pool.flush(v), TIMEOUT)
    sweep("BatchProcessor.flush(timeout)", lambda v: idle_bp.flush(v), TIMEOUT)


def closed_pool_join(v: Any) -> Any:
    pool: ShardedPool[Any] = ShardedPool(noop, workers=1)
    pool.close()
    try:
        return pool.join(v)
    finally:
        assert pool.join(WAIT)


def test_join_nasty_values() -> None:
    sweep("join(timeout)", closed_pool_join, TIMEOUT)


def limiter_acquire(v: Any, busy: bool) -> Any:
    """acquire(timeout=v) on a free limiter, or on a busy one whose permit a timer frees
    shortly (so that a valid long timeout cannot hang the test)."""
    lim = Limiter(1)
    timer = None
    if busy:
        lim.acquire()
        timer = threading.Timer(0.02, lim.release)
        timer.start()
    try:
        return lim.acquire(timeout=v)
    finally:
        if timer is not None:
            timer.join(WAIT)


LIMITER_TIMEOUT = seconds(inf=True)  # timeouts take inf as "no limit", as everywhere


def test_limiter_acquire_nasty_values_with_a_permit_free() -> None:
    sweep(
        "Limiter.acquire(timeout) [free]", lambda v: limiter_acquire(v, busy=False), LIMITER_TIMEOUT
    )


def test_limiter_acquire_nasty_values_while_busy() -> None:
    sweep(
        "Limiter.acquire(timeout) [busy]", lambda v: limiter_acquire(v, busy=True), LIMITER_TIMEOUT
    )


def rate_limiter_acquire(tokens: Any = 1, timeout: Any = None) -> Any:
    # A fake sleep: a valid call returns at once however far ahead its tokens are due.
    rl = RateLimiter(1.0, burst=5, sleep=noop)
    rl.try_acquire(5)  # empty the bucket: any further acquire has to wait
    return rl.acquire(tokens, timeout)


def test_rate_limiter_acquire_nasty_values() -> None:
    sweep("RateLimiter.acquire(tokens)", lambda v: rate_limiter_acquire(tokens=v), int_in(1, 5))
    sweep(
        "RateLimiter.acquire(timeout)", lambda v: rate_limiter_acquire(timeout=v), LIMITER_TIMEOUT
    )


METHODS = {
    "submit.timeout": (lambda p, b, v: p.submit(1, timeout=v), TIMEOUT, (Full,)),
    "submit.item": (lambda p, b, v: p.submit(v), hashable, ()),
    "submit_many.timeout": (lambda p, b, v: p.submit_many([1, 2], timeout=v), TIMEOUT, (Full,)),
    "submit_many.items": (lambda p, b, v: p.submit_many(v), iterable_of_hashables, ()),
    "flush.pool": (lambda p, b, v: p.flush(v), TIMEOUT, ()),
    "flush.batch_processor": (lambda p, b, v: b.flush(v), TIMEOUT, ()),
    "join": (lambda p, b, v: closed_pool_join(v), TIMEOUT, ()),
    "Limiter.acquire.free": (lambda p, b, v: limiter_acquire(v, busy=False), LIMITER_TIMEOUT, ()),
    "Limiter.acquire.busy": (lambda p, b, v: limiter_acquire(v, busy=True), LIMITER_TIMEOUT, ()),
    "RateLimiter.acquire.tokens": (
        lambda p, b, v: rate_limiter_acquire(tokens=v),
        int_in(1, 5),
        (),
    ),
    "RateLimiter.acquire.timeout": (
        lambda p, b, v: rate_limiter_acquire(timeout=v),
        LIMITER_TIMEOUT,
        (),
    ),
}


@pytest.mark.parametrize("method", sorted(METHODS))
@FUZZ
@given(value=anything)
def test_method_arbitrary_values(idle_pool: Any, idle_bp: Any, method: str, value: Any) -> None:
    call, oracle, documented = METHODS[method]
    exc = outcome(lambda: call(idle_pool, idle_bp, value))
    problem = judge(method, value, exc, oracle(value), documented)
    assert problem is None, problem


def test_the_idle_pool_is_still_usable_after_the_fuzzing(idle_pool: Any) -> None:
    # Nothing the fuzzing did left it closed or broken.
    assert not idle_pool.closed
    assert idle_pool.submit("x") is True
    assert idle_pool.flush(WAIT)
    with pytest.raises(Closed):
        closed = ShardedPool(noop, workers=1)
        closed.close()
        closed.submit(1)
