/*
 * History reads for the watch hub: the changes in a revision range, in
 * order, straight from the "rev" family, and the previous version of a key
 * (prev_kv) from "index". Everything is read from one RocksDB snapshot, so a
 * reader sees whole entries only and physical compaction running meanwhile
 * cannot remove what it is reading.
 */
#include <stdlib.h>
#include <string.h>

#include "mvcc_internal.h"

struct mvcc_history {
    mvcc_view v;
    rocksdb_readoptions_t *ro;
    mvcc_buf scratch; /* a DELETE's KeyValue */
    mvcc_buf idx;     /* index keys */
};

mvcc_history *mvcc_history_open(mvcc *m)
{
    mvcc_history *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    if (view_begin(m, &h->v)) {
        view_end(&h->v);
        free(h);
        return NULL;
    }
    h->ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_snapshot(h->ro, h->v.snap);
    rocksdb_readoptions_set_total_order_seek(h->ro, 1);
    return h;
}

void mvcc_history_close(mvcc_history *h)
{
    if (!h)
        return;
    rocksdb_readoptions_destroy(h->ro);
    view_end(&h->v);
    free(h->scratch.data);
    free(h->idx.data);
    free(h);
}

int64_t mvcc_history_revision(const mvcc_history *h)
{
    return h->v.rev;
}

int64_t mvcc_history_compact_revision(const mvcc_history *h)
{
    return h->v.compact_rev;
}

int mvcc_history_events(mvcc_history *h, int64_t from, int64_t to, size_t max_events,
                        size_t max_bytes, mvcc_event_fn fn, void *arg, int64_t *next)
{
    *next = from;
    if (from < 1)
        from = 1;
    if (to > h->v.rev)
        to = h->v.rev;
    if (from > to) {
        *next = to + 1 > *next ? to + 1 : *next;
        return 0;
    }
    mvcc *m = h->v.m;
    uint8_t lo[REVKEY_LEN], hi[REVKEY_LEN];
    revkey_make(lo, from, 0);
    revkey_make(hi, to + 1, 0);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_snapshot(ro, h->v.snap);
    rocksdb_readoptions_set_iterate_upper_bound(ro, (const char *)hi, REVKEY_LEN);
    rocksdb_readoptions_set_fill_cache(ro, 0);
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(m->db, ro, m->cf[CF_REV]);
    int rc = 0;
    size_t n = 0, bytes = 0;
    int64_t last = from - 1;
    bool full = false;
    for (rocksdb_iter_seek(it, (const char *)lo, REVKEY_LEN); rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kl, vl;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
        const uint8_t *val = (const uint8_t *)rocksdb_iter_value(it, &vl);
        int64_t main, sub;
        kvv kv;
        if (kl != REVKEY_LEN || vl < 1 || kv_parse(val + 1, vl - 1, &kv)) {
            rc = -1;
            break;
        }
        revkey_parse(k, &main, &sub);
        if (full && main != last)
            break;
        mvcc_event ev = {.rev = main, .sub = sub, .key = kv.key, .key_len = kv.key_len};
        if (val[0] == REC_TOMBSTONE) {
            ev.type = MVCC_EVENT_DELETE;
            h->scratch.len = 0;
            kvv d = {.key = kv.key, .key_len = kv.key_len, .mod_rev = main};
            if (kv_encode(&h->scratch, &d, false)) {
                rc = -1;
                break;
            }
            ev.kv = h->scratch.data;
            ev.kv_len = h->scratch.len;
        } else {
            ev.type = MVCC_EVENT_PUT;
            ev.create_rev = kv.create_rev;
            ev.kv = val + 1;
            ev.kv_len = vl - 1;
        }
        fn(arg, &ev, 1);
        last = main;
        n++;
        bytes += ev.kv_len;
        if ((max_events && n >= max_events) || (max_bytes && bytes >= max_bytes))
            full = true;
    }
    if (rc == 0 && iter_failed(it))
        rc = -1;
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    if (rc == 0)
        *next = full ? last + 1 : to + 1;
    return rc;
}

int mvcc_history_prev(mvcc_history *h, const uint8_t *key, size_t key_len, int64_t rev,
                      mvcc_buf *out)
{
    mvcc *m = h->v.m;
    /* Like a read at rev - 1: nothing below the compact revision. */
    if (rev - 1 < h->v.compact_rev)
        return 0;
    mvcc_buf *p = &h->idx;
    p->len = 0;
    if (idxkey_key_start(p, key, key_len))
        return -1;
    size_t plen = p->len;
    static const uint8_t zero[8] = {0};
    uint8_t r8[REVKEY_LEN];
    revkey_make(r8, ~(rev - 1), 0);
    if (buf_put(p, r8, 8) || buf_put(p, zero, 8))
        return -1;
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(m->db, h->ro, m->cf[CF_INDEX]);
    rocksdb_iter_seek(it, (const char *)p->data, p->len);
    int rc = 0;
    if (rocksdb_iter_valid(it)) {
        size_t kl, vl;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
        const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vl);
        /* the entry holds the record itself (flag byte + KeyValue) */
        if (kl == plen + REVKEY_LEN && memcmp(k, p->data, plen) == 0 && vl >= 1 &&
            v[0] == REC_PUT)
            rc = buf_put(out, v + 1, vl - 1) ? -1 : 1;
    } else {
        if (iter_failed(it))
            rc = -1;
    }
    rocksdb_iter_destroy(it);
    return rc;
}
