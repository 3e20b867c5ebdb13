/* Fuzz target: storage apply (storage/mvcc) on arbitrary op sequences,
 * compared after every op with a small in-memory model of etcd 3.4's MVCC.
 *
 * The input is a byte program. Each step picks an op: Put, DeleteRange,
 * Txn (compares, then Range/Put/DeleteRange in either branch), Compaction,
 * LeaseGrant, LeaseRevoke — queued into the next raft entry (up to 4 ops per
 * entry, as the batcher makes them) — or a read (Range at the current or an
 * older revision, a read-only Txn), served like the server serves them.
 * Requests that the server would refuse before proposing (mvcc_validate_*)
 * are dropped, as the server drops them. Keys come from a table of eight
 * (with a NUL byte, 0x80 and 0xff among them, for byte order), so ops meet.
 *
 * The model keeps every version of every key (revision, sub revision,
 * create revision, version, value, lease) and answers what etcd answers:
 * each op's error message or its response (header revision, prev_kv(s),
 * deleted count, txn branch and sub-responses with their header
 * revisions, range kvs, count and more under limit, sort order and
 * target, min/max mod and create revision filters, keys_only,
 * count_only), the current and compact revisions, and the whole key space
 * at the current revision and at an older one after each entry (reads at
 * or after the compact revision keep working while the store removes old
 * revisions in the background), and
 * the events the store reports to watchers for each entry (type, revision,
 * sub revision, KeyValue, prev_kv).
 *
 * One store (in /dev/shm when there is one) serves every input: each
 * starts by loading the dump of an empty store into it (mvcc_load), so
 * every input is reproducible alone, and the load path is exercised too. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mvcc.h"

#include "fuzz_check.h"

#define ERR_COMPACTED "etcdserver: mvcc: required revision has been compacted"
#define ERR_FUTURE_REV "etcdserver: mvcc: required revision is a future revision"
#define ERR_LEASE_NOT_FOUND "etcdserver: requested lease not found"
#define ERR_KEY_NOT_FOUND "etcdserver: key not found"
#define ERR_LEASE_EXISTS "etcdserver: lease already exists"
#define ERR_LEASE_TTL_TOO_LARGE "etcdserver: too large lease TTL"

#define MAX_STEPS 48
#define MAX_ENTRY_OPS 4
#define N_KEYS 8
#define MAX_VERSIONS 512
#define N_LEASES 5

/* ---- the byte program ---- */

typedef struct prog {
    const uint8_t *p;
    size_t n;
} prog;

static uint8_t next(prog *g)
{
    if (g->n == 0)
        return 0;
    g->n--;
    return *g->p++;
}

/* In byte order; a key is named by its index. */
static const struct {
    const char *s;
    size_t len;
} keys[N_KEYS] = {
    {"a", 1}, {"a\0", 2}, {"ab", 2}, {"b", 1}, {"c", 1}, {"d", 1}, {"\x80", 1}, {"\xff", 1},
};

static const int64_t lease_ids[N_LEASES] = {0, 1, 2, 3, -7};

static ProtobufCBinaryData key_bin(int i)
{
    return (ProtobufCBinaryData){keys[i].len, (uint8_t *)keys[i].s};
}

/* A range_end: none (the key alone), "\0" (every key from the key on), or
 * another table key (possibly before the key: an empty range). */
static ProtobufCBinaryData end_bin(prog *g)
{
    uint8_t b = next(g) % (N_KEYS + 2);
    if (b == 0)
        return (ProtobufCBinaryData){0, NULL};
    if (b == 1)
        return (ProtobufCBinaryData){1, (uint8_t *)"\0"};
    return key_bin(b - 2);
}

/* ---- the model ---- */

typedef struct version {
    int64_t rev, sub, create, ver, lease;
    bool tomb;
    uint8_t value[2];
    size_t vlen;
} version;

typedef struct model {
    version v[N_KEYS][MAX_VERSIONS];
    size_t nv[N_KEYS];
    int64_t rev;     /* current revision (1 for an empty store) */
    int64_t compact; /* -1 until the first compaction */
    bool lease_live[N_LEASES];
    int64_t lease_ttl[N_LEASES];
} model;

static model M;

/* The version of key i visible at revision rev, or NULL (absent). */
static const version *m_at(int i, int64_t rev)
{
    const version *found = NULL;
    for (size_t j = 0; j < M.nv[i]; j++)
        if (M.v[i][j].rev <= rev)
            found = &M.v[i][j];
    return found && !found->tomb ? found : NULL;
}

static int bytes_cmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    size_t n = an < bn ? an : bn;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c;
    return an < bn ? -1 : an > bn;
}

/* Is table key i inside [key, end) with etcd's range_end rules? */
static bool in_range(int i, ProtobufCBinaryData key, ProtobufCBinaryData end)
{
    const uint8_t *k = (const uint8_t *)keys[i].s;
    size_t kl = keys[i].len;
    if (end.len == 0)
        return bytes_cmp(k, kl, key.data, key.len) == 0;
    if (bytes_cmp(k, kl, key.data, key.len) < 0)
        return false;
    if (end.len == 1 && end.data[0] == 0)
        return true;
    return bytes_cmp(k, kl, end.data, end.len) < 0;
}

/* The table index of a key that is one of the table's. */
static int key_index(ProtobufCBinaryData key)
{
    for (int k = 0; k < N_KEYS; k++)
        if (in_range(k, key, (ProtobufCBinaryData){0, NULL}))
            return k;
    FUZZ_CHECK(!"key not in the table");
    return -1;
}

