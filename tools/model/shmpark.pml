/* shmpark.pml: a Promela model of the cross-process park protocol of the shared-memory
 * ring (ext/shardflow/_shmring.h): one producer, one consumer, a bounded ring, and per
 * direction one "sleeping" word used as a futex:
 *
 *   waiter (consumer for data,                notifier (producer after publishing tail,
 *   producer for space)                        consumer after releasing head)
 *   W0 poll the index                          N1 store index             (release)
 *   W1 exchange(word, 1)   (acq_rel RMW)       N2 fence                   (seq_cst)
 *   W2 fence               (seq_cst)           N3 if load(word) == 0: return
 *   W3 re-check index / closed: word = 0, go   N4 if exchange(word, 0) == 1: futex_wake
 *   W4 futex_wait(word, 1, deadline)
 *   W5 word = 0; back to W0
 *
 * and the close: the producer, after its last record, sets WRITER_CLOSED with a seq_cst
 * fetch_or, then N3-N4 on both words (sf_shmring_close); the consumer leaves once the ring
 * is empty and the flag is set.
 *
 * The futex: W4 is atomic in the kernel (sleep only if word == 1, else return at once);
 * futex_wake wakes a sleeper on that word. Processes never share a lock: nothing else.
 *
 * Memory model. Promela interleaves statements (sequential consistency), except for the
 * two release stores of the data path, `tail` (producer) and `head` (consumer), which go
 * through a one-entry store buffer per side (a Flusher process drains it whenever it
 * likes): the owner's own loads see its buffer (store forwarding), the other side sees
 * memory. A seq_cst fence (N2, W2) or a locked RMW (the fetch_or of close) waits for the
 * buffer to drain. That is exactly the store->load reordering x86 performs and C11 allows
 * for a release store followed by a load of another location, which the fences are there
 * to forbid.
 *
 * Checked (see README.md for the commands):
 *   safety     records are consumed in order, each once (assert), the ring never holds
 *              more than CAP records, and, WITHOUT timeouts (the default), no invalid end
 *              state: a lost wake-up leaves a side asleep in futex_wait forever with the
 *              other side done, which spin reports as an invalid end state. So the
 *              protocol does not rely on the timeout to make progress;
 *   timeouts   -DTIMEOUTS: futex_wait may also return at any moment (the deadline, a
 *              signal, a spurious wake-up); the waiter clears its word and re-checks (W5).
 *              Same assertions, no invalid end state;
 *   negative   -DNO_NOTIFY_FENCE drops N2 (the notifier's fence): the load of the word can
 *              pass the buffered index store, and spin finds the lost wake-up (the consumer
 *              re-checks the old tail, sleeps; the producer sees no sleeper).
 *
 * Quiet commits (-DQUIET). ShmRing.put(wake=False) publishes with N1 only (no N2-N4): a
 * consumer asleep stays asleep. The process backend's worker does it for a DONE record
 * when at least QUIET_AHEAD more batches are queued in its task ring (len(tasks), in
 * bytes, padding included), so that the parent's collector is woken once for several
 * batches. Under -DQUIET the producer is that worker: it takes batches from an abstract
 * task channel fed by a Dispatcher (the parent, shipping while fewer than WINDOW batches
 * are uncollected: a condition variable inside the parent, so sequentially consistent),
 * and publishes one DONE record per batch, quiet when `queued` (+ QUIET_AHEAD while the
 * dispatcher has a padding record out ahead of a batch it has not committed yet: bytes
 * the worker counts) is at least QUIET_AHEAD. The consumer is the collector: nobody
 * closes the ring (the parent closes it only after every batch was collected), so the
 * consumer must take all ITEMS records on wake-ups alone. The worker's read of the task
 * ring is the exact backlog (a stale read is smaller, which only makes a DONE loud).
 *
 * The property, without timeouts: no invalid end state and every record consumed, i.e.
 * a quiet record never leaves the consumer asleep for good: the worker's rule guarantees
 * a later checking commit (the last DONE before the task backlog runs low is loud), and
 * a producer that must wait for SPACE first wakes a consumer asleep on the data word
 * (S below): otherwise, with the ring filled by quiet records, the producer waits for
 * room the sleeping consumer would make and both sides sleep until the consumer's
 * deadline (-DNO_SPACE_NOTIFY finds that: a stall of one park slice in the real code,
 * with DONE records large enough, e.g. big on_results values). Negative control
 * -DQUIET_ALWAYS (every DONE quiet, no rule): invalid end state. So with the rule and S,
 * the deadline bounds nothing but latency: a batch settled late by a quiet DONE waits at
 * most for the worker's next batch.
 *
 *   producer about to park for space, after W1-W3 found no room:
 *   S  N3-N4 on data_word (the fence W2 already orders the earlier tail stores)
 *
 * Not covered: the record bytes (release/acquire of the data against tail/head: the TSan
 * build of tests/native/stress.c, scenario shmring), padding records (a padding record is
 * one more publication, the same protocol), the reader-closed flag (symmetric to the
 * writer's), peer death (the caller's timeout slices: a dead peer never wakes anybody,
 * which is why every wait has a deadline).
 */

