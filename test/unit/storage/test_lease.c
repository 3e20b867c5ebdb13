/* Leases in the store: grant/revoke with etcd's errors, attach / detach /
 * move of keys by puts, txns and deletes, a revoke deleting every attached
 * key in one revision (as watch events), the lease hook, and leases and
 * attachments surviving a restart. */
#include "storage_test.h"

static mvcc_result grant(tstore *t, int64_t id, int64_t ttl, Etcdserverpb__LeaseGrantResponse **out)
{
    Etcdserverpb__LeaseGrantRequest g = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
    g.id = id;
    g.ttl = ttl;
    Ballastpb__Op op = BALLASTPB__OP__INIT;
    op.op_case = BALLASTPB__OP__OP_LEASE_GRANT;
    op.lease_grant = &g;
    mvcc_result r = ts_apply(t, &op);
    if (out) {
        *out = NULL;
        if (r.status == MVCC_STATUS_OK) {
            *out = etcdserverpb__lease_grant_response__unpack(NULL, r.len, t->out.data + r.off);
            CHECK(*out != NULL);
        }
    }
    return r;
}

/* Returns the response header's revision, or -1 on an error result. */
static int64_t revoke_lease(tstore *t, int64_t id, mvcc_result *rr)
{
    Etcdserverpb__LeaseRevokeRequest q = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
    q.id = id;
    Ballastpb__Op op = BALLASTPB__OP__INIT;
    op.op_case = BALLASTPB__OP__OP_LEASE_REVOKE;
    op.lease_revoke = &q;
    mvcc_result r = ts_apply(t, &op);
    if (rr)
        *rr = r;
    if (r.status != MVCC_STATUS_OK)
        return -1;
    Etcdserverpb__LeaseRevokeResponse *resp =
        etcdserverpb__lease_revoke_response__unpack(NULL, r.len, t->out.data + r.off);
    CHECK(resp && resp->header);
    CHECK_EQ_INT(resp->header->cluster_id, 11);
    int64_t rev = resp->header->revision;
    etcdserverpb__lease_revoke_response__free_unpacked(resp, NULL);
    return rev;
}

static mvcc_result put_lease(tstore *t, const char *k, const char *v, int64_t lease)
{
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    p.key = bin(k);
    p.value = bin(v);
    p.lease = lease;
    mvcc_result r;
    Etcdserverpb__PutResponse *resp = ts_put_req(t, &p, &r);
    if (resp)
        etcdserverpb__put_response__free_unpacked(resp, NULL);
    return r;
}

static int64_t lease_of(tstore *t, const char *k)
{
    Etcdserverpb__RangeResponse *r = ts_range(t, k, NULL, 0);
    int64_t l = r->n_kvs ? r->kvs[0]->lease : -1;
    etcdserverpb__range_response__free_unpacked(r, NULL);
    return l;
}

/* The keys attached to a lease, joined with ','. */
typedef struct joined {
    char s[512];
} joined;

static void join_key(void *arg, const uint8_t *key, size_t len)
{
    joined *j = arg;
    size_t n = strlen(j->s);
    CHECK(n + len + 2 < sizeof j->s);
    if (n)
        j->s[n++] = ',';
    memcpy(j->s + n, key, len);
    j->s[n + len] = 0;
}

static const char *keys_of(tstore *t, int64_t id, joined *j)
{
    j->s[0] = 0;
    CHECK(mvcc_lease_keys(t->m, id, join_key, j) == 0);
    return j->s;
}

typedef struct hook_log {
    int64_t id[16], ttl[16];
    int n;
} hook_log;

static void on_lease(void *arg, int64_t id, int64_t ttl)
{
    hook_log *h = arg;
    CHECK(h->n < 16);
    h->id[h->n] = id;
    h->ttl[h->n] = ttl;
    h->n++;
}

