/* steal.pml: a Promela model of how shardflow wakes an idle worker to steal
 * (ext/shardflow/_sched.h, "Waking a thief"), on top of the eventcount of _park.h.
 *
 *   - two workers running sf_sched_wait on a stealing pool (steal = 1, no deadline, stop
 *     and flush never set). Producers push to shard 0 only, so worker 0 is the OWNER
 *     (drains its ring with sf_sched_pop_own: take CAS on head, then O2-O3) and worker 1 is
 *     the THIEF (its own ring stays empty; it steals ceil(published / 2) items of ring 0
 *     with copy-then-CAS, or runs T1-T5: idle bit, prepare, re-check every ring's claims,
 *     sleep, clear the bit);
 *   - NPROD producers (1 or 2), each pushing ITEMS single items with sf_sched_push: read
 *     `t` = tail (before the claim), P1 claim CAS on tail, slot write, wait for their turn,
 *     release store of `commit`; P2 seq_cst load of the owner's event word: if somebody is
 *     announced, notify_slow and return; P3 seq_cst load of idle_mask (without bit 0);
 *     P4 if a bit is left and head >= t: wake that worker (sf_event_notify: seq_cst fence,
 *     load its word, notify_slow).
 *   - after taking items a worker "handles" them: it comes back to sf_sched_wait at once,
 *     or (-DOWNER_STUCK, worker 0 only) never: a handler that runs for as long as you like.
 *     The owner may also be stuck from the start (busy with items from before).
 *
 * Checked (safety run, -DNOCLAIM, see README.md):
 *   - no item taken twice (assert in take);
 *   - no lost wake-up: in a state where nobody can move any more (spin's `timeout`: every
 *     producer done, every worker asleep on its epoch or stuck in its handler), ring 0 is
 *     empty (head == tail): items are never left queued while the workers that could take
 *     them sleep. Sleeping forever is a valid end state (labels end_*); the Monitor makes
 *     the assertion.
 *   Without OWNER_STUCK this is "the items get handled" (the owner comes back to them); with
 *   OWNER_STUCK it is the header's claim that a backlog never waits for a busy owner while
 *   another worker idles: only the thief wake-up protocol can satisfy it.
 *
 * Memory model: as in park.pml. Interleaving is sequential consistency, sound for the
 * seq_cst Dekker pairs; the one release store the wake-up decisions read, `commit`, goes
 * through a per-producer store buffer (Flusher) that later loads of the same thread may
 * pass (store->load reordering, what x86 does and C11 allows). A seq_cst fence or RMW in
 * the producer (the next claim CAS, the fence of sf_event_notify) waits for its buffer to
 * drain. Loads of `head` that are only acquire in the code (P4, has_items) are modelled as
 * SC loads: this can hide, not invent, a counterexample.
 *
 * Variants:
 *   -DO2_PUBLISHED  negative control: the owner's O2 re-checks PUBLISHED items (commit !=
 *                head) as _sched.h first did, instead of claims (tail != head,
 *                sf_ring_has_claims_seqcst, what it does now); with OWNER_STUCK a backlog
 *                can then wait behind a busy owner (see README.md).
 *   -DSC_COMMIT  the commit store is visible at once (no store->load reordering).
 *   -DNO_O3      negative control: the owner never wakes a thief after a drain (the state
 *                of the code before O1-O3 were added); with OWNER_STUCK the backlog built
 *                behind a woken owner is lost even under SC_COMMIT.
 *   -DGATED      the thief starts with its steal gate closed (_sched.h, "Gated thieves":
 *                a process runner whose window is busy) and an Opener opens it at any
 *                moment (seq_cst store, then sf_event_notify: fence, load, notify_slow).
 *                A gated pass neither steals nor sets the idle bit; after its prepare it
 *                reloads the gate and, found open, runs its wait again as a thief. The
 *                check is unchanged: once the gate is open, no backlog waits while the
 *                thief sleeps (with OWNER_STUCK only the gate's wake-up can ensure it).
 *   -DNO_GATE_RECHECK  negative control (with GATED): no gate reload after the prepare;
 *                an opening that lands between the pass's gate load and its prepare is
 *                missed, and the thief sleeps through the backlog.
 *   -DNPROD=1|2, -DITEMS=1|2, -DOWNER_STUCK.
 *
 * Not covered: flush requests and flush holds (S1-S3), deadlines, stop, close, space_ev
 * (the ring never fills: CAP is the total number of items), more than two workers, the
 * idle bit of the owner (only read when another shard has items, never here), spurious
 * wake-ups, epoch wrap-around.
 */

