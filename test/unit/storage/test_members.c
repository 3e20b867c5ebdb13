/* The replicated member list: MemberOp entries (bootstrap, add, remove,
 * update, promote, attributes), etcd's errors, the cluster id, the
 * generation counter, and persistence across a reopen. */
#include "storage_test.h"

typedef struct member_spec {
    uint64_t id;
    const char *name;
    const char *peer;
    const char *client;
    int learner;
} member_spec;

static mvcc_result member_op(tstore *t, Ballastpb__MemberOp__Kind kind, const member_spec *specs, size_t n,
                             uint64_t cluster_id)
{
    Ballastpb__Member m[4];
    Ballastpb__Member *ptrs[4];
    char *peers[4], *clients[4];
    CHECK(n <= 4);
    for (size_t i = 0; i < n; i++) {
        ballastpb__member__init(&m[i]);
        m[i].id = specs[i].id;
        m[i].name = (char *)(specs[i].name ? specs[i].name : "");
        peers[i] = (char *)specs[i].peer;
        clients[i] = (char *)specs[i].client;
        m[i].peer_urls = &peers[i];
        m[i].n_peer_urls = specs[i].peer ? 1 : 0;
        m[i].client_urls = &clients[i];
        m[i].n_client_urls = specs[i].client ? 1 : 0;
        m[i].is_learner = specs[i].learner;
        ptrs[i] = &m[i];
    }
    Ballastpb__MemberOp mo = BALLASTPB__MEMBER_OP__INIT;
    mo.kind = kind;
    mo.members = ptrs;
    mo.n_members = n;
    mo.cluster_id = cluster_id;
    Ballastpb__Op op = BALLASTPB__OP__INIT;
    op.op_case = BALLASTPB__OP__OP_MEMBER;
    op.member = &mo;
    return ts_apply(t, &op);
}

static const Ballastpb__Member *find(Ballastpb__Member **list, size_t n, uint64_t id)
{
    for (size_t i = 0; i < n; i++)
        if (list[i]->id == id)
            return list[i];
    return NULL;
}

static void test_bootstrap_once(void)
{
    tstore t;
    ts_open(&t);
    CHECK_EQ_INT(mvcc_cluster_id(t.m), 0);
    uint64_t gen0 = mvcc_members_generation(t.m);
    member_spec boot[3] = {{1, "a", "http://127.0.0.1:1", NULL, 0},
                           {2, "b", "http://127.0.0.1:2", NULL, 0},
                           {3, "c", "http://127.0.0.1:3", NULL, 0}};
    CHECK_EQ_INT(member_op(&t, BALLASTPB__MEMBER_OP__KIND__BOOTSTRAP, boot, 3, 77).status, MVCC_STATUS_OK);
    CHECK_EQ_INT(mvcc_cluster_id(t.m), 77);
    CHECK(mvcc_members_generation(t.m) != gen0);
    /* a second bootstrap (another leader of the same new cluster) is a no-op */
    member_spec other[1] = {{9, "z", "http://127.0.0.1:9", NULL, 0}};
    uint64_t gen1 = mvcc_members_generation(t.m);
    CHECK_EQ_INT(member_op(&t, BALLASTPB__MEMBER_OP__KIND__BOOTSTRAP, other, 1, 99).status, MVCC_STATUS_OK);
    CHECK_EQ_INT(mvcc_cluster_id(t.m), 77);
    CHECK_EQ_INT(mvcc_members_generation(t.m), gen1);
    Ballastpb__Member **list;
    size_t n;
    CHECK(mvcc_members(t.m, &list, &n) == 0);
    CHECK_EQ_INT(n, 3);
    CHECK(find(list, n, 9) == NULL);
    CHECK(strcmp(find(list, n, 2)->name, "b") == 0);
    CHECK(strcmp(find(list, n, 3)->peer_urls[0], "http://127.0.0.1:3") == 0);
    mvcc_members_free(list, n);
    /* a member op is not a KV write: the revision stays */
    CHECK_EQ_INT(mvcc_current_revision(t.m), 1);
    ts_close(&t);
}

