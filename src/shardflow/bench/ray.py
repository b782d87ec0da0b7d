"""Section ``ray``: a pool on ``RayBackend`` against Ray's own ways of doing the same job.

One local Ray cluster is started once for the section (2 CPUs, loopback, 200 MiB object
store; its start-up time is reported apart) and every contender moves no-op items,
1,000 per actor call, over 2 actors, interleaved round by round:

* ``shardflow RayBackend``: ``ShardedPool(noop, workers=2, backend=RayBackend(...))``
  fed by ``submit_many`` (round-robin), then ``flush()`` (which returns once every
  batch's reply is in); ``... keyed`` routes by ``key=x % 1000`` (per-key order kept);
* ``hand-written ray.wait window``: 2 actors, lists of 1,000 items, at most 2 calls in
  flight per actor (``ray.wait`` on the oldest), the ceiling of the approach;
* ``ActorPool.map_unordered``: ``ray.util.ActorPool`` over 1,000-item chunks;
* ``multiprocessing.Pool.imap``: ``ray.util.multiprocessing.Pool(2).imap(noop, ...,
  chunksize=1000)``;
* ``Ray Data map_batches`` (when ``ray.data`` imports: it needs pandas and pyarrow, which
  the bench does not install): ``ray.data.range(n).map_batches(Noop, batch_size=1000,
  concurrency=2, num_cpus=0)`` consumed with ``iter_batches``; its actors are started by
  every execution, as a user's pipeline would be, so that cost is in its figure.

Beside items/s, each contender's driver CPU per 1,000-item batch (``time.process_time``
over the run: every thread of this process, Ray's own included; Ray Data and
``multiprocessing.Pool`` do part of their work elsewhere), the steadier figure on a
shared machine.

Every actor loops over its list calling ``noop(x)`` per item. Actors ask for no CPU
(``num_cpus=0``) so that the contenders never wait for each other's reservations. Every
contender keeps its actors (and the pools their shard actors) across rounds: pool and
actor construction, and Ray starting worker processes, are excluded from the timings.

Then the latency a pool adds to one batch: ``submit_many`` of 1,000 items + ``flush()``
on a one-shard pool, against a bare ``ray.get(actor.run.remote(batch))`` round trip of
the same list, interleaved, p50 of each. And a keyed run in which shard 0's actor is
killed (``ray.kill``) half-way: items lost, per-key inversions, accounting, and the time
from the kill to the re-sent batch's reply. Last (not with ``--quick``), in a fresh
interpreter, the same on a ``ray.cluster_utils.Cluster`` whose node running shard 0's
actor is removed half-way (``node_loss_run``).

Skipped with a note when Ray is not installed (``pip install 'shardflow[ray]'``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from shardflow.bench.common import (
    BenchContext,
    SectionResult,
    Target,
    fmt_rate,
    interleaved,
    noop,
    print_table,
    quantile,
    safe_ratio,
)

CHUNK = 1000
ACTORS = 2
WINDOW = 2  # calls in flight per actor, hand-written contender
#: ``python -c NODE_LOSS_CODE ITEMS`` runs ``node_loss_run`` in a fresh interpreter.
NODE_LOSS_CODE = (
    "import sys; from shardflow.bench.ray import main; "
    "sys.exit(main(['--node-loss', *sys.argv[1:]]))"
)


class _NoopBatches:
    """Ray Data's map_batches contender: ``noop`` per row, one count row out."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        ids = batch["id"].tolist()
        for x in ids:
            noop(x)
        return {"n": np.array([len(ids)])}


def _ray_data_available() -> bool:
    try:
        importlib.import_module("ray.data")
        importlib.import_module("pyarrow")
    except Exception:
        return False
    return True


class _NoopActor:
    def run(self, items: list[Any]) -> int:
        for x in items:
            noop(x)
        return len(items)

    def ping(self) -> int:
        return os.getpid()