static int lease_slot(int64_t id)
{
    for (int i = 0; i < N_LEASES; i++)
        if (lease_ids[i] == id)
            return i;
    return -1;
}

static bool lease_exists(int64_t id)
{
    int s = lease_slot(id);
    return id != 0 && s >= 0 && M.lease_live[s];
}

/* The changes of the entry being applied, in order: what the store's
 * event hook must report (watchers get exactly these). */
typedef struct change {
    int key;
    version now;
    bool has_prev;
    version prev;
} change;

#define MAX_CHANGES (MAX_ENTRY_OPS * 3 * N_KEYS)
static change changes[MAX_CHANGES];
static size_t n_changes;

static void m_add(int i, version v)
{
    FUZZ_CHECK(M.nv[i] < MAX_VERSIONS);
    FUZZ_CHECK(n_changes < MAX_CHANGES);
    change *c = &changes[n_changes++];
    c->key = i;
    c->now = v;
    /* A watcher's prev_kv is the key before the revision (etcd reads it at
     * mod_revision - 1), not an earlier change of the same txn: etcd's
     * duplicate check lets a txn put a key and delete it with a range
     * ending in "\0" (the interval [key, "\0") is empty to it). */
    const version *prev = m_at(i, v.rev - 1);
    c->has_prev = prev != NULL;
    if (prev)
        c->prev = *prev;
    M.v[i][M.nv[i]++] = v;
}

/* ---- comparing decoded responses with the model ---- */

static void check_kv(const Mvccpb__KeyValue *kv, int i, const version *v, bool keys_only)
{
    FUZZ_CHECK(kv->key.len == keys[i].len && memcmp(kv->key.data, keys[i].s, keys[i].len) == 0);
    FUZZ_CHECK(kv->create_revision == v->create);
    FUZZ_CHECK(kv->mod_revision == v->rev);
    FUZZ_CHECK(kv->version == v->ver);
    FUZZ_CHECK(kv->lease == v->lease);
    if (keys_only)
        FUZZ_CHECK(kv->value.len == 0);
    else
        FUZZ_CHECK(kv->value.len == v->vlen && (v->vlen == 0 || memcmp(kv->value.data, v->value, v->vlen) == 0));
}

/* ---- events, as the store's event hook reports them ---- */

typedef struct event_copy {
    int type;
    int64_t rev, sub, create_rev;
    Mvccpb__KeyValue *kv, *prev_kv;
} event_copy;

static event_copy events[MAX_CHANGES + 1];
static size_t n_events;

static void on_events(void *arg, const mvcc_event *evs, size_t n)
{
    (void)arg;
    for (size_t i = 0; i < n; i++) {
        /* More events than the model's changes fails the check below. */
        FUZZ_CHECK(n_events <= MAX_CHANGES);
        event_copy *e = &events[n_events++];
        e->type = evs[i].type;
        e->rev = evs[i].rev;
        e->sub = evs[i].sub;
        e->create_rev = evs[i].create_rev;
        e->kv = mvccpb__key_value__unpack(NULL, evs[i].kv_len, evs[i].kv);
        FUZZ_CHECK(e->kv != NULL);
        FUZZ_CHECK(e->kv->key.len == evs[i].key_len && memcmp(e->kv->key.data, evs[i].key, evs[i].key_len) == 0);
        e->prev_kv = NULL;
        if (evs[i].prev_kv) {
            e->prev_kv = mvccpb__key_value__unpack(NULL, evs[i].prev_kv_len, evs[i].prev_kv);
            FUZZ_CHECK(e->prev_kv != NULL);
        }
    }
}

/* The entry's events are the model's changes, in order. */
static void check_events(void)
{
    FUZZ_CHECK(n_events == n_changes);
    for (size_t i = 0; i < n_events; i++) {
        const event_copy *e = &events[i];
        const change *c = &changes[i];
        FUZZ_CHECK(e->rev == c->now.rev && e->sub == c->now.sub);
        FUZZ_CHECK(e->type == (c->now.tomb ? MVCC_EVENT_DELETE : MVCC_EVENT_PUT));
        FUZZ_CHECK(e->kv->mod_revision == c->now.rev);
        if (c->now.tomb) {
            FUZZ_CHECK(e->kv->key.len == keys[c->key].len && memcmp(e->kv->key.data, keys[c->key].s, keys[c->key].len) == 0);
        } else {
            check_kv(e->kv, c->key, &c->now, false);
            FUZZ_CHECK(e->create_rev == c->now.create);
        }
        if (c->has_prev) {
            FUZZ_CHECK(e->prev_kv != NULL);
            check_kv(e->prev_kv, c->key, &c->prev, false);
        } else {
            FUZZ_CHECK(e->prev_kv == NULL);
        }
    }
}

static void clear_events(void)
{
    for (size_t i = 0; i < n_events; i++) {
        mvccpb__key_value__free_unpacked(events[i].kv, NULL);
        if (events[i].prev_kv)
            mvccpb__key_value__free_unpacked(events[i].prev_kv, NULL);
    }
    n_events = 0;
    n_changes = 0;
}

