/* Compaction (logical and physical), restart and replay, a randomized
 * comparison with a simple model of the full history, and reads running
 * concurrently with apply. */
#include <pthread.h>
#include <stdatomic.h>

#include <rocksdb/c.h>

#include "storage_test.h"

static void test_compact_errors(void)
{
    tstore t;
    ts_open(&t);
    /* etcd starts with compact revision -1: compacting to 0 succeeds once */
    mvcc_result r = ts_compact(&t, 0, 0);
    CHECK_EQ_INT(r.status, MVCC_STATUS_OK);
    Etcdserverpb__CompactionResponse *cr =
        etcdserverpb__compaction_response__unpack(NULL, r.len, t.out.data + r.off);
    CHECK(cr && cr->header);
    CHECK_EQ_INT(cr->header->revision, 1);
    CHECK_EQ_INT(cr->header->cluster_id, 11);
    etcdserverpb__compaction_response__free_unpacked(cr, NULL);
    CHECK_ERR(ts_compact(&t, 0, 0), MVCC_STATUS_OUT_OF_RANGE, ERR_COMPACTED);
    CHECK_ERR(ts_compact(&t, -1, 0), MVCC_STATUS_OUT_OF_RANGE, ERR_COMPACTED);
    CHECK_ERR(ts_compact(&t, 2, 0), MVCC_STATUS_OUT_OF_RANGE, ERR_FUTURE);
    ts_put(&t, "a", "1");
    ts_put(&t, "a", "2");
    ts_put(&t, "b", "1"); /* 4 */
    CHECK_EQ_INT(ts_compact(&t, 3, 1).status, MVCC_STATUS_OK);
    CHECK_EQ_INT(mvcc_current_revision(t.m), 4); /* compaction is not a revision */
    CHECK_EQ_INT(mvcc_compact_revision(t.m), 3);
    CHECK_ERR(ts_compact(&t, 3, 0), MVCC_STATUS_OUT_OF_RANGE, ERR_COMPACTED);
    CHECK_ERR(ts_compact(&t, 2, 0), MVCC_STATUS_OUT_OF_RANGE, ERR_COMPACTED);
    CHECK_ERR(ts_compact(&t, 5, 0), MVCC_STATUS_OUT_OF_RANGE, ERR_FUTURE);

    Etcdserverpb__RangeRequest q = ETCDSERVERPB__RANGE_REQUEST__INIT;
    q.key = bin("a");
    q.revision = 2;
    mvcc_result res;
    CHECK(ts_range_req(&t, &q, &res) == NULL);
    CHECK_ERR(res, MVCC_STATUS_OUT_OF_RANGE, ERR_COMPACTED);
    q.revision = 3; /* the compact revision itself is readable */
    Etcdserverpb__RangeResponse *rr = ts_range_req(&t, &q, &res);
    CHECK(rr && rr->n_kvs == 1 && kv_is(rr->kvs[0], "a", "2"));
    CHECK_EQ_INT(rr->kvs[0]->create_revision, 2);
    CHECK_EQ_INT(rr->kvs[0]->version, 2);
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    CHECK(mvcc_wait_compaction(t.m, 3) == 0);
    CHECK(mvcc_physical_compact_revision(t.m) >= 3);
    rr = ts_range_req(&t, &q, &res);
    CHECK(rr && rr->n_kvs == 1 && kv_is(rr->kvs[0], "a", "2"));
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    ts_close(&t);
}

/* Counts the entries of one column family, opening the store's RocksDB
 * directly (the store must be closed). */
static long count_cf(const char *dir, const char *cf_name)
{
    const char *names[5] = {"default", "meta", "rev", "index", "current"};
    rocksdb_options_t *o = rocksdb_options_create();
    const rocksdb_options_t *os[5] = {o, o, o, o, o};
    rocksdb_column_family_handle_t *h[5];
    char *err = NULL;
    rocksdb_t *db = rocksdb_open_for_read_only_column_families(o, dir, 5, names, os, h, 0, &err);
    CHECK(err == NULL);
    long n = 0;
    for (int i = 0; i < 5; i++) {
        if (strcmp(names[i], cf_name) != 0)
            continue;
        rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
        rocksdb_iterator_t *it = rocksdb_create_iterator_cf(db, ro, h[i]);
        for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it))
            n++;
        rocksdb_iter_destroy(it);
        rocksdb_readoptions_destroy(ro);
    }
    for (int i = 0; i < 5; i++)
        rocksdb_column_family_handle_destroy(h[i]);
    rocksdb_close(db);
    rocksdb_options_destroy(o);
    return n;
}