def _ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def run_section(ctx: BenchContext) -> SectionResult:
    if not _ray_available():
        print("\nRay: skipped (ray is not installed: pip install 'shardflow[ray]')", file=ctx.out)
        return SectionResult(
            "ray", {"skipped": "ray is not installed"}, notes=["ray section skipped: no ray"]
        )
    data, targets = _section_ray(ctx, ctx.out)
    return SectionResult("ray", data, targets)


def _section_ray(ctx: BenchContext, out: TextIO) -> tuple[dict[str, Any], list[Target]]:
    from shardflow.backends.ray import RayBackend

    backend = RayBackend(num_cpus_per_shard=0, batch_size=CHUNK, num_cpus=2)
    t0 = time.perf_counter()
    ray: Any = backend.ensure_ray()
    startup = time.perf_counter() - t0
    try:
        data, targets = _measure(ctx, out, ray, backend, startup)
    finally:
        ray.shutdown()
    if ctx.quick:
        print("  node removed: skipped with --quick (it starts a 3-node cluster)", file=out)
        return data, targets
    node = _node_loss_in_subprocess(200_000)
    data["node_loss"] = node
    if "error" in node:
        print(f"  node removed: failed: {node['error']}", file=out)
        return data, targets
    print(
        f"  node removed (ray.cluster_utils.Cluster: head + 2 worker nodes on 127.0.0.1; "
        f"keyed, {node['items']:,} items): lost {node['lost']}, per-key inversions "
        f"{node['inversions']}, processed {node['processed']:,} (exact: {node['exact']}), "
        f"re-sent {node['resent']}, resumed {node['resume_s']:.3f} s after the removal",
        file=out,
    )
    targets += [
        Target("node removed: items lost", node["lost"], "==", 0, unit="items"),
        Target("node removed: per-key inversions", node["inversions"], "==", 0, unit="inversions"),
    ]
    return data, targets


