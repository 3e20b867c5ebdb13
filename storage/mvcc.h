/*
 * mvcc — etcd's multi-version key/value model on RocksDB column families.
 *
 * One global revision per committed write transaction, sub-revisions inside
 * it; create_revision, mod_revision, version, tombstones and compaction as in
 * etcd 3.4. The key index lives in RocksDB, never in a per-key in-memory tree,
 * so memory does not grow with keys or revisions.
 *
 * Threads: mvcc_apply() is called from one thread only (the raft thread).
 * The read calls (mvcc_range, mvcc_txn_read, mvcc_*_revision, mvcc_db_size)
 * may run on any thread at the same time as apply and always see the state
 * of a whole applied entry, never half of one.
 *
 * Errors a client sees are reported as a gRPC status code (the numbers of
 * grpc_status_code; this module does not include gRPC) plus etcd's exact
 * message, a static string.
 *
 * Responses are returned already encoded (protobuf) into a caller-owned
 * growable buffer, so a whole batch of results shares one allocation that the
 * caller reuses.
 */
#ifndef BALLAST_STORAGE_MVCC_H
#define BALLAST_STORAGE_MVCC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft_message.pb-c.h"
#include "rpc.pb-c.h"

/* gRPC status codes used by mvcc results (same numbers as grpc_status_code). */
enum {
    MVCC_STATUS_OK = 0,
    MVCC_STATUS_INVALID_ARGUMENT = 3,
    MVCC_STATUS_NOT_FOUND = 5,
    MVCC_STATUS_FAILED_PRECONDITION = 9,
    MVCC_STATUS_OUT_OF_RANGE = 11,
    MVCC_STATUS_INTERNAL = 13,
    MVCC_STATUS_UNAVAILABLE = 14,
    MVCC_STATUS_RESOURCE_EXHAUSTED = 8,
    MVCC_STATUS_DATA_LOSS = 15,
};

typedef struct mvcc mvcc;

/* A growable byte buffer owned by the caller. Start it zeroed; mvcc calls
 * append to it (realloc as needed). Free `data` with free() when done. */
typedef struct mvcc_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
} mvcc_buf;

/* Appends n bytes to the buffer (grown as needed). Returns 0, or -1 when
 * out of memory. */
int mvcc_buf_put(mvcc_buf *b, const void *p, size_t n);

/* The outcome of one request. When status == MVCC_STATUS_OK the encoded
 * response message (PutResponse, RangeResponse, ...) is the `len` bytes at
 * buf->data + off of the mvcc_buf passed to the call. Otherwise `message` is
 * etcd's error text (static storage) and off/len are 0. */
typedef struct mvcc_result {
    int status;
    const char *message;
    size_t off;
    size_t len;
} mvcc_result;

/* What goes into every ResponseHeader besides the revision. */
typedef struct mvcc_header {
    uint64_t cluster_id;
    uint64_t member_id;
    uint64_t raft_term;
} mvcc_header;

/* Limits enforced by the validation calls (etcd's --max-txn-ops etc.). */
typedef struct mvcc_limits {
    uint32_t max_txn_ops;        /* etcd default 128 */
    uint64_t max_request_bytes;  /* etcd default 1.5 MiB */
} mvcc_limits;

/* Opens (creating if needed) the store in directory `dir`. On failure returns
 * non-zero and sets *errmsg to a malloc'd explanation (caller frees). */
int mvcc_open(const char *dir, mvcc **out, char **errmsg);
void mvcc_close(mvcc *m);

/* The store's memtable budget: every column family's write buffers
 * together (128 MiB). Also the default of mvcc_reserve_write_memory's
 * `bytes` (--memtable-reserve-bytes). Kept a decimal literal so that it
 * can be printed as the flag's default. */
#define MVCC_WRITE_BUFFER_BYTES 134217728

