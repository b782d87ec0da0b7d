"""Guards in the caller's process for runners that run the handler elsewhere.

With threads, the pool composes ``breaker``/``limiter``/``rate_limiter`` around the handler
and every worker shares them. A runner that copies the handler into worker processes or
Ray actors (``shares_guards = False``) would split their state, one copy per worker. So
for those runners the pool keeps the guards here, in the caller's process, around the
*shipping* of each batch, and feeds them the per-item outcomes that come back:

* ``rate_limiter``: the batch's tokens (one per item for a per-item handler, one per
  batch for a list handler) are taken before it is shipped, the dispatch thread waiting
  until they are due. A per-item pool ships at most ``burst`` items per batch
  (``max_ship``), so the downstream never sees more than a burst at once;
* ``limiter``: one permit per batch in flight, taken before shipping and given back when
  its outcome is in (a worker runs one item at a time, so this bounds the calls under
  way across the workers);
* ``breaker``: each item (each batch, for a list handler) is admitted when its batch is
  shipped; those it refuses fail at once with ``CircuitOpen`` (dead letters, as with
  threads) and are not shipped; each admitted one's outcome is recorded when it comes
  back. A slow-call policy measures from shipping to the outcome.

``retry`` is not among them: a retry in the caller would run an item again after later
items of its key, breaking per-key order; the pool refuses it with such runners.

The runner sees a sub-list when the breaker refused some items; outcomes it reports (by
return or by ``settle``) are mapped back to the pool's batch here.
"""

from __future__ import annotations

from typing import Any

from shardflow.backends.base import DEFERRED, BatchOutcome, Handler, Settle
from shardflow.resilience.breaker import CircuitBreaker
from shardflow.resilience.limiter import Limiter
from shardflow.resilience.ratelimiter import RateLimiter

__all__ = ["DriverGuards"]

Failures = list[tuple[int, BaseException]]


class _Shipped:
    """A batch on its way: the pool's list, which of its items were shipped (None: all),
    the breaker's refusals and admission tokens."""

    __slots__ = ("batch", "kept", "refused", "tokens")

    def __init__(
        self,
        batch: list[Any],
        kept: list[int] | None,
        refused: Failures,
        tokens: list[tuple[int, int]],
    ) -> None:
        self.batch = batch
        self.kept = kept
        self.refused = refused
        self.tokens = tokens


