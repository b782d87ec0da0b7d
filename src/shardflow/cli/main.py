"""Command line: ``python -m shardflow <command>`` (also installed as ``shardflow``).

Commands:
    demo    the main job on a built-in workload, with the exact accounting of every event
            (see ``shardflow.cli.demo``)
    run     a JSON-lines or CSV file through your handler (see ``shardflow.cli.run``)
    bench   side-by-side throughput benchmarks against the stdlib (see ``shardflow.bench``)

Each command is a subparser with a handler taking the parsed namespace and returning the
exit code, so that more commands plug in without touching the others. A bad option, a
missing file or an unimportable handler is one ``error:`` line on stderr and exit status
2, never a traceback.

Example:
    $ shardflow demo --events 50000
    $ shardflow run events.jsonl --handler jobs:handle --key user
    $ python -m shardflow bench --quick --json bench.json --chart bench.png
    $ python -m shardflow bench --sections stealing,latency
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

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


def _bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    """argparse type: an int in ``[lo, hi]``."""

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer between {lo} and {hi}, got {text!r}"
            ) from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"expected an integer between {lo} and {hi}, got {value}"
            )
        return value

    return parse


def _any_int(text: str) -> int:
    """argparse type: any integer (a seed)."""
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds > 0, got {text!r}"
        ) from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is ONE line on stderr (no usage block) and exit status 2:
    ``shardflow run: error: argument --workers: expected ... (see shardflow run --help)``.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: Upper bounds of the CLI's sizes: generous, but refusing typos such as 10**9 workers.
MAX_WORKERS = 1024
MAX_BATCH = 1 << 20


def _add_pool_options(p: argparse.ArgumentParser, *, batch_default: int) -> None:
    p.add_argument(
        "--workers",
        type=_bounded_int(1, MAX_WORKERS),
        default=os.cpu_count() or 1,
        metavar="N",
        help="worker threads (shards); default: the CPU count (%(default)s here)",
    )
    p.add_argument(
        "--batch-size",
        type=_bounded_int(1, MAX_BATCH),
        default=batch_default,
        metavar="N",
        help="items per handler call; 1 hands single items (default %(default)s)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (rich if installed, else one plain line); "
        "default: only when stderr is a terminal",
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from shardflow.cli.demo import DemoConfig, run_demo

    return run_demo(
        DemoConfig(
            events=args.events,
            seconds=args.seconds,
            workers=args.workers,
            batch_size=args.batch_size,
            seed=args.seed,
            unordered=args.unordered,
            progress=args.progress,
        )
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from shardflow.cli.run import RunConfig, UsageError, run_file

    try:
        return run_file(
            RunConfig(
                path=args.file,
                handler=args.handler,
                workers=args.workers,
                key=args.key,
                batch_size=args.batch_size,
                format=args.format,
                dead_letter=args.dead_letter,
                progress=args.progress,
            )
        )
    except UsageError as exc:
        parser: argparse.ArgumentParser = args.parser
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


def _sections(text: str) -> list[str]:
    """argparse type: comma-separated section names of ``shardflow.bench.SECTIONS``."""
    from shardflow.bench import SECTIONS

    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(SECTIONS)}; got {text!r}"
        )
    return names


def _cmd_bench(args: argparse.Namespace) -> int:
    # Imported here so that `--help` and option errors do not pay for the benchmark module.
    from shardflow.bench import run_bench

    if args.chart is not None:
        from shardflow.cli.chart import MISSING_MATPLOTLIB, matplotlib_available

        # Refused before anything runs: a long benchmark must not end without its chart.
        if not matplotlib_available():
            args.parser.error(MISSING_MATPLOTLIB)
        if args.sections is not None and "sweep" not in args.sections:
            args.parser.error(
                "argument --chart: the chart draws the sweep section; add it to --sections"
            )
        for path in (args.chart, args.json):
            folder = os.path.dirname(os.path.abspath(path)) if path is not None else "."
            if not os.path.isdir(folder):
                args.parser.error(f"directory {folder!r} of {path!r} does not exist")

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
        print(f"\nwrote {args.json}", file=sys.stdout)
    if args.chart is not None:
        from shardflow.cli.chart import write_chart

        write_chart(report, args.chart)
        print(f"wrote {args.chart}", file=sys.stdout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``shardflow`` argument parser, one subparser per command."""
    parser = _Parser(
        prog="shardflow",
        description="shardflow command line tools.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from shardflow.cli.demo import DEFAULT_EVENTS

    demo = sub.add_parser(
        "demo",
        help="the main job on a built-in workload, with the exact accounting of every event",
        description=(
            "Process a synthetic event stream (zipf-distributed user keys; sha256 + crc32 of "
            "8-24 KiB payloads, which release the GIL, plus Python work) through a keyed "
            "ShardedPool, writing to a flaky downstream (1%% of writes fail, one outage) "
            "behind Retry, Limiter and CircuitBreaker, with dead letters. Prints a progress "
            "bar, a per-shard table, latency percentiles and the accounting of every event "
            "as checked equations."
        ),
        epilog="Exit status: 0 when the accounting balances, 1 when it does not, "
        "2 for a bad option, 130 after Ctrl-C.",
    )
    bound = demo.add_mutually_exclusive_group()
    bound.add_argument(
        "--events",
        type=_bounded_int(1, 1 << 40),
        default=DEFAULT_EVENTS,
        metavar="N",
        help="events to process (default %(default)s: 10-20 s on 2 cores)",
    )
    bound.add_argument(
        "--seconds",
        type=_positive_seconds,
        default=None,
        metavar="S",
        help="run for S seconds instead of a number of events",
    )
    _add_pool_options(demo, batch_default=1)
    demo.add_argument(
        "--seed", type=_any_int, default=1, metavar="INT", help="random seed (default 1)"
    )
    demo.add_argument(
        "--unordered",
        action="store_true",
        help="let idle workers steal keyed events (gives up per-user order)",
    )
    demo.set_defaults(command_fn=_cmd_demo, parser=demo)

    run = sub.add_parser(
        "run",
        help="process a JSON-lines or CSV file of records with your handler",
        description=(
            "Read FILE (one JSON object per line, or CSV with a header row), call HANDLER "
            "on every record (a dict; a list of dicts with --batch-size > 1) from a "
            "ShardedPool, and report counts, rate and a per-shard table. Malformed lines "
            "and handler exceptions go to the dead-letter file with their line numbers "
            "and the error; they never stop the run."
        ),
        epilog="Exit status: 0 when every record was processed; 1 when some lines went to "
        "the dead-letter file; 2 when the run could not start (bad option, missing file, "
        "unimportable handler); 130 after Ctrl-C.",
    )
    run.add_argument("file", metavar="FILE", help="the input file")
    run.add_argument(
        "--handler",
        required=True,
        metavar="MODULE:FUNCTION",
        help="the function to call with each record, imported with the current directory "
        "on sys.path (e.g. jobs:handle)",
    )
    run.add_argument(
        "--key",
        default=None,
        metavar="FIELD",
        help="route records by this field: records with the same value are handled in file "
        "order (default: round-robin)",
    )
    _add_pool_options(run, batch_default=1)
    run.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        default=None,
        help="input format (default: csv for *.csv, else jsonl)",
    )
    run.add_argument(
        "--dead-letter",
        default=None,
        metavar="PATH",
        help="where malformed lines and failed records go, one JSON object per line "
        "(default: FILE.dead.jsonl; rewritten on every run)",
    )
    run.set_defaults(command_fn=_cmd_run, parser=run)

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
        "stealing, latency, reuse, pipeline, executor, process, columnar, sweep, ray "
        "(default: all)",
    )
    bench.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="also write the full report (medians, samples, ratios, targets) as JSON",
    )
    bench.add_argument(
        "--chart",
        metavar="FILE.png",
        default=None,
        help="also draw the sweep section (items/s against workers and against batch "
        "size, ShardedPool vs stdlib thread pools) as a PNG; needs matplotlib "
        "(pip install 'shardflow[plot]')",
    )
    bench.set_defaults(command_fn=_cmd_bench, parser=bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m shardflow`` and the ``shardflow`` script.

    Returns the exit status; argparse exits with status 2 on bad options.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Reported by the command's parser, so the message names it (`shardflow demo:`).
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    command: Callable[[argparse.Namespace], int] = args.command_fn
    try:
        return command(args)
    except KeyboardInterrupt:
        # Ctrl-C outside the commands' own handling (e.g. during a benchmark): no traceback.
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `shardflow demo | head`: the reader left; nothing more to say to it.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the exit flush
        except OSError:
            pass
        return 1
