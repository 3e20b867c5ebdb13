/*
 * Applying committed raft entries: Put, DeleteRange, Txn and Compaction with
 * etcd 3.4's revision rules (etcdserver/apply.go, mvcc/kvstore_txn.go).
 *
 * Each op of an entry is one etcd write txn: it starts at the store's
 * revision R; its changes are written at main revision R+1 with sub
 * revisions 0, 1, ... in order; the store moves to R+1 only if something
 * changed. Read-only txns are evaluated the same way over a snapshot.
 */
#include <stdlib.h>
#include <string.h>

#include "mvcc_internal.h"

typedef struct apply_ctx {
    mvcc *m;
    mvcc_view v;       /* v.rev: begin_rev, or begin_rev + 1 once something changed */
    int64_t begin_rev;
    int64_t changes;
    const mvcc_header *h;
    range_rows *rows;
    bool **path;
    size_t *path_cap;
    size_t path_len;
} apply_ctx;

/* Outcome of a step: OK, a client error already put in the result, or a
 * store failure that stops apply. */
enum { STEP_OK = 0, STEP_CLIENT_ERR = 1, STEP_STORE_ERR = -1 };

static int client_err(mvcc_result *res, int status, const char *msg)
{
    result_error(res, status, msg);
    return STEP_CLIENT_ERR;
}

static bool lease_known(apply_ctx *c, int64_t id)
{
    return c->m->lease_exists && c->m->lease_exists(c->m->lease_arg, id);
}

/* ---- writing changes ---- */

static int64_t next_sub(apply_ctx *c)
{
    c->v.rev = c->begin_rev + 1;
    return c->changes++;
}

static int write_put(apply_ctx *c, const kvv *kv, int64_t sub)
{
    mvcc *m = c->m;
    mvcc_buf *val = &m->scratch, *key = &m->scratch2;
    val->len = 0;
    key->len = 0;
    uint8_t flag = REC_PUT;
    if (buf_put(val, &flag, 1) || kv_encode(val, kv, false))
        return -1;
    uint8_t rk[REVKEY_LEN];
    revkey_make(rk, kv->mod_rev, sub);
    rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_REV], (const char *)rk, REVKEY_LEN,
                                 (const char *)val->data, val->len);
    rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_CURRENT], (const char *)kv->key, kv->key_len,
                                 (const char *)val->data + 1, val->len - 1);
    if (idxkey_make(key, kv->key, kv->key_len, kv->mod_rev, sub))
        return -1;
    rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_INDEX], (const char *)key->data, key->len,
                                 (const char *)&flag, 1);
    return 0;
}

static int write_tombstone(apply_ctx *c, const uint8_t *k, size_t kl)
{
    mvcc *m = c->m;
    int64_t sub = next_sub(c);
    int64_t rev = c->begin_rev + 1;
    mvcc_buf *val = &m->scratch, *key = &m->scratch2;
    val->len = 0;
    key->len = 0;
    uint8_t flag = REC_TOMBSTONE;
    kvv kv = {.key = k, .key_len = kl};
    if (buf_put(val, &flag, 1) || kv_encode(val, &kv, false))
        return -1;
    uint8_t rk[REVKEY_LEN];
    revkey_make(rk, rev, sub);
    rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_REV], (const char *)rk, REVKEY_LEN,
                                 (const char *)val->data, val->len);
    rocksdb_writebatch_wi_delete_cf(m->wb, m->cf[CF_CURRENT], (const char *)k, kl);
    if (idxkey_make(key, k, kl, rev, sub))
        return -1;
    rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_INDEX], (const char *)key->data, key->len,
                                 (const char *)&flag, 1);
    return 0;
}

/* ---- Put ---- */