#ifndef NPROD
#define NPROD 2
#endif
#ifndef ITEMS
#define ITEMS 1              /* items per producer */
#endif
#define TOTAL (NPROD * ITEMS)
#define CAP TOTAL            /* never full */
#define NONE 255

/* ring 0 (ring 1 is never pushed to: always empty, no claims) */
byte tail = 0;
byte commit = 0;
byte head = 0;
byte slot[CAP];
byte cbuf[NPROD];            /* per-producer store buffer for `commit` (1 entry: it drains
                                before the producer's next claim CAS) */

/* the workers' data_ev words, as two halves always accessed together */
byte waiters[2];
byte epoch[2];

bool idle1 = false;          /* idle_mask bit 1 */
#ifdef GATED
bool gate1 = true;           /* the thief's steal gate: closed until the Opener runs */
#else
bool gate1 = false;
#endif

byte taken[TOTAL + 1];
byte ntaken = 0;
byte claimed = 0;
byte pdone = 0;

inline take(v) {
    assert(v >= 1 && v <= TOTAL);
    assert(taken[v] == 0);   /* exactly once */
    taken[v] = 1;
    ntaken++
}

/* sf_event_notify_slow on worker w's event: consume every announcement, move the epoch,
 * broadcast (the sleeper's guard `epoch[w] != key`). */
inline notify_slow(w) {
    atomic {
        if
        :: waiters[w] != 0 -> epoch[w]++; waiters[w] = 0
        :: else -> skip
        fi
    }
}

inline cancel(w, key) {
    atomic {
        if
        :: epoch[w] == key && waiters[w] != 0 -> waiters[w]--
        :: else -> skip
        fi
    }
}

#define OWN_COMMIT(p) (cbuf[p] != NONE -> cbuf[p] : commit)

proctype Producer(byte p) {
    byte i = 0, t, c;
    do
    :: i == ITEMS -> break
    :: i < ITEMS ->
        t = tail;                            /* `t` of sf_sched_push: before the claim */
        /* P1 the claim CAS (a seq_cst RMW: our buffered commit store drains first) */
        atomic { cbuf[p] == NONE -> c = tail; tail++; claimed++ };
        slot[c] = p * ITEMS + i + 1;
        OWN_COMMIT(p) == c;                  /* earlier claimers publish first */
        cbuf[p] = c + 1;                     /* release store of commit: buffered */
#ifdef SC_COMMIT
        cbuf[p] == NONE;                     /* (variant: as if the store were seq_cst) */
#endif
        /* P2: the owner announced: notify it, and that is all */
        if
        :: waiters[0] != 0 -> notify_slow(0); goto next
        :: else -> skip
        fi;
        /* P3-P4 */
        if
        :: idle1 && head >= t ->
            cbuf[p] == NONE;                 /* sf_event_notify's seq_cst fence */
            if
            :: waiters[1] != 0 -> notify_slow(1)
            :: else -> skip
            fi
        :: else -> skip
        fi;
next:
        atomic { t = 0; c = 0; i++ }
    od;
    pdone++
}

proctype Flusher(byte p) {
end:
    do
    :: atomic { cbuf[p] != NONE -> commit = cbuf[p]; cbuf[p] = NONE }
    od
}

