/* Fuzz target: request decoding and validation for every service, as the
 * server does it before anything is proposed or answered.
 *
 * The first input byte picks a method (modulo the table below), the rest is
 * the request message as it arrives in a gRPC frame. Every method decodes
 * it with its descriptor (ballast_decode, which ballast_unpack runs) and a
 * decoded request must encode and decode again to the same bytes. Then the method's own
 * checks run, the very functions its handler calls:
 *   - KV: mvcc_validate_* under etcd's limits and under tiny ones (what
 *     passes the tiny limits must pass etcd's); a valid Txn is read-only
 *     exactly when both branches hold only Ranges; a write that passes is
 *     framed as a raft entry the way the server proposes it (the client's
 *     own bytes) and must decode at apply — an entry that does not decode
 *     stops apply for good.
 *   - Cluster MemberAdd/MemberUpdate: cluster_urls_valid, and the member ID
 *     derived from the first URL.
 *   - Watch: the payload is a stream of requests (one length byte, then the
 *     WatchRequest) given to a watch hub over an empty store through
 *     watch_stream_request, as the Watch service does; every response the
 *     hub sends must decode as a WatchResponse.
 *   - LeaseGrant, LeaseRevoke, Alarm: proposed re-packed from the decoded
 *     request, which must decode at apply.
 *   - The other Lease, Maintenance and Cluster methods, and Auth (which
 *     Ballast answers UNIMPLEMENTED): decoding only; their handlers check
 *     nothing more before proposing or answering. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ballast.h"
#include "entry_codec.h"
#include "member.h"
#include "mvcc.h"
#include "watch.h"

#include "fuzz_check.h"

static const mvcc_limits etcd_limits = {128, 1572864};
static const mvcc_limits tiny_limits = {2, 64};

/* The client's bytes framed as one raft entry (kv_service's propose) must
 * decode as one op of that type. */
static void check_proposable(batch_op_type type, const uint8_t *data, size_t len)
{
    batch_op op = {type, data, len};
    size_t size = entry_encoded_size(&op, 1);
    uint8_t *frame = malloc(size);
    FUZZ_CHECK(frame);
    entry_encode(&op, 1, frame, size);
    entry_arena arena;
    entry_arena_init(&arena);
    entry_decoded d;
    FUZZ_CHECK(entry_decode(frame, size, &arena, &d) == 0);
    FUZZ_CHECK(d.n_ops == 1 && d.ops[0]->op_case == (Ballastpb__Op__OpCase)type);
    entry_arena_free(&arena);
    free(frame);
}

static void check_result(int bad, const mvcc_result *r)
{
    if (bad)
        FUZZ_CHECK(r->status != MVCC_STATUS_OK && r->message && r->message[0]);
}

typedef int (*validate_fn)(const void *req, const mvcc_limits *l, mvcc_result *res);

/* Runs a validation under both limits; returns whether etcd's accept it. */
static int validate_both(validate_fn fn, const void *req)
{
    mvcc_result r1, r2;
    int bad_etcd = fn(req, &etcd_limits, &r1);
    int bad_tiny = fn(req, &tiny_limits, &r2);
    check_result(bad_etcd, &r1);
    check_result(bad_tiny, &r2);
    FUZZ_CHECK(!(bad_etcd && !bad_tiny));
    return !bad_etcd;
}

static void check_range(const ProtobufCMessage *m, const uint8_t *data, size_t len)
{
    (void)data, (void)len;
    validate_both((validate_fn)mvcc_validate_range, m);
}

static void check_put(const ProtobufCMessage *m, const uint8_t *data, size_t len)
{
    if (validate_both((validate_fn)mvcc_validate_put, m))
        check_proposable(BATCH_OP_PUT, data, len);
}

static void check_delete_range(const ProtobufCMessage *m, const uint8_t *data, size_t len)
{
    if (validate_both((validate_fn)mvcc_validate_delete_range, m))
        check_proposable(BATCH_OP_DELETE_RANGE, data, len);
}

static int only_ranges(Etcdserverpb__RequestOp *const *ops, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ops[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE)
            return 0;
    return 1;
}

