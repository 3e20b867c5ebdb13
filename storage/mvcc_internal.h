/*
 * Internals shared by the mvcc_*.c files; not part of the module's interface.
 */
#ifndef BALLAST_STORAGE_MVCC_INTERNAL_H
#define BALLAST_STORAGE_MVCC_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <rocksdb/c.h>

#include "kv.pb-c.h"
#include "mvcc.h"

/* etcd's error texts (rpctypes) with their gRPC codes. */
#define ERR_EMPTY_KEY "etcdserver: key is not provided"
#define ERR_KEY_NOT_FOUND "etcdserver: key not found"
#define ERR_VALUE_PROVIDED "etcdserver: value is provided"
#define ERR_LEASE_PROVIDED "etcdserver: lease is provided"
#define ERR_TOO_MANY_OPS "etcdserver: too many operations in txn request"
#define ERR_DUPLICATE_KEY "etcdserver: duplicate key given in txn request"
#define ERR_COMPACTED "etcdserver: mvcc: required revision has been compacted"
#define ERR_FUTURE_REV "etcdserver: mvcc: required revision is a future revision"
#define ERR_LEASE_NOT_FOUND "etcdserver: requested lease not found"
#define ERR_NO_SPACE "etcdserver: mvcc: database space exceeded"
#define ERR_CORRUPT "etcdserver: corrupt cluster"
#define ERR_INCOMPLETE "etcdserver: store is incomplete (an interrupted snapshot load)"

/* Flag byte in front of every "rev" value and as the whole "index" value. */
#define REC_PUT 0
#define REC_TOMBSTONE 1

#define REVKEY_LEN 16

/* A KeyValue decoded without copying: the pointers refer into the encoded
 * bytes it was parsed from. */
typedef struct kvv {
    const uint8_t *key;
    size_t key_len;
    int64_t create_rev;
    int64_t mod_rev;
    int64_t version;
    const uint8_t *value;
    size_t value_len;
    int64_t lease;
} kvv;

/* ---- mvcc_codec.c: buffers, protobuf wire encoding, key encodings ---- */

int buf_reserve(mvcc_buf *b, size_t extra);
int buf_put(mvcc_buf *b, const void *p, size_t n);
/* Frees the buffer's memory (leaving it empty) when it holds more than
 * max_cap bytes: a huge entry's scratch is not kept. */
void buf_trim(mvcc_buf *b, size_t max_cap);
int pb_varint(mvcc_buf *b, uint64_t v);
int pb_tag(mvcc_buf *b, uint32_t field, uint32_t wire_type);
/* Fields as proto3 writes them: zero / empty values are left out. */
int pb_uint_field(mvcc_buf *b, uint32_t field, uint64_t v);
int pb_bool_field(mvcc_buf *b, uint32_t field, bool v);
int pb_bytes_field(mvcc_buf *b, uint32_t field, const void *p, size_t n);
/* A length-delimited submessage: begin returns a mark (or (size_t)-1 when
 * out of memory); end fills in the length once the content is written. */
size_t pb_msg_begin(mvcc_buf *b, uint32_t field);
int pb_msg_end(mvcc_buf *b, size_t mark);
/* A submessage that is always present, even when empty. */
int pb_header(mvcc_buf *b, uint32_t field, const mvcc_header *h, int64_t rev);

int kv_parse(const uint8_t *p, size_t n, kvv *out);
int kv_encode(mvcc_buf *b, const kvv *kv, bool keys_only);
/* The same KeyValue as a length-delimited field `field`. */
int kv_field(mvcc_buf *b, uint32_t field, const kvv *kv, bool keys_only);

void revkey_make(uint8_t out[REVKEY_LEN], int64_t main, int64_t sub);
void revkey_parse(const uint8_t *p, int64_t *main, int64_t *sub);

/* Index keys: escaped user key, terminator, then the inverted revision so
 * that a key's newest revision sorts first. */
