/*
 * Whole-store dump and load: the byte stream behind Maintenance.Snapshot,
 * `ballast snapshot restore` and sending a store to a member that fell
 * behind.
 *
 * Stream (integers little-endian):
 *
 *   "BLSDUMP1"
 *   block*            type u8, payload length u32, payload, CRC-32C u32 of
 *                     (type, length, payload)
 *     'H' header      format u32 (1), applied index u64, revision i64,
 *                     compact revision i64 — first block
 *     'R' records     record*: column family u8, key length varint, value
 *                     length varint, key, value
 *     'E' end         record count u64, block count u64 (H and R), CRC-32C
 *                     u32 of every stream byte before this block — last
 *   tail (optional)   zero bytes up to a multiple of 512, then the SHA-256
 *                     of everything before it: what Maintenance.Snapshot
 *                     appends because etcdctl checks for it.
 *
 * Records come family by family in key order from one RocksDB snapshot,
 * each family in full (meta included: applied index, revisions, physical
 * compaction progress, alarms), so a dump is the store exactly as it was
 * after one applied entry.
 *
 * Loading first wipes every family (a range deletion from its first to its
 * last key, which readers holding a snapshot do not see) and writes the
 * "load_incomplete" marker with applied index 0, all in one synced batch;
 * the records then go in bounded batches, except the meta records, which
 * are held back (they are few) and written with the marker's removal in the
 * final synced batch. A crash at any point before that batch leaves the
 * marker: mvcc_open then reports an incomplete store at applied index 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "mvcc_internal.h"

#define DUMP_MAGIC "BLSDUMP1"
#define DUMP_MAGIC_LEN 8
#define DUMP_FORMAT 1
#define BLOCK_HEAD 5
#define BLOCK_TRAILER 4
#define BLOCK_TARGET (64u << 10)      /* records per block, in bytes */
#define BLOCK_MAX (256u << 20)        /* a longer block is garbage */
#define LOAD_BATCH_BYTES (4u << 20)   /* one write batch while loading */
#define META_HELD_MAX (1u << 20)
#define TAIL_ALIGN 512
#define SHA_LEN 32

static void le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static int varint_put(mvcc_buf *b, uint64_t v)
{
    uint8_t t[10];
    size_t n = 0;
    while (v >= 0x80) {
        t[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    t[n++] = (uint8_t)v;
    return buf_put(b, t, n);
}

static int varint_get(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t c = *(*p)++;
        *v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80))
            return 0;
    }
    return -1;
}

static void set_err(char **errmsg, const char *fmt, const char *detail)
{
    if (!errmsg)
        return;
    free(*errmsg);
    *errmsg = NULL;
    size_t n = strlen(fmt) + (detail ? strlen(detail) : 0) + 1;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, fmt, detail ? detail : "");
    *errmsg = s;
}

/* ---- dump ---- */

struct mvcc_dump {
    mvcc *m;
    mvcc_view v;
    rocksdb_readoptions_t *ro;
    rocksdb_iterator_t *it;
    int cf;              /* family being read; CF_COUNT when all are read */
    int stage;           /* 0: magic + header next, 1: records, 2: end next, 3: done */
    uint64_t applied;
    uint64_t records, blocks;
    uint32_t stream_crc;
    mvcc_buf pend;       /* produced, not yet handed out (from pend_off) */
    size_t pend_off;
};

mvcc_dump *mvcc_dump_open(mvcc *m)
{
    mvcc_dump *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->m = m;
    if (view_begin(m, &d->v))
        goto fail;
    pthread_mutex_lock(&m->mu);
    bool incomplete = m->incomplete;
    pthread_mutex_unlock(&m->mu);
    if (incomplete)
        goto fail;
    d->ro = view_ro(&d->v);
    if (!d->ro)
        goto fail;
    rocksdb_readoptions_set_fill_cache(d->ro, 0);
    /* the applied index of exactly the data in the snapshot */
    char *val;
    size_t vl;
    if (view_point(&d->v, CF_META, META_APPLIED, strlen(META_APPLIED), &val, &vl))
        goto fail;
    if (val && vl == 8)
        d->applied = be64_decode((const uint8_t *)val);
    free(val);
    return d;
fail:
    mvcc_dump_close(d);
    return NULL;
}

uint64_t mvcc_dump_applied_index(const mvcc_dump *d)
{
    return d->applied;
}