static void test_grant_errors(void)
{
    tstore t;
    ts_open(&t);
    hook_log h = {0};
    mvcc_set_lease_hook(t.m, on_lease, &h);
    Etcdserverpb__LeaseGrantResponse *g;
    mvcc_result r = grant(&t, 7001, 30, &g);
    CHECK_EQ_INT(r.status, MVCC_STATUS_OK);
    CHECK_EQ_INT(g->id, 7001);
    CHECK_EQ_INT(g->ttl, 30);
    CHECK_EQ_INT(g->header->revision, 1); /* a grant is no revision */
    CHECK_EQ_INT(g->header->member_id, 22);
    CHECK(g->error == NULL || g->error[0] == 0);
    etcdserverpb__lease_grant_response__free_unpacked(g, NULL);
    CHECK_EQ_INT(h.n, 1);
    CHECK_EQ_INT(h.id[0], 7001);
    CHECK_EQ_INT(h.ttl[0], 30);

    r = grant(&t, 7001, 10, NULL);
    CHECK_ERR(r, MVCC_STATUS_FAILED_PRECONDITION, "etcdserver: lease already exists");
    r = grant(&t, 7002, MVCC_MAX_LEASE_TTL + 1, NULL);
    CHECK_ERR(r, MVCC_STATUS_OUT_OF_RANGE, "etcdserver: too large lease TTL");
    r = grant(&t, 0, 10, NULL);
    CHECK_ERR(r, MVCC_STATUS_NOT_FOUND, "etcdserver: requested lease not found");
    r = grant(&t, -7001, MVCC_MAX_LEASE_TTL, &g); /* negative IDs are IDs too */
    CHECK_EQ_INT(r.status, MVCC_STATUS_OK);
    CHECK_EQ_INT(g->id, -7001);
    etcdserverpb__lease_grant_response__free_unpacked(g, NULL);
    CHECK_EQ_INT(h.n, 2); /* failed grants are not reported */

    CHECK_EQ_INT(revoke_lease(&t, 4242, &r), -1);
    CHECK_ERR(r, MVCC_STATUS_NOT_FOUND, "etcdserver: requested lease not found");
    CHECK_EQ_INT(revoke_lease(&t, 7001, NULL), 1); /* no keys: no revision */
    CHECK_EQ_INT(h.n, 3);
    CHECK_EQ_INT(h.ttl[2], 0);
    CHECK_EQ_INT(revoke_lease(&t, 7001, &r), -1);
    CHECK_ERR(r, MVCC_STATUS_NOT_FOUND, "etcdserver: requested lease not found");
    ts_close(&t);
}