static void check_txn(const ProtobufCMessage *m, const uint8_t *data, size_t len)
{
    const Etcdserverpb__TxnRequest *t = (const Etcdserverpb__TxnRequest *)m;
    if (!validate_both((validate_fn)mvcc_validate_txn, m))
        return;
    int ro = mvcc_txn_is_read_only(t);
    FUZZ_CHECK(ro == (only_ranges(t->success, t->n_success) && only_ranges(t->failure, t->n_failure)));
    if (!ro)
        check_proposable(BATCH_OP_TXN, data, len);
}

static void check_compaction(const ProtobufCMessage *m, const uint8_t *data, size_t len)
{
    (void)m;
    check_proposable(BATCH_OP_COMPACTION, data, len);
}

/* LeaseGrant, LeaseRevoke and Alarm are proposed re-packed from the
 * decoded request (ballast_propose_msg), not as the client's bytes. */
static void check_repacked(batch_op_type type, const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    FUZZ_CHECK(buf);
    protobuf_c_message_pack(m, buf);
    check_proposable(type, buf, len);
    free(buf);
}

static void check_lease_grant(const ProtobufCMessage *m, const uint8_t *data, size_t len)
{
    (void)data, (void)len;
    check_repacked(BATCH_OP_LEASE_GRANT, m);
}

static void check_lease_revoke(const ProtobufCMessage *m, const uint8_t *data, size_t len)
{
    (void)data, (void)len;
    check_repacked(BATCH_OP_LEASE_REVOKE, m);
}

static void check_alarm(const ProtobufCMessage *m, const uint8_t *data, size_t len)
{
    (void)data, (void)len;
    check_repacked(BATCH_OP_ALARM, m);
}

static void check_peer_urls(char **urls, size_t n)
{
    if (!cluster_urls_valid(urls, n))
        return;
    FUZZ_CHECK(n > 0);
    FUZZ_CHECK(member_id_for_url(urls[0], "etcd-cluster") != 0);
}

static void check_member_add(const ProtobufCMessage *m, const uint8_t *data, size_t len)
{
    (void)data, (void)len;
    const Etcdserverpb__MemberAddRequest *r = (const Etcdserverpb__MemberAddRequest *)m;
    check_peer_urls(r->peerurls, r->n_peerurls);
}

static void check_member_update(const ProtobufCMessage *m, const uint8_t *data, size_t len)
{
    (void)data, (void)len;
    const Etcdserverpb__MemberUpdateRequest *r = (const Etcdserverpb__MemberUpdateRequest *)m;
    check_peer_urls(r->peerurls, r->n_peerurls);
}

/* ---- Watch: a hub over an empty store, opened once per process ---- */

static struct {
    char dir[256];
    mvcc *store;
    watch_hub *hub;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int released;
    size_t responses;
} w = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static int watch_send(void *ctx, const uint8_t *msg, size_t len)
{
    (void)ctx;
    Etcdserverpb__WatchResponse *r = etcdserverpb__watch_response__unpack(NULL, len, msg);
    FUZZ_CHECK(r != NULL);
    FUZZ_CHECK(r->header != NULL);
    etcdserverpb__watch_response__free_unpacked(r, NULL);
    w.responses++;
    return 0;
}

static size_t watch_backlog(void *ctx)
{
    (void)ctx;
    return 0;
}

static void watch_released(void *ctx)
{
    (void)ctx;
    pthread_mutex_lock(&w.mu);
    w.released = 1;
    pthread_cond_signal(&w.cond);
    pthread_mutex_unlock(&w.mu);
}

static const watch_stream_ops watch_ops = {watch_send, watch_backlog, watch_released};

static void watch_header(void *arg, mvcc_header *out)
{
    (void)arg;
    *out = (mvcc_header){1, 2, 3};
}

static void watch_teardown(void)
{
    watch_hub_stop(w.hub);
    mvcc_close(w.store);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", w.dir);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_request: could not remove %s\n", w.dir);
}