int64_t mvcc_dump_revision(const mvcc_dump *d)
{
    return d->v.rev;
}

void mvcc_dump_close(mvcc_dump *d)
{
    if (!d)
        return;
    if (d->it)
        rocksdb_iter_destroy(d->it);
    if (d->ro)
        rocksdb_readoptions_destroy(d->ro);
    view_end(&d->v);
    free(d->pend.data);
    free(d);
}

/* Frames the payload written after `start` (where BLOCK_HEAD bytes were
 * reserved) as a block of `type`. */
static int block_close(mvcc_dump *d, mvcc_buf *out, size_t start, uint8_t type)
{
    size_t plen = out->len - start - BLOCK_HEAD;
    uint8_t *h = out->data + start;
    h[0] = type;
    le32(h + 1, (uint32_t)plen);
    uint8_t c[4];
    le32(c, crc32c_update(0, h, BLOCK_HEAD + plen));
    if (buf_put(out, c, 4))
        return -1;
    d->stream_crc = crc32c_update(d->stream_crc, out->data + start, out->len - start);
    if (type != 'E')
        d->blocks++;
    return 0;
}

static int block_open(mvcc_buf *out, size_t *start)
{
    *start = out->len;
    uint8_t z[BLOCK_HEAD] = {0};
    return buf_put(out, z, BLOCK_HEAD);
}

/* One 'R' block of at most about `target` bytes. Returns 1 when it wrote a
 * block, 0 when every family is read, -1 on an error. */
static int dump_records(mvcc_dump *d, mvcc_buf *out, size_t target)
{
    size_t start;
    if (block_open(out, &start))
        return -1;
    size_t n = 0;
    while (d->cf < CF_COUNT) {
        if (!d->it) {
            d->it = view_iter(&d->v, d->cf, d->ro);
            if (!d->it)
                return -1;
            rocksdb_iter_seek_to_first(d->it);
        }
        if (!rocksdb_iter_valid(d->it)) {
            if (iter_failed(d->it))
                return -1;
            rocksdb_iter_destroy(d->it);
            d->it = NULL;
            d->cf++;
            continue;
        }
        if (n > 0 && out->len - start >= target)
            break;
        size_t kl, vl;
        const char *k = rocksdb_iter_key(d->it, &kl);
        const char *v = rocksdb_iter_value(d->it, &vl);
        uint8_t cf = (uint8_t)d->cf;
        if (buf_put(out, &cf, 1) || varint_put(out, kl) || varint_put(out, vl) ||
            buf_put(out, k, kl) || buf_put(out, v, vl))
            return -1;
        n++;
        d->records++;
        rocksdb_iter_next(d->it);
    }
    if (n == 0) {
        out->len = start;
        return 0;
    }
    return block_close(d, out, start, 'R') ? -1 : 1;
}

/* Produces the next block (or the magic and header) into d->pend. */
static int dump_step(mvcc_dump *d)
{
    mvcc_buf *out = &d->pend;
    size_t start;
    if (d->stage == 0) {
        uint8_t h[28];
        le32(h, DUMP_FORMAT);
        le64(h + 4, d->applied);
        le64(h + 12, (uint64_t)d->v.rev);
        le64(h + 20, (uint64_t)d->v.compact_rev);
        if (buf_put(out, DUMP_MAGIC, DUMP_MAGIC_LEN))
            return -1;
        d->stream_crc = crc32c_update(0, DUMP_MAGIC, DUMP_MAGIC_LEN);
        if (block_open(out, &start) || buf_put(out, h, sizeof h) || block_close(d, out, start, 'H'))
            return -1;
        d->stage = 1;
    } else if (d->stage == 1) {
        int rc = dump_records(d, out, BLOCK_TARGET);
        if (rc < 0)
            return -1;
        if (rc == 0)
            d->stage = 2;
    } else if (d->stage == 2) {
        uint8_t e[20];
        le64(e, d->records);
        le64(e + 8, d->blocks);
        le32(e + 16, d->stream_crc);
        if (block_open(out, &start) || buf_put(out, e, sizeof e) || block_close(d, out, start, 'E'))
            return -1;
        d->stage = 3;
    }
    return 0;
}

