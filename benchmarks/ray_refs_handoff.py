"""Two unfused Ray stages: outputs through the driver vs. actor to actor by reference.

    python benchmarks/ray_refs_handoff.py [ITEMS] [REPS]

Stage 1 (1 actor) makes a 1,000-byte payload per item; stage 2 (2 actors) is keyed
differently (``item[0] % 97``), so the stages do not fuse. ``Pipeline(object_refs=True)``
moves stage 1's outputs to stage 2's actors as object references; ``False`` brings them
to the driver, which submits them to stage 2 (the path before). One local cluster (2
CPUs, 127.0.0.1), started once; each run builds a new pipeline (its actors start), so a
tiny run of each mode is subtracted to report the steady state. Per run: wall time,
items/s, driver CPU (``getrusage(RUSAGE_SELF)``: every thread of this process, Ray's
included) per item. Modes interleaved; medians and same-run ratios printed.
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


def run(backend: Any, refs: bool, n: int) -> tuple[float, float]:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    p = (
        shardflow.Pipeline(range(n), backend=backend, object_refs=refs)
        .map(make_payload, workers=1)
        .map(size, workers=2, key=key2)
    )
    report = p.run()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    assert report.balanced and report.results == n, report
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return wall, cpu


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 else 100_000
    reps = int(argv[2]) if len(argv) > 2 else 3
    small = 1000
    backend = RayBackend(batch_size=1000, num_cpus_per_shard=0.5)
    t0 = time.perf_counter()
    ray = backend.ensure_ray()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    print(f"cluster start-up {time.perf_counter() - t0:.2f} s", flush=True)
    for refs in (True, False):  # warm-up: worker processes, imports
        run(backend, refs, small)
    rows: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for rep in range(reps):
        for refs in (True, False) if rep % 2 == 0 else (False, True):
            w0, c0 = run(backend, refs, small)
            w1, c1 = run(backend, refs, n)
            steady_w = (w1 - w0) / (n - small)
            steady_c = (c1 - c0) / (n - small)
            rows[refs].append((steady_w, steady_c))
            mode = "refs  " if refs else "driver"
            print(
                f"{mode} n={n}: wall {w1:.2f} s, {n / w1:,.0f} items/s overall; steady "
                f"{1 / steady_w:,.0f} items/s, driver CPU {steady_c * 1e6:.2f} us/item "
                f"(overall {c1 / n * 1e6:.2f})",
                flush=True,
            )
    med = {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
        for k, v in rows.items()
    }
    print(
        f"median steady: refs {1 / med[True][0]:,.0f} items/s, {med[True][1] * 1e6:.2f} us "
        f"CPU/item; driver {1 / med[False][0]:,.0f} items/s, {med[False][1] * 1e6:.2f} us "
        f"CPU/item; throughput ratio {med[False][0] / med[True][0]:.2f}x, driver CPU ratio "
        f"{med[True][1] / med[False][1]:.2f}x"
    )
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