static void test_physical_removal(void)
{
    tstore t;
    ts_open(&t);
    for (int i = 0; i < 50; i++)
        ts_put(&t, "hot", "v");          /* revs 2..51 */
    ts_put(&t, "gone", "x");             /* 52 */
    ts_del(&t, "gone", NULL);            /* 53 */
    ts_put(&t, "stay", "y");             /* 54 */
    ts_put(&t, "hot", "after");          /* 55 */
    CHECK_EQ_INT(ts_compact(&t, 54, 1).status, MVCC_STATUS_OK);
    CHECK(mvcc_wait_compaction(t.m, 54) == 0);
    /* left: hot@51, stay@54, hot@55; "gone" fully removed */
    mvcc_close(t.m);
    t.m = NULL;
    CHECK_EQ_INT(count_cf(t.dir, "rev"), 3);
    CHECK_EQ_INT(count_cf(t.dir, "index"), 3);
    CHECK_EQ_INT(count_cf(t.dir, "current"), 0); /* unused since live records moved into "index" */
    ts_open_dir(&t);
    Etcdserverpb__RangeResponse *rr = ts_range(&t, "a", "z", 54);
    CHECK_EQ_INT(rr->n_kvs, 2);
    CHECK(kv_is(rr->kvs[0], "hot", "v"));
    CHECK_EQ_INT(rr->kvs[0]->version, 50);
    CHECK_EQ_INT(rr->kvs[0]->create_revision, 2);
    CHECK(kv_is(rr->kvs[1], "stay", "y"));
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    /* a key deleted then re-put in one txn at the compact revision */
    ts_close(&t);
}

static void test_restart_and_replay(void)
{
    tstore t;
    ts_open(&t);
    ts_put(&t, "a", "1");
    ts_put(&t, "b", "2");
    ts_del(&t, "a", NULL);
    CHECK_EQ_INT(ts_compact(&t, 3, 0).status, MVCC_STATUS_OK);
    uint64_t applied = mvcc_applied_index(t.m);
    CHECK_EQ_INT(applied, 4);
    ts_reopen(&t);
    CHECK_EQ_INT(mvcc_applied_index(t.m), 4);
    CHECK_EQ_INT(mvcc_current_revision(t.m), 4);
    CHECK_EQ_INT(mvcc_compact_revision(t.m), 3);
    /* replayed entries are skipped */
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    p.key = bin("a");
    p.value = bin("replayed");
    Ballastpb__Op op = BALLASTPB__OP__INIT;
    op.op_case = BALLASTPB__OP__OP_PUT;
    op.put = &p;
    Ballastpb__Op *ops[1] = {&op};
    mvcc_result res = {-1, "x", 9, 9};
    t.out.len = 0;
    CHECK(mvcc_apply(t.m, 3, &t.h, ops, 1, &t.out, &res) == 0);
    CHECK_EQ_INT(res.status, MVCC_STATUS_OK);
    CHECK_EQ_INT(res.len, 0);
    CHECK(mvcc_apply(t.m, 4, &t.h, ops, 1, &t.out, &res) == 0);
    CHECK_EQ_INT(res.len, 0);
    CHECK_EQ_INT(mvcc_current_revision(t.m), 4);
    Etcdserverpb__RangeResponse *rr = ts_range(&t, "a", NULL, 0);
    CHECK_EQ_INT(rr->n_kvs, 0);
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    /* the next entry applies; versions continue */
    CHECK(mvcc_apply(t.m, 5, &t.h, ops, 1, &t.out, &res) == 0);
    CHECK(res.len > 0);
    t.index = 5;
    CHECK_EQ_INT(mvcc_current_revision(t.m), 5);
    CHECK_EQ_INT(ts_put(&t, "b", "3"), 6);
    rr = ts_range(&t, "b", NULL, 0);
    CHECK_EQ_INT(rr->kvs[0]->version, 2);
    CHECK_EQ_INT(rr->kvs[0]->create_revision, 3);
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    /* history survives a restart */
    ts_reopen(&t);
    rr = ts_range(&t, "a", "", 4);
    CHECK_EQ_INT(rr->n_kvs, 1);
    CHECK(kv_is(rr->kvs[0], "b", "2"));
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    CHECK(mvcc_sync(t.m) == 0);
    int64_t size, in_use;
    mvcc_db_size(t.m, &size, &in_use);
    CHECK(size >= 0 && in_use >= 0 && in_use <= size);
    ts_close(&t);
}