int mvcc_dump_next(mvcc_dump *d, mvcc_buf *out, size_t max_bytes)
{
    if (max_bytes == 0)
        max_bytes = 1;
    /* blocks are cut the same way whatever the piece size, so a store
     * always dumps to the same stream */
    while (d->pend.len - d->pend_off < max_bytes && d->stage < 3) {
        if (d->pend_off > 0) {
            memmove(d->pend.data, d->pend.data + d->pend_off, d->pend.len - d->pend_off);
            d->pend.len -= d->pend_off;
            d->pend_off = 0;
        }
        if (dump_step(d))
            return -1;
    }
    size_t n = d->pend.len - d->pend_off;
    if (n > max_bytes)
        n = max_bytes;
    if (n == 0)
        return 0;
    if (buf_put(out, d->pend.data + d->pend_off, n))
        return -1;
    d->pend_off += n;
    if (d->pend_off == d->pend.len) {
        d->pend.len = d->pend_off = 0;
        if (d->pend.cap > (1u << 20)) {
            free(d->pend.data);
            d->pend = (mvcc_buf){0};
        }
    }
    return 1;
}

/* ---- load ---- */

struct mvcc_load {
    mvcc *m;
    mvcc_buf pending;       /* bytes fed and not yet parsed */
    mvcc_buf meta;          /* held-back meta records: klen u32, vlen u32, key, value */
    mvcc_buf tail;          /* bytes after the end block */
    rocksdb_writebatch_t *wb;
    size_t wb_bytes;
    bool magic_seen, header_seen, end_seen, failed;
    uint64_t records, blocks;
    uint64_t want_records, want_blocks;
    uint32_t stream_crc, want_crc;
    uint64_t consumed;      /* stream bytes parsed (up to the end block) */
    EVP_MD_CTX *sha;
};

static const char *const cf_label = "column family";

static int write_sync(mvcc *m, rocksdb_writebatch_t *wb)
{
    rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(wo, 1);
    char *err = NULL;
    rocksdb_write(m->db, wo, wb, &err);
    rocksdb_writeoptions_destroy(wo);
    if (err) {
        free(err);
        return -1;
    }
    return 0;
}

/* Adds to wb the deletion of everything in family cf. */
static int wipe_cf(mvcc *m, int cf, rocksdb_writebatch_t *wb)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(m->db, m->ro_plain, m->cf[cf]);
    rocksdb_iter_seek_to_first(it);
    if (!rocksdb_iter_valid(it)) {
        int rc = iter_failed(it) ? -1 : 0;
        rocksdb_iter_destroy(it);
        return rc;
    }
    size_t fl, ll;
    const char *f = rocksdb_iter_key(it, &fl);
    char *first = malloc(fl ? fl : 1);
    if (!first) {
        rocksdb_iter_destroy(it);
        return -1;
    }
    memcpy(first, f, fl);
    rocksdb_iter_seek_to_last(it);
    int rc = -1;
    if (rocksdb_iter_valid(it)) {
        const char *last = rocksdb_iter_key(it, &ll);
        rocksdb_writebatch_delete_range_cf(wb, m->cf[cf], first, fl, last, ll);
        rocksdb_writebatch_delete_cf(wb, m->cf[cf], last, ll);
        rc = 0;
    }
    free(first);
    rocksdb_iter_destroy(it);
    return rc;
}

/* The in-memory state of a store whose load is not finished. */
static void mark_incomplete(mvcc *m)
{
    m->incomplete = true;
    m->applied_index = 0;
    m->rev = 1;
    m->compact_rev = -1;
    m->phys_done = -1;
    revkey_make(m->phys_pos, 0, 0);
    m->n_alarms = 0;
}

/* Ends the load state: readers and the compactor go on. */
static void load_finish(mvcc *m)
{
    pthread_mutex_lock(&m->mu);
    m->loading = false;
    pthread_cond_broadcast(&m->load_cv);
    pthread_cond_broadcast(&m->compact_cv);
    pthread_cond_broadcast(&m->compact_done_cv);
    pthread_mutex_unlock(&m->mu);
}

