/*
 * Applying committed raft entries: Put, DeleteRange, Txn and Compaction with
 * etcd 3.4's revision rules (etcdserver/apply.go, mvcc/kvstore_txn.go).
 *
 * Each op of an entry is one etcd write txn: it starts at the store's
 * revision R; its changes are written at main revision R+1 with sub
 * revisions 0, 1, ... in order; the store moves to R+1 only if something
 * changed. Read-only txns are evaluated the same way over a snapshot.
 */
#include <stdio.h>
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

/* Whether a lease exists, from the replicated state only (never from the
 * leader's timers): 1 yes, 0 no, -1 store error. */
static int lease_known(apply_ctx *c, int64_t id)
{
    int64_t ttl;
    return lease_get(&c->v, id, &ttl);
}

/* The error step for a put whose lease lookup answered `known` (<= 0). */
static int lease_unknown(int known, mvcc_result *res)
{
    return known < 0 ? STEP_STORE_ERR : client_err(res, MVCC_STATUS_NOT_FOUND, ERR_LEASE_NOT_FOUND);
}

/* ---- watch events ---- */

/* A watcher's prev_kv is the key as of the revision before (etcd reads it at
 * rev - 1). When an earlier op of the same txn already changed the key, the
 * live value it read is that op's; the one before the txn is the prev_kv of
 * that op's event. */
static bool event_prev_before(mvcc *m, int64_t rev, const uint8_t *key, size_t key_len,
                              const uint8_t **prev, size_t *prev_len)
{
    for (size_t i = m->ev_n; i-- > 0;) {
        const struct ev_rec *e = &m->ev_recs[i];
        if (e->rev != rev)
            break;
        if (e->key_len == key_len && memcmp(m->ev_arena.data + e->key_off, key, key_len) == 0) {
            *prev = e->has_prev ? m->ev_arena.data + e->prev_off : NULL;
            *prev_len = e->has_prev ? e->prev_len : 0;
            return true;
        }
    }
    return false;
}

static int event_add(mvcc *m, int type, int64_t rev, int64_t sub, int64_t create_rev,
                     const uint8_t *key, size_t key_len, const uint8_t *kv, size_t kv_len, const uint8_t *prev,
                     size_t prev_len, int64_t prev_mod)
{
    size_t moved_off = 0;
    bool moved = false;
    if (prev && prev_mod == rev) {
        const uint8_t *p;
        size_t pl;
        if (!event_prev_before(m, rev, key, key_len, &p, &pl))
            return -1; /* cannot happen: the change of this revision is an event */
        prev = p;
        prev_len = pl;
        /* it lives in ev_arena, which may move while growing */
        if (p) {
            moved = true;
            moved_off = (size_t)(p - m->ev_arena.data);
        }
    }
    if (buf_reserve(&m->ev_arena, 2 * key_len + kv_len + prev_len + 64))
        return -1;
    if (moved)
        prev = m->ev_arena.data + moved_off;

    if (m->ev_n == m->ev_cap) {
        size_t cap = m->ev_cap ? 2 * m->ev_cap : 64;
        struct ev_rec *r = realloc(m->ev_recs, cap * sizeof(*r));
        if (!r)
            return -1;
        m->ev_recs = r;
        m->ev_cap = cap;
        /* the array handed to the hook grows here too, so that delivering
         * a committed entry's events never needs memory */
        mvcc_event *o = realloc(m->ev_out, cap * sizeof(*o));
        if (!o)
            return -1;
        m->ev_out = o;
        m->ev_out_cap = cap;
    }
    struct ev_rec *e = &m->ev_recs[m->ev_n];
    e->type = type;
    e->rev = rev;
    e->sub = sub;
    e->create_rev = create_rev;
    e->key_off = m->ev_arena.len;
    e->key_len = key_len;
    if (buf_put(&m->ev_arena, key, key_len))
        return -1;
    e->kv_off = m->ev_arena.len;
    if (kv) {
        if (buf_put(&m->ev_arena, kv, kv_len))
            return -1;
    } else {
        /* A DELETE event's KeyValue: the key and the revision of the delete. */
        kvv d = {.key = key, .key_len = key_len, .mod_rev = rev};
        if (kv_encode(&m->ev_arena, &d, false))
            return -1;
    }
    e->kv_len = m->ev_arena.len - e->kv_off;
    e->has_prev = prev != NULL;
    e->prev_off = m->ev_arena.len;
    e->prev_len = prev_len;
    if (prev && buf_put(&m->ev_arena, prev, prev_len))
        return -1;
    m->ev_n++;
    return 0;
}

