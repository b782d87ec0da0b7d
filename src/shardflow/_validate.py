"""Argument checks shared by the public constructors.

Every message names the parameter, the value given and what is accepted, so that a bad
call fails at construction with an error that says how to fix it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any


def check_callable(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not callable(value):
        what = "None or a callable" if optional else "a callable"
        raise TypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")


def check_int(name: str, value: Any, *, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return value


#: Seconds beyond which a duration is "never" for the core: ~146 years in ns fits int64.
NEVER_NS = 1 << 62


def _as_float(value: int | float) -> float:
    """float(value), with ints too large for a float mapped to +/-inf instead of raising."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def check_seconds(
    name: str,
    value: Any,
    *,
    optional: bool = True,
    positive: bool = False,
    allow_inf: bool = False,
) -> None:
    """A duration in seconds. Timeouts pass ``allow_inf=True``: ``inf`` (and any value too
    large for a float) then means "no limit", as ``None`` does."""
    if value is None and optional:
        return
    accepted = ("None or " if optional else "") + (
        "a number of seconds > 0" if positive else "a number of seconds >= 0"
    )
    if allow_inf:
        accepted += " (inf: no limit)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {accepted}, got {value!r} ({type(value).__name__})")
    f = _as_float(value)
    if math.isnan(f) or f < 0 or (positive and f == 0) or (math.isinf(f) and not allow_inf):
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def seconds_to_ns(value: int | float) -> int:
    """A checked duration in ns, saturated at ``NEVER_NS`` so the C side never overflows."""
    f = _as_float(value)
    if f >= NEVER_NS / 1e9:
        return NEVER_NS
    return int(f * 1e9)


def check_choice(name: str, value: Any, choices: Collection[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        accepted = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {accepted}, got {value!r}")
    return value


def check_bool(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bool):
        what = "None, True or False" if optional else "True or False"
        raise TypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")


def check_instance(name: str, value: Any, cls: type) -> None:
    """None or an instance of ``cls``."""
    if value is not None and not isinstance(value, cls):
        raise TypeError(
            f"{name} must be None or a shardflow.{cls.__name__}, got {value!r} "
            f"({type(value).__name__})"
        )


def check_str(name: str, value: Any, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be None or a str, got {value!r} ({type(value).__name__})")


Handler = Callable[[Any], Any]