mvcc_load *mvcc_load_begin(mvcc *m, char **errmsg)
{
    if (errmsg)
        *errmsg = NULL;
    mvcc_load *l = calloc(1, sizeof *l);
    if (!l || !(l->wb = rocksdb_writebatch_create()) || !(l->sha = EVP_MD_CTX_new()) ||
        EVP_DigestInit_ex(l->sha, EVP_sha256(), NULL) != 1) {
        if (l) {
            if (l->wb)
                rocksdb_writebatch_destroy(l->wb);
            EVP_MD_CTX_free(l->sha);
            free(l);
        }
        set_err(errmsg, "snapshot load: out of memory%s", NULL);
        return NULL;
    }
    l->m = m;
    /* New readers wait from now on; the compactor finishes its chunk and
     * pauses, so it never works on half-loaded data. */
    cache_clear(&m->cur); /* the store is about to be replaced */
    pthread_mutex_lock(&m->mu);
    m->loading = true;
    while (m->compactor_busy)
        pthread_cond_wait(&m->compact_done_cv, &m->mu);
    pthread_mutex_unlock(&m->mu);

    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    int rc = 0;
    for (int i = 0; i < CF_COUNT && rc == 0; i++)
        rc = wipe_cf(m, i, wb);
    uint8_t zero[8] = {0};
    rocksdb_writebatch_put_cf(wb, m->cf[CF_META], META_INCOMPLETE, strlen(META_INCOMPLETE), "\1", 1);
    rocksdb_writebatch_put_cf(wb, m->cf[CF_META], META_APPLIED, strlen(META_APPLIED),
                              (const char *)zero, 8);
    if (rc == 0)
        rc = write_sync(m, wb);
    rocksdb_writebatch_destroy(wb);
    pthread_mutex_lock(&m->mu);
    if (rc == 0)
        mark_incomplete(m);
    pthread_mutex_unlock(&m->mu);
    if (rc != 0) {
        /* nothing was written: the old contents stay valid */
        load_finish(m);
        rocksdb_writebatch_destroy(l->wb);
        EVP_MD_CTX_free(l->sha);
        free(l);
        set_err(errmsg, "snapshot load: cannot clear the store%s", NULL);
        return NULL;
    }
    return l;
}

static int flush_batch(mvcc_load *l)
{
    if (rocksdb_writebatch_count(l->wb) == 0)
        return 0;
    char *err = NULL;
    rocksdb_write(l->m->db, l->m->wo, l->wb, &err);
    rocksdb_writebatch_clear(l->wb);
    l->wb_bytes = 0;
    if (err) {
        free(err);
        return -1;
    }
    return 0;
}

static int load_records(mvcc_load *l, const uint8_t *p, size_t n, char **errmsg)
{
    const uint8_t *end = p + n;
    while (p < end) {
        uint8_t cf = *p++;
        uint64_t kl, vl;
        if (varint_get(&p, end, &kl) || varint_get(&p, end, &vl) || kl > (uint64_t)(end - p) ||
            vl > (uint64_t)(end - p) - kl) {
            set_err(errmsg, "snapshot load: a record is cut short%s", NULL);
            return -1;
        }
        if (cf >= CF_COUNT) {
            set_err(errmsg, "snapshot load: unknown %s", cf_label);
            return -1;
        }
        const uint8_t *k = p, *v = p + kl;
        p += kl + vl;
        l->records++;
        if (cf == CF_META) {
            if (kl == strlen(META_INCOMPLETE) && memcmp(k, META_INCOMPLETE, kl) == 0)
                continue;
            uint8_t lens[8];
            le32(lens, (uint32_t)kl);
            le32(lens + 4, (uint32_t)vl);
            if (l->meta.len + 8 + kl + vl > META_HELD_MAX) {
                set_err(errmsg, "snapshot load: too many meta records%s", NULL);
                return -1;
            }
            if (buf_put(&l->meta, lens, 8) || buf_put(&l->meta, k, kl) || buf_put(&l->meta, v, vl)) {
                set_err(errmsg, "snapshot load: out of memory%s", NULL);
                return -1;
            }
            continue;
        }
        rocksdb_writebatch_put_cf(l->wb, l->m->cf[cf], (const char *)k, kl, (const char *)v, vl);
        l->wb_bytes += kl + vl + 16;
        if (l->wb_bytes >= LOAD_BATCH_BYTES && flush_batch(l)) {
            set_err(errmsg, "snapshot load: cannot write to the store%s", NULL);
            return -1;
        }
    }
    return 0;
}

