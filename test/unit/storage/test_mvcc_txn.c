/* Txn: compares, branches, nested txns, response headers, pre-checks,
 * errors during apply, validation (too many ops, duplicate keys), and
 * several ops in one entry. Expected values were taken from etcd 3.4.23. */
#include "storage_test.h"

#define MAXOPS 16

/* Small builders; everything lives in static pools for the test's length. */
static Etcdserverpb__RequestOp op_pool[512];
static Etcdserverpb__PutRequest put_pool[256];
static Etcdserverpb__RangeRequest range_pool[256];
static Etcdserverpb__DeleteRangeRequest del_pool[256];
static Etcdserverpb__TxnRequest txn_pool[128];
static Etcdserverpb__Compare cmp_pool[256];
static Etcdserverpb__Compare *clist_pool[128][MAXOPS];
static size_t n_op, n_put, n_range, n_del, n_txn, n_cmp;

static void pools_reset(void)
{
    n_op = n_put = n_range = n_del = n_txn = n_cmp = 0;
}

static Etcdserverpb__RequestOp *op_put(const char *k, const char *v)
{
    Etcdserverpb__PutRequest *p = &put_pool[n_put++];
    *p = (Etcdserverpb__PutRequest)ETCDSERVERPB__PUT_REQUEST__INIT;
    p->key = bin(k);
    p->value = bin(v);
    Etcdserverpb__RequestOp *o = &op_pool[n_op++];
    *o = (Etcdserverpb__RequestOp)ETCDSERVERPB__REQUEST_OP__INIT;
    o->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
    o->request_put = p;
    return o;
}

static Etcdserverpb__RequestOp *op_range(const char *k, const char *end, int64_t rev)
{
    Etcdserverpb__RangeRequest *q = &range_pool[n_range++];
    *q = (Etcdserverpb__RangeRequest)ETCDSERVERPB__RANGE_REQUEST__INIT;
    q->key = bin(k);
    if (end)
        q->range_end = binn(end, end[0] ? strlen(end) : 1);
    q->revision = rev;
    Etcdserverpb__RequestOp *o = &op_pool[n_op++];
    *o = (Etcdserverpb__RequestOp)ETCDSERVERPB__REQUEST_OP__INIT;
    o->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
    o->request_range = q;
    return o;
}

static Etcdserverpb__RequestOp *op_del(const char *k, const char *end)
{
    Etcdserverpb__DeleteRangeRequest *d = &del_pool[n_del++];
    *d = (Etcdserverpb__DeleteRangeRequest)ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    d->key = bin(k);
    if (end)
        d->range_end = binn(end, end[0] ? strlen(end) : 1);
    d->prev_kv = 1;
    Etcdserverpb__RequestOp *o = &op_pool[n_op++];
    *o = (Etcdserverpb__RequestOp)ETCDSERVERPB__REQUEST_OP__INIT;
    o->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
    o->request_delete_range = d;
    return o;
}

static Etcdserverpb__Compare *cmp_int(const char *k, const char *end, int target, int result,
                                      int64_t v)
{
    Etcdserverpb__Compare *c = &cmp_pool[n_cmp++];
    *c = (Etcdserverpb__Compare)ETCDSERVERPB__COMPARE__INIT;
    c->key = bin(k);
    if (end)
        c->range_end = binn(end, end[0] ? strlen(end) : 1);
    c->target = target;
    c->result = result;
    switch (target) {
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VERSION:
        c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION;
        c->version = v;
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE:
        c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
        c->create_revision = v;
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD:
        c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
        c->mod_revision = v;
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__LEASE:
        c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_LEASE;
        c->lease = v;
        break;
    }
    return c;
}

static Etcdserverpb__Compare *cmp_value(const char *k, const char *end, int result,
                                        const char *v)
{
    Etcdserverpb__Compare *c = &cmp_pool[n_cmp++];
    *c = (Etcdserverpb__Compare)ETCDSERVERPB__COMPARE__INIT;
    c->key = bin(k);
    if (end)
        c->range_end = binn(end, end[0] ? strlen(end) : 1);
    c->target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE;
    c->result = result;
    c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE;
    c->value = bin(v);
    return c;
}

#define EQ ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL
#define NE ETCDSERVERPB__COMPARE__COMPARE_RESULT__NOT_EQUAL
#define GT ETCDSERVERPB__COMPARE__COMPARE_RESULT__GREATER
#define LT ETCDSERVERPB__COMPARE__COMPARE_RESULT__LESS
#define T_VERSION ETCDSERVERPB__COMPARE__COMPARE_TARGET__VERSION
#define T_CREATE ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE
#define T_MOD ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD
#define T_LEASE ETCDSERVERPB__COMPARE__COMPARE_TARGET__LEASE

/* A txn from NULL-terminated lists. */
static Etcdserverpb__TxnRequest *txn_make(Etcdserverpb__Compare **c,
                                          Etcdserverpb__RequestOp **s,
                                          Etcdserverpb__RequestOp **f)
{
    size_t id = n_txn++;
    Etcdserverpb__TxnRequest *t = &txn_pool[id];
    *t = (Etcdserverpb__TxnRequest)ETCDSERVERPB__TXN_REQUEST__INIT;
    for (; c && *c; c++)
        t->compare = clist_pool[id], clist_pool[id][t->n_compare++] = *c;
    static Etcdserverpb__RequestOp *succ[128][MAXOPS], *fail[128][MAXOPS];
    for (; s && *s; s++)
        t->success = succ[id], succ[id][t->n_success++] = *s;
    for (; f && *f; f++)
        t->failure = fail[id], fail[id][t->n_failure++] = *f;
    return t;
}

static Etcdserverpb__RequestOp *op_txn(Etcdserverpb__TxnRequest *t)
{
    Etcdserverpb__RequestOp *o = &op_pool[n_op++];
    *o = (Etcdserverpb__RequestOp)ETCDSERVERPB__REQUEST_OP__INIT;
    o->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN;
    o->request_txn = t;
    return o;
}

