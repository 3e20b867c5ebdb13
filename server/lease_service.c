/* The Lease service (etcd 3.4's v3rpc lease server and etcdserver lease
 * calls). LeaseGrant and LeaseRevoke are raft proposals applied by the
 * store; LeaseKeepAlive, LeaseTimeToLive and LeaseLeases are answered from
 * this member's lessor, which keeps expiry times only while it leads. When
 * a lease expires the lessor asks for a LeaseRevoke proposal like a
 * client's, so every member deletes its keys at the same revision. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ballast.h"

static const char ERR_NO_LEADER[] = "etcdserver: no leader";
static const char ERR_NOMEM[] = "etcdserver: out of memory";

void lease_service_leader_change(void *arg, int leading)
{
    ballast_server *b = arg;
    if (leading)
        lessor_promote(b->lessor);
    else
        lessor_demote(b->lessor);
}

/* The lessor's thread: a lease expired on the leader. */
static void lease_expired(void *arg, int64_t id)
{
    ballast_server *b = arg;
    Etcdserverpb__LeaseRevokeRequest r = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
    r.id = id;
    ballast_propose_msg(b, NULL, BATCH_OP_LEASE_REVOKE, &r.base, NULL, NULL);
}

/* etcd's ID generator (pkg/idutil): the member ID's low 16 bits, then the
 * start time in ms (40 bits) and an 8-bit counter, incremented per ID; lease
 * IDs keep the low 63 bits so they are positive. */
static void lease_ids_init(ballast_server *b)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    b->next_lease_id = ((b->member_id & 0xffffu) << 48) | ((ms & 0xffffffffffull) << 8);
}

static int64_t lease_id_next(ballast_server *b)
{
    /* atomic: other queue threads increment it at the same time */
    uint64_t prefix = __atomic_load_n(&b->next_lease_id, __ATOMIC_RELAXED) & ~0xffffffffffffull;
    for (;;) {
        uint64_t n = __atomic_add_fetch(&b->next_lease_id, 1, __ATOMIC_RELAXED);
        int64_t id = (int64_t)((prefix | (n & 0xffffffffffffull)) & 0x7fffffffffffffffull);
        int64_t ttl, rem;
        if (id != 0 && lessor_lookup(b->lessor, id, &ttl, &rem) == LESSOR_NOT_FOUND)
            return id;
    }
}

int lease_service_init(ballast_server *b, char **errmsg)
{
    const ballast_config *c = b->cfg;
    /* etcd: ceil(1.5 election timeouts, counted in heartbeats) seconds */
    uint64_t hb = c->heartbeat_interval_ms ? c->heartbeat_interval_ms : 1;
    uint64_t min_ms = (3 * (c->election_timeout_ms / hb) / 2) * hb;
    b->min_lease_ttl = (int64_t)((min_ms + 999) / 1000);
    lease_ids_init(b);
    lessor_config lc = {
        .expired = lease_expired,
        .expired_arg = b,
        .promote_extend_ms = c->election_timeout_ms,
    };
    b->lessor = lessor_new(&lc);
    if (!b->lessor) {
        *errmsg = strdup("out of memory");
        return -1;
    }
    mvcc_set_lease_hook(b->store, lessor_store_changed, b->lessor);
    if (mvcc_lease_list(b->store, lessor_store_changed, b->lessor) != 0) {
        *errmsg = strdup("cannot read the leases from the store");
        return -1;
    }
    if (lessor_start(b->lessor) != 0) {
        *errmsg = strdup("cannot start the lease expiry thread");
        return -1;
    }
    return 0;
}

void lease_service_stop_timers(ballast_server *b)
{
    lessor_stop(b->lessor);
}

