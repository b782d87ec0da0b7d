/* park.pml: a Promela model of shardflow's park/unpark protocol (ext/shardflow/_park.h)
 * on the data side of one shard (ext/shardflow/_shard.h, _ring.h, _sched.h):
 *
 *   - the eventcount is ONE word, epoch << 32 | waiters (here two variables that every
 *     step reads or writes together, inside one atomic step): sf_event_prepare is one
 *     fetch_add that announces and returns the epoch as the key; a notify CONSUMES every
 *     announcement (CAS word -> (epoch + 1, waiters 0)) and broadcasts; sf_event_cancel
 *     retires an announcement only while the epoch still equals the key (once it moved, a
 *     notifier already consumed it); a woken waiter retires nothing;
 *   - one worker (Consumer) running sf_sched_wait on a non-stealing pool (one shard, no
 *     deadline, stop and flush never set): pop, spin on "claims", prepare (announce + key),
 *     re-check, cancel or sleep on the epoch;
 *   - two producers, each pushing ITEMS single items with sf_shard_push: the claim CAS on
 *     `tail` (seq_cst RMW), the slot write, the wait for their turn, the release store of
 *     `commit`, then sf_event_notify_after_rmw (a seq_cst load of the word, then
 *     sf_event_notify_slow's consuming CAS);
 *   - a thief popping with copy-then-CAS on `head` (sf_ring_pop_part), a bounded number of
 *     times, so that "taken twice" has something to catch;
 *   - the close path, racing with everything: sf_ring_close (fetch_or on tail's bit 63)
 *     then sf_shard_wake_all (fence, load the word, notify_slow).
 *
 * Checked (see README.md for the commands):
 *   safety    no item taken twice (assert in take); when everybody is done, every claimed
 *             item was consumed exactly once; no invalid end state: a lost wake-up leaves
 *             the consumer blocked on its epoch with nobody left to notify, which spin
 *             reports as an invalid end state.
 *   liveness  ltl `done`: the consumer always finishes (with -a and weak fairness, so that
 *             a spinning consumer cannot starve the store-buffer flush it waits for).
 *
 * Memory model. Promela interleaves statements: sequential consistency. That is sound for
 * the wake-up decision only because every cross-thread Dekker pair in the protocol is made
 * of seq_cst operations, which C11 keeps in a single total order consistent with program
 * order: the producer's claim CAS on `tail` and its seq_cst load of the word (the
 * notify_after_rmw variant) against the consumer's seq_cst RMW of the word, seq_cst fence
 * and load of `tail`; the close's fetch_or + fence + load of the word against the same
 * consumer steps. The one store the protocol publishes WITHOUT seq_cst is the release
 * store of `commit`; a release store may be overtaken by a later load (store->load
 * reordering, what x86's store buffer does and C11 allows). So `commit` goes through a
 * per-producer FIFO store buffer (Flusher processes) instead of memory: the producer's own
 * loads see its buffer (store forwarding), everybody else sees `commit` only when flushed.
 *
 * That is what makes the consumer's re-check matter. It re-checks CLAIMS (tail != head,
 * sf_ring_has_claims), which pair with the seq_cst claim CAS. Compile with
 * -DRECHECK_COMMIT to re-check published items (commit != head, sf_ring_has_items)
 * instead: spin then finds the lost wake-up (the producer's load of the word passes its
 * buffered commit store, the consumer reads the old commit and sleeps, nobody notifies).
 *
 * Not covered here:
 *   - the release/acquire ordering of the slot DATA against `commit`/`head`, and every
 *     weaker-than-seq_cst reordering other than the commit store buffer: slots are
 *     modelled as SC memory. The TSan build of tests/native/stress.c covers those;
 *   - the producer side of the protocol (space_ev, sf_shard_wait_space; the ring never
 *     fills here: CAP is the total number of items), deadlines and the stop flag;
 *   - spurious wake-ups (they only add re-checks), epoch wrap-around, the mutex itself
 *     (modelled as the atomicity of "check epoch, then sleep" vs "bump epoch, broadcast").
 */

