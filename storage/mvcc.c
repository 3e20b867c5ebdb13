/*
 * mvcc: etcd's MVCC key/value model on RocksDB.
 *
 * Layout (one RocksDB database, column families):
 *
 *   "rev"      8-byte BE main revision + 8-byte BE sub revision
 *                -> 1 flag byte (0 put, 1 tombstone) + encoded mvccpb.KeyValue
 *              (a tombstone's KeyValue holds only the key). Every change in
 *              revision order: history for past reads and watch catch-up.
 *   "index"    escaped user key (0x00 -> 00 FF) + 00 01 + BE(~main) + BE(~sub)
 *                -> the same value as in "rev" (flag byte + KeyValue).
 *              A key's revisions sort newest first, so "the newest revision
 *              <= R" is one seek, and the live record of a key is its first
 *              entry (unless that is a tombstone): reads at any revision and
 *              puts (create revision, version) need only this family.
 *   "current"  unused and always empty. Ballast before 2026-12-02 kept the
 *              live records there (user key -> KeyValue), which cost every
 *              Put a second random memtable insert; a store that still has
 *              entries in it is refused at open.
 *   "lease"    8-byte BE lease ID -> 8-byte BE granted TTL (seconds).
 *   "lease_keys" 8-byte BE lease ID + user key -> empty: the keys attached
 *              to each lease, so revoking needs no per-key memory.
 *   "meta"     applied_index, revision, compact_revision (8-byte BE each),
 *              written in the same write batch as the entry's data;
 *              physical_compaction (progress of the background removal);
 *              alarm/<type><member> (active alarms); load_incomplete
 *              (only while a snapshot load is unfinished).
 *
 * Nothing grows in memory with the number of keys or revisions.
 *
 * Writes go through one WriteBatchWithIndex per raft entry, so the ops of an
 * entry read each other's writes; its "rev" records, which nothing reads
 * within an entry, stay out of the batch's index and join its contents for
 * the entry's one write (mvcc_apply.c, entry_batch). The write goes to the
 * WAL without fsync (the raft log is the durable record; mvcc_sync() syncs).
 * Readers take a RocksDB snapshot together with the revision numbers under
 * `mu`, which apply holds while it writes a batch: a read sees a whole entry
 * or none of it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mvcc_internal.h"

static const char *const cf_names[CF_COUNT] = {"default", "meta", "rev", "index", "current",
                                                "lease", "lease_keys"};

void view_end(mvcc_view *v)
{
    if (v->snap)
        rocksdb_release_snapshot(v->m->db, v->snap);
    v->snap = NULL;
}

int view_begin(mvcc *m, mvcc_view *v)
{
    memset(v, 0, sizeof(*v));
    v->m = m;
    pthread_mutex_lock(&m->mu);
    while (m->loading)
        pthread_cond_wait(&m->load_cv, &m->mu);
    v->snap = rocksdb_create_snapshot(m->db);
    v->rev = m->rev;
    v->compact_rev = m->compact_rev;
    pthread_mutex_unlock(&m->mu);
    return v->snap ? 0 : -1;
}

static char *errdup(const char *what, const char *detail)
{
    size_t n = strlen(what) + (detail ? strlen(detail) : 0) + 3;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
    return s;
}

static int meta_get(mvcc *m, const char *name, uint8_t *out, size_t want, bool *found)
{
    char *err = NULL;
    size_t n;
    char *v = rocksdb_get_cf(m->db, m->ro_plain, m->cf[CF_META], name, strlen(name), &n, &err);
    if (err) {
        free(err);
        return -1;
    }
    *found = v != NULL;
    if (v) {
        if (n != want) {
            free(v);
            return -1;
        }
        memcpy(out, v, n);
        free(v);
    }
    return 0;
}

int meta_load(mvcc *m)
{
    uint8_t b[8 + REVKEY_LEN];
    bool found;
    m->applied_index = 0;
    m->rev = 1; /* an empty etcd store is at revision 1 */
    m->compact_rev = -1;
    m->phys_done = -1;
    revkey_make(m->phys_pos, 0, 0);
    m->n_alarms = 0;
    if (meta_get(m, META_INCOMPLETE, b, 1, &found))
        return -1;
    m->incomplete = found;
    if (found)
        return 0; /* nothing else in it is valid */
    if (meta_get(m, META_APPLIED, b, 8, &found))
        return -1;
    if (found)
        m->applied_index = be64_decode(b);
    if (meta_get(m, META_REV, b, 8, &found))
        return -1;
    if (found)
        m->rev = (int64_t)be64_decode(b);
    if (meta_get(m, META_COMPACT, b, 8, &found))
        return -1;
    if (found)
        m->compact_rev = (int64_t)be64_decode(b);
    if (meta_get(m, META_PHYS, b, sizeof(b), &found))
        return -1;
    if (found) {
        m->phys_done = (int64_t)be64_decode(b);
        memcpy(m->phys_pos, b + 8, REVKEY_LEN);
    }
    /* the member list may have changed (a load): readers of it look again */
    if (member_load_cluster_id(m))
        return -1;
    __atomic_add_fetch(&m->members_gen, 1, __ATOMIC_RELEASE);
    return alarms_load(m);
}