static void test_attach_detach_move(void)
{
    tstore t;
    ts_open(&t);
    joined j;
    CHECK_EQ_INT(grant(&t, 1, 60, NULL).status, MVCC_STATUS_OK);
    CHECK_EQ_INT(grant(&t, 2, 60, NULL).status, MVCC_STATUS_OK);
    mvcc_result r = put_lease(&t, "a", "1", 3);
    CHECK_ERR(r, MVCC_STATUS_NOT_FOUND, "etcdserver: requested lease not found");
    CHECK_EQ_INT(put_lease(&t, "a", "1", 1).status, MVCC_STATUS_OK);
    CHECK_EQ_INT(put_lease(&t, "b", "1", 1).status, MVCC_STATUS_OK);
    CHECK_EQ_INT(put_lease(&t, "c", "1", 2).status, MVCC_STATUS_OK);
    CHECK(strcmp(keys_of(&t, 1, &j), "a,b") == 0);
    CHECK(strcmp(keys_of(&t, 2, &j), "c") == 0);

    /* ignore_lease keeps the attachment */
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    p.key = bin("a");
    p.value = bin("2");
    p.ignore_lease = 1;
    etcdserverpb__put_response__free_unpacked(ts_put_req(&t, &p, NULL), NULL);
    CHECK_EQ_INT(lease_of(&t, "a"), 1);
    CHECK(strcmp(keys_of(&t, 1, &j), "a,b") == 0);
    /* a put with another lease moves the key, one without detaches it */
    CHECK_EQ_INT(put_lease(&t, "a", "3", 2).status, MVCC_STATUS_OK);
    CHECK(strcmp(keys_of(&t, 1, &j), "b") == 0);
    CHECK(strcmp(keys_of(&t, 2, &j), "a,c") == 0);
    ts_put(&t, "b", "plain");
    CHECK(strcmp(keys_of(&t, 1, &j), "") == 0);
    /* a delete detaches */
    CHECK_EQ_INT(ts_del(&t, "c", NULL), 1);
    CHECK(strcmp(keys_of(&t, 2, &j), "a") == 0);

    /* a txn put attaches; its unknown lease fails the whole txn */
    Etcdserverpb__PutRequest tp = ETCDSERVERPB__PUT_REQUEST__INIT;
    tp.key = bin("d");
    tp.value = bin("v");
    tp.lease = 1;
    Etcdserverpb__RequestOp rop = ETCDSERVERPB__REQUEST_OP__INIT;
    rop.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
    rop.request_put = &tp;
    Etcdserverpb__RequestOp *ops[1] = {&rop};
    Etcdserverpb__TxnRequest txn = ETCDSERVERPB__TXN_REQUEST__INIT;
    txn.success = ops;
    txn.n_success = 1;
    Ballastpb__Op op = BALLASTPB__OP__INIT;
    op.op_case = BALLASTPB__OP__OP_TXN;
    op.txn = &txn;
    CHECK_EQ_INT(ts_apply(&t, &op).status, MVCC_STATUS_OK);
    CHECK(strcmp(keys_of(&t, 1, &j), "d") == 0);
    int64_t rev = mvcc_current_revision(t.m);
    tp.lease = 99;
    r = ts_apply(&t, &op);
    CHECK_ERR(r, MVCC_STATUS_NOT_FOUND, "etcdserver: requested lease not found");
    CHECK_EQ_INT(mvcc_current_revision(t.m), rev);
    ts_close(&t);
}

typedef struct ev_log {
    int n;
    int64_t rev[16];
    int type[16];
    char key[16][8];
} ev_log;

static void on_events(void *arg, const mvcc_event *ev, size_t n)
{
    ev_log *l = arg;
    for (size_t i = 0; i < n; i++) {
        CHECK(l->n < 16 && ev[i].key_len < 8);
        l->rev[l->n] = ev[i].rev;
        l->type[l->n] = ev[i].type;
        memcpy(l->key[l->n], ev[i].key, ev[i].key_len);
        l->key[l->n][ev[i].key_len] = 0;
        l->n++;
    }
}

static void test_revoke_one_revision(void)
{
    tstore t;
    ts_open(&t);
    CHECK_EQ_INT(grant(&t, 5, 60, NULL).status, MVCC_STATUS_OK);
    put_lease(&t, "k2", "v", 5);
    put_lease(&t, "k1", "v", 5);
    put_lease(&t, "k3", "v", 5);
    ts_put(&t, "other", "v");
    CHECK_EQ_INT(mvcc_current_revision(t.m), 5);
    ev_log l = {0};
    mvcc_set_event_hook(t.m, on_events, &l);
    CHECK_EQ_INT(revoke_lease(&t, 5, NULL), 6);
    CHECK_EQ_INT(l.n, 3);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(l.rev[i], 6);
        CHECK_EQ_INT(l.type[i], MVCC_EVENT_DELETE);
    }
    /* in key order, as etcd's lessor sorts them */
    CHECK(strcmp(l.key[0], "k1") == 0 && strcmp(l.key[1], "k2") == 0 &&
          strcmp(l.key[2], "k3") == 0);
    mvcc_set_event_hook(t.m, NULL, NULL);
    CHECK_EQ_INT(lease_of(&t, "k1"), -1);
    CHECK_EQ_INT(lease_of(&t, "other"), 0);
    /* the revoked lease can no longer be used */
    mvcc_result r = put_lease(&t, "k1", "v", 5);
    CHECK_ERR(r, MVCC_STATUS_NOT_FOUND, "etcdserver: requested lease not found");
    ts_close(&t);
}

