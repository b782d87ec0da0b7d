"""The PNG chart of ``shardflow bench --chart FILE.png`` (needs matplotlib: the ``plot``
extra, ``pip install 'shardflow[plot]'``).

Two panels from the bench report's ``sweep`` section (``shardflow.bench.measure_sweep``):
throughput against the number of workers (a handler that releases the GIL) and against
the batch size (no-op items), ShardedPool next to the stdlib thread-pool baselines, with
log-scaled axes, units, a legend and the Python version and CPU count in the title.

Example:
    >>> from shardflow.cli.chart import matplotlib_available
    >>> isinstance(matplotlib_available(), bool)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["MISSING_MATPLOTLIB", "matplotlib_available", "write_chart"]

MISSING_MATPLOTLIB = "--chart needs matplotlib: pip install 'shardflow[plot]'"

_STYLE = {
    # series name -> (colour, marker): shardflow stands out, baselines are muted.
    "ShardedPool (submit_many)": ("#d62728", "o"),
    "ThreadPoolExecutor.submit": ("#7f7f7f", "s"),
    "threads over queue.SimpleQueue": ("#1f77b4", "^"),
    # The lazy-source pair (batch-size panel): the pool fed by a generator, dashed, and the
    # generator's own rate, the ceiling that source sets.
    "ShardedPool (submit_many(generator))": ("#ff9896", "D"),
    "generator drained alone": ("#2ca02c", "v"),
}
_DASHED = {"ShardedPool (submit_many(generator))", "generator drained alone"}


def matplotlib_available() -> bool:
    """True when matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _rate_label(value: float, _pos: object = None) -> str:
    """``25000000`` -> ``25M``, ``40000`` -> ``40k``: readable log-axis ticks."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _minor_labeller(decades: float) -> Callable[[float, object], str]:
    """Labels for the minor ticks of a log axis spanning ``decades``: all of them on a
    narrow axis, 2x/3x/5x on a medium one, 2x/5x on a wide one (more would crowd it)."""
    if decades < 1.2:
        shown = {2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0}
    elif decades < 2.5:
        shown = {2.0, 3.0, 5.0}
    else:
        shown = {2.0, 5.0}

    def label(value: float, pos: object = None) -> str:
        if value <= 0:
            return ""
        mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
        return _rate_label(value, pos) if mantissa in shown else ""

    return label


def write_chart(report: dict[str, Any], path: str) -> None:
    """Draw the ``sweep`` section of a bench ``report`` into the PNG file ``path``.

    Raises ``KeyError`` naming the section if the report has no sweep, ``ImportError``
    with the install hint if matplotlib is missing.
    """
    if "sweep" not in report:
        raise KeyError("the report has no 'sweep' section: run bench with --sections ...,sweep")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed, none is opened
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    except ImportError:
        raise ImportError(MISSING_MATPLOTLIB) from None

    sweep = report["sweep"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), constrained_layout=True)
    panels = (
        (
            axes[0],
            sweep["workers"],
            "workers (threads)",
            f"Throughput vs workers: {sweep['workers']['handler']} per item",
        ),
        (
            axes[1],
            sweep["batch_size"],
            "batch size (items per handler call)",
            f"Throughput vs batch size: {sweep['batch_size']['handler']}",
        ),
    )
    for ax, data, xlabel, title in panels:
        xs = data["values"]
        for name, ys in data["series"].items():
            colour, marker = _STYLE.get(name, (None, "x"))
            style = "--" if name in _DASHED else "-"
            ax.plot(xs, ys, style, marker=marker, color=colour, label=name, linewidth=2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(x) for x in xs])
        ax.yaxis.set_major_formatter(FuncFormatter(_rate_label))
        lo, hi = ax.get_ylim()
        decades = math.log10(hi / lo) if lo > 0 and hi > lo else 3.0
        ax.yaxis.set_minor_formatter(FuncFormatter(_minor_labeller(decades)))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("throughput (items/s, log scale)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=9)
    cfg = report.get("config", {})
    fig.suptitle(
        "shardflow ShardedPool vs stdlib thread pools - Python "
        f"{sweep.get('python', cfg.get('python', '?'))}, "
        f"{sweep.get('cpus', cfg.get('cpus', '?'))} CPUs "
        f"(medians of {cfg.get('repeats', '?')} interleaved rounds; "
        f"load average {cfg.get('loadavg_start', '?')})",
        fontsize=12,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