#define L(...) ((Etcdserverpb__RequestOp *[]){__VA_ARGS__, NULL})
#define CL(...) ((Etcdserverpb__Compare *[]){__VA_ARGS__, NULL})

static void test_headers_and_subrevisions(void)
{
    tstore t;
    ts_open(&t);
    pools_reset();
    ts_put(&t, "a", "1"); /* rev 2 */
    /* compare fails -> failure branch; checked against etcd 3.4.23 */
    Etcdserverpb__RequestOp *p = op_put("a", "2");
    p->request_put->prev_kv = 1;
    Etcdserverpb__RequestOp *d1 = op_del("zz", NULL);
    d1->request_delete_range->prev_kv = 0;
    Etcdserverpb__TxnRequest *tx = txn_make(
        CL(cmp_int("a", NULL, T_VERSION, EQ, 0)), L(op_put("x", "1")),
        L(d1, op_range("a", NULL, 0), p, op_range("a", NULL, 0), op_del("zz", NULL),
          op_del("b", ""), op_range("a", NULL, 2)));
    mvcc_result res;
    Etcdserverpb__TxnResponse *r = ts_txn(&t, tx, &res);
    CHECK(r != NULL);
    CHECK(!r->succeeded);
    CHECK_EQ_INT(r->header->revision, 3);
    CHECK_EQ_INT(r->header->member_id, 22);
    CHECK_EQ_INT(r->n_responses, 7);
    Etcdserverpb__ResponseOp **o = r->responses;
    CHECK_EQ_INT(o[0]->response_case, ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_DELETE_RANGE);
    CHECK_EQ_INT(o[0]->response_delete_range->header->revision, 2);
    CHECK_EQ_INT(o[0]->response_delete_range->header->member_id, 0);
    CHECK_EQ_INT(o[1]->response_range->header->revision, 2);
    CHECK(kv_is(o[1]->response_range->kvs[0], "a", "1"));
    CHECK_EQ_INT(o[2]->response_put->header->revision, 3);
    CHECK(kv_is(o[2]->response_put->prev_kv, "a", "1"));
    CHECK_EQ_INT(o[3]->response_range->header->revision, 3);
    CHECK(kv_is(o[3]->response_range->kvs[0], "a", "2"));
    CHECK_EQ_INT(o[3]->response_range->kvs[0]->version, 2);
    CHECK_EQ_INT(o[4]->response_delete_range->header->revision, 3);
    CHECK_EQ_INT(o[4]->response_delete_range->deleted, 0);
    CHECK_EQ_INT(o[5]->response_delete_range->header->revision, 3);
    CHECK_EQ_INT(o[6]->response_range->header->revision, 3);
    CHECK(kv_is(o[6]->response_range->kvs[0], "a", "1")); /* revision 2 */
    etcdserverpb__txn_response__free_unpacked(r, NULL);
    CHECK_EQ_INT(mvcc_current_revision(t.m), 3);

    /* a write txn whose taken branch only reads: no new revision */
    tx = txn_make(CL(cmp_value("a", NULL, EQ, "2")), L(op_range("a", NULL, 0)),
                  L(op_put("y", "1")));
    r = ts_txn(&t, tx, &res);
    CHECK(r && r->succeeded);
    CHECK_EQ_INT(r->header->revision, 3);
    etcdserverpb__txn_response__free_unpacked(r, NULL);
    CHECK_EQ_INT(mvcc_current_revision(t.m), 3);

    /* several changes in one txn share a revision, with sub-revisions in order */
    tx = txn_make(NULL, L(op_put("m1", "1"), op_put("m2", "2"), op_del("a", NULL)), NULL);
    r = ts_txn(&t, tx, &res);
    CHECK(r && r->succeeded);
    CHECK_EQ_INT(r->header->revision, 4);
    CHECK_EQ_INT(r->responses[2]->response_delete_range->deleted, 1);
    CHECK_EQ_INT(r->responses[2]->response_delete_range->n_prev_kvs, 1);
    etcdserverpb__txn_response__free_unpacked(r, NULL);
    Etcdserverpb__RangeResponse *rr = ts_range(&t, "m", "n", 0);
    CHECK_EQ_INT(rr->n_kvs, 2);
    CHECK_EQ_INT(rr->kvs[0]->mod_revision, 4);
    CHECK_EQ_INT(rr->kvs[1]->mod_revision, 4);
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    rr = ts_range(&t, "a", NULL, 3);
    CHECK_EQ_INT(rr->n_kvs, 1);
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    ts_close(&t);
}

