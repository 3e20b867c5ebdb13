/* BatchProposer policies: when entries are closed and what they hold. */
#include <pthread.h>
#include <string.h>

#include "batch_proposer.h"
#include "check.h"

static int wakes;
static void on_wake(void *arg)
{
    (void)arg;
    __atomic_fetch_add(&wakes, 1, __ATOMIC_RELAXED);
}

static const uint8_t DATA[4] = {0x0a, 0x01, 'k', 0};

static void submit_n(batch_proposer *bp, size_t n, size_t first_ctx)
{
    for (size_t i = 0; i < n; i++)
        CHECK_EQ_INT(batch_proposer_submit(bp, BATCH_OP_PUT, DATA, 3, (void *)(first_ctx + i)), 0);
}

static size_t take(batch_proposer *bp, uint64_t now, unsigned in_flight, uint64_t *deadline,
                   size_t expect_first_ctx)
{
    batch_entry e;
    int rv = batch_proposer_next(bp, now, in_flight, malloc, &e, deadline);
    CHECK(rv >= 0);
    if (rv == 0)
        return 0;
    CHECK(e.len % 8 == 0);
    for (size_t i = 0; i < e.n_ops; i++)
        CHECK_EQ_INT((size_t)e.ctxs[i], expect_first_ctx + i);
    size_t n = e.n_ops;
    free(e.buf);
    free(e.ctxs);
    return n;
}

static void test_adaptive(void)
{
    batch_config cfg = {BATCH_ADAPTIVE, 10, 1000, 2, 0};
    wakes = 0;
    batch_proposer *bp = batch_proposer_new(&cfg, on_wake, NULL);
    uint64_t t = batch_now_us(), deadline;

    /* Nothing queued: nothing to do, no deadline. */
    CHECK_EQ_INT(take(bp, t, 0, &deadline, 0), 0);
    CHECK_EQ_INT(deadline, 0);

    /* Low load: a lone op goes out at once, without waiting for a timer. */
    submit_n(bp, 1, 1);
    CHECK_EQ_INT(wakes, 1);
    CHECK_EQ_INT(take(bp, t, 0, &deadline, 1), 1);

    /* Pipeline full: ops wait, with a deadline of max_wait after the oldest. The clock
     * given to take() is read before the submit, so a slow machine cannot make the ops
     * look overdue. */
    uint64_t now = batch_now_us();
    submit_n(bp, 5, 2);
    uint64_t after = batch_now_us();
    CHECK_EQ_INT(wakes, 2);
    CHECK_EQ_INT(take(bp, now, 2, &deadline, 2), 0);
    CHECK(deadline >= now + 1000 && deadline <= after + 1000);
    /* A completion frees a slot: all five go out as one entry. */
    CHECK_EQ_INT(take(bp, now, 1, &deadline, 2), 5);

    /* More than max_ops: a full entry even with the pipeline full, then the rest waits. */
    now = batch_now_us();
    submit_n(bp, 13, 7);
    CHECK_EQ_INT(take(bp, now, 2, &deadline, 7), 10);
    CHECK_EQ_INT(take(bp, now, 2, &deadline, 17), 0);
    CHECK(deadline != 0);
    /* The backstop timer. */
    CHECK_EQ_INT(take(bp, deadline, 2, &deadline, 17), 3);

    batch_metrics m;
    batch_proposer_metrics(bp, &m);
    CHECK_EQ_INT(m.ops_total, 19);
    CHECK_EQ_INT(m.entries_total, 4);
    CHECK_EQ_INT(m.flush_idle, 2);
    CHECK_EQ_INT(m.flush_full, 1);
    CHECK_EQ_INT(m.flush_timer, 1);
    CHECK_EQ_INT(m.size_hist[0], 1); /* 1 op */
    CHECK_EQ_INT(m.size_hist[2], 1); /* 3 ops */
    CHECK_EQ_INT(m.size_hist[3], 1); /* 5 ops */
    CHECK_EQ_INT(m.size_hist[4], 1); /* 10 ops */
    batch_proposer_free(bp);
}

static void test_entry_bytes_cap(void)
{
    batch_config cfg = {BATCH_ADAPTIVE, 100, 1000, 1, 8};
    batch_proposer *bp = batch_proposer_new(&cfg, NULL, NULL);
    uint64_t deadline;
    submit_n(bp, 4, 1);
    /* 3 bytes each, cap 8: two per entry. */
    CHECK_EQ_INT(take(bp, batch_now_us(), 0, &deadline, 1), 2);
    CHECK_EQ_INT(take(bp, batch_now_us(), 0, &deadline, 3), 2);
    batch_proposer_free(bp);
}

