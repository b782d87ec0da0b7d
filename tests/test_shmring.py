"""The shared-memory ring (``shardflow._shmring``): records, wrap-around, full/empty,
timeouts, closing, and two real processes (fork, spawn, an fd passed to a subprocess),
including a peer SIGKILLed while the other side waits. Nothing may be left in /dev/shm.

The native side (the C ring under TSan/ASan, threads and a forked process) is in
tests/native/stress.c (scenario ``shmring``); the park protocol is model-checked in
tools/model/shmpark.pml. Both run from tests/test_native.py.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from shardflow._shmring import (
    PeerDead,
    RecordTooLarge,
    RingClosed,
    RingError,
    RingTimeout,
    ShmRing,
)

WAIT = 30.0  # a bound only a broken run reaches

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="fd-backed shared memory")
pytestmark = posix_only


def _shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:  # pragma: no cover - macOS has no /dev/shm directory
        return set()


@pytest.fixture(autouse=True)
def no_dev_shm_leftovers() -> Iterator[None]:
    """Every test: nothing new in /dev/shm afterwards (nor ever named there on Linux)."""
    before = _shm_entries()
    yield
    new = {e for e in _shm_entries() - before if "shardflow" in e}
    assert not new, f"left in /dev/shm: {sorted(new)}"


def _payload(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


# ------------------------------------------------------------------ one process


def test_records_keep_bytes_tags_and_order_across_many_wraps() -> None:
    rng = random.Random(1)
    with ShmRing.create(1024) as ring:
        assert ring.capacity == 1024 and ring.max_record == 1016
        expected: list[tuple[bytes, int]] = []
        got: list[tuple[bytes, int]] = []
        for _ in range(3000):
            # a random mix of puts and gets keeps the ring at varying depths
            if rng.random() < 0.55:
                data = _payload(rng, rng.choice([0, 1, 7, 8, 9, rng.randrange(0, 400)]))
                tag = rng.randrange(0, 2**32 - 1)
                try:
                    ring.put(data, timeout=0, tag=tag)
                except RingTimeout:
                    continue
                expected.append((data, tag))
            elif len(got) < len(expected):
                got.append((ring.get_bytes(timeout=0), ring.last_tag))
        while len(got) < len(expected):
            got.append((ring.get_bytes(timeout=0), ring.last_tag))
        assert got == expected
        assert len(ring) == 0
        st = ring.stats()
        assert st["pads"] > 10  # the records did wrap, many times
        assert st["records_put"] == st["records_got"] == len(expected)
        assert st["bytes_put"] == st["bytes_got"] == sum(len(d) for d, _ in expected)
        with pytest.raises(RingTimeout, match="empty"):
            ring.get_bytes(timeout=0)


def test_bytes_like_inputs_and_pickled_objects() -> None:
    with ShmRing.create(4096) as ring:
        ring.put(bytearray(b"abc"))
        ring.put(memoryview(b"xxdefxx")[2:5])
        n = ring.put_pickled({"k": [1, 2.5, "s"], "t": (None, b"b")}, tag=3)
        assert n == len(pickle.dumps({"k": [1, 2.5, "s"], "t": (None, b"b")}, protocol=5))
        assert ring.get_bytes() == b"abc"
        assert ring.get_bytes() == b"def"
        assert ring.get() == {"k": [1, 2.5, "s"], "t": (None, b"b")}
        assert ring.last_tag == 3
        with pytest.raises(TypeError):
            ring.put("text")  # type: ignore[arg-type]
        with pytest.raises(BufferError):
            ring.put(memoryview(b"abcdef")[::2])  # not contiguous


def test_a_record_that_cannot_unpickle_is_consumed_and_raises() -> None:
    with ShmRing.create(256) as ring:
        ring.put(b"not a pickle")
        ring.put_pickled("next")
        with pytest.raises(pickle.UnpicklingError):
            ring.get()
        assert ring.get() == "next"


def test_record_larger_than_the_ring_is_a_clear_error_and_the_largest_fits() -> None:
    with ShmRing.create(256) as ring:
        with pytest.raises(RecordTooLarge, match=r"249 bytes can never fit.*largest record is 248"):
            ring.put(bytes(249))
        assert isinstance(RecordTooLarge("x"), ValueError)
        with pytest.raises(RecordTooLarge):
            ring.put_pickled(list(range(1000)))
        ring.put(bytes(range(248)))  # fresh ring: tail at offset 0, the whole area fits
        assert ring.get_bytes() == bytes(range(248))
        assert ring.stats()["records_put"] == 1


def test_full_then_room_after_a_get() -> None:
    with ShmRing.create(128) as ring:
        for i in range(4):  # 4 records of 8 + 24 bytes fill 128
            ring.put(bytes([i]) * 24, timeout=0)
        with pytest.raises(RingTimeout, match="full"):
            ring.put(b"z", timeout=0)
        t0 = time.monotonic()
        with pytest.raises(RingTimeout, match="no room"):
            ring.put(b"z", timeout=0.05)
        assert time.monotonic() - t0 >= 0.045
        assert ring.get_bytes() == bytes([0]) * 24
        ring.put(b"z", timeout=0)
        assert [ring.get_bytes() for _ in range(4)] == [bytes([i]) * 24 for i in (1, 2, 3)] + [b"z"]


def test_empty_get_waits_for_its_timeout() -> None:
    with ShmRing.create(64) as ring:
        t0 = time.monotonic()
        with pytest.raises(RingTimeout, match=r"within 0\.05"):
            ring.get(timeout=0.05)
        assert time.monotonic() - t0 >= 0.045
        assert isinstance(RingTimeout("x"), TimeoutError)


def test_two_threads_as_producer_and_consumer_with_parking() -> None:
    rng = random.Random(2)
    records = [_payload(rng, rng.randrange(0, 300)) for _ in range(5000)]
    ring = ShmRing.create(1024, spin_us=0)  # no spin: every wait parks on the futex
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for r in records:
                ring.put(r, timeout=WAIT)
            ring.close_writer()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=produce)
    t.start()
    got = []
    while True:
        try:
            got.append(ring.get_bytes(timeout=WAIT))
        except RingClosed:
            break
    t.join(WAIT)
    assert not errors
    assert got == records
    st = ring.stats()
    assert st["consumer_parks"] + st["producer_parks"] > 0  # the futex path was taken
    ring.close()


def test_a_quiet_put_leaves_a_sleeping_reader_asleep_until_a_waking_put() -> None:
    # No spin and long park slices: a reader that waits is asleep on the futex.
    ring = ShmRing.create(1024, spin_us=0, check_interval=30)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(ring.get_bytes(timeout=WAIT) for _ in "ab"))
    reader.start()
    deadline = time.monotonic() + WAIT
    while ring.stats()["consumer_parks"] == 0:  # the reader's own handle: parked once
        assert time.monotonic() < deadline
        time.sleep(0.001)
    ring.put(b"a", wake=False)
    assert ring.stats()["wakes_sent_to_reader"] == 0  # published, nobody woken
    ring.put(b"b")  # this one checks, finds the reader asleep and wakes it
    reader.join(WAIT)
    assert got == [b"a", b"b"]
    assert ring.stats()["wakes_sent_to_reader"] == 1
    assert ring.last_len == 1
    ring.close()


def test_reader_parked_shows_a_waiting_reader_asleep_and_a_served_one_awake() -> None:
    # A spin of 1 ms, then the park: the flag is observed from the writer's side.
    ring = ShmRing.create(1024, spin_us=1000, check_interval=30)
    assert not ring.reader_parked  # nobody waits
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(ring.get_bytes(timeout=WAIT)))
    reader.start()
    deadline = time.monotonic() + WAIT
    while not ring.reader_parked:  # the spin is bounded: the reader ends up parked
        assert time.monotonic() < deadline
        time.sleep(0.001)
    ring.put(b"x")
    reader.join(WAIT)
    assert got == [b"x"]
    assert not ring.reader_parked  # woken, and the flag cleared on the way out
    ring.close()
    with pytest.raises(ValueError, match="closed ShmRing"):
        ring.reader_parked  # noqa: B018


def test_a_writer_that_waits_for_room_wakes_a_reader_asleep_on_quiet_records() -> None:
    # The ring fills with quiet puts while the reader sleeps (long park slices): the
    # writer's next put must wait for room, which only the reader can make. Before it
    # parks, the writer wakes the reader (step S of _shmring.h); without that both would
    # sleep until the reader's 30 s slice ends, and the put below would time out.
    ring = ShmRing.create(1024, spin_us=0, check_interval=30)
    got: list[bytes] = []

    def read() -> None:
        while True:
            try:
                got.append(ring.get_bytes(timeout=WAIT))
            except RingClosed:
                return

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + WAIT
    while ring.stats()["consumer_parks"] == 0:  # the reader is asleep on the futex
        assert time.monotonic() < deadline
        time.sleep(0.001)
    sent = []
    while True:
        record = b"%03d" % len(sent) * 40  # 128-byte records: 8 fill it, no padding
        try:
            ring.put(record, timeout=0, wake=False)
        except RingTimeout:
            break
        sent.append(record)
    assert len(sent) > 1 and ring.stats()["wakes_sent_to_reader"] == 0
    last = b"last" * 30
    ring.put(last, timeout=WAIT / 3, wake=False)  # waits for room: the reader must wake
    assert ring.stats()["wakes_sent_to_reader"] >= 1
    ring.close_writer()
    reader.join(WAIT)
    assert got == [*sent, last]
    ring.close()


def test_close_writer_reader_and_peer() -> None:
    with ShmRing.create(256) as ring:
        ring.put(b"a")
        ring.close_writer()
        assert ring.writer_closed and not ring.reader_closed
        assert ring.get_bytes() == b"a"  # published records are still delivered
        with pytest.raises(RingClosed, match="writer closed"):
            ring.get_bytes()
    with ShmRing.create(256) as ring:
        ring.close_reader()
        with pytest.raises(RingClosed, match="reader closed"):
            ring.put(b"a")
    # close_peer wakes a waiter parked in another thread
    with ShmRing.create(256, spin_us=0) as ring:
        out: list[BaseException] = []

        def wait() -> None:
            try:
                ring.get(timeout=WAIT)
            except BaseException as exc:
                out.append(exc)

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.05)
        ring.close_peer()
        t.join(WAIT)
        assert not t.is_alive() and len(out) == 1 and isinstance(out[0], RingClosed)


def test_a_second_concurrent_producer_is_refused() -> None:
    with ShmRing.create(64) as ring:
        ring.put(bytes(56))  # full
        t = threading.Thread(target=lambda: ring.put(b"x", timeout=WAIT))
        t.start()
        time.sleep(0.1)  # the thread is parked inside put, holding the producer role
        with pytest.raises(RuntimeError, match="one producer"):
            ring.put(b"y", timeout=0)
        assert ring.get_bytes() == bytes(56)  # room: the parked put completes
        t.join(WAIT)
        assert ring.get_bytes(timeout=WAIT) == b"x"


def test_attach_from_the_fd_and_closed_handles() -> None:
    ring = ShmRing.create(4096)
    other = ShmRing.attach(ring.fileno())
    assert other.capacity == 4096 and other.fileno() != ring.fileno()
    ring.put_pickled([1, 2])
    assert other.get() == [1, 2]
    if sys.platform.startswith("linux"):
        assert os.readlink(f"/proc/self/fd/{ring.fileno()}").startswith("/memfd:shardflow-ring")
    ring.close()
    ring.close()  # idempotent
    assert ring.closed and repr(ring) == "<ShmRing closed>"
    with pytest.raises(ValueError, match="closed ShmRing"):
        ring.put(b"x")
    with pytest.raises(ValueError, match="closed ShmRing"):
        ring.fileno()
    other.close()


def test_bad_arguments_name_the_parameter() -> None:
    with pytest.raises(TypeError, match=r"use ShmRing\.create"):
        ShmRing()
    with pytest.raises(ValueError, match="size must be between"):
        ShmRing.create(0)
    with pytest.raises(TypeError, match="size must be an int"):
        ShmRing.create(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spin_us"):
        ShmRing.create(64, spin_us=-1)
    with pytest.raises(ValueError, match="check_interval"):
        ShmRing.create(64, check_interval=0)
    with ShmRing.create(64, check_interval=0.02) as ring:
        ring.check_interval = 1.5  # this handle's park slice; the spin stays
        assert ring.check_interval == 1.5 and ring.spin_us == 20
        with pytest.raises(ValueError, match="check_interval"):
            ring.check_interval = -1
        with pytest.raises(TypeError, match="check_interval"):
            ring.check_interval = "1"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="fd must be"):
        ShmRing.attach(-1)
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="does not hold a shardflow"):
            ShmRing.attach(r)
    finally:
        os.close(r)
        os.close(w)
    with ShmRing.create(64) as ring:
        with pytest.raises(ValueError, match="timeout must be"):
            ring.put(b"x", timeout=-1)
        with pytest.raises(TypeError, match="timeout must be"):
            ring.get(timeout="soon")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="tag must be"):
            ring.put(b"x", tag=2**32 - 1)
        with pytest.raises(TypeError, match="sentinel"):
            ring.watch(-3)
        assert len(ring) == 0
        assert isinstance(RingTimeout("x"), RingError)


def test_large_records_between_threads() -> None:
    """Records above the size copied with the GIL released (64 KiB), through a ring
    that holds only a few of them."""
    rng = random.Random(5)
    records = [_payload(rng, rng.randrange(60_000, 300_000)) for _ in range(40)]
    with ShmRing.create(1 << 20) as ring:

        def produce() -> None:
            for r in records:
                ring.put(r, timeout=WAIT)

        t = threading.Thread(target=produce)
        t.start()
        got = [ring.get_bytes(timeout=WAIT) for _ in records]
        t.join(WAIT)
        assert got == records


def test_ctrl_c_interrupts_a_long_wait() -> None:
    """A get with no timeout parks in slices and checks signals between them."""
    import _thread

    with ShmRing.create(64, check_interval=0.02) as ring:
        timer = threading.Timer(0.1, _thread.interrupt_main)
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                ring.get()
        finally:
            timer.join(WAIT)


# ------------------------------------------------------------------ two processes


def _echo(tasks: ShmRing, results: ShmRing) -> None:
    """Child: echo every record back (bytes as bytes, pickles re-pickled) until closed."""
    try:
        while True:
            data = tasks.get_bytes(timeout=WAIT)
            if tasks.last_tag == 1:
                results.put_pickled(pickle.loads(data), timeout=WAIT, tag=1)
            else:
                results.put(data, timeout=WAIT, tag=tasks.last_tag)
    except RingClosed:
        results.close_writer()


def _next(results: ShmRing) -> Any:
    data = results.get_bytes(timeout=WAIT)
    return pickle.loads(data) if results.last_tag == 1 else data


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_child_process_echoes_every_record_in_order(method: str) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"start method {method!r} is not available here")
    ctx = multiprocessing.get_context(method)
    tasks = ShmRing.create(2048)  # small rings: both sides fill, wrap and park
    results = ShmRing.create(1024)
    p = ctx.Process(target=_echo, args=(tasks, results))
    p.start()
    try:
        results.watch(p.sentinel)
        tasks.watch(p.sentinel)
        rng = random.Random(3)
        sent: list[Any] = []
        got: list[Any] = []
        failure: list[BaseException] = []

        def read() -> None:  # the parent reads echoes while it sends: no pipe deadlock
            try:
                while True:
                    got.append(_next(results))
            except RingClosed:
                pass
            except BaseException as exc:  # pragma: no cover - reported below
                failure.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        crc_out = 0
        for i in range(3000):
            if i % 3 == 0:
                item: Any = (i, _payload(rng, rng.randrange(0, 200)).hex())
                tasks.put_pickled(item, timeout=WAIT, tag=1)
            else:
                item = _payload(rng, rng.randrange(0, 700))
                tasks.put(item, timeout=WAIT, tag=2)
            sent.append(item)
            crc_out = zlib.crc32(pickle.dumps(item), crc_out)
        tasks.close_writer()
        reader.join(WAIT)
        assert not failure
        crc_in = 0
        for item in got:
            crc_in = zlib.crc32(pickle.dumps(item), crc_in)
        assert len(got) == len(sent)
        assert got == sent  # order and content
        assert crc_in == crc_out
        # the task ring wrapped; every echo was read
        assert tasks.stats()["pads"] > 0 and results.stats()["records_got"] == len(sent)
        p.join(WAIT)
        assert p.exitcode == 0
    finally:
        if p.is_alive():  # pragma: no cover - only on failure
            p.kill()
            p.join(WAIT)
        tasks.close()
        results.close()


_ATTACH_CHILD = """
import os, sys
from shardflow._shmring import ShmRing, RingClosed
tasks = ShmRing.attach(int(sys.argv[1]))
results = ShmRing.attach(int(sys.argv[2]))
os.close(int(sys.argv[1])); os.close(int(sys.argv[2]))
try:
    while True:
        results.put(tasks.get_bytes(timeout=30)[::-1], timeout=30)
