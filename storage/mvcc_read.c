/*
 * Reading: ranges at the current or a past revision, etcd's Range request
 * semantics (filters, sort, limit, count) and txn compares.
 *
 * Every range walks the "index" family, where each user key's revisions
 * sort newest first and each entry holds its record: the newest entry of a
 * key is its live record, and a range at a past revision seeks straight to
 * each key's newest revision at or below the one asked for. A single key at
 * the current revision (what a Put or a compare reads while applying) is
 * answered by the apply thread's cache when it can.
 */
#include <stdlib.h>
#include <string.h>

#include "mvcc_internal.h"

void rows_reset(range_rows *r)
{
    r->arena.len = 0;
    r->n = 0;
    r->count = 0;
}

void rows_free(range_rows *r)
{
    free(r->arena.data);
    free(r->off);
    free(r->len);
    free(r->kvs);
    memset(r, 0, sizeof(*r));
}

/* Readers on other threads reuse one set of rows per thread instead of
 * allocating per request; a huge result's memory is not kept. */
typedef struct reader_scratch {
    range_rows rows;
    bool *path;
    size_t path_cap;
} reader_scratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *p)
{
    reader_scratch *s = p;
    rows_free(&s->rows);
    free(s->path);
    free(s);
}

static void scratch_key_init(void)
{
    pthread_key_create(&scratch_key, scratch_free);
}

range_rows *reader_rows(bool ***path, size_t **path_cap)
{
    pthread_once(&scratch_once, scratch_key_init);
    reader_scratch *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s || pthread_setspecific(scratch_key, s)) {
            free(s);
            return NULL;
        }
    }
    if (path) {
        *path = &s->path;
        *path_cap = &s->path_cap;
    }
    return &s->rows;
}

void reader_rows_done(range_rows *r)
{
    if (r->arena.cap > (4u << 20) || r->cap > 65536)
        rows_free(r);
    else
        rows_reset(r);
}

static int rows_add(range_rows *r, const void *p, size_t n)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 16;
        size_t *off = realloc(r->off, cap * sizeof(*off));
        if (!off)
            return -1;
        r->off = off;
        size_t *len = realloc(r->len, cap * sizeof(*len));
        if (!len)
            return -1;
        r->len = len;
        kvv *kvs = realloc(r->kvs, cap * sizeof(*kvs));
        if (!kvs)
            return -1;
        r->kvs = kvs;
        r->cap = cap;
    }
    r->off[r->n] = r->arena.len;
    r->len[r->n] = n;
    if (buf_put(&r->arena, p, n))
        return -1;
    r->n++;
    return 0;
}

/* The arena may have moved while rows were added: decode once it is done. */
static int rows_parse(range_rows *r)
{
    for (size_t i = 0; i < r->n; i++)
        if (kv_parse(r->arena.data + r->off[i], r->len[i], &r->kvs[i]))
            return -1;
    return 0;
}

static int bytes_compare(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    size_t n = an < bn ? an : bn;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c < 0 ? -1 : 1;
    return an < bn ? -1 : an > bn;
}

rocksdb_readoptions_t *view_ro(mvcc_view *v)
{
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    if (ro)
        rocksdb_readoptions_set_total_order_seek(ro, 1); /* see index_prefix */
    if (ro && v->snap)
        rocksdb_readoptions_set_snapshot(ro, v->snap);
    return ro;
}

rocksdb_iterator_t *view_iter(mvcc_view *v, int cf, rocksdb_readoptions_t *ro)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(v->m->db, ro, v->m->cf[cf]);
    if (it && v->wb)
        it = rocksdb_writebatch_wi_create_iterator_with_base_cf(v->wb, it, v->m->cf[cf]);
    return it;
}

int view_point(mvcc_view *v, int cf, const void *key, size_t n, char **val,
                      size_t *vlen)
{
    char *err = NULL;
    rocksdb_readoptions_t *ro = v->snap ? view_ro(v) : v->m->ro_plain;
    if (!ro)
        return -1;
    if (v->wb)
        *val = rocksdb_writebatch_wi_get_from_batch_and_db_cf(v->wb, v->m->db, ro, v->m->cf[cf],
                                                              key, n, vlen, &err);
    else
        *val = rocksdb_get_cf(v->m->db, ro, v->m->cf[cf], key, n, vlen, &err);
    if (ro != v->m->ro_plain)
        rocksdb_readoptions_destroy(ro);
    if (err) {
        free(err);
        return -1;
    }
    return 0;
}

/* The key's live record (a KeyValue; *val is malloc'd, or NULL when the key
 * has none): its newest "index" entry unless that is a tombstone. */
