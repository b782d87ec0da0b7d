#!/usr/bin/env python3
"""3-key dict records through a 2-worker ``ShardedPool(backend="process")``: pickle
against ``ProcessBackend(serializer=...)`` with msgspec's MessagePack and orjson (each
where installed; neither is a dependency of shardflow), items only (a no-op handler) and
with the values coming back (an identity handler and ``on_results``), plus the pickle and
msgspec floors (one dumps + loads of the whole list, in this process).

    nice python benchmarks/serializer_dicts.py                 # 200,000 records x 7 rounds
    nice python benchmarks/serializer_dicts.py --items 50000 --rounds 5

Every contender runs once per round, in the same order, on pools started before the
rounds; the report gives each one's median items/s and its ratio to the pickle pool of
the same kind (items only, or with values), and every round's figure.
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import statistics
import time
from collections.abc import Callable
from typing import Any

import shardflow
from shardflow.backends import ProcessBackend, Serializer
from shardflow.bench.process import _records, noop


def ident(record: Any) -> Any:
    return record


def serializers() -> dict[str, Serializer | None]:
    found: dict[str, Serializer | None] = {"pickle": None}
    try:
        import msgspec

        found["msgspec.msgpack"] = Serializer(msgspec.msgpack.encode, msgspec.msgpack.decode)
    except ImportError:
        print("(msgspec not installed)")
    try:
        import orjson

        found["orjson"] = Serializer(orjson.dumps, orjson.loads)
    except ImportError:
        print("(orjson not installed)")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    ctx = multiprocessing.get_context("forkserver")
    records = _records(args.items)
    contenders: dict[str, Callable[[list[Any]], float]] = {}
    pools: list[shardflow.ShardedPool[Any]] = []
    for values in (False, True):
        for name, ser in serializers().items():
            pool: shardflow.ShardedPool[Any] = shardflow.ShardedPool(
                ident if values else noop,
                workers=2,
                backend=ProcessBackend(mp_context=ctx, serializer=ser),
                on_results=(lambda items, vals: None) if values else None,
            )
            pools.append(pool)

            def run(recs: list[Any], pool: shardflow.ShardedPool[Any] = pool) -> float:
                t0 = time.perf_counter()
                pool.submit_many(recs)
                pool.flush()
                return len(recs) / (time.perf_counter() - t0)

            contenders[name + (" +values" if values else "")] = run

    def pickle_floor(recs: list[Any]) -> float:
        t0 = time.perf_counter()
        pickle.loads(pickle.dumps(recs, 5))
        return len(recs) / (time.perf_counter() - t0)

    contenders["pickle floor (dumps+loads)"] = pickle_floor
    try:
        import msgspec

        def msgspec_floor(recs: list[Any]) -> float:
            t0 = time.perf_counter()
            msgspec.msgpack.decode(msgspec.msgpack.encode(recs))
            return len(recs) / (time.perf_counter() - t0)

        contenders["msgspec floor (encode+decode)"] = msgspec_floor
    except ImportError:
        pass
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            rates[name].append(run(records))
    for pool in pools:
        pool.shutdown()
    base = statistics.median(rates["pickle"])
    base_values = statistics.median(rates["pickle +values"])
    for name, got in rates.items():
        med = statistics.median(got)
        ref = base_values if name.endswith("+values") else base
        each = " ".join(f"{x / 1e6:.2f}" for x in got)
        print(f"{name:32s} {med / 1e6:6.2f} M/s  {med / ref:5.2f}x pickle pool   rounds: {each}")


if __name__ == "__main__":
    main()