/* The layout before the live records moved into "index" kept them in
 * "current": a store with anything there cannot be read by this code. */
static bool old_layout(mvcc *m)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(m->db, m->ro_plain, m->cf[CF_CURRENT]);
    rocksdb_iter_seek_to_first(it);
    bool found = rocksdb_iter_valid(it);
    rocksdb_iter_destroy(it);
    return found;
}

/* "index" keys end in a fixed-size revision; what comes before it (the
 * escaped user key and its terminator) is the prefix. A lookup of one key's
 * live record is a seek within its prefix, and the prefix blooms (memtable
 * and SST) answer it for a key that was never written without walking the
 * memtable or reading a block. Every other "index" iterator must set
 * total_order_seek (view_ro and ro_plain do). The name is stored in the
 * SST files: changing the transform needs a new name. */
static char *index_prefix(void *state, const char *key, size_t n, size_t *out)
{
    (void)state;
    *out = n - REVKEY_LEN;
    return (char *)key;
}

static unsigned char index_prefix_domain(void *state, const char *key, size_t n)
{
    (void)state;
    (void)key;
    return n >= 2 + REVKEY_LEN;
}

static unsigned char index_prefix_range(void *state, const char *key, size_t n)
{
    (void)state;
    (void)key;
    (void)n;
    return 0;
}

static void index_prefix_free(void *state)
{
    (void)state;
}

static const char *index_prefix_name(void *state)
{
    (void)state;
    return "ballast.index-key.v1";
}

static void tune_cf(mvcc *m, int i)
{
    rocksdb_options_t *o = rocksdb_options_create();
    rocksdb_block_based_table_options_t *t = rocksdb_block_based_options_create();
    rocksdb_block_based_options_set_block_cache(t, m->cache);
    rocksdb_block_based_options_set_block_size(t, 16 * 1024);
    rocksdb_block_based_options_set_cache_index_and_filter_blocks(t, 1);
    rocksdb_block_based_options_set_pin_l0_filter_and_index_blocks_in_cache(t, 1);
    if (i == CF_REV) /* point lookups */
        rocksdb_block_based_options_set_filter_policy(t, rocksdb_filterpolicy_create_bloom_full(10));
    if (i == CF_INDEX) { /* one key's records, by prefix */
        rocksdb_options_set_prefix_extractor(
            o, rocksdb_slicetransform_create(NULL, index_prefix_free, index_prefix, index_prefix_domain,
                                             index_prefix_range, index_prefix_name));
        rocksdb_options_set_memtable_prefix_bloom_size_ratio(o, 0.02);
        rocksdb_options_set_write_buffer_size(o, MVCC_INDEX_WRITE_BUFFER_BYTES);
        rocksdb_block_based_options_set_filter_policy(t, rocksdb_filterpolicy_create_bloom_full(10));
        rocksdb_block_based_options_set_whole_key_filtering(t, 0);
    }
    rocksdb_options_set_block_based_table_factory(o, t);
    rocksdb_options_set_compression(o, rocksdb_lz4_compression);
    rocksdb_options_set_level_compaction_dynamic_level_bytes(o, 1);
    m->cf_opts[i] = o;
    m->table_opts[i] = t;
}