/* ---- randomized comparison with a model ---- */

#define NKEYS 6
#define MAXREV 700

typedef struct mkv {
    int exists;
    char value[16];
    int64_t create, mod, version;
} mkv;

static mkv model[MAXREV + 2][NKEYS]; /* state after each revision */
static const char *mkeys[NKEYS] = {"a", "a/x", "a/y", "b", "b\0", "c"};
static const size_t mklen[NKEYS] = {1, 3, 3, 1, 2, 1};

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void check_against_model(tstore *t, int64_t rev, int64_t cur)
{
    /* a range over everything, at rev, with and without count_only */
    Etcdserverpb__RangeRequest q = ETCDSERVERPB__RANGE_REQUEST__INIT;
    q.key = binn("\0", 1);
    q.range_end = binn("\0", 1);
    q.revision = rev;
    Etcdserverpb__RangeResponse *rr = ts_range_req(t, &q, NULL);
    CHECK(rr != NULL);
    CHECK_EQ_INT(rr->header->revision, cur);
    const mkv *st = model[rev ? rev : cur];
    size_t j = 0;
    for (int k = 0; k < NKEYS; k++) {
        if (!st[k].exists)
            continue;
        CHECK(j < rr->n_kvs);
        const Mvccpb__KeyValue *kv = rr->kvs[j++];
        CHECK(kv->key.len == mklen[k] && memcmp(kv->key.data, mkeys[k], mklen[k]) == 0);
        CHECK(kv->value.len == strlen(st[k].value) &&
              memcmp(kv->value.data, st[k].value, kv->value.len) == 0);
        CHECK_EQ_INT(kv->create_revision, st[k].create);
        CHECK_EQ_INT(kv->mod_revision, st[k].mod);
        CHECK_EQ_INT(kv->version, st[k].version);
    }
    CHECK_EQ_INT(rr->n_kvs, j);
    CHECK_EQ_INT(rr->count, j);
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    /* single keys */
    for (int k = 0; k < NKEYS; k++) {
        q.key = binn(mkeys[k], mklen[k]);
        q.range_end.len = 0;
        rr = ts_range_req(t, &q, NULL);
        CHECK_EQ_INT(rr->n_kvs, st[k].exists);
        if (st[k].exists)
            CHECK_EQ_INT(rr->kvs[0]->mod_revision, st[k].mod);
        etcdserverpb__range_response__free_unpacked(rr, NULL);
    }
}

