/*
 * Physical compaction, on a background thread.
 *
 * Apply only records the compact revision C (reads below it fail from that
 * entry on). This thread then removes what no read at C or later can see:
 * for each key, every revision older than its newest revision <= C, and
 * that one too if it is a tombstone.
 *
 * It walks "rev" in revision order from where it stopped last time. A
 * revision that is a key's newest <= C removes all older revisions of the
 * key (found through "index"); an older revision is left for the newer one
 * to remove. Work is cut into chunks of CHUNK revisions, each one write
 * batch that also records the position, so writes are never stalled for
 * long and a restart resumes where the last chunk ended. Nothing it removes
 * is visible to a read at or above C, so it needs no coordination with
 * apply or readers.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mvcc_internal.h"

#define CHUNK 1000

static void del_rev(rocksdb_writebatch_t *wb, mvcc *m, int64_t main, int64_t sub)
{
    uint8_t rk[REVKEY_LEN];
    revkey_make(rk, main, sub);
    rocksdb_writebatch_delete_cf(wb, m->cf[CF_REV], (const char *)rk, REVKEY_LEN);
}

/* Handles rev entry (main, sub) of user key k. */
static int compact_one(mvcc *m, rocksdb_writebatch_t *wb, rocksdb_iterator_t *idx,
                       mvcc_buf *prefix, const kvv *kv, bool tombstone, int64_t main,
                       int64_t sub, int64_t target)
{
    prefix->len = 0;
    if (idxkey_key_start(prefix, kv->key, kv->key_len))
        return -1;
    size_t plen = prefix->len;
    static const uint8_t zero[8] = {0};
    uint8_t r8[REVKEY_LEN];
    revkey_make(r8, ~target, 0);
    if (buf_put(prefix, r8, 8) || buf_put(prefix, zero, 8))
        return -1;
    rocksdb_iter_seek(idx, (const char *)prefix->data, prefix->len);
    bool first = true;
    for (; rocksdb_iter_valid(idx); rocksdb_iter_next(idx)) {
        size_t kl;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(idx, &kl);
        if (kl != plen + REVKEY_LEN || memcmp(k, prefix->data, plen) != 0)
            break;
        int64_t a, s;
        revkey_parse(k + plen, &a, &s);
        a = ~a;
        s = ~s;
        if (first) {
            if (a != main || s != sub)
                return 0; /* a newer revision <= target will handle this key */
            first = false;
            if (tombstone) {
                rocksdb_writebatch_delete_cf(wb, m->cf[CF_INDEX], (const char *)k, kl);
                del_rev(wb, m, a, s);
            }
            continue;
        }
        rocksdb_writebatch_delete_cf(wb, m->cf[CF_INDEX], (const char *)k, kl);
        del_rev(wb, m, a, s);
    }
    return 0;
}

static int compact_chunk(mvcc *m, int64_t target, bool *finished)
{
    uint8_t upper[REVKEY_LEN];
    revkey_make(upper, target + 1, 0);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_iterate_upper_bound(ro, (const char *)upper, REVKEY_LEN);
    rocksdb_readoptions_set_fill_cache(ro, 0);
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(m->db, ro, m->cf[CF_REV]);
    rocksdb_iterator_t *idx = rocksdb_create_iterator_cf(m->db, m->ro_plain, m->cf[CF_INDEX]);
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    mvcc_buf prefix = {0};
    int rc = 0;
    int n = 0;
    uint8_t pos[REVKEY_LEN];

    rocksdb_iter_seek(it, (const char *)m->phys_pos, REVKEY_LEN);
    for (; rc == 0 && rocksdb_iter_valid(it) && n < CHUNK; rocksdb_iter_next(it), n++) {
        size_t kl, vl;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
        const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vl);
        kvv kv;
        if (kl != REVKEY_LEN || vl < 1 || kv_parse(v + 1, vl - 1, &kv)) {
            rc = -1;
            break;
        }
        int64_t main, sub;
        revkey_parse(k, &main, &sub);
        rc = compact_one(m, wb, idx, &prefix, &kv, v[0] == REC_TOMBSTONE, main, sub, target);
    }
    *finished = false;
    if (rc == 0) {
        if (rocksdb_iter_valid(it)) {
            size_t kl;
            memcpy(pos, rocksdb_iter_key(it, &kl), REVKEY_LEN);
        } else {
            if (iter_failed(it))
                rc = -1;
            memcpy(pos, upper, REVKEY_LEN);
            *finished = true;
        }
    }
    if (rc == 0) {
        uint8_t meta[8 + REVKEY_LEN];
        be64_encode(meta, (uint64_t)(*finished ? target : m->phys_done));
        memcpy(meta + 8, pos, REVKEY_LEN);
        rocksdb_writebatch_put_cf(wb, m->cf[CF_META], META_PHYS, strlen(META_PHYS),
                                  (const char *)meta, sizeof(meta));
        char *err = NULL;
        rocksdb_write(m->db, m->wo, wb, &err);
        if (err) {
            free(err);
            rc = -1;
        } else {
            memcpy(m->phys_pos, pos, REVKEY_LEN);
        }
    }
    free(prefix.data);
    rocksdb_writebatch_destroy(wb);
    rocksdb_iter_destroy(idx);
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    return rc;
}