int mvcc_open(const char *dir, mvcc **out, char **errmsg)
{
    *out = NULL;
    if (errmsg)
        *errmsg = NULL;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        if (errmsg)
            *errmsg = errdup("mvcc: cannot create data directory", strerror(errno));
        return -1;
    }
    mvcc *m = calloc(1, sizeof(*m));
    if (!m) {
        if (errmsg)
            *errmsg = errdup("mvcc: out of memory", NULL);
        return -1;
    }
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->compact_cv, NULL);
    pthread_cond_init(&m->compact_done_cv, NULL);
    pthread_cond_init(&m->load_cv, NULL);
    m->cache = rocksdb_cache_create_lru(64 << 20);
    m->db_opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(m->db_opts, 1);
    rocksdb_options_set_create_missing_column_families(m->db_opts, 1);
    rocksdb_options_set_max_background_jobs(m->db_opts, 4);
    rocksdb_options_set_bytes_per_sync(m->db_opts, 1 << 20);
    /* the WAL goes to the disk a MiB at a time, not in one burst at the
     * next sync (a raft snapshot), where raft's log writes queue behind it */
    rocksdb_options_set_wal_bytes_per_sync(m->db_opts, 1 << 20);
    rocksdb_options_set_max_open_files(m->db_opts, 1024);
    /* Bound memtable memory across all families, and keep the WAL from
     * growing when one family is written rarely (its memtable pins logs). */
    rocksdb_options_set_db_write_buffer_size(m->db_opts, MVCC_WRITE_BUFFER_BYTES);
    rocksdb_options_set_max_total_wal_size(m->db_opts, 256 << 20);
    /* RocksDB's info LOG sits beside the data: once a write to it fails
     * (a full disk), Debian's build (assertions on) aborts on the next log
     * line, before the failed store write can be reported. Only the header
     * written at open is kept. */
    rocksdb_options_set_info_log_level(m->db_opts, 5 /* HEADER_LEVEL */);
    for (int i = 0; i < CF_COUNT; i++)
        tune_cf(m, i);
    m->wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(m->wo, 0);
    m->ro_plain = rocksdb_readoptions_create();
    rocksdb_readoptions_set_total_order_seek(m->ro_plain, 1);
    m->ro_prefix = rocksdb_readoptions_create();
    rocksdb_readoptions_set_prefix_same_as_start(m->ro_prefix, 1);
    m->wb = rocksdb_writebatch_wi_create(1 << 16, 1);
    if (cache_init(&m->cur) != 0)
        cache_free(&m->cur); /* no cache: every read goes to the store */

    char *err = NULL;
    m->db = rocksdb_open_column_families(m->db_opts, dir, CF_COUNT, cf_names,
                                         (const rocksdb_options_t *const *)m->cf_opts,
                                         m->cf, &err);
    if (err) {
        if (errmsg)
            *errmsg = errdup("mvcc: cannot open RocksDB", err);
        free(err);
        m->db = NULL;
        mvcc_close(m);
        return -1;
    }

    if (old_layout(m)) {
        if (errmsg)
            *errmsg = errdup("mvcc: the data directory was written by an older Ballast store "
                             "layout (live records in the \"current\" column family); restore it "
                             "from a snapshot (etcdctl snapshot save/restore) or start a fresh "
                             "member and let it catch up from the cluster", NULL);
        mvcc_close(m);
        return -1;
    }
    if (meta_load(m))
        goto bad_meta;
    if (compactor_start(m)) {
        if (errmsg)
            *errmsg = errdup("mvcc: cannot start the compaction thread", NULL);
        mvcc_close(m);
        return -1;
    }
    *out = m;
    return 0;