/* Writes a PutResponse's fields (not the enclosing message) to out. */
static int do_put(apply_ctx *c, const Etcdserverpb__PutRequest *req, bool top, mvcc_buf *out,
                  mvcc_result *res)
{
    if (top && req->lease != 0 && !lease_known(c, req->lease))
        return client_err(res, MVCC_STATUS_NOT_FOUND, ERR_LEASE_NOT_FOUND);
    range_rows *rows = c->rows;
    rows_reset(rows);
    int found = view_get(&c->v, req->key.data, req->key.len, rows);
    if (found < 0)
        return STEP_STORE_ERR;
    if ((req->ignore_value || req->ignore_lease) && !found)
        return client_err(res, MVCC_STATUS_INVALID_ARGUMENT, ERR_KEY_NOT_FOUND);
    const kvv *prev = found ? &rows->kvs[0] : NULL;

    int64_t sub = next_sub(c);
    int64_t rev = c->begin_rev + 1;
    kvv kv = {
        .key = req->key.data,
        .key_len = req->key.len,
        .create_rev = prev ? prev->create_rev : rev,
        .mod_rev = rev,
        .version = prev ? prev->version + 1 : 1,
        .value = req->ignore_value ? prev->value : req->value.data,
        .value_len = req->ignore_value ? prev->value_len : req->value.len,
        .lease = req->ignore_lease ? prev->lease : req->lease,
    };
    if (write_put(c, &kv, sub))
        return STEP_STORE_ERR;
    if (pb_header(out, 1, top ? c->h : NULL, rev))
        return STEP_STORE_ERR;
    if (req->prev_kv && prev &&
        pb_bytes_field(out, 2, rows->arena.data + rows->off[0], rows->len[0]))
        return STEP_STORE_ERR;
    return STEP_OK;
}

/* ---- DeleteRange ---- */

static int do_delete(apply_ctx *c, const Etcdserverpb__DeleteRangeRequest *req, bool top,
                     mvcc_buf *out)
{
    range_rows *rows = c->rows;
    rows_reset(rows);
    if (view_range(&c->v, req->key.data, req->key.len, req->range_end.data, req->range_end.len,
                   0, 0, false, rows))
        return STEP_STORE_ERR;
    for (size_t i = 0; i < rows->n; i++)
        if (write_tombstone(c, rows->kvs[i].key, rows->kvs[i].key_len))
            return STEP_STORE_ERR;
    /* A delete that found nothing reports the revision it started from,
     * unless an earlier op of the same txn changed something. */
    if (pb_header(out, 1, top ? c->h : NULL, c->v.rev) ||
        pb_uint_field(out, 2, (uint64_t)rows->n))
        return STEP_STORE_ERR;
    if (req->prev_kv)
        for (size_t i = 0; i < rows->n; i++)
            if (pb_bytes_field(out, 3, rows->arena.data + rows->off[i], rows->len[i]))
                return STEP_STORE_ERR;
    return STEP_OK;
}

/* ---- Txn ---- */

static Etcdserverpb__RequestOp **branch(const Etcdserverpb__TxnRequest *t, bool ok, size_t *n)
{
    *n = ok ? t->n_success : t->n_failure;
    return ok ? t->success : t->failure;
}

static int path_push(apply_ctx *c, bool v)
{
    if (c->path_len == *c->path_cap) {
        size_t cap = *c->path_cap ? 2 * *c->path_cap : 16;
        bool *p = realloc(*c->path, cap * sizeof(*p));
        if (!p)
            return -1;
        *c->path = p;
        *c->path_cap = cap;
    }
    (*c->path)[c->path_len++] = v;
    return 0;
}

/* All compares, nested ones included, are evaluated against the state
 * before the txn runs, as etcd does; the outcomes are recorded in
 * pre-order of the txns actually taken. */
static int compute_path(apply_ctx *c, const Etcdserverpb__TxnRequest *t)
{
    int ok = compares_hold(&c->v, t->compare, t->n_compare, c->rows);
    if (ok < 0 || path_push(c, ok))
        return -1;
    size_t n;
    Etcdserverpb__RequestOp **ops = branch(t, ok, &n);
    for (size_t i = 0; i < n; i++)
        if (ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN &&
            compute_path(c, ops[i]->request_txn))
            return -1;
    return 0;
}