static void test_model(void)
{
    tstore t;
    ts_open(&t);
    int64_t cur = 1;
    int64_t compacted = -1;
    memset(model, 0, sizeof(model));
    for (int step = 0; step < 1500 && cur < MAXREV; step++) {
        int k = (int)(rnd() % NKEYS);
        int what = (int)(rnd() % 10);
        if (what == 9 && rnd() % 4)
            what = (int)(rnd() % 9); /* compact rarely, to keep history to read */
        memcpy(model[cur + 1], model[cur], sizeof(model[0]));
        mkv *nx = model[cur + 1];
        if (what < 5) {
            char v[16];
            snprintf(v, sizeof(v), "v%d", step);
            Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
            p.key = binn(mkeys[k], mklen[k]);
            p.value = bin(v);
            etcdserverpb__put_response__free_unpacked(ts_put_req(&t, &p, NULL), NULL);
            cur++;
            if (!nx[k].exists) {
                nx[k].exists = 1;
                nx[k].create = cur;
                nx[k].version = 0;
            }
            nx[k].version++;
            nx[k].mod = cur;
            strcpy(nx[k].value, v);
        } else if (what < 7) {
            /* delete the key or a prefix range */
            Etcdserverpb__DeleteRangeRequest d = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
            d.key = binn(mkeys[k], mklen[k]);
            int range = what == 6;
            if (range)
                d.range_end = binn("b", 1);
            int n = 0;
            for (int i = 0; i < NKEYS; i++) {
                /* mkeys is sorted; the keys below "b" are the first three */
                int in = range ? (i >= k && i < 3) : i == k;
                if (in && nx[i].exists) {
                    nx[i].exists = 0;
                    n++;
                }
            }
            Etcdserverpb__DeleteRangeResponse *dr = ts_del_req(&t, &d);
            CHECK_EQ_INT(dr->deleted, n);
            etcdserverpb__delete_range_response__free_unpacked(dr, NULL);
            if (n)
                cur++;
        } else if (what < 9) {
            /* a txn: put one key, delete everything from another (with
             * "\0"), put the first key again through a nested txn */
            int k2 = (int)(rnd() % NKEYS);
            char v[16];
            snprintf(v, sizeof(v), "t%d", step);
            Etcdserverpb__PutRequest p1 = ETCDSERVERPB__PUT_REQUEST__INIT, p2;
            p1.key = binn(mkeys[k], mklen[k]);
            p1.value = bin(v);
            p2 = p1;
            Etcdserverpb__DeleteRangeRequest d = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
            d.key = binn(mkeys[k2], mklen[k2]);
            d.range_end = binn("\0", 1);
            Etcdserverpb__RequestOp o1 = ETCDSERVERPB__REQUEST_OP__INIT, o2 = o1, o3 = o1,
                                    o4 = o1;
            o1.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
            o1.request_put = &p1;
            o2.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
            o2.request_delete_range = &d;
            o3.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
            o3.request_put = &p2;
            Etcdserverpb__RequestOp *nested_ops[1] = {&o3};
            Etcdserverpb__TxnRequest nested = ETCDSERVERPB__TXN_REQUEST__INIT;
            nested.n_success = 1;
            nested.success = nested_ops;
            o4.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN;
            o4.request_txn = &nested;
            Etcdserverpb__RequestOp *ops[3] = {&o1, &o2, &o4};
            Etcdserverpb__TxnRequest tx = ETCDSERVERPB__TXN_REQUEST__INIT;
            tx.n_success = 3;
            tx.success = ops;
            Etcdserverpb__TxnResponse *r = ts_txn(&t, &tx, NULL);
            CHECK(r != NULL);
            cur++;
            CHECK_EQ_INT(r->header->revision, cur);
            etcdserverpb__txn_response__free_unpacked(r, NULL);
            /* model: put k, delete all >= k2, put k again */
            for (int pass = 0; pass < 2; pass++) {
                if (!nx[k].exists) {
                    nx[k].exists = 1;
                    nx[k].create = cur;
                    nx[k].version = 0;
                }
                nx[k].version++;
                nx[k].mod = cur;
                strcpy(nx[k].value, v);
                if (pass == 0)
                    for (int i = k2; i < NKEYS; i++)
                        nx[i].exists = 0;
            }
        } else if (compacted < cur) {
            /* compact somewhere in the past, sometimes physically */
            int64_t target = compacted + 1 + (int64_t)(rnd() % (uint64_t)(cur - compacted));
            if (target > cur)
                target = cur;
            mvcc_result r = ts_compact(&t, target, (int)(rnd() % 2));
            if (target <= compacted)
                CHECK_EQ_INT(r.status, MVCC_STATUS_OUT_OF_RANGE);
            else {
                CHECK_EQ_INT(r.status, MVCC_STATUS_OK);
                compacted = target;
            }
        }
        if (step % 97 == 0) {
            ts_reopen(&t);
            CHECK_EQ_INT(mvcc_current_revision(t.m), cur);
        }
        /* every readable revision matches the model */
        if (step % 10 == 0) {
            int64_t from = compacted > 1 ? compacted : 1;
            for (int64_t r = from; r <= cur; r++)
                check_against_model(&t, r, cur);
            check_against_model(&t, 0, cur);
        }
    }
    printf("model: revision %lld, compacted at %lld\n", (long long)cur, (long long)compacted);
    CHECK(mvcc_wait_compaction(t.m, compacted) == 0);
    int64_t from = compacted > 1 ? compacted : 1;
    for (int64_t r = from; r <= cur; r++)
        check_against_model(&t, r, cur);
    ts_close(&t);
}