/* Makes memory ready for the write buffers (RocksDB memtables) on the
 * thread that applies. That thread allocates the memtables' blocks (1 MiB
 * each) and writes each byte of them once, so every page of them is written
 * for the first time during an apply, and a first write is a page fault: on
 * a virtualised host it costs ~9 us (measured; more while the other cores are
 * busy), 256 faults per MiB, enough to make applying the bottleneck.
 * With bytes > 0 this call
 *  - tells the C library, for the whole process, to keep freed memory for
 *    reuse instead of handing it back to the kernel (mallopt: blocks under
 *    4 MiB come from the heaps, and 64 MiB stay at the top of a heap), so
 *    the pages of a flushed memtable serve the next one; and
 *  - allocates `bytes` (in 1 MiB blocks, rounded up) in the calling thread's
 *    malloc arena, maps their pages (madvise MADV_POPULATE_WRITE: one call
 *    per block instead of one fault per page) and frees them, so the first
 *    memtables take pages that are already there.
 * The process's RSS grows by `bytes` at once; bytes == 0 changes nothing.
 * Under an allocator other than glibc's (a sanitizer's) it only costs the
 * memory. Returns the bytes mapped. */
size_t mvcc_reserve_write_memory(size_t bytes);

/* The raft index of the last entry applied (0 for a new store). It is written
 * in the same RocksDB write batch as the data that entry produced. */
uint64_t mvcc_applied_index(mvcc *m);
/* 1 for an empty store, as in etcd (the first write gets revision 2). */
int64_t mvcc_current_revision(mvcc *m);
/* -1 until the first compaction, as in etcd. */
int64_t mvcc_compact_revision(mvcc *m);

/* Applies the operations of the committed raft entry `index` in one write
 * batch, filling results[0..n_ops-1] (responses appended to `out`). An entry
 * with index <= mvcc_applied_index() was applied before a restart: it is
 * skipped (results are set to MVCC_STATUS_OK with len 0) and 0 is returned.
 * A client-level failure (e.g. compacted revision, unknown lease) is a result,
 * not a return code. Returns non-zero only if the store itself failed (I/O
 * error, corruption); apply must then stop. */
int mvcc_apply(mvcc *m, uint64_t index, const mvcc_header *h,
               Ballastpb__Op *const *ops, size_t n_ops,
               mvcc_buf *out, mvcc_result *results);
/* Why the last failed mvcc_apply() could not write its batch (RocksDB's
 * message, e.g. "IO error: No space left on device: ..."), or "" when the
 * failure was elsewhere. Apply thread only; valid until the next apply. */
const char *mvcc_write_error(mvcc *m);

/* Serves a Range at the current state (or req->revision). */
int mvcc_range(mvcc *m, const Etcdserverpb__RangeRequest *req, const mvcc_header *h,
               mvcc_buf *out, mvcc_result *result);

/* True when both branches of a Txn hold only Range operations: such a txn
 * is served like a read, without a raft entry. As in etcd 3.4, a nested txn
 * makes the txn a write even if it only reads (clients see the same
 * result either way). */
int mvcc_txn_is_read_only(const Etcdserverpb__TxnRequest *req);
/* Evaluates a read-only Txn against the current state (a txn with writes
 * gets MVCC_STATUS_INTERNAL: it must go through mvcc_apply). */
int mvcc_txn_read(mvcc *m, const Etcdserverpb__TxnRequest *req, const mvcc_header *h,
                  mvcc_buf *out, mvcc_result *result);

/* Request checks done before a write is proposed (etcd's v3rpc checks:
 * empty key, too many txn operations, duplicate keys in a txn, bad sort
 * options...). Return 0 when valid, else fill *result with the error. */
int mvcc_validate_range(const Etcdserverpb__RangeRequest *req, const mvcc_limits *l, mvcc_result *result);
int mvcc_validate_put(const Etcdserverpb__PutRequest *req, const mvcc_limits *l, mvcc_result *result);
int mvcc_validate_delete_range(const Etcdserverpb__DeleteRangeRequest *req, const mvcc_limits *l, mvcc_result *result);
int mvcc_validate_txn(const Etcdserverpb__TxnRequest *req, const mvcc_limits *l, mvcc_result *result);

/* ---- Leases ----
 *
 * The replicated part of etcd's lessor lives in the store: each lease's ID
 * and granted TTL (column family "lease") and which keys are attached to it
 * ("lease_keys": lease ID then key), written in the entry's own write batch.
 * LeaseGrant and LeaseRevoke ops are applied like any write: a revoke
 * deletes every attached key in one revision (watchers see the deletes). A
 * put (or txn put) with a lease that does not exist here gets "etcdserver:
 * requested lease not found"; a put moves its key to its new lease (or
 * detaches it), a delete detaches it. Expiry timers are not the store's: see
 * lessor.h. */