/* Grant, attach and revoke inside one entry: ops read each other's writes. */
static void test_one_entry(void)
{
    tstore t;
    ts_open(&t);
    Etcdserverpb__LeaseGrantRequest g = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
    g.id = 9;
    g.ttl = 10;
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    p.key = bin("x");
    p.value = bin("y");
    p.lease = 9;
    Etcdserverpb__LeaseRevokeRequest rv = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
    rv.id = 9;
    Ballastpb__Op o1 = BALLASTPB__OP__INIT, o2 = BALLASTPB__OP__INIT, o3 = BALLASTPB__OP__INIT;
    o1.op_case = BALLASTPB__OP__OP_LEASE_GRANT;
    o1.lease_grant = &g;
    o2.op_case = BALLASTPB__OP__OP_PUT;
    o2.put = &p;
    o3.op_case = BALLASTPB__OP__OP_LEASE_REVOKE;
    o3.lease_revoke = &rv;
    Ballastpb__Op *ops[3] = {&o1, &o2, &o3};
    mvcc_result res[3];
    t.out.len = 0;
    CHECK(mvcc_apply(t.m, ++t.index, &t.h, ops, 3, &t.out, res) == 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(res[i].status, MVCC_STATUS_OK);
    CHECK_EQ_INT(mvcc_current_revision(t.m), 3); /* put at 2, revoke's delete at 3 */
    CHECK_EQ_INT(lease_of(&t, "x"), -1);
    ts_close(&t);
}

static void test_restart(void)
{
    tstore t;
    ts_open(&t);
    joined j;
    grant(&t, 3, 30, NULL);
    grant(&t, 1, 10, NULL);
    grant(&t, 2, 20, NULL);
    put_lease(&t, "a", "v", 1);
    put_lease(&t, "b", "v", 3);
    revoke_lease(&t, 2, NULL);
    ts_reopen(&t);
    hook_log h = {0};
    CHECK(mvcc_lease_list(t.m, on_lease, &h) == 0);
    CHECK_EQ_INT(h.n, 2);
    CHECK_EQ_INT(h.id[0], 1);
    CHECK_EQ_INT(h.ttl[0], 10);
    CHECK_EQ_INT(h.id[1], 3);
    CHECK_EQ_INT(h.ttl[1], 30);
    CHECK(strcmp(keys_of(&t, 1, &j), "a") == 0);
    CHECK(strcmp(keys_of(&t, 3, &j), "b") == 0);
    CHECK_EQ_INT(revoke_lease(&t, 1, NULL), mvcc_current_revision(t.m));
    CHECK_EQ_INT(lease_of(&t, "a"), -1);
    CHECK_EQ_INT(lease_of(&t, "b"), 3);
    /* replaying an entry applied before the restart changes nothing */
    uint64_t applied = mvcc_applied_index(t.m);
    t.index = applied - 1;
    mvcc_result r = grant(&t, 77, 5, NULL);
    CHECK_EQ_INT(r.status, MVCC_STATUS_OK);
    CHECK_EQ_INT(grant(&t, 77, 5, NULL).status, MVCC_STATUS_OK); /* index applied+1: real */
    r = grant(&t, 77, 5, NULL);
    CHECK_ERR(r, MVCC_STATUS_FAILED_PRECONDITION, "etcdserver: lease already exists");
    ts_close(&t);
}

int main(void)
{
    test_grant_errors();
    test_attach_detach_move();
    test_revoke_one_revision();
    test_one_entry();
    test_restart();
    printf("test_lease: ok\n");
    return 0;
}
