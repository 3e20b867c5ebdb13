/* The KV service: Range, Put, DeleteRange, Txn, Compact. Writes are handed
 * to the raft node as the client's own request bytes; reads are served from
 * the store on the calling thread when they may be (serializable, or
 * linearizable without a barrier), else after a shared raft barrier. */
#include <stdlib.h>
#include <string.h>

#include "ballast.h"

static const char ERR_TOO_LARGE[] = "etcdserver: request is too large";

/* How large etcd's InternalRaftRequest around a request of `len` bytes is:
 * the request field (1-byte tag + length) plus a RequestHeader carrying a
 * 64-bit request ID (2-byte tag, length, 1-byte tag, 10-byte varint). */
static uint64_t raft_request_size(size_t len)
{
    uint64_t varint = 1;
    for (uint64_t v = len; v >= 0x80; v >>= 7)
        varint++;
    return len + 1 + varint + 14;
}

/* ---- reads ---- */

/* READ_INDEX: a follower's /ballastpb.Internal/ReadIndex, on the leader. */
typedef enum { READ_RANGE, READ_TXN, READ_INDEX } read_kind;

/* A linearizable read waiting for a raft barrier. */
typedef struct pending_read {
    read_kind kind;
    void *req;
} pending_read;

static void serve_read_index(ballast_server *b, rpc_call *call)
{
    raft_node_status st;
    raft_node_get_status(b->node, &st);
    Ballastpb__ReadIndexResponse resp = BALLASTPB__READ_INDEX_RESPONSE__INIT;
    resp.index = st.applied_index;
    ballast_reply_packed(call, &resp.base);
}

static void serve_read(ballast_server *b, rpc_call *call, read_kind kind, void *req)
{
    if (kind == READ_INDEX) {
        serve_read_index(b, call);
        return;
    }
    mvcc_buf *buf = ballast_thread_buf();
    mvcc_header h = ballast_header(b);
    mvcc_result res;
    int rv = kind == READ_RANGE ? mvcc_range(b->store, req, &h, buf, &res)
                                : mvcc_txn_read(b->store, req, &h, buf, &res);
    if (rv != 0 && res.status == MVCC_STATUS_OK) {
        res.status = MVCC_STATUS_INTERNAL;
        res.message = "etcdserver: storage error";
    }
    ballast_reply_result(call, &res, buf->data);
    ballast_thread_buf_done(buf);
    protobuf_c_message_free_unpacked(req, NULL);
}

/* Serves now or after a barrier; takes ownership of req. */
static void start_read(ballast_server *b, rpc_call *call, read_kind kind, void *req, int serializable)
{
    if (serializable || raft_node_read_ready(b->node)) {
        serve_read(b, call, kind, req);
        return;
    }
    pending_read *p = malloc(sizeof *p);
    if (!p) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        if (req)
            protobuf_c_message_free_unpacked(req, NULL);
        return;
    }
    p->kind = kind;
    p->req = req;
    /* Attached before queueing: read_done may run on the raft thread at once. */
    rpc_call_set_data(call, p);
    raft_node_read_index(b->node, call);
}

void kv_service_read_done(void *ctx, int status, const char *message, void *arg)
{
    ballast_server *b = arg;
    rpc_call *call = ctx;
    pending_read *p = rpc_call_data(call);
    rpc_call_set_data(call, NULL);
    if (status == 0) {
        serve_read(b, call, p->kind, p->req);
    } else {
        rpc_fail(call, (grpc_status_code)status, message);
        if (p->req)
            protobuf_c_message_free_unpacked(p->req, NULL);
    }
    free(p);
}

/* /ballastpb.Internal/ReadIndex: after a barrier, the applied index. */
static void kv_read_index(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    (void)data;
    (void)len;
    raft_node_status st;
    raft_node_get_status(b->node, &st);
    if (!st.is_leader) {
        rpc_fail(call, GRPC_STATUS_UNAVAILABLE, "etcdserver: leader changed");
        return;
    }
    start_read(b, call, READ_INDEX, NULL, 0);
}