static void test_off(void)
{
    batch_config cfg = {BATCH_OFF, 100, 1000, 1, 0};
    batch_proposer *bp = batch_proposer_new(&cfg, NULL, NULL);
    uint64_t deadline;
    submit_n(bp, 3, 1);
    for (size_t i = 0; i < 3; i++)
        CHECK_EQ_INT(take(bp, batch_now_us(), 50, &deadline, 1 + i), 1);
    CHECK_EQ_INT(take(bp, batch_now_us(), 0, &deadline, 0), 0);
    batch_proposer_free(bp);
}

static void test_tiers(void)
{
    batch_config cfg = {BATCH_TIERS, 100, 1000, 1, 0};
    batch_proposer *bp = batch_proposer_new(&cfg, NULL, NULL);
    uint64_t deadline, now = batch_now_us();
    submit_n(bp, 2, 1);
    uint64_t after = batch_now_us();
    /* Under 10 ops/s the wait is 10 ms, whatever the pipeline (clock read before submit). */
    CHECK_EQ_INT(take(bp, now, 0, &deadline, 1), 0);
    CHECK(deadline >= now + 10000 && deadline <= after + 10000);
    CHECK_EQ_INT(take(bp, deadline, 0, &deadline, 1), 2);
    batch_metrics m;
    batch_proposer_metrics(bp, &m);
    CHECK_EQ_INT(m.current_wait_us, 10000);
    CHECK_EQ_INT(m.flush_timer, 1);
    /* After a second at over 100 ops/s the wait drops to 100 us. */
    submit_n(bp, 500, 3);
    now = batch_now_us() + 1000001;
    size_t got = 0;
    while (got < 500) {
        size_t n = take(bp, now, 0, &deadline, 3 + got);
        if (n == 0)
            now = deadline;
        got += n;
    }
    batch_proposer_metrics(bp, &m);
    CHECK_EQ_INT(m.current_wait_us, 100);
    CHECK(m.ops_per_sec > 100);
    batch_proposer_free(bp);
}

#define THREADS 4
#define PER_THREAD 20000

static void *producer(void *arg)
{
    batch_proposer *bp = arg;
    static int id_counter;
    size_t id = (size_t)__atomic_fetch_add(&id_counter, 1, __ATOMIC_RELAXED);
    for (size_t i = 0; i < PER_THREAD; i++)
        CHECK_EQ_INT(batch_proposer_submit(bp, BATCH_OP_PUT, DATA, 3, (void *)((id << 32) | i)), 0);
    return NULL;
}

static void test_threads(void)
{
    batch_config cfg = {BATCH_ADAPTIVE, 100, 1000, 2, 0};
    batch_proposer *bp = batch_proposer_new(&cfg, NULL, NULL);
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, producer, bp);
    size_t next_seq[THREADS] = {0}, total = 0;
    uint64_t deadline;
    uint64_t stop = batch_now_us() + 30 * 1000000u;
    while (total < THREADS * PER_THREAD && batch_now_us() < stop) {
        batch_entry e;
        int rv = batch_proposer_next(bp, batch_now_us(), 0, malloc, &e, &deadline);
        CHECK(rv >= 0);
        if (rv == 0)
            continue;
        CHECK(e.n_ops <= 100);
        for (size_t i = 0; i < e.n_ops; i++) {
            size_t v = (size_t)e.ctxs[i], t = v >> 32, seq = v & 0xffffffffu;
            CHECK(t < THREADS);
            CHECK_EQ_INT(seq, next_seq[t]); /* each thread's ops in order, none lost */
            next_seq[t]++;
        }
        total += e.n_ops;
        free(e.buf);
        free(e.ctxs);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    CHECK_EQ_INT(total, THREADS * PER_THREAD);
    batch_proposer_free(bp);
}

static size_t drained;
static void count_drained(void *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    drained++;
}

static void test_drain(void)
{
    batch_config cfg = {BATCH_ADAPTIVE, 100, 1000, 1, 0};
    batch_proposer *bp = batch_proposer_new(&cfg, NULL, NULL);
    CHECK_EQ_INT(batch_proposer_queued(bp), 0);
    submit_n(bp, 7, 1);
    CHECK_EQ_INT(batch_proposer_queued(bp), 7);
    batch_proposer_drain(bp, count_drained, NULL);
    CHECK_EQ_INT(drained, 7);
    CHECK_EQ_INT(batch_proposer_queued(bp), 0);
    uint64_t deadline;
    CHECK_EQ_INT(take(bp, batch_now_us(), 0, &deadline, 0), 0);
    submit_n(bp, 1, 1);
    CHECK_EQ_INT(take(bp, batch_now_us(), 0, &deadline, 1), 1);
    CHECK_EQ_INT(batch_proposer_queued(bp), 0);
    batch_proposer_free(bp);
}

int main(void)
{
    test_adaptive();
    test_entry_bytes_cap();
    test_off();
    test_tiers();
    test_threads();
    test_drain();
    printf("batch proposer: ok\n");
    return 0;
}
