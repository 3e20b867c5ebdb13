#include "batch_proposer.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct queued_op {
    batch_op op;
    void *ctx;
    uint64_t enqueued_us;
} queued_op;

struct batch_proposer {
    batch_config cfg;
    batch_wake_fn wake;
    void *wake_arg;

    pthread_mutex_t mu;
    queued_op *q; /* guarded by mu */
    size_t q_len, q_cap;
    size_t q_bytes;
    uint64_t window_ops; /* ops submitted since window_start_us; guarded by mu */

    /* Owner-thread state. */
    uint64_t window_start_us;
    uint64_t tier_wait_us;
    batch_op *scratch_ops;
    size_t scratch_cap;

    /* Counters, updated with atomics, read by batch_proposer_metrics. */
    batch_metrics m;
};

uint64_t batch_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void counter_add(uint64_t *c, uint64_t v)
{
    __atomic_fetch_add(c, v, __ATOMIC_RELAXED);
}

static void counter_set(uint64_t *c, uint64_t v)
{
    __atomic_store_n(c, v, __ATOMIC_RELAXED);
}

batch_proposer *batch_proposer_new(const batch_config *cfg, batch_wake_fn wake, void *wake_arg)
{
    batch_proposer *bp = calloc(1, sizeof *bp);
    if (!bp)
        return NULL;
    bp->cfg = *cfg;
    if (bp->cfg.max_ops == 0)
        bp->cfg.max_ops = 1;
    if (bp->cfg.max_in_flight == 0)
        bp->cfg.max_in_flight = 1;
    if (bp->cfg.policy == BATCH_OFF)
        bp->cfg.max_ops = 1;
    bp->wake = wake;
    bp->wake_arg = wake_arg;
    pthread_mutex_init(&bp->mu, NULL);
    bp->window_start_us = batch_now_us();
    bp->tier_wait_us = 10000;
    bp->m.current_wait_us = bp->cfg.policy == BATCH_TIERS ? bp->tier_wait_us
                            : bp->cfg.policy == BATCH_ADAPTIVE ? bp->cfg.max_wait_us
                                                               : 0;
    return bp;
}

void batch_proposer_free(batch_proposer *bp)
{
    if (!bp)
        return;
    pthread_mutex_destroy(&bp->mu);
    free(bp->q);
    free(bp->scratch_ops);
    free(bp);
}

int batch_proposer_submit(batch_proposer *bp, batch_op_type type, const uint8_t *data,
                          size_t len, void *ctx)
{
    uint64_t now = batch_now_us();
    pthread_mutex_lock(&bp->mu);
    if (bp->q_len == bp->q_cap) {
        size_t cap = bp->q_cap ? bp->q_cap * 2 : 256;
        queued_op *q = realloc(bp->q, cap * sizeof *q);
        if (!q) {
            pthread_mutex_unlock(&bp->mu);
            return -1;
        }
        bp->q = q;
        bp->q_cap = cap;
    }
    int was_empty = bp->q_len == 0;
    bp->q[bp->q_len++] = (queued_op){{type, data, len}, ctx, now};
    bp->q_bytes += len;
    bp->window_ops++;
    pthread_mutex_unlock(&bp->mu);
    counter_add(&bp->m.ops_total, 1);
    if (was_empty && bp->wake)
        bp->wake(bp->wake_arg);
    return 0;
}

/* Owner thread: closes the rate window once a second; TIERS sets its wait. */
static void update_rate(batch_proposer *bp, uint64_t now)
{
    uint64_t elapsed = now - bp->window_start_us;
    if (elapsed < 1000000)
        return;
    pthread_mutex_lock(&bp->mu);
    uint64_t ops = bp->window_ops;
    bp->window_ops = 0;
    pthread_mutex_unlock(&bp->mu);
    uint64_t rate = ops * 1000000u / elapsed;
    bp->window_start_us = now;
    counter_set(&bp->m.ops_per_sec, rate);
    if (bp->cfg.policy == BATCH_TIERS) {
        bp->tier_wait_us = rate < 10 ? 10000 : rate <= 100 ? bp->cfg.max_wait_us : 100;
        counter_set(&bp->m.current_wait_us, bp->tier_wait_us);
    }
}

static unsigned size_bucket(size_t n)
{
    unsigned b = 0;
    while (b < BATCH_SIZE_BUCKETS - 1 && ((size_t)1 << b) < n)
        b++;
    return b;
}