int lease_service_reload(ballast_server *b)
{
    /* Leases the new store does not have are forgotten, then every lease
     * it has is (re)loaded. */
    int64_t *ids;
    size_t n;
    if (lessor_leases(b->lessor, &ids, &n) != 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        lessor_store_changed(b->lessor, ids[i], 0);
    free(ids);
    return mvcc_lease_list(b->store, lessor_store_changed, b->lessor);
}

void lease_service_free(ballast_server *b)
{
    mvcc_set_lease_hook(b->store, NULL, NULL);
    lessor_free(b->lessor);
    b->lessor = NULL;
}

/* ---- unary methods ---- */

static void lease_grant(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    if (ballast_route(b, call, "/etcdserverpb.Lease/LeaseGrant", lease_grant, data, len))
        return;
    Etcdserverpb__LeaseGrantRequest *r = ballast_unpack(call, &etcdserverpb__lease_grant_request__descriptor, data, len);
    if (!r)
        return;
    if (ballast_quota_check(b, BALLAST_COST_LEASE) != 0) {
        protobuf_c_message_free_unpacked(&r->base, NULL);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, BALLAST_ERR_NO_SPACE);
        return;
    }
    /* Chosen here, not at apply, so that every member applies the same. */
    if (r->id == 0)
        r->id = lease_id_next(b);
    if (r->ttl < b->min_lease_ttl)
        r->ttl = b->min_lease_ttl;
    ballast_propose_msg(b, call, BATCH_OP_LEASE_GRANT, &r->base, NULL, NULL);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void lease_revoke(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    if (ballast_route(b, call, "/etcdserverpb.Lease/LeaseRevoke", lease_revoke, data, len))
        return;
    Etcdserverpb__LeaseRevokeRequest *r = ballast_unpack(call, &etcdserverpb__lease_revoke_request__descriptor, data, len);
    if (!r)
        return;
    ballast_propose_msg(b, call, BATCH_OP_LEASE_REVOKE, &r->base, NULL, NULL);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

typedef struct key_list {
    ProtobufCBinaryData *keys;
    size_t n, cap;
    int failed;
} key_list;

static void add_key(void *arg, const uint8_t *key, size_t len)
{
    key_list *l = arg;
    if (l->failed)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        ProtobufCBinaryData *k = realloc(l->keys, cap * sizeof *k);
        if (!k) {
            l->failed = 1;
            return;
        }
        l->keys = k;
        l->cap = cap;
    }
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) {
        l->failed = 1;
        return;
    }
    memcpy(copy, key, len);
    l->keys[l->n++] = (ProtobufCBinaryData){len, copy};
}