def _node_loss_in_subprocess(n: int) -> dict[str, Any]:
    """``node_loss_run(n)`` in a fresh interpreter (it needs Ray uninitialized)."""
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", NODE_LOSS_CODE, str(n)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1:]
            or ["exit status " + str(proc.returncode)]
        }
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _measure(
    ctx: BenchContext, out: TextIO, ray: Any, backend: Any, startup: float
) -> tuple[dict[str, Any], list[Target]]:
    import shardflow

    n_items = 50_000 if ctx.quick else max(ctx.items, 200_000)
    actor_cls = ray.remote(num_cpus=0, max_concurrency=1)(_NoopActor)
    t0 = time.perf_counter()
    actors = [actor_cls.remote() for _ in range(ACTORS)]
    ray.get([a.ping.remote() for a in actors])
    actors_start = time.perf_counter() - t0
    mp_pool = importlib.import_module("ray.util.multiprocessing").Pool(ACTORS)
    actor_pool = ray.util.ActorPool(actors)

    # Every contender keeps its actors across rounds (the pools too: a round is
    # submit_many + flush, which returns once every batch's reply is in), so that no
    # timing includes Ray starting worker processes.
    pools: dict[bool, shardflow.ShardedPool[int]] = {
        keyed: shardflow.ShardedPool(
            noop,
            workers=ACTORS,
            key=(lambda x: x % 1000) if keyed else None,
            backend=backend,
        )
        for keyed in (False, True)
    }
    time.sleep(1.0)  # let Ray finish starting the processes it keeps in reserve

    def pool_run(n: int, keyed: bool) -> tuple[int, float]:
        pool = pools[keyed]
        before = pool.metrics().processed
        t = time.perf_counter()
        pool.submit_many(range(n))
        pool.flush()
        dt = time.perf_counter() - t
        done = pool.metrics().processed - before
        if done != n:
            raise RuntimeError(f"RayBackend pool processed {done} of {n}")
        return n, dt

    def hand_written(n: int) -> tuple[int, float]:
        t = time.perf_counter()
        inflight: list[list[Any]] = [[] for _ in actors]
        done = 0
        for i, start in enumerate(range(0, n, CHUNK)):
            k = i % ACTORS
            if len(inflight[k]) >= WINDOW:
                ready, _ = ray.wait(inflight[k][:1], num_returns=1)
                done += ray.get(ready[0])
                inflight[k].pop(0)
            inflight[k].append(actors[k].run.remote(list(range(start, min(start + CHUNK, n)))))
        for refs in inflight:
            done += sum(ray.get(refs))
        dt = time.perf_counter() - t
        if done != n:
            raise RuntimeError(f"hand-written contender moved {done} of {n}")
        return n, dt

    def actorpool(n: int) -> tuple[int, float]:
        t = time.perf_counter()
        chunks = (list(range(s, min(s + CHUNK, n))) for s in range(0, n, CHUNK))
        done = sum(actor_pool.map_unordered(lambda a, v: a.run.remote(v), chunks))
        dt = time.perf_counter() - t
        if done != n:
            raise RuntimeError(f"ActorPool contender moved {done} of {n}")
        return n, dt

    def mp_imap(n: int) -> tuple[int, float]:
        t = time.perf_counter()
        done = sum(1 for _ in mp_pool.imap(noop, range(n), chunksize=CHUNK))
        dt = time.perf_counter() - t
        if done != n:
            raise RuntimeError(f"multiprocessing.Pool contender moved {done} of {n}")
        return n, dt

    steady: list[float] = []  # Ray Data's rate after its first batch (start-up excluded)

    def ray_data(n: int) -> tuple[int, float]:
        rd = ray.data
        t = time.perf_counter()
        ds = rd.range(n).map_batches(
            _NoopBatches,
            batch_size=CHUNK,
            compute=rd.ActorPoolStrategy(size=ACTORS),
            num_cpus=0,
        )
        done = first_n = 0
        t_first = 0.0
        for b in ds.iter_batches(batch_size=None):
            done += int(b["n"].sum())
            if not t_first:
                t_first, first_n = time.perf_counter(), done
        dt = time.perf_counter() - t
        if done != n:
            raise RuntimeError(f"Ray Data contender moved {done} of {n}")
        if done > first_n:
            steady.append((done - first_n) / max(time.perf_counter() - t_first, 1e-9))
        return n, dt

    runners: dict[str, Callable[[int], tuple[int, float]]] = {
        "shardflow RayBackend": lambda n: pool_run(n, False),
        "shardflow RayBackend keyed": lambda n: pool_run(n, True),
        "hand-written ray.wait window": hand_written,
        "ActorPool.map_unordered": actorpool,
        "multiprocessing.Pool.imap": mp_imap,
    }
    if _ray_data_available():
        importlib.import_module("ray.data").DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        runners["Ray Data map_batches"] = ray_data
    else:
        print("  (Ray Data not measured: pip install pandas pyarrow to add it)", file=out)
    # The driver's CPU per batch (every thread of this process, Ray's own included): on a
    # shared machine a steadier figure than items/s, which swings with what else runs.
    cpu_us: dict[str, list[float]] = {name: [] for name in runners}

    def with_cpu(name: str, run: Callable[[int], tuple[int, float]]) -> Callable[..., Any]:
        def measured(n: int) -> tuple[int, float]:
            c0 = time.process_time()
            moved, dt = run(n)
            cpu_us[name].append((time.process_time() - c0) / max(moved / CHUNK, 1) * 1e6)
            return moved, dt

        return measured

    rates = interleaved(
        {name: with_cpu(name, run) for name, run in runners.items()},
        lambda name: n_items,
        ctx.repeats,
    )
    med = {name: statistics.median(r) for name, r in rates.items()}
    cpu_med = {name: statistics.median(c) for name, c in cpu_us.items()}
    ceiling = med["hand-written ray.wait window"]

    print(
        f"\nRay (local cluster, {ACTORS} actors, {CHUNK:,} no-op items per call, "
        f"{n_items:,} items x {ctx.repeats} rounds; ray.init {startup:.2f} s and "
        f"{ACTORS} actors {actors_start:.2f} s, not timed):",
        file=out,
    )
    cpu_ceiling = cpu_med["hand-written ray.wait window"]
    rows = [["contender", "items/s", "vs hand-written", "driver CPU/batch", "CPU vs hand-written"]]
    for name in runners:
        rows.append(
            [
                name,
                fmt_rate(med[name]),
                f"{safe_ratio(med[name], ceiling):.2f}x",
                f"{cpu_med[name]:.0f} us",
                f"{safe_ratio(cpu_med[name], cpu_ceiling):.2f}x",
            ]
        )
    print_table(rows, out)
    if steady:
        print(
            f"  Ray Data starts its actor pool for every execution (included above); after "
            f"its first batch it ran at {fmt_rate(statistics.median(steady))} (median)",
            file=out,
        )

    lat = _batch_latency(ray, backend, actors[0], 30 if ctx.quick else 200)
    print(
        f"  added latency per batch ({CHUNK:,} items): pool submit_many+flush p50 "
        f"{lat['pool_p50_ms']:.3f} ms vs bare actor round trip p50 "
        f"{lat['bare_p50_ms']:.3f} ms (+{lat['added_p50_ms']:.3f} ms)",
        file=out,
    )
    kill = _kill_run(ray, backend, 40_000 if ctx.quick else 200_000)
    print(
        f"  actor killed at 50% (keyed, {kill['items']:,} items): lost {kill['lost']}, "
        f"per-key inversions {kill['inversions']}, processed {kill['processed']:,} "
        f"(exact: {kill['exact']}), re-sent {kill['resent']}, resumed "
        f"{kill['resume_s']:.3f} s after the kill",
        file=out,
    )

    mp_pool.terminate()
    for pool in pools.values():
        pool.shutdown()
    for a in actors:
        ray.kill(a)

    pool_rate = med["shardflow RayBackend"]
    targets = [
        Target(
            "RayBackend vs hand-written ray.wait window", safe_ratio(pool_rate, ceiling), ">=", 0.8
        ),
        Target("RayBackend items/s", pool_rate / 1e6, ">=", 1.0, unit="M items/s"),
        Target(
            "RayBackend vs ActorPool.map_unordered",
            safe_ratio(pool_rate, med["ActorPool.map_unordered"]),
            ">=",
            1.0,
        ),
        Target(
            "RayBackend vs multiprocessing.Pool.imap",
            safe_ratio(pool_rate, med["multiprocessing.Pool.imap"]),
            ">=",
            1.0,
        ),
        *(
            [
                Target(
                    "RayBackend vs Ray Data map_batches",
                    safe_ratio(pool_rate, med["Ray Data map_batches"]),
                    ">=",
                    1.0,
                )
            ]
            if "Ray Data map_batches" in med
            else []
        ),
        *(
            [
                Target(
                    "RayBackend vs Ray Data after its start-up",
                    safe_ratio(pool_rate, statistics.median(steady)),
                    ">=",
                    1.0,
                )
            ]
            if steady
            else []
        ),
        Target("RayBackend added latency per batch p50", lat["added_p50_ms"], "<=", 0.5, unit="ms"),
        Target("actor killed at 50%: items lost", kill["lost"], "==", 0, unit="items"),
        Target(
            "actor killed at 50%: per-key inversions",
            kill["inversions"],
            "==",
            0,
            unit="inversions",
        ),
        Target("actor killed at 50%: resumed after", kill["resume_s"], "<=", 1.0, unit="s"),
    ]
    data = {
        "startup_s": startup,
        "actors_start_s": actors_start,
        "items": n_items,
        "chunk": CHUNK,
        "throughput": {
            name: {
                "items_per_s": med[name],
                "samples": rates[name],
                "vs_hand_written": safe_ratio(med[name], ceiling),
                "driver_cpu_us_per_batch": cpu_med[name],
                "driver_cpu_samples": cpu_us[name],
                "driver_cpu_vs_hand_written": safe_ratio(cpu_med[name], cpu_ceiling),
            }
            for name in runners
        },
        "batch_latency": lat,
        "ray_data_steady_items_per_s": statistics.median(steady) if steady else None,
        "kill": kill,
    }
    return data, targets


