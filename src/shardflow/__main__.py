"""Command line: ``python -m shardflow <command>`` (also installed as ``shardflow``).

Commands:
    bench   side-by-side throughput benchmarks against the stdlib (see ``shardflow._bench``)

Each command is a subparser with a handler taking the parsed namespace and returning the
exit code, so that more commands plug in without touching the others. Bad options are
argparse errors: a usage line, one ``error:`` line, exit status 2, no traceback.

Example:
    $ python -m shardflow bench --quick --json bench.json
    $ python -m shardflow bench --sections stealing,latency
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

__all__ = ["build_parser", "main"]

#: Defaults of ``bench --quick`` (explicit ``--items``/``--repeats`` still win).
QUICK_ITEMS = 20_000
QUICK_REPEATS = 2
FULL_ITEMS = 1_000_000
FULL_REPEATS = 5


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1 (the message names the value and what is accepted)."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _sections(text: str) -> list[str]:
    """argparse type: comma-separated section names of ``shardflow._bench.SECTIONS``."""
    from shardflow._bench import SECTIONS

    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(SECTIONS)}; got {text!r}"
        )
    return names


def _cmd_bench(args: argparse.Namespace) -> int:
    # Imported here so that `--help` and option errors do not pay for the benchmark module.
    from shardflow._bench import run_bench

    items = args.items if args.items is not None else (QUICK_ITEMS if args.quick else FULL_ITEMS)
    repeats = (
        args.repeats
        if args.repeats is not None
        else (QUICK_REPEATS if args.quick else FULL_REPEATS)
    )
    report = run_bench(
        items=items, repeats=repeats, quick=args.quick, out=sys.stdout, sections=args.sections
    )
    if args.json is not None:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``shardflow`` argument parser, one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="shardflow",
        description="shardflow command line tools.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    bench = sub.add_parser(
        "bench",
        help="compare ShardedPool with the stdlib side by side",
        description=(
            "Run ShardedPool and the stdlib alternatives (bare loop, ThreadPoolExecutor, "
            "threads over queue.Queue / queue.SimpleQueue) interleaved round by round, and "
            "print medians, ratios and the target checks."
        ),
    )
    bench.add_argument(
        "--items",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"no-op items per contender per round (default {FULL_ITEMS:,}; "
        f"--quick: {QUICK_ITEMS:,})",
    )
    bench.add_argument(
        "--repeats",
        type=_positive_int,
        default=None,
        metavar="R",
        help=f"interleaved rounds; medians are reported (default {FULL_REPEATS}; "
        f"--quick: {QUICK_REPEATS})",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="small sizes everywhere, for smoke tests (figures are not meaningful)",
    )
    bench.add_argument(
        "--sections",
        type=_sections,
        default=None,
        metavar="LIST",
        help="comma-separated sections to run, among memory, idle, throughput, gil, "
        "stealing, latency, reuse, executor (default: all)",
    )
    bench.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="also write the full report (medians, samples, ratios, targets) as JSON",
    )
    bench.set_defaults(handler=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m shardflow`` and the ``shardflow`` script.

    Returns the exit status; argparse exits with status 2 on bad options.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
