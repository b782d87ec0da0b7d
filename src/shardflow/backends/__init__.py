"""Execution backends: where a pool's shards run (see ``shardflow.backends.base`` for the
seam and its contract).

- ``thread``: ``ThreadBackend``, shard loops in daemon threads of this process (default);
- ``process``: ``ProcessBackend``, the handler in a worker process per shard, fed through
  shared-memory rings;
- ``ray``: ``RayBackend``, each shard in a Ray actor, the core in this process
  (``pip install 'shardflow[ray]'``; Ray is imported only when such a pool starts).

Each backend is a module beside ``thread``, imported on first use; its name is registered
in ``BACKENDS``.
"""

from __future__ import annotations

import importlib
from typing import Any

from shardflow.backends.base import DEFERRED, Backend, BatchOutcome, ShardRunner
from shardflow.backends.thread import ThreadBackend

__all__ = [
    "BACKENDS",
    "DEFERRED",
    "Backend",
    "BatchOutcome",
    "ProcessBackend",
    "RayBackend",
    "Serializer",
    "ShardRunner",
    "ThreadBackend",
    "resolve_backend",
]

#: ``backend=`` names and the backend each one means (its default configuration), as
#: ``"module:Class"`` so that a backend's module is imported only when it is used.
BACKENDS: dict[str, str] = {
    "thread": "shardflow.backends.thread:ThreadBackend",
    "process": "shardflow.backends.process:ProcessBackend",
    "ray": "shardflow.backends.ray:RayBackend",
}


def _backend_class(name: str) -> type[Backend]:
    module, _, cls = BACKENDS[name].partition(":")
    found: type[Backend] = getattr(importlib.import_module(module), cls)
    return found


#: Other public names of the backends' modules, imported on first use as well.
_EXTRAS: dict[str, str] = {"Serializer": "shardflow.backends.process:Serializer"}


def __getattr__(name: str) -> Any:
    # ProcessBackend & co. on first use: `import shardflow` stays free of multiprocessing.
    if name in _EXTRAS:
        module, _, attr = _EXTRAS[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    for spec in BACKENDS.values():
        module, _, cls = spec.partition(":")
        if cls == name:
            return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_backend(backend: str | Backend) -> Backend:
    """The ``Backend`` that ``backend=`` names: a registered name or a ``Backend``.

    Raises ``TypeError`` for anything else and ``ValueError`` for an unknown name, each
    naming the parameter and what is accepted.
    """
    if isinstance(backend, Backend):
        return backend
    if isinstance(backend, str):
        try:
            cls = _backend_class(backend)
        except KeyError:
            raise ValueError(
                f"backend must be one of {', '.join(map(repr, BACKENDS))} or a "
                f"shardflow.backends.Backend, got {backend!r}"
            ) from None
        return cls()
    if isinstance(backend, type) and issubclass(backend, Backend):
        raise TypeError(
            f"backend must be a Backend instance, got the class {backend.__name__}; "
            f"pass {backend.__name__}() (or its name {backend.name!r})"
        )
    raise TypeError(
        f"backend must be a str ({', '.join(map(repr, BACKENDS))}) or a "
        f"shardflow.backends.Backend, got {type(backend).__name__} {backend!r}"
    )