int idxkey_prefix(mvcc_buf *b, const uint8_t *key, size_t n);      /* escaped key only */
int idxkey_key_start(mvcc_buf *b, const uint8_t *key, size_t n);   /* + terminator */
int idxkey_key_after(mvcc_buf *b, const uint8_t *key, size_t n);   /* past all of key */
int idxkey_make(mvcc_buf *b, const uint8_t *key, size_t n, int64_t main, int64_t sub);
/* Splits an index key; the user key is unescaped into `key_out` (reset). */
int idxkey_parse(const uint8_t *p, size_t n, mvcc_buf *key_out, int64_t *main, int64_t *sub);

/* ---- the store ---- */

/* Result rows of a range: the encoded KeyValues live in `arena`. */
typedef struct range_rows {
    mvcc_buf arena;
    size_t *off;
    size_t *len;
    kvv *kvs;
    size_t n, cap;
    int64_t count;
} range_rows;

enum { CF_DEFAULT, CF_META, CF_REV, CF_INDEX, CF_CURRENT, CF_LEASE, CF_LEASE_KEYS, CF_COUNT };

/* RocksDB's integer property `name` of family `cf` (0 if it has none). */
int64_t cf_prop(mvcc *m, int cf, const char *name);

/* The "index" family's memtable (RocksDB's default is 64 MiB). Its inserts
 * land at random places in the skip list, and each level of the search is
 * a cache miss once the list outgrows the CPU's caches; a quarter of the
 * size keeps it mostly cached, for more flushes and compactions. Measured
 * (-9% server CPU per Put at 100k keys, less over 1M) in
 * docs/implementation-notes.md, "Session 17". */
#define MVCC_INDEX_WRITE_BUFFER_BYTES ((size_t)16 << 20)

/* ---- mvcc_cache.c: the apply thread's cache of live records ----
 *
 * Every Put (and every txn compare) reads the key's live record before
 * writing it. From RocksDB that is an "index" seek through memtables and
 * SST files. The cache keeps recent records (and absences) in a two-way
 * set-associative table (the least recently used of a set leaves), bounded
 * in bytes, used and changed only by the apply thread. An entry's writes are noted as they are
 * made (a txn's rollback drops its notes) and reach the table only once the
 * entry's batch is committed; a key written earlier in the same entry is
 * read through the batch instead (a 4096-bit filter of written keys says
 * which). A store load empties it. */
struct cur_slot {
    uint64_t hash;
    uint8_t *data; /* key bytes, then value bytes; NULL: empty slot */
    uint32_t klen, vlen;
    bool present;  /* false: the key is known to be absent */
};
struct cur_note {
    uint64_t hash;
    size_t off; /* in notes_buf: key bytes, then value bytes */
    uint32_t klen, vlen;
    bool present;
};
typedef struct cur_cache {
    struct cur_slot *slots;
    size_t mask;
    size_t bytes, budget;
    uint64_t written[64]; /* keys written by the entry being applied */
    struct cur_note *notes;
    size_t n_notes, cap_notes;
    mvcc_buf notes_buf;
    size_t save_notes, save_len; /* at the txn's save point */
} cur_cache;

int cache_init(cur_cache *c);
void cache_free(cur_cache *c);
void cache_clear(cur_cache *c);
/* Start of an entry: no notes, no written keys. */
void cache_begin(cur_cache *c);
/* The key's record for an apply-time read: 1 answered (*val is a malloc'd
 * copy, or NULL when absent), 0 not known here (read the store, then call
 * cache_fill), 2 maybe written by this entry (read through the batch), -1
 * out of memory. */
int cache_read(cur_cache *c, const void *key, size_t klen, char **val, size_t *vlen);
void cache_fill(cur_cache *c, const void *key, size_t klen, const char *val, size_t vlen);
/* A write of the entry being applied (val NULL: a delete). */
int cache_note(cur_cache *c, const void *key, size_t klen, const void *val, size_t vlen);
void cache_save_point(cur_cache *c);
void cache_rollback(cur_cache *c);
/* The entry's batch is committed: its writes go into the table. */
void cache_commit(cur_cache *c);

