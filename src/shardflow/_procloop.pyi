# Stubs of the compiled module shardflow._procloop (see ext/shardflow/_procloop.pyx): the
# per-item loop of a process-backend worker.
from collections.abc import Callable
from typing import Any

def run_items(
    handler: Callable[[Any], object],
    items: list[Any],
    progress: Any,
    on_error: Callable[[int, BaseException], object],
    values: list[Any] | None = None,
) -> int: ...
