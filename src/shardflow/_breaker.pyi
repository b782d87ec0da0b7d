# Stubs of the compiled module shardflow._breaker (see ext/shardflow/_breaker.pyx).
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

STATE_CLOSED: int
STATE_OPEN: int
STATE_HALF_OPEN: int
STATE_FORCED_OPEN: int
STATE_DISABLED: int
WINDOW_NONE: int
WINDOW_COUNT: int
WINDOW_TIME: int

class BreakerCore:
    def _core_init(
        self,
        clock: Callable[[], float] | None,
        exclude_types: tuple[type[BaseException], ...],
        exclude_pred: Callable[[BaseException], bool] | None,
        max_failures: int,
        failure_rate: float,
        slow_rate: float,
        slow_ns: int,
        minimum_calls: int,
        win_kind: int,
        win_size: int,
        width_ns: int,
        reset_ns: int,
        ho_max: int,
        success_threshold: int,
    ) -> None: ...
    def call(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T: ...
    def _on_transition(self, old: int, new: int) -> None: ...
    def _begin(self) -> tuple[int, int]: ...
    def _finish(self, token: int, start: int, exc: BaseException | None = None) -> None: ...
    def _force(self, target: int) -> None: ...
    def _hammer(self, n: int, fail_every: int = 0) -> tuple[int, int]: ...
    @property
    def _generation(self) -> int: ...
    @property
    def _state_code(self) -> int: ...
    def _counters(self) -> tuple[int, int, int, int, int, int, int, int]: ...