struct mvcc {
    rocksdb_t *db;
    rocksdb_column_family_handle_t *cf[CF_COUNT];
    rocksdb_options_t *db_opts;
    rocksdb_options_t *cf_opts[CF_COUNT];
    rocksdb_block_based_table_options_t *table_opts[CF_COUNT];
    rocksdb_cache_t *cache;
    rocksdb_writeoptions_t *wo;
    rocksdb_readoptions_t *ro_plain;
    rocksdb_readoptions_t *ro_prefix; /* one key's "index" records (index_prefix) */

    /* Committed state, read by any thread under `mu`. A reader takes a
     * RocksDB snapshot while holding `mu`, so the numbers and the data it
     * sees belong to the same applied entry. */
    pthread_mutex_t mu;
    uint64_t applied_index;
    int64_t rev;
    int64_t compact_rev;

    /* Apply-thread state (the lease lookup too). */
    rocksdb_writebatch_wi_t *wb;
    char write_error[256];      /* RocksDB's message for the last failed batch */
    mvcc_buf scratch;           /* keys and values built while applying */
    mvcc_buf scratch2;
    /* The entry's "rev" records (revision key, 4-byte length, value), kept
     * out of the batch's index: nothing reads "rev" within an entry, and
     * indexing them cost more than the copy. Added to the batch's
     * contents when it is written. */
    mvcc_buf rev_recs;
    range_rows rows;            /* rows read while applying */
    cur_cache cur;              /* see mvcc_cache.c */
    rocksdb_iterator_t *entry_it; /* see mvcc_view.entry_it */
    bool *path;                 /* compare outcomes of the txn being applied */
    size_t path_cap;
    /* Leases granted (ttl > 0) or revoked (ttl 0) by the entry being
     * applied, handed to the lease hook once the batch is committed. */
    mvcc_lease_fn lease_fn;
    void *lease_fn_arg;
    struct lease_change *lease_changes;
    size_t lease_n, lease_cap;

    /* Watch events of the entry being applied, collected only while an
     * event hook is set; handed to the hook once the batch is committed. */
    mvcc_event_fn event_fn;     /* set under mu */
    void *event_arg;
    mvcc_event_want_fn event_want; /* set before event_fn */
    mvcc_event_skip_fn event_skip;
    bool ev_collect;            /* a hook was set when this entry began */
    mvcc_buf ev_arena;          /* keys, KeyValues and prev KeyValues */
    struct ev_rec *ev_recs;     /* offsets into ev_arena (it may move) */
    size_t ev_n, ev_cap;
    mvcc_event *ev_out;
    size_t ev_out_cap;

    /* Physical compaction (background thread). */
    pthread_t compactor;
    bool compactor_started;
    bool stopping;
    pthread_cond_t compact_cv;      /* work to do / stop */
    pthread_cond_t compact_done_cv; /* progress made */
    int64_t phys_done;              /* removal finished through this rev */
    uint8_t phys_pos[REVKEY_LEN];   /* resume position in "rev" */
    void (*compact_cb)(void *arg, int64_t rev);
    void *compact_cb_arg;

    /* The member list (mvcc_member.c): the cluster id once recorded, and a
     * counter bumped by every entry that changed the list. */
    uint64_t cluster_id;
    uint64_t members_gen;
    uint64_t pending_cluster_id; /* apply thread: set by this entry */
    bool members_touched;        /* apply thread: this entry changed members */
    bool compactor_busy;            /* a chunk runs outside mu */
    bool defrag_cancelled;

    /* Snapshot load (mvcc_snapshot.c). While `loading`, new views wait on
     * load_cv and the compactor pauses; `incomplete` marks a store whose
     * load was interrupted (its contents are not valid). Under mu. */
    bool loading;
    bool incomplete;
    pthread_cond_t load_cv;

