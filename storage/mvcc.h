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
};

typedef struct mvcc mvcc;

/* A growable byte buffer owned by the caller. Start it zeroed; mvcc calls
 * append to it (realloc as needed). Free `data` with free() when done. */
typedef struct mvcc_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
} mvcc_buf;

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

/* Leases. A put (or txn put) with a non-zero lease asks `fn` whether the
 * lease exists (non-zero = yes); without a lookup every non-zero lease is
 * unknown ("etcdserver: requested lease not found"). `fn` is called on the
 * apply thread. Set it before the first mvcc_apply(). */
typedef int (*mvcc_lease_exists_fn)(void *arg, int64_t lease_id);
void mvcc_set_lease_lookup(mvcc *m, mvcc_lease_exists_fn fn, void *arg);

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

#endif
