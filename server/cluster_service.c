/* The Cluster service (MemberList, MemberAdd, MemberRemove, MemberUpdate,
 * MemberPromote), Maintenance.MoveLeader, and the member-to-member
 * /ballastpb.Internal/PublishMember. The member list is replicated data
 * (storage's MemberOp); the leader's raft node makes c-raft's configuration
 * follow it. */
#include <stdlib.h>
#include <string.h>

#include "ballast.h"
#include "member.h"

static const char ERR_BAD_URLS[] = "etcdserver: given member URLs are invalid";
static const char ERR_NOT_FOUND[] = "etcdserver: member not found";
static const char ERR_NOT_LEARNER[] = "etcdserver: can only promote a learner member";
static const char ERR_LEARNER_NOT_READY[] =
    "etcdserver: can only promote a learner member which is in sync with leader";
static const char ERR_TOO_MANY_LEARNERS[] = "etcdserver: too many learner members in cluster";
static const char ERR_NOMEM[] = "etcdserver: out of memory";
static const char ERR_NOT_ENOUGH_STARTED[] =
    "etcdserver: re-configuration failed due to not enough started members";
static const char ERR_UNHEALTHY[] = "etcdserver: unhealthy cluster";

/* etcd 3.4 allows one learner at a time, and promotes a learner whose log
 * has reached 90% of the leader's. */
#define MAX_LEARNERS 1
#define LEARNER_READY_PERCENT 90

/* etcd's Cluster service headers carry no revision. */
static void fill_header(ballast_server *b, Etcdserverpb__ResponseHeader *h)
{
    mvcc_header mh = ballast_header(b);
    h->cluster_id = mh.cluster_id;
    h->member_id = mh.member_id;
    h->raft_term = mh.raft_term;
}

/* The member list as etcd's messages, pointing into `src` (or, before the
 * list is recorded, this member alone). */
typedef struct member_view {
    Ballastpb__Member **src;
    size_t n_src;
    Etcdserverpb__Member *items;
    Etcdserverpb__Member **ptrs;
    size_t n;
    char **self_peers, **self_clients;
} member_view;

static char **url_texts(const config_url_list *l)
{
    char **v = calloc(l->n ? l->n : 1, sizeof *v);
    for (size_t i = 0; v && i < l->n; i++)
        v[i] = l->items[i].text;
    return v;
}

static void to_etcd(const Ballastpb__Member *m, Etcdserverpb__Member *out)
{
    etcdserverpb__member__init(out);
    out->id = m->id;
    out->name = m->name;
    out->peerurls = m->peer_urls;
    out->n_peerurls = m->n_peer_urls;
    out->clienturls = m->client_urls;
    out->n_clienturls = m->n_client_urls;
    out->islearner = m->is_learner;
}

static int member_view_load(ballast_server *b, member_view *v)
{
    memset(v, 0, sizeof *v);
    if (mvcc_members(b->store, &v->src, &v->n_src) != 0)
        return -1;
    size_t n = v->n_src ? v->n_src : 1;
    v->items = calloc(n, sizeof *v->items);
    v->ptrs = calloc(n, sizeof *v->ptrs);
    if (!v->items || !v->ptrs)
        return -1;
    for (size_t i = 0; i < v->n_src; i++) {
        to_etcd(v->src[i], &v->items[i]);
        v->ptrs[i] = &v->items[i];
    }
    v->n = v->n_src;
    if (v->n == 0) {
        Etcdserverpb__Member *me = &v->items[0];
        etcdserverpb__member__init(me);
        v->self_peers = url_texts(&b->cfg->initial_advertise_peer_urls);
        v->self_clients = url_texts(&b->cfg->advertise_client_urls);
        me->id = b->member_id;
        me->name = b->cfg->name;
        me->peerurls = v->self_peers;
        me->n_peerurls = b->cfg->initial_advertise_peer_urls.n;
        me->clienturls = v->self_clients;
        me->n_clienturls = b->cfg->advertise_client_urls.n;
        v->ptrs[0] = me;
        v->n = 1;
    }
    return 0;
}

static void member_view_free(member_view *v)
{
    mvcc_members_free(v->src, v->n_src);
    free(v->items);
    free(v->ptrs);
    free(v->self_peers);
    free(v->self_clients);
}

static const Ballastpb__Member *view_find(const member_view *v, uint64_t id)
{
    for (size_t i = 0; i < v->n_src; i++)
        if (v->src[i]->id == id)
            return v->src[i];
    return NULL;
}

/* etcd's --strict-reconfig-check (on by default), before a change of
 * voters: enough members must have started (published their attributes)
 * to be a quorum of the new configuration, or etcd refuses with "not enough
 * started members"; and the leader must have heard lately from every voter
 * (any add, a learner's too) or from a quorum of the voters that stay (a
 * removal), or it answers "unhealthy cluster". `removing` is the voter to
 * remove (0 for an add). Returns NULL or the error, and its code in *code. */