static void watch_setup(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(w.dir, sizeof w.dir, "%s/ballast-fuzz-watch-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    FUZZ_CHECK(mkdtemp(w.dir) != NULL);
    char *err = NULL;
    FUZZ_CHECK(mvcc_open(w.dir, &w.store, &err) == 0);
    watch_hub_config cfg = {
        .store = w.store,
        .header = watch_header,
        .max_request_bytes = 1572864,
        .stream_backlog_limit = 256u << 10,
        .progress_interval_ms = 600000,
    };
    w.hub = watch_hub_start(&cfg, &err);
    FUZZ_CHECK(w.hub != NULL);
    atexit(watch_teardown);
}

static void check_watch_stream(const uint8_t *data, size_t len)
{
    if (!w.hub)
        watch_setup();
    w.released = 0;
    watch_stream *s = watch_stream_open(w.hub, &watch_ops, NULL);
    FUZZ_CHECK(s != NULL);
    for (int n = 0; len > 0 && n < 16; n++) {
        size_t mlen = data[0];
        data++, len--;
        if (mlen > len)
            mlen = len;
        Etcdserverpb__WatchRequest *req = ballast_decode(&etcdserverpb__watch_request__descriptor, data, mlen);
        data += mlen, len -= mlen;
        /* The Watch service ends the stream on a message it cannot decode. */
        if (!req)
            break;
        watch_stream_request(s, req);
        etcdserverpb__watch_request__free_unpacked(req, NULL);
    }
    watch_stream_close(s);
    /* The hub answers on its own thread: wait until it let the stream go,
     * so each input is done before the next (and a hang is a finding). */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 30;
    pthread_mutex_lock(&w.mu);
    while (!w.released)
        FUZZ_CHECK(pthread_cond_timedwait(&w.cond, &w.mu, &until) == 0);
    pthread_mutex_unlock(&w.mu);
}

/* ---- the method table ---- */

typedef void (*check_fn)(const ProtobufCMessage *m, const uint8_t *data, size_t len);

typedef struct method {
    const char *path;
    const ProtobufCMessageDescriptor *desc;
    check_fn check;
} method;

static const method methods[] = {
    {"/etcdserverpb.KV/Range", &etcdserverpb__range_request__descriptor, check_range},
    {"/etcdserverpb.KV/Put", &etcdserverpb__put_request__descriptor, check_put},
    {"/etcdserverpb.KV/DeleteRange", &etcdserverpb__delete_range_request__descriptor, check_delete_range},
    {"/etcdserverpb.KV/Txn", &etcdserverpb__txn_request__descriptor, check_txn},
    {"/etcdserverpb.KV/Compact", &etcdserverpb__compaction_request__descriptor, check_compaction},
    {"/etcdserverpb.Watch/Watch", NULL, NULL},
    {"/etcdserverpb.Lease/LeaseGrant", &etcdserverpb__lease_grant_request__descriptor, check_lease_grant},
    {"/etcdserverpb.Lease/LeaseRevoke", &etcdserverpb__lease_revoke_request__descriptor, check_lease_revoke},
    {"/etcdserverpb.Lease/LeaseKeepAlive", &etcdserverpb__lease_keep_alive_request__descriptor, NULL},
    {"/etcdserverpb.Lease/LeaseTimeToLive", &etcdserverpb__lease_time_to_live_request__descriptor, NULL},
    {"/etcdserverpb.Lease/LeaseLeases", &etcdserverpb__lease_leases_request__descriptor, NULL},
    {"/etcdserverpb.Cluster/MemberAdd", &etcdserverpb__member_add_request__descriptor, check_member_add},
    {"/etcdserverpb.Cluster/MemberRemove", &etcdserverpb__member_remove_request__descriptor, NULL},
    {"/etcdserverpb.Cluster/MemberUpdate", &etcdserverpb__member_update_request__descriptor, check_member_update},
    {"/etcdserverpb.Cluster/MemberList", &etcdserverpb__member_list_request__descriptor, NULL},
    {"/etcdserverpb.Cluster/MemberPromote", &etcdserverpb__member_promote_request__descriptor, NULL},
    {"/etcdserverpb.Maintenance/Alarm", &etcdserverpb__alarm_request__descriptor, check_alarm},
    {"/etcdserverpb.Maintenance/Status", &etcdserverpb__status_request__descriptor, NULL},
    {"/etcdserverpb.Maintenance/Defragment", &etcdserverpb__defragment_request__descriptor, NULL},
    {"/etcdserverpb.Maintenance/Hash", &etcdserverpb__hash_request__descriptor, NULL},
    {"/etcdserverpb.Maintenance/HashKV", &etcdserverpb__hash_kvrequest__descriptor, NULL},
    {"/etcdserverpb.Maintenance/Snapshot", &etcdserverpb__snapshot_request__descriptor, NULL},
    {"/etcdserverpb.Maintenance/MoveLeader", &etcdserverpb__move_leader_request__descriptor, NULL},
    {"/etcdserverpb.Auth/AuthEnable", &etcdserverpb__auth_enable_request__descriptor, NULL},
    {"/etcdserverpb.Auth/AuthDisable", &etcdserverpb__auth_disable_request__descriptor, NULL},
    {"/etcdserverpb.Auth/Authenticate", &etcdserverpb__authenticate_request__descriptor, NULL},
    {"/etcdserverpb.Auth/UserAdd", &etcdserverpb__auth_user_add_request__descriptor, NULL},
    {"/etcdserverpb.Auth/UserGet", &etcdserverpb__auth_user_get_request__descriptor, NULL},
    {"/etcdserverpb.Auth/UserList", &etcdserverpb__auth_user_list_request__descriptor, NULL},
    {"/etcdserverpb.Auth/UserDelete", &etcdserverpb__auth_user_delete_request__descriptor, NULL},
    {"/etcdserverpb.Auth/UserChangePassword", &etcdserverpb__auth_user_change_password_request__descriptor, NULL},
    {"/etcdserverpb.Auth/UserGrantRole", &etcdserverpb__auth_user_grant_role_request__descriptor, NULL},
    {"/etcdserverpb.Auth/UserRevokeRole", &etcdserverpb__auth_user_revoke_role_request__descriptor, NULL},
    {"/etcdserverpb.Auth/RoleAdd", &etcdserverpb__auth_role_add_request__descriptor, NULL},
    {"/etcdserverpb.Auth/RoleGet", &etcdserverpb__auth_role_get_request__descriptor, NULL},
    {"/etcdserverpb.Auth/RoleList", &etcdserverpb__auth_role_list_request__descriptor, NULL},
    {"/etcdserverpb.Auth/RoleDelete", &etcdserverpb__auth_role_delete_request__descriptor, NULL},
    {"/etcdserverpb.Auth/RoleGrantPermission", &etcdserverpb__auth_role_grant_permission_request__descriptor, NULL},
    {"/etcdserverpb.Auth/RoleRevokePermission", &etcdserverpb__auth_role_revoke_permission_request__descriptor, NULL},
};

/* Decoded, encoded, decoded and encoded again: the two encodings agree. */
static void check_round_trip(const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *b1 = malloc(len ? len : 1), *b2 = malloc(len ? len : 1);
    FUZZ_CHECK(b1 && b2);
    FUZZ_CHECK(protobuf_c_message_pack(m, b1) == len);
    ProtobufCMessage *again = protobuf_c_message_unpack(m->descriptor, NULL, len, b1);
    FUZZ_CHECK(again != NULL);
    FUZZ_CHECK(protobuf_c_message_get_packed_size(again) == len);
    FUZZ_CHECK(protobuf_c_message_pack(again, b2) == len);
    FUZZ_CHECK(memcmp(b1, b2, len) == 0);
    protobuf_c_message_free_unpacked(again, NULL);
    free(b1);
    free(b2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const method *mt = &methods[data[0] % (sizeof methods / sizeof methods[0])];
    data++, size--;
    if (!mt->desc) {
        check_watch_stream(data, size);
        return 0;
    }
    ProtobufCMessage *m = ballast_decode(mt->desc, data, size);
    if (!m)
        return 0; /* answered with gRPC's decoding error (ballast_unpack) */
    check_round_trip(m);
    if (mt->check)
        mt->check(m, data, size);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}
