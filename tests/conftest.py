"""Shared test configuration.

Hypothesis keeps no example database here (nothing is written into the tree) and has no
per-example deadline: on a noisy 2-core machine a deadline is a timing assert that flakes.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("shardflow", database=None, deadline=None)
settings.load_profile("shardflow")