static void test_changes_and_errors(void)
{
    tstore t;
    ts_open(&t);
    member_spec boot[2] = {{1, "a", "http://127.0.0.1:1", NULL, 0}, {2, "b", "http://127.0.0.1:2", NULL, 0}};
    CHECK_EQ_INT(member_op(&t, BALLASTPB__MEMBER_OP__KIND__BOOTSTRAP, boot, 2, 5).status, MVCC_STATUS_OK);

    /* add: a duplicate id or a peer URL in use is refused with etcd's error */
    member_spec add[1] = {{4, NULL, "http://127.0.0.1:4", NULL, 1}};
    CHECK_EQ_INT(member_op(&t, BALLASTPB__MEMBER_OP__KIND__ADD, add, 1, 0).status, MVCC_STATUS_OK);
    mvcc_result r = member_op(&t, BALLASTPB__MEMBER_OP__KIND__ADD, add, 1, 0);
    CHECK_EQ_INT(r.status, MVCC_STATUS_FAILED_PRECONDITION);
    CHECK(strcmp(r.message, "etcdserver: member ID already exist") == 0);
    member_spec same_url[1] = {{5, NULL, "http://127.0.0.1:2", NULL, 0}};
    r = member_op(&t, BALLASTPB__MEMBER_OP__KIND__ADD, same_url, 1, 0);
    CHECK_EQ_INT(r.status, MVCC_STATUS_FAILED_PRECONDITION);
    CHECK(strcmp(r.message, "etcdserver: Peer URLs already exists") == 0);

    /* attributes: name and client URLs, peer URLs kept */
    member_spec attrs[1] = {{4, "d", NULL, "http://127.0.0.1:40", 0}};
    CHECK_EQ_INT(member_op(&t, BALLASTPB__MEMBER_OP__KIND__ATTRS, attrs, 1, 0).status, MVCC_STATUS_OK);

    /* promote: only a learner */
    member_spec id1[1] = {{1, NULL, NULL, NULL, 0}};
    r = member_op(&t, BALLASTPB__MEMBER_OP__KIND__PROMOTE, id1, 1, 0);
    CHECK_EQ_INT(r.status, MVCC_STATUS_FAILED_PRECONDITION);
    CHECK(strcmp(r.message, "etcdserver: can only promote a learner member") == 0);
    member_spec id4[1] = {{4, NULL, NULL, NULL, 0}};
    CHECK_EQ_INT(member_op(&t, BALLASTPB__MEMBER_OP__KIND__PROMOTE, id4, 1, 0).status, MVCC_STATUS_OK);

    /* update: new peer URLs, name and client URLs kept */
    member_spec upd[1] = {{4, NULL, "http://127.0.0.1:44", NULL, 0}};
    CHECK_EQ_INT(member_op(&t, BALLASTPB__MEMBER_OP__KIND__UPDATE, upd, 1, 0).status, MVCC_STATUS_OK);
    Ballastpb__Member **list;
    size_t n;
    CHECK(mvcc_members(t.m, &list, &n) == 0);
    const Ballastpb__Member *m4 = find(list, n, 4);
    CHECK(m4 && !m4->is_learner && strcmp(m4->name, "d") == 0);
    CHECK(m4->n_peer_urls == 1 && strcmp(m4->peer_urls[0], "http://127.0.0.1:44") == 0);
    CHECK(m4->n_client_urls == 1 && strcmp(m4->client_urls[0], "http://127.0.0.1:40") == 0);
    mvcc_members_free(list, n);

    /* remove, then remove again / promote / update an unknown member */
    member_spec id2[1] = {{2, NULL, "http://127.0.0.1:22", NULL, 0}};
    CHECK_EQ_INT(member_op(&t, BALLASTPB__MEMBER_OP__KIND__REMOVE, id2, 1, 0).status, MVCC_STATUS_OK);
    r = member_op(&t, BALLASTPB__MEMBER_OP__KIND__REMOVE, id2, 1, 0);
    CHECK_EQ_INT(r.status, MVCC_STATUS_NOT_FOUND);
    CHECK(strcmp(r.message, "etcdserver: member not found") == 0);
    CHECK_EQ_INT(member_op(&t, BALLASTPB__MEMBER_OP__KIND__UPDATE, id2, 1, 0).status, MVCC_STATUS_NOT_FOUND);
    CHECK_EQ_INT(member_op(&t, BALLASTPB__MEMBER_OP__KIND__PROMOTE, id2, 1, 0).status, MVCC_STATUS_NOT_FOUND);
    /* attributes of a removed member change nothing */
    member_spec late[1] = {{2, "b", NULL, "http://127.0.0.1:20", 0}};
    CHECK_EQ_INT(member_op(&t, BALLASTPB__MEMBER_OP__KIND__ATTRS, late, 1, 0).status, MVCC_STATUS_OK);

    /* everything survives a reopen */
    ts_reopen(&t);
    CHECK_EQ_INT(mvcc_cluster_id(t.m), 5);
    CHECK(mvcc_members(t.m, &list, &n) == 0);
    CHECK_EQ_INT(n, 2);
    CHECK(find(list, n, 1) && find(list, n, 4) && !find(list, n, 2));
    mvcc_members_free(list, n);
    ts_close(&t);
}