static const char *reconfig_refused(ballast_server *b, const member_view *v, uint64_t removing,
                                    int adding_voter, grpc_status_code *code)
{
    size_t voters = 0, started = 0, heard = 0; /* the voters that stay */
    uint64_t recent_ms = 2u * b->cfg->election_timeout_ms;
    for (size_t i = 0; i < v->n_src; i++) {
        const Ballastpb__Member *m = v->src[i];
        if (m->is_learner || m->id == removing)
            continue;
        voters++;
        started += m->name && m->name[0];
        uint64_t match, idle;
        heard += raft_node_progress(b->node, m->id, &match, &idle) && idle <= recent_ms;
    }
    size_t quorum = (voters + (adding_voter ? 1 : 0)) / 2 + 1;
    *code = GRPC_STATUS_FAILED_PRECONDITION;
    if ((removing || adding_voter) && started < quorum)
        return ERR_NOT_ENOUGH_STARTED;
    *code = GRPC_STATUS_UNAVAILABLE;
    if (removing ? heard < quorum : heard < voters)
        return ERR_UNHEALTHY;
    return NULL;
}

/* ---- MemberList ---- */

static void cluster_member_list(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    Etcdserverpb__MemberListRequest *r = ballast_unpack(call, &etcdserverpb__member_list_request__descriptor, data, len);
    if (!r)
        return;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    member_view v;
    if (member_view_load(b, &v) != 0) {
        member_view_free(&v);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, ERR_NOMEM);
        return;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    fill_header(b, &h);
    Etcdserverpb__MemberListResponse resp = ETCDSERVERPB__MEMBER_LIST_RESPONSE__INIT;
    resp.header = &h;
    resp.members = v.ptrs;
    resp.n_members = v.n;
    ballast_reply_packed(call, &resp.base);
    member_view_free(&v);
}

/* ---- changes ---- */

int cluster_urls_valid(char **urls, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        const char *u = urls[i];
        const char *rest = NULL;
        if (strncmp(u, "http://", 7) == 0)
            rest = u + 7;
        else if (strncmp(u, "https://", 8) == 0)
            rest = u + 8;
        else if (strncmp(u, "unix://", 7) == 0 || strncmp(u, "unixs://", 8) == 0)
            continue;
        if (!rest || !*rest)
            return 0;
        const char *colon = strrchr(rest, ':');
        if (!colon || colon == rest || !colon[1] || strchr(rest, '/'))
            return 0;
        for (const char *p = colon + 1; *p; p++)
            if (*p < '0' || *p > '9')
                return 0;
    }
    return 1;
}

/* What to answer once a MemberOp is applied. */
typedef enum { ANSWER_ADD, ANSWER_MEMBERS, ANSWER_PUBLISH } answer_kind;

typedef struct member_change {
    answer_kind kind;
    uint64_t id;
} member_change;

static void member_op_done(ballast_server *b, rpc_call *call, const mvcc_result *res,
                           const uint8_t *resp_base, void *extra)
{
    member_change *mc = extra;
    if (res->status != MVCC_STATUS_OK || mc->kind == ANSWER_PUBLISH) {
        ballast_reply_result(call, res, resp_base);
        free(mc);
        return;
    }
    member_view v;
    if (member_view_load(b, &v) != 0) {
        member_view_free(&v);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, ERR_NOMEM);
        free(mc);
        return;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    fill_header(b, &h);
    switch (mc->kind) {
    case ANSWER_ADD: {
        Etcdserverpb__MemberAddResponse resp = ETCDSERVERPB__MEMBER_ADD_RESPONSE__INIT;
        Etcdserverpb__Member added;
        const Ballastpb__Member *m = view_find(&v, mc->id);
        if (m) {
            to_etcd(m, &added);
            resp.member = &added;
        }
        resp.header = &h;
        resp.members = v.ptrs;
        resp.n_members = v.n;
        ballast_reply_packed(call, &resp.base);
        break;
    }
    default: {
        /* MemberRemove, MemberUpdate and MemberPromote answers have exactly
         * MemberListResponse's fields (header = 1, members = 2): one
         * encoder serves them all. */
        Etcdserverpb__MemberListResponse resp = ETCDSERVERPB__MEMBER_LIST_RESPONSE__INIT;
        resp.header = &h;
        resp.members = v.ptrs;
        resp.n_members = v.n;
        ballast_reply_packed(call, &resp.base);
        break;
    }
    }
    member_view_free(&v);
    free(mc);
}

