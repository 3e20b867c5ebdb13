/* The watch hub's protocol, response by response, as etcd 3.4.23 answers:
 * created / failed creates, ids, cancel, progress, events with prev_kv and
 * filters, txns, history replay, compaction, future starts, fragments,
 * progress notifications. */
#include "watch_test.h"

static void check_hdr(const Etcdserverpb__WatchResponse *r, int64_t rev)
{
    CHECK(r->header != NULL);
    CHECK_EQ_INT(r->header->cluster_id, 11);
    CHECK_EQ_INT(r->header->member_id, 22);
    CHECK_EQ_INT(r->header->raft_term, 3);
    CHECK_EQ_INT(r->header->revision, rev);
}

static void check_created(fake *f, int64_t id, int64_t rev)
{
    Etcdserverpb__WatchResponse *r = fake_must(f);
    check_hdr(r, rev);
    CHECK_EQ_INT(r->watch_id, id);
    CHECK(r->created && !r->canceled && r->n_events == 0 && r->compact_revision == 0);
    CHECK(r->cancel_reason == NULL || r->cancel_reason[0] == 0);
}

static void check_failed(fake *f, int64_t rev, const char *reason)
{
    Etcdserverpb__WatchResponse *r = fake_must(f);
    check_hdr(r, rev);
    CHECK_EQ_INT(r->watch_id, -1);
    CHECK(r->created && r->canceled && r->n_events == 0);
    CHECK(r->cancel_reason && strcmp(r->cancel_reason, reason) == 0);
}

/* Nothing more arrives: a progress request's answer is the next message. */
static void check_quiet(fake *f, int64_t rev)
{
    w_progress(f);
    Etcdserverpb__WatchResponse *r = fake_must(f);
    check_hdr(r, rev);
    CHECK_EQ_INT(r->watch_id, -1);
    CHECK(!r->created && !r->canceled && r->n_events == 0);
}

static Etcdserverpb__WatchResponse *events_of(fake *f, int64_t id, size_t n)
{
    Etcdserverpb__WatchResponse *r = fake_must(f);
    CHECK_EQ_INT(r->watch_id, id);
    CHECK(!r->created && !r->canceled && !r->fragment);
    CHECK_EQ_INT(r->n_events, n);
    return r;
}

static int by_id(const void *a, const void *b)
{
    const Etcdserverpb__WatchResponse *x = *(Etcdserverpb__WatchResponse *const *)a;
    const Etcdserverpb__WatchResponse *y = *(Etcdserverpb__WatchResponse *const *)b;
    return x->watch_id < y->watch_id ? -1 : x->watch_id > y->watch_id;
}

/* The next n messages (one revision's responses), ordered by watch id. */
static void take_sorted(fake *f, size_t n, Etcdserverpb__WatchResponse **out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = fake_must(f);
    qsort(out, n, sizeof(*out), by_id);
}