/* Handles one whole block at p (BLOCK_HEAD + len + BLOCK_TRAILER bytes). */
static int load_block(mvcc_load *l, const uint8_t *p, size_t len, char **errmsg)
{
    size_t total = BLOCK_HEAD + len;
    if (crc32c_update(0, p, total) != rd32(p + total)) {
        set_err(errmsg, "snapshot load: checksum mismatch (corrupt stream)%s", NULL);
        return -1;
    }
    uint8_t type = p[0];
    const uint8_t *pl = p + BLOCK_HEAD;
    if (type == 'E') {
        if (!l->header_seen || len != 20) {
            set_err(errmsg, "snapshot load: misplaced end block%s", NULL);
            return -1;
        }
        l->want_records = rd64(pl);
        l->want_blocks = rd64(pl + 8);
        l->want_crc = rd32(pl + 16);
        l->end_seen = true;
    } else if (type == 'H') {
        if (l->header_seen || len < 4 || rd32(pl) != DUMP_FORMAT) {
            set_err(errmsg, "snapshot load: bad or unsupported header%s", NULL);
            return -1;
        }
        l->header_seen = true;
        l->blocks++;
    } else if (type == 'R') {
        if (!l->header_seen) {
            set_err(errmsg, "snapshot load: records before the header%s", NULL);
            return -1;
        }
        l->blocks++;
        if (load_records(l, pl, len, errmsg))
            return -1;
    } else {
        set_err(errmsg, "snapshot load: unknown block type%s", NULL);
        return -1;
    }
    if (!l->end_seen)
        l->stream_crc = crc32c_update(l->stream_crc, p, total + BLOCK_TRAILER);
    return 0;
}

int mvcc_load_feed(mvcc_load *l, const uint8_t *p, size_t n, char **errmsg)
{
    if (errmsg)
        *errmsg = NULL;
    if (l->failed) {
        set_err(errmsg, "snapshot load: the stream was already refused%s", NULL);
        return -1;
    }
    if (l->end_seen) {
        /* the tail: zero padding and a SHA-256, at most 511 + 32 bytes */
        if (l->tail.len + n > TAIL_ALIGN + SHA_LEN || buf_put(&l->tail, p, n)) {
            set_err(errmsg, "snapshot load: unexpected data after the end of the stream%s", NULL);
            l->failed = true;
            return -1;
        }
        return 0;
    }
    if (buf_put(&l->pending, p, n)) {
        set_err(errmsg, "snapshot load: out of memory%s", NULL);
        l->failed = true;
        return -1;
    }
    size_t pos = 0;
    int rc = 0;
    const uint8_t *b = l->pending.data;
    if (!l->magic_seen && l->pending.len >= DUMP_MAGIC_LEN) {
        if (memcmp(b, DUMP_MAGIC, DUMP_MAGIC_LEN) != 0) {
            set_err(errmsg, "snapshot load: not a Ballast snapshot%s", NULL);
            rc = -1;
        } else {
            l->magic_seen = true;
            l->stream_crc = crc32c_update(0, b, DUMP_MAGIC_LEN);
            pos = DUMP_MAGIC_LEN;
        }
    }
    while (rc == 0 && l->magic_seen && !l->end_seen && l->pending.len - pos >= BLOCK_HEAD) {
        uint32_t len = rd32(b + pos + 1);
        if (len > BLOCK_MAX) {
            set_err(errmsg, "snapshot load: bad block length (corrupt stream)%s", NULL);
            rc = -1;
            break;
        }
        size_t total = BLOCK_HEAD + (size_t)len + BLOCK_TRAILER;
        if (l->pending.len - pos < total)
            break;
        rc = load_block(l, b + pos, len, errmsg);
        pos += total;
    }
    if (rc == 0) {
        /* everything parsed so far is covered by the SHA-256 of the tail */
        if (EVP_DigestUpdate(l->sha, b, pos) != 1)
            rc = -1;
        l->consumed += pos;
        if (rc == 0 && l->end_seen && l->pending.len > pos) {
            size_t rest = l->pending.len - pos;
            if (rest > TAIL_ALIGN + SHA_LEN || buf_put(&l->tail, b + pos, rest)) {
                set_err(errmsg, "snapshot load: unexpected data after the end of the stream%s", NULL);
                rc = -1;
            }
            l->pending.len = pos; /* the tail is not part of the stream proper */
        }
    }
    if (rc != 0) {
        l->failed = true;
        return -1;
    }
    memmove(l->pending.data, l->pending.data + pos, l->pending.len - pos);
    l->pending.len -= pos;
    if (l->pending.cap > (1u << 20) && l->pending.len < (64u << 10)) {
        /* give back the room a big block needed */
        uint8_t *s = malloc(l->pending.len ? l->pending.len : 1);
        if (s) {
            memcpy(s, l->pending.data, l->pending.len);
            free(l->pending.data);
            l->pending.data = s;
            l->pending.cap = l->pending.len ? l->pending.len : 1;
        }
    }
    return 0;
}