#ifndef ITEMS
#define ITEMS 2              /* items per producer */
#endif
#define NPROD 2
#define TOTAL (NPROD * ITEMS)
#define CAP TOTAL            /* never full: the data side only */
#define NONE 255
#ifndef THIEF_TRIES
#define THIEF_TRIES 2        /* steal attempts (0: no thief) */
#endif

/* ring */
byte tail = 0;               /* next index to claim */
bool closed = false;         /* bit 63 of tail: written by the same RMWs as tail */
byte commit = 0;
byte head = 0;
byte slot[CAP];
byte cbuf[NPROD * 2];        /* per-producer FIFO store buffer for `commit` (2 entries) */

/* data_ev: the one 64-bit word, as its two halves (only ever accessed together) */
byte waiters = 0;            /* announcements not yet consumed or cancelled */
byte epoch = 0;

/* bookkeeping */
byte claimed = 0;            /* successful claims: the items that must be consumed */
byte consumed = 0;
byte taken[TOTAL + 1];
bool consumer_done = false;
byte finished_procs = 0;     /* producers, thief and closer that have ended */

/* sf_event_notify_slow: N4 the CAS loop (a failed CAS retries with the fresh word, so
 * "if nobody is announced, return; else consume all and move the epoch" is one atomic
 * step), N5 lock; broadcast; unlock (the waiter's guard `epoch != key` below). */
inline notify_slow() {
    atomic {
        if
        :: waiters != 0 -> epoch++; waiters = 0
        :: else -> skip                      /* another notifier consumed them */
        fi
    }
}

/* sf_event_cancel(key): retire our announcement only if no notify consumed it. */
inline cancel(key) {
    atomic {
        if
        :: epoch == key && waiters != 0 -> waiters--
        :: else -> skip
        fi
    }
}

inline take(v) {
    assert(v >= 1 && v <= TOTAL);
    assert(taken[v] == 0);   /* exactly once */
    taken[v] = 1;
    consumed++
}

/* The commit value producer p sees: its own newest buffered store, else memory. */
#define OWN_COMMIT(p) (cbuf[2*(p)+1] != NONE -> cbuf[2*(p)+1] : \
                       (cbuf[2*(p)] != NONE -> cbuf[2*(p)] : commit))

proctype Producer(byte p) {
    byte i = 0, t;
    do
    :: i == ITEMS -> break
    :: i < ITEMS ->
        /* sf_ring_push: the claim CAS (seq_cst RMW of tail, closed bit in the same word).
         * A failed CAS retries with the fresh value, so one atomic step covers it. */
        atomic {
            if
            :: closed -> goto out            /* push returns -1: submit raises Closed */
            :: else -> t = tail; tail++; claimed++
            fi
        }
        slot[t % CAP] = p * ITEMS + i + 1;   /* relaxed slot store (SC here) */
        OWN_COMMIT(p) == t;                  /* wait for earlier claimers to publish */
        /* release store of commit: into the store buffer */
        atomic {
            if
            :: cbuf[2*p] == NONE -> cbuf[2*p] = t + 1
            :: else -> assert(cbuf[2*p+1] == NONE); cbuf[2*p+1] = t + 1
            fi
        }
        /* sf_event_notify_after_rmw: N3 seq_cst load of the word, then N4-N5 */
        if
        :: waiters != 0 -> notify_slow()
        :: else -> skip
        fi;
        d_step { t = 0; i++ }
    od;
out:
    finished_procs++
}

/* Drains producer p's store buffer into memory, in order, whenever it likes. */
proctype Flusher(byte p) {
end:
    do
    :: atomic {
           cbuf[2*p] != NONE ->
           commit = cbuf[2*p]; cbuf[2*p] = cbuf[2*p+1]; cbuf[2*p+1] = NONE
       }
    od
}

/* sf_shard_wait_pop(max=1, deadline=-1, stop never set), called in a loop by the worker
 * until it returns SF_WAIT_FINISHED. */