size_t batch_proposer_queued(batch_proposer *bp)
{
    pthread_mutex_lock(&bp->mu);
    size_t n = bp->q_len;
    pthread_mutex_unlock(&bp->mu);
    return n;
}

int batch_proposer_next(batch_proposer *bp, uint64_t now_us, unsigned in_flight,
                        void *(*alloc)(size_t), batch_entry *out, uint64_t *deadline_us)
{
    *deadline_us = 0;
    update_rate(bp, now_us);

    pthread_mutex_lock(&bp->mu);
    if (bp->q_len == 0) {
        pthread_mutex_unlock(&bp->mu);
        return 0;
    }
    int full = bp->q_len >= bp->cfg.max_ops ||
               (bp->cfg.max_entry_bytes && bp->q_bytes >= bp->cfg.max_entry_bytes);
    uint64_t waited = now_us > bp->q[0].enqueued_us ? now_us - bp->q[0].enqueued_us : 0;
    uint64_t *trigger;
    if (bp->cfg.policy == BATCH_OFF) {
        trigger = &bp->m.flush_idle;
    } else if (full) {
        trigger = &bp->m.flush_full;
    } else if (bp->cfg.policy == BATCH_ADAPTIVE && in_flight < bp->cfg.max_in_flight) {
        trigger = &bp->m.flush_idle;
    } else {
        uint64_t wait = bp->cfg.policy == BATCH_TIERS ? bp->tier_wait_us : bp->cfg.max_wait_us;
        if (waited < wait) {
            *deadline_us = bp->q[0].enqueued_us + wait;
            pthread_mutex_unlock(&bp->mu);
            return 0;
        }
        trigger = &bp->m.flush_timer;
    }

    /* Take ops from the head up to max_ops and max_entry_bytes (at least one). */
    size_t n = 0, bytes = 0;
    while (n < bp->q_len && n < bp->cfg.max_ops) {
        if (n > 0 && bp->cfg.max_entry_bytes && bytes + bp->q[n].op.len > bp->cfg.max_entry_bytes)
            break;
        bytes += bp->q[n].op.len;
        n++;
    }
    if (n > bp->scratch_cap) {
        batch_op *s = realloc(bp->scratch_ops, n * sizeof *s);
        if (!s) {
            pthread_mutex_unlock(&bp->mu);
            return -1;
        }
        bp->scratch_ops = s;
        bp->scratch_cap = n;
    }
    for (size_t i = 0; i < n; i++)
        bp->scratch_ops[i] = bp->q[i].op;
    size_t len = entry_encoded_size(bp->scratch_ops, n);
    void **ctxs = malloc(n * sizeof *ctxs);
    uint8_t *buf = ctxs ? alloc(len) : NULL;
    if (!buf) {
        pthread_mutex_unlock(&bp->mu);
        free(ctxs);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        ctxs[i] = bp->q[i].ctx;
    /* The ops' data stays valid after they leave the queue: their owners
     * wait for this entry. */
    memmove(bp->q, bp->q + n, (bp->q_len - n) * sizeof *bp->q);
    bp->q_len -= n;
    bp->q_bytes -= bytes;
    pthread_mutex_unlock(&bp->mu);

    uint64_t t0 = now_ns();
    entry_encode(bp->scratch_ops, n, buf, len);
    counter_add(&bp->m.encode_ns_total, now_ns() - t0);
    counter_add(trigger, 1);
    counter_add(&bp->m.entries_total, 1);
    counter_add(&bp->m.size_hist[size_bucket(n)], 1);

    out->buf = buf;
    out->len = len;
    out->ctxs = ctxs;
    out->n_ops = n;
    return 1;
}

void batch_proposer_drain(batch_proposer *bp, void (*fn)(void *ctx, void *arg), void *arg)
{
    pthread_mutex_lock(&bp->mu);
    size_t n = bp->q_len;
    queued_op *q = bp->q;
    bp->q = NULL;
    bp->q_len = bp->q_cap = 0;
    bp->q_bytes = 0;
    pthread_mutex_unlock(&bp->mu);
    for (size_t i = 0; i < n; i++)
        fn(q[i].ctx, arg);
    free(q);
}

void batch_proposer_metrics(batch_proposer *bp, batch_metrics *out)
{
    uint64_t *src = (uint64_t *)&bp->m, *dst = (uint64_t *)out;
    for (size_t i = 0; i < sizeof *out / sizeof(uint64_t); i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}
