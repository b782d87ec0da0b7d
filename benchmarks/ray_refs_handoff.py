"""Two unfused Ray stages: outputs through the driver vs. actor to actor by reference.

    python benchmarks/ray_refs_handoff.py [ITEMS] [REPS]

Stage 1 (1 actor) makes a 1,000-byte payload per item; stage 2 (2 actors) is keyed
differently (``item[0] % 97``), so the stages do not fuse. ``Pipeline(object_refs=True)``
moves stage 1's outputs to stage 2's actors as object references; ``False`` brings them
to the driver, which submits them to stage 2 (the path before). One local cluster (2
CPUs, 127.0.0.1), started once; each run builds a new pipeline, and its time includes
starting its actors (under a second, noisy on a loaded machine). Per run: wall time,
items/s, driver CPU (``getrusage(RUSAGE_SELF)``: every thread of this process, Ray's
included) per item. A third mode, ``fused`` (stage 2 unkeyed on stage 1's actor, no
hand-off), is the floor: the driver's cost of the source and stage 1. Modes rotate each
repetition; medians and same-run ratios printed.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Any

import shardflow
from shardflow.backends import RayBackend

PAYLOAD = 1000


def make_payload(x: int) -> tuple[int, bytes]:
    return (x, b"x" * PAYLOAD)


def key2(t: tuple[int, bytes]) -> int:
    return t[0] % 97


def size(t: tuple[int, bytes]) -> int:
    return len(t[1])


MODES = ("refs", "driver", "fused")


def run(backend: Any, mode: str, n: int) -> tuple[float, float]:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    p = shardflow.Pipeline(range(n), backend=backend, object_refs=mode == "refs")
    p.map(make_payload, workers=1)
    if mode == "fused":
        # The control: stage 2 unkeyed on stage 1's sharding fuses into its actor (no
        # hand-off at all): what the driver costs for the source and stage 1 alone.
        p.map(size, workers=1)
    else:
        p.map(size, workers=2, key=key2)
    report = p.run()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    assert report.balanced and report.results == n, report
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return wall, cpu


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 else 100_000
    reps = int(argv[2]) if len(argv) > 2 else 3
    small = 1000  # warm-up runs
    backend = RayBackend(batch_size=1000, num_cpus_per_shard=0.5)
    t0 = time.perf_counter()
    ray = backend.ensure_ray()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    print(f"cluster start-up {time.perf_counter() - t0:.2f} s", flush=True)
    for mode in MODES:  # warm-up: worker processes, imports
        run(backend, mode, small)
    rows: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    for rep in range(reps):
        for mode in MODES[rep % 3 :] + MODES[: rep % 3]:  # rotate the order
            wall, cpu = run(backend, mode, n)
            rows[mode].append((wall, cpu))
            print(
                f"{mode:6} n={n}: wall {wall:.2f} s, {n / wall:,.0f} items/s, driver CPU "
                f"{cpu / n * 1e6:.2f} us/item",
                flush=True,
            )
    med = {m: tuple(statistics.median(r[k] for r in v) for k in range(2)) for m, v in rows.items()}
    for m in MODES:
        w, c = med[m]
        print(f"median {m:6}: {n / w:,.0f} items/s, {c / n * 1e6:.2f} us driver CPU/item")
    r, d = med["refs"], med["driver"]
    print(f"refs vs driver: throughput {d[0] / r[0]:.2f}x, driver CPU per item {r[1] / d[1]:.2f}x")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
