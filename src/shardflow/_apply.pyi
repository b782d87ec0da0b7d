# Stubs of the compiled module shardflow._apply (see ext/shardflow/_apply.pyx): the per-item
# loop of a pipeline stage's handler.
from collections.abc import Callable
from typing import Any

def map_extend(out: list[Any], fn: Callable[[Any], Any], items: list[Any]) -> None: ...
