/*
 * Hashes of the store for Maintenance.HashKV and Maintenance.Hash: a
 * CRC-32C (Castagnoli, as etcd uses) over records read from one snapshot.
 *
 * Physical compaction progress is member-local, so nothing it may or may
 * not have removed yet is hashed: below the compact revision only what a
 * compaction keeps counts (each key's live version), exactly what etcd's
 * HashByRev counts.
 */
#include <stdlib.h>
#include <string.h>

#include "mvcc_internal.h"

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t crc32c_update(uint32_t crc, const void *p, size_t n)
{
    pthread_once(&crc_once, crc_init);
    const uint8_t *b = p;
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *b++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* Every record of "rev" with main revision in [lo, hi]. */
static int hash_rev_range(mvcc_view *v, rocksdb_readoptions_t *ro, int64_t lo, int64_t hi,
                          uint32_t *crc)
{
    if (hi < lo)
        return 0;
    uint8_t start[REVKEY_LEN], end[REVKEY_LEN];
    revkey_make(start, lo, 0);
    revkey_make(end, hi + 1, 0);
    rocksdb_iterator_t *it = view_iter(v, CF_REV, ro);
    if (!it)
        return -1;
    int rc = 0;
    for (rocksdb_iter_seek(it, (const char *)start, REVKEY_LEN); rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (kl != REVKEY_LEN) {
            rc = -1;
            break;
        }
        if (memcmp(k, end, REVKEY_LEN) >= 0)
            break;
        const char *val = rocksdb_iter_value(it, &vl);
        *crc = crc32c_update(*crc, k, kl);
        *crc = crc32c_update(*crc, val, vl);
    }
    if (rc == 0 && iter_failed(it))
        rc = -1;
    rocksdb_iter_destroy(it);
    return rc;
}

/* The revisions with main <= compact a compaction at `rev` keeps: for each
 * key, its newest revision <= rev when that is <= compact and not a
 * tombstone. Walks "index" key by key, seeking past what is not needed. */
static int hash_kept(mvcc_view *v, rocksdb_readoptions_t *ro, int64_t rev, int64_t compact,
                     uint32_t *crc)
{
    rocksdb_iterator_t *it = view_iter(v, CF_INDEX, ro);
    if (!it)
        return -1;
    mvcc_buf seek = {0};
    int rc = 0;
    rocksdb_iter_seek_to_first(it);
    while (rc == 0 && rocksdb_iter_valid(it)) {
        size_t kl, vl;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
        const uint8_t *val = (const uint8_t *)rocksdb_iter_value(it, &vl);
        if (kl < REVKEY_LEN + 2 || vl < 1) {
            rc = -1;
            break;
        }
        size_t plen = kl - REVKEY_LEN; /* escaped key + 00 01 */
        int64_t main, sub;
        revkey_parse(k + plen, &main, &sub);
        main = ~main;
        sub = ~sub;
        seek.len = 0;
        if (buf_put(&seek, k, plen)) {
            rc = -1;
            break;
        }
        if (main > rev) {
            /* this key's newest revision <= rev, if any */
            uint8_t r[REVKEY_LEN];
            revkey_make(r, ~rev, 0);
            if (buf_put(&seek, r, REVKEY_LEN)) {
                rc = -1;
                break;
            }
            rocksdb_iter_seek(it, (const char *)seek.data, seek.len);
            if (!rocksdb_iter_valid(it))
                break;
            size_t nl;
            const uint8_t *nk = (const uint8_t *)rocksdb_iter_key(it, &nl);
            if (nl != kl || memcmp(nk, seek.data, plen) != 0)
                continue; /* the key has none: the iterator is at the next key */
            continue;     /* same key, now at a revision <= rev */
        }
        if (main <= compact && val[0] == REC_PUT) {
            /* an "index" entry holds the same bytes as its "rev" entry */
            uint8_t rk[REVKEY_LEN];
            revkey_make(rk, main, sub);
            *crc = crc32c_update(*crc, rk, REVKEY_LEN);
            *crc = crc32c_update(*crc, val, vl);
        }
        /* past every revision of this key: escaped key + 00 02 */
        seek.data[plen - 1] = 0x02;
        rocksdb_iter_seek(it, (const char *)seek.data, plen);
    }
    if (rc == 0 && iter_failed(it))
        rc = -1;
    free(seek.data);
    rocksdb_iter_destroy(it);
    return rc;
}

static int hash_kv_view(mvcc_view *v, rocksdb_readoptions_t *ro, int64_t rev, uint32_t *crc)
{
    static const char bucket[] = "key";
    *crc = crc32c_update(*crc, bucket, 3);
    if (rev < 0)
        return 0;
    int64_t compact = v->compact_rev;
    if (hash_rev_range(v, ro, compact + 1 > 0 ? compact + 1 : 0, rev, crc))
        return -1;
    if (compact >= 1 && hash_kept(v, ro, rev, compact < rev ? compact : rev, crc))
        return -1;
    return 0;
}

int mvcc_hash_kv(mvcc *m, int64_t rev, uint32_t *hash, int64_t *compact_rev, int64_t *hash_rev)
{
    mvcc_view v;
    if (view_begin(m, &v)) {
        view_end(&v);
        return MVCC_HASH_ERROR;
    }
    *compact_rev = v.compact_rev;
    *hash_rev = v.rev;
    int rc = MVCC_HASH_OK;
    if (rev > 0 && rev <= v.compact_rev) {
        rc = MVCC_HASH_COMPACTED;
    } else if (rev > 0 && rev > v.rev) {
        rc = MVCC_HASH_FUTURE;
    } else {
        rocksdb_readoptions_t *ro = view_ro(&v);
        uint32_t crc = 0;
        if (!ro || hash_kv_view(&v, ro, rev == 0 ? v.rev : rev, &crc))
            rc = MVCC_HASH_ERROR;
        if (ro)
            rocksdb_readoptions_destroy(ro);
        *hash = crc;
    }
    view_end(&v);
    return rc;
}

/* Every record of one column family, or those whose key starts with
 * `prefix` (plen bytes). */
static int hash_cf(mvcc_view *v, rocksdb_readoptions_t *ro, int cf, const char *prefix,
                   size_t plen, uint32_t *crc)
{
    rocksdb_iterator_t *it = view_iter(v, cf, ro);
    if (!it)
        return -1;
    if (plen)
        rocksdb_iter_seek(it, prefix, plen);
    else
        rocksdb_iter_seek_to_first(it);
    for (; rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (plen && (kl < plen || memcmp(k, prefix, plen) != 0))
            break;
        const char *val = rocksdb_iter_value(it, &vl);
        *crc = crc32c_update(*crc, k, kl);
        *crc = crc32c_update(*crc, val, vl);
    }
    int rc = iter_failed(it) ? -1 : 0;
    rocksdb_iter_destroy(it);
    return rc;
}

int mvcc_hash(mvcc *m, uint32_t *hash, int64_t *rev)
{
    mvcc_view v;
    if (view_begin(m, &v)) {
        view_end(&v);
        return -1;
    }
    rocksdb_readoptions_t *ro = view_ro(&v);
    uint32_t crc = 0;
    uint8_t nums[16];
    be64_encode(nums, (uint64_t)v.rev);
    be64_encode(nums + 8, (uint64_t)v.compact_rev);
    int rc = !ro || hash_kv_view(&v, ro, v.rev, &crc) ||
                     hash_cf(&v, ro, CF_LEASE, NULL, 0, &crc) ||
                     hash_cf(&v, ro, CF_LEASE_KEYS, NULL, 0, &crc) ||
                     hash_cf(&v, ro, CF_META, META_ALARM_PREFIX, strlen(META_ALARM_PREFIX), &crc)
                 ? -1
                 : 0;
    crc = crc32c_update(crc, nums, sizeof nums);
    if (ro)
        rocksdb_readoptions_destroy(ro);
    *hash = crc;
    *rev = v.rev;
    view_end(&v);
    return rc;
}