/* ---- reads concurrent with apply ---- */

typedef struct reader_arg {
    tstore *t;
    atomic_bool *stop; /* shared by the readers, set by the writer */
    long reads;        /* this reader's own count */
} reader_arg;

static void *reader(void *p)
{
    reader_arg *a = p;
    mvcc_buf out = {0};
    while (!atomic_load(a->stop)) {
        Etcdserverpb__RangeRequest q = ETCDSERVERPB__RANGE_REQUEST__INIT;
        q.key = bin("x");
        q.range_end = bin("z");
        mvcc_result r;
        out.len = 0;
        CHECK(mvcc_range(a->t->m, &q, &a->t->h, &out, &r) == 0);
        CHECK_EQ_INT(r.status, 0);
        Etcdserverpb__RangeResponse *rr =
            etcdserverpb__range_response__unpack(NULL, r.len, out.data + r.off);
        CHECK(rr != NULL);
        /* x and y are always written together: a read sees both or neither */
        if (rr->n_kvs) {
            CHECK_EQ_INT(rr->n_kvs, 2);
            CHECK(rr->kvs[0]->value.len == rr->kvs[1]->value.len &&
                  memcmp(rr->kvs[0]->value.data, rr->kvs[1]->value.data,
                         rr->kvs[0]->value.len) == 0);
            CHECK_EQ_INT(rr->kvs[0]->mod_revision, rr->header->revision);
        }
        etcdserverpb__range_response__free_unpacked(rr, NULL);
        a->reads++;
    }
    free(out.data);
    return NULL;
}

static void test_concurrent_reads(void)
{
    tstore t;
    ts_open(&t);
    atomic_bool stop = false;
    reader_arg a[2] = {{&t, &stop, 0}, {&t, &stop, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&th[i], NULL, reader, &a[i]) == 0);
    for (int i = 0; i < 2000; i++) {
        char v[16];
        snprintf(v, sizeof(v), "%d", i);
        Etcdserverpb__PutRequest px = ETCDSERVERPB__PUT_REQUEST__INIT, py;
        px.key = bin("x");
        px.value = bin(v);
        py = px;
        py.key = bin("y");
        Ballastpb__Op o[2] = {BALLASTPB__OP__INIT, BALLASTPB__OP__INIT};
        Etcdserverpb__RequestOp r1 = ETCDSERVERPB__REQUEST_OP__INIT, r2 = r1;
        r1.request_case = r2.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
        r1.request_put = &px;
        r2.request_put = &py;
        Etcdserverpb__RequestOp *ops[2] = {&r1, &r2};
        Etcdserverpb__TxnRequest tx = ETCDSERVERPB__TXN_REQUEST__INIT;
        tx.n_success = 2;
        tx.success = ops;
        o[0].op_case = BALLASTPB__OP__OP_TXN;
        o[0].txn = &tx;
        o[1].op_case = BALLASTPB__OP__OP_COMPACTION;
        Etcdserverpb__CompactionRequest c = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
        c.revision = i + 1;
        o[1].compaction = &c;
        Ballastpb__Op *ops2[2] = {&o[0], &o[1]};
        mvcc_result res[2];
        t.out.len = 0;
        CHECK(mvcc_apply(t.m, ++t.index, &t.h, ops2, (i % 50 == 49) ? 2 : 1, &t.out, res) == 0);
        CHECK_EQ_INT(res[0].status, 0);
    }
    atomic_store(&stop, true);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    CHECK(a[0].reads + a[1].reads > 0);
    ts_close(&t);
}

int main(void)
{
    test_compact_errors();
    test_physical_removal();
    test_restart_and_replay();
    test_model();
    test_concurrent_reads();
    printf("test_mvcc_compact: ok\n");
    return 0;
}
