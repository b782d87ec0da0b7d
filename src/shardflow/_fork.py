"""Fork detection for the objects that own threads or wait on other threads.

After ``fork()`` only the thread that forked exists in the child: worker threads,
feeder threads and display threads of objects made before the fork are gone, and a
wait on them (or on a permit one of them holds) would never end. Such an object
remembers ``generation`` when it starts its threads and compares on use: each forked
child bumps it, so an object from before the fork raises ``fork_error`` instead of
hanging, while objects made in the child work as usual. ``ShardedPool`` keeps the same
information in its compiled core (``PoolCore._mark_forked``).
"""

from __future__ import annotations

import os

__all__ = ["fork_error", "generation"]

#: Bumped in every forked child (``os.register_at_fork``); read as ``_fork.generation``.
generation = 0


def _after_fork_in_child() -> None:
    global generation
    generation += 1


def fork_error(kind: str) -> RuntimeError:
    """The error an object of type ``kind`` made before a fork raises in the child."""
    return RuntimeError(
        f"this {kind} was created in the parent process before fork() and cannot be used "
        f"in the child (its threads do not exist there); create a new {kind} in the child"
    )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
