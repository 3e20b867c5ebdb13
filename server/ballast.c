/* What the services share: headers, reply helpers, per-thread buffers. */
#include <pthread.h>
#include <stdlib.h>

#include "ballast.h"
#include "entry_codec.h"

const char BALLAST_ERR_MALFORMED[] = "grpc: error unmarshalling request: unexpected EOF";
mvcc_header ballast_header(ballast_server *b)
{
    /* A member that joined an existing cluster learns its id from the store */
    uint64_t cluster_id = mvcc_cluster_id(b->store);
    mvcc_header h = {cluster_id ? cluster_id : b->cluster_id, b->member_id, raft_node_term(b->node)};
    return h;
}

/* A proposal of a service: the encoded message (it must live until the op
 * is done) and what to do then. Handed to the raft node as a ctx with the
 * low bit set, which no rpc_call pointer has (malloc alignment), so
 * ballast_op_done can tell them apart. */
typedef struct service_op {
    rpc_call *call;
    ballast_done_fn done;
    void *extra;
    size_t len;
    uint8_t data[];
} service_op;

void ballast_propose_msg(ballast_server *b, rpc_call *call, batch_op_type type,
                         const ProtobufCMessage *msg, ballast_done_fn done, void *extra)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    service_op *op = malloc(sizeof *op + len);
    if (!op) {
        if (call)
            rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        return;
    }
    op->call = call;
    op->done = done;
    op->extra = extra;
    op->len = protobuf_c_message_pack(msg, op->data);
    if (raft_node_submit(b->node, type, op->data, op->len, (void *)((uintptr_t)op | 1u)) != 0) {
        if (call)
            rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        free(op);
    }
}

void ballast_op_done(void *ctx, const mvcc_result *res, const uint8_t *resp_base, void *arg)
{
    if (!((uintptr_t)ctx & 1u)) {
        kv_service_op_done(ctx, res, resp_base, arg);
        return;
    }
    service_op *op = (service_op *)((uintptr_t)ctx & ~(uintptr_t)1u);
    if (op->done)
        op->done(arg, op->call, res, resp_base, op->extra);
    else if (op->call)
        ballast_reply_result(op->call, res, resp_base);
    free(op);
}

void ballast_fill_header(ballast_server *b, Etcdserverpb__ResponseHeader *h)
{
    mvcc_header mh = ballast_header(b);
    h->cluster_id = mh.cluster_id;
    h->member_id = mh.member_id;
    h->raft_term = mh.raft_term;
    h->revision = mvcc_current_revision(b->store);
}

/* Each thread's read buffer, freed when the thread ends. */
static pthread_key_t thread_buf_key;
static pthread_once_t thread_buf_once = PTHREAD_ONCE_INIT;

static void thread_buf_free(void *p)
{
    mvcc_buf *buf = p;
    free(buf->data);
    free(buf);
}

static void thread_buf_key_init(void)
{
    if (pthread_key_create(&thread_buf_key, thread_buf_free) != 0)
        abort();
}

mvcc_buf *ballast_thread_buf(void)
{
    pthread_once(&thread_buf_once, thread_buf_key_init);
    mvcc_buf *buf = pthread_getspecific(thread_buf_key);
    if (!buf) {
        buf = calloc(1, sizeof *buf);
        if (!buf || pthread_setspecific(thread_buf_key, buf) != 0)
            abort();
    }
    buf->len = 0;
    return buf;
}

void ballast_thread_buf_done(mvcc_buf *buf)
{
    if (buf->cap > (1u << 20)) {
        free(buf->data);
        buf->data = NULL;
        buf->cap = 0;
    }
    buf->len = 0;
}

void ballast_reply_result(rpc_call *call, const mvcc_result *res, const uint8_t *buf)
{
    if (res->status == MVCC_STATUS_OK)
        rpc_reply(call, buf + res->off, res->len);
    else
        rpc_fail(call, (grpc_status_code)res->status, res->message);
}

void ballast_reply_packed(rpc_call *call, const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        return;
    }
    protobuf_c_message_pack(msg, buf);
    rpc_reply(call, buf, len);
    free(buf);
}

/* How deep messages may nest in a request (a Txn level is two: TxnRequest
 * and RequestOp). protobuf-c unpacks recursively, about 500 bytes of stack
 * per level: a 34 KB Txn nested 5,000 deep overflowed an 8 MiB thread
 * stack and killed the server. Only a Txn can nest; etcd refuses one
 * nested deeper than --max-txn-ops levels (its op budget shrinks by level),
 * so 300 accepts every Txn etcd accepts at the default 128. */
#define MAX_NESTING 300

static int read_varint(const uint8_t *p, size_t n, size_t *i, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*i >= n)
            return -1;
        uint8_t byte = p[(*i)++];
        *v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80))
            return 0;
    }
    return -1;
}

int ballast_pb_next(const uint8_t *p, size_t n, size_t *i, uint32_t *field, uint64_t *v,
                    const uint8_t **sub, size_t *sub_len)
{
    if (*i >= n)
        return 0;
    uint64_t key;
    if (read_varint(p, n, i, &key) != 0 || (key >> 3) > UINT32_MAX)
        return -1;
    *field = (uint32_t)(key >> 3);
    *sub = NULL;
    *sub_len = 0;
    switch (key & 7) {
    case 0:
        return read_varint(p, n, i, v) == 0 ? 1 : -1;
    case 1:
        *i += 8;
        break;
    case 5:
        *i += 4;
        break;
    case 2:
        if (read_varint(p, n, i, v) != 0 || *v > n - *i)
            return -1;
        *sub = p + *i;
        *sub_len = (size_t)*v;
        *i += (size_t)*v;
        break;
    default:
        return -1;
    }
    return *i <= n ? 1 : -1;
}

/* True when the wire bytes of a `d` message nest messages deeper than
 * MAX_NESTING. Bytes that do not parse are left to protobuf-c to refuse. */
static int nests_too_deep_at(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t len, int depth)
{
    if (depth > MAX_NESTING)
        return 1;
    size_t i = 0;
    uint32_t id;
    uint64_t v;
    const uint8_t *sub;
    size_t sub_len;
    while (ballast_pb_next(p, len, &i, &id, &v, &sub, &sub_len) == 1) {
        if (!sub)
            continue;
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, id);
        if (f && f->type == PROTOBUF_C_TYPE_MESSAGE &&
            nests_too_deep_at(f->descriptor, sub, sub_len, depth + 1))
            return 1;
    }
    return 0;
}

static int nests_too_deep(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t len)
{
    return nests_too_deep_at(d, p, len, 1);
}

/* ballast_decode once the nesting has been checked. */
static void *decode_shallow(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len)
{
    ProtobufCMessage *msg = protobuf_c_message_unpack(desc, NULL, len, data);
    if (msg && pb_has_field_zero(msg)) {
        protobuf_c_message_free_unpacked(msg, NULL);
        msg = NULL;
    }
    return msg;
}

void *ballast_decode(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len)
{
    return nests_too_deep(desc, data, len) ? NULL : decode_shallow(desc, data, len);
}

void *ballast_unpack(rpc_call *call, const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len)
{
    if (nests_too_deep(desc, data, len)) {
        /* Only a Txn nests this deep: etcd's answer at the default --max-txn-ops. */
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "etcdserver: too many operations in txn request");
        return NULL;
    }
    ProtobufCMessage *msg = decode_shallow(desc, data, len);
    if (!msg)
        rpc_fail(call, GRPC_STATUS_INTERNAL, BALLAST_ERR_MALFORMED);
    return msg;
}