static void *compactor_main(void *arg)
{
    pthread_setname_np(pthread_self(), "compactor");
    mvcc *m = arg;
    pthread_mutex_lock(&m->mu);
    while (!m->stopping) {
        /* never during a snapshot load: the data is half there */
        if (m->loading || m->compact_rev <= m->phys_done) {
            pthread_cond_wait(&m->compact_cv, &m->mu);
            continue;
        }
        int64_t target = m->compact_rev;
        m->compactor_busy = true;
        pthread_mutex_unlock(&m->mu);
        bool finished = false;
        int rc = compact_chunk(m, target, &finished);
        pthread_mutex_lock(&m->mu);
        m->compactor_busy = false;
        pthread_cond_broadcast(&m->compact_done_cv);
        if (rc != 0) {
            /* A store error: try again later rather than spin. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            if (!m->stopping)
                pthread_cond_timedwait(&m->compact_cv, &m->mu, &ts);
            continue;
        }
        if (finished) {
            m->phys_done = target;
            pthread_cond_broadcast(&m->compact_done_cv);
            void (*cb)(void *, int64_t) = m->compact_cb;
            void *cb_arg = m->compact_cb_arg;
            if (cb) {
                pthread_mutex_unlock(&m->mu);
                cb(cb_arg, target);
                pthread_mutex_lock(&m->mu);
            }
        }
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

int compactor_start(mvcc *m)
{
    if (pthread_create(&m->compactor, NULL, compactor_main, m) != 0)
        return -1;
    m->compactor_started = true;
    return 0;
}

void compactor_stop(mvcc *m)
{
    if (!m->compactor_started)
        return;
    pthread_mutex_lock(&m->mu);
    m->stopping = true;
    pthread_cond_broadcast(&m->compact_cv);
    pthread_cond_broadcast(&m->compact_done_cv);
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->compactor, NULL);
    m->compactor_started = false;
}

void compactor_kick(mvcc *m)
{
    pthread_mutex_lock(&m->mu);
    pthread_cond_signal(&m->compact_cv);
    pthread_mutex_unlock(&m->mu);
}

int64_t mvcc_physical_compact_revision(mvcc *m)
{
    pthread_mutex_lock(&m->mu);
    int64_t v = m->phys_done;
    pthread_mutex_unlock(&m->mu);
    return v;
}

int mvcc_wait_compaction(mvcc *m, int64_t rev)
{
    pthread_mutex_lock(&m->mu);
    while (m->phys_done < rev && !m->stopping)
        pthread_cond_wait(&m->compact_done_cv, &m->mu);
    int rc = m->phys_done >= rev ? 0 : -1;
    pthread_mutex_unlock(&m->mu);
    return rc;
}

void mvcc_set_compaction_callback(mvcc *m, void (*cb)(void *arg, int64_t rev), void *arg)
{
    pthread_mutex_lock(&m->mu);
    m->compact_cb = cb;
    m->compact_cb_arg = arg;
    pthread_mutex_unlock(&m->mu);
}