static void test_create_and_events(void)
{
    tstore t;
    ts_open(&t);
    watch_hub *h = hub_start(&t, 0, 1 << 20, 0, 0);
    fake f;
    fake_init(&f, h);
    w_create(&f, "a", (wopts){0});
    check_created(&f, 0, 1);
    w_create(&f, "a", (wopts){.end = "b"});
    check_created(&f, 1, 1);
    ts_put(&t, "a", "1"); /* 2 */
    Etcdserverpb__WatchResponse *r = events_of(&f, 0, 1);
    check_hdr(r, 2);
    CHECK(ev_is(r->events[0], 0, "a", "1", 2));
    CHECK_EQ_INT(r->events[0]->kv->create_revision, 2);
    CHECK_EQ_INT(r->events[0]->kv->version, 1);
    CHECK(r->events[0]->prev_kv == NULL);
    r = events_of(&f, 1, 1);
    check_hdr(r, 2);
    ts_put(&t, "a/x", "2"); /* 3: only the range */
    r = events_of(&f, 1, 1);
    CHECK(ev_is(r->events[0], 0, "a/x", "2", 3));
    ts_put(&t, "b", "3"); /* 4: neither ("b" is the range's end) */
    ts_del(&t, "a", NULL); /* 5 */
    r = events_of(&f, 0, 1);
    check_hdr(r, 5);
    /* a DELETE's kv holds the key and mod_revision only */
    CHECK(ev_is(r->events[0], 1, "a", "", 5));
    CHECK_EQ_INT(r->events[0]->kv->create_revision, 0);
    CHECK_EQ_INT(r->events[0]->kv->version, 0);
    r = events_of(&f, 1, 1);
    CHECK(ev_is(r->events[0], 1, "a", "", 5));
    check_quiet(&f, 5);

    /* key "" means "\0"; range_end "\0" means every key >= key */
    w_create(&f, "", (wopts){.end = ""});
    check_created(&f, 2, 5);
    w_create(&f, "b", (wopts){.end = ""});
    check_created(&f, 3, 5);
    w_create(&f, "", (wopts){0}); /* the single key "\0" */
    check_created(&f, 4, 5);
    ts_put(&t, "z", "4"); /* 6 */
    Etcdserverpb__WatchResponse *rs[2];
    take_sorted(&f, 2, rs);
    CHECK(rs[0]->watch_id == 2 && ev_is(rs[0]->events[0], 0, "z", "4", 6));
    CHECK(rs[1]->watch_id == 3 && ev_is(rs[1]->events[0], 0, "z", "4", 6));
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    p.key = binn("\0", 1);
    p.value = bin("nul");
    etcdserverpb__put_response__free_unpacked(ts_put_req(&t, &p, NULL), NULL); /* 7: "\0" */
    take_sorted(&f, 2, rs);
    CHECK(rs[0]->watch_id == 2 && rs[0]->n_events == 1);
    CHECK_EQ_INT(rs[0]->events[0]->kv->mod_revision, 7);
    CHECK(rs[1]->watch_id == 4 && rs[1]->n_events == 1);
    CHECK(rs[1]->events[0]->kv->key.len == 1 && rs[1]->events[0]->kv->key.data[0] == 0);
    check_quiet(&f, 7);
    fake_close(&f);
    watch_hub_stop(h);
    ts_close(&t);
}

static void test_ids_cancel_errors(void)
{
    tstore t;
    ts_open(&t);
    watch_hub *h = hub_start(&t, 0, 1 << 20, 0, 0);
    fake f, g;
    fake_init(&f, h);
    fake_init(&g, h);
    ts_put(&t, "k", "v"); /* 2 */
    /* empty ranges fail without using an id */
    w_create(&f, "b", (wopts){.end = "a"});
    check_failed(&f, 2, "mvcc: watcher range is empty");
    w_create(&f, "a", (wopts){.end = "a"});
    check_failed(&f, 2, "mvcc: watcher range is empty");
    w_create(&f, "k", (wopts){0});
    check_created(&f, 0, 2);
    w_create(&f, "k", (wopts){.id = 1});
    check_created(&f, 1, 2);
    w_create(&f, "k", (wopts){.id = 7});
    check_created(&f, 7, 2);
    w_create(&f, "k", (wopts){.id = 7});
    check_failed(&f, 2, "mvcc: duplicate watch ID provided on the WatchStream");
    w_create(&f, "k", (wopts){0}); /* skips 1 */
    check_created(&f, 2, 2);
    /* ids are per stream */
    w_create(&g, "k", (wopts){0});
    check_created(&g, 0, 2);
    w_create(&g, "k", (wopts){.id = 1});
    check_created(&g, 1, 2);
    /* cancel */
    w_cancel(&f, 0);
    Etcdserverpb__WatchResponse *r = fake_must(&f);
    check_hdr(r, 2);
    CHECK(r->watch_id == 0 && r->canceled && !r->created && r->n_events == 0);
    w_cancel(&f, 0);  /* unknown now: no answer */
    w_cancel(&f, 99); /* never existed: no answer */
    check_quiet(&f, 2);
    w_create(&f, "k", (wopts){0}); /* ids are not reused */
    check_created(&f, 3, 2);
    ts_put(&t, "k", "w"); /* 3 */
    int64_t seen[4] = {0};
    for (int i = 0; i < 4; i++) {
        r = fake_must(&f);
        CHECK_EQ_INT(r->n_events, 1);
        CHECK(ev_is(r->events[0], 0, "k", "w", 3));
        CHECK(r->watch_id >= 1 && r->watch_id <= 7);
        seen[i] = r->watch_id;
    }
    CHECK(seen[0] + seen[1] + seen[2] + seen[3] == 1 + 7 + 2 + 3);
    check_quiet(&f, 3);
    for (int i = 0; i < 2; i++)
        CHECK_EQ_INT(fake_must(&g)->n_events, 1);
    check_quiet(&g, 3);
    fake_close(&f);
    fake_close(&g);
    watch_hub_stop(h);
    ts_close(&t);
}