def _batch_latency(ray: Any, backend: Any, actor: Any, rounds: int) -> dict[str, Any]:
    """p50 of one 1,000-item batch through a one-shard pool (submit_many + flush, which
    returns once the shard's actor replied) against a bare round trip, interleaved."""
    import shardflow

    batch = list(range(CHUNK))
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        noop, workers=1, batch_size=CHUNK, backend=backend
    )
    bare: list[float] = []
    through: list[float] = []
    try:
        for i in range(rounds + 5):
            t = time.perf_counter()
            ray.get(actor.run.remote(batch))
            b = time.perf_counter() - t
            t = time.perf_counter()
            pool.submit_many(batch)
            pool.flush()
            p = time.perf_counter() - t
            if i >= 5:  # warm-up
                bare.append(b * 1e3)
                through.append(p * 1e3)
    finally:
        pool.shutdown()
    bare.sort()
    through.sort()
    return {
        "rounds": rounds,
        "bare_p50_ms": quantile(bare, 0.5),
        "pool_p50_ms": quantile(through, 0.5),
        "added_p50_ms": quantile(through, 0.5) - quantile(bare, 0.5),
        "bare_p99_ms": quantile(bare, 0.99),
        "pool_p99_ms": quantile(through, 0.99),
    }


def _kill_run(ray: Any, backend: Any, n: int) -> dict[str, Any]:
    """A keyed run (1,000 keys) whose handler returns nothing but whose actor-side order
    is checked by the actors themselves: each actor keeps, per key, the last value seen
    and counts values lower than that (inversions); a re-sent batch may repeat values
    (duplicates), which are not inversions. The driver kills shard 0's actor when half
    the items were processed."""
    import shardflow

    checker = ray.remote(num_cpus=0)(_OrderChecker).remote()
    ray.get(checker.ping.remote())
    handler = _CheckedBatch(checker)
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        handler,
        workers=ACTORS,
        key=lambda x: x % 1000,
        batch_size=CHUNK,
        backend=backend,
    )
    runner: Any = pool._runner  # the pool's own actors: the ones this run may kill
    feeder = threading.Thread(target=pool.submit_many, args=(range(n),), daemon=True)
    feeder.start()
    while pool.metrics().processed < n // 2:
        time.sleep(0.001)
    killed_at = time.monotonic()
    ray.kill(runner.links[0].actor)
    feeder.join()
    pool.shutdown()
    resumed = runner.links[0].recovered_at
    m = pool.metrics()
    seen, inversions, duplicates = ray.get(checker.result.remote())
    ray.kill(checker)
    stats = runner.stats()
    return {
        "items": n,
        "lost": n - seen,
        "inversions": inversions,
        "duplicates": duplicates,
        "processed": m.processed,
        "exact": m.submitted == n and m.processed == n and m.failed == 0,
        "resent": sum(int(s["resent"] or 0) for s in stats),
        "resume_s": (resumed - killed_at) if resumed else float("inf"),
    }


