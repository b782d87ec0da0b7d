"""CircuitBreaker: the state machine against a reference model, under threads, and its API."""

from __future__ import annotations

import asyncio
import collections
import threading
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shardflow.errors import CircuitOpen, ShardflowError
from shardflow.resilience.breaker import BreakerState, CircuitBreaker

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
FORCED, DISABLED = BreakerState.FORCED_OPEN, BreakerState.DISABLED


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def boom(exc: BaseException | None = None):
    raise exc if exc is not None else ValueError("boom")


def fail(breaker: CircuitBreaker, exc: BaseException | None = None) -> None:
    with pytest.raises(type(exc) if exc else ValueError):
        breaker.call(boom, exc or ValueError("boom"))


# --------------------------------------------------------------------------- reference model


def ns(seconds: float) -> int:
    """The conversion the breaker applies to an injected clock's seconds."""
    return round(seconds * 1e9)


class Model:
    """What the breaker must do, single-threaded: states, generations, permits, windows."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.gen, self.state = 0, CLOSED
        self.consecutive = 0
        self.window: collections.deque = collections.deque(maxlen=cfg["window"])
        self.opened_at = 0
        self.ho = (0, 0, 0)  # (gen, successes, in flight)
        self.events: list[tuple[BreakerState, BreakerState]] = []
        self.calls = self.failures = self.slow = self.rejections = 0

    def _move(self, new: BreakerState, now: int) -> None:
        if new != self.state:
            self.events.append((self.state, new))
        self.gen += 1
        self.state = new
        if new == OPEN:
            self.opened_at = now

    def _clear(self) -> None:
        self.consecutive = 0
        self.window.clear()

    def _rates_on(self) -> bool:
        return self.cfg["failure_rate"] is not None or self.cfg["slow_call_rate"] is not None

    def acquire(self, now: int):
        """Returns a token (gen, state) or ('reject', remaining_ns or None for inf)."""
        while True:
            if self.state in (CLOSED, DISABLED):
                return (self.gen, self.state)
            if self.state == FORCED:
                self.rejections += 1
                return ("reject", None)
            if self.state == OPEN:
                left = self.opened_at + ns(self.cfg["reset_timeout"]) - now
                if left > 0:
                    self.rejections += 1
                    return ("reject", left)
                if self.ho[0] < self.gen + 1:
                    self.ho = (self.gen + 1, 0, self.ho[2])  # trials in flight carry over
                self._move(HALF, now)
                continue
            g, succ, inflight = self.ho
            assert g == self.gen
            if inflight >= self.cfg["half_open_max_calls"]:  # counted across periods
                self.rejections += 1
                return ("reject", 0)
            self.ho = (g, succ, inflight + 1)
            return (self.gen, HALF)

    def record(self, token, outcome: str, slow: bool, now: int) -> None:
        tgen, tstate = token
        ignore = outcome == "ignore"
        is_fail = outcome == "fail"
        slow = slow and not ignore and self.cfg["slow_call_duration"] is not None
        if not ignore:
            self.calls += 1
            self.failures += is_fail
            self.slow += slow
        if tstate == CLOSED:
            if ignore:
                return
            if is_fail:
                self.consecutive += 1
            else:
                self.consecutive = 0
            if self._rates_on():
                self.window.append((is_fail, slow))
            if not (is_fail or slow):
                return
            trip = bool(self.cfg["max_failures"]) and self.consecutive >= self.cfg["max_failures"]
            n = len(self.window)
            if not trip and self._rates_on() and n >= self.cfg["minimum_calls"]:
                fr, sr = self.cfg["failure_rate"], self.cfg["slow_call_rate"]
                fails = sum(f for f, _ in self.window)
                slows = sum(s for _, s in self.window)
                trip = (fr is not None and fails >= fr * n) or (sr is not None and slows >= sr * n)
            if trip and (self.gen, self.state) == (tgen, tstate):
                self._move(OPEN, now)
        elif tstate == HALF:
            # The permit always comes back, whichever period is current.
            g, succ, inflight = self.ho
            failed = is_fail or (slow and self.cfg["slow_call_rate"] is not None)
            counts = not ignore and not failed
            if counts and g == tgen:
                succ = min(succ + 1, 0xFFFF)
            self.ho = (g, succ, max(inflight - 1, 0))
            if failed:
                if (self.gen, self.state) == (tgen, tstate):
                    self._move(OPEN, now)
            elif counts and g == tgen and succ == self.cfg["success_threshold"]:
                self._clear()
                if (self.gen, self.state) == (tgen, tstate):
                    self._move(CLOSED, now)

    def force(self, target: BreakerState, now: int) -> None:
        if target == CLOSED:
            self._clear()
        if self.state == target and target != OPEN:
            return
        self._move(target, now)


configs = st.fixed_dictionaries(
    {
        "max_failures": st.one_of(st.none(), st.integers(1, 4)),
        "reset_timeout": st.sampled_from([0.0, 0.5, 2.0]),
        "failure_rate": st.one_of(st.none(), st.sampled_from([0.25, 0.5, 1.0])),
        "slow_call_duration": st.one_of(st.none(), st.just(1.0)),
        "window": st.integers(1, 6),
        "minimum_calls": st.integers(1, 4),
        "half_open_max_calls": st.integers(1, 3),
        "success_threshold": st.integers(1, 3),
    }
).filter(lambda c: c["max_failures"] or c["failure_rate"] or c["slow_call_duration"])


class BreakerMachine(RuleBasedStateMachine):
    """Random interleavings of admissions, outcomes (also late ones), clock moves and
    manual transitions; after every step the breaker agrees with the model."""

    @initialize(cfg=configs)
    def setup(self, cfg):
        cfg = dict(cfg, slow_call_rate=0.5 if cfg["slow_call_duration"] else None)
        self.clock = FakeClock(100.0)
        self.events: list[tuple[BreakerState, BreakerState]] = []
        self.breaker = CircuitBreaker(
            max_failures=cfg["max_failures"],
            reset_timeout=cfg["reset_timeout"],
            failure_rate=cfg["failure_rate"],
            slow_call_duration=cfg["slow_call_duration"],
            slow_call_rate=cfg["slow_call_rate"],
            window_type="count",
            window=cfg["window"],
            minimum_calls=cfg["minimum_calls"],
            half_open_max_calls=cfg["half_open_max_calls"],
            success_threshold=cfg["success_threshold"],
            exclude=KeyError,
            listeners=[lambda b, old, new: self.events.append((old, new))],
            clock=self.clock,
        )
        self.model = Model(cfg)
        self.pending: list[tuple[object, object, float]] = []  # (real, model token, start)

    def _now(self) -> int:
        return ns(self.clock())

    @rule(ms=st.integers(0, 2500))
    def advance(self, ms):
        self.clock.t += ms / 1000

    @rule()
    def begin(self):
        expected = self.model.acquire(self._now())
        if expected[0] == "reject":
            with pytest.raises(CircuitOpen) as info:
                self.breaker._begin()
            remaining = expected[1]
            if remaining is None:
                assert info.value.remaining == float("inf")
            else:
                assert info.value.remaining == pytest.approx(remaining / 1e9)
        else:
            real = self.breaker._begin()
            self.pending.append((real, expected, self.clock()))

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "fail", "ignore"]))
    def finish(self, data, outcome):
        i = data.draw(st.integers(0, len(self.pending) - 1))
        (token, start_ns), mtoken, start = self.pending.pop(i)
        exc = {"ok": None, "fail": ValueError("x"), "ignore": KeyError("x")}[outcome]
        slow = self.model.cfg["slow_call_duration"] is not None and (
            self._now() - ns(start) >= ns(self.model.cfg["slow_call_duration"])
        )
        self.breaker._finish(token, start_ns, exc)
        self.model.record(mtoken, outcome, slow, self._now())

    @rule(to=st.sampled_from([CLOSED, OPEN, FORCED, DISABLED]))
    def force(self, to):
        {
            CLOSED: self.breaker.reset,
            OPEN: self.breaker.trip,
            FORCED: self.breaker.force_open,
            DISABLED: self.breaker.disable,
        }[to]()
        self.model.force(to, self._now())

    @invariant()
    def agrees(self):
        if not hasattr(self, "breaker"):
            return
        assert self.breaker.state == self.model.state
        assert self.breaker._generation == self.model.gen
        assert self.events == self.model.events
        m = self.breaker.metrics()
        assert (m.calls, m.failures, m.slow_calls, m.rejections) == (
            self.model.calls,
            self.model.failures,
            self.model.slow,
            self.model.rejections,
        )
        assert m.consecutive_failures == self.model.consecutive


TestBreakerModel = BreakerMachine.TestCase
TestBreakerModel.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# --------------------------------------------------------------------------- policies


def test_consecutive_failures_open_and_success_resets_count():
    b = CircuitBreaker(max_failures=3, clock=FakeClock())
    fail(b)
    fail(b)
    assert b.call(lambda: 1) == 1
    fail(b)
    fail(b)
    assert b.state == CLOSED
    fail(b)
    assert b.state == OPEN


def test_open_rejects_with_remaining_then_half_opens_after_reset_timeout():
    clock = FakeClock()
    b = CircuitBreaker(max_failures=1, reset_timeout=10, clock=clock)
    fail(b)
    clock.t += 4
    with pytest.raises(CircuitOpen) as info:
        b.call(lambda: None)
    assert info.value.remaining == pytest.approx(6)
    assert isinstance(info.value, ShardflowError)
    clock.t += 6
    assert b.call(lambda: "trial") == "trial"
    assert b.state == CLOSED


def test_half_open_failure_reopens_and_success_threshold_closes():
    clock = FakeClock()
    b = CircuitBreaker(max_failures=1, reset_timeout=1, success_threshold=2, clock=clock)
    fail(b)
    clock.t += 1
    fail(b)
    assert b.state == OPEN
    clock.t += 1
    b.call(lambda: None)
    assert b.state == HALF
    b.call(lambda: None)
    assert b.state == CLOSED


def test_half_open_permits_limit_concurrent_trials():
    clock = FakeClock()
    b = CircuitBreaker(max_failures=1, reset_timeout=1, half_open_max_calls=2, clock=clock)
    fail(b)
    clock.t += 1
    t1, t2 = b._begin(), b._begin()
    with pytest.raises(CircuitOpen) as info:
        b._begin()
    assert info.value.remaining == 0
    b._finish(*t1, ValueError("trial failed"))  # one failure reopens
    assert b.state == OPEN
    b._finish(*t2)  # a late trial of the old half-open period changes nothing
    assert b.state == OPEN


def test_count_window_failure_rate_with_minimum_calls():
    b = CircuitBreaker(
        max_failures=None, failure_rate=0.5, window=4, minimum_calls=4, clock=FakeClock()
    )
    fail(b)
    fail(b)
    fail(b)
    assert b.state == CLOSED  # 3 calls < minimum_calls
    b.call(lambda: None)
    assert b.state == CLOSED  # successes never trip
    fail(b)  # window now: F F ok F -> 3/4
    assert b.state == OPEN
    assert b.metrics().failure_rate == 0.75


def test_time_window_forgets_old_buckets():
    clock = FakeClock(0.0)
    b = CircuitBreaker(
        max_failures=None,
        failure_rate=0.5,
        window_type="time",
        window=10,
        window_buckets=10,
        minimum_calls=4,
        clock=clock,
    )
    for _ in range(3):
        fail(b)
    clock.t += 20  # all three failures fall out of the window
    for _ in range(3):
        b.call(lambda: None)
    fail(b)  # 1 failure out of 4 in the window
    assert b.state == CLOSED
    assert b.metrics().window_calls == 4
    fail(b)  # 2 of 5 -> 0.4
    fail(b)  # 3 of 6 -> 0.5 -> trips
    assert b.state == OPEN


def test_slow_call_rate_trips():
    clock = FakeClock()
    b = CircuitBreaker(
        max_failures=None,
        slow_call_duration=1.0,
        slow_call_rate=0.5,
        window=4,
        minimum_calls=2,
        clock=clock,
    )

    def slow():
        clock.t += 2

    b.call(lambda: None)
    b.call(slow)
    assert b.state == OPEN
    assert b.metrics().slow_calls == 1


def test_exclude_types_and_predicate_do_not_count():
    b = CircuitBreaker(
        max_failures=1, exclude=[KeyError, lambda e: "benign" in str(e)], clock=FakeClock()
    )
    fail(b, KeyError("k"))
    fail(b, ValueError("benign thing"))
    assert b.state == CLOSED and b.metrics().calls == 0
    with pytest.raises(KeyboardInterrupt):
        b.call(boom, KeyboardInterrupt())
    assert b.state == CLOSED
    fail(b)
    assert b.state == OPEN


def test_manual_states():
    clock = FakeClock()
    events = []
    b = CircuitBreaker(max_failures=1, clock=clock, listeners=[lambda *a: events.append(a[1:])])
    b.force_open()
    with pytest.raises(CircuitOpen) as info:
        b.call(lambda: None)
    assert info.value.remaining == float("inf")
    clock.t += 10**6
    with pytest.raises(CircuitOpen):
        b.call(lambda: None)
    b.disable()
    for _ in range(5):
        fail(b)
    assert b.state == DISABLED
    b.reset()
    assert b.state == CLOSED
    b.trip()
    assert b.state == OPEN
    assert events == [(CLOSED, FORCED), (FORCED, DISABLED), (DISABLED, CLOSED), (CLOSED, OPEN)]


def test_listener_errors_are_logged_not_raised(caplog):
    def bad(*a):
        raise RuntimeError("listener bug")

    b = CircuitBreaker(max_failures=1, listeners=[bad], clock=FakeClock())
    fail(b)
    assert b.state == OPEN
    assert "listener" in caplog.text


# --------------------------------------------------------------------------- call forms


def test_decorator_context_manager_and_kwargs():
    b = CircuitBreaker(max_failures=2, clock=FakeClock())

    @b
    def add(x, *, y):
        return x + y

    assert add(1, y=2) == 3
    assert add.__name__ == "add"
    with b:
        pass
    with pytest.raises(ValueError), b:
        raise ValueError
    with pytest.raises(ValueError), b:
        raise ValueError
    assert b.state == OPEN
    with pytest.raises(CircuitOpen), b:
        pytest.fail("body must not run")


def test_async_call_and_decorator():
    b = CircuitBreaker(max_failures=1, clock=FakeClock())

    @b
    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    async def bad():
        raise ValueError

    async def main():
        assert await double(4) == 8
        assert await b.acall(double, 5) == 10
        with pytest.raises(ValueError):
            await b.acall(bad)
        with pytest.raises(CircuitOpen):
            await double(1)

    asyncio.run(main())
    assert b.state == OPEN


def test_async_cancellation_is_not_a_failure():
    b = CircuitBreaker(max_failures=1, clock=FakeClock())

    async def main():
        task = asyncio.ensure_future(b.acall(asyncio.sleep, 10))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert b.state == CLOSED and b.metrics().failures == 0


# --------------------------------------------------------------------------- threads


def test_threads_never_exceed_half_open_max_calls():
    b = CircuitBreaker(
        max_failures=1, reset_timeout=0.0, half_open_max_calls=3, success_threshold=0xFFFF
    )
    b.trip()
    lock = threading.Lock()
    inside = [0, 0]  # now, max
    ran = [0]

    def trial():
        with lock:
            inside[0] += 1
            inside[1] = max(inside[1], inside[0])
            ran[0] += 1
        time.sleep(0.0005)
        with lock:
            inside[0] -= 1

    def worker():
        for _ in range(300):
            try:
                b.call(trial)
            except CircuitOpen:
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.state == HALF
    assert 1 <= inside[1] <= 3
    assert ran[0] > 0


def test_each_transition_fires_listeners_exactly_once_under_threads():
    events = []
    lock = threading.Lock()

    def listener(breaker, old, new):
        with lock:
            events.append((old, new))

    b = CircuitBreaker(
        max_failures=2,
        reset_timeout=0.0,
        half_open_max_calls=2,
        success_threshold=2,
        listeners=[listener],
    )

    def worker(seed):
        for i in range(4000):
            try:
                if (i // 3 + seed) % 3 == 0:  # runs of three failures
                    b.call(boom)
                else:
                    b.call(int)
            except (ValueError, CircuitOpen):
                pass

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One CAS per transition and one listener call per CAS: the generation counts them.
    assert len(events) == b._generation > 0
    final = b.state
    for s in (CLOSED, OPEN, HALF):
        into = sum(1 for _, new in events if new == s)
        out = sum(1 for old, _ in events if old == s)
        assert into - out == (s == final) - (s == CLOSED)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"max_failures": 0}, ValueError, "max_failures"),
        ({"max_failures": "3"}, TypeError, "max_failures"),
        ({"reset_timeout": -1}, ValueError, "reset_timeout"),
        ({"failure_rate": 1.5}, ValueError, "failure_rate"),
        ({"failure_rate": 0}, ValueError, "failure_rate"),
        ({"slow_call_duration": 1.0}, ValueError, "slow_call_rate"),
        ({"window_type": "sliding"}, ValueError, "'count', 'time'"),
        ({"failure_rate": 0.5, "window": 0}, ValueError, "window"),
        ({"half_open_max_calls": 0}, ValueError, "half_open_max_calls"),
        ({"success_threshold": 70000}, ValueError, "success_threshold"),
        ({"exclude": 3}, TypeError, "exclude"),
        ({"exclude": [int]}, TypeError, "exclude"),
        ({"listeners": print}, TypeError, "listeners"),
        ({"listeners": [1]}, TypeError, "listeners[0]"),
        ({"clock": 5}, TypeError, "clock"),
        ({"max_failures": None}, ValueError, "trip policy"),
    ],
)
def test_bad_configuration(kwargs, exc, words):
    with pytest.raises(exc, match=None) as info:
        CircuitBreaker(**kwargs)
    assert words in str(info.value)


def test_repr_and_metrics_snapshot_is_frozen():
    b = CircuitBreaker(name="db")
    assert "db" in repr(b) and "closed" in repr(b)
    m = b.metrics()
    with pytest.raises(AttributeError):
        m.calls = 3  # type: ignore[misc]


def test_call_forwards_positional_and_keyword_arguments_untouched():
    b = CircuitBreaker(clock=FakeClock())
    assert b.call(dict, [("a", 1)], b=2) == {"a": 1, "b": 2}
    assert b.call(max, 3, 9, key=lambda v: -v) == 3
    with pytest.raises(TypeError, match="fn"):
        b.call()


def test_exclude_predicate_error_propagates_with_the_call_error_as_context():
    def pred(exc):
        raise RuntimeError("predicate bug")

    b = CircuitBreaker(exclude=pred, clock=FakeClock())
    with pytest.raises(RuntimeError, match="predicate bug") as info:
        b.call(boom, ValueError("original"))
    assert isinstance(info.value.__context__, ValueError)


def test_traceback_of_the_call_error_is_kept():
    b = CircuitBreaker(clock=FakeClock())
    with pytest.raises(ValueError) as info:
        b.call(boom, ValueError("deep"))
    assert info.traceback[-1].name == "boom"


@pytest.mark.slow
@pytest.mark.parametrize("half_open_max_calls", [1, 2, 3])
def test_c_hammer_half_open_trials_bounded_and_transitions_counted_once(half_open_max_calls):
    """Two threads in C with the GIL released (real parallelism even under the GIL)."""
    b = CircuitBreaker(
        max_failures=1,
        reset_timeout=0.0,
        half_open_max_calls=half_open_max_calls,
        success_threshold=3,
    )
    barrier = threading.Barrier(2)
    out = []

    def run():
        barrier.wait()
        out.append(b._hammer(300_000, 5))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    most, transitions = max(out)
    assert 1 <= most <= half_open_max_calls
    # every CAS-won transition was reported exactly once, by the thread that made it
    assert transitions == b._generation > 0