static void lease_time_to_live(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    if (ballast_route(b, call, "/etcdserverpb.Lease/LeaseTimeToLive", lease_time_to_live, data, len))
        return;
    Etcdserverpb__LeaseTimeToLiveRequest *r = ballast_unpack(call, &etcdserverpb__lease_time_to_live_request__descriptor, data, len);
    if (!r)
        return;
    int64_t id = r->id;
    int want_keys = r->keys;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    if (!lessor_is_primary(b->lessor)) {
        rpc_fail(call, GRPC_STATUS_UNAVAILABLE, ERR_NO_LEADER);
        return;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    Etcdserverpb__LeaseTimeToLiveResponse resp = ETCDSERVERPB__LEASE_TIME_TO_LIVE_RESPONSE__INIT;
    resp.header = &h;
    resp.id = id;
    int64_t ttl, remaining;
    key_list kl = {0};
    if (lessor_lookup(b->lessor, id, &ttl, &remaining) != LESSOR_OK) {
        resp.ttl = -1; /* etcd answers an unknown lease, not an error */
    } else {
        resp.ttl = remaining / 1000000000LL;
        resp.grantedttl = ttl;
        if (want_keys && (mvcc_lease_keys(b->store, id, add_key, &kl) != 0 || kl.failed)) {
            kl.failed = 1;
        } else {
            resp.keys = kl.keys;
            resp.n_keys = kl.n;
        }
    }
    ballast_fill_header(b, &h);
    if (kl.failed)
        rpc_fail(call, GRPC_STATUS_INTERNAL, "etcdserver: storage read failed");
    else
        ballast_reply_packed(call, &resp.base);
    for (size_t i = 0; i < kl.n; i++)
        free(kl.keys[i].data);
    free(kl.keys);
}

static void lease_leases(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    if (ballast_route(b, call, "/etcdserverpb.Lease/LeaseLeases", lease_leases, data, len))
        return;
    Etcdserverpb__LeaseLeasesRequest *r = ballast_unpack(call, &etcdserverpb__lease_leases_request__descriptor, data, len);
    if (!r)
        return;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    int64_t *ids;
    size_t n;
    Etcdserverpb__LeaseStatus *st = NULL;
    Etcdserverpb__LeaseStatus **ptrs = NULL;
    if (lessor_leases(b->lessor, &ids, &n) != 0 ||
        (n && (!(st = calloc(n, sizeof *st)) || !(ptrs = calloc(n, sizeof *ptrs))))) {
        free(ids);
        free(st);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, ERR_NOMEM);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        st[i] = (Etcdserverpb__LeaseStatus)ETCDSERVERPB__LEASE_STATUS__INIT;
        st[i].id = ids[i];
        ptrs[i] = &st[i];
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    ballast_fill_header(b, &h);
    Etcdserverpb__LeaseLeasesResponse resp = ETCDSERVERPB__LEASE_LEASES_RESPONSE__INIT;
    resp.header = &h;
    resp.leases = ptrs;
    resp.n_leases = n;
    ballast_reply_packed(call, &resp.base);
    free(ptrs);
    free(st);
    free(ids);
}

static void lease_renew(rpc_call *call, const uint8_t *data, size_t len, void *arg);

size_t lease_service_methods(ballast_server *b, rpc_method *out)
{
    out[0] = (rpc_method){"/etcdserverpb.Lease/LeaseGrant", lease_grant, b, 8};
    out[1] = (rpc_method){"/etcdserverpb.Lease/LeaseRevoke", lease_revoke, b, 8};
    out[2] = (rpc_method){"/etcdserverpb.Lease/LeaseTimeToLive", lease_time_to_live, b, 8};
    out[3] = (rpc_method){"/etcdserverpb.Lease/LeaseLeases", lease_leases, b, 2};
    out[4] = (rpc_method){"/ballastpb.Internal/LeaseRenew", lease_renew, b, 4};
    return 5;
}

/* ---- LeaseKeepAlive: one response per request, from the leader's lessor ---- */

static void keepalive_open(rpc_stream *st, void *arg)
{
    cluster_stream_open(arg, st);
}

/* The leader's answer to one keep-alive request: the encoded response in
 * buf (*n bytes), or a failure status with etcd's message. */
static grpc_status_code keepalive_answer(ballast_server *b, const uint8_t *msg, size_t len, uint8_t *buf,
                                         size_t cap, size_t *n, const char **error)
{
    Etcdserverpb__LeaseKeepAliveRequest *req = ballast_decode(&etcdserverpb__lease_keep_alive_request__descriptor, msg, len);
    if (!req) {
        *error = BALLAST_ERR_MALFORMED;
        return GRPC_STATUS_INTERNAL;
    }
    int64_t id = req->id;
    etcdserverpb__lease_keep_alive_request__free_unpacked(req, NULL);
    /* The header is taken before the renew, as etcd does: its revision is
     * never later than the keep-alive. */
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    ballast_fill_header(b, &h);
    int64_t ttl = 0;
    int rc = lessor_renew(b->lessor, id, &ttl);
    if (rc == LESSOR_NOT_PRIMARY) {
        *error = ERR_NO_LEADER;
        return GRPC_STATUS_UNAVAILABLE;
    }
    Etcdserverpb__LeaseKeepAliveResponse resp = ETCDSERVERPB__LEASE_KEEP_ALIVE_RESPONSE__INIT;
    resp.header = &h;
    resp.id = id;
    resp.ttl = rc == LESSOR_OK ? ttl : 0; /* an unknown lease gets TTL 0 */
    *n = protobuf_c_message_get_packed_size(&resp.base);
    if (*n > cap) {
        *error = "etcdserver: response too large";
        return GRPC_STATUS_INTERNAL;
    }
    protobuf_c_message_pack(&resp.base, buf);
    return GRPC_STATUS_OK;
}

/* A follower's keep-alive, answered by the leader. */
static void keepalive_forwarded(void *arg, grpc_status_code code, const char *message,
                                const uint8_t *resp, size_t len)
{
    rpc_stream *st = arg;
    if (code == GRPC_STATUS_OK) {
        rpc_stream_send(st, resp, len);
    } else {
        cluster_map_forward_error(&code, &message);
        rpc_stream_finish(st, code, message);
    }
    rpc_stream_release(st);
}

static void keepalive_message(rpc_stream *st, const uint8_t *msg, size_t len, void *arg)
{
    ballast_server *b = arg;
    raft_node_status ns;
    raft_node_get_status(b->node, &ns);
    char target[300];
    if (!lessor_is_primary(b->lessor) && !ns.is_leader && ns.leader_id &&
        cluster_leader_target(b, ns.leader_id, target, sizeof target) == 0) {
        rpc_stream_ref(st);
        peer_client_call(b->peers, target, "/ballastpb.Internal/LeaseRenew", msg, len,
                         cluster_request_timeout_ms(b), keepalive_forwarded, st);
        return;
    }
    uint8_t buf[128];
    size_t n = 0;
    const char *error = NULL;
    grpc_status_code code = keepalive_answer(b, msg, len, buf, sizeof buf, &n, &error);
    if (code != GRPC_STATUS_OK)
        rpc_stream_finish(st, code, error);
    else
        rpc_stream_send(st, buf, n);
}

/* /ballastpb.Internal/LeaseRenew: a follower's keep-alive, on the leader. */
static void lease_renew(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    uint8_t buf[128];
    size_t n = 0;
    const char *error = NULL;
    grpc_status_code code = keepalive_answer(arg, data, len, buf, sizeof buf, &n, &error);
    if (code != GRPC_STATUS_OK)
        rpc_fail(call, code, error);
    else
        rpc_reply(call, buf, n);
}

/* etcd's keep-alive loop returns when the client stops sending: the stream
 * ends with OK. */
static void keepalive_recv_end(rpc_stream *st, void *arg)
{
    (void)arg;
    rpc_stream_finish(st, GRPC_STATUS_OK, NULL);
}

static void keepalive_done(rpc_stream *st, int cancelled, void *arg)
{
    (void)cancelled;
    cluster_stream_done(arg, st);
    rpc_stream_release(st);
}

static const rpc_stream_handler keepalive_handler = {keepalive_open, keepalive_message,
                                                     keepalive_recv_end, keepalive_done};

size_t lease_service_streams(ballast_server *b, rpc_stream_method *out)
{
    out[0] = (rpc_stream_method){"/etcdserverpb.Lease/LeaseKeepAlive", &keepalive_handler, b};
    return 1;
}