/* The sort key of a version for a Range's sort_target, compared. */
static int target_cmp(const Etcdserverpb__RangeRequest *q, int ia, const version *a, int ib, const version *b)
{
    switch (q->sort_target) {
    case ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__VERSION: return (a->ver > b->ver) - (a->ver < b->ver);
    case ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__CREATE: return (a->create > b->create) - (a->create < b->create);
    case ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__MOD: return (a->rev > b->rev) - (a->rev < b->rev);
    case ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__VALUE: {
        int c = bytes_cmp(a->value, a->vlen, b->value, b->vlen);
        return (c > 0) - (c < 0);
    }
    default: return (ia > ib) - (ia < ib); /* the table is in key order */
    }
}

/* A Range at revision `at` (already resolved), as etcd 3.4's applier
 * answers it: count is the number of keys in the range before the min/max
 * filters; with a limit and neither sort order nor filter, only limit + 1
 * keys (in key order) are fetched and then sorted (a sort_target other than
 * KEY sorts ascending even with sort_order NONE); more is set when kvs were
 * cut. Go sorts 12 items or fewer by insertion: stable, so ties stay in key
 * order, also when descending. */
static void check_range_resp(const Etcdserverpb__RangeResponse *r, const Etcdserverpb__RangeRequest *q,
                             int64_t at, int64_t header_rev)
{
    FUZZ_CHECK(r->header && r->header->revision == header_rev);
    int idx[N_KEYS];
    const version *ver[N_KEYS];
    size_t n = 0;
    for (int i = 0; i < N_KEYS; i++) {
        const version *v;
        if (in_range(i, q->key, q->range_end) && (v = m_at(i, at))) {
            idx[n] = i;
            ver[n++] = v;
        }
    }
    FUZZ_CHECK(r->count == (int64_t)n);
    if (q->count_only) {
        FUZZ_CHECK(r->n_kvs == 0 && !r->more);
        return;
    }
    bool filtered = q->min_mod_revision || q->max_mod_revision || q->min_create_revision ||
                    q->max_create_revision;
    if (q->sort_order == ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__NONE && !filtered && q->limit > 0 &&
        n > (size_t)q->limit + 1)
        n = (size_t)q->limit + 1;
    size_t kept = 0;
    for (size_t j = 0; j < n; j++) {
        const version *v = ver[j];
        if ((q->max_mod_revision && v->rev > q->max_mod_revision) ||
            (q->min_mod_revision && v->rev < q->min_mod_revision) ||
            (q->max_create_revision && v->create > q->max_create_revision) ||
            (q->min_create_revision && v->create < q->min_create_revision))
            continue;
        idx[kept] = idx[j];
        ver[kept++] = v;
    }
    n = kept;
    int order = q->sort_order;
    if (q->sort_target != ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__KEY &&
        order == ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__NONE)
        order = ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__ASCEND;
    if (order != ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__NONE) {
        int sign = order == ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__DESCEND ? -1 : 1;
        for (size_t j = 1; j < n; j++)
            for (size_t k = j; k > 0 && sign * target_cmp(q, idx[k], ver[k], idx[k - 1], ver[k - 1]) < 0; k--) {
                int ti = idx[k];
                const version *tv = ver[k];
                idx[k] = idx[k - 1], ver[k] = ver[k - 1];
                idx[k - 1] = ti, ver[k - 1] = tv;
            }
    }
    bool more = false;
    if (q->limit > 0 && n > (size_t)q->limit) {
        n = (size_t)q->limit;
        more = true;
    }
    FUZZ_CHECK(r->n_kvs == n);
    for (size_t j = 0; j < n; j++)
        check_kv(r->kvs[j], idx[j], ver[j], q->keys_only);
    FUZZ_CHECK(r->more == more);
}

/* ---- the store ---- */

static struct {
    char dir[256];
    mvcc *m;
    uint64_t index;
    mvcc_buf out;
    mvcc_header h;
} S;

/* The dump of a new store: loading it back is the cheap way to start each
 * input from an empty store (a RocksDB open and close is tens of ms). */
static mvcc_buf empty_dump;

static void store_drop(void)
{
    mvcc_close(S.m);
    S.m = NULL;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", S.dir);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_mvcc_apply: could not remove %s\n", S.dir);
}

static void store_close(void)
{
    if (S.m)
        store_drop();
    free(S.out.data);
    free(empty_dump.data);
}

static void store_open(void)
{
    static bool registered;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    snprintf(S.dir, sizeof S.dir, "%s/ballast-fuzz-mvcc-XXXXXX", base && *base ? base : "/tmp");
    FUZZ_CHECK(mkdtemp(S.dir) != NULL);
    char *err = NULL;
    if (mvcc_open(S.dir, &S.m, &err) != 0) {
        fprintf(stderr, "mvcc_open: %s\n", err ? err : "?");
        abort();
    }
    S.h = (mvcc_header){11, 22, 3};
    mvcc_dump *d = mvcc_dump_open(S.m);
    FUZZ_CHECK(d != NULL);
    int rc;
    empty_dump.len = 0;
    while ((rc = mvcc_dump_next(d, &empty_dump, 1 << 20)) == 1)
        ;
    FUZZ_CHECK(rc == 0);
    mvcc_dump_close(d);
    mvcc_set_event_hook(S.m, on_events, NULL);
    if (!registered)
        atexit(store_close);
    registered = true;
}

/* Inputs served by one store before it is replaced by a new one: a load
 * leaves RocksDB tombstones behind, and after thousands of inputs they made
 * each input several times slower. */
#define STORE_REUSE 200

