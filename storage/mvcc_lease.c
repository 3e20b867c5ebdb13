/*
 * Leases in the store: the "lease" family (ID -> granted TTL) and the
 * "lease_keys" family (ID + key), which is what a revoke walks. Both are
 * written in the apply batch of the entry that changes them, so they are as
 * durable and as atomic as the keys themselves.
 */
#include <stdlib.h>
#include <string.h>

#include "mvcc_internal.h"

#define LEASE_ID_LEN 8

static void lease_id_key(uint8_t out[LEASE_ID_LEN], int64_t id)
{
    be64_encode(out, (uint64_t)id);
}

int lease_get(mvcc_view *v, int64_t id, int64_t *ttl)
{
    uint8_t k[LEASE_ID_LEN];
    lease_id_key(k, id);
    char *val;
    size_t vlen;
    if (view_point(v, CF_LEASE, k, sizeof k, &val, &vlen))
        return -1;
    if (!val)
        return 0;
    int rc = 1;
    if (vlen == 8)
        *ttl = (int64_t)be64_decode((const uint8_t *)val);
    else
        rc = -1;
    free(val);
    return rc;
}

void lease_put(mvcc *m, int64_t id, int64_t ttl)
{
    uint8_t k[LEASE_ID_LEN], val[8];
    lease_id_key(k, id);
    be64_encode(val, (uint64_t)ttl);
    rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_LEASE], (const char *)k, sizeof k,
                                 (const char *)val, sizeof val);
}

void lease_del(mvcc *m, int64_t id)
{
    uint8_t k[LEASE_ID_LEN];
    lease_id_key(k, id);
    rocksdb_writebatch_wi_delete_cf(m->wb, m->cf[CF_LEASE], (const char *)k, sizeof k);
}

/* The attachment key (ID + user key) gets its own buffer: m->scratch still
 * holds the record write_put made, which the watch event is built from. */
static int attach_key(mvcc_buf *b, int64_t id, const uint8_t *key, size_t key_len)
{
    uint8_t k[LEASE_ID_LEN];
    lease_id_key(k, id);
    b->len = 0;
    return buf_put(b, k, sizeof k) || buf_put(b, key, key_len);
}

int lease_move(mvcc *m, int64_t from, int64_t to, const uint8_t *key, size_t key_len)
{
    if (from == to)
        return 0;
    mvcc_buf b = {0};
    int rc = 0;
    if (from != 0) {
        if ((rc = attach_key(&b, from, key, key_len)) == 0)
            rocksdb_writebatch_wi_delete_cf(m->wb, m->cf[CF_LEASE_KEYS], (const char *)b.data, b.len);
    }
    if (rc == 0 && to != 0) {
        if ((rc = attach_key(&b, to, key, key_len)) == 0)
            rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_LEASE_KEYS], (const char *)b.data, b.len,
                                         "", 0);
    }
    free(b.data);
    return rc ? -1 : 0;
}

/* Calls fn for each key attached to `id` in the view, in key order. */
static int each_key(mvcc_view *v, int64_t id,
                    int (*fn)(void *arg, const uint8_t *key, size_t len), void *arg)
{
    uint8_t prefix[LEASE_ID_LEN];
    lease_id_key(prefix, id);
    rocksdb_readoptions_t *ro = view_ro(v);
    if (!ro)
        return -1;
    rocksdb_iterator_t *it = view_iter(v, CF_LEASE_KEYS, ro);
    int rc = it ? 0 : -1;
    if (it) {
        for (rocksdb_iter_seek(it, (const char *)prefix, sizeof prefix); rocksdb_iter_valid(it);
             rocksdb_iter_next(it)) {
            size_t kl;
            const char *k = rocksdb_iter_key(it, &kl);
            if (kl < LEASE_ID_LEN || memcmp(k, prefix, LEASE_ID_LEN) != 0)
                break;
            if (fn(arg, (const uint8_t *)k + LEASE_ID_LEN, kl - LEASE_ID_LEN)) {
                rc = -1;
                break;
            }
        }
        if (iter_failed(it))
            rc = -1;
        rocksdb_iter_destroy(it);
    }
    rocksdb_readoptions_destroy(ro);
    return rc;
}

static int collect_one(void *arg, const uint8_t *key, size_t len)
{
    mvcc_buf *keys = arg;
    uint32_t n = (uint32_t)len;
    return buf_put(keys, &n, sizeof n) || buf_put(keys, key, len);
}

int lease_collect_keys(mvcc_view *v, int64_t id, mvcc_buf *keys)
{
    return each_key(v, id, collect_one, keys);
}

int lease_changed(mvcc *m, int64_t id, int64_t ttl)
{
    if (m->lease_n == m->lease_cap) {
        size_t cap = m->lease_cap ? 2 * m->lease_cap : 16;
        struct lease_change *c = realloc(m->lease_changes, cap * sizeof(*c));
        if (!c)
            return -1;
        m->lease_changes = c;
        m->lease_cap = cap;
    }
    m->lease_changes[m->lease_n++] = (struct lease_change){id, ttl};
    return 0;
}

/* ---- reads from any thread ---- */

int mvcc_lease_list(mvcc *m, mvcc_lease_fn fn, void *arg)
{
    mvcc_view v;
    if (view_begin(m, &v))
        return -1;
    int rc = -1;
    rocksdb_readoptions_t *ro = view_ro(&v);
    rocksdb_iterator_t *it = ro ? view_iter(&v, CF_LEASE, ro) : NULL;
    if (it) {
        rc = 0;
        for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
            size_t kl, vl;
            const char *k = rocksdb_iter_key(it, &kl);
            const char *val = rocksdb_iter_value(it, &vl);
            if (kl != LEASE_ID_LEN || vl != 8) {
                rc = -1;
                break;
            }
            fn(arg, (int64_t)be64_decode((const uint8_t *)k), (int64_t)be64_decode((const uint8_t *)val));
        }
        if (iter_failed(it))
            rc = -1;
        rocksdb_iter_destroy(it);
    }
    if (ro)
        rocksdb_readoptions_destroy(ro);
    view_end(&v);
    return rc;
}

typedef struct key_cb {
    void (*fn)(void *arg, const uint8_t *key, size_t len);
    void *arg;
} key_cb;

static int call_key_cb(void *arg, const uint8_t *key, size_t len)
{
    key_cb *c = arg;
    c->fn(c->arg, key, len);
    return 0;
}

int mvcc_lease_keys(mvcc *m, int64_t id, void (*fn)(void *arg, const uint8_t *key, size_t len),
                    void *arg)
{
    mvcc_view v;
    if (view_begin(m, &v))
        return -1;
    key_cb c = {fn, arg};
    int rc = each_key(&v, id, call_key_cb, &c);
    view_end(&v);
    return rc;
}