static void events_deliver(mvcc *m, mvcc_event_fn fn, void *arg)
{
    if (m->ev_n == 0)
        return;
    const uint8_t *a = m->ev_arena.data;
    for (size_t i = 0; i < m->ev_n; i++) {
        const struct ev_rec *e = &m->ev_recs[i];
        m->ev_out[i] = (mvcc_event){
            .type = e->type,
            .rev = e->rev,
            .sub = e->sub,
            .create_rev = e->create_rev,
            .key = a + e->key_off,
            .key_len = e->key_len,
            .kv = a + e->kv_off,
            .kv_len = e->kv_len,
            .prev_kv = e->has_prev ? a + e->prev_off : NULL,
            .prev_kv_len = e->prev_len,
        };
    }
    fn(arg, m->ev_out, m->ev_n);
}

/* The entry's iterator for live-record lookups (mvcc_view.entry_it): it
 * goes before the entry's batch is written, as its view ends there. */
static void entry_iter_release(mvcc *m)
{
    if (m->entry_it) {
        rocksdb_iter_destroy(m->entry_it);
        m->entry_it = NULL;
    }
}

/* ---- writing changes ---- */

/* A "rev" record of the entry (mvcc.rev_recs). */
static int rev_note(mvcc *m, const uint8_t rk[REVKEY_LEN], const mvcc_buf *val)
{
    uint32_t len = (uint32_t)val->len;
    if (buf_put(&m->rev_recs, rk, REVKEY_LEN) || buf_put(&m->rev_recs, &len, sizeof len) ||
        buf_put(&m->rev_recs, val->data, val->len))
        return -1;
    return 0;
}

/* What the entry writes, in one RocksDB write: the batch's contents, then
 * its "rev" records. Built before `mu` is taken for the write. */
static rocksdb_writebatch_t *entry_batch(mvcc *m)
{
    size_t n;
    const char *rep = rocksdb_writebatch_wi_data(m->wb, &n);
    rocksdb_writebatch_t *b = rocksdb_writebatch_create_from(rep, n);
    const uint8_t *p = m->rev_recs.data, *end = p;
    if (m->rev_recs.len) /* (no arithmetic on the NULL of an empty buffer) */
        end = p + m->rev_recs.len;
    while (p < end) {
        uint32_t len;
        memcpy(&len, p + REVKEY_LEN, sizeof len);
        rocksdb_writebatch_put_cf(b, m->cf[CF_REV], (const char *)p, REVKEY_LEN,
                                  (const char *)p + REVKEY_LEN + sizeof len, len);
        p += REVKEY_LEN + sizeof len + len;
    }
    return b;
}

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
    if (rev_note(m, rk, val))
        return -1;
    if (cache_note(&m->cur, kv->key, kv->key_len, val->data + 1, val->len - 1))
        return -1;
    if (idxkey_make(key, kv->key, kv->key_len, kv->mod_rev, sub))
        return -1;
    /* the key's newest "index" entry is its live record */
    rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_INDEX], (const char *)key->data, key->len,
                                 (const char *)val->data, val->len);
    return 0;
}

static int write_tombstone(apply_ctx *c, const uint8_t *k, size_t kl, const uint8_t *prev,
                           size_t prev_len, int64_t prev_mod)
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
    if (rev_note(m, rk, val))
        return -1;
    if (cache_note(&m->cur, k, kl, NULL, 0))
        return -1;
    if (idxkey_make(key, k, kl, rev, sub))
        return -1;
    rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_INDEX], (const char *)key->data, key->len,
                                 (const char *)val->data, val->len);
    if (m->ev_collect &&
        event_add(m, MVCC_EVENT_DELETE, rev, sub, 0, k, kl, NULL, 0, prev, prev_len, prev_mod))
        return -1;
    return 0;
}