class DriverGuards:
    """``breaker``/``limiter``/``rate_limiter`` kept in the caller's process around a
    remote runner's shipping callable (see the module doc)."""

    def __init__(
        self,
        *,
        per_item: bool,
        breaker: CircuitBreaker | None,
        limiter: Limiter | None,
        rate_limiter: RateLimiter | None,
    ) -> None:
        self.per_item = per_item
        self.breaker = breaker
        self.limiter = limiter
        self.rate_limiter = rate_limiter
        # Shipped list id -> its record, for outcomes settled later (DEFERRED). The list
        # is alive while in flight (the runner holds it), so its id is not reused.
        self._pending: dict[int, _Shipped] = {}

    @property
    def max_ship(self) -> int | None:
        """Most items one shipped batch of a per-item pool may hold (the rate limiter's
        burst), or None."""
        if self.rate_limiter is not None and self.per_item:
            return int(self.rate_limiter.burst)
        return None

    # ------------------------------------------------------------------ shipping

    def wrap(self, ship: Handler) -> Handler:
        """The callable the shard loops call instead of the runner's ``ship``."""

        def gated(batch: list[Any]) -> object:
            self._take_tokens(len(batch) if self.per_item else 1)
            if self.limiter is not None:
                self.limiter.acquire()
            try:
                shipped = self._admit(batch)
            except BaseException:
                self._release()
                raise
            if shipped.kept is not None and not shipped.kept:
                # Everything refused by the breaker: nothing to ship.
                return self._finish_raising(shipped, None)
            sub = batch if shipped.kept is None else [batch[i] for i in shipped.kept]
            key = id(sub)
            self._pending[key] = shipped  # before shipping: a settle may come at once
            try:
                out = ship(sub)
            except BaseException as exc:
                self._pending.pop(key, None)
                return self._finish_raising(shipped, exc)
            if out is DEFERRED:
                return DEFERRED
            self._pending.pop(key, None)
            result = self._finish(shipped, out)
            if isinstance(result, BaseException):
                raise result
            return result

        return gated

    def wrap_settle(self, settle: Settle) -> Settle:
        """The ``settle`` given to the runner: maps a shipped sub-list's outcome back to
        the pool's batch (and records it with the guards) before the core counts it."""

        def settled(shard: int, sub: list[Any], outcome: object, service_ns: int) -> None:
            shipped = self._pending.pop(id(sub), None)
            if shipped is None:  # pragma: no cover - a runner settling what it was not given
                settle(shard, sub, outcome, service_ns)
                return
            settle(shard, shipped.batch, self._finish(shipped, outcome), service_ns)

        return settled

    # ------------------------------------------------------------------ the guards

    def _take_tokens(self, n: int) -> None:
        rl = self.rate_limiter
        if rl is None:
            return
        burst = int(rl.burst)
        while n > 0:
            k = min(n, burst)
            rl.acquire(k)
            n -= k

    def _release(self) -> None:
        if self.limiter is not None:
            self.limiter.release()

    def _admit(self, batch: list[Any]) -> _Shipped:
        breaker = self.breaker
        if breaker is None:
            return _Shipped(batch, None, [], [])
        begin = breaker._begin
        tokens: list[tuple[int, int]] = []
        refused: Failures = []
        if not self.per_item:
            try:
                tokens.append(begin())
            except Exception as exc:  # CircuitOpen
                refused.append((-1, exc))
                return _Shipped(batch, [], refused, tokens)
            return _Shipped(batch, None, refused, tokens)
        kept: list[int] = []
        for i in range(len(batch)):
            try:
                tokens.append(begin())
            except Exception as exc:  # CircuitOpen
                refused.append((i, exc))
            else:
                kept.append(i)
        return _Shipped(batch, None if not refused else kept, refused, tokens)

    def _finish(self, shipped: _Shipped, outcome: object) -> object:
        """Record ``outcome`` (None, a BatchOutcome over the shipped items, or the
        exception that failed them all) with the breaker, give the permit back, and
        return the outcome over the pool's batch."""
        self._release()
        return self._outcome(shipped, outcome)

    def _finish_raising(self, shipped: _Shipped, exc: BaseException | None) -> object:
        """``_finish`` for the caller's thread: an outcome that is an exception is raised."""
        result = self._finish(shipped, exc)
        if isinstance(result, BaseException):
            raise result
        return result

    def _outcome(self, shipped: _Shipped, outcome: object) -> object:
        kept = shipped.kept
        breaker = self.breaker
        if not self.per_item:
            if shipped.refused:
                return shipped.refused[0][1]
            if breaker is not None:
                token, start = shipped.tokens[0]
                breaker._finish(
                    token, start, outcome if isinstance(outcome, BaseException) else None
                )
            return outcome
        n_shipped = len(shipped.batch) if kept is None else len(kept)
        failed: dict[int, BaseException] = {}
        whole: BaseException | None = None
        if isinstance(outcome, BatchOutcome):
            failed = dict(outcome.failures)
        elif isinstance(outcome, BaseException):
            whole = outcome
        if breaker is not None:
            finish = breaker._finish
            for j in range(n_shipped):
                token, start = shipped.tokens[j]
                finish(token, start, whole if whole is not None else failed.get(j))
        if not shipped.refused:
            return outcome
        # Map the shipped items' failures back to the batch, beside the refusals.
        assert kept is not None
        failures = list(shipped.refused)
        if whole is not None:
            failures.extend((i, whole) for i in kept)
        else:
            failures.extend((kept[j], exc) for j, exc in failed.items())
        failures.sort(key=lambda f: f[0])
        return BatchOutcome(failures)