    /* Active alarms, ordered by (type, member): the committed list under
     * mu, and the apply thread's working copy for the entry being applied
     * (valid while alarms_dirty). */
    mvcc_alarm *alarms;
    size_t n_alarms, alarms_cap;
    mvcc_alarm *alarms_work;
    size_t n_alarms_work, alarms_work_cap;
    bool alarms_dirty;
};

/* One collected event; offsets into mvcc.ev_arena. */
struct ev_rec {
    int type;
    int64_t rev, sub, create_rev;
    size_t key_off, key_len, kv_off, kv_len, prev_off, prev_len;
    bool has_prev;
};

/* A consistent view to read from: either a snapshot of committed data
 * (wb == NULL) or, during apply, the committed data plus the entry's own
 * uncommitted writes. */
typedef struct mvcc_view {
    mvcc *m;
    const rocksdb_snapshot_t *snap;
    rocksdb_writebatch_wi_t *wb;
    int64_t rev;          /* what revision 0 means: the view's current revision */
    int64_t compact_rev;
    /* Set by mvcc_apply only: live-record lookups that miss the cache seek
     * the entry's one "index" iterator on the store, m->entry_it (see
     * view_current); mvcc_apply destroys it before the entry's write. */
    bool entry_it;
} mvcc_view;

/* ---- mvcc_lease.c: the "lease" and "lease_keys" column families ---- */

struct lease_change {
    int64_t id, ttl;
};

#define ERR_LEASE_EXISTS "etcdserver: lease already exists"
#define ERR_LEASE_TTL_TOO_LARGE "etcdserver: too large lease TTL"

/* Through the view (during apply: the entry's own writes included):
 * 1 and *ttl when the lease exists, 0 when not, -1 on a store error. */
int lease_get(mvcc_view *v, int64_t id, int64_t *ttl);
/* Writes into the apply batch m->wb. */
void lease_put(mvcc *m, int64_t id, int64_t ttl);
void lease_del(mvcc *m, int64_t id);
/* Moves `key` from lease `from` to lease `to` (0: none). */
int lease_move(mvcc *m, int64_t from, int64_t to, const uint8_t *key, size_t key_len);
/* Appends the keys attached to `id` to `keys` as (u32 length, bytes)
 * records, in key order. Returns 0 or -1. */
int lease_collect_keys(mvcc_view *v, int64_t id, mvcc_buf *keys);
/* Records a grant (ttl > 0) or revoke (0) for the lease hook. */
int lease_changed(mvcc *m, int64_t id, int64_t ttl);

/* ---- mvcc.c ---- */

/* A snapshot view of the committed state; end it with view_end. */
int view_begin(mvcc *m, mvcc_view *v);
void view_end(mvcc_view *v);
/* Meta records, big-endian. */
#define META_APPLIED "applied_index"
#define META_REV "revision"
#define META_COMPACT "compact_revision"
#define META_PHYS "physical_compaction"
/* Present while a snapshot load is unfinished (mvcc_snapshot.c). */
#define META_INCOMPLETE "load_incomplete"
/* "alarm/" + BE32 alarm type + BE64 member ID -> empty. */
#define META_ALARM_PREFIX "alarm/"
#define META_ALARM_KEY_LEN (6 + 4 + 8)
void be64_encode(uint8_t *out, uint64_t v);
uint64_t be64_decode(const uint8_t *p);

/* ---- mvcc_member.c ---- */

/* Applies a MemberOp through the apply view: 0, 1 with a client error in
 * *res, -1 on a store error. */
int member_apply(mvcc *m, mvcc_view *v, const Ballastpb__MemberOp *op, mvcc_result *res);
/* Adds to wb the deletion of every member record and of the cluster id. */
int member_forget_all(mvcc *m, rocksdb_writebatch_t *wb);
/* Reads the recorded cluster id into m->cluster_id (at open). */
int member_load_cluster_id(mvcc *m);
/* Reads the numbers kept in "meta" (applied index, revisions, physical
 * compaction progress, alarms, the incomplete marker) into *m; at open
 * and after a load. Called with no reader or apply running. */
int meta_load(mvcc *m);