#define MVCC_MAX_LEASE_TTL 9000000000LL /* etcd's MaxLeaseTTL, seconds */

/* A lease as stored: ttl > 0 when it exists (granted or found); ttl == 0 in
 * a hook call means it was revoked. */
typedef void (*mvcc_lease_fn)(void *arg, int64_t id, int64_t ttl);

/* Registers the lease hook: after each entry's write batch is committed,
 * mvcc_apply() calls `fn` on the apply thread for each lease the entry
 * granted or revoked, in order. Call it before apply starts. */
void mvcc_set_lease_hook(mvcc *m, mvcc_lease_fn fn, void *arg);
/* Calls fn for every lease in the store (ordered by ID bytes). Returns 0 or
 * -1 on a store error. */
int mvcc_lease_list(mvcc *m, mvcc_lease_fn fn, void *arg);
/* Calls fn for each key attached to lease `id`, in key order (the bytes
 * are valid during the call only). Returns 0 or -1 on a store error. */
int mvcc_lease_keys(mvcc *m, int64_t id, void (*fn)(void *arg, const uint8_t *key, size_t len),
                    void *arg);

/* Physical compaction. A Compaction op only records the compact revision
 * (reads below it fail at once); a background thread then removes the old
 * revisions in small write batches, so writes are never stalled. etcd
 * answers a Compact with physical=true only after that removal: the caller
 * may wait with mvcc_wait_compaction() (blocking; not on the apply thread)
 * or be told through the callback, which runs on the compaction thread
 * each time removal has finished up to `rev`. */
int64_t mvcc_physical_compact_revision(mvcc *m);
/* Returns 0 once removal has finished up to `rev`, -1 if the store closes. */
int mvcc_wait_compaction(mvcc *m, int64_t rev);
/* The callback must not call mvcc_close(). */
void mvcc_set_compaction_callback(mvcc *m, void (*cb)(void *arg, int64_t rev), void *arg);

/* Bytes the store occupies on disk, and an estimate of the bytes holding live
 * data (Maintenance.Status dbSize / dbSizeInUse). */
void mvcc_db_size(mvcc *m, int64_t *size, int64_t *size_in_use);

/* Makes everything applied so far durable in RocksDB itself (sync its WAL),
 * so the raft log before mvcc_applied_index() may be truncated. */
int mvcc_sync(mvcc *m);

/* ---- Members ----
 *
 * The cluster's member list is replicated data (MemberOp entries, applied
 * in the entry's write batch), so it travels with a snapshot of the store. */

/* Every member (ordered by id), decoded; free with mvcc_members_free.
 * Returns 0 or -1 on a store error. */
int mvcc_members(mvcc *m, Ballastpb__Member ***out, size_t *n);
void mvcc_members_free(Ballastpb__Member **members, size_t n);
/* The cluster id recorded by the first MemberOp BOOTSTRAP; 0 before. */
uint64_t mvcc_cluster_id(mvcc *m);
/* Changes each time an applied entry changed the member list. */
uint64_t mvcc_members_generation(mvcc *m);

/* ---- Watch support ----
 *
 * Events as a watcher sees them (mvccpb.Event). `kv` is an encoded
 * mvccpb.KeyValue: a PUT's full KeyValue; a DELETE's holds only the key and
 * mod_revision, as etcd's. `prev_kv` is the key's KeyValue just before the
 * change (encoded), or NULL when the key did not exist. Pointers are valid
 * only during the callback that receives the event. */
enum { MVCC_EVENT_PUT = 0, MVCC_EVENT_DELETE = 1 };

typedef struct mvcc_event {
    int type;
    int64_t rev; /* main revision (the KeyValue's mod_revision) */
    int64_t sub; /* sub revision inside the txn */
    int64_t create_rev; /* a PUT's create_revision (== rev: the key was created) */
    const uint8_t *key;
    size_t key_len;
    const uint8_t *kv;
    size_t kv_len;
    const uint8_t *prev_kv;
    size_t prev_kv_len;
} mvcc_event;

/* Receives events[0..n-1], in (revision, sub revision) order. */
typedef void (*mvcc_event_fn)(void *arg, const mvcc_event *events, size_t n);