static int txn_serializable(const Etcdserverpb__TxnRequest *r)
{
    for (size_t i = 0; i < r->n_success; i++)
        if (r->success[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE ||
            !r->success[i]->request_range->serializable)
            return 0;
    for (size_t i = 0; i < r->n_failure; i++)
        if (r->failure[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE ||
            !r->failure[i]->request_range->serializable)
            return 0;
    return 1;
}

static void fail_result(rpc_call *call, const mvcc_result *res)
{
    rpc_fail(call, (grpc_status_code)res->status, res->message);
}

static void kv_range(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    Etcdserverpb__RangeRequest *r = ballast_unpack(call, &etcdserverpb__range_request__descriptor, data, len);
    if (!r)
        return;
    mvcc_result res;
    if (mvcc_validate_range(r, &b->limits, &res) != 0) {
        fail_result(call, &res);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return;
    }
    start_read(b, call, READ_RANGE, r, r->serializable);
}

/* Checks a write's size like etcd does and hands its bytes to raft. */
static void propose(ballast_server *b, rpc_call *call, batch_op_type type, const uint8_t *data, size_t len)
{
    const char *error = NULL;
    grpc_status_code code = GRPC_STATUS_OK;
    if (raft_request_size(len) > b->limits.max_request_bytes) {
        code = GRPC_STATUS_INVALID_ARGUMENT;
        error = ERR_TOO_LARGE;
    } else if (raft_node_submit(b->node, type, data, len, call) != 0) {
        code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        error = "etcdserver: out of memory";
    }
    if (error) {
        /* A write's call data is only ever a physical Compact's revision. */
        free(rpc_call_data(call));
        rpc_call_set_data(call, NULL);
        rpc_fail(call, code, error);
    }
}

/* A Compact with physical=true, waiting for the store to remove the old
 * revisions before it is answered. */
typedef struct compact_wait {
    struct compact_wait *next;
    rpc_call *call;
    int64_t revision;
    size_t len;
    uint8_t resp[]; /* the CompactionResponse */
} compact_wait;

/* Runs on the store's compaction thread. */
static void on_compacted(void *arg, int64_t rev)
{
    ballast_server *b = arg;
    compact_wait *ready = NULL;
    pthread_mutex_lock(&b->compact_mu);
    for (compact_wait **p = &b->compact_waiters; *p;) {
        compact_wait *w = *p;
        if (w->revision <= rev) {
            *p = w->next;
            w->next = ready;
            ready = w;
        } else {
            p = &w->next;
        }
    }
    pthread_mutex_unlock(&b->compact_mu);
    while (ready) {
        compact_wait *w = ready;
        ready = w->next;
        rpc_reply(w->call, w->resp, w->len);
        free(w);
    }
}

void kv_service_init(ballast_server *b)
{
    pthread_mutex_init(&b->compact_mu, NULL);
    b->compact_waiters = NULL;
    mvcc_set_compaction_callback(b->store, on_compacted, b);
}

void kv_service_stop(ballast_server *b)
{
    pthread_mutex_lock(&b->compact_mu);
    compact_wait *w = b->compact_waiters;
    b->compact_waiters = NULL;
    pthread_mutex_unlock(&b->compact_mu);
    while (w) {
        compact_wait *next = w->next;
        rpc_fail(w->call, GRPC_STATUS_UNAVAILABLE, "etcdserver: server stopped");
        free(w);
        w = next;
    }
}

/* The op was applied: a physical Compact waits for the removal, everything
 * else is answered now. */
void kv_service_op_done(void *ctx, const mvcc_result *res, const uint8_t *resp_base, void *arg)
{
    ballast_server *b = arg;
    rpc_call *call = ctx;
    int64_t *physical_rev = rpc_call_data(call);
    if (!physical_rev) {
        ballast_reply_result(call, res, resp_base);
        return;
    }
    rpc_call_set_data(call, NULL);
    int64_t rev = *physical_rev;
    free(physical_rev);
    if (res->status != MVCC_STATUS_OK)
        ballast_reply_result(call, res, resp_base);
    else
        kv_service_answer_compacted(b, call, rev, resp_base + res->off, res->len);
}

void kv_service_answer_compacted(ballast_server *b, rpc_call *call, int64_t rev, const uint8_t *resp,
                                 size_t len)
{
    compact_wait *w = malloc(sizeof *w + len);
    if (!w) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        return;
    }
    w->call = call;
    w->revision = rev;
    w->len = len;
    memcpy(w->resp, resp, len);
    pthread_mutex_lock(&b->compact_mu);
    if (mvcc_physical_compact_revision(b->store) >= rev) {
        pthread_mutex_unlock(&b->compact_mu);
        rpc_reply(call, w->resp, w->len);
        free(w);
        return;
    }
    w->next = b->compact_waiters;
    b->compact_waiters = w;
    pthread_mutex_unlock(&b->compact_mu);
}

/* etcd's quota cost of a write: a put's key and value plus its overhead;
 * a txn's costlier branch, counting its top-level puts only. */
static uint64_t put_cost(const Etcdserverpb__PutRequest *p)
{
    return BALLAST_COST_PUT_OVERHEAD + p->key.len + p->value.len;
}

static uint64_t txn_cost(const Etcdserverpb__TxnRequest *t)
{
    uint64_t ok = 0, fail = 0;
    for (size_t i = 0; i < t->n_success; i++)
        if (t->success[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT)
            ok += put_cost(t->success[i]->request_put);
    for (size_t i = 0; i < t->n_failure; i++)
        if (t->failure[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT)
            fail += put_cost(t->failure[i]->request_put);
    return ok > fail ? ok : fail;
}

/* etcd checks the quota before anything else about the request. */
static int over_quota(ballast_server *b, rpc_call *call, ProtobufCMessage *req, uint64_t cost)
{
    if (ballast_quota_check(b, cost) == 0)
        return 0;
    protobuf_c_message_free_unpacked(req, NULL);
    rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, BALLAST_ERR_NO_SPACE);
    return 1;
}

static void kv_put(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    if (ballast_route(b, call, "/etcdserverpb.KV/Put", kv_put, data, len))
        return;
    Etcdserverpb__PutRequest *r = ballast_unpack(call, &etcdserverpb__put_request__descriptor, data, len);
    if (!r || over_quota(b, call, &r->base, put_cost(r)))
        return;
    mvcc_result res;
    int bad = mvcc_validate_put(r, &b->limits, &res);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    if (bad)
        fail_result(call, &res);
    else
        propose(b, call, BATCH_OP_PUT, data, len);
}

static void kv_delete_range(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    if (ballast_route(b, call, "/etcdserverpb.KV/DeleteRange", kv_delete_range, data, len))
        return;
    Etcdserverpb__DeleteRangeRequest *r = ballast_unpack(call, &etcdserverpb__delete_range_request__descriptor, data, len);
    if (!r)
        return;
    mvcc_result res;
    int bad = mvcc_validate_delete_range(r, &b->limits, &res);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    if (bad)
        fail_result(call, &res);
    else
        propose(b, call, BATCH_OP_DELETE_RANGE, data, len);
}

static void kv_txn(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    Etcdserverpb__TxnRequest *r = ballast_unpack(call, &etcdserverpb__txn_request__descriptor, data, len);
    if (!r || over_quota(b, call, &r->base, txn_cost(r)))
        return;
    mvcc_result res;
    if (mvcc_validate_txn(r, &b->limits, &res) != 0) {
        fail_result(call, &res);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return;
    }
    if (mvcc_txn_is_read_only(r)) {
        start_read(b, call, READ_TXN, r, txn_serializable(r));
        return;
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    if (ballast_route(b, call, "/etcdserverpb.KV/Txn", kv_txn, data, len))
        return;
    propose(b, call, BATCH_OP_TXN, data, len);
}

static void kv_compact(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    Etcdserverpb__CompactionRequest *r = ballast_unpack(call, &etcdserverpb__compaction_request__descriptor, data, len);
    if (!r)
        return;
    /* A Compact parked for a leader runs again: its earlier note goes. */
    free(rpc_call_data(call));
    rpc_call_set_data(call, NULL);
    if (r->physical) {
        int64_t *rev = malloc(sizeof *rev);
        if (!rev) {
            protobuf_c_message_free_unpacked(&r->base, NULL);
            rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
            return;
        }
        *rev = r->revision;
        rpc_call_set_data(call, rev);
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    if (ballast_route(b, call, "/etcdserverpb.KV/Compact", kv_compact, data, len))
        return;
    propose(b, call, BATCH_OP_COMPACTION, data, len);
}

size_t kv_service_methods(ballast_server *b, rpc_method *out)
{
    out[0] = (rpc_method){"/etcdserverpb.KV/Range", kv_range, b, 32};
    out[1] = (rpc_method){"/etcdserverpb.KV/Put", kv_put, b, 32};
    out[2] = (rpc_method){"/etcdserverpb.KV/DeleteRange", kv_delete_range, b, 16};
    out[3] = (rpc_method){"/etcdserverpb.KV/Txn", kv_txn, b, 32};
    out[4] = (rpc_method){"/etcdserverpb.KV/Compact", kv_compact, b, 4};
    out[5] = (rpc_method){"/ballastpb.Internal/ReadIndex", kv_read_index, b, 8};
    return 6;
}