/* Worker 0: the owner of ring 0. */
proctype Owner() {
    byte h, c, n, key;
#ifdef OWNER_STUCK
    if
    :: true -> end_stuck_at_start: false     /* busy with older items, for ever */
    :: true -> skip
    fi;
#endif
top:
    atomic { h = 0; c = 0; n = 0; key = 0 };
    /* sf_sched_pop_own -> sf_ring_pop: acquire head, acquire commit, copy, CAS head */
    h = head;
    c = commit;
    if
    :: c > h ->
        if
        :: atomic {
               head == h -> head = c;
               n = h;
               do
               :: n < c -> take(slot[n]); n++
               :: else -> break
               od
           }
        :: atomic { head != h -> skip };    /* the thief won: retry */
            goto top
        fi;
        /* O2: a backlog remains? */
#ifndef O2_PUBLISHED
        c = tail;                            /* sf_ring_has_claims_seqcst */
#else
        c = commit;                          /* the old check: commit != head */
#endif
        if
#ifndef NO_O3
        :: c != head ->
#else
        :: false ->
#endif
            /* O2 m = idle_mask without bit 0, O3 wake (sf_event_notify: fence, load) */
            if
            :: idle1 && waiters[1] != 0 -> notify_slow(1)
            :: else -> skip
            fi
        :: else -> skip
        fi;
        /* handle them: come back at once, or (OWNER_STUCK) never */
        if
        :: true -> goto top
#ifdef OWNER_STUCK
        :: true -> end_stuck: false
#endif
        fi
    :: else -> skip
    fi;
    /* (a steal pass over ring 1: always empty) */
    /* the idle spin on has_items, then has_claims (yield, go round): one exact poll each */
    if
    :: commit != head -> goto top
    :: else -> skip
    fi;
    if
    :: tail != head -> goto top
    :: else -> skip
    fi;
    /* T1 (bit 0 is never read here), T2 prepare */
    d_step { key = epoch[0]; waiters[0]++ };
    /* T3: own claims || any_claims (ring 0's claims, both times) */
    if
    :: tail != head -> cancel(0, key); goto top
    :: else -> skip
    fi;
    /* T4 */
    d_step { h = 0; c = 0; n = 0 };
end_sleep:
    epoch[0] != key;
    /* T5 */
    goto top
}

/* Worker 1: idle; its own ring stays empty; it steals from ring 0. */
proctype Thief() {
    byte h, c, n, key;
    bool thief;
top:
    atomic { h = 0; c = 0; n = 0; key = 0 };
    thief = !gate1;                          /* this pass's role */
    /* (pop own: empty) S1; sf_sched_steal: has_items, then sf_ring_pop_part(divisor 2) */
    if
    :: thief && commit != head ->
        h = head;
        c = commit;
        if
        :: c > h ->
            if
            :: atomic {
                   head == h ->
                   n = h + (c - h + 1) / 2;
                   head = n;
                   do
                   :: h < n -> take(slot[h]); h++
                   :: else -> break
                   od
               };
               goto top                      /* handled: back to the wait */
            :: atomic { head != h -> skip }  /* lost the CAS */
            fi
        :: else -> skip
        fi
    :: else -> skip
    fi;
    /* S3 release; own ring never finished; the spin on its own (empty) ring */
    d_step { h = 0; c = 0; n = 0 };
    if
    :: thief -> idle1 = true                 /* T1 */
    :: else -> skip
    fi;
    d_step { key = epoch[1]; waiters[1]++ }; /* T2 */
    if
#ifndef NO_GATE_RECHECK
    :: !thief && !gate1 -> cancel(1, key)    /* the gate opened: again, as a thief */
#endif
    :: thief && tail != head -> cancel(1, key) /* T3: sf_sched_any_claims */
    :: else ->
end_sleep:
        epoch[1] != key                      /* T4 */
    fi;
    if
    :: thief -> idle1 = false                /* T5 */
    :: else -> skip
    fi;
    goto top
}

/* Opens the thief's gate (sf_sched_gate(s, 0)): a seq_cst store, then sf_event_notify. */
proctype Opener() {
    gate1 = false;
    if
    :: waiters[1] != 0 -> notify_slow(1)
    :: else -> skip
    fi
}

/* When nothing can move any more, nothing may be left queued. */
proctype Monitor() {
    timeout ->
    assert(pdone == NPROD);
    assert(head == tail && tail == claimed && ntaken == claimed)
}

init {
    byte i;
    for (i : 0 .. NPROD - 1) { cbuf[i] = NONE }
    atomic {
        run Owner();
        run Thief();
#ifdef GATED
        run Opener();
#endif
        for (i : 0 .. NPROD - 1) { run Producer(i); run Flusher(i) }
        run Monitor()
    }
}