static void store_reset(void)
{
    static unsigned uses;
    if (S.m && ++uses % STORE_REUSE == 0)
        store_drop();
    if (!S.m)
        store_open();
    char *err = NULL;
    mvcc_load *l = mvcc_load_begin(S.m, &err);
    FUZZ_CHECK(l != NULL);
    FUZZ_CHECK(mvcc_load_feed(l, empty_dump.data, empty_dump.len, &err) == 0);
    if (mvcc_load_end(l, &err) != 0) {
        fprintf(stderr, "mvcc_load_end: %s\n", err ? err : "?");
        abort();
    }
    S.index = 0;
    FUZZ_CHECK(mvcc_applied_index(S.m) == 0 && mvcc_current_revision(S.m) == 1 &&
               mvcc_compact_revision(S.m) == -1);
}

/* ---- ops: what the model expects of each ---- */

typedef struct pending {
    Ballastpb__Op op;
    /* What the op is made of, owned here. */
    union {
        Etcdserverpb__PutRequest put;
        Etcdserverpb__DeleteRangeRequest del;
        Etcdserverpb__CompactionRequest compact;
        Etcdserverpb__LeaseGrantRequest grant;
        Etcdserverpb__LeaseRevokeRequest revoke;
    } u;
    struct txn_parts *txn;
    uint8_t value[2];
} pending;

typedef struct txn_parts {
    Etcdserverpb__TxnRequest t;
    Etcdserverpb__Compare cmp[2];
    Etcdserverpb__Compare *cmpp[2];
    Etcdserverpb__RequestOp ops[2][3];
    Etcdserverpb__RequestOp *opp[2][3];
    Etcdserverpb__RangeRequest range[2][3];
    Etcdserverpb__PutRequest put[2][3];
    Etcdserverpb__DeleteRangeRequest del[2][3];
    uint8_t values[2][3][2];
    uint8_t cvalue[2][2];
} txn_parts;

static void fill_value(prog *g, uint8_t *buf, ProtobufCBinaryData *out)
{
    size_t n = next(g) % 3;
    for (size_t i = 0; i < n; i++)
        buf[i] = next(g);
    *out = (ProtobufCBinaryData){n, buf};
}

static void gen_put(prog *g, Etcdserverpb__PutRequest *p, uint8_t *vbuf)
{
    *p = (Etcdserverpb__PutRequest)ETCDSERVERPB__PUT_REQUEST__INIT;
    p->key = key_bin(next(g) % N_KEYS);
    fill_value(g, vbuf, &p->value);
    uint8_t f = next(g);
    p->lease = (f & 1) ? lease_ids[(f >> 1) % N_LEASES] : 0;
    p->prev_kv = (f >> 4) & 1;
    p->ignore_value = ((f >> 5) & 3) == 3;
    p->ignore_lease = ((f >> 7) & 1) && !(f & 1);
    if (p->ignore_value)
        p->value = (ProtobufCBinaryData){0, NULL};
}

static void gen_del(prog *g, Etcdserverpb__DeleteRangeRequest *d)
{
    *d = (Etcdserverpb__DeleteRangeRequest)ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    d->key = key_bin(next(g) % N_KEYS);
    d->range_end = end_bin(g);
    d->prev_kv = next(g) & 1;
}

/* A revision to read at: the current one (0), an older one, the next
 * (future) one, or a negative one. */
static int64_t gen_read_rev(prog *g)
{
    uint8_t b = next(g);
    switch (b % 8) {
    case 0: return 0;
    case 1: return M.rev + 1;
    case 2: return -1;
    default: return M.rev - (int64_t)(next(g) % (uint64_t)(M.rev + 1));
    }
}

static void gen_range(prog *g, Etcdserverpb__RangeRequest *r)
{
    *r = (Etcdserverpb__RangeRequest)ETCDSERVERPB__RANGE_REQUEST__INIT;
    r->key = key_bin(next(g) % N_KEYS);
    r->range_end = end_bin(g);
    uint8_t f = next(g);
    static const int64_t limits[] = {0, 1, 2, 3, -1};
    r->limit = limits[f % 5];
    r->keys_only = (f >> 3) & 1;
    r->count_only = (f >> 4) & 1;
    r->revision = gen_read_rev(g);
    if (f & 0x20) {
        uint8_t so = next(g);
        r->sort_order = (Etcdserverpb__RangeRequest__SortOrder)(so % 3);
        r->sort_target = (Etcdserverpb__RangeRequest__SortTarget)((so / 3) % 5);
    }
    if (f & 0x40) {
        uint8_t fl = next(g);
        int64_t rv = 1 + next(g) % (uint64_t)(M.rev + 1);
        if (fl & 1)
            r->min_mod_revision = rv;
        if (fl & 2)
            r->max_mod_revision = rv;
        if (fl & 4)
            r->min_create_revision = rv;
        if (fl & 8)
            r->max_create_revision = rv;
    }
}