/* ---- Put ---- */

/* Writes a PutResponse's fields (not the enclosing message) to out. */
static int do_put(apply_ctx *c, const Etcdserverpb__PutRequest *req, bool top, mvcc_buf *out,
                  mvcc_result *res)
{
    int known;
    if (top && req->lease != 0 && (known = lease_known(c, req->lease)) <= 0)
        return lease_unknown(known, res);
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
    /* lease_move leaves scratch alone: the event below reads write_put's
     * record from it */
    if (lease_move(c->m, prev ? prev->lease : 0, kv.lease, kv.key, kv.key_len))
        return STEP_STORE_ERR;
    /* write_put left the encoded record (flag byte + KeyValue) in scratch. */
    if (c->m->ev_collect &&
        event_add(c->m, MVCC_EVENT_PUT, rev, sub, kv.create_rev, kv.key, kv.key_len, c->m->scratch.data + 1,
                  c->m->scratch.len - 1, prev ? rows->arena.data + rows->off[0] : NULL,
                  prev ? rows->len[0] : 0, prev ? prev->mod_rev : 0))
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
        if (lease_move(c->m, rows->kvs[i].lease, 0, rows->kvs[i].key, rows->kvs[i].key_len) ||
            write_tombstone(c, rows->kvs[i].key, rows->kvs[i].key_len,
                            rows->arena.data + rows->off[i], rows->len[i],
                            rows->kvs[i].mod_rev))
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

/* Calls `check` on every op of the taken path (nested txns entered, in
 * order) and stops at the first that is not STEP_OK. */
typedef int (*op_check_fn)(apply_ctx *c, const Etcdserverpb__RequestOp *op, mvcc_result *res);

static int check_taken_ops(apply_ctx *c, const Etcdserverpb__TxnRequest *t, size_t *pos,
                           op_check_fn check, mvcc_result *res)
{
    size_t n;
    Etcdserverpb__RequestOp **ops = branch(t, (*c->path)[(*pos)++], &n);
    for (size_t i = 0; i < n; i++) {
        int rc = ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN
                     ? check_taken_ops(c, ops[i]->request_txn, pos, check, res)
                     : check(c, ops[i], res);
        if (rc)
            return rc;
    }
    return STEP_OK;
}

/* etcd's checks before a write txn runs, in its order: first every put of
 * the taken path (ignore_* need the key, a lease must exist), then every
 * range's revision. */
static int check_put(apply_ctx *c, const Etcdserverpb__RequestOp *op, mvcc_result *res)
{
    if (op->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT)
        return STEP_OK;
    const Etcdserverpb__PutRequest *p = op->request_put;
    if (p->ignore_value || p->ignore_lease) {
        rows_reset(c->rows);
        int found = view_get(&c->v, p->key.data, p->key.len, c->rows);
        if (found < 0)
            return STEP_STORE_ERR;
        if (!found)
            return client_err(res, MVCC_STATUS_INVALID_ARGUMENT, ERR_KEY_NOT_FOUND);
    }
    int known;
    if (p->lease != 0 && (known = lease_known(c, p->lease)) <= 0)
        return lease_unknown(known, res);
    return STEP_OK;
}

static int check_range(apply_ctx *c, const Etcdserverpb__RequestOp *op, mvcc_result *res)
{
    if (op->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE)
        return STEP_OK;
    int64_t r = op->request_range->revision;
    if (r == 0)
        return STEP_OK;
    /* Unlike a plain Range, a negative revision counts as compacted. */
    if (r > c->v.rev)
        return client_err(res, MVCC_STATUS_OUT_OF_RANGE, ERR_FUTURE_REV);
    if (r < c->v.compact_rev)
        return client_err(res, MVCC_STATUS_OUT_OF_RANGE, ERR_COMPACTED);
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
    if (write && (rc = check_taken_ops(c, t, &pos, check_put, res)))
        return rc;
    pos = 0;
    if ((rc = check_taken_ops(c, t, &pos, check_range, res)))
        return rc;
    pos = 0;
    size_t start = out->len;
    size_t ev_n = write ? c->m->ev_n : 0, ev_len = write ? c->m->ev_arena.len : 0;
    size_t rev_len = c->m->rev_recs.len;
    if (write) {
        rocksdb_writebatch_wi_set_save_point(c->m->wb);
        cache_save_point(&c->m->cur);
    }
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
        cache_rollback(&c->m->cur);
        c->m->rev_recs.len = rev_len;
        c->changes = 0;
        c->v.rev = c->begin_rev;
        c->m->ev_n = ev_n;
        c->m->ev_arena.len = ev_len;
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

/* ---- Leases ---- */

/* etcd's lessor.Grant checks, in its order. The proposer has already chosen
 * the ID and raised the TTL to the minimum. */
static int do_lease_grant(apply_ctx *c, const Etcdserverpb__LeaseGrantRequest *req,
                          mvcc_buf *out, mvcc_result *res)
{
    if (req->id == 0)
        return client_err(res, MVCC_STATUS_NOT_FOUND, ERR_LEASE_NOT_FOUND);
    if (req->ttl > MVCC_MAX_LEASE_TTL)
        return client_err(res, MVCC_STATUS_OUT_OF_RANGE, ERR_LEASE_TTL_TOO_LARGE);
    int64_t ttl = req->ttl > 0 ? req->ttl : 1;
    int64_t old;
    int found = lease_get(&c->v, req->id, &old);
    if (found < 0)
        return STEP_STORE_ERR;
    if (found)
        return client_err(res, MVCC_STATUS_FAILED_PRECONDITION, ERR_LEASE_EXISTS);
    lease_put(c->m, req->id, ttl);
    if (lease_changed(c->m, req->id, ttl) || pb_header(out, 1, c->h, c->v.rev) ||
        pb_uint_field(out, 2, (uint64_t)req->id) || pb_uint_field(out, 3, (uint64_t)ttl))
        return STEP_STORE_ERR;
    return STEP_OK;
}

/* Deletes every attached key in one revision, in key order (as etcd's
 * lessor.Revoke does), then the lease. */
static int do_lease_revoke(apply_ctx *c, const Etcdserverpb__LeaseRevokeRequest *req,
                           mvcc_buf *out, mvcc_result *res)
{
    int64_t ttl;
    int found = lease_get(&c->v, req->id, &ttl);
    if (found < 0)
        return STEP_STORE_ERR;
    if (!found)
        return client_err(res, MVCC_STATUS_NOT_FOUND, ERR_LEASE_NOT_FOUND);
    /* Collected first: an iterator over the batch must not see it change. */
    mvcc_buf keys = {0};
    int rc = lease_collect_keys(&c->v, req->id, &keys) ? STEP_STORE_ERR : STEP_OK;
    for (size_t pos = 0; rc == STEP_OK && pos < keys.len;) {
        uint32_t kl;
        memcpy(&kl, keys.data + pos, sizeof kl);
        const uint8_t *k = keys.data + pos + sizeof kl;
        pos += sizeof kl + kl;
        range_rows *rows = c->rows;
        rows_reset(rows);
        int live = view_get(&c->v, k, kl, rows);
        if (live < 0 || lease_move(c->m, req->id, 0, k, kl))
            rc = STEP_STORE_ERR;
        else if (live && write_tombstone(c, k, kl, rows->arena.data + rows->off[0], rows->len[0],
                                         rows->kvs[0].mod_rev))
            rc = STEP_STORE_ERR;
    }
    free(keys.data);
    if (rc != STEP_OK)
        return rc;
    lease_del(c->m, req->id);
    if (lease_changed(c->m, req->id, 0) || pb_header(out, 1, c->h, c->v.rev))
        return STEP_STORE_ERR;
    return STEP_OK;
}

/* ---- Alarms ---- */

static int do_alarm(apply_ctx *c, const Etcdserverpb__AlarmRequest *req, mvcc_buf *out,
                    mvcc_result *res)
{
    mvcc *m = c->m;
    int type = (int)req->alarm;
    uint64_t member = req->memberid;
    bool changed = false;
    switch (req->action) {
    case ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__GET:
        /* the list as of this entry (the working copy if it changed) */
        if (alarms_encode(m->alarms_dirty ? m->alarms_work : m->alarms,
                          m->alarms_dirty ? m->n_alarms_work : m->n_alarms, type, 2, out))
            return STEP_STORE_ERR;
        return STEP_OK;
    case ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__ACTIVATE:
    case ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__DEACTIVATE: {
        bool on = req->action == ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__ACTIVATE;
        if (alarm_work_set(m, member, type, on, &changed))
            return STEP_STORE_ERR;
        /* etcd answers the alarm activated (or found already active), and
         * the alarm deactivated (nothing when it was not active) */
        mvcc_alarm a = {member, type};
        if ((on || changed) && alarms_encode(&a, 1, MVCC_ALARM_NONE, 2, out))
            return STEP_STORE_ERR;
        return STEP_OK;
    }
    default:
        (void)res;
        return STEP_OK; /* etcd answers an empty AlarmResponse */
    }
}

/* etcd's capped and corrupt appliers: which ops an active alarm refuses. */
static bool txn_has_put(const Etcdserverpb__TxnRequest *t)
{
    for (size_t i = 0; i < t->n_success; i++)
        if (t->success[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT)
            return true;
    for (size_t i = 0; i < t->n_failure; i++)
        if (t->failure[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT)
            return true;
    return false;
}

static int alarm_refuses(mvcc *m, const Ballastpb__Op *op, mvcc_result *res)
{
    if ((m->alarms_dirty ? m->n_alarms_work : m->n_alarms) == 0)
        return STEP_OK;
    if (alarm_work_active(m, MVCC_ALARM_CORRUPT)) {
        switch (op->op_case) {
        case BALLASTPB__OP__OP_PUT:
        case BALLASTPB__OP__OP_DELETE_RANGE:
        case BALLASTPB__OP__OP_TXN:
        case BALLASTPB__OP__OP_COMPACTION:
        case BALLASTPB__OP__OP_LEASE_GRANT:
        case BALLASTPB__OP__OP_LEASE_REVOKE:
            return client_err(res, MVCC_STATUS_DATA_LOSS, ERR_CORRUPT);
        default:
            return STEP_OK;
        }
    }
    if (alarm_work_active(m, MVCC_ALARM_NOSPACE) &&
        (op->op_case == BALLASTPB__OP__OP_PUT || op->op_case == BALLASTPB__OP__OP_LEASE_GRANT ||
         (op->op_case == BALLASTPB__OP__OP_TXN && txn_has_put(op->txn))))
        return client_err(res, MVCC_STATUS_RESOURCE_EXHAUSTED, ERR_NO_SPACE);
    return STEP_OK;
}

static void lease_changes_deliver(mvcc *m)
{
    for (size_t i = 0; i < m->lease_n; i++)
        m->lease_fn(m->lease_fn_arg, m->lease_changes[i].id, m->lease_changes[i].ttl);
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
    if (m->incomplete) {
        /* an interrupted load: applying on top would mix old and new data */
        for (size_t j = 0; j < n_ops; j++)
            result_error(&results[j], MVCC_STATUS_INTERNAL, ERR_INCOMPLETE);
        return -1;
    }
    if (index <= m->applied_index) {
        for (size_t i = 0; i < n_ops; i++)
            results[i] = (mvcc_result){MVCC_STATUS_OK, NULL, 0, 0};
        return 0;
    }
    rocksdb_writebatch_wi_clear(m->wb);
    m->rev_recs.len = 0;
    m->write_error[0] = '\0';
    /* also drops the notes of an entry that failed: they never reach the cache */
    cache_begin(&m->cur);
    m->alarms_dirty = false;
    m->lease_n = 0;
    m->members_touched = false;
    m->ev_n = 0;
    m->ev_arena.len = 0;
    bool hooked = __atomic_load_n(&m->event_fn, __ATOMIC_ACQUIRE) != NULL;
    m->ev_collect = hooked && (!m->event_want || m->event_want(m->event_arg));
    bool ev_skip = hooked && !m->ev_collect;
    int64_t rev_before = m->rev;
    apply_ctx c = {.m = m, .h = h, .rows = &m->rows, .path = &m->path,
                   .path_cap = &m->path_cap};
    c.v.m = m;
    c.v.wb = m->wb;
    c.v.rev = m->rev;
    c.v.compact_rev = m->compact_rev;
    c.v.entry_it = true;
    size_t entry_start = out->len;

    for (size_t i = 0; i < n_ops; i++) {
        const Ballastpb__Op *op = ops[i];
        mvcc_result *res = &results[i];
        size_t start = out->len;
        c.begin_rev = c.v.rev;
        c.changes = 0;
        int rc = alarm_refuses(m, op, res);
        if (rc != STEP_OK)
            op = NULL;
        switch (op ? op->op_case : BALLASTPB__OP__OP__NOT_SET) {
        case BALLASTPB__OP__OP__NOT_SET:
            if (op)
                rc = client_err(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: unknown operation");
            break;
        case BALLASTPB__OP__OP_ALARM:
            rc = do_alarm(&c, op->alarm, out, res);
            break;
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
        case BALLASTPB__OP__OP_LEASE_GRANT:
            rc = do_lease_grant(&c, op->lease_grant, out, res);
            break;
        case BALLASTPB__OP__OP_LEASE_REVOKE:
            rc = do_lease_revoke(&c, op->lease_revoke, out, res);
            break;
        case BALLASTPB__OP__OP_MEMBER:
            rc = member_apply(m, &c.v, op->member, res);
            break;
        default:
            rc = client_err(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: unknown operation");
            break;
        }
        if (rc == STEP_STORE_ERR) {
            entry_iter_release(m);
            out->len = entry_start;
            rocksdb_writebatch_wi_clear(m->wb);
            m->alarms_dirty = false;
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

    entry_iter_release(m);
    write_meta(m, index, c.v.rev, c.v.compact_rev);
    rocksdb_writebatch_t *batch = entry_batch(m);
    char *err = NULL;
    pthread_mutex_lock(&m->mu);
    rocksdb_write(m->db, m->wo, batch, &err);
    bool compacted = false;
    mvcc_event_fn fn = m->event_fn;
    void *fn_arg = m->event_arg;
    if (!err) {
        m->applied_index = index;
        m->rev = c.v.rev;
        compacted = c.v.compact_rev != m->compact_rev;
        m->compact_rev = c.v.compact_rev;
        if (m->members_touched) {
            if (m->pending_cluster_id)
                __atomic_store_n(&m->cluster_id, m->pending_cluster_id, __ATOMIC_RELEASE);
            __atomic_add_fetch(&m->members_gen, 1, __ATOMIC_RELEASE);
        }
        alarms_commit(m);
    }
    m->pending_cluster_id = 0;
    m->alarms_dirty = false;
    pthread_mutex_unlock(&m->mu);
    rocksdb_writebatch_destroy(batch);
    rocksdb_writebatch_wi_clear(m->wb);
    if (err) {
        snprintf(m->write_error, sizeof m->write_error, "%s", err);
        free(err);
        out->len = entry_start;
        for (size_t j = 0; j < n_ops; j++)
            result_error(&results[j], MVCC_STATUS_INTERNAL, "etcdserver: storage failure");
        return -1;
    }
    cache_commit(&m->cur);
    if (compacted)
        compactor_kick(m);
    if (m->lease_fn)
        lease_changes_deliver(m);
    if (m->ev_collect && fn)
        events_deliver(m, fn, fn_arg);
    else if (ev_skip && fn && m->rev > rev_before)
        m->event_skip(fn_arg, rev_before + 1, m->rev);
    buf_trim(&m->rev_recs, 4u << 20);
    buf_trim(&m->ev_arena, 4u << 20);
    return 0;
}

const char *mvcc_write_error(mvcc *m)
{
    return m->write_error;
}