static int view_current(mvcc_view *v, const uint8_t *key, size_t n, char **val, size_t *vlen)
{
    int cached = 2;
    *val = NULL;
    *vlen = 0;
    if (v->wb && !v->snap) {
        cached = cache_read(&v->m->cur, key, n, val, vlen);
        if (cached == 1)
            return 0;
        if (cached < 0)
            return -1;
    }
    /* 0: not written by the entry being applied, so the store alone */
    bool through_batch = v->wb && cached != 0;
    /* The entry's own iterator serves every such lookup of the entry: the
     * store does not change until the entry's batch is written (the
     * compactor's deletes never touch a live record), and creating an
     * iterator per lookup cost more than the seek. */
    bool entry_it = !through_batch && v->entry_it;
    mvcc_buf start = {0}, after = {0};
    rocksdb_iterator_t *it = NULL;
    rocksdb_readoptions_t *ro = NULL;
    int rc = -1;
    /* a seek within the key's prefix (index_prefix), to a full-length key
     * before its newest record: the prefix blooms can answer "never
     * written" */
    static const uint8_t before_newest[REVKEY_LEN] = {0};
    if (idxkey_key_start(&start, key, n))
        goto out;
    size_t plen = start.len;
    if (buf_put(&start, before_newest, REVKEY_LEN))
        goto out;
    if (entry_it) {
        mvcc *m = v->m;
        if (!m->entry_it)
            m->entry_it = rocksdb_create_iterator_cf(m->db, m->ro_prefix, m->cf[CF_INDEX]);
        if (!m->entry_it)
            goto out;
        it = m->entry_it;
    } else {
        ro = view_ro(v);
        if (!ro || idxkey_key_after(&after, key, n))
            goto out;
        rocksdb_readoptions_set_total_order_seek(ro, 0);
        rocksdb_readoptions_set_prefix_same_as_start(ro, 1);
        if (!through_batch)
            rocksdb_readoptions_set_iterate_upper_bound(ro, (const char *)after.data, after.len);
        it = rocksdb_create_iterator_cf(v->m->db, ro, v->m->cf[CF_INDEX]);
        if (it && through_batch)
            it = rocksdb_writebatch_wi_create_iterator_with_base_cf(v->wb, it, v->m->cf[CF_INDEX]);
        if (!it)
            goto out;
    }
    rocksdb_iter_seek(it, (const char *)start.data, start.len);
    if (!rocksdb_iter_valid(it)) {
        rc = iter_failed(it) ? -1 : 0;
        goto out;
    }
    size_t kl, vl;
    const char *k = rocksdb_iter_key(it, &kl);
    const char *x = rocksdb_iter_value(it, &vl);
    rc = 0;
    if (kl == plen + REVKEY_LEN && memcmp(k, start.data, plen) == 0) {
        if (vl < 1) {
            rc = -1;
        } else if (x[0] == REC_PUT) {
            *val = malloc(vl);
            if (!*val) {
                rc = -1;
                goto out;
            }
            memcpy(*val, x + 1, vl - 1);
            *vlen = vl - 1;
        }
    }
out:
    if (rc == 0 && cached == 0)
        cache_fill(&v->m->cur, key, n, *val, *vlen);
    if (rc != 0) {
        free(*val);
        *val = NULL;
    }
    if (it && !entry_it)
        rocksdb_iter_destroy(it);
    if (ro)
        rocksdb_readoptions_destroy(ro);
    free(start.data);
    free(after.data);
    return rc;
}

int view_get(mvcc_view *v, const uint8_t *key, size_t key_len, range_rows *r)
{
    char *val;
    size_t vlen;
    if (view_current(v, key, key_len, &val, &vlen))
        return -1;
    if (!val)
        return 0;
    int rc = rows_add(r, val, vlen);
    free(val);
    if (rc || rows_parse(r))
        return -1;
    r->count++;
    return 1;
}

/* Moves the iterator to the first entry >= target. Usually that is only a
 * step or two away, and stepping is much cheaper than seeking. */
static void iter_skip_to(rocksdb_iterator_t *it, const mvcc_buf *target)
{
    for (int i = 0; i < 4; i++) {
        rocksdb_iter_next(it);
        if (!rocksdb_iter_valid(it))
            return;
        size_t kl;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
        if (bytes_compare(k, kl, target->data, target->len) >= 0)
            return;
    }
    rocksdb_iter_seek(it, (const char *)target->data, target->len);
}

/* Every key of the range at revision `at` (the view's own for a read at the
 * current revision). */