class _OrderChecker:
    def __init__(self) -> None:
        self.last: dict[int, int] = {}
        self.seen: set[int] = set()
        self.inversions = 0
        self.duplicates = 0

    def ping(self) -> int:
        return os.getpid()

    def record(self, batch: list[int]) -> None:
        for x in batch:
            if x in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(x)
            key = x % 1000
            if x < self.last.get(key, -1):
                self.inversions += 1
            self.last[key] = max(x, self.last.get(key, -1))

    def result(self) -> tuple[int, int, int]:
        return len(self.seen), self.inversions, self.duplicates


class _CheckedBatch:
    """The batch handler of the kill runs: hands the batch to the order checker and waits
    (so that the checker sees batches in the order the shard ran them), then sleeps
    ``delay`` seconds (work that outlasts the failure detection)."""

    def __init__(self, checker: Any, delay: float = 0.0) -> None:
        self.checker = checker
        self.delay = delay

    def __call__(self, batch: list[int]) -> None:
        ray = importlib.import_module("ray")
        ray.get(self.checker.record.remote(list(batch)))
        if self.delay:
            time.sleep(self.delay)


def node_loss_run(n: int = 100_000, batch_delay: float = 0.08) -> dict[str, Any]:
    """A keyed run on a two-worker-node ``ray.cluster_utils.Cluster`` on this machine
    (all on 127.0.0.1): the shard actors live on the two worker nodes (custom resource
    ``slot``), and the node running shard 0's actor is removed (``allow_graceful=False``)
    half-way. Items lost, per-key inversions, accounting, re-sends and the time from the
    removal to the re-sent batch's reply. Each batch takes ``batch_delay`` seconds more
    on its actor, so that the second half outlasts the ~1 s Ray takes to declare the
    node dead (a direct actor call does not notice the raylet's death at once).

    Starts and stops its own cluster, so it must run in a process where Ray is not
    initialized (``python -c NODE_LOSS_CODE ITEMS`` prints it as JSON).
    """
    import shardflow
    from shardflow.backends.ray import RayBackend

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray: Any = importlib.import_module("ray")
    constants: Any = importlib.import_module("ray._private.ray_constants")
    constants.ENABLE_RAY_CLUSTER = False  # loopback, even if ray was imported before
    cluster_utils: Any = importlib.import_module("ray.cluster_utils")
    mib = 1024 * 1024
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "resources": {"head": 1},
            "object_store_memory": 100 * mib,
            "include_dashboard": False,
            "_system_config": {
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 100,
                "health_check_failure_threshold": 10,
            },
        },
    )
    try:
        nodes = [
            cluster.add_node(num_cpus=1, resources={"slot": 2}, object_store_memory=100 * mib)
            for _ in range(2)
        ]
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        backend = RayBackend(address=cluster.address, num_cpus_per_shard=0, resources={"slot": 1})
        # The order checker stays on the head node, which is never removed.
        checker = ray.remote(num_cpus=0, resources={"head": 0.01})(_OrderChecker).remote()
        ray.get(checker.ping.remote())
        pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
            _CheckedBatch(checker, batch_delay),
            workers=ACTORS,
            key=lambda x: x % 1000,
            batch_size=CHUNK,
            backend=backend,
        )
        runner: Any = pool._runner
        feeder = threading.Thread(target=pool.submit_many, args=(range(n),), daemon=True)
        feeder.start()
        while pool.metrics().processed < n // 2:
            time.sleep(0.001)
        victim = _node_of_pid(nodes, runner.links[0].pid)
        removed_at = time.monotonic()
        cluster.remove_node(victim, allow_graceful=False)
        feeder.join()
        pool.shutdown()
        resumed = runner.links[0].recovered_at
        m = pool.metrics()
        seen, inversions, duplicates = ray.get(checker.result.remote())
        stats = runner.stats()
        return {
            "items": n,
            "lost": n - seen,
            "inversions": inversions,
            "duplicates": duplicates,
            "processed": m.processed,
            "exact": m.submitted == n and m.processed == n and m.failed == 0,
            "resent": sum(int(s["resent"] or 0) for s in stats),
            "replaced": sum(int(s["replaced"] or 0) for s in stats),
            "resume_s": (resumed - removed_at) if resumed else float("inf"),
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


def _node_of_pid(nodes: list[Any], pid: int | None) -> Any:
    """The cluster node whose raylet started the worker process ``pid`` (its parent)."""
    with open(f"/proc/{pid}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    for node in nodes:
        for info in node.all_processes.get("raylet", []):
            if info.process.pid == ppid:
                return node
    raise RuntimeError(f"no worker node runs the process {pid}")


def main(argv: list[str]) -> int:
    """``python -c 'from shardflow.bench.ray import main; main(["--node-loss", N])'``:
    prints ``node_loss_run(N)`` as JSON."""
    import json

    if argv[:1] != ["--node-loss"] or len(argv) > 2:
        raise SystemExit("usage: main(['--node-loss', ITEMS])")
    print(json.dumps(node_loss_run(*(int(a) for a in argv[1:]))))
    return 0