static void load_free(mvcc_load *l)
{
    rocksdb_writebatch_destroy(l->wb);
    EVP_MD_CTX_free(l->sha);
    free(l->pending.data);
    free(l->meta.data);
    free(l->tail.data);
    free(l);
}

/* The optional tail: empty, or zeros then the SHA-256 of all before it,
 * with the whole stream a multiple of 512 plus 32 bytes long. */
static int check_tail(mvcc_load *l, uint64_t stream_len, char **errmsg)
{
    if (l->tail.len == 0)
        return 0;
    if (l->tail.len < SHA_LEN || (stream_len + l->tail.len) % TAIL_ALIGN != SHA_LEN) {
        set_err(errmsg, "snapshot load: bad trailing checksum%s", NULL);
        return -1;
    }
    size_t pad = l->tail.len - SHA_LEN;
    for (size_t i = 0; i < pad; i++)
        if (l->tail.data[i] != 0) {
            set_err(errmsg, "snapshot load: unexpected data after the end of the stream%s", NULL);
            return -1;
        }
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if ((pad && EVP_DigestUpdate(l->sha, l->tail.data, pad) != 1) ||
        EVP_DigestFinal_ex(l->sha, md, &mdlen) != 1 || mdlen != SHA_LEN ||
        memcmp(md, l->tail.data + pad, SHA_LEN) != 0) {
        set_err(errmsg, "snapshot load: SHA-256 mismatch (corrupt snapshot)%s", NULL);
        return -1;
    }
    return 0;
}

int mvcc_load_end(mvcc_load *l, char **errmsg)
{
    if (errmsg)
        *errmsg = NULL;
    mvcc *m = l->m;
    int rc = 0;
    if (l->failed) {
        set_err(errmsg, "snapshot load: the stream was refused%s", NULL);
        rc = -1;
    } else if (!l->end_seen || l->pending.len != 0) {
        set_err(errmsg, "snapshot load: the stream is incomplete (truncated)%s", NULL);
        rc = -1;
    } else if (l->records != l->want_records || l->blocks != l->want_blocks ||
               l->stream_crc != l->want_crc) {
        set_err(errmsg, "snapshot load: checksum mismatch (blocks missing or reordered)%s", NULL);
        rc = -1;
    }
    if (rc == 0) {
        /* bytes before the tail: pending is empty, so the digest has them all */
        rc = check_tail(l, l->consumed, errmsg);
    }
    if (rc == 0 && flush_batch(l)) {
        set_err(errmsg, "snapshot load: cannot write to the store%s", NULL);
        rc = -1;
    }
    if (rc == 0) {
        rocksdb_writebatch_clear(l->wb);
        for (size_t pos = 0; pos < l->meta.len;) {
            uint32_t kl = rd32(l->meta.data + pos), vl = rd32(l->meta.data + pos + 4);
            const char *k = (const char *)l->meta.data + pos + 8;
            rocksdb_writebatch_put_cf(l->wb, m->cf[CF_META], k, kl, k + kl, vl);
            pos += 8 + (size_t)kl + vl;
        }
        rocksdb_writebatch_delete_cf(l->wb, m->cf[CF_META], META_INCOMPLETE, strlen(META_INCOMPLETE));
        if (write_sync(m, l->wb)) {
            set_err(errmsg, "snapshot load: cannot write to the store%s", NULL);
            rc = -1;
        }
    }
    pthread_mutex_lock(&m->mu);
    if (rc == 0 && meta_load(m) != 0) {
        set_err(errmsg, "snapshot load: the loaded meta records are not valid%s", NULL);
        rc = -1;
    }
    if (rc != 0)
        mark_incomplete(m);
    pthread_mutex_unlock(&m->mu);
    load_finish(m);
    load_free(l);
    return rc;
}

void mvcc_load_abort(mvcc_load *l)
{
    mvcc *m = l->m;
    pthread_mutex_lock(&m->mu);
    mark_incomplete(m);
    pthread_mutex_unlock(&m->mu);
    load_finish(m);
    load_free(l);
}