static int range_at(mvcc_view *v, const uint8_t *key, size_t key_len,
                      const uint8_t *end, size_t end_len, bool single, bool unbounded,
                      int64_t at, int64_t limit, bool count_only, range_rows *r)
{
    mvcc_buf lower = {0}, upper = {0}, seekto = {0}, ukey = {0};
    int rc = -1;
    rocksdb_readoptions_t *ro = view_ro(v);
    rocksdb_iterator_t *it = NULL;
    if (!ro)
        goto out;
    if (single) {
        if (idxkey_key_start(&lower, key, key_len) || idxkey_key_after(&upper, key, key_len))
            goto out;
    } else {
        if (idxkey_prefix(&lower, key, key_len))
            goto out;
        if (!unbounded && idxkey_key_start(&upper, end, end_len))
            goto out;
    }
    /* through a write batch the bound is checked below only */
    if (upper.len && !v->wb)
        rocksdb_readoptions_set_iterate_upper_bound(ro, (const char *)upper.data, upper.len);
    it = view_iter(v, CF_INDEX, ro);
    if (!it)
        goto out;
    rc = 0;
    rocksdb_iter_seek(it, (const char *)lower.data, lower.len);
    while (rc == 0 && rocksdb_iter_valid(it)) {
        size_t kl, vl;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
        if (upper.len && bytes_compare(k, kl, upper.data, upper.len) >= 0)
            break;
        int64_t main, sub;
        if (idxkey_parse(k, kl, &ukey, &main, &sub)) {
            rc = -1;
            break;
        }
        seekto.len = 0;
        if (main > at) {
            /* Newer than asked: jump to this key's newest revision <= at. */
            static const uint8_t zero[8] = {0};
            uint8_t r8[REVKEY_LEN];
            revkey_make(r8, ~at, 0);
            if (idxkey_key_start(&seekto, ukey.data, ukey.len) || buf_put(&seekto, r8, 8) ||
                buf_put(&seekto, zero, 8)) {
                rc = -1;
                break;
            }
            iter_skip_to(it, &seekto);
            continue;
        }
        /* the entry holds the record: flag byte + KeyValue */
        const char *rec = rocksdb_iter_value(it, &vl);
        if (vl < 1) {
            rc = -1;
            break;
        }
        if (rec[0] == REC_PUT) {
            r->count++;
            if (!count_only && (limit <= 0 || (int64_t)r->n < limit))
                rc = rows_add(r, rec + 1, vl - 1);
        }
        if (idxkey_key_after(&seekto, ukey.data, ukey.len)) {
            rc = -1;
            break;
        }
        iter_skip_to(it, &seekto);
    }
    if (rc == 0 && iter_failed(it))
        rc = -1;
out:
    if (it)
        rocksdb_iter_destroy(it);
    if (ro)
        rocksdb_readoptions_destroy(ro);
    free(lower.data);
    free(upper.data);
    free(seekto.data);
    free(ukey.data);
    return rc;
}

int view_range(mvcc_view *v, const uint8_t *key, size_t key_len,
               const uint8_t *end, size_t end_len, int64_t at, int64_t limit,
               bool count_only, range_rows *r)
{
    bool single = end_len == 0;
    bool unbounded = end_len == 1 && end[0] == 0;
    int rc;
    if (!single && !unbounded && bytes_compare(end, end_len, key, key_len) <= 0)
        return 0;
    if (at <= 0 || at >= v->rev) {
        if (single) {
            rc = view_get(v, key, key_len, r);
            if (rc == 1 && count_only) {
                r->n--; /* counted, not returned */
            }
            return rc < 0 ? -1 : 0;
        }
        rc = range_at(v, key, key_len, end, end_len, false, unbounded, v->rev, limit,
                      count_only, r);
    } else {
        rc = range_at(v, key, key_len, end, end_len, single, unbounded, at, limit, count_only,
                      r);
    }
    if (rc == 0)
        rc = rows_parse(r);
    return rc;
}

/* ---- Range requests ---- */

static bool less_key(const kvv *a, const kvv *b)
{
    return bytes_compare(a->key, a->key_len, b->key, b->key_len) < 0;
}
static bool less_version(const kvv *a, const kvv *b) { return a->version - b->version < 0; }
static bool less_create(const kvv *a, const kvv *b) { return a->create_rev - b->create_rev < 0; }
static bool less_mod(const kvv *a, const kvv *b) { return a->mod_rev - b->mod_rev < 0; }
static bool less_value(const kvv *a, const kvv *b)
{
    return bytes_compare(a->value, a->value_len, b->value, b->value_len) < 0;
}

