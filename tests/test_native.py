"""The C core, tested without Python in the way: stress, sanitizers, model checking.

* ``tests/native/stress.c`` hammers the ring, the park protocol, the counters, the pool's
  live/done protocol, the stealing scheduler (``_sched.h``: steal-half, thief wake-ups,
  flush acknowledgements and flush holds), the latency histogram, the circuit breaker and
  the shared-memory byte ring (``_shmring.h``: two threads on one mapping, then a forked
  echo process on fresh mappings of the memfds) from pthreads. It is built three ways (plain
  ``-O2``, ThreadSanitizer, AddressSanitizer + UndefinedBehaviorSanitizer) and every build
  must exit 0 with no sanitizer report. No suppression file exists, on purpose. A fourth
  build (``stress-portable``, ``-DSF_SHM_PORTABLE``) runs the shared-memory ring on its
  non-Linux branch (polling park, ``shm_open`` + unlink).
* ``tests/native/interleave.c`` replays exact interleavings of the ring and the breaker (a
  thread preempted at one chosen load) in a single thread.
* ``tools/model/park.pml`` is checked exhaustively with spin: no lost wake-up (invalid end
  state), no item taken twice, every claimed item consumed; and a negative control shows the
  model does find a lost wake-up when the consumer re-checks the wrong variable.
* ``tools/model/shmpark.pml`` models the cross-process park protocol of ``_shmring.h``
  (a sleeping flag per futex word, seq_cst fences on both sides, futex wait with a
  timeout): no lost wake-up, and a negative control without the fences finds one.
* ``tools/model/steal.pml`` models the thief wake-up protocol of ``_sched.h`` (two workers,
  producers pushing to one shard): no item taken twice, and items are never left queued
  while every worker sleeps.

Everything is built in a temporary directory, never in the source tree. Tests that need a
C compiler with pthreads, ``make`` or ``spin`` are skipped, with the reason, without them.
The operation counts keep this file well under a minute on two cores; run the harness by
hand (``make -C tests/native check``) for the full 10^7 operations.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "tests" / "native"
MODEL = ROOT / "tools" / "model" / "park.pml"
STEAL_MODEL = ROOT / "tools" / "model" / "steal.pml"
SHM_MODEL = ROOT / "tools" / "model" / "shmpark.pml"

CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
MAKE = shutil.which("make")
SPIN = shutil.which("spin")

SANITIZER_REPORTS = (
    "WARNING: ThreadSanitizer",
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error",  # UBSan
)

# Reports must fail the run: halt on the first one, with a non-zero exit.
SANITIZER_ENV = {
    "TSAN_OPTIONS": "halt_on_error=1 second_deadlock_stack=1",
    "ASAN_OPTIONS": "detect_leaks=1 halt_on_error=1",
    "UBSAN_OPTIONS": "print_stacktrace=1 halt_on_error=1",
}

# Operations per flavour: sanitized builds run 5-20x slower.
OPS = {"plain": 300_000, "tsan": 60_000, "asan": 100_000}

_native_marks = [
    pytest.mark.skipif(sys.platform == "win32", reason="the native harness uses pthreads"),
    pytest.mark.skipif(CC is None, reason="no C compiler (cc or gcc) on PATH"),
    pytest.mark.skipif(MAKE is None, reason="make is not on PATH"),
    pytest.mark.skipif(not NATIVE.is_dir(), reason="tests/native/ not found next to this file"),
]
_spin_marks = [
    pytest.mark.skipif(SPIN is None, reason="spin is not on PATH (apt-get install spin)"),
    pytest.mark.skipif(CC is None, reason="no C compiler to build spin's verifier"),
    pytest.mark.skipif(not MODEL.is_file(), reason="tools/model/park.pml not found"),
]


def needs_native(fn):
    for mark in _native_marks:
        fn = mark(fn)
    return fn


def needs_spin(fn):
    for mark in _spin_marks:
        fn = mark(fn)
    return fn


def _run(
    cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("native-build")


def _build(build_dir: Path, target: str) -> Path:
    """Build one Makefile target into build_dir. A sanitizer runtime the toolchain lacks
    is a skip (with the linker's words); anything else is a failure."""
    out = build_dir / target
    if out.exists():
        return out
    r = _run([MAKE, "-s", "-C", str(NATIVE), f"O={build_dir}", f"CC={CC}", str(out)])
    if r.returncode != 0:
        log = r.stdout + r.stderr
        missing_runtime = re.search(
            r"cannot find -l(tsan|asan|ubsan)|unrecognized .*-fsanitize|"
            r"unsupported option .*-fsanitize|sanitizer.* not supported",
            log,
        )
        if target != "stress-plain" and missing_runtime:
            pytest.skip(f"{target}: the toolchain lacks this sanitizer: {missing_runtime.group(0)}")
        pytest.fail(f"building {target} failed:\n{log}")
    return out


def _run_harness(binary: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    r = _run([str(binary), *args], env=SANITIZER_ENV)
    # gcc's TSan cannot map its shadow memory under the high-entropy ASLR of recent kernels
    # (vm.mmap_rnd_bits > 28); rerun with ASLR off for this process only.
    if "unexpected memory mapping" in r.stderr and shutil.which("setarch"):
        r = _run(["setarch", platform.machine(), "-R", str(binary), *args], env=SANITIZER_ENV)
    return r


def _assert_clean(r: subprocess.CompletedProcess[str], what: str) -> None:
    log = r.stdout + r.stderr
    reports = [m for m in SANITIZER_REPORTS if m in log]
    assert r.returncode == 0 and not reports, (
        f"{what}: exit code {r.returncode}, sanitizer reports: {reports}\n{log}"
    )


@pytest.mark.parametrize("flavour", ["plain", "tsan", "asan"])
@needs_native
def test_stress_harness_passes_every_check(build_dir: Path, flavour: str) -> None:
    """Ring (exactly once, per-producer order, with a thief, capacities 8/64/1024), shard
    park protocol (capacities 8/64, close must wake the worker), counters, pool, and the
    stealing scheduler (exactly once, exact flushes, stolen_in == stolen_out), queue-wait
    stamps recorded once each, the histogram under concurrent readers: every check
    passes and no sanitizer reports anything."""
    binary = _build(build_dir, f"stress-{flavour}")
    r = _run_harness(binary, ["all", "--ops", str(OPS[flavour]), "--timeout", "90"])
    _assert_clean(r, f"stress-{flavour}")
    assert "stress    all: all checks passed" in r.stdout
    for scenario in (
        "ring",
        "shard",
        "counters",
        "pool",
        "sched",
        "hist",
        "breaker",
        "shmring",
        "handoff",
    ):
        assert re.search(rf"^{scenario}\b.* OK$", r.stdout, re.M), r.stdout
    if flavour != "tsan":  # TSan cannot follow a forked child sharing memory: threads only
        assert re.search(r"^shmring +process .* OK$", r.stdout, re.M), r.stdout


@needs_native
def test_shared_memory_ring_on_its_portable_branch(build_dir: Path) -> None:
    """The non-Linux branch of _shmring.h (park by polling the word with short sleeps,
    shm_open + immediate shm_unlink), built and run on Linux: threads and a forked
    process, order, bytes and checksums."""
    binary = _build(build_dir, "stress-portable")
    r = _run_harness(binary, ["shmring", "--ops", "24000", "--timeout", "90"])
    _assert_clean(r, "stress-portable shmring")
    assert re.search(r"^shmring +threads .* OK$", r.stdout, re.M), r.stdout
    assert re.search(r"^shmring +process .* OK$", r.stdout, re.M), r.stdout


@needs_native
def test_forced_interleavings_of_the_ring_and_the_breaker(build_dir: Path) -> None:
    # A push never reports "full" on a ring with room; one breaker acquire never makes a
    # transition it does not report (each case prints BUG and fails the run otherwise).
    binary = _build(build_dir, "interleave")
    r = _run_harness(binary, [])
    _assert_clean(r, "interleave")
    for case in ("stale_tail_full", "breaker_one_transition_per_acquire"):
        assert re.search(rf"^{case}: ", r.stdout, re.M), r.stdout
    assert "interleave: all cases passed" in r.stdout


# ------------------------------------------------------------------ model checking


def _verify(tmp: Path, *defines: str, liveness: bool = False, model: Path = MODEL) -> str:
    """spin -a, compile pan.c, run the verifier; return its report."""
    r = _run([SPIN, *defines, "-a", str(model)], cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    cflags = ["-O2", "-w", "-DMEMLIM=4000"] + (["-DNFAIR=4"] if liveness else ["-DNOCLAIM"])
    r = _run([CC, *cflags, "-o", "pan", "pan.c"], cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run(["./pan", "-m100000", *(["-a", "-f"] if liveness else [])], cwd=tmp, timeout=300)
    return r.stdout + r.stderr


@needs_spin
def test_park_model_has_no_lost_wakeup_and_no_double_take(tmp_path: Path) -> None:
    """Exhaustive safety check: assertions (taken once, all claimed items consumed) and
    invalid end states (a consumer asleep forever)."""
    report = _verify(tmp_path, "-DITEMS=1")
    assert "errors: 0" in report, report
    assert "invalid end states\t+" in report, report  # the check was really on
    m = re.search(r"(\d+) states, stored", report)
    assert m and int(m.group(1)) > 100_000, report  # and explored something real


@needs_spin
def test_park_model_finds_the_lost_wakeup_of_a_commit_recheck(tmp_path: Path) -> None:
    """Negative control: a consumer that re-checks published items (commit) instead of
    claims (tail) before sleeping loses wake-ups; the model must say so, or it proves nothing."""
    report = _verify(tmp_path, "-DITEMS=1", "-DRECHECK_COMMIT")
    assert "invalid end state" in report and "errors: 1" in report, report


@needs_spin
@pytest.mark.skipif(
    os.environ.get("SHARDFLOW_MODEL_LIVENESS") != "1",
    reason="liveness model check takes ~35 s: set SHARDFLOW_MODEL_LIVENESS=1",
)
def test_park_model_consumer_always_finishes(tmp_path: Path) -> None:
    report = _verify(tmp_path, "-DITEMS=1", liveness=True)
    assert "errors: 0" in report, report
    assert "acceptance   cycles \t+ (fairness enabled)" in report, report


# ------------------------------------------------------------------ steal.pml

_steal_marks = [
    pytest.mark.skipif(not STEAL_MODEL.is_file(), reason="tools/model/steal.pml not found")
]


def needs_steal_model(fn):
    for mark in _spin_marks[:2] + _steal_marks:
        fn = mark(fn)
    return fn


def _states(report: str) -> int:
    m = re.search(r"(\d+) states, stored", report)
    return int(m.group(1)) if m else 0


@needs_steal_model
def test_steal_model_items_never_left_queued_while_everybody_sleeps(tmp_path: Path) -> None:
    """Two producers, the owner of their shard asleep or busy (coming back), an idle thief:
    no item taken twice, and no end state with items queued."""
    report = _verify(tmp_path, "-DNPROD=2", "-DITEMS=1", model=STEAL_MODEL)
    assert "errors: 0" in report, report
    assert _states(report) > 100_000, report


@needs_steal_model
def test_steal_model_finds_the_backlog_behind_a_woken_owner_without_o3(tmp_path: Path) -> None:
    """Negative control: without the owner's O1-O3 (the code before they were added), a
    backlog that builds behind a woken owner that then stays busy is never stolen."""
    report = _verify(
        tmp_path,
        "-DNPROD=1",
        "-DITEMS=2",
        "-DOWNER_STUCK",
        "-DSC_COMMIT",
        "-DNO_O3",
        model=STEAL_MODEL,
    )
    assert "assertion violated" in report and "errors: 1" in report, report


@needs_steal_model
def test_steal_model_a_backlog_behind_a_busy_owner_is_stolen(tmp_path: Path) -> None:
    """The shipped O2 (re-check claims, tail != head, seq_cst): with an owner that may never
    return from its handler, every queued item is still taken, by the thief."""
    for defines in (("-DNPROD=1", "-DITEMS=2"), ("-DNPROD=2", "-DITEMS=1")):
        report = _verify(tmp_path, *defines, "-DOWNER_STUCK", model=STEAL_MODEL)
        assert "errors: 0" in report, (defines, report)
        assert _states(report) > 10_000, (defines, report)


@needs_steal_model
def test_steal_model_finds_the_old_o2_gap(tmp_path: Path) -> None:
    """Negative control: the O2 the code first had (re-check published items, commit !=
    head) lets a commit still in a store buffer leave a backlog behind a busy owner while
    the thief sleeps."""
    report = _verify(
        tmp_path, "-DNPROD=1", "-DITEMS=2", "-DOWNER_STUCK", "-DO2_PUBLISHED", model=STEAL_MODEL
    )
    assert "assertion violated" in report and "errors: 1" in report, report


@needs_steal_model
def test_steal_model_a_gated_thief_steals_once_its_gate_opens(tmp_path: Path) -> None:
    """A thief whose steal gate is closed (a process runner with a busy window) and opened
    at any moment: once it is open, a backlog behind a busy owner is still stolen."""
    for defines in (("-DNPROD=1", "-DITEMS=2"), ("-DNPROD=2", "-DITEMS=1")):
        report = _verify(tmp_path, *defines, "-DOWNER_STUCK", "-DGATED", model=STEAL_MODEL)
        assert "errors: 0" in report, (defines, report)
        assert _states(report) > 10_000, (defines, report)


@needs_steal_model
def test_steal_model_finds_the_missed_opening_without_the_gate_recheck(tmp_path: Path) -> None:
    """Negative control: without the gate reload after the prepare, an opening between
    the pass's first look at the gate and its prepare is missed: the thief sleeps through
    the backlog."""
    report = _verify(
        tmp_path,
        "-DNPROD=1",
        "-DITEMS=1",
        "-DOWNER_STUCK",
        "-DGATED",
        "-DNO_GATE_RECHECK",
        model=STEAL_MODEL,
    )
    assert "assertion violated" in report and "errors: 1" in report, report


# ------------------------------------------------------------------ shmpark.pml


def needs_shm_model(fn):
    for mark in [
        *_spin_marks[:2],
        pytest.mark.skipif(not SHM_MODEL.is_file(), reason="tools/model/shmpark.pml not found"),
    ]:
        fn = mark(fn)
    return fn


@needs_shm_model
@pytest.mark.parametrize(
    "defines",
    [("-DITEMS=3", "-DCAP=1"), ("-DITEMS=8", "-DCAP=2"), ("-DITEMS=8", "-DCAP=2", "-DTIMEOUTS")],
)
def test_shm_park_model_has_no_lost_wakeup(tmp_path: Path, defines: tuple[str, ...]) -> None:
    """The cross-process park of _shmring.h (sleeping flag + fences + futex): records in
    order and once, and no side left asleep forever, without relying on the timeout (and
    with timeouts/spurious returns at any moment under -DTIMEOUTS)."""
    report = _verify(tmp_path, *defines, model=SHM_MODEL)
    assert "errors: 0" in report, (defines, report)
    assert "invalid end states\t+" in report, report
    assert _states(report) > 1_000, (defines, report)


@needs_shm_model
def test_shm_park_model_finds_the_lost_wakeup_without_the_notifier_fence(tmp_path: Path) -> None:
    """Negative control: without N2 (the fence between publishing the index and loading
    the sleeping flag), the model finds a side asleep forever."""
    report = _verify(tmp_path, "-DITEMS=3", "-DCAP=1", "-DNO_NOTIFY_FENCE", model=SHM_MODEL)
    assert "invalid end state" in report and "errors: 1" in report, report


@needs_shm_model
@pytest.mark.parametrize(
    "defines",
    [
        ("-DQUIET", "-DITEMS=4", "-DCAP=1"),
        ("-DQUIET", "-DITEMS=6", "-DCAP=2"),
        ("-DQUIET", "-DITEMS=6", "-DCAP=2", "-DTIMEOUTS"),
    ],
)
def test_shm_park_model_quiet_commits_never_strand_the_reader(
    tmp_path: Path, defines: tuple[str, ...]
) -> None:
    """The worker's quiet DONE commits (put(wake=False) while QUIET_AHEAD batches are
    queued): every record is consumed on wake-ups alone (nobody closes the ring), with
    the producer waking the reader before it parks for room (step S)."""
    report = _verify(tmp_path, *defines, model=SHM_MODEL)
    assert "errors: 0" in report, (defines, report)
    assert "invalid end states\t+" in report, report
    assert _states(report) > 10_000, (defines, report)


@needs_shm_model
@pytest.mark.parametrize(
    ("defines", "finds"),
    [
        (("-DQUIET", "-DITEMS=4", "-DCAP=1", "-DNO_SPACE_NOTIFY"), "invalid end state"),
        (("-DQUIET", "-DITEMS=4", "-DCAP=2", "-DQUIET_ALWAYS"), "invalid end state"),
        (("-DQUIET", "-DITEMS=4", "-DCAP=2", "-DQUIET_REACHED"), "assertion violated"),
    ],
    ids=["without-step-S", "quiet-without-the-rule", "quiet-commits-are-reached"],
)
def test_shm_park_model_quiet_controls(
    tmp_path: Path, defines: tuple[str, ...], finds: str
) -> None:
    """Controls of the quiet model: without step S (the ring fills with quiet records:
    both sides asleep) or without the worker's rule (every DONE quiet) spin finds a side
    asleep for good; and the quiet path is exercised (the probe's assertion fails)."""
    report = _verify(tmp_path, *defines, model=SHM_MODEL)
    assert finds in report and "errors: 1" in report, (defines, report)
