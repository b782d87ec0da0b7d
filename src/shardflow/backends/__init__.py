"""Execution backends: where a pool's shards run (see ``shardflow.backends.base`` for the
seam and its contract).

- ``thread``: ``ThreadBackend``, shard loops in daemon threads of this process (default).
- ``ray``: ``RayBackend``, each shard in a Ray actor, the core in this process
  (``pip install 'shardflow[ray]'``; Ray is imported only when such a pool starts).

The process backend plugs in here too, as a module beside ``thread``; each backend
registers its name in ``BACKENDS``.
"""

from __future__ import annotations

from shardflow.backends.base import DEFERRED, Backend, BatchOutcome, ShardRunner
from shardflow.backends.ray import RayBackend
from shardflow.backends.thread import ThreadBackend

__all__ = [
    "BACKENDS",
    "DEFERRED",
    "Backend",
    "BatchOutcome",
    "RayBackend",
    "ShardRunner",
    "ThreadBackend",
    "resolve_backend",
]

#: ``backend=`` names and the backend each one means (its default configuration).
BACKENDS: dict[str, type[Backend]] = {
    ThreadBackend.name: ThreadBackend,
    RayBackend.name: RayBackend,
}


def resolve_backend(backend: str | Backend) -> Backend:
    """The ``Backend`` that ``backend=`` names: a registered name or a ``Backend``.

    Raises ``TypeError`` for anything else and ``ValueError`` for an unknown name, each
    naming the parameter and what is accepted.
    """
    if isinstance(backend, Backend):
        return backend
    if isinstance(backend, str):
        try:
            return BACKENDS[backend]()
        except KeyError:
            raise ValueError(
                f"backend must be one of {', '.join(map(repr, BACKENDS))} or a "
                f"shardflow.backends.Backend, got {backend!r}"
            ) from None
    if isinstance(backend, type) and issubclass(backend, Backend):
        raise TypeError(
            f"backend must be a Backend instance, got the class {backend.__name__}; "
            f"pass {backend.__name__}() (or its name {backend.name!r})"
        )
    raise TypeError(
        f"backend must be a str ({', '.join(map(repr, BACKENDS))}) or a "
        f"shardflow.backends.Backend, got {type(backend).__name__} {backend!r}"
    )