static void test_nested(void)
{
    tstore t;
    ts_open(&t);
    pools_reset();
    ts_put(&t, "a", "1"); /* 2 */
    /* nested compares see the state before the txn: a is still "1" */
    Etcdserverpb__TxnRequest *inner = txn_make(CL(cmp_value("a", NULL, EQ, "2")),
                                               L(op_put("n", "then")),
                                               L(op_put("n", "else"), op_range("a", NULL, 0)));
    Etcdserverpb__TxnRequest *tx = txn_make(NULL, L(op_put("a", "2"), op_txn(inner)), NULL);
    mvcc_result res;
    Etcdserverpb__TxnResponse *r = ts_txn(&t, tx, &res);
    CHECK(r && r->succeeded);
    CHECK_EQ_INT(r->header->revision, 3);
    CHECK_EQ_INT(r->n_responses, 2);
    Etcdserverpb__TxnResponse *n = r->responses[1]->response_txn;
    CHECK(n != NULL);
    CHECK(n->header != NULL); /* present but empty */
    CHECK_EQ_INT(n->header->revision, 0);
    CHECK(!n->succeeded);
    CHECK_EQ_INT(n->n_responses, 2);
    CHECK_EQ_INT(n->responses[0]->response_put->header->revision, 3);
    CHECK_EQ_INT(n->responses[1]->response_range->header->revision, 3);
    CHECK(kv_is(n->responses[1]->response_range->kvs[0], "a", "2"));
    etcdserverpb__txn_response__free_unpacked(r, NULL);
    Etcdserverpb__RangeResponse *rr = ts_range(&t, "n", NULL, 0);
    CHECK(kv_is(rr->kvs[0], "n", "else"));
    etcdserverpb__range_response__free_unpacked(rr, NULL);

    /* deeper nesting: path bookkeeping across siblings */
    Etcdserverpb__TxnRequest *l3 = txn_make(CL(cmp_int("zzz", NULL, T_VERSION, EQ, 0)),
                                            L(op_put("d3", "ok")), L(op_put("d3", "bad")));
    Etcdserverpb__TxnRequest *l2a = txn_make(CL(cmp_int("a", NULL, T_VERSION, GT, 5)),
                                             L(op_put("d2a", "bad")), L(op_txn(l3)));
    Etcdserverpb__TxnRequest *l2b = txn_make(CL(cmp_int("a", NULL, T_MOD, EQ, 3)),
                                             L(op_put("d2b", "ok")), L(op_put("d2b", "bad")));
    tx = txn_make(CL(cmp_int("a", NULL, T_CREATE, EQ, 2)), L(op_txn(l2a), op_txn(l2b)),
                  L(op_put("top", "bad")));
    r = ts_txn(&t, tx, &res);
    CHECK(r && r->succeeded);
    CHECK_EQ_INT(r->header->revision, 4);
    CHECK(!r->responses[0]->response_txn->succeeded);
    CHECK(r->responses[0]->response_txn->responses[0]->response_txn->succeeded);
    CHECK(r->responses[1]->response_txn->succeeded);
    etcdserverpb__txn_response__free_unpacked(r, NULL);
    rr = ts_range(&t, "d", "e", 0);
    CHECK_EQ_INT(rr->n_kvs, 2);
    CHECK(kv_is(rr->kvs[0], "d2b", "ok"));
    CHECK(kv_is(rr->kvs[1], "d3", "ok"));
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    ts_close(&t);
}

static int cmp_holds(tstore *t, Etcdserverpb__Compare *c)
{
    Etcdserverpb__TxnRequest *tx = txn_make(CL(c), NULL, NULL);
    mvcc_result res;
    Etcdserverpb__TxnResponse *r = ts_txn(t, tx, &res);
    CHECK(r != NULL);
    int ok = r->succeeded;
    etcdserverpb__txn_response__free_unpacked(r, NULL);
    return ok;
}

static void test_compares(void)
{
    tstore t;
    ts_open(&t);
    pools_reset();
    ts_put(&t, "a", "1");   /* 2 */
    ts_put(&t, "p/1", "x"); /* 3 */
    ts_put(&t, "p/2", "y"); /* 4 */
    ts_put(&t, "a", "2");   /* 5 */
    CHECK(cmp_holds(&t, cmp_value("a", NULL, EQ, "2")));
    CHECK(cmp_holds(&t, cmp_value("a", NULL, GT, "1")));
    CHECK(cmp_holds(&t, cmp_value("a", NULL, LT, "3")));
    CHECK(cmp_holds(&t, cmp_value("a", NULL, NE, "1")));
    CHECK(!cmp_holds(&t, cmp_value("missing", NULL, NE, "1")));
    CHECK(!cmp_holds(&t, cmp_value("missing", NULL, EQ, "")));
    CHECK(cmp_holds(&t, cmp_int("missing", NULL, T_VERSION, EQ, 0)));
    CHECK(cmp_holds(&t, cmp_int("missing", NULL, T_CREATE, EQ, 0)));
    CHECK(cmp_holds(&t, cmp_int("missing", NULL, T_MOD, LT, 1)));
    CHECK(cmp_holds(&t, cmp_int("missing", NULL, T_LEASE, EQ, 0)));
    CHECK(cmp_holds(&t, cmp_int("a", NULL, T_VERSION, EQ, 2)));
    CHECK(cmp_holds(&t, cmp_int("a", NULL, T_CREATE, EQ, 2)));
    CHECK(cmp_holds(&t, cmp_int("a", NULL, T_MOD, EQ, 5)));
    CHECK(cmp_holds(&t, cmp_int("a", NULL, T_MOD, GT, 4)));
    CHECK(!cmp_holds(&t, cmp_int("a", NULL, T_MOD, GT, 5)));
    CHECK(cmp_holds(&t, cmp_int("a", NULL, T_LEASE, EQ, 0)));
    /* ranges: every key must satisfy */
    CHECK(!cmp_holds(&t, cmp_value("p/", "p0", EQ, "x")));
    CHECK(cmp_holds(&t, cmp_value("p/", "p0", GT, "w")));
    CHECK(cmp_holds(&t, cmp_int("p/", "p0", T_CREATE, GT, 1)));
    CHECK(cmp_holds(&t, cmp_int("p/", "", T_CREATE, GT, 2)));
    CHECK(!cmp_holds(&t, cmp_int("a", "", T_CREATE, GT, 2)));
    CHECK(cmp_holds(&t, cmp_int("q/", "q0", T_CREATE, EQ, 0)));
    CHECK(!cmp_holds(&t, cmp_value("q/", "q0", NE, "")));
    /* a target/union mismatch compares against 0, as etcd does */
    Etcdserverpb__Compare *c = cmp_int("a", NULL, T_VERSION, EQ, 0);
    c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
    c->mod_revision = 2;
    CHECK(!cmp_holds(&t, c));
    c->result = GT;
    CHECK(cmp_holds(&t, c));
    /* several compares: all must hold */
    Etcdserverpb__TxnRequest *tx = txn_make(
        CL(cmp_value("a", NULL, EQ, "2"), cmp_int("a", NULL, T_VERSION, EQ, 1)), NULL, NULL);
    Etcdserverpb__TxnResponse *r = ts_txn(&t, tx, NULL);
    CHECK(!r->succeeded);
    etcdserverpb__txn_response__free_unpacked(r, NULL);
    ts_close(&t);
}

