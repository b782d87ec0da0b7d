"""The ``shardflow`` command line: application code built on the library, not part of it.

- ``main``: the entry point (``python -m shardflow``, the ``shardflow`` script) and the
  argument parser;
- ``demo``: ``shardflow demo``, the main job on a built-in workload with exact accounting;
- ``run``: ``shardflow run``, a JSON-lines or CSV file through a user's handler;
- ``progress``: the progress line / rich bar both commands draw from pool metrics;
- ``chart``: the PNG chart of ``shardflow bench --chart``.

The benchmark harness behind ``shardflow bench`` is ``shardflow.bench``.
"""

from shardflow.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