#ifndef ITEMS
#define ITEMS 3              /* records the producer sends */
#endif
#ifndef CAP
#define CAP 1                /* records the ring holds: the producer waits for space too */
#endif
#define NONE 255

byte tail = 0;               /* memory */
byte head = 0;
byte tail_buf = NONE;        /* the producer's store buffer (one entry) */
byte head_buf = NONE;        /* the consumer's */
bool writer_closed = false;

#ifdef QUIET
#ifndef WINDOW
#define WINDOW 3             /* batches shipped and not collected (ProcessBackend window) */
#endif
#ifndef QUIET_AHEAD
#define QUIET_AHEAD 2        /* _process_worker.QUIET_AHEAD */
#endif
byte queued = 0;             /* batches committed to the task ring, not taken yet */
bool padding = false;        /* the dispatcher published padding ahead of its next batch */
byte shipped = 0;
byte quiet_records = 0;      /* statistics: quiet commits seen (the model exercises them) */
#endif

bit data_word = 0;           /* 1: the consumer sleeps (or is about to) */
bit space_word = 0;          /* 1: the producer sleeps (or is about to) */
bool cons_asleep = false;    /* inside futex_wait on data_word */
bool prod_asleep = false;    /* inside futex_wait on space_word */

byte consumed = 0;
bool consumer_done = false;
bool producer_done = false;

#define OWN_TAIL (tail_buf != NONE -> tail_buf : tail)
#define OWN_HEAD (head_buf != NONE -> head_buf : head)

/* N2-N4 on `word` (sleeper flag `asleep`), by a side whose store buffer is `buf`. */
inline notify(buf, word, asleep) {
#ifndef NO_NOTIFY_FENCE
    buf == NONE;                                   /* N2: the fence drains the buffer */
#endif
    if
    :: word == 0 -> skip                           /* N3: nobody sleeps: no syscall */
    :: else ->
        atomic {                                   /* N4: exchange(word, 0) == 1 */
            if
            :: word == 1 -> word = 0; asleep = false   /* futex_wake */
            :: else -> skip
            fi
        }
    fi
}

/* W4-W5: futex_wait(word, 1) then word = 0. */
inline park(word, asleep) {
    atomic {
        if
        :: word == 1 -> asleep = true              /* the kernel compares, then sleeps */
        :: else -> skip                            /* EAGAIN */
        fi
    };
#ifdef TIMEOUTS
    if
    :: !asleep -> skip                             /* woken (or never slept) */
    :: atomic { asleep -> asleep = false }         /* deadline, signal, spurious */
    fi;
#else
    !asleep;                                       /* woken (or never slept) */
#endif
    word = 0                                       /* W5 */
}

#ifdef QUIET
proctype Dispatcher() {
    do
    :: shipped == ITEMS -> break
    :: shipped < ITEMS ->
        shipped - consumed < WINDOW;               /* the window (a condvar in the parent) */
        if
        :: padding = true                          /* a put that pads first, then commits */
        :: skip
        fi;
        atomic { queued++; shipped++; padding = false }
    od
}
#endif