/* Registers the event hook (NULL to remove it). After each entry's write
 * batch is committed, mvcc_apply() calls `fn` on the apply thread with all
 * the changes of that entry (with prev_kv filled), before it returns. `fn`
 * must be quick: copy what is needed and return. Call it before apply
 * starts or while apply is not running, like mvcc_set_lease_lookup. Returns
 * the current revision: the hook gets every revision after it. */
int64_t mvcc_set_event_hook(mvcc *m, mvcc_event_fn fn, void *arg);

/* Optional, for a hook whose owner often needs no events (a watch hub with
 * no watchers): at the start of each entry `want` is asked whether anybody
 * may need the entry's events. When it says no they are not collected, and
 * after the write `skip` is told the revisions [first, last] the entry made
 * instead of the hook being called with them; their events stay readable
 * from the store's history. Both are called on the apply thread with the
 * hook's `arg`. Set them before the hook, or both NULL. */
typedef bool (*mvcc_event_want_fn)(void *arg);
typedef void (*mvcc_event_skip_fn)(void *arg, int64_t first, int64_t last);
void mvcc_set_event_skip(mvcc *m, mvcc_event_want_fn want, mvcc_event_skip_fn skip);

/* History for watchers that are behind: a consistent snapshot of the store
 * (like any read, it sees whole entries only). */
typedef struct mvcc_history mvcc_history;

/* Returns NULL when out of memory. */
mvcc_history *mvcc_history_open(mvcc *m);
void mvcc_history_close(mvcc_history *h);
/* The snapshot's current and compact revisions. */
int64_t mvcc_history_revision(const mvcc_history *h);
int64_t mvcc_history_compact_revision(const mvcc_history *h);
/* Calls fn (once per event, n = 1, prev_kv NULL) for every change with main
 * revision in [from, to], in order. It stops at the end of the first
 * revision after which at least `max_events` events or `max_bytes` bytes of
 * KeyValues were given (0 = no limit): a revision is never cut in two.
 * *next is the first revision not read (to + 1 when all was read). Returns
 * 0, or -1 on a store error. */
int mvcc_history_events(mvcc_history *h, int64_t from, int64_t to, size_t max_events,
                        size_t max_bytes, mvcc_event_fn fn, void *arg, int64_t *next);
/* The KeyValue `key` had just before revision `rev` (its newest version with
 * a main revision < rev), appended encoded to `out`. Returns 1 when found, 0
 * when the key did not exist then (or that history is compacted), -1 on a
 * store error. */
int mvcc_history_prev(mvcc_history *h, const uint8_t *key, size_t key_len, int64_t rev,
                      mvcc_buf *out);

/* ---- Alarms ----
 *
 * etcd's alarms (NOSPACE, CORRUPT), replicated: an AlarmRequest op
 * (ACTIVATE / DEACTIVATE; GET answers the list) applied like any write and
 * kept in "meta". While NOSPACE is active, applying a Put, a Txn with a Put
 * in either top-level branch, or a LeaseGrant fails with "etcdserver: mvcc:
 * database space exceeded" (RESOURCE_EXHAUSTED), as etcd's capped applier;
 * while CORRUPT is active, every write op fails with "etcdserver: corrupt
 * cluster" (DATA_LOSS). */
enum { MVCC_ALARM_NONE = 0, MVCC_ALARM_NOSPACE = 1, MVCC_ALARM_CORRUPT = 2 };

typedef struct mvcc_alarm {
    uint64_t member_id;
    int alarm;
} mvcc_alarm;

/* The active alarms of `type` (MVCC_ALARM_NONE: all), ordered by type then
 * member, in a malloc'd array *out (NULL when there are none; free it).
 * Returns 0, or -1 when out of memory. */
int mvcc_alarm_list(mvcc *m, int type, mvcc_alarm **out, size_t *n);
/* True when an alarm of `type` is active (any member). */
int mvcc_alarm_active(mvcc *m, int type);

/* ---- Hashes (Maintenance.HashKV, Maintenance.Hash) ---- */

enum { MVCC_HASH_OK = 0, MVCC_HASH_COMPACTED = 1, MVCC_HASH_FUTURE = 2, MVCC_HASH_ERROR = -1 };