/* Proposes a MemberOp of one member; the call is answered once applied. */
static void propose_change(ballast_server *b, rpc_call *call, Ballastpb__MemberOp__Kind kind,
                           Ballastpb__Member *m, answer_kind answer)
{
    member_change *mc = malloc(sizeof *mc);
    if (!mc) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, ERR_NOMEM);
        return;
    }
    mc->kind = answer;
    mc->id = m->id;
    Ballastpb__MemberOp op = BALLASTPB__MEMBER_OP__INIT;
    op.kind = kind;
    op.members = &m;
    op.n_members = 1;
    ballast_propose_msg(b, call, BATCH_OP_MEMBER, &op.base, member_op_done, mc);
}

static void cluster_member_add(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    if (ballast_route(b, call, "/etcdserverpb.Cluster/MemberAdd", cluster_member_add, data, len))
        return;
    Etcdserverpb__MemberAddRequest *r = ballast_unpack(call, &etcdserverpb__member_add_request__descriptor, data, len);
    if (!r)
        return;
    if (!cluster_urls_valid(r->peerurls, r->n_peerurls)) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, ERR_BAD_URLS);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return;
    }
    member_view v;
    const char *refused = NULL;
    grpc_status_code code = GRPC_STATUS_FAILED_PRECONDITION;
    size_t learners = 0;
    if (member_view_load(b, &v) == 0) {
        for (size_t i = 0; i < v.n_src; i++)
            learners += v.src[i]->is_learner;
        if (r->islearner && learners >= MAX_LEARNERS)
            refused = ERR_TOO_MANY_LEARNERS;
        else if (v.n_src > 0)
            refused = reconfig_refused(b, &v, 0, !r->islearner, &code);
    }
    member_view_free(&v);
    if (refused) {
        rpc_fail(call, code, refused);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return;
    }
    Ballastpb__Member m = BALLASTPB__MEMBER__INIT;
    /* The id follows from the peer URL and the cluster token, so the new
     * member, started with the same --initial-cluster-token, knows it. */
    m.id = member_id_for_url(r->peerurls[0], b->cfg->initial_cluster_token);
    m.peer_urls = r->peerurls;
    m.n_peer_urls = r->n_peerurls;
    m.is_learner = r->islearner;
    propose_change(b, call, BALLASTPB__MEMBER_OP__KIND__ADD, &m, ANSWER_ADD);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void cluster_member_remove(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    if (ballast_route(b, call, "/etcdserverpb.Cluster/MemberRemove", cluster_member_remove, data, len))
        return;
    Etcdserverpb__MemberRemoveRequest *r = ballast_unpack(call, &etcdserverpb__member_remove_request__descriptor, data, len);
    if (!r)
        return;
    member_view v;
    const char *refused = NULL;
    grpc_status_code code = GRPC_STATUS_OK;
    if (member_view_load(b, &v) == 0) {
        const Ballastpb__Member *gone = view_find(&v, r->id);
        if (gone && !gone->is_learner)
            refused = reconfig_refused(b, &v, r->id, 0, &code);
    }
    member_view_free(&v);
    if (refused) {
        rpc_fail(call, code, refused);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return;
    }
    Ballastpb__Member m = BALLASTPB__MEMBER__INIT;
    m.id = r->id;
    propose_change(b, call, BALLASTPB__MEMBER_OP__KIND__REMOVE, &m, ANSWER_MEMBERS);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void cluster_member_update(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    if (ballast_route(b, call, "/etcdserverpb.Cluster/MemberUpdate", cluster_member_update, data, len))
        return;
    Etcdserverpb__MemberUpdateRequest *r = ballast_unpack(call, &etcdserverpb__member_update_request__descriptor, data, len);
    if (!r)
        return;
    if (!cluster_urls_valid(r->peerurls, r->n_peerurls)) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, ERR_BAD_URLS);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return;
    }
    Ballastpb__Member m = BALLASTPB__MEMBER__INIT;
    m.id = r->id;
    m.peer_urls = r->peerurls;
    m.n_peer_urls = r->n_peerurls;
    propose_change(b, call, BALLASTPB__MEMBER_OP__KIND__UPDATE, &m, ANSWER_MEMBERS);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void cluster_member_promote(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    if (ballast_route(b, call, "/etcdserverpb.Cluster/MemberPromote", cluster_member_promote, data, len))
        return;
    Etcdserverpb__MemberPromoteRequest *r = ballast_unpack(call, &etcdserverpb__member_promote_request__descriptor, data, len);
    if (!r)
        return;
    uint64_t id = r->id;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    member_view v;
    const char *error = NULL;
    grpc_status_code code = GRPC_STATUS_OK;
    if (member_view_load(b, &v) != 0) {
        code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        error = ERR_NOMEM;
    } else {
        const Ballastpb__Member *m = view_find(&v, id);
        raft_node_status st;
        raft_node_get_status(b->node, &st);
        uint64_t match = 0, idle = 0;
        if (!m) {
            code = GRPC_STATUS_NOT_FOUND;
            error = ERR_NOT_FOUND;
        } else if (!m->is_learner) {
            code = GRPC_STATUS_FAILED_PRECONDITION;
            error = ERR_NOT_LEARNER;
        } else if (!raft_node_progress(b->node, id, &match, &idle) ||
                   match * 100 < st.last_index * LEARNER_READY_PERCENT) {
            code = GRPC_STATUS_FAILED_PRECONDITION;
            error = ERR_LEARNER_NOT_READY;
        }
    }
    member_view_free(&v);
    if (error) {
        rpc_fail(call, code, error);
        return;
    }
    Ballastpb__Member m = BALLASTPB__MEMBER__INIT;
    m.id = id;
    propose_change(b, call, BALLASTPB__MEMBER_OP__KIND__PROMOTE, &m, ANSWER_MEMBERS);
}