proctype Producer() {
    byte i = 0;
#ifdef QUIET
    bool quiet = false;
#endif
    do
    :: i == ITEMS -> break
    :: i < ITEMS ->
#ifdef QUIET
        atomic { queued > 0 -> queued-- };         /* take the next batch and run it */
#ifdef QUIET_ALWAYS
        quiet = true;
#else
        atomic {                                   /* len(tasks) >= QUIET_AHEAD batches */
            quiet = (queued + (padding -> QUIET_AHEAD : 0) >= QUIET_AHEAD)
        };
#endif
#endif
        /* wait for space: OWN_TAIL - head < CAP (head read from memory) */
wait_space:
        if
        :: OWN_TAIL - head < CAP -> skip
        :: else ->
            atomic { tail_buf == NONE; space_word = 1 };   /* W1 (RMW) + W2 (fence) */
            if
            :: OWN_TAIL - head < CAP -> space_word = 0     /* W3 */
            :: else ->
#ifndef NO_SPACE_NOTIFY
                notify(tail_buf, data_word, cons_asleep);  /* S */
#endif
                park(space_word, prod_asleep)
            fi;
            goto wait_space
        fi;
        /* write the record, then N1: release store of tail into the buffer */
        atomic { tail_buf == NONE -> tail_buf = OWN_TAIL + 1 };
#ifdef QUIET
        if
        :: quiet -> quiet_records++                /* commit_quiet: N1 only */
        :: else -> notify(tail_buf, data_word, cons_asleep)
        fi;
#else
        notify(tail_buf, data_word, cons_asleep);
#endif
        i++
    od;
#ifdef QUIET
    producer_done = true    /* the worker waits for more batches; it never closes */
#else
    /* sf_shmring_close(WRITER_CLOSED): seq_cst fetch_or (drains the buffer), then N3-N4
     * on both words (the fence of notify is implied by the RMW) */
    atomic { tail_buf == NONE; writer_closed = true };
    notify(tail_buf, data_word, cons_asleep);
    notify(tail_buf, space_word, prod_asleep);
    producer_done = true
#endif
}

proctype Consumer() {
    byte t;
    do
    :: atomic { t = tail };                        /* W0 / peek: acquire load of tail */
        if
        :: t != OWN_HEAD ->
            /* take the record at head: in order, once */
            assert(OWN_HEAD == consumed);
            assert(t - OWN_HEAD <= CAP);
            consumed++;
            /* release: N1 store head into the buffer, N2-N4 for the producer */
            atomic { head_buf == NONE -> head_buf = OWN_HEAD + 1 };
            notify(head_buf, space_word, prod_asleep)
#ifdef QUIET
        :: t == OWN_HEAD && consumed == ITEMS -> break  /* every batch collected */
        :: t == OWN_HEAD && consumed < ITEMS ->
#else
        :: t == OWN_HEAD && writer_closed && tail == OWN_HEAD -> break   /* CLOSED */
        :: t == OWN_HEAD && !(writer_closed && tail == OWN_HEAD) ->
#endif
            atomic { head_buf == NONE; data_word = 1 };    /* W1 (RMW) + W2 (fence) */
            if
            :: tail != OWN_HEAD || writer_closed -> data_word = 0   /* W3 */
            :: else -> park(data_word, cons_asleep)
            fi
        fi
    od;
    assert(consumed == ITEMS);
    consumer_done = true
}

proctype FlushTail() {
end:
    do
    :: atomic { tail_buf != NONE -> tail = tail_buf; tail_buf = NONE }
    od
}

proctype FlushHead() {
end:
    do
    :: atomic { head_buf != NONE -> head = head_buf; head_buf = NONE }
    od
}

init {
    atomic {
        run Producer();
        run Consumer();
#ifdef QUIET
        run Dispatcher();
#endif
        run FlushTail();
        run FlushHead()
    }
    producer_done && consumer_done;
    assert(consumed == ITEMS && !cons_asleep && !prod_asleep)
#ifdef QUIET_REACHED
    assert(quiet_records == 0)   /* a reachability probe: spin must find it violated */
#endif
}

ltl done { <> consumer_done }