/* etcd's checks before a write txn runs, in its order: first every put of
 * the taken path (ignore_* need the key, a lease must exist), then every
 * range's revision. */
static int check_puts(apply_ctx *c, const Etcdserverpb__TxnRequest *t, size_t *pos,
                      mvcc_result *res)
{
    size_t n;
    Etcdserverpb__RequestOp **ops = branch(t, (*c->path)[(*pos)++], &n);
    for (size_t i = 0; i < n; i++) {
        int rc;
        if (ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN) {
            if ((rc = check_puts(c, ops[i]->request_txn, pos, res)))
                return rc;
            continue;
        }
        if (ops[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT)
            continue;
        const Etcdserverpb__PutRequest *p = ops[i]->request_put;
        if (p->ignore_value || p->ignore_lease) {
            rows_reset(c->rows);
            int found = view_get(&c->v, p->key.data, p->key.len, c->rows);
            if (found < 0)
                return STEP_STORE_ERR;
            if (!found)
                return client_err(res, MVCC_STATUS_INVALID_ARGUMENT, ERR_KEY_NOT_FOUND);
        }
        if (p->lease != 0 && !lease_known(c, p->lease))
            return client_err(res, MVCC_STATUS_NOT_FOUND, ERR_LEASE_NOT_FOUND);
    }
    return STEP_OK;
}

static int check_ranges(apply_ctx *c, const Etcdserverpb__TxnRequest *t, size_t *pos,
                        mvcc_result *res)
{
    size_t n;
    Etcdserverpb__RequestOp **ops = branch(t, (*c->path)[(*pos)++], &n);
    for (size_t i = 0; i < n; i++) {
        int rc;
        if (ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN) {
            if ((rc = check_ranges(c, ops[i]->request_txn, pos, res)))
                return rc;
            continue;
        }
        if (ops[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE)
            continue;
        int64_t r = ops[i]->request_range->revision;
        if (r == 0)
            continue;
        /* Unlike a plain Range, a negative revision counts as compacted. */
        if (r > c->v.rev)
            return client_err(res, MVCC_STATUS_OUT_OF_RANGE, ERR_FUTURE_REV);
        if (r < c->v.compact_rev)
            return client_err(res, MVCC_STATUS_OUT_OF_RANGE, ERR_COMPACTED);
    }
    return STEP_OK;
}

/* Runs the taken branch, writing the TxnResponse fields. Nested responses
 * carry a header with only the revision (an empty one for nested txns); the
 * top-level header, whose revision is known only at the end, comes last. */
static int exec_txn(apply_ctx *c, const Etcdserverpb__TxnRequest *t, size_t *pos, bool top,
                    mvcc_buf *out, mvcc_result *res)
{
    bool ok = (*c->path)[(*pos)++];
    if (!top && pb_header(out, 1, NULL, 0))
        return STEP_STORE_ERR;
    if (pb_bool_field(out, 2, ok))
        return STEP_STORE_ERR;
    size_t n;
    Etcdserverpb__RequestOp **ops = branch(t, ok, &n);
    for (size_t i = 0; i < n; i++) {
        const Etcdserverpb__RequestOp *op = ops[i];
        size_t outer = pb_msg_begin(out, 3);
        if (outer == (size_t)-1)
            return STEP_STORE_ERR;
        int rc = STEP_OK;
        if (op->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST__NOT_SET) {
            size_t inner = pb_msg_begin(out, (uint32_t)op->request_case);
            if (inner == (size_t)-1)
                return STEP_STORE_ERR;
            switch (op->request_case) {
            case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE:
                if (range_request(&c->v, op->request_range, NULL, false, c->rows, out, res))
                    rc = STEP_STORE_ERR;
                else if (res->status != MVCC_STATUS_OK)
                    rc = STEP_CLIENT_ERR;
                break;
            case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT:
                rc = do_put(c, op->request_put, false, out, res);
                break;
            case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE:
                rc = do_delete(c, op->request_delete_range, false, out);
                break;
            case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN:
                rc = exec_txn(c, op->request_txn, pos, false, out, res);
                break;
            default:
                break;
            }
            if (rc == STEP_OK && pb_msg_end(out, inner))
                rc = STEP_STORE_ERR;
        }
        if (rc != STEP_OK)
            return rc;
        if (pb_msg_end(out, outer))
            return STEP_STORE_ERR;
    }
    if (top && pb_header(out, 1, c->h, c->v.rev))
        return STEP_STORE_ERR;
    return STEP_OK;
}

static int do_txn(apply_ctx *c, const Etcdserverpb__TxnRequest *t, bool write, mvcc_buf *out,
                  mvcc_result *res)
{
    c->path_len = 0;
    if (compute_path(c, t))
        return STEP_STORE_ERR;
    size_t pos = 0;
    int rc;
    if (write && (rc = check_puts(c, t, &pos, res)))
        return rc;
    pos = 0;
    if ((rc = check_ranges(c, t, &pos, res)))
        return rc;
    pos = 0;
    size_t start = out->len;
    if (write)
        rocksdb_writebatch_wi_set_save_point(c->m->wb);
    rc = exec_txn(c, t, &pos, true, out, res);
    if (rc == STEP_CLIENT_ERR && write) {
        /* Only reachable where etcd 3.4 panics (e.g. a "\0" delete removes
         * the key a later ignore_value put needs): fail the whole txn
         * instead and write nothing. */
        char *err = NULL;
        rocksdb_writebatch_wi_rollback_to_save_point(c->m->wb, &err);
        if (err) {
            free(err);
            return STEP_STORE_ERR;
        }
        c->changes = 0;
        c->v.rev = c->begin_rev;
    }
    if (rc != STEP_OK)
        out->len = start;
    return rc;
}

int mvcc_txn_read(mvcc *m, const Etcdserverpb__TxnRequest *req, const mvcc_header *h,
                  mvcc_buf *out, mvcc_result *result)
{
    if (!mvcc_txn_is_read_only(req)) {
        result_error(result, MVCC_STATUS_INTERNAL, "etcdserver: txn with writes needs apply");
        return 0;
    }
    bool **path;
    size_t *path_cap;
    range_rows *rows = reader_rows(&path, &path_cap);
    if (!rows) {
        result_error(result, MVCC_STATUS_INTERNAL, "etcdserver: out of memory");
        return -1;
    }
    apply_ctx c = {.m = m, .h = h, .rows = rows, .path = path, .path_cap = path_cap};
    size_t start = out->len;
    int rc = view_begin(m, &c.v) ? STEP_STORE_ERR : STEP_OK;
    c.begin_rev = c.v.rev;
    if (rc == STEP_OK)
        rc = do_txn(&c, req, false, out, result);
    view_end(&c.v);
    reader_rows_done(rows);
    if (rc == STEP_STORE_ERR) {
        out->len = start;
        result_error(result, MVCC_STATUS_INTERNAL, "etcdserver: storage read failed");
        return -1;
    }
    if (rc == STEP_OK) {
        result->status = MVCC_STATUS_OK;
        result->message = NULL;
        result->off = start;
        result->len = out->len - start;
    }
    return 0;
}

/* ---- Compaction ---- */

static int do_compact(apply_ctx *c, const Etcdserverpb__CompactionRequest *req, mvcc_buf *out,
                      mvcc_result *res)
{
    if (req->revision <= c->v.compact_rev)
        return client_err(res, MVCC_STATUS_OUT_OF_RANGE, ERR_COMPACTED);
    if (req->revision > c->v.rev)
        return client_err(res, MVCC_STATUS_OUT_OF_RANGE, ERR_FUTURE_REV);
    c->v.compact_rev = req->revision;
    return pb_header(out, 1, c->h, c->v.rev) ? STEP_STORE_ERR : STEP_OK;
}

/* ---- entries ---- */

static int write_meta(mvcc *m, uint64_t index, int64_t rev, int64_t compact_rev)
{
    uint8_t b[8];
    be64_encode(b, index);
    rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_META], META_APPLIED, strlen(META_APPLIED),
                                 (const char *)b, 8);
    be64_encode(b, (uint64_t)rev);
    rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_META], META_REV, strlen(META_REV),
                                 (const char *)b, 8);
    be64_encode(b, (uint64_t)compact_rev);
    rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_META], META_COMPACT, strlen(META_COMPACT),
                                 (const char *)b, 8);
    return 0;
}