int range_request(mvcc_view *v, const Etcdserverpb__RangeRequest *req,
                  const mvcc_header *h, bool top, range_rows *rows,
                  mvcc_buf *out, mvcc_result *res)
{
    if (req->revision > v->rev) {
        result_error(res, MVCC_STATUS_OUT_OF_RANGE, ERR_FUTURE_REV);
        return 0;
    }
    if (req->revision > 0 && req->revision < v->compact_rev) {
        result_error(res, MVCC_STATUS_OUT_OF_RANGE, ERR_COMPACTED);
        return 0;
    }
    int order = req->sort_order;
    int target = req->sort_target;
    if (target < ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__KEY ||
        target > ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__VALUE) {
        result_error(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: invalid sort target");
        return 0;
    }
    bool filters = req->min_mod_revision || req->max_mod_revision ||
                   req->min_create_revision || req->max_create_revision;
    int64_t fetch = 0;
    if (order == ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__NONE && !filters && req->limit > 0)
        fetch = req->limit + 1; /* one more tells whether there is more */

    rows_reset(rows);
    if (view_range(v, req->key.data, req->key.len, req->range_end.data, req->range_end.len,
                   req->revision, fetch, req->count_only, rows))
        return -1;

    size_t *idx = malloc((rows->n + 1) * sizeof(*idx));
    if (!idx)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < rows->n; i++) {
        const kvv *kv = &rows->kvs[i];
        if (req->max_mod_revision && kv->mod_rev > req->max_mod_revision)
            continue;
        if (req->min_mod_revision && kv->mod_rev < req->min_mod_revision)
            continue;
        if (req->max_create_revision && kv->create_rev > req->max_create_revision)
            continue;
        if (req->min_create_revision && kv->create_rev < req->min_create_revision)
            continue;
        idx[n++] = i;
    }

    if (target != ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__KEY &&
        order == ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__NONE)
        order = ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__ASCEND;
    if (order == ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__ASCEND ||
        order == ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__DESCEND) {
        static const kv_less by_target[] = {less_key, less_version, less_create, less_mod,
                                            less_value};
        sort_like_go(idx, n, rows->kvs, by_target[target],
                     order == ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__DESCEND);
    }

    bool more = false;
    if (req->limit > 0 && n > (uint64_t)req->limit) {
        n = (size_t)req->limit;
        more = true;
    }

    size_t start = out->len;
    int rc = pb_header(out, 1, top ? h : NULL, v->rev);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        size_t r = idx[i];
        if (req->keys_only)
            rc = kv_field(out, 2, &rows->kvs[r], true);
        else
            rc = pb_bytes_field(out, 2, rows->arena.data + rows->off[r], rows->len[r]);
    }
    free(idx);
    if (rc || pb_bool_field(out, 3, more) || pb_uint_field(out, 4, (uint64_t)rows->count))
        return -1;
    res->status = MVCC_STATUS_OK;
    res->message = NULL;
    res->off = start;
    res->len = out->len - start;
    return 0;
}

/* ---- compares ---- */

static int cmp_int(int64_t a, int64_t b)
{
    return a < b ? -1 : a > b;
}

static bool compare_kv(const Etcdserverpb__Compare *c, const kvv *kv)
{
    int r = 0;
    switch (c->target) {
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE:
        if (c->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE)
            r = bytes_compare(kv->value, kv->value_len, c->value.data, c->value.len);
        else
            r = bytes_compare(kv->value, kv->value_len, NULL, 0);
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE:
        r = cmp_int(kv->create_rev,
                    c->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION
                        ? c->create_revision : 0);
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD:
        r = cmp_int(kv->mod_rev,
                    c->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION
                        ? c->mod_revision : 0);
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VERSION:
        r = cmp_int(kv->version,
                    c->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION
                        ? c->version : 0);
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__LEASE:
        r = cmp_int(kv->lease,
                    c->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_LEASE
                        ? c->lease : 0);
        break;
    default:
        break;
    }
    switch (c->result) {
    case ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL: return r == 0;
    case ETCDSERVERPB__COMPARE__COMPARE_RESULT__NOT_EQUAL: return r != 0;
    case ETCDSERVERPB__COMPARE__COMPARE_RESULT__GREATER: return r > 0;
    case ETCDSERVERPB__COMPARE__COMPARE_RESULT__LESS: return r < 0;
    default: return true;
    }
}

int compares_hold(mvcc_view *v, Etcdserverpb__Compare **cmp, size_t n, range_rows *rows)
{
    for (size_t i = 0; i < n; i++) {
        const Etcdserverpb__Compare *c = cmp[i];
        rows_reset(rows);
        if (view_range(v, c->key.data, c->key.len, c->range_end.data, c->range_end.len, 0, 0,
                       false, rows))
            return -1;
        if (rows->n == 0) {
            /* A missing key has no value to compare; its revisions, version
             * and lease compare as 0. */
            if (c->target == ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE)
                return 0;
            kvv zero = {0};
            if (!compare_kv(c, &zero))
                return 0;
            continue;
        }
        for (size_t j = 0; j < rows->n; j++)
            if (!compare_kv(c, &rows->kvs[j]))
                return 0;
    }
    return 1;
}