proctype Consumer() {
    byte h, t, key;
    bool tc;
    /* Dead locals are reset (d_step) before each round, so that stale values do not
     * multiply the states (atomic, not d_step: a goto may not enter a d_step). The slot copy of copy-then-CAS is read inside the CAS step:
     * a slot is never rewritten here (CAP == TOTAL), so that is the same value. */
top:
    atomic { h = 0; t = 0; tc = false; key = 0 };
    /* sf_shard_pop -> sf_ring_pop_part: acquire head, acquire commit, copy, CAS head */
    h = head;
    if
    :: commit > h ->
        if
        :: atomic { head == h -> head = h + 1; take(slot[h % CAP]) }  /* CAS won */
        :: atomic { head != h -> skip }                   /* lost to the thief: retry */
        fi;
        goto top
    :: else -> skip
    fi;
    /* sf_ring_finished: tail (with the closed bit), then head */
    d_step { t = tail; tc = closed };
    if
    :: tc && t == head -> goto finished
    :: else -> skip
    fi;
    /* The idle spin polls sf_ring_has_claims up to SF_IDLE_SPINS times and goes round
     * again on the first claim it sees. One poll is an exact abstraction: a run whose
     * polls all saw no claim is this model's run whose one poll came at the last of them. */
    if
    :: tail != head -> goto top
    :: else -> skip
    fi;
    /* sf_event_prepare: W1 one seq_cst fetch_add of the word (announce + read the epoch
     * as the key), W2 seq_cst fence (nothing to do under SC) */
    d_step { key = epoch; waiters++ };
    /* W3: the re-check. */
#ifdef RECHECK_COMMIT
    t = commit;                              /* sf_ring_has_items: commit != head */
#else
    t = tail;                                /* sf_ring_has_claims: tail != head */
#endif
    if
    :: t != head -> cancel(key); goto top
    :: else -> skip
    fi;
    d_step { t = tail; tc = closed };        /* || sf_ring_finished */
    if
    :: tc && t == head -> cancel(key); goto top
    :: else -> skip
    fi;
    /* W4: sf_event_wait with no deadline. Under the mutex the waiter checks the epoch and
     * sleeps atomically with respect to a notifier's CAS + broadcast: a guard. The notifier
     * consumed the announcement, so a woken waiter retires nothing. */
    d_step { h = 0; t = 0; tc = false };
    epoch != key;
    goto top;
finished:
    consumer_done = true
}

/* A thief: sf_ring_pop_part(max=1, divisor=2), copy then CAS, a bounded number of times. */
proctype Thief() {
    byte tries = 0, h;
    do
    :: tries == THIEF_TRIES -> break
    :: tries < THIEF_TRIES ->
        h = head;
        if
        :: commit > h ->
            if
            :: atomic { head == h -> head = h + 1; take(slot[h % CAP]) }
            :: atomic { head != h -> skip }  /* the owner won: discard the copy */
            fi
        :: else -> skip
        fi;
        d_step { h = 0; tries++ }
    od;
    finished_procs++
}

/* close(): sf_ring_close (seq_cst fetch_or of bit 63), then sf_shard_wake_all's
 * sf_event_notify on data_ev (seq_cst fence, load the word, notify_slow). */
proctype Closer() {
    closed = true;
    if
    :: waiters != 0 -> notify_slow()
    :: else -> skip
    fi;
    finished_procs++
}

init {
    byte i;
    for (i : 0 .. NPROD * 2 - 1) { cbuf[i] = NONE }
    atomic {
        run Consumer();
        run Thief();
        run Closer();
        for (i : 0 .. NPROD - 1) { run Producer(i); run Flusher(i) }
    }
    /* Everybody done: every claimed item was consumed, once (take asserts the "once"). */
    finished_procs == NPROD + 2 && consumer_done;
    assert(consumed == claimed);
    assert(head == claimed && tail == claimed);
    /* Every announcement was consumed by a notify or cancelled by its waiter. */
    assert(waiters == 0);
    for (i : 1 .. TOTAL) { assert(taken[i] <= 1) }
}

ltl done { <> consumer_done }
