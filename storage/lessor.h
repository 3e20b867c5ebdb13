/*
 * lessor — the leader-local half of etcd's lessor: when each lease expires.
 *
 * The replicated half (which leases exist, their granted TTL, attached keys)
 * is the store's (mvcc.h); the lessor mirrors the lease IDs and TTLs through
 * the store's lease hook and keeps, only while this member is the leader
 * ("primary"), an expiry time per lease in a min-heap. It never revokes
 * anything itself: when a lease expires it calls `expired`, which is to
 * propose a LeaseRevoke through raft so that every member revokes it at the
 * same revision. An expired lease is offered again after `retry_ms` if it is
 * still there (the proposal may have been lost with a leader change).
 *
 * As in etcd 3.4: a lease granted while primary expires TTL seconds after it
 * is applied; a follower's leases never expire; on promotion every lease's
 * expiry becomes now + TTL + promote_extend_ms (the election timeout), so
 * leases survive a restart or a leader change with a full TTL; keep-alive
 * (renew) works on the primary only.
 *
 * Memory is one small record per lease, nothing per key. All calls are
 * thread-safe (one mutex).
 */
#ifndef BALLAST_STORAGE_LESSOR_H
#define BALLAST_STORAGE_LESSOR_H

#include <stddef.h>
#include <stdint.h>

typedef struct lessor lessor;

typedef struct lessor_config {
    /* Monotonic clock in nanoseconds; NULL for CLOCK_MONOTONIC. */
    int64_t (*now_ns)(void *arg);
    void *clock_arg;
    /* Called (without the lessor's lock held) for each expired lease. */
    void (*expired)(void *arg, int64_t id);
    void *expired_arg;
    int64_t promote_extend_ms; /* etcd: the election timeout */
    int64_t retry_ms;          /* 0: etcd's 3 s */
} lessor_config;

enum { LESSOR_OK = 0, LESSOR_NOT_FOUND = 1, LESSOR_NOT_PRIMARY = 2 };

/* Returns NULL when out of memory. */
lessor *lessor_new(const lessor_config *cfg);
/* Starts a thread that calls lessor_expire() when the earliest lease is due.
 * Without it (tests), call lessor_expire() yourself. Returns 0 or -1. */
int lessor_start(lessor *l);
/* Stops the thread, if any: no `expired` call is running or follows. */
void lessor_stop(lessor *l);
/* Stops the thread, if any, and frees everything. */
void lessor_free(lessor *l);

/* An mvcc_lease_fn: the store granted (ttl > 0) or revoked (ttl == 0)
 * lease `id`. `arg` is the lessor. Use it as the store's lease hook and to
 * load the leases at start (mvcc_lease_list). */
void lessor_store_changed(void *arg, int64_t id, int64_t ttl);

/* This member became leader (and applied every earlier entry) / stopped. */
void lessor_promote(lessor *l);
void lessor_demote(lessor *l);
int lessor_is_primary(lessor *l);

/* Keep-alive: restarts the lease's TTL, giving it in *ttl. LESSOR_NOT_FOUND
 * for an unknown or already expired lease, LESSOR_NOT_PRIMARY on a follower. */
int lessor_renew(lessor *l, int64_t id, int64_t *ttl);
/* The granted TTL and the time left (ns; INT64_MAX on a follower, may be
 * negative for an expired lease not yet revoked). LESSOR_OK or
 * LESSOR_NOT_FOUND. */
int lessor_lookup(lessor *l, int64_t id, int64_t *ttl, int64_t *remaining_ns);
/* Every lease ID, soonest expiry first (etcd's LeaseLeases order), in a
 * malloc'd array (*ids, caller frees; NULL when there are none). Returns 0
 * or -1 when out of memory. */
int lessor_leases(lessor *l, int64_t **ids, size_t *n);

/* Offers at most `limit` expired leases to `expired` (and schedules their
 * retry). Returns how many were offered. Only the primary expires leases. */
size_t lessor_expire(lessor *l, size_t limit);

#endif