/* /ballastpb.Internal/PublishMember: a member's name and client URLs. */
static void cluster_publish_member(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    if (ballast_route(b, call, "/ballastpb.Internal/PublishMember", cluster_publish_member, data, len))
        return;
    Ballastpb__MemberOp *op = ballast_unpack(call, &ballastpb__member_op__descriptor, data, len);
    if (!op)
        return;
    if ((op->kind != BALLASTPB__MEMBER_OP__KIND__ATTRS && op->kind != BALLASTPB__MEMBER_OP__KIND__BOOTSTRAP) ||
        op->n_members == 0) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "etcdserver: not a member publication");
    } else {
        member_change *mc = malloc(sizeof *mc);
        if (!mc) {
            rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, ERR_NOMEM);
        } else {
            mc->kind = ANSWER_PUBLISH;
            mc->id = op->members[0]->id;
            ballast_propose_msg(b, call, BATCH_OP_MEMBER, &op->base, member_op_done, mc);
        }
    }
    protobuf_c_message_free_unpacked(&op->base, NULL);
}

/* ---- Maintenance.MoveLeader ---- */

void cluster_transfer_done(void *ctx, const char *error, void *arg)
{
    ballast_server *b = arg;
    rpc_call *call = ctx;
    if (error) {
        int precondition = strcmp(error, "etcdserver: not leader") == 0 ||
                           strcmp(error, "etcdserver: bad leader transferee") == 0;
        rpc_fail(call, precondition ? GRPC_STATUS_FAILED_PRECONDITION : GRPC_STATUS_UNAVAILABLE, error);
        return;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    ballast_fill_header(b, &h);
    Etcdserverpb__MoveLeaderResponse resp = ETCDSERVERPB__MOVE_LEADER_RESPONSE__INIT;
    resp.header = &h;
    ballast_reply_packed(call, &resp.base);
}

static void maintenance_move_leader(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    Etcdserverpb__MoveLeaderRequest *r = ballast_unpack(call, &etcdserverpb__move_leader_request__descriptor, data, len);
    if (!r)
        return;
    uint64_t target = r->targetid;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    raft_node_status st;
    raft_node_get_status(b->node, &st);
    if (!st.is_leader) {
        rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "etcdserver: not leader");
        return;
    }
    /* etcd only hands leadership to a voting member */
    member_view v;
    int ok = member_view_load(b, &v) == 0;
    const Ballastpb__Member *m = ok ? view_find(&v, target) : NULL;
    int voter = m && !m->is_learner;
    member_view_free(&v);
    if (!voter || target == 0) {
        rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "etcdserver: bad leader transferee");
        return;
    }
    if (target == b->member_id) {
        cluster_transfer_done(call, NULL, b);
        return;
    }
    raft_node_transfer(b->node, target, call);
}

size_t cluster_service_methods(ballast_server *b, rpc_method *out)
{
    out[0] = (rpc_method){"/etcdserverpb.Cluster/MemberList", cluster_member_list, b, 2};
    out[1] = (rpc_method){"/etcdserverpb.Cluster/MemberAdd", cluster_member_add, b, 1};
    out[2] = (rpc_method){"/etcdserverpb.Cluster/MemberRemove", cluster_member_remove, b, 1};
    out[3] = (rpc_method){"/etcdserverpb.Cluster/MemberUpdate", cluster_member_update, b, 1};
    out[4] = (rpc_method){"/etcdserverpb.Cluster/MemberPromote", cluster_member_promote, b, 1};
    out[5] = (rpc_method){"/ballastpb.Internal/PublishMember", cluster_publish_member, b, 2};
    out[6] = (rpc_method){"/etcdserverpb.Maintenance/MoveLeader", maintenance_move_leader, b, 1};
    out[7] = (rpc_method){"/ballastpb.Internal/Forward", cluster_forwarded, b, 4};
    return 8;
}