bad_meta:
    if (errmsg)
        *errmsg = errdup("mvcc: cannot read the meta records (corrupt store?)", NULL);
    mvcc_close(m);
    return -1;
}

void mvcc_close(mvcc *m)
{
    if (!m)
        return;
    compactor_stop(m);
    if (m->db) {
        for (int i = 0; i < CF_COUNT; i++)
            if (m->cf[i])
                rocksdb_column_family_handle_destroy(m->cf[i]);
        rocksdb_close(m->db);
    }
    if (m->wb)
        rocksdb_writebatch_wi_destroy(m->wb);
    cache_free(&m->cur);
    if (m->wo)
        rocksdb_writeoptions_destroy(m->wo);
    if (m->ro_plain)
        rocksdb_readoptions_destroy(m->ro_plain);
    if (m->ro_prefix)
        rocksdb_readoptions_destroy(m->ro_prefix);
    for (int i = 0; i < CF_COUNT; i++) {
        if (m->cf_opts[i])
            rocksdb_options_destroy(m->cf_opts[i]);
        if (m->table_opts[i])
            rocksdb_block_based_options_destroy(m->table_opts[i]);
    }
    if (m->db_opts)
        rocksdb_options_destroy(m->db_opts);
    if (m->cache)
        rocksdb_cache_destroy(m->cache);
    rows_free(&m->rows);
    free(m->scratch.data);
    free(m->scratch2.data);
    free(m->rev_recs.data);
    free(m->path);
    free(m->lease_changes);
    free(m->ev_arena.data);
    free(m->ev_recs);
    free(m->ev_out);
    free(m->alarms);
    free(m->alarms_work);
    pthread_cond_destroy(&m->load_cv);
    pthread_cond_destroy(&m->compact_cv);
    pthread_cond_destroy(&m->compact_done_cv);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

uint64_t mvcc_applied_index(mvcc *m)
{
    pthread_mutex_lock(&m->mu);
    uint64_t v = m->applied_index;
    pthread_mutex_unlock(&m->mu);
    return v;
}

int64_t mvcc_current_revision(mvcc *m)
{
    pthread_mutex_lock(&m->mu);
    int64_t v = m->rev;
    pthread_mutex_unlock(&m->mu);
    return v;
}

int64_t mvcc_compact_revision(mvcc *m)
{
    pthread_mutex_lock(&m->mu);
    int64_t v = m->compact_rev;
    pthread_mutex_unlock(&m->mu);
    return v;
}

void mvcc_set_lease_hook(mvcc *m, mvcc_lease_fn fn, void *arg)
{
    m->lease_fn = fn;
    m->lease_fn_arg = arg;
}

void mvcc_set_event_skip(mvcc *m, mvcc_event_want_fn want, mvcc_event_skip_fn skip)
{
    pthread_mutex_lock(&m->mu);
    m->event_want = want && skip ? want : NULL;
    m->event_skip = want && skip ? skip : NULL;
    pthread_mutex_unlock(&m->mu);
}

int64_t mvcc_set_event_hook(mvcc *m, mvcc_event_fn fn, void *arg)
{
    pthread_mutex_lock(&m->mu);
    m->event_arg = arg;
    __atomic_store_n(&m->event_fn, fn, __ATOMIC_RELEASE);
    int64_t rev = m->rev;
    pthread_mutex_unlock(&m->mu);
    return rev;
}

int mvcc_range(mvcc *m, const Etcdserverpb__RangeRequest *req, const mvcc_header *h,
               mvcc_buf *out, mvcc_result *result)
{
    mvcc_view v;
    range_rows *rows = reader_rows(NULL, NULL);
    size_t start = out->len;
    int rc = rows ? view_begin(m, &v) : -1;
    if (rc == 0)
        rc = range_request(&v, req, h, true, rows, out, result);
    if (rows) {
        view_end(&v);
        reader_rows_done(rows);
    }
    if (rc) {
        out->len = start;
        result_error(result, MVCC_STATUS_INTERNAL, "etcdserver: storage read failed");
    }
    return rc;
}

int64_t cf_prop(mvcc *m, int cf, const char *name)
{
    char *s = rocksdb_property_value_cf(m->db, m->cf[cf], name);
    int64_t v = s ? strtoll(s, NULL, 10) : 0;
    free(s);
    return v;
}

void mvcc_db_size(mvcc *m, int64_t *size, int64_t *size_in_use)
{
    int64_t total = 0, live = 0;
    for (int i = 0; i < CF_COUNT; i++) {
        int64_t mem = cf_prop(m, i, "rocksdb.cur-size-all-mem-tables");
        total += cf_prop(m, i, "rocksdb.total-sst-files-size") + mem;
        live += cf_prop(m, i, "rocksdb.estimate-live-data-size") + mem;
    }
    if (live > total)
        live = total;
    *size = total;
    *size_in_use = live;
}

int mvcc_sync(mvcc *m)
{
    char *err = NULL;
    rocksdb_flush_wal(m->db, 1, &err);
    if (err) {
        free(err);
        return -1;
    }
    return 0;
}

int mvcc_defragment(mvcc *m)
{
    rocksdb_compactoptions_t *o = rocksdb_compactoptions_create();
    /* rewrite the bottommost level too: that is where removed revisions
     * and range deletions are finally dropped */
    rocksdb_compactoptions_set_bottommost_level_compaction(o, 2 /* kForce */);
    rocksdb_compactoptions_set_exclusive_manual_compaction(o, 0);
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(fo, 1);
    int rc = 0;
    for (int i = 0; i < CF_COUNT && rc == 0; i++) {
        char *err = NULL;
        rocksdb_flush_cf(m->db, fo, m->cf[i], &err);
        if (!err) {
            rocksdb_compact_range_cf_opt(m->db, m->cf[i], o, NULL, 0, NULL, 0);
        } else {
            free(err);
            rc = -1;
        }
        if (__atomic_load_n(&m->defrag_cancelled, __ATOMIC_ACQUIRE))
            rc = -1;
    }
    rocksdb_compactoptions_destroy(o);
    rocksdb_flushoptions_destroy(fo);
    return rc;
}

void mvcc_defragment_cancel(mvcc *m)
{
    __atomic_store_n(&m->defrag_cancelled, true, __ATOMIC_RELEASE);
    rocksdb_disable_manual_compaction(m->db);
}

int mvcc_incomplete(mvcc *m)
{
    pthread_mutex_lock(&m->mu);
    int v = m->incomplete;
    pthread_mutex_unlock(&m->mu);
    return v;
}

int mvcc_reset_for_new_cluster(mvcc *m)
{
    uint8_t b[8];
    be64_encode(b, 0);
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    rocksdb_writebatch_put_cf(wb, m->cf[CF_META], META_APPLIED, strlen(META_APPLIED), (const char *)b, 8);
    if (member_forget_all(m, wb) != 0) {
        rocksdb_writebatch_destroy(wb);
        return -1;
    }
    rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(wo, 1);
    char *err = NULL;
    rocksdb_write(m->db, wo, wb, &err);
    rocksdb_writeoptions_destroy(wo);
    rocksdb_writebatch_destroy(wb);
    if (err) {
        free(err);
        return -1;
    }
    pthread_mutex_lock(&m->mu);
    m->applied_index = 0;
    pthread_mutex_unlock(&m->mu);
    __atomic_store_n(&m->cluster_id, 0, __ATOMIC_RELEASE);
    __atomic_add_fetch(&m->members_gen, 1, __ATOMIC_RELEASE);
    return 0;
}