static Etcdserverpb__RequestOp *op_put(const char *k, const char *v)
{
    Etcdserverpb__PutRequest *p = calloc(1, sizeof(*p));
    etcdserverpb__put_request__init(p);
    p->key = bin(k);
    p->value = bin(v);
    Etcdserverpb__RequestOp *o = calloc(1, sizeof(*o));
    etcdserverpb__request_op__init(o);
    o->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
    o->request_put = p;
    return o;
}

static Etcdserverpb__RequestOp *op_del(const char *k, const char *end)
{
    Etcdserverpb__DeleteRangeRequest *d = calloc(1, sizeof(*d));
    etcdserverpb__delete_range_request__init(d);
    d->key = bin(k);
    if (end)
        d->range_end = bin(end);
    Etcdserverpb__RequestOp *o = calloc(1, sizeof(*o));
    etcdserverpb__request_op__init(o);
    o->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
    o->request_delete_range = d;
    return o;
}

static void op_free(Etcdserverpb__RequestOp *o)
{
    free(o->request_put); /* either member: same pointer slot */
    free(o);
}

/* One txn; returns its revision. */
static int64_t txn3(tstore *t, Etcdserverpb__RequestOp *a, Etcdserverpb__RequestOp *b,
                    Etcdserverpb__RequestOp *c)
{
    Etcdserverpb__RequestOp *ops[3] = {a, b, c};
    Etcdserverpb__TxnRequest txn = ETCDSERVERPB__TXN_REQUEST__INIT;
    txn.success = ops;
    txn.n_success = c ? 3 : 2;
    Etcdserverpb__TxnResponse *r = ts_txn(t, &txn, NULL);
    CHECK(r != NULL);
    int64_t rev = r->header->revision;
    etcdserverpb__txn_response__free_unpacked(r, NULL);
    op_free(a);
    op_free(b);
    if (c)
        op_free(c);
    return rev;
}

