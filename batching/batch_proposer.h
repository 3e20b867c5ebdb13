/*
 * batch_proposer — gathers client write operations from many threads and
 * decides when to close them into one raft entry.
 *
 * Any thread calls batch_proposer_submit(); the owner of the raft node (one
 * thread) calls batch_proposer_next() whenever something may have changed:
 * after the wake callback fired, after an entry it proposed has completed,
 * and when the deadline returned by the last call has passed.
 *
 * Policies (DESIGN.md "Batching"):
 *  - ADAPTIVE: an op never waits for company while the raft pipeline has room
 *    (fewer than max_in_flight entries proposed and not yet applied): it is
 *    flushed at once ("idle"). While the pipeline is full, ops accumulate and
 *    go out when an entry completes, when max_ops are queued ("full") or, as a
 *    backstop, when the oldest has waited max_wait ("timer"). So batches are
 *    as large as the load makes them and no larger.
 *  - TIERS: once a second the wait is set from the last second's rate (under
 *    10 ops/s 10 ms, 10-100 ops/s max_wait, over 100 ops/s 100 us); a batch
 *    goes out when full or when its oldest op has waited that long.
 *  - OFF: one entry per op, at once.
 */
#ifndef BALLAST_BATCHING_BATCH_PROPOSER_H
#define BALLAST_BATCHING_BATCH_PROPOSER_H

#include <stddef.h>
#include <stdint.h>

#include "entry_codec.h"

typedef enum {
    BATCH_ADAPTIVE = 0,
    BATCH_TIERS,
    BATCH_OFF,
} batch_policy_kind;

typedef struct batch_config {
    batch_policy_kind policy;
    uint32_t max_ops;        /* ops per entry at most (--batch-max-ops) */
    uint64_t max_wait_us;    /* --batch-max-wait */
    unsigned max_in_flight;  /* ADAPTIVE: entries kept in flight */
    size_t max_entry_bytes;  /* an entry is closed ("full") past this size */
} batch_config;

/* Called (from the submitting thread) when the queue goes from empty to
 * non-empty, so the owner thread calls batch_proposer_next(). */
typedef void (*batch_wake_fn)(void *arg);

typedef struct batch_proposer batch_proposer;

/* Returns NULL on allocation failure. */
batch_proposer *batch_proposer_new(const batch_config *cfg, batch_wake_fn wake, void *wake_arg);
void batch_proposer_free(batch_proposer *bp);

/* Queues one op. `data` (len bytes, the encoded etcd request) is borrowed until
 * the entry holding it has been produced by batch_proposer_next(); `ctx` is the
 * caller's token for this op, handed back in the entry in submission order.
 * Returns 0, or -1 when out of memory. Thread-safe. */
int batch_proposer_submit(batch_proposer *bp, batch_op_type type, const uint8_t *data,
                          size_t len, void *ctx);

/* An entry ready to propose. `buf` was obtained from the alloc function given
 * to batch_proposer_next and now belongs to the caller; so does `ctxs`
 * (free() it), holding n_ops tokens in the order of the ops in the entry. */
typedef struct batch_entry {
    uint8_t *buf;
    size_t len;
    void **ctxs;
    size_t n_ops;
} batch_entry;

/* Owner thread only. `in_flight` is how many entries the caller has proposed
 * and not yet seen applied. Returns 1 and fills *out when an entry should be
 * proposed now (call again: there may be more), 0 when nothing is to be done
 * now, in which case *deadline_us is the time (same clock as now_us) at which
 * to call again, or 0 if only a wake or a completion can change anything.
 * Returns -1 when alloc failed (the ops stay queued). */
int batch_proposer_next(batch_proposer *bp, uint64_t now_us, unsigned in_flight,
                        void *(*alloc)(size_t), batch_entry *out, uint64_t *deadline_us);

/* How many ops wait to be proposed. Thread-safe (a snapshot). */
size_t batch_proposer_queued(batch_proposer *bp);

/* Removes every queued op, handing their tokens to fn (for failing them when
 * the node shuts down or loses leadership). Owner thread only. */
void batch_proposer_drain(batch_proposer *bp, void (*fn)(void *ctx, void *arg), void *arg);

#define BATCH_SIZE_BUCKETS 12 /* 1, 2, 4, ... 1024, >1024 */

typedef struct batch_metrics {
    uint64_t ops_total;
    uint64_t entries_total;
    uint64_t flush_full;
    uint64_t flush_timer;
    uint64_t flush_idle;
    uint64_t encode_ns_total;
    uint64_t current_wait_us;  /* the wait the policy applies now */
    uint64_t ops_per_sec;      /* ops submitted in the last whole second */
    uint64_t size_hist[BATCH_SIZE_BUCKETS]; /* entries by op count, bucket i holds <= 2^i */
} batch_metrics;

/* A consistent copy of the counters. Thread-safe. */
void batch_proposer_metrics(batch_proposer *bp, batch_metrics *out);

/* A monotonic clock in microseconds, the one the owner should pass as now_us. */
uint64_t batch_now_us(void);

#endif