except RingClosed:
    results.close_writer()
"""


def test_a_subprocess_attaches_rings_from_passed_fd_numbers() -> None:
    tasks = ShmRing.create(4096)
    results = ShmRing.create(4096)
    fds = (tasks.fileno(), results.fileno())
    p = subprocess.Popen(
        [sys.executable, "-c", _ATTACH_CHILD, str(fds[0]), str(fds[1])], pass_fds=fds
    )
    try:
        rng = random.Random(4)
        records = [_payload(rng, rng.randrange(1, 500)) for _ in range(500)]
        got = []
        for r in records:
            tasks.put(r, timeout=WAIT)
            got.append(results.get_bytes(timeout=WAIT))
        tasks.close_writer()
        with pytest.raises(RingClosed):
            results.get_bytes(timeout=WAIT)
        assert got == [r[::-1] for r in records]
        assert p.wait(WAIT) == 0
    finally:
        if p.poll() is None:  # pragma: no cover - only on failure
            p.kill()
            p.wait(WAIT)
        tasks.close()
        results.close()


def _publish_then_hang(results: ShmRing, ready: Any) -> None:
    results.put_pickled("before death")
    ready.set()
    time.sleep(WAIT)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkilled_peer_is_reported_within_the_timeout_and_leaves_nothing() -> None:
    ctx = multiprocessing.get_context("fork")
    results = ShmRing.create(4096, check_interval=0.02)
    ready = ctx.Event()
    p = ctx.Process(target=_publish_then_hang, args=(results, ready))
    p.start()
    try:
        assert ready.wait(WAIT)
        os.kill(p.pid, signal.SIGKILL)  # only the child this test started, by pid
        # Without a sentinel, the wait is bounded by its timeout: a clear error, no hang.
        assert results.get(timeout=0) == "before death"  # published records survive
        with pytest.raises(RingTimeout):
            results.get(timeout=0.1)
        # With the child's sentinel, the death itself is reported, well before the timeout.
        results.watch(p.sentinel)
        t0 = time.monotonic()
        with pytest.raises(PeerDead, match="writer process ended"):
            results.get(timeout=WAIT)
        assert time.monotonic() - t0 < WAIT / 2
        # A producer waiting for room sees the reader's death the same way.
        tasks = ShmRing.create(64, check_interval=0.02)
        tasks.put(bytes(56))
        tasks.watch(p.sentinel)
        with pytest.raises(PeerDead, match="reader process ended"):
            tasks.put(b"x", timeout=WAIT)
        tasks.close()
        p.join(WAIT)
        assert p.exitcode == -signal.SIGKILL
    finally:
        if p.is_alive():  # pragma: no cover - only on failure
            p.kill()
            p.join(WAIT)
        results.close()