static void gen_txn(prog *g, txn_parts *x)
{
    memset(x, 0, sizeof *x);
    x->t = (Etcdserverpb__TxnRequest)ETCDSERVERPB__TXN_REQUEST__INIT;
    size_t nc = next(g) % 3;
    for (size_t i = 0; i < nc; i++) {
        Etcdserverpb__Compare *c = &x->cmp[i];
        *c = (Etcdserverpb__Compare)ETCDSERVERPB__COMPARE__INIT;
        c->target = (Etcdserverpb__Compare__CompareTarget)(next(g) % 5);
        c->result = (Etcdserverpb__Compare__CompareResult)(next(g) % 4);
        c->key = key_bin(next(g) % N_KEYS);
        if (next(g) % 4 == 0)
            c->range_end = end_bin(g);
        uint8_t b = next(g);
        switch (c->target) {
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VERSION:
            c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION;
            c->version = b % 4;
            break;
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE:
            c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
            c->create_revision = b % (M.rev + 2);
            break;
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD:
            c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
            c->mod_revision = b % (M.rev + 2);
            break;
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE:
            c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE;
            fill_value(g, x->cvalue[i], &c->value);
            break;
        default:
            c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_LEASE;
            c->lease = lease_ids[b % N_LEASES];
            break;
        }
        x->cmpp[i] = c;
    }
    x->t.compare = x->cmpp;
    x->t.n_compare = nc;
    for (int br = 0; br < 2; br++) {
        size_t n = next(g) % 4;
        for (size_t i = 0; i < n; i++) {
            Etcdserverpb__RequestOp *o = &x->ops[br][i];
            *o = (Etcdserverpb__RequestOp)ETCDSERVERPB__REQUEST_OP__INIT;
            switch (next(g) % 3) {
            case 0:
                gen_range(g, &x->range[br][i]);
                o->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
                o->request_range = &x->range[br][i];
                break;
            case 1:
                gen_put(g, &x->put[br][i], x->values[br][i]);
                o->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
                o->request_put = &x->put[br][i];
                break;
            default:
                gen_del(g, &x->del[br][i]);
                o->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
                o->request_delete_range = &x->del[br][i];
                break;
            }
            x->opp[br][i] = o;
        }
        if (br == 0) {
            x->t.success = x->opp[0];
            x->t.n_success = n;
        } else {
            x->t.failure = x->opp[1];
            x->t.n_failure = n;
        }
    }
}

/* ---- applying to the model, checking the store's answer ---- */

static const mvcc_limits limits = {128, 1572864};

static void check_error(const mvcc_result *res, const char *want)
{
    if (res->status == MVCC_STATUS_OK || strcmp(res->message, want) != 0) {
        fprintf(stderr, "expected error \"%s\", got status %d \"%s\"\n", want, res->status,
                res->status == MVCC_STATUS_OK ? "" : res->message);
        abort();
    }
}

static void check_ok(const mvcc_result *res)
{
    if (res->status != MVCC_STATUS_OK) {
        fprintf(stderr, "expected success, got status %d \"%s\"\n", res->status, res->message);
        abort();
    }
}

/* The Put's effect on the model within a write at main revision `rev`,
 * sub revision `sub`; checks the PutResponse's prev_kv. */
static void m_put(const Etcdserverpb__PutRequest *p, int64_t rev, int64_t sub, const Mvccpb__KeyValue *prev_kv,
                  bool has_prev_field)
{
    int i = key_index(p->key);
    const version *old = m_at(i, rev);
    if (has_prev_field) {
        if (p->prev_kv && old) {
            FUZZ_CHECK(prev_kv != NULL);
            check_kv(prev_kv, i, old, false);
        } else {
            FUZZ_CHECK(prev_kv == NULL);
        }
    }
    version v = {.rev = rev, .sub = sub};
    v.create = old ? old->create : rev;
    v.ver = old ? old->ver + 1 : 1;
    if (p->ignore_value) {
        memcpy(v.value, old->value, old->vlen);
        v.vlen = old->vlen;
    } else {
        memcpy(v.value, p->value.data, p->value.len);
        v.vlen = p->value.len;
    }
    v.lease = p->ignore_lease ? old->lease : p->lease;
    m_add(i, v);
}

/* Deletes every live key of the range at `rev`; returns how many. */
static int64_t m_delete(ProtobufCBinaryData key, ProtobufCBinaryData end, int64_t rev, int64_t *sub,
                        const Etcdserverpb__DeleteRangeResponse *resp, bool prev)
{
    int64_t n = 0;
    for (int i = 0; i < N_KEYS; i++) {
        const version *old;
        if (!in_range(i, key, end) || !(old = m_at(i, rev)))
            continue;
        if (resp && prev) {
            FUZZ_CHECK((size_t)n < resp->n_prev_kvs);
            check_kv(resp->prev_kvs[n], i, old, false);
        }
        m_add(i, (version){.rev = rev, .sub = (*sub)++, .tomb = true});
        n++;
    }
    if (resp) {
        FUZZ_CHECK(resp->deleted == n);
        FUZZ_CHECK(resp->n_prev_kvs == (prev ? (size_t)n : 0));
    }
    return n;
}

/* etcd's checkPut for a Put in a txn or alone: the key must exist for
 * ignore_value/ignore_lease, the lease must exist. */
static const char *put_error(const Etcdserverpb__PutRequest *p, bool lease_first)
{
    int i = key_index(p->key);
    bool missing = (p->ignore_value || p->ignore_lease) && !m_at(i, M.rev);
    bool no_lease = p->lease != 0 && !lease_exists(p->lease);
    if (lease_first && no_lease)
        return ERR_LEASE_NOT_FOUND;
    if (missing)
        return ERR_KEY_NOT_FOUND;
    return no_lease ? ERR_LEASE_NOT_FOUND : NULL;
}

/* etcd's checks of a Range's revision (rangeKeys / checkRequestRange). */
static const char *range_error(int64_t rev, bool in_txn)
{
    if (rev > M.rev)
        return ERR_FUTURE_REV;
    if (in_txn) {
        if (rev != 0 && rev < M.compact)
            return ERR_COMPACTED;
    } else if (rev > 0 && rev < M.compact) {
        return ERR_COMPACTED;
    }
    return NULL;
}