/* ---- mvcc_alarm.c ---- */

/* Loads the alarm list from "meta" into m->alarms. */
int alarms_load(mvcc *m);
/* During apply: whether an alarm of `type` is active (the entry's own
 * changes included). */
bool alarm_work_active(mvcc *m, int type);
/* During apply: activates (on) or deactivates an alarm, writing "meta" in
 * m->wb; *changed says whether the list changed. Returns 0 or -1. */
int alarm_work_set(mvcc *m, uint64_t member, int type, bool on, bool *changed);
/* After the entry's batch is committed (called under mu). */
void alarms_commit(mvcc *m);
/* Appends AlarmMember fields (`field` of the enclosing message) for the
 * alarms of `type` (0: all) to out. */
int alarms_encode(const mvcc_alarm *a, size_t n, int type, uint32_t field, mvcc_buf *out);

/* ---- mvcc_hash.c ---- */

uint32_t crc32c_update(uint32_t crc, const void *p, size_t n);

/* ---- mvcc_compact.c ---- */

int compactor_start(mvcc *m);
void compactor_stop(mvcc *m);
/* Called after an entry that raised the compact revision is committed. */
void compactor_kick(mvcc *m);

/* ---- mvcc_read.c ---- */

void rows_reset(range_rows *r);
/* A read option set for the view (NULL when out of memory): destroy it
 * after use. An iterator over one column family of the view. */
rocksdb_readoptions_t *view_ro(mvcc_view *v);
rocksdb_iterator_t *view_iter(mvcc_view *v, int cf, rocksdb_readoptions_t *ro);
/* True when the iterator stopped on an error rather than at its end. */
bool iter_failed(rocksdb_iterator_t *it);
/* Point read through the view; *val is malloc'd (NULL when absent). */
int view_point(mvcc_view *v, int cf, const void *key, size_t n, char **val, size_t *vlen);
void rows_free(range_rows *r);
/* The calling thread's reusable rows (and txn path buffer, if asked), for
 * reads outside apply; give them back with reader_rows_done. */
range_rows *reader_rows(bool ***path, size_t **path_cap);
void reader_rows_done(range_rows *r);

/* Collects [key, end) at revision `at` (0 = the view's revision). `end`
 * follows etcd: NULL/empty = the single key, "\0" = every key >= key.
 * `limit` 0 = all. When count_only, only r->count is filled. Returns 0 or
 * -1 on a store error. */
int view_range(mvcc_view *v, const uint8_t *key, size_t key_len,
               const uint8_t *end, size_t end_len, int64_t at, int64_t limit,
               bool count_only, range_rows *r);
/* The live KeyValue of one key at the view's revision: 1 found (row added to
 * r, parsed in r->kvs[r->n-1]), 0 absent, -1 store error. */
int view_get(mvcc_view *v, const uint8_t *key, size_t key_len, range_rows *r);

/* Full RangeRequest semantics (revision checks, filters, sort, limit,
 * keys_only, count_only), writing a RangeResponse to `out`. `top` selects a
 * full header (top-level response) or a revision-only one (inside a txn).
 * Returns 0, or -1 on a store error; client errors go into *res. */
int range_request(mvcc_view *v, const Etcdserverpb__RangeRequest *req,
                  const mvcc_header *h, bool top, range_rows *rows,
                  mvcc_buf *out, mvcc_result *res);

/* ---- mvcc_sort.c ---- */

typedef bool (*kv_less)(const kvv *a, const kvv *b);
/* Orders idx[0..n-1] (rows of kvs) exactly as Go's sort.Sort would, with
 * `less` reversed when descending, as sort.Reverse does. */
void sort_like_go(size_t *idx, size_t n, const kvv *kvs, kv_less less, bool descend);

/* Evaluates the compares of a txn: 1 true, 0 false, -1 store error. */
int compares_hold(mvcc_view *v, Etcdserverpb__Compare **cmp, size_t n, range_rows *rows);

void result_error(mvcc_result *res, int status, const char *msg);

#endif