static void test_txn_errors(void)
{
    tstore t;
    ts_open(&t);
    pools_reset();
    ts_put(&t, "a", "1"); /* 2 */
    mvcc_result res;
    /* unknown lease */
    Etcdserverpb__RequestOp *p = op_put("k", "v");
    p->request_put->lease = 99;
    CHECK(ts_txn(&t, txn_make(NULL, L(op_put("ok", "1"), p), NULL), &res) == NULL);
    CHECK_ERR(res, MVCC_STATUS_NOT_FOUND, "etcdserver: requested lease not found");
    /* ignore_value on a missing key */
    Etcdserverpb__RequestOp *iv = op_put("nokey", "");
    iv->request_put->ignore_value = 1;
    CHECK(ts_txn(&t, txn_make(NULL, L(iv), NULL), &res) == NULL);
    CHECK_ERR(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: key not found");
    /* puts are checked before ranges, in path order */
    CHECK(ts_txn(&t, txn_make(NULL, L(op_range("a", NULL, 1000), p), NULL), &res) == NULL);
    CHECK_ERR(res, MVCC_STATUS_NOT_FOUND, "etcdserver: requested lease not found");
    /* ops in the branch not taken are not checked */
    Etcdserverpb__TxnResponse *r =
        ts_txn(&t, txn_make(CL(cmp_int("a", NULL, T_VERSION, EQ, 1)), L(op_put("fine", "1")),
                            L(p)), &res);
    CHECK(r && r->succeeded);
    CHECK_EQ_INT(r->header->revision, 3);
    etcdserverpb__txn_response__free_unpacked(r, NULL);
    /* future revision in a read-only txn and in a write txn */
    CHECK(ts_txn(&t, txn_make(NULL, L(op_range("a", NULL, 1000)), NULL), &res) == NULL);
    CHECK_ERR(res, MVCC_STATUS_OUT_OF_RANGE, ERR_FUTURE);
    CHECK(ts_txn(&t, txn_make(NULL, L(op_put("w", "1"), op_range("a", NULL, 4)), NULL),
                 &res) == NULL);
    CHECK_ERR(res, MVCC_STATUS_OUT_OF_RANGE, ERR_FUTURE);
    /* a negative revision counts as compacted inside a txn */
    CHECK(ts_txn(&t, txn_make(NULL, L(op_range("a", NULL, -3)), NULL), &res) == NULL);
    CHECK_ERR(res, MVCC_STATUS_OUT_OF_RANGE, ERR_COMPACTED);
    /* compacted */
    CHECK_EQ_INT(ts_compact(&t, 3, 0).status, MVCC_STATUS_OK);
    CHECK(ts_txn(&t, txn_make(NULL, L(op_range("a", NULL, 2)), NULL), &res) == NULL);
    CHECK_ERR(res, MVCC_STATUS_OUT_OF_RANGE, ERR_COMPACTED);
    r = ts_txn(&t, txn_make(NULL, L(op_range("a", NULL, 3)), NULL), &res);
    CHECK(r != NULL);
    etcdserverpb__txn_response__free_unpacked(r, NULL);
    CHECK_EQ_INT(mvcc_current_revision(t.m), 3);

    /* etcd 3.4 panics here ("\0" delete removes the key the ignore_value put
     * needs); Ballast fails the txn and writes nothing */
    Etcdserverpb__RequestOp *iv2 = op_put("a", "");
    iv2->request_put->ignore_value = 1;
    CHECK(ts_txn(&t, txn_make(NULL, L(op_put("before", "x"), op_del("a", ""), iv2), NULL),
                 &res) == NULL);
    CHECK_ERR(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: key not found");
    CHECK_EQ_INT(mvcc_current_revision(t.m), 3);
    Etcdserverpb__RangeResponse *rr = ts_range(&t, "a", "", 0);
    CHECK_EQ_INT(rr->n_kvs, 2); /* a, fine */
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    /* and the store still works */
    CHECK_EQ_INT(ts_put(&t, "after", "1"), 4);
    ts_close(&t);
}

static void test_entry_with_many_ops(void)
{
    tstore t;
    ts_open(&t);
    pools_reset();
    /* one raft entry: put, failing put, txn reading the first put, delete,
     * compaction; each op has its own revision and sees the ones before */
    Etcdserverpb__PutRequest p1 = ETCDSERVERPB__PUT_REQUEST__INIT, p2 = p1;
    p1.key = bin("a");
    p1.value = bin("1");
    p2.key = bin("missing");
    p2.ignore_value = 1;
    Etcdserverpb__TxnRequest *tx = txn_make(CL(cmp_value("a", NULL, EQ, "1")),
                                            L(op_put("b", "2"), op_range("a", NULL, 0)), NULL);
    Etcdserverpb__DeleteRangeRequest d = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    d.key = bin("a");
    Etcdserverpb__CompactionRequest c = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
    c.revision = 3;
    Ballastpb__Op o[5];
    for (int i = 0; i < 5; i++)
        o[i] = (Ballastpb__Op)BALLASTPB__OP__INIT;
    o[0].op_case = BALLASTPB__OP__OP_PUT, o[0].put = &p1;
    o[1].op_case = BALLASTPB__OP__OP_PUT, o[1].put = &p2;
    o[2].op_case = BALLASTPB__OP__OP_TXN, o[2].txn = tx;
    o[3].op_case = BALLASTPB__OP__OP_DELETE_RANGE, o[3].delete_range = &d;
    o[4].op_case = BALLASTPB__OP__OP_COMPACTION, o[4].compaction = &c;
    Ballastpb__Op *ops[5] = {&o[0], &o[1], &o[2], &o[3], &o[4]};
    mvcc_result res[5];
    t.out.len = 0;
    CHECK(mvcc_apply(t.m, 1, &t.h, ops, 5, &t.out, res) == 0);
    CHECK_EQ_INT(res[0].status, 0);
    CHECK_ERR(res[1], MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: key not found");
    CHECK_EQ_INT(res[2].status, 0);
    CHECK_EQ_INT(res[3].status, 0);
    CHECK_EQ_INT(res[4].status, 0);
    Etcdserverpb__PutResponse *pr =
        etcdserverpb__put_response__unpack(NULL, res[0].len, t.out.data + res[0].off);
    CHECK_EQ_INT(pr->header->revision, 2);
    etcdserverpb__put_response__free_unpacked(pr, NULL);
    Etcdserverpb__TxnResponse *tr =
        etcdserverpb__txn_response__unpack(NULL, res[2].len, t.out.data + res[2].off);
    CHECK(tr->succeeded);
    CHECK_EQ_INT(tr->header->revision, 3);
    etcdserverpb__txn_response__free_unpacked(tr, NULL);
    Etcdserverpb__DeleteRangeResponse *dr =
        etcdserverpb__delete_range_response__unpack(NULL, res[3].len, t.out.data + res[3].off);
    CHECK_EQ_INT(dr->header->revision, 4);
    CHECK_EQ_INT(dr->deleted, 1);
    etcdserverpb__delete_range_response__free_unpacked(dr, NULL);
    Etcdserverpb__CompactionResponse *cr =
        etcdserverpb__compaction_response__unpack(NULL, res[4].len, t.out.data + res[4].off);
    CHECK_EQ_INT(cr->header->revision, 4);
    etcdserverpb__compaction_response__free_unpacked(cr, NULL);
    CHECK_EQ_INT(mvcc_current_revision(t.m), 4);
    CHECK_EQ_INT(mvcc_compact_revision(t.m), 3);
    CHECK_EQ_INT(mvcc_applied_index(t.m), 1);
    ts_close(&t);
}

static void expect_valid(Etcdserverpb__TxnRequest *tx, int ok, const char *msg)
{
    mvcc_limits l = {128, 1536 * 1024};
    mvcc_result res;
    int rc = mvcc_validate_txn(tx, &l, &res);
    if (ok) {
        if (rc)
            fprintf(stderr, "unexpected: %s\n", res.message);
        CHECK(rc == 0);
    } else {
        CHECK(rc != 0);
        CHECK_EQ_INT(res.status, MVCC_STATUS_INVALID_ARGUMENT);
        if (strcmp(res.message, msg) != 0)
            fprintf(stderr, "got %s want %s\n", res.message, msg);
        CHECK(strcmp(res.message, msg) == 0);
    }
}

#define DUP "etcdserver: duplicate key given in txn request"

static void test_validate_dups(void)
{
    pools_reset();
    expect_valid(txn_make(NULL, L(op_put("a", "1"), op_put("b", "1")), NULL), 1, NULL);
    expect_valid(txn_make(NULL, L(op_put("a", "1"), op_put("a", "2")), NULL), 0, DUP);
    /* success and failure are separate */
    expect_valid(txn_make(NULL, L(op_put("a", "1")), L(op_put("a", "2"))), 1, NULL);
    /* put inside a deleted range, before or after */
    expect_valid(txn_make(NULL, L(op_del("a", "c"), op_put("b", "1")), NULL), 0, DUP);
    expect_valid(txn_make(NULL, L(op_put("b", "1"), op_del("a", "c")), NULL), 0, DUP);
    expect_valid(txn_make(NULL, L(op_put("c", "1"), op_del("a", "c")), NULL), 1, NULL);
    expect_valid(txn_make(NULL, L(op_put("a", "1"), op_del("a", NULL)), NULL), 0, DUP);
    /* "\0" ranges are invisible to etcd's check */
    expect_valid(txn_make(NULL, L(op_put("b", "1"), op_del("a", "")), NULL), 1, NULL);
    /* an inverted range contains nothing */
    expect_valid(txn_make(NULL, L(op_put("b", "1"), op_del("c", "a")), NULL), 1, NULL);
    /* deletes and ranges may overlap freely */
    expect_valid(txn_make(NULL, L(op_del("a", "c"), op_del("b", NULL), op_range("b", NULL, 0)),
                          NULL), 1, NULL);
    /* nested: same key in both branches of one nested txn is fine */
    Etcdserverpb__TxnRequest *n1 = txn_make(NULL, L(op_put("k", "1")), L(op_put("k", "2")));
    expect_valid(txn_make(NULL, L(op_txn(n1)), NULL), 1, NULL);
    /* nested put vs outer put */
    n1 = txn_make(NULL, L(op_put("k", "1")), NULL);
    expect_valid(txn_make(NULL, L(op_txn(n1), op_put("k", "x")), NULL), 0, DUP);
    /* nested put vs outer delete (any order in the outer list) */
    n1 = txn_make(NULL, L(op_put("k", "1")), NULL);
    expect_valid(txn_make(NULL, L(op_txn(n1), op_del("k", NULL)), NULL), 0, DUP);
    n1 = txn_make(NULL, NULL, L(op_put("k", "1")));
    expect_valid(txn_make(NULL, L(op_del("a", "z"), op_txn(n1)), NULL), 0, DUP);
    /* nested delete vs outer put */
    n1 = txn_make(NULL, L(op_del("k", NULL)), NULL);
    expect_valid(txn_make(NULL, L(op_put("k", "1"), op_txn(n1)), NULL), 0, DUP);
    /* two nested txns putting the same key */
    n1 = txn_make(NULL, L(op_put("k", "1")), NULL);
    Etcdserverpb__TxnRequest *n2 = txn_make(NULL, NULL, L(op_put("k", "2")));
    expect_valid(txn_make(NULL, L(op_txn(n1), op_txn(n2)), NULL), 0, DUP);
    /* earlier nested delete vs later nested put: caught; the reverse order is
     * not (etcd's asymmetry) */
    n1 = txn_make(NULL, L(op_del("k", NULL)), NULL);
    n2 = txn_make(NULL, L(op_put("k", "2")), NULL);
    expect_valid(txn_make(NULL, L(op_txn(n1), op_txn(n2)), NULL), 0, DUP);
    n1 = txn_make(NULL, L(op_put("k", "2")), NULL);
    n2 = txn_make(NULL, L(op_del("k", NULL)), NULL);
    expect_valid(txn_make(NULL, L(op_txn(n1), op_txn(n2)), NULL), 1, NULL);
    /* within a nested list the usual rule applies */
    n1 = txn_make(NULL, L(op_put("k", "1"), op_put("k", "2")), NULL);
    expect_valid(txn_make(NULL, L(op_txn(n1)), NULL), 0, DUP);
    /* a key in both branches of a nested txn, itself nested: counted once
     * (oracle seed 2) */
    n2 = txn_make(NULL, L(op_put("a", "1")), L(op_put("a", "2"), op_put("b", "1")));
    n1 = txn_make(NULL, L(op_del("b/y", "a/y"), op_txn(n2)), L(op_put("a", "0")));
    expect_valid(txn_make(NULL, L(op_put("a", "1")), L(op_txn(n1), op_put("b/y", "x"))), 1,
                 NULL);
    /* a then-put that an earlier nested else also puts */
    n1 = txn_make(NULL, NULL, L(op_put("k", "1")));
    n2 = txn_make(NULL, L(op_put("k", "2")), NULL);
    expect_valid(txn_make(NULL, L(op_txn(n1), op_txn(n2)), NULL), 0, DUP);
}

static void test_validate_limits(void)
{
    pools_reset();
    mvcc_limits l = {3, 0};
    mvcc_result res;
    Etcdserverpb__TxnRequest *tx = txn_make(
        CL(cmp_value("a", NULL, EQ, "1"), cmp_value("b", NULL, EQ, "1"),
           cmp_value("c", NULL, EQ, "1")),
        L(op_put("a", "1"), op_put("b", "1"), op_put("c", "1")),
        L(op_put("a", "1"), op_put("b", "1"), op_put("c", "1")));
    /* the widest list counts, not the sum */
    CHECK(mvcc_validate_txn(tx, &l, &res) == 0);
    tx->n_compare = 4;
    clist_pool[n_txn - 1][3] = cmp_value("d", NULL, EQ, "1");
    tx->compare = clist_pool[n_txn - 1];
    CHECK(mvcc_validate_txn(tx, &l, &res) != 0);
    CHECK_ERR(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: too many operations in txn request");
    /* nested txns get what the parent leaves */
    Etcdserverpb__TxnRequest *n1 = txn_make(NULL, L(op_put("x", "1"), op_put("y", "1")), NULL);
    tx = txn_make(NULL, L(op_txn(n1)), NULL);
    CHECK(mvcc_validate_txn(tx, &l, &res) == 0);
    tx = txn_make(NULL, L(op_txn(n1), op_put("z", "1")), NULL);
    CHECK(mvcc_validate_txn(tx, &l, &res) != 0);
    CHECK_ERR(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: too many operations in txn request");
    /* empty keys in compares and ops */
    tx = txn_make(CL(cmp_value("", NULL, EQ, "1")), NULL, NULL);
    CHECK(mvcc_validate_txn(tx, &l, &res) != 0);
    CHECK_ERR(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: key is not provided");
    tx = txn_make(NULL, NULL, L(op_range("", NULL, 0)));
    CHECK(mvcc_validate_txn(tx, &l, &res) != 0);
    CHECK_ERR(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: key is not provided");
    Etcdserverpb__RequestOp *iv = op_put("k", "v");
    iv->request_put->ignore_value = 1;
    tx = txn_make(NULL, L(iv), NULL);
    CHECK(mvcc_validate_txn(tx, &l, &res) != 0);
    CHECK_ERR(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: value is provided");
    /* an empty RequestOp */
    Etcdserverpb__RequestOp empty = ETCDSERVERPB__REQUEST_OP__INIT;
    tx = txn_make(NULL, L(&empty), NULL);
    CHECK(mvcc_validate_txn(tx, &l, &res) != 0);
    CHECK_ERR(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: key not found");
    /* the default limit is etcd's 128 */
    mvcc_limits dflt = {0, 0};
    static Etcdserverpb__Compare *many[129];
    Etcdserverpb__TxnRequest big = ETCDSERVERPB__TXN_REQUEST__INIT;
    for (int i = 0; i < 129; i++)
        many[i] = cmp_value("a", NULL, EQ, "1");
    big.compare = many;
    big.n_compare = 128;
    CHECK(mvcc_validate_txn(&big, &dflt, &res) == 0);
    big.n_compare = 129;
    CHECK(mvcc_validate_txn(&big, &dflt, &res) != 0);
    CHECK_ERR(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: too many operations in txn request");

    /* read-only detection */
    CHECK(mvcc_txn_is_read_only(txn_make(NULL, L(op_range("a", NULL, 0)), NULL)));
    CHECK(mvcc_txn_is_read_only(txn_make(CL(cmp_value("a", NULL, EQ, "1")), NULL, NULL)));
    CHECK(!mvcc_txn_is_read_only(txn_make(NULL, NULL, L(op_del("a", NULL)))));
    CHECK(!mvcc_txn_is_read_only(
        txn_make(NULL, L(op_txn(txn_make(NULL, L(op_range("a", NULL, 0)), NULL))), NULL)));
}

/* Reads inside apply see the entry's own earlier writes, deletes included,
 * at the current and at past revisions. */
static void test_reads_see_own_writes(void)
{
    tstore t;
    ts_open(&t);
    pools_reset();
    ts_put(&t, "p/1", "old"); /* 2 */
    ts_put(&t, "p/2", "old"); /* 3 */
    Etcdserverpb__TxnRequest *tx = txn_make(
        NULL, L(op_put("p/0", "new"), op_del("p/1", NULL), op_range("p/", "p0", 0),
                op_range("p/1", NULL, 0), op_range("p/", "p0", 2)), NULL);
    Etcdserverpb__TxnResponse *r = ts_txn(&t, tx, NULL);
    CHECK(r != NULL);
    Etcdserverpb__RangeResponse *a = r->responses[2]->response_range;
    CHECK_EQ_INT(a->n_kvs, 2);
    CHECK(kv_is(a->kvs[0], "p/0", "new") && kv_is(a->kvs[1], "p/2", "old"));
    CHECK_EQ_INT(a->count, 2);
    CHECK_EQ_INT(r->responses[3]->response_range->n_kvs, 0);
    Etcdserverpb__RangeResponse *h = r->responses[4]->response_range;
    CHECK_EQ_INT(h->n_kvs, 1);
    CHECK(kv_is(h->kvs[0], "p/1", "old"));
    CHECK_EQ_INT(h->header->revision, 4);
    etcdserverpb__txn_response__free_unpacked(r, NULL);

    /* one entry: op 1 writes revision 5, op 2 reads revision 5 as the past */
    Etcdserverpb__TxnRequest *t1 = txn_make(NULL, L(op_put("q", "five")), NULL);
    Etcdserverpb__TxnRequest *t2 = txn_make(
        NULL, L(op_put("q", "six"), op_range("q", NULL, 5), op_range("q", NULL, 0)), NULL);
    Ballastpb__Op o1 = BALLASTPB__OP__INIT, o2 = BALLASTPB__OP__INIT;
    o1.op_case = o2.op_case = BALLASTPB__OP__OP_TXN;
    o1.txn = t1;
    o2.txn = t2;
    Ballastpb__Op *ops[2] = {&o1, &o2};
    mvcc_result res[2];
    t.out.len = 0;
    CHECK(mvcc_apply(t.m, ++t.index, &t.h, ops, 2, &t.out, res) == 0);
    CHECK_EQ_INT(res[1].status, 0);
    r = etcdserverpb__txn_response__unpack(NULL, res[1].len, t.out.data + res[1].off);
    CHECK(r != NULL);
    CHECK_EQ_INT(r->header->revision, 6);
    CHECK(kv_is(r->responses[1]->response_range->kvs[0], "q", "five"));
    CHECK_EQ_INT(r->responses[1]->response_range->header->revision, 6);
    CHECK(kv_is(r->responses[2]->response_range->kvs[0], "q", "six"));
    CHECK_EQ_INT(r->responses[2]->response_range->kvs[0]->version, 2);
    etcdserverpb__txn_response__free_unpacked(r, NULL);
    ts_close(&t);
}

static void count_events(void *arg, const mvcc_event *ev, size_t n)
{
    (void)ev;
    *(size_t *)arg += n;
}

/* Events the store's history holds at main revision `rev`. */
static size_t history_count(tstore *t, int64_t rev)
{
    size_t n = 0;
    int64_t next;
    mvcc_history *h = mvcc_history_open(t->m);
    CHECK(h != NULL);
    CHECK(mvcc_history_events(h, rev, rev, 0, 0, count_events, &n, &next) == 0);
    mvcc_history_close(h);
    return n;
}

/* The apply thread's cache of current records (mvcc_cache.c) must follow
 * every change: writes of later ops in the same entry, txn rollbacks, and
 * deletes. Each Put's version and create_revision come from the record read. */
static void test_current_cache(void)
{
    tstore t;
    ts_open(&t);
    pools_reset();
    CHECK_EQ_INT(ts_put(&t, "c", "1"), 2); /* version 1 */
    CHECK_EQ_INT(ts_put(&t, "c", "2"), 3); /* version 2, read from the cache */
    /* a txn that deletes "c" and then fails is rolled back: "c" lives on */
    Etcdserverpb__RequestOp *iv = op_put("c", "");
    iv->request_put->ignore_value = 1;
    mvcc_result res;
    CHECK(ts_txn(&t, txn_make(NULL, L(op_put("x", "1"), op_del("c", ""), iv), NULL), &res) ==
          NULL);
    CHECK_EQ_INT(ts_put(&t, "c", "3"), 4);
    /* nothing of it reached the history either: revision 4 is this Put
     * alone, without the txn's delete at sub revision 1 */
    CHECK_EQ_INT(history_count(&t, 4), 1);
    Etcdserverpb__RangeResponse *rr = ts_range(&t, "c", NULL, 0);
    CHECK_EQ_INT(rr->n_kvs, 1);
    CHECK_EQ_INT(rr->kvs[0]->version, 3);
    CHECK_EQ_INT(rr->kvs[0]->create_revision, 2);
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    /* one entry: delete "c", then put it again (a new life), then put again */
    Etcdserverpb__DeleteRangeRequest d = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    d.key = bin("c");
    Etcdserverpb__PutRequest p1 = ETCDSERVERPB__PUT_REQUEST__INIT, p2 = p1;
    p1.key = p2.key = bin("c");
    p1.value = bin("4");
    p2.value = bin("5");
    Ballastpb__Op o[3];
    for (int i = 0; i < 3; i++)
        o[i] = (Ballastpb__Op)BALLASTPB__OP__INIT;
    o[0].op_case = BALLASTPB__OP__OP_DELETE_RANGE, o[0].delete_range = &d;
    o[1].op_case = BALLASTPB__OP__OP_PUT, o[1].put = &p1;
    o[2].op_case = BALLASTPB__OP__OP_PUT, o[2].put = &p2;
    Ballastpb__Op *ops[3] = {&o[0], &o[1], &o[2]};
    mvcc_result r3[3];
    t.out.len = 0;
    CHECK(mvcc_apply(t.m, ++t.index, &t.h, ops, 3, &t.out, r3) == 0);
    /* revisions 5 (delete), 6 (create), 7 */
    rr = ts_range(&t, "c", NULL, 0);
    CHECK_EQ_INT(rr->n_kvs, 1);
    CHECK(kv_is(rr->kvs[0], "c", "5"));
    CHECK_EQ_INT(rr->kvs[0]->version, 2);
    CHECK_EQ_INT(rr->kvs[0]->create_revision, 6);
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    /* and the next entry's Put reads the committed record */
    CHECK_EQ_INT(ts_put(&t, "c", "6"), 8);
    rr = ts_range(&t, "c", NULL, 0);
    CHECK_EQ_INT(rr->kvs[0]->version, 3);
    CHECK_EQ_INT(rr->kvs[0]->create_revision, 6);
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    /* a delete through a range reaches the cache too */
    CHECK_EQ_INT(ts_del(&t, "c", "d"), 1); /* revision 9 */
    CHECK_EQ_INT(ts_put(&t, "c", "7"), 10);
    rr = ts_range(&t, "c", NULL, 0);
    CHECK_EQ_INT(rr->kvs[0]->version, 1);
    CHECK_EQ_INT(rr->kvs[0]->create_revision, 10);
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    /* and survives a reopen (the cache is memory only) */
    ts_reopen(&t);
    CHECK_EQ_INT(ts_put(&t, "c", "8"), 11);
    rr = ts_range(&t, "c", NULL, 0);
    CHECK_EQ_INT(rr->kvs[0]->version, 2);
    etcdserverpb__range_response__free_unpacked(rr, NULL);
    ts_close(&t);
}

/* Puts of `n` keys "f%05d" from `first`, each with a value of `vlen` bytes
 * of `fill`, as one entry. */
static void put_entry(tstore *t, int first, int n, size_t vlen, char fill)
{
    char (*keys)[16] = calloc((size_t)n, sizeof *keys);
    char *val = malloc(vlen);
    Etcdserverpb__PutRequest *p = calloc((size_t)n, sizeof *p);
    Ballastpb__Op *o = calloc((size_t)n, sizeof *o);
    Ballastpb__Op **ops = calloc((size_t)n, sizeof *ops);
    mvcc_result *res = calloc((size_t)n, sizeof *res);
    CHECK(keys && val && p && o && ops && res);
    memset(val, fill, vlen);
    for (int i = 0; i < n; i++) {
        snprintf(keys[i], sizeof keys[i], "f%05d", first + i);
        p[i] = (Etcdserverpb__PutRequest)ETCDSERVERPB__PUT_REQUEST__INIT;
        p[i].key = bin(keys[i]);
        p[i].value = binn(val, vlen);
        o[i] = (Ballastpb__Op)BALLASTPB__OP__INIT;
        o[i].op_case = BALLASTPB__OP__OP_PUT;
        o[i].put = &p[i];
        ops[i] = &o[i];
    }
    t->out.len = 0;
    CHECK(mvcc_apply(t->m, ++t->index, &t->h, ops, (size_t)n, &t->out, res) == 0);
    for (int i = 0; i < n; i++)
        CHECK_EQ_INT(res[i].status, MVCC_STATUS_OK);
    free(keys);
    free(val);
    free(p);
    free(o);
    free(ops);
    free(res);
}

static void check_version(tstore *t, int key, int64_t version, int64_t create_rev)
{
    char k[16];
    snprintf(k, sizeof k, "f%05d", key);
    Etcdserverpb__RangeResponse *rr = ts_range(t, k, NULL, 0);
    CHECK_EQ_INT(rr->n_kvs, 1);
    CHECK_EQ_INT(rr->kvs[0]->version, version);
    CHECK_EQ_INT(rr->kvs[0]->create_revision, create_rev);
    etcdserverpb__range_response__free_unpacked(rr, NULL);
}

/* Lookups that miss the cache share one store iterator per entry (see
 * view_current), which must end with its entry: records past the cache's
 * 32 MiB budget are never cached, so each Put of such a key reads the
 * store, and must see what the entry before wrote. */
static void test_uncached_records(void)
{
    tstore t;
    ts_open(&t);
    pools_reset();
    /* 6,000 keys of 7,000 bytes (42 MB), 100 per entry: the last ~1,200
     * find the cache full; key i is created at revision i + 2 */
    for (int i = 0; i < 6000; i += 100)
        put_entry(&t, i, 100, 7000, 'a');
    check_version(&t, 5999, 1, 6001);
    /* entry after entry, the same uncached key */
    for (int round = 2; round <= 4; round++) {
        put_entry(&t, 5990, 10, 7000, (char)('a' + round));
        for (int i = 5990; i < 6000; i++)
            check_version(&t, i, round, i + 2);
    }
    /* and the cached ones, from the start of the key space */
    put_entry(&t, 0, 10, 100, 'z');
    check_version(&t, 0, 2, 2);
    check_version(&t, 9, 2, 11);
    ts_close(&t);
}

int main(void)
{
    test_current_cache();
    test_uncached_records();
    test_reads_see_own_writes();
    test_headers_and_subrevisions();
    test_nested();
    test_compares();
    test_txn_errors();
    test_entry_with_many_ops();
    test_validate_dups();
    test_validate_limits();
    printf("test_mvcc_txn: ok\n");
    return 0;
}