static bool compare_holds(const Etcdserverpb__Compare *c)
{
    bool any = false;
    for (int i = 0; i < N_KEYS; i++) {
        const version *v;
        if (!in_range(i, c->key, c->range_end) || !(v = m_at(i, M.rev)))
            continue;
        any = true;
        int r;
        switch (c->target) {
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VERSION: r = (v->ver > c->version) - (v->ver < c->version); break;
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE: r = (v->create > c->create_revision) - (v->create < c->create_revision); break;
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD: r = (v->rev > c->mod_revision) - (v->rev < c->mod_revision); break;
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE: r = bytes_cmp(v->value, v->vlen, c->value.data, c->value.len); r = (r > 0) - (r < 0); break;
        default: r = (v->lease > c->lease) - (v->lease < c->lease); break;
        }
        bool ok;
        switch (c->result) {
        case ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL: ok = r == 0; break;
        case ETCDSERVERPB__COMPARE__COMPARE_RESULT__GREATER: ok = r > 0; break;
        case ETCDSERVERPB__COMPARE__COMPARE_RESULT__LESS: ok = r < 0; break;
        default: ok = r != 0; break;
        }
        if (!ok)
            return false;
    }
    if (any)
        return true;
    /* No key: a value compare fails, the others compare against zeros. */
    if (c->target == ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE)
        return false;
    int64_t want = c->target == ETCDSERVERPB__COMPARE__COMPARE_TARGET__VERSION ? c->version
                 : c->target == ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE ? c->create_revision
                 : c->target == ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD ? c->mod_revision
                 : c->lease;
    int r = (0 > want) - (0 < want);
    switch (c->result) {
    case ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL: return r == 0;
    case ETCDSERVERPB__COMPARE__COMPARE_RESULT__GREATER: return r > 0;
    case ETCDSERVERPB__COMPARE__COMPARE_RESULT__LESS: return r < 0;
    default: return r != 0;
    }
}