int mvcc_apply(mvcc *m, uint64_t index, const mvcc_header *h, Ballastpb__Op *const *ops,
               size_t n_ops, mvcc_buf *out, mvcc_result *results)
{
    if (index <= m->applied_index) {
        for (size_t i = 0; i < n_ops; i++)
            results[i] = (mvcc_result){MVCC_STATUS_OK, NULL, 0, 0};
        return 0;
    }
    rocksdb_writebatch_wi_clear(m->wb);
    apply_ctx c = {.m = m, .h = h, .rows = &m->rows, .path = &m->path,
                   .path_cap = &m->path_cap};
    c.v.m = m;
    c.v.wb = m->wb;
    c.v.rev = m->rev;
    c.v.compact_rev = m->compact_rev;
    size_t entry_start = out->len;

    for (size_t i = 0; i < n_ops; i++) {
        const Ballastpb__Op *op = ops[i];
        mvcc_result *res = &results[i];
        size_t start = out->len;
        c.begin_rev = c.v.rev;
        c.changes = 0;
        int rc;
        switch (op->op_case) {
        case BALLASTPB__OP__OP_PUT:
            rc = do_put(&c, op->put, true, out, res);
            break;
        case BALLASTPB__OP__OP_DELETE_RANGE:
            rc = do_delete(&c, op->delete_range, true, out);
            break;
        case BALLASTPB__OP__OP_TXN:
            rc = do_txn(&c, op->txn, !mvcc_txn_is_read_only(op->txn), out, res);
            break;
        case BALLASTPB__OP__OP_COMPACTION:
            rc = do_compact(&c, op->compaction, out, res);
            break;
        default:
            rc = client_err(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: unknown operation");
            break;
        }
        if (rc == STEP_STORE_ERR) {
            out->len = entry_start;
            rocksdb_writebatch_wi_clear(m->wb);
            for (size_t j = 0; j < n_ops; j++)
                result_error(&results[j], MVCC_STATUS_INTERNAL, "etcdserver: storage failure");
            return -1;
        }
        if (rc == STEP_OK) {
            res->status = MVCC_STATUS_OK;
            res->message = NULL;
            res->off = start;
            res->len = out->len - start;
        } else {
            out->len = start;
        }
    }

    write_meta(m, index, c.v.rev, c.v.compact_rev);
    char *err = NULL;
    pthread_mutex_lock(&m->mu);
    rocksdb_write_writebatch_wi(m->db, m->wo, m->wb, &err);
    bool compacted = false;
    if (!err) {
        m->applied_index = index;
        m->rev = c.v.rev;
        compacted = c.v.compact_rev != m->compact_rev;
        m->compact_rev = c.v.compact_rev;
    }
    pthread_mutex_unlock(&m->mu);
    rocksdb_writebatch_wi_clear(m->wb);
    if (err) {
        free(err);
        out->len = entry_start;
        for (size_t j = 0; j < n_ops; j++)
            result_error(&results[j], MVCC_STATUS_INTERNAL, "etcdserver: storage failure");
        return -1;
    }
    if (compacted)
        compactor_kick(m);
    return 0;
}