/* A failed op in an entry with other ops leaves the member list of the
 * entry's successful ops. */
static void test_batch_entry(void)
{
    tstore t;
    ts_open(&t);
    member_spec boot[1] = {{1, "a", "http://127.0.0.1:1", NULL, 0}};
    CHECK_EQ_INT(member_op(&t, BALLASTPB__MEMBER_OP__KIND__BOOTSTRAP, boot, 1, 5).status, MVCC_STATUS_OK);
    Ballastpb__Member a = BALLASTPB__MEMBER__INIT, b = BALLASTPB__MEMBER__INIT;
    char *pa = "http://127.0.0.1:7", *pb = "http://127.0.0.1:7";
    a.id = 7;
    a.peer_urls = &pa;
    a.n_peer_urls = 1;
    b.id = 8;
    b.peer_urls = &pb;
    b.n_peer_urls = 1;
    Ballastpb__Member *pa_[1] = {&a}, *pb_[1] = {&b};
    Ballastpb__MemberOp ma = BALLASTPB__MEMBER_OP__INIT, mb = BALLASTPB__MEMBER_OP__INIT;
    ma.kind = mb.kind = BALLASTPB__MEMBER_OP__KIND__ADD;
    ma.members = pa_;
    ma.n_members = 1;
    mb.members = pb_;
    mb.n_members = 1;
    Ballastpb__Op oa = BALLASTPB__OP__INIT, ob = BALLASTPB__OP__INIT;
    oa.op_case = ob.op_case = BALLASTPB__OP__OP_MEMBER;
    oa.member = &ma;
    ob.member = &mb;
    Ballastpb__Op *ops[2] = {&oa, &ob};
    mvcc_result res[2];
    t.out.len = 0;
    CHECK(mvcc_apply(t.m, ++t.index, &t.h, ops, 2, &t.out, res) == 0);
    CHECK_EQ_INT(res[0].status, MVCC_STATUS_OK);
    /* the second sees the first's write: its peer URL is taken */
    CHECK_EQ_INT(res[1].status, MVCC_STATUS_FAILED_PRECONDITION);
    Ballastpb__Member **list;
    size_t n;
    CHECK(mvcc_members(t.m, &list, &n) == 0);
    CHECK_EQ_INT(n, 2);
    CHECK(find(list, n, 7) && !find(list, n, 8));
    mvcc_members_free(list, n);
    ts_close(&t);
}

int main(void)
{
    test_bootstrap_once();
    test_changes_and_errors();
    test_batch_entry();
    printf("test_members: ok\n");
    return 0;
}