static bool txn_is_write(const Etcdserverpb__TxnRequest *t)
{
    for (size_t i = 0; i < t->n_success; i++)
        if (t->success[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE)
            return true;
    for (size_t i = 0; i < t->n_failure; i++)
        if (t->failure[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE)
            return true;
    return false;
}

/* Checks a TxnResponse (or the expected error) and applies it to the model. */
static void m_txn(const Etcdserverpb__TxnRequest *t, const mvcc_result *res, const uint8_t *buf)
{
    bool ok = true;
    for (size_t i = 0; i < t->n_compare; i++)
        ok = ok && compare_holds(t->compare[i]);
    Etcdserverpb__RequestOp *const *ops = ok ? t->success : t->failure;
    size_t n = ok ? t->n_success : t->n_failure;
    const char *err = NULL;
    if (txn_is_write(t))
        for (size_t i = 0; i < n && !err; i++)
            if (ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT)
                err = put_error(ops[i]->request_put, false);
    for (size_t i = 0; i < n && !err; i++)
        if (ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE)
            err = range_error(ops[i]->request_range->revision, true);
    /* etcd's duplicate check misses a delete whose range ends in "\0", so a
     * txn may delete a key and then put it with ignore_value/ignore_lease:
     * the put finds no key and etcd 3.4 panics ("unexpected error during
     * txn"). Ballast fails the whole txn with "key not found" instead. */
    bool live[N_KEYS];
    for (int k = 0; k < N_KEYS; k++)
        live[k] = m_at(k, M.rev) != NULL;
    for (size_t i = 0; i < n && !err; i++) {
        if (ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE) {
            for (int k = 0; k < N_KEYS; k++)
                if (in_range(k, ops[i]->request_delete_range->key, ops[i]->request_delete_range->range_end))
                    live[k] = false;
        } else if (ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT) {
            const Etcdserverpb__PutRequest *p = ops[i]->request_put;
            int k = key_index(p->key);
            if ((p->ignore_value || p->ignore_lease) && !live[k])
                err = ERR_KEY_NOT_FOUND;
            live[k] = true;
        }
    }
    if (err) {
        check_error(res, err);
        return;
    }
    check_ok(res);
    Etcdserverpb__TxnResponse *r = etcdserverpb__txn_response__unpack(NULL, res->len, buf + res->off);
    FUZZ_CHECK(r != NULL);
    FUZZ_CHECK(r->succeeded == ok);
    FUZZ_CHECK(r->n_responses == n);
    int64_t begin = M.rev, next_rev = M.rev + 1, sub = 0;
    for (size_t i = 0; i < n; i++) {
        const Etcdserverpb__ResponseOp *ro = r->responses[i];
        int64_t cur = sub > 0 ? next_rev : begin;
        switch (ops[i]->request_case) {
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE: {
            const Etcdserverpb__RangeRequest *q = ops[i]->request_range;
            FUZZ_CHECK(ro->response_case == ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE);
            check_range_resp(ro->response_range, q, q->revision > 0 ? q->revision : cur, cur);
            break;
        }
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT: {
            FUZZ_CHECK(ro->response_case == ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_PUT);
            const Etcdserverpb__PutResponse *pr = ro->response_put;
            FUZZ_CHECK(pr->header && pr->header->revision == next_rev);
            m_put(ops[i]->request_put, next_rev, sub++, pr->prev_kv, true);
            break;
        }
        default: {
            FUZZ_CHECK(ro->response_case == ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_DELETE_RANGE);
            const Etcdserverpb__DeleteRangeRequest *d = ops[i]->request_delete_range;
            const Etcdserverpb__DeleteRangeResponse *dr = ro->response_delete_range;
            int64_t deleted = m_delete(d->key, d->range_end, next_rev, &sub, dr, d->prev_kv);
            FUZZ_CHECK(dr->header && dr->header->revision == (deleted || sub > 0 ? next_rev : begin));
            break;
        }
        }
    }
    if (sub > 0)
        M.rev = next_rev;
    FUZZ_CHECK(r->header && r->header->revision == M.rev);
    etcdserverpb__txn_response__free_unpacked(r, NULL);
}

/* Checks one applied op's result against the model and updates the model. */
static void m_apply(const pending *p, const mvcc_result *res, const uint8_t *buf)
{
    switch (p->op.op_case) {
    case BALLASTPB__OP__OP_PUT: {
        const char *err = put_error(&p->u.put, true);
        if (err) {
            check_error(res, err);
            return;
        }
        check_ok(res);
        Etcdserverpb__PutResponse *r = etcdserverpb__put_response__unpack(NULL, res->len, buf + res->off);
        FUZZ_CHECK(r != NULL);
        M.rev++;
        FUZZ_CHECK(r->header && r->header->revision == M.rev);
        m_put(&p->u.put, M.rev, 0, r->prev_kv, true);
        etcdserverpb__put_response__free_unpacked(r, NULL);
        return;
    }
    case BALLASTPB__OP__OP_DELETE_RANGE: {
        check_ok(res);
        Etcdserverpb__DeleteRangeResponse *r =
            etcdserverpb__delete_range_response__unpack(NULL, res->len, buf + res->off);
        FUZZ_CHECK(r != NULL);
        int64_t sub = 0;
        if (m_delete(p->u.del.key, p->u.del.range_end, M.rev + 1, &sub, r, p->u.del.prev_kv) > 0)
            M.rev++;
        FUZZ_CHECK(r->header && r->header->revision == M.rev);
        etcdserverpb__delete_range_response__free_unpacked(r, NULL);
        return;
    }
    case BALLASTPB__OP__OP_TXN:
        m_txn(&p->txn->t, res, buf);
        return;
    case BALLASTPB__OP__OP_COMPACTION: {
        int64_t rev = p->u.compact.revision;
        if (rev <= M.compact) {
            check_error(res, ERR_COMPACTED);
        } else if (rev > M.rev) {
            check_error(res, ERR_FUTURE_REV);
        } else {
            check_ok(res);
            M.compact = rev;
        }
        return;
    }
    case BALLASTPB__OP__OP_LEASE_GRANT: {
        int s = lease_slot(p->u.grant.id);
        /* etcd's lessor checks the TTL before the ID. */
        if (p->u.grant.ttl > MVCC_MAX_LEASE_TTL) {
            check_error(res, ERR_LEASE_TTL_TOO_LARGE);
        } else if (M.lease_live[s]) {
            check_error(res, ERR_LEASE_EXISTS);
        } else {
            check_ok(res);
            Etcdserverpb__LeaseGrantResponse *r =
                etcdserverpb__lease_grant_response__unpack(NULL, res->len, buf + res->off);
            FUZZ_CHECK(r != NULL);
            FUZZ_CHECK(r->id == p->u.grant.id && r->ttl == p->u.grant.ttl);
            etcdserverpb__lease_grant_response__free_unpacked(r, NULL);
            M.lease_live[s] = true;
            M.lease_ttl[s] = p->u.grant.ttl;
        }
        return;
    }
    case BALLASTPB__OP__OP_LEASE_REVOKE: {
        int s = lease_slot(p->u.revoke.id);
        if (!M.lease_live[s]) {
            check_error(res, ERR_LEASE_NOT_FOUND);
            return;
        }
        check_ok(res);
        /* Every key attached to the lease goes, in one revision. */
        int64_t sub = 0;
        for (int i = 0; i < N_KEYS; i++) {
            const version *v = m_at(i, M.rev);
            if (v && v->lease == p->u.revoke.id)
                m_add(i, (version){.rev = M.rev + 1, .sub = sub++, .tomb = true});
        }
        if (sub > 0)
            M.rev++;
        M.lease_live[s] = false;
        return;
    }
    default:
        FUZZ_CHECK(!"unexpected op");
    }
}

/* ---- reads, as the server serves them (not through raft) ---- */

static void do_range(const Etcdserverpb__RangeRequest *q)
{
    mvcc_result res;
    S.out.len = 0;
    FUZZ_CHECK(mvcc_range(S.m, q, &S.h, &S.out, &res) == 0);
    const char *err = range_error(q->revision, false);
    if (err) {
        check_error(&res, err);
        return;
    }
    check_ok(&res);
    Etcdserverpb__RangeResponse *r = etcdserverpb__range_response__unpack(NULL, res.len, S.out.data + res.off);
    FUZZ_CHECK(r != NULL);
    check_range_resp(r, q, q->revision > 0 ? q->revision : M.rev, M.rev);
    etcdserverpb__range_response__free_unpacked(r, NULL);
}

/* The whole key space at the current revision and at an older readable
 * one, read directly (no validation: the empty key with "\0" = every key). */
static void check_everything(prog *g)
{
    FUZZ_CHECK(mvcc_current_revision(S.m) == M.rev);
    FUZZ_CHECK(mvcc_compact_revision(S.m) == M.compact);
    Etcdserverpb__RangeRequest q = ETCDSERVERPB__RANGE_REQUEST__INIT;
    q.key = (ProtobufCBinaryData){1, (uint8_t *)"\0"};
    q.range_end = (ProtobufCBinaryData){1, (uint8_t *)"\0"};
    do_range(&q);
    int64_t lowest = M.compact > 1 ? M.compact : 1;
    q.revision = lowest + (int64_t)(next(g) % (uint64_t)(M.rev - lowest + 1));
    do_range(&q);
}

/* ---- one input ---- */

static pending entry[MAX_ENTRY_OPS];
static txn_parts txns[MAX_ENTRY_OPS];
static size_t n_entry;

static void flush(prog *g)
{
    if (n_entry == 0)
        return;
    Ballastpb__Op *ops[MAX_ENTRY_OPS];
    mvcc_result results[MAX_ENTRY_OPS];
    for (size_t i = 0; i < n_entry; i++)
        ops[i] = &entry[i].op;
    S.out.len = 0;
    FUZZ_CHECK(mvcc_apply(S.m, ++S.index, &S.h, ops, n_entry, &S.out, results) == 0);
    FUZZ_CHECK(mvcc_applied_index(S.m) == S.index);
    for (size_t i = 0; i < n_entry; i++)
        m_apply(&entry[i], &results[i], S.out.data);
    check_events();
    clear_events();
    n_entry = 0;
    check_everything(g);
}

static pending *queue_op(prog *g, Ballastpb__Op__OpCase kind)
{
    if (n_entry == MAX_ENTRY_OPS)
        flush(g);
    pending *p = &entry[n_entry];
    memset(p, 0, sizeof *p);
    p->op = (Ballastpb__Op)BALLASTPB__OP__INIT;
    p->op.op_case = kind;
    p->txn = &txns[n_entry];
    return p;
}

static void step(prog *g)
{
    mvcc_result res;
    switch (next(g) % 9) {
    case 0: {
        pending *p = queue_op(g, BALLASTPB__OP__OP_PUT);
        gen_put(g, &p->u.put, p->value);
        if (mvcc_validate_put(&p->u.put, &limits, &res) != 0)
            return;
        p->op.put = &p->u.put;
        n_entry++;
        return;
    }
    case 1: {
        pending *p = queue_op(g, BALLASTPB__OP__OP_DELETE_RANGE);
        gen_del(g, &p->u.del);
        if (mvcc_validate_delete_range(&p->u.del, &limits, &res) != 0)
            return;
        p->op.delete_range = &p->u.del;
        n_entry++;
        return;
    }
    case 2: {
        pending *p = queue_op(g, BALLASTPB__OP__OP_TXN);
        gen_txn(g, p->txn);
        if (mvcc_validate_txn(&p->txn->t, &limits, &res) != 0)
            return;
        if (mvcc_txn_is_read_only(&p->txn->t)) {
            /* Served like a read, after what was proposed before it
             * (flush leaves txns[] alone). */
            flush(g);
            S.out.len = 0;
            int rc = mvcc_txn_read(S.m, &p->txn->t, &S.h, &S.out, &res);
            FUZZ_CHECK(rc == 0 || res.status != MVCC_STATUS_OK);
            m_txn(&p->txn->t, &res, S.out.data);
            return;
        }
        p->op.txn = &p->txn->t;
        n_entry++;
        return;
    }
    case 3: {
        int64_t rev = M.rev + 1 - (int64_t)(next(g) % (uint64_t)(M.rev + 2));
        pending *p = queue_op(g, BALLASTPB__OP__OP_COMPACTION);
        p->u.compact = (Etcdserverpb__CompactionRequest)ETCDSERVERPB__COMPACTION_REQUEST__INIT;
        /* The revision is chosen against the model as it will be when the
         * entry applies the ops queued before: close enough, the model
         * decides what is right. */
        p->u.compact.revision = rev;
        p->u.compact.physical = next(g) & 1;
        p->op.compaction = &p->u.compact;
        n_entry++;
        return;
    }
    case 4: {
        pending *p = queue_op(g, BALLASTPB__OP__OP_LEASE_GRANT);
        p->u.grant = (Etcdserverpb__LeaseGrantRequest)ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
        uint8_t b = next(g);
        /* Never ID 0: the server chooses one before proposing. */
        p->u.grant.id = lease_ids[1 + b % (N_LEASES - 1)];
        p->u.grant.ttl = (b & 0x80) ? MVCC_MAX_LEASE_TTL + (b & 1) : 5 + (b >> 3);
        p->op.lease_grant = &p->u.grant;
        n_entry++;
        return;
    }
    case 5: {
        pending *p = queue_op(g, BALLASTPB__OP__OP_LEASE_REVOKE);
        p->u.revoke = (Etcdserverpb__LeaseRevokeRequest)ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
        p->u.revoke.id = lease_ids[1 + next(g) % (N_LEASES - 1)];
        p->op.lease_revoke = &p->u.revoke;
        n_entry++;
        return;
    }
    case 6:
        flush(g);
        return;
    default: {
        flush(g);
        Etcdserverpb__RangeRequest q;
        gen_range(g, &q);
        if (mvcc_validate_range(&q, &limits, &res) == 0)
            do_range(&q);
        return;
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    memset(&M, 0, sizeof M);
    M.rev = 1;
    M.compact = -1;
    n_entry = 0;
    clear_events();
    store_reset();
    prog g = {data, size};
    for (int i = 0; i < MAX_STEPS && g.n > 0; i++)
        step(&g);
    flush(&g);
    return 0;
}