/* etcd 3.4's HashKV: a CRC-32C over every key revision with main revision
 * in (compact revision, rev], plus, below that, the revisions a compaction
 * at `rev` would keep (each key's live version at rev, last written at or
 * before the compact revision). rev 0 means the current revision; a
 * negative rev hashes nothing. The value differs from etcd's but is the
 * same on any two stores that applied the same entries, whatever their
 * physical compaction progress. *compact_rev and *hash_rev (the current
 * revision) are filled on success. Returns MVCC_HASH_COMPACTED when
 * 0 < rev <= the compact revision (*compact_rev set), MVCC_HASH_FUTURE
 * when rev > the current revision (*hash_rev set), MVCC_HASH_ERROR on a
 * store error. */
int mvcc_hash_kv(mvcc *m, int64_t rev, uint32_t *hash, int64_t *compact_rev, int64_t *hash_rev);
/* A CRC-32C over the whole replicated state (HashKV at the current
 * revision, leases and their keys, revision, compact revision, alarms),
 * nothing member-local (applied index, physical compaction progress).
 * *rev is the current revision. Returns 0 or -1. */
int mvcc_hash(mvcc *m, uint32_t *hash, int64_t *rev);

/* Compacts every column family fully (RocksDB manual compaction), which
 * reclaims the space of removed revisions (Maintenance.Defragment).
 * Blocking: call it from a thread of its own; apply and reads go on.
 * Returns 0, or -1 when it failed or was cancelled. */
int mvcc_defragment(mvcc *m);
/* Makes running and later mvcc_defragment calls return early (shutdown). */
void mvcc_defragment_cancel(mvcc *m);

/* ---- Whole-store dump and load ---- */

/* A consistent dump of the whole store (every column family: data, leases,
 * meta incl. applied index) as a byte stream in Ballast's own framed,
 * checksummed format (mvcc_snapshot.c). Memory does not grow with the
 * store: the stream is produced piece by piece from a RocksDB snapshot. */
typedef struct mvcc_dump mvcc_dump;
/* NULL when out of memory / store error (or the store is incomplete). */
mvcc_dump *mvcc_dump_open(mvcc *m);
uint64_t mvcc_dump_applied_index(const mvcc_dump *d);
int64_t mvcc_dump_revision(const mvcc_dump *d);
/* Appends the next piece of the stream (about max_bytes) to out: returns 1
 * when it appended something, 0 when the stream is complete (nothing
 * appended), -1 on a store error. */
int mvcc_dump_next(mvcc_dump *d, mvcc_buf *out, size_t max_bytes);
void mvcc_dump_close(mvcc_dump *d);

/* Replaces the live store's contents with a dump fed in pieces split
 * anywhere. Runs on the apply thread while apply is paused. Readers that
 * began before keep their consistent view; reads that begin during the
 * load wait for its end. A crash in the middle leaves a store that opens
 * with applied index 0 and knows it is incomplete (mvcc_open succeeds,
 * mvcc_incomplete says so; the caller then reloads) — never a mix of old
 * and new data presented as valid. On success every in-memory number
 * (applied index, revision, compact revision, physical compaction
 * progress, alarms) is reloaded; the lease hook is NOT called per lease —
 * the caller reloads the lessor with mvcc_lease_list; the event hook is
 * not called either.
 *
 * The stream may end with what Maintenance.Snapshot appends for etcdctl
 * (zero padding to a multiple of 512 bytes, then the SHA-256 of everything
 * before it): the digest is checked. Errors set *errmsg (malloc'd; the
 * caller frees) when errmsg is not NULL. */
typedef struct mvcc_load mvcc_load;
mvcc_load *mvcc_load_begin(mvcc *m, char **errmsg);
int mvcc_load_feed(mvcc_load *l, const uint8_t *p, size_t n, char **errmsg);
/* Verifies completeness + checksum; frees l. 0 on success; on failure the
 * store is left marked incomplete. */
int mvcc_load_end(mvcc_load *l, char **errmsg);
/* Frees l; the store is left marked incomplete. */
void mvcc_load_abort(mvcc_load *l);

/* True when the store holds an interrupted load (see mvcc_load_begin):
 * its applied index is 0 and its contents must be replaced by a load. */
int mvcc_incomplete(mvcc *m);

/* For a store restored from a snapshot into a new cluster, whose raft log
 * starts again at index 1 and whose members are the new ones: sets the
 * applied index to 0 and forgets the old cluster's member list and id,
 * durably, keeping the data. Only while apply is not running. Returns 0 or
 * -1. */
int mvcc_reset_for_new_cluster(mvcc *m);

#endif
