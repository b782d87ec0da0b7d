"""Shared test configuration.

Hypothesis keeps no example database here (nothing is written into the tree) and has no
per-example deadline: on a noisy 2-core machine a deadline is a timing assert that flakes.

Ctrl-C: a shell starts background jobs (``pytest ... &``, nohup) with SIGINT ignored, and
Python then installs no KeyboardInterrupt handler: ``_thread.interrupt_main()`` does nothing
and children inherit the ignored signal, so every Ctrl-C test would hang. The suite
installs Python's handler itself; children then start with SIGINT at its default again.
"""

from __future__ import annotations

import signal

from hypothesis import settings

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

settings.register_profile("shardflow", database=None, deadline=None)
settings.load_profile("shardflow")