/* Applies three puts as one raft entry (three revisions). */
static void entry3(tstore *t, const char *k1, const char *k2, const char *k3)
{
    Etcdserverpb__PutRequest p[3];
    Ballastpb__Op op[3];
    Ballastpb__Op *ops[3];
    const char *ks[3] = {k1, k2, k3};
    for (int i = 0; i < 3; i++) {
        etcdserverpb__put_request__init(&p[i]);
        p[i].key = bin(ks[i]);
        p[i].value = bin("e");
        ballastpb__op__init(&op[i]);
        op[i].op_case = BALLASTPB__OP__OP_PUT;
        op[i].put = &p[i];
        ops[i] = &op[i];
    }
    mvcc_result res[3];
    t->out.len = 0;
    CHECK(mvcc_apply(t->m, ++t->index, &t->h, ops, 3, &t->out, res) == 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(res[i].status, MVCC_STATUS_OK);
}

static void test_prev_kv_filters_txn(void)
{
    tstore t;
    ts_open(&t);
    watch_hub *h = hub_start(&t, 0, 1 << 20, 0, 0);
    fake f;
    fake_init(&f, h);
    w_create(&f, "a", (wopts){.end = "d", .prev_kv = true});
    check_created(&f, 0, 1);
    w_create(&f, "a", (wopts){.end = "d", .noput = true});
    check_created(&f, 1, 1);
    w_create(&f, "a", (wopts){.end = "d", .nodelete = true});
    check_created(&f, 2, 1);
    w_create(&f, "a", (wopts){.end = "d", .noput = true, .nodelete = true});
    check_created(&f, 3, 1);
    ts_put(&t, "a", "1"); /* 2 */
    Etcdserverpb__WatchResponse *r = events_of(&f, 0, 1);
    CHECK(ev_is(r->events[0], 0, "a", "1", 2) && r->events[0]->prev_kv == NULL);
    r = events_of(&f, 2, 1);
    CHECK(r->events[0]->prev_kv == NULL); /* not asked */
    ts_put(&t, "a", "2"); /* 3 */
    r = events_of(&f, 0, 1);
    CHECK(ev_is(r->events[0], 0, "a", "2", 3));
    CHECK(r->events[0]->prev_kv && kv_is(r->events[0]->prev_kv, "a", "1"));
    CHECK_EQ_INT(r->events[0]->prev_kv->mod_revision, 2);
    events_of(&f, 2, 1);
    /* a txn: one revision, events in op order, one response per watcher */
    int64_t rev = txn3(&t, op_put("c", "x"), op_del("a", NULL), op_put("b", "y")); /* 4 */
    CHECK_EQ_INT(rev, 4);
    Etcdserverpb__WatchResponse *rs[3];
    take_sorted(&f, 3, rs);
    r = rs[0];
    CHECK_EQ_INT(r->watch_id, 0);
    CHECK_EQ_INT(r->n_events, 3);
    check_hdr(r, 4);
    CHECK(ev_is(r->events[0], 0, "c", "x", 4) && r->events[0]->prev_kv == NULL);
    CHECK(ev_is(r->events[1], 1, "a", "", 4));
    CHECK(r->events[1]->prev_kv && kv_is(r->events[1]->prev_kv, "a", "2"));
    CHECK(ev_is(r->events[2], 0, "b", "y", 4));
    r = rs[1]; /* NOPUT: the delete only */
    CHECK(r->watch_id == 1 && r->n_events == 1);
    CHECK(ev_is(r->events[0], 1, "a", "", 4));
    r = rs[2]; /* NODELETE: the puts */
    CHECK(r->watch_id == 2 && r->n_events == 2);
    CHECK(ev_is(r->events[0], 0, "c", "x", 4) && ev_is(r->events[1], 0, "b", "y", 4));
    /* watcher 3 filters everything: it is never sent an empty response */
    check_quiet(&f, 4);

    /* history of the same changes, from the store */
    w_create(&f, "a", (wopts){.end = "d", .start = 2, .prev_kv = true});
    check_created(&f, 4, 4);
    r = events_of(&f, 4, 5);
    check_hdr(r, 4);
    CHECK(ev_is(r->events[0], 0, "a", "1", 2) && r->events[0]->prev_kv == NULL);
    CHECK(ev_is(r->events[1], 0, "a", "2", 3) && kv_is(r->events[1]->prev_kv, "a", "1"));
    CHECK(ev_is(r->events[2], 0, "c", "x", 4) && r->events[2]->prev_kv == NULL);
    CHECK(ev_is(r->events[3], 1, "a", "", 4) && kv_is(r->events[3]->prev_kv, "a", "2"));
    CHECK_EQ_INT(r->events[3]->prev_kv->version, 2);
    CHECK(ev_is(r->events[4], 0, "b", "y", 4));
    w_create(&f, "a", (wopts){.end = "d", .start = 3, .noput = true});
    check_created(&f, 5, 4);
    r = events_of(&f, 5, 1);
    CHECK(ev_is(r->events[0], 1, "a", "", 4) && r->events[0]->prev_kv == NULL);
    w_create(&f, "a", (wopts){.end = "d", .start = 2, .noput = true, .nodelete = true});
    check_created(&f, 6, 4);
    check_quiet(&f, 4);

    /* an entry of three revisions; watching from its middle */
    entry3(&t, "a", "b", "c"); /* 5, 6, 7 */
    for (int64_t rv = 5; rv <= 7; rv++) {
        take_sorted(&f, 3, rs);
        for (int i = 0; i < 3; i++) {
            CHECK_EQ_INT(rs[i]->watch_id, 2 * i); /* 0, 2, 4 */
            CHECK_EQ_INT(rs[i]->n_events, 1);
            check_hdr(rs[i], rv);
            CHECK_EQ_INT(rs[i]->events[0]->kv->mod_revision, rv);
        }
    }
    check_quiet(&f, 7);
    w_create(&f, "a", (wopts){.end = "d", .start = 6});
    check_created(&f, 7, 7);
    r = events_of(&f, 7, 2);
    CHECK(ev_is(r->events[0], 0, "b", "e", 6) && ev_is(r->events[1], 0, "c", "e", 7));
    /* a future start inside the next entry */
    w_create(&f, "a", (wopts){.end = "d", .start = 9});
    check_created(&f, 8, 7);
    check_quiet(&f, 7);
    w_cancel(&f, 0);
    fake_must(&f);
    w_cancel(&f, 2);
    fake_must(&f);
    w_cancel(&f, 4);
    fake_must(&f);
    w_cancel(&f, 7);
    fake_must(&f);
    entry3(&t, "a", "b", "c"); /* 8, 9, 10 */
    r = events_of(&f, 8, 1);
    check_hdr(r, 9);
    CHECK(ev_is(r->events[0], 0, "b", "e", 9));
    r = events_of(&f, 8, 1);
    check_hdr(r, 10);
    check_quiet(&f, 10);
    fake_close(&f);
    watch_hub_stop(h);
    ts_close(&t);
}

/* A txn that changes a key twice: each event's prev_kv is the key before
 * the txn (etcd reads it at revision - 1), live or from history. */
static void test_prev_kv_same_txn(void)
{
    tstore t;
    ts_open(&t);
    watch_hub *h = hub_start(&t, 0, 1 << 20, 0, 0);
    fake f;
    fake_init(&f, h);
    ts_put(&t, "q", "v1"); /* 2 */
    w_create(&f, "", (wopts){.end = "", .prev_kv = true});
    check_created(&f, 0, 2);
    txn3(&t, op_put("q", "v2"), op_del("q", NULL), op_put("n", "new"));  /* 3 */
    txn3(&t, op_del("n", NULL), op_put("n", "again"), NULL);              /* 4 */
    for (int pass = 0; pass < 2; pass++) {
        Etcdserverpb__WatchResponse *r = events_of(&f, pass, pass ? 6 : 3);
        size_t o = 0;
        if (pass) {
            CHECK(ev_is(r->events[0], 0, "q", "v1", 2) && r->events[0]->prev_kv == NULL);
            o = 1;
        }
        CHECK(ev_is(r->events[o], 0, "q", "v2", 3));
        CHECK(r->events[o]->prev_kv && kv_is(r->events[o]->prev_kv, "q", "v1"));
        CHECK(ev_is(r->events[o + 1], 1, "q", "", 3));
        CHECK(r->events[o + 1]->prev_kv && kv_is(r->events[o + 1]->prev_kv, "q", "v1"));
        CHECK(ev_is(r->events[o + 2], 0, "n", "new", 3) && r->events[o + 2]->prev_kv == NULL);
        if (!pass) {
            r = events_of(&f, 0, 2);
            o = 0;
        } else {
            o += 3;
        }
        CHECK(ev_is(r->events[o], 1, "n", "", 4));
        CHECK(r->events[o]->prev_kv && kv_is(r->events[o]->prev_kv, "n", "new"));
        CHECK(ev_is(r->events[o + 1], 0, "n", "again", 4) && r->events[o + 1]->prev_kv == NULL);
        if (!pass) {
            w_create(&f, "", (wopts){.end = "", .prev_kv = true, .start = 2});
            check_created(&f, 1, 4);
        }
    }
    check_quiet(&f, 4);
    fake_close(&f);
    watch_hub_stop(h);
    ts_close(&t);
}

static void test_compaction(void)
{
    tstore t;
    ts_open(&t);
    for (int i = 0; i < 8; i++)
        ts_put(&t, i % 2 ? "a" : "b", "v"); /* 2..9 */
    CHECK_EQ_INT(ts_compact(&t, 5, 0).status, MVCC_STATUS_OK);
    watch_hub *h = hub_start(&t, 0, 1 << 20, 0, 0);
    fake f;
    fake_init(&f, h);
    w_create(&f, "a", (wopts){.start = 3});
    check_created(&f, 0, 9);
    Etcdserverpb__WatchResponse *r = fake_must(&f);
    /* etcd: header revision 0, compact_revision, canceled, no reason */
    CHECK(r->header != NULL);
    CHECK_EQ_INT(r->header->revision, 0);
    CHECK_EQ_INT(r->header->cluster_id, 11);
    CHECK_EQ_INT(r->watch_id, 0);
    CHECK_EQ_INT(r->compact_revision, 5);
    CHECK(r->canceled && !r->created && r->n_events == 0);
    CHECK(r->cancel_reason == NULL || r->cancel_reason[0] == 0);
    /* the id stays taken until canceled; cancel then answers */
    w_create(&f, "a", (wopts){.id = 0});
    check_created(&f, 1, 9); /* id 0 means "assign one" */
    w_cancel(&f, 0);
    r = fake_must(&f);
    CHECK(r->watch_id == 0 && r->canceled && r->compact_revision == 0);
    check_hdr(r, 9);
    /* starting at the compact revision itself works */
    w_create(&f, "a", (wopts){.start = 5, .prev_kv = true});
    check_created(&f, 2, 9);
    r = events_of(&f, 2, 3);
    CHECK(ev_is(r->events[0], 0, "a", "v", 5) && ev_is(r->events[1], 0, "a", "v", 7) &&
          ev_is(r->events[2], 0, "a", "v", 9));
    CHECK(r->events[0]->prev_kv == NULL); /* a read at 4 is compacted */
    CHECK(r->events[1]->prev_kv && r->events[1]->prev_kv->mod_revision == 5);
    w_create(&f, "b", (wopts){.start = 4});
    r = fake_must(&f);
    CHECK(r->created && r->watch_id == 3);
    r = fake_must(&f);
    CHECK(r->watch_id == 3 && r->compact_revision == 5 && r->canceled);
    /* a negative start counts as compacted too */
    w_create(&f, "b", (wopts){.start = -3});
    check_created(&f, 4, 9);
    r = fake_must(&f);
    CHECK(r->watch_id == 4 && r->compact_revision == 5 && r->canceled);
    check_quiet(&f, 9);
    /* compaction while a watcher is synced does not touch it */
    CHECK_EQ_INT(ts_compact(&t, 9, 1).status, MVCC_STATUS_OK);
    ts_put(&t, "a", "w"); /* 10 */
    r = events_of(&f, 1, 1);
    r = events_of(&f, 2, 1);
    CHECK(ev_is(r->events[0], 0, "a", "w", 10));
    CHECK(r->events[0]->prev_kv && r->events[0]->prev_kv->mod_revision == 9);
    check_quiet(&f, 10);
    fake_close(&f);
    watch_hub_stop(h);
    ts_close(&t);
}

static void test_fragments(void)
{
    tstore t;
    ts_open(&t);
    /* limit = 1 + 512 KiB: two 200 KiB events fit, three do not */
    watch_hub *h = hub_start(&t, 1, 64 << 20, 0, 0);
    fake f;
    fake_init(&f, h);
    w_create(&f, "k", (wopts){.end = "l", .fragment = true});
    check_created(&f, 0, 1);
    w_create(&f, "k", (wopts){.end = "l"});
    check_created(&f, 1, 1);
    size_t big = 200 * 1024;
    char *v = malloc(big + 1);
    memset(v, 'x', big);
    v[big] = 0;
    Etcdserverpb__RequestOp *ops[6];
    char keys[6][4];
    for (int i = 0; i < 6; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%d", i);
        ops[i] = op_put(keys[i], v);
    }
    Etcdserverpb__TxnRequest txn = ETCDSERVERPB__TXN_REQUEST__INIT;
    txn.success = ops;
    txn.n_success = 6;
    Etcdserverpb__TxnResponse *tr = ts_txn(&t, &txn, NULL);
    CHECK(tr != NULL);
    etcdserverpb__txn_response__free_unpacked(tr, NULL);
    /* a small single event is never fragmented */
    ts_put(&t, "k9", "small"); /* 3 */
    int64_t want_id[2] = {0, 1};
    (void)want_id;
    size_t got0 = 0;
    for (int part = 0; part < 3; part++) {
        Etcdserverpb__WatchResponse *r = fake_must(&f);
        CHECK_EQ_INT(r->watch_id, 0);
        check_hdr(r, 2);
        CHECK_EQ_INT(r->n_events, 2);
        CHECK(r->fragment == (part < 2));
        for (size_t i = 0; i < r->n_events; i++)
            CHECK(r->events[i]->kv->key.data[1] == '0' + (int)(got0++));
    }
    Etcdserverpb__WatchResponse *r = fake_must(&f);
    CHECK_EQ_INT(r->watch_id, 1);
    CHECK_EQ_INT(r->n_events, 6);
    CHECK(!r->fragment);
    r = events_of(&f, 0, 1);
    r = events_of(&f, 1, 1);
    check_quiet(&f, 3);
    /* history is cut the same way */
    w_create(&f, "k", (wopts){.end = "l", .fragment = true, .start = 2});
    check_created(&f, 2, 3);
    size_t evs = 0;
    for (int part = 0; part < 3; part++) {
        r = fake_must(&f);
        CHECK_EQ_INT(r->watch_id, 2);
        CHECK(r->fragment == (part < 2));
        evs += r->n_events;
    }
    CHECK_EQ_INT(evs, 7);
    check_quiet(&f, 3);
    for (int i = 0; i < 6; i++)
        op_free(ops[i]);
    free(v);
    fake_close(&f);
    watch_hub_stop(h);
    ts_close(&t);
}

static void test_progress(void)
{
    tstore t;
    ts_open(&t);
    ts_put(&t, "p", "1"); /* 2 */
    watch_hub *h = hub_start(&t, 0, 1 << 20, 100, 0);
    fake f;
    fake_init(&f, h);
    w_create(&f, "p", (wopts){.progress = true});
    check_created(&f, 0, 2);
    w_create(&f, "q", (wopts){0});
    check_created(&f, 1, 2);
    w_create(&f, "r", (wopts){.progress = true, .start = 50});
    check_created(&f, 2, 2);
    int got0 = 0, got2 = 0;
    for (int i = 0; i < 4; i++) {
        Etcdserverpb__WatchResponse *r = fake_next(&f, 1000);
        CHECK(r != NULL);
        check_hdr(r, 2);
        CHECK(!r->created && !r->canceled && r->n_events == 0);
        CHECK(r->watch_id == 0 || r->watch_id == 2);
        if (r->watch_id == 0)
            got0++;
        else
            got2++;
    }
    CHECK(got0 >= 1 && got2 >= 1);
    /* events since the last tick: that tick sends no progress */
    w_cancel(&f, 2);
    for (;;) {
        Etcdserverpb__WatchResponse *r = fake_must(&f);
        if (r->canceled)
            break;
    }
    int progress_after_event = 0, events = 0;
    for (int i = 0; i < 30; i++) {
        ts_put(&t, "p", "x");
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    while (events < 30) {
        Etcdserverpb__WatchResponse *r = fake_must(&f);
        if (r->n_events)
            events++;
        else
            progress_after_event++;
    }
    CHECK_EQ_INT(events, 30);
    CHECK(progress_after_event <= 1); /* one tick may fall before the first put */
    fake_close(&f);
    watch_hub_stop(h);
    ts_close(&t);
}

static void test_close_and_stop(void)
{
    tstore t;
    ts_open(&t);
    watch_hub *h = hub_start(&t, 0, 1 << 20, 0, 0);
    fake f, g;
    fake_init(&f, h);
    fake_init(&g, h);
    w_create(&f, "a", (wopts){0});
    w_create(&g, "a", (wopts){.start = 1});
    check_created(&f, 0, 1);
    fake_close(&f);
    ts_put(&t, "a", "1");
    check_created(&g, 0, 1);
    CHECK_EQ_INT(fake_must(&g)->n_events, 1);
    watch_hub_stats st;
    watch_hub_get_stats(h, &st);
    CHECK_EQ_INT(st.streams, 1);
    CHECK_EQ_INT(st.synced_watchers + st.unsynced_watchers, 1);
    /* stop releases the streams still open */
    watch_hub_stop(h);
    CHECK(g.released);
    for (size_t i = 0; i < g.n; i++)
        etcdserverpb__watch_response__free_unpacked(g.m[i], NULL);
    free(g.m);
    ts_put(&t, "a", "2"); /* no hook any more */
    ts_close(&t);
}

/* With no watcher and no create on its way, apply does not copy events:
 * the hub only learns which revisions went by. A watcher made afterwards
 * starts at the last of them and reads older ones from storage. */
static void test_no_watchers(void)
{
    tstore t;
    ts_open(&t);
    watch_hub *h = hub_start(&t, 0, 1 << 20, 0, 0);
    fake f;
    fake_init(&f, h);
    ts_put(&t, "a", "1"); /* 2 */
    ts_put(&t, "b", "2"); /* 3 */
    ts_put(&t, "a", "3"); /* 4 */
    watch_hub_stats st;
    watch_hub_get_stats(h, &st);
    CHECK_EQ_INT(st.revisions_skipped, 3);
    check_quiet(&f, 4);
    w_create(&f, "a", (wopts){0});
    check_created(&f, 0, 4);
    w_create(&f, "a", (wopts){.start = 2, .prev_kv = true});
    check_created(&f, 1, 4);
    Etcdserverpb__WatchResponse *r = events_of(&f, 1, 2);
    CHECK(ev_is(r->events[0], 0, "a", "1", 2));
    CHECK(ev_is(r->events[1], 0, "a", "3", 4));
    CHECK(r->events[1]->prev_kv && r->events[1]->prev_kv->mod_revision == 2);
    ts_put(&t, "a", "4"); /* 5: both watchers, no skipping */
    Etcdserverpb__WatchResponse *rs[2];
    take_sorted(&f, 2, rs);
    CHECK(rs[0]->watch_id == 0 && ev_is(rs[0]->events[0], 0, "a", "4", 5));
    CHECK(rs[1]->watch_id == 1 && ev_is(rs[1]->events[0], 0, "a", "4", 5));
    watch_hub_get_stats(h, &st);
    CHECK_EQ_INT(st.revisions_skipped, 3);
    /* all cancelled: skipping again, and a later watcher still sees only
     * what comes after it */
    w_cancel(&f, 0);
    w_cancel(&f, 1);
    fake_must(&f);
    fake_must(&f);
    check_quiet(&f, 5);
    /* the hub publishes its watcher count after each round */
    for (int i = 0; i < 2000; i++) {
        watch_hub_get_stats(h, &st);
        if (st.synced_watchers + st.unsynced_watchers == 0)
            break;
        usleep(1000);
    }
    CHECK_EQ_INT(st.synced_watchers + st.unsynced_watchers, 0);
    ts_put(&t, "a", "5"); /* 6 */
    ts_del(&t, "a", NULL); /* 7 */
    watch_hub_get_stats(h, &st);
    CHECK_EQ_INT(st.revisions_skipped, 5);
    w_create(&f, "a", (wopts){0});
    check_created(&f, 2, 7);
    ts_put(&t, "a", "6"); /* 8 */
    r = events_of(&f, 2, 1);
    check_hdr(r, 8);
    CHECK(ev_is(r->events[0], 0, "a", "6", 8));
    check_quiet(&f, 8);
    fake_close(&f);
    watch_hub_stop(h);
    ts_close(&t);
}

int main(void)
{
    test_create_and_events();
    test_ids_cancel_errors();
    test_prev_kv_filters_txn();
    test_prev_kv_same_txn();
    test_compaction();
    test_fragments();
    test_progress();
    test_close_and_stop();
    test_no_watchers();
    printf("test_watch: ok\n");
    return 0;
}
