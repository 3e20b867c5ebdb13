/* ballast-bench: a load generator for etcd v3 servers (Ballast, etcd), on
 * gRPC C core, in the spirit of etcd's tools/benchmark.
 *
 *   ballast-bench WORKLOAD [options]      (ballast-bench --help lists them)
 *
 * Clients are spread over --conns channels and over worker threads, one
 * completion queue each; a client has one request in flight at a time. The
 * run ends after --total requests or --duration seconds, whichever comes
 * first. It prints a summary on stderr and one JSON object per run (--json).
 * Latency is measured from just before a call starts to its completion on the
 * client's completion queue (for watch: from just before the Put starts to
 * the event's arrival). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "absl_checks.h"
#include "rpc.pb-c.h"

typedef enum {
    W_PUT,
    W_RANGE,
    W_TXN_PUT,
    W_TXN_MIXED,
    W_WATCH,
    W_WATCH_GET,
    W_LEASE_KEEPALIVE
} workload;

static const char *const WORKLOAD_NAMES[] = {"put",   "range",     "txn-put",        "txn-mixed",
                                             "watch", "watch-get", "lease-keepalive"};

typedef struct {
    workload w;
    char **endpoints;
    size_t n_endpoints;
    unsigned clients, conns, threads;
    uint64_t total;
    double duration;
    unsigned key_size, val_size;
    uint64_t key_space;
    int sequential;
    int serializable;
    const char *range_key;
    unsigned txn_ops;
    double rw_ratio;
    unsigned watchers, streams;
    double put_rate;
    double slow_ms; /* --slow-ms: log each request slower than this (0: off) */
    const char *label, *json_path, *endpoints_arg;
} options;

static options O = {
    .clients = 1,
    .conns = 1,
    .total = 10000,
    .key_size = 8,
    .val_size = 8,
    .key_space = 1,
    .txn_ops = 1,
    .rw_ratio = 1.0,
    .watchers = 10000,
    .streams = 100,
    .put_rate = 1000,
    .label = "",
    .endpoints_arg = "127.0.0.1:2379",
};

/* ---- time, random, latencies ---- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* --slow-ms: one line per slow request, `what` its kind, `took` and `done`
 * (now_ns) in ns. */
static void note_slow(const char *what, uint64_t took, uint64_t done)
{
    if (O.slow_ms <= 0 || took < (uint64_t)(O.slow_ms * 1e6))
        return;
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    fprintf(stderr, "slow %s %.1f ms, done at monotonic %.6f, wall %lld.%06ld\n", what, took / 1e6,
            done / 1e9, (long long)wall.tv_sec, wall.tv_nsec / 1000);
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

typedef struct {
    uint64_t *v;
    size_t n, cap;
} lat_vec;

static void lat_add(lat_vec *l, uint64_t ns)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 4096;
        uint64_t *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return; /* a lost sample, not a lost run */
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = ns;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- keys and values ---- */

static char *VALUE; /* val_size bytes */

/* Key number idx as key_size decimal digits (zero-padded; the low digits when
 * it has more). */
static void key_of(uint64_t idx, char *out)
{
    char digits[24];
    int len = snprintf(digits, sizeof digits, "%" PRIu64, idx);
    for (unsigned i = 0; i < O.key_size; i++) {
        int from = len - (int)O.key_size + (int)i;
        out[i] = from >= 0 ? digits[from] : '0';
    }
}

/* ---- run state ---- */

static grpc_channel **CHANNELS;
static atomic_uint_fast64_t ISSUED;    /* requests claimed by clients */
static atomic_int STOP;                /* duration over */
static uint64_t DEADLINE_NS;           /* 0: none */

/* Claims one request of --total; 0 when the run is over. */
static int claim(uint64_t *seq)
{
    if (atomic_load_explicit(&STOP, memory_order_relaxed))
        return 0;
    if (DEADLINE_NS && now_ns() >= DEADLINE_NS) {
        atomic_store(&STOP, 1);
        return 0;
    }
    uint64_t n = atomic_fetch_add(&ISSUED, 1);
    if (n >= O.total)
        return 0;
    *seq = n;
    return 1;
}

enum tag_kind { T_UNARY, T_KA_GRANT, T_KA_OPEN, T_KA_ROUND, T_KA_END, T_W_OPEN, T_W_SEND, T_W_RECV, T_W_END };

typedef struct tag {
    enum tag_kind kind;
    void *owner;
} tag;

typedef struct worker worker;

typedef struct client {
    tag t;
    worker *w;
    grpc_channel *ch;
    grpc_call *call;
    grpc_metadata_array md_init, md_trail;
    grpc_byte_buffer *recv;
    grpc_status_code status;
    grpc_slice details;
    uint64_t started;
    int64_t lease_id;
    int is_read; /* txn-mixed: the request in flight is a Range */
} client;

typedef struct wstream wstream;

struct worker {
    pthread_t th;
    grpc_completion_queue *cq;
    lat_vec lat;
    uint64_t ok, errors, reads, writes;
    char first_error[256];
    uint64_t rng;
    client *clients;
    unsigned n_clients, active;
    wstream **streams;
    unsigned n_streams;
};

static void note_error(worker *w, grpc_status_code code, grpc_slice details)
{
    w->errors++;
    if (w->first_error[0])
        return;
    char *d = grpc_slice_to_c_string(details);
    snprintf(w->first_error, sizeof w->first_error, "code %d: %s", (int)code, d ? d : "");
    gpr_free(d);
}

static grpc_byte_buffer *pack(const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    grpc_slice s = grpc_slice_malloc(len);
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/* The bytes of a received message (caller frees with free()). */
static uint8_t *unbuffer(grpc_byte_buffer *bb, size_t *len)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return NULL;
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    *len = GRPC_SLICE_LENGTH(s);
    uint8_t *p = malloc(*len ? *len : 1);
    if (p)
        memcpy(p, GRPC_SLICE_START_PTR(s), *len);
    grpc_slice_unref(s);
    return p;
}

/* Shuts a completion queue down and takes what is left on it; it may be
 * destroyed once the calls that used it are released. */
static void cq_drain(grpc_completion_queue *cq)
{
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
}

static grpc_call *new_call(grpc_channel *ch, grpc_completion_queue *cq, const char *method)
{
    return grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                    grpc_slice_from_static_string(method), NULL,
                                    gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
}

/* Starts a unary call: all six ops in one batch, completing on tag t. */
static int start_unary(grpc_call *call, grpc_byte_buffer *send, grpc_metadata_array *md_init,
                       grpc_metadata_array *md_trail, grpc_byte_buffer **recv,
                       grpc_status_code *status, grpc_slice *details, tag *t)
{
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = md_init;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = md_trail;
    ops[5].data.recv_status_on_client.status = status;
    ops[5].data.recv_status_on_client.status_details = details;
    return grpc_call_start_batch(call, ops, 6, t, NULL) == GRPC_CALL_OK ? 0 : -1;
}

/* Cancels a streaming call and asks for its status, completing on tag t. */
static void cancel_call(grpc_call *call, grpc_metadata_array *md_trail, grpc_status_code *status,
                        grpc_slice *details, tag *t)
{
    grpc_call_cancel(call, NULL);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op.data.recv_status_on_client.trailing_metadata = md_trail;
    op.data.recv_status_on_client.status = status;
    op.data.recv_status_on_client.status_details = details;
    grpc_call_start_batch(call, &op, 1, t, NULL);
}

/* ---- request encoding ---- */

static uint64_t next_key(worker *w, uint64_t seq)
{
    return O.sequential ? seq % O.key_space : rng_next(&w->rng) % O.key_space;
}

static grpc_byte_buffer *put_request(worker *w, uint64_t seq, char *key)
{
    key_of(next_key(w, seq), key);
    Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
    req.key.data = (uint8_t *)key;
    req.key.len = O.key_size;
    req.value.data = (uint8_t *)VALUE;
    req.value.len = O.val_size;
    return pack(&req.base);
}

static grpc_byte_buffer *range_request(worker *w, uint64_t seq, char *key)
{
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    if (O.range_key) {
        req.key.data = (uint8_t *)O.range_key;
        req.key.len = strlen(O.range_key);
    } else {
        key_of(next_key(w, seq), key);
        req.key.data = (uint8_t *)key;
        req.key.len = O.key_size;
    }
    req.serializable = O.serializable;
    return pack(&req.base);
}

#define MAX_TXN_OPS 128

static grpc_byte_buffer *txn_put_request(worker *w, uint64_t seq)
{
    static __thread char keys[MAX_TXN_OPS][64];
    Etcdserverpb__PutRequest puts[MAX_TXN_OPS];
    Etcdserverpb__RequestOp ops[MAX_TXN_OPS];
    Etcdserverpb__RequestOp *op_ptrs[MAX_TXN_OPS];
    uint64_t first = next_key(w, seq * O.txn_ops);
    for (unsigned i = 0; i < O.txn_ops; i++) {
        key_of((first + i) % O.key_space, keys[i]);
        Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
        p.key.data = (uint8_t *)keys[i];
        p.key.len = O.key_size;
        p.value.data = (uint8_t *)VALUE;
        p.value.len = O.val_size;
        puts[i] = p;
        Etcdserverpb__RequestOp o = ETCDSERVERPB__REQUEST_OP__INIT;
        o.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
        o.request_put = &puts[i];
        ops[i] = o;
        op_ptrs[i] = &ops[i];
    }
    Etcdserverpb__TxnRequest req = ETCDSERVERPB__TXN_REQUEST__INIT;
    req.n_success = O.txn_ops;
    req.success = op_ptrs;
    return pack(&req.base);
}

/* ---- unary workloads: put, range, txn-put, txn-mixed (and watch-get's reads) ---- */

static void unary_next(client *c)
{
    worker *w = c->w;
    uint64_t seq;
    if (!claim(&seq)) {
        w->active--;
        return;
    }
    char key[64];
    grpc_byte_buffer *send;
    const char *method;
    workload kind = O.w == W_WATCH_GET ? W_RANGE : O.w;
    if (kind == W_TXN_MIXED) {
        double p = (double)(rng_next(&w->rng) >> 11) / (double)(1ull << 53);
        c->is_read = p < O.rw_ratio / (O.rw_ratio + 1.0);
        kind = c->is_read ? W_RANGE : W_TXN_PUT;
    }
    switch (kind) {
    case W_PUT:
        send = put_request(w, seq, key);
        method = "/etcdserverpb.KV/Put";
        break;
    case W_RANGE:
        send = range_request(w, seq, key);
        method = "/etcdserverpb.KV/Range";
        break;
    default:
        send = txn_put_request(w, seq);
        method = "/etcdserverpb.KV/Txn";
        break;
    }
    c->call = new_call(c->ch, w->cq, method);
    grpc_metadata_array_init(&c->md_init);
    grpc_metadata_array_init(&c->md_trail);
    c->recv = NULL;
    c->t.kind = T_UNARY;
    c->started = now_ns();
    if (start_unary(c->call, send, &c->md_init, &c->md_trail, &c->recv, &c->status, &c->details,
                    &c->t) != 0) {
        fprintf(stderr, "ballast-bench: grpc_call_start_batch failed\n");
        exit(2);
    }
    grpc_byte_buffer_destroy(send);
}

static void unary_done(client *c, int success)
{
    worker *w = c->w;
    uint64_t took = now_ns() - c->started;
    if (success && c->status == GRPC_STATUS_OK) {
        w->ok++;
        lat_add(&w->lat, took);
        note_slow(O.w == W_WATCH_GET ? "range" : WORKLOAD_NAMES[O.w], took, c->started + took);
        if (O.w == W_TXN_MIXED)
            *(c->is_read ? &w->reads : &w->writes) += 1;
    } else {
        note_error(w, success ? c->status : GRPC_STATUS_UNKNOWN, c->details);
    }
    if (c->recv)
        grpc_byte_buffer_destroy(c->recv);
    grpc_metadata_array_destroy(&c->md_init);
    grpc_metadata_array_destroy(&c->md_trail);
    grpc_slice_unref(c->details);
    grpc_call_unref(c->call);
    c->call = NULL;
    unary_next(c);
}

/* ---- lease-keepalive: a lease and a LeaseKeepAlive stream per client ---- */

static void ka_start(client *c)
{
    Etcdserverpb__LeaseGrantRequest req = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
    req.ttl = 600;
    grpc_byte_buffer *send = pack(&req.base);
    c->call = new_call(c->ch, c->w->cq, "/etcdserverpb.Lease/LeaseGrant");
    grpc_metadata_array_init(&c->md_init);
    grpc_metadata_array_init(&c->md_trail);
    c->recv = NULL;
    c->t.kind = T_KA_GRANT;
    if (start_unary(c->call, send, &c->md_init, &c->md_trail, &c->recv, &c->status, &c->details,
                    &c->t) != 0)
        exit(2);
    grpc_byte_buffer_destroy(send);
}

static void ka_round(client *c)
{
    uint64_t seq;
    if (!claim(&seq)) {
        c->t.kind = T_KA_END;
        cancel_call(c->call, &c->md_trail, &c->status, &c->details, &c->t);
        return;
    }
    Etcdserverpb__LeaseKeepAliveRequest req = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    req.id = c->lease_id;
    grpc_byte_buffer *send = pack(&req.base);
    grpc_op rops[3];
    memset(rops, 0, sizeof rops);
    size_t n = 0;
    rops[n].op = GRPC_OP_SEND_MESSAGE;
    rops[n++].data.send_message.send_message = send;
    if (c->is_read) {
        rops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        rops[n++].data.recv_initial_metadata.recv_initial_metadata = &c->md_init;
        c->is_read = 0;
    }
    rops[n].op = GRPC_OP_RECV_MESSAGE;
    rops[n++].data.recv_message.recv_message = &c->recv;
    c->recv = NULL;
    c->t.kind = T_KA_ROUND;
    c->started = now_ns();
    if (grpc_call_start_batch(c->call, rops, n, &c->t, NULL) != GRPC_CALL_OK)
        exit(2);
    grpc_byte_buffer_destroy(send);
}

static void ka_event(client *c, int success)
{
    worker *w = c->w;
    switch (c->t.kind) {
    case T_KA_GRANT: {
        int ok = success && c->status == GRPC_STATUS_OK && c->recv;
        if (ok) {
            size_t len;
            uint8_t *p = unbuffer(c->recv, &len);
            Etcdserverpb__LeaseGrantResponse *r =
                p ? etcdserverpb__lease_grant_response__unpack(NULL, len, p) : NULL;
            c->lease_id = r ? r->id : 0;
            if (r)
                etcdserverpb__lease_grant_response__free_unpacked(r, NULL);
            free(p);
            ok = c->lease_id != 0;
        } else {
            note_error(w, c->status, c->details);
        }
        if (c->recv)
            grpc_byte_buffer_destroy(c->recv);
        grpc_metadata_array_destroy(&c->md_init);
        grpc_metadata_array_destroy(&c->md_trail);
        grpc_slice_unref(c->details);
        grpc_call_unref(c->call);
        if (!ok) {
            w->active--;
            return;
        }
        c->call = new_call(c->ch, w->cq, "/etcdserverpb.Lease/LeaseKeepAlive");
        grpc_metadata_array_init(&c->md_init);
        grpc_metadata_array_init(&c->md_trail);
        /* etcd (Go) sends its initial metadata with the first response:
         * it is received in the first round, not waited for here */
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_SEND_INITIAL_METADATA;
        c->t.kind = T_KA_OPEN;
        c->is_read = 1; /* the first round also takes the initial metadata */
        grpc_call_start_batch(c->call, &op, 1, &c->t, NULL);
        return;
    }
    case T_KA_OPEN:
        if (!success) {
            w->errors++;
            w->active--;
            return;
        }
        ka_round(c);
        return;
    case T_KA_ROUND:
        if (success && c->recv) {
            w->ok++;
            uint64_t done = now_ns(), took = done - c->started;
            lat_add(&w->lat, took);
            note_slow("keep-alive", took, done);
            grpc_byte_buffer_destroy(c->recv);
            c->recv = NULL;
            ka_round(c);
            return;
        }
        w->errors++;
        c->recv = NULL;
        c->t.kind = T_KA_END;
        cancel_call(c->call, &c->md_trail, &c->status, &c->details, &c->t);
        return;
    case T_KA_END:
        grpc_metadata_array_destroy(&c->md_init);
        grpc_metadata_array_destroy(&c->md_trail);
        grpc_slice_unref(c->details);
        grpc_call_unref(c->call);
        c->call = NULL;
        w->active--;
        return;
    default:
        return;
    }
}

/* ---- watch streams ---- */

struct wstream {
    tag t_open, t_send, t_recv, t_end;
    worker *w;
    grpc_channel *ch;
    grpc_call *call;
    grpc_metadata_array md_init, md_trail;
    grpc_byte_buffer *recv;
    grpc_status_code status;
    grpc_slice details;
    uint64_t first_watcher;  /* watchers [first, first + n) */
    unsigned n_watchers, n_sent;
    int ended;
};

static atomic_uint_fast64_t CREATED;   /* watchers confirmed */
static atomic_uint_fast64_t EVENTS;    /* events received */
static atomic_uint_fast64_t *PUT_SENT_NS; /* watch: when put #seq started */
static uint64_t N_PUTS;

static void ws_send_next(wstream *s)
{
    if (s->n_sent == s->n_watchers)
        return;
    char key[64];
    key_of(s->first_watcher + s->n_sent, key);
    Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    cr.key.data = (uint8_t *)key;
    cr.key.len = O.key_size;
    Etcdserverpb__WatchRequest req = ETCDSERVERPB__WATCH_REQUEST__INIT;
    req.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    req.create_request = &cr;
    grpc_byte_buffer *send = pack(&req.base);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = send;
    s->n_sent++;
    if (grpc_call_start_batch(s->call, &op, 1, &s->t_send, NULL) != GRPC_CALL_OK)
        exit(2);
    grpc_byte_buffer_destroy(send);
}

/* The first receive also takes the server's initial metadata (etcd sends
 * it with its first response). */
static void ws_recv_next(wstream *s, int first)
{
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (first) {
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->md_init;
    }
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n++].data.recv_message.recv_message = &s->recv;
    s->recv = NULL;
    if (grpc_call_start_batch(s->call, ops, n, &s->t_recv, NULL) != GRPC_CALL_OK)
        exit(2);
}

static void ws_open(wstream *s)
{
    s->call = new_call(s->ch, s->w->cq, "/etcdserverpb.Watch/Watch");
    grpc_metadata_array_init(&s->md_init);
    grpc_metadata_array_init(&s->md_trail);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    if (grpc_call_start_batch(s->call, &op, 1, &s->t_open, NULL) != GRPC_CALL_OK)
        exit(2);
    ws_recv_next(s, 1);
}

static void ws_event(tag *t, int success)
{
    wstream *s = t->owner;
    worker *w = s->w;
    if (t == &s->t_open) {
        if (success)
            ws_send_next(s);
        return;
    }
    if (t == &s->t_send) {
        if (success)
            ws_send_next(s);
        return;
    }
    if (t == &s->t_end) {
        s->ended = 1;
        return;
    }
    /* t_recv */
    if (!success || !s->recv) {
        if (!s->ended && !atomic_load(&STOP))
            w->errors++;
        return; /* the stream is over */
    }
    uint64_t arrived = now_ns();
    size_t len;
    uint8_t *p = unbuffer(s->recv, &len);
    grpc_byte_buffer_destroy(s->recv);
    s->recv = NULL;
    Etcdserverpb__WatchResponse *r = p ? etcdserverpb__watch_response__unpack(NULL, len, p) : NULL;
    free(p);
    if (r) {
        if (r->created)
            atomic_fetch_add(&CREATED, 1);
        for (size_t i = 0; i < r->n_events; i++) {
            Mvccpb__KeyValue *kv = r->events[i]->kv;
            if (!kv || kv->value.len < 20)
                continue;
            char num[21];
            memcpy(num, kv->value.data, 20);
            num[20] = 0;
            uint64_t seq = strtoull(num, NULL, 10);
            if (seq < N_PUTS) {
                uint64_t sent = atomic_load_explicit(&PUT_SENT_NS[seq], memory_order_relaxed);
                if (sent && arrived > sent) {
                    lat_add(&w->lat, arrived - sent);
                    note_slow("event", arrived - sent, arrived);
                    w->ok++;
                }
            }
            atomic_fetch_add(&EVENTS, 1);
        }
        etcdserverpb__watch_response__free_unpacked(r, NULL);
    }
    ws_recv_next(s, 0);
}

static void ws_close(wstream *s)
{
    cancel_call(s->call, &s->md_trail, &s->status, &s->details, &s->t_end);
}

/* ---- workers ---- */

static atomic_int WATCH_DONE; /* watch streams may be closed */

static void dispatch(worker *w, grpc_event ev)
{
    tag *t = ev.tag;
    switch (t->kind) {
    case T_UNARY:
        unary_done(t->owner, ev.success);
        break;
    case T_KA_GRANT:
    case T_KA_OPEN:
    case T_KA_ROUND:
    case T_KA_END:
        ka_event(t->owner, ev.success);
        break;
    default:
        ws_event(t, ev.success);
        break;
    }
    (void)w;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    for (unsigned i = 0; i < w->n_streams; i++)
        ws_open(w->streams[i]);
    for (unsigned i = 0; i < w->n_clients; i++) { /* none for watch: its Puts are run_putter's */
        w->active++;
        if (O.w == W_LEASE_KEEPALIVE)
            ka_start(&w->clients[i]);
        else
            unary_next(&w->clients[i]);
    }
    int closing = 0;
    for (;;) {
        if (w->active == 0 && w->n_streams == 0)
            break;
        if (w->active == 0 && !closing && atomic_load(&WATCH_DONE)) {
            closing = 1;
            for (unsigned i = 0; i < w->n_streams; i++)
                ws_close(w->streams[i]);
        }
        if (closing) {
            unsigned ended = 0;
            for (unsigned i = 0; i < w->n_streams; i++)
                ended += w->streams[i]->ended;
            if (ended == w->n_streams)
                break;
        }
        grpc_event ev = grpc_completion_queue_next(
            w->cq, gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(50, GPR_TIMESPAN)),
            NULL);
        if (ev.type == GRPC_QUEUE_TIMEOUT) {
            if (DEADLINE_NS && now_ns() >= DEADLINE_NS)
                atomic_store(&STOP, 1);
            continue;
        }
        if (ev.type != GRPC_OP_COMPLETE)
            break;
        dispatch(w, ev);
    }
    return NULL;
}

/* ---- the watch workload's putter (main thread) ---- */

typedef struct {
    tag t;
    grpc_call *call;
    grpc_metadata_array md_init, md_trail;
    grpc_byte_buffer *recv;
    grpc_status_code status;
    grpc_slice details;
} put_call;

/* Puts N_PUTS values at --put-rate, round-robin over the watched keys; each
 * value starts with the put's number (20 digits). */
static void run_putter(uint64_t *put_ok, uint64_t *put_errors, char *first_error, size_t fe_len)
{
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    enum { MAX_IN_FLIGHT = 256 };
    put_call *calls = calloc(MAX_IN_FLIGHT, sizeof *calls);
    put_call **free_list = calloc(MAX_IN_FLIGHT, sizeof *free_list);
    unsigned n_free = MAX_IN_FLIGHT, in_flight = 0;
    for (unsigned i = 0; i < MAX_IN_FLIGHT; i++) {
        calls[i].t.kind = T_UNARY;
        calls[i].t.owner = &calls[i];
        free_list[i] = &calls[i];
    }
    char *value = malloc(O.val_size > 20 ? O.val_size : 20);
    uint64_t start = now_ns(), next = 0;
    double interval_ns = 1e9 / O.put_rate;
    while (next < N_PUTS || in_flight > 0) {
        uint64_t now = now_ns();
        while (next < N_PUTS && n_free > 0 && now >= start + (uint64_t)(next * interval_ns)) {
            put_call *c = free_list[--n_free];
            char key[64];
            key_of(next % O.watchers, key);
            char num[21];
            snprintf(num, sizeof num, "%020" PRIu64, next);
            memset(value, 'v', O.val_size > 20 ? O.val_size : 20);
            memcpy(value, num, 20);
            Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
            req.key.data = (uint8_t *)key;
            req.key.len = O.key_size;
            req.value.data = (uint8_t *)value;
            req.value.len = O.val_size > 20 ? O.val_size : 20;
            grpc_byte_buffer *send = pack(&req.base);
            c->call = new_call(CHANNELS[next % O.conns], cq, "/etcdserverpb.KV/Put");
            grpc_metadata_array_init(&c->md_init);
            grpc_metadata_array_init(&c->md_trail);
            c->recv = NULL;
            atomic_store_explicit(&PUT_SENT_NS[next], now_ns(), memory_order_relaxed);
            if (start_unary(c->call, send, &c->md_init, &c->md_trail, &c->recv, &c->status,
                            &c->details, &c->t) != 0)
                exit(2);
            grpc_byte_buffer_destroy(send);
            in_flight++;
            next++;
        }
        uint64_t wait_ns = next < N_PUTS ? start + (uint64_t)(next * interval_ns) : now + 50000000u;
        int64_t ms = wait_ns > now ? (int64_t)((wait_ns - now) / 1000000u) : 0;
        grpc_event ev = grpc_completion_queue_next(
            cq, gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_micros(ms * 1000 + 200, GPR_TIMESPAN)),
            NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        put_call *c = ((tag *)ev.tag)->owner;
        if (ev.success && c->status == GRPC_STATUS_OK) {
            (*put_ok)++;
        } else {
            (*put_errors)++;
            if (!first_error[0]) {
                char *d = grpc_slice_to_c_string(c->details);
                snprintf(first_error, fe_len, "put: code %d: %s", (int)c->status, d ? d : "");
                gpr_free(d);
            }
        }
        if (c->recv)
            grpc_byte_buffer_destroy(c->recv);
        grpc_metadata_array_destroy(&c->md_init);
        grpc_metadata_array_destroy(&c->md_trail);
        grpc_slice_unref(c->details);
        grpc_call_unref(c->call);
        free_list[n_free++] = c;
        in_flight--;
    }
    free(value);
    free(calls);
    free(free_list);
    cq_drain(cq);
    grpc_completion_queue_destroy(cq);
}

/* ---- options ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ballast-bench WORKLOAD [options]\n"
            "workloads: put range txn-put txn-mixed watch watch-get lease-keepalive\n"
            "  --endpoints H:P[,H:P]  servers; clients are spread over them (127.0.0.1:2379)\n"
            "  --clients N            concurrent callers, one request in flight each (1)\n"
            "  --conns N              gRPC channels (1)\n"
            "  --threads N            client threads (number of CPUs)\n"
            "  --total N              requests to complete; watch: puts (10000)\n"
            "  --duration S           stop after S seconds if sooner (0: no limit)\n"
            "  --key-size N           key bytes (8)      --val-size N  value bytes (8)\n"
            "  --key-space-size N     distinct keys (1)  --sequential-keys  in order\n"
            "  --consistency l|s      range: linearizable or serializable (l)\n"
            "  --range-key KEY        range: always this key (e.g. a missing one)\n"
            "  --txn-ops N            txn-put: puts per txn (1)\n"
            "  --rw-ratio R           txn-mixed: reads per write (1)\n"
            "  --watchers N --streams S --put-rate R\n"
            "                         watch/watch-get: N watchers (one key each) over S\n"
            "                         streams; watch: puts at R/s over the watched keys\n"
            "  --slow-ms MS           print each request (watch: event) slower than MS to\n"
            "                         stderr with its completion time, monotonic and wall\n"
            "                         clock, to set stalls against server-side traces\n"
            "  --label TEXT           copied into the JSON\n"
            "  --json FILE            append the run's JSON object to FILE (- = stdout)\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s)
        return -1;
    *out = v;
    return 0;
}

static void parse_args(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        exit(argc < 2 ? 2 : 0);
    }
    size_t nw = sizeof WORKLOAD_NAMES / sizeof *WORKLOAD_NAMES, k;
    for (k = 0; k < nw; k++)
        if (strcmp(argv[1], WORKLOAD_NAMES[k]) == 0)
            break;
    if (k == nw) {
        fprintf(stderr, "ballast-bench: unknown workload %s\n", argv[1]);
        usage(stderr);
        exit(2);
    }
    O.w = (workload)k;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    O.threads = cpus > 0 ? (unsigned)cpus : 1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t n = 0;
#define NUM(name, field)                                                                        \
    if (strcmp(a, name) == 0) {                                                                 \
        if (!v || parse_u64(v, &n) != 0) {                                                      \
            fprintf(stderr, "ballast-bench: %s needs a number\n", name);                        \
            exit(2);                                                                            \
        }                                                                                       \
        field = n;                                                                              \
        i++;                                                                                    \
        continue;                                                                               \
    }
        NUM("--clients", O.clients)
        NUM("--conns", O.conns)
        NUM("--threads", O.threads)
        NUM("--total", O.total)
        NUM("--key-size", O.key_size)
        NUM("--val-size", O.val_size)
        NUM("--key-space-size", O.key_space)
        NUM("--txn-ops", O.txn_ops)
        NUM("--watchers", O.watchers)
        NUM("--streams", O.streams)
#undef NUM
        if (strcmp(a, "--sequential-keys") == 0) {
            O.sequential = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "ballast-bench: %s needs a value\n", a);
            exit(2);
        }
        i++;
        if (strcmp(a, "--endpoints") == 0)
            O.endpoints_arg = v;
        else if (strcmp(a, "--duration") == 0)
            O.duration = atof(v);
        else if (strcmp(a, "--put-rate") == 0)
            O.put_rate = atof(v);
        else if (strcmp(a, "--slow-ms") == 0)
            O.slow_ms = atof(v);
        else if (strcmp(a, "--rw-ratio") == 0)
            O.rw_ratio = atof(v);
        else if (strcmp(a, "--range-key") == 0)
            O.range_key = v;
        else if (strcmp(a, "--label") == 0)
            O.label = v;
        else if (strcmp(a, "--json") == 0)
            O.json_path = v;
        else if (strcmp(a, "--consistency") == 0) {
            if (strcmp(v, "l") != 0 && strcmp(v, "s") != 0) {
                fprintf(stderr, "ballast-bench: --consistency is l or s\n");
                exit(2);
            }
            O.serializable = v[0] == 's';
        } else {
            fprintf(stderr, "ballast-bench: unknown option %s\n", a);
            usage(stderr);
            exit(2);
        }
    }
    if (O.clients == 0 || O.conns == 0 || O.threads == 0 || O.key_size == 0 ||
        O.key_size > 63 || O.key_space == 0 || O.txn_ops == 0 || O.txn_ops > MAX_TXN_OPS ||
        O.streams == 0 || O.watchers == 0 || O.put_rate <= 0 || O.rw_ratio < 0 || O.slow_ms < 0) {
        fprintf(stderr, "ballast-bench: an option is out of range (clients, conns, threads, "
                        "key-space-size, streams, watchers >= 1; key-size 1..63; txn-ops 1..%d; "
                        "put-rate > 0; rw-ratio, slow-ms >= 0)\n",
                MAX_TXN_OPS);
        exit(2);
    }
    char *eps = strdup(O.endpoints_arg);
    for (char *save = NULL, *tok = strtok_r(eps, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        O.endpoints = realloc(O.endpoints, (O.n_endpoints + 1) * sizeof *O.endpoints);
        /* etcdctl style "http://host:port" is accepted too */
        if (strncmp(tok, "http://", 7) == 0)
            tok += 7;
        O.endpoints[O.n_endpoints++] = strdup(tok);
    }
    free(eps);
    if (O.n_endpoints == 0) {
        fprintf(stderr, "ballast-bench: no endpoint\n");
        exit(2);
    }
}

/* Connects every channel before anything is timed (up to 10 s). */
static void connect_all(void)
{
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    gpr_timespec until =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_seconds(10, GPR_TIMESPAN));
    for (unsigned i = 0; i < O.conns; i++) {
        for (;;) {
            grpc_connectivity_state st = grpc_channel_check_connectivity_state(CHANNELS[i], 1);
            if (st == GRPC_CHANNEL_READY)
                break;
            if (gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), until) >= 0) {
                fprintf(stderr, "ballast-bench: cannot connect to %s\n",
                        O.endpoints[i % O.n_endpoints]);
                exit(1);
            }
            grpc_channel_watch_connectivity_state(CHANNELS[i], st, until, cq, NULL);
            grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        }
    }
    cq_drain(cq);
    grpc_completion_queue_destroy(cq);
}

/* ---- JSON ---- */

static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* Everything the run made, in the order gRPC needs: queues drained, calls
 * released, channels closed. */
static void cleanup(worker *workers, unsigned n_threads, wstream *streams)
{
    for (unsigned t = 0; t < n_threads; t++) {
        cq_drain(workers[t].cq);
    }
    for (unsigned i = 0; streams && i < O.streams; i++) {
        wstream *s = &streams[i];
        if (!s->call)
            continue;
        if (s->recv)
            grpc_byte_buffer_destroy(s->recv);
        grpc_metadata_array_destroy(&s->md_init);
        grpc_metadata_array_destroy(&s->md_trail);
        grpc_slice_unref(s->details);
        grpc_call_unref(s->call);
    }
    for (unsigned t = 0; t < n_threads; t++) {
        grpc_completion_queue_destroy(workers[t].cq);
        free(workers[t].lat.v);
        free(workers[t].clients);
        free(workers[t].streams);
    }
    free(workers);
    free(streams);
    for (unsigned i = 0; i < O.conns; i++)
        grpc_channel_destroy(CHANNELS[i]);
    free(CHANNELS);
    for (size_t i = 0; i < O.n_endpoints; i++)
        free(O.endpoints[i]);
    free(O.endpoints);
    free(VALUE);
    free(PUT_SENT_NS);
    grpc_shutdown();
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    absl_deadlock_detection_off(); /* as the server does: the same gRPC cost on both ends */
    grpc_init();

    VALUE = malloc(O.val_size ? O.val_size : 1);
    memset(VALUE, 'v', O.val_size);

    CHANNELS = calloc(O.conns, sizeof *CHANNELS);
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    for (unsigned i = 0; i < O.conns; i++) {
        /* distinct channel args keep gRPC from sharing one connection between channels */
        grpc_arg args[4];
        memset(args, 0, sizeof args);
        args[0].type = GRPC_ARG_INTEGER;
        args[0].key = (char *)"ballast-bench.conn";
        args[0].value.integer = (int)i;
        args[1].type = GRPC_ARG_INTEGER;
        args[1].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
        args[1].value.integer = -1;
        /* The load generator shares the machine with the server it measures:
         * gRPC's client filters it has no use for (calls have no deadline, no
         * size limit) and its retry machinery (a failed call is counted, never
         * retried) cost ~3 us of the client's ~19 us per call here. */
        args[2].type = GRPC_ARG_INTEGER;
        args[2].key = (char *)GRPC_ARG_MINIMAL_STACK;
        args[2].value.integer = 1;
        args[3].type = GRPC_ARG_INTEGER;
        args[3].key = (char *)GRPC_ARG_ENABLE_RETRIES;
        args[3].value.integer = 0;
        grpc_channel_args ca = {4, args};
        CHANNELS[i] = grpc_channel_create(O.endpoints[i % O.n_endpoints], creds, &ca);
    }
    grpc_channel_credentials_release(creds);
    connect_all();

    unsigned n_threads = O.threads;
    worker *workers = calloc(n_threads, sizeof *workers);
    for (unsigned t = 0; t < n_threads; t++) {
        workers[t].cq = grpc_completion_queue_create_for_next(NULL);
        workers[t].rng = 0x9e3779b97f4a7c15ull * (t + 1) ^ (uint64_t)now_ns();
    }

    int watching = O.w == W_WATCH || O.w == W_WATCH_GET;
    wstream *streams = NULL;
    if (watching) {
        if (O.watchers < O.streams)
            O.streams = O.watchers;
        streams = calloc(O.streams, sizeof *streams);
        for (unsigned t = 0; t < n_threads; t++)
            workers[t].streams = calloc(O.streams, sizeof(wstream *));
        uint64_t first = 0;
        for (unsigned i = 0; i < O.streams; i++) {
            wstream *s = &streams[i];
            worker *w = &workers[i % n_threads];
            s->w = w;
            s->ch = CHANNELS[i % O.conns];
            s->t_open = (tag){T_W_OPEN, s};
            s->t_send = (tag){T_W_SEND, s};
            s->t_recv = (tag){T_W_RECV, s};
            s->t_end = (tag){T_W_END, s};
            s->n_watchers = O.watchers / O.streams + (i < O.watchers % O.streams);
            s->first_watcher = first;
            first += s->n_watchers;
            w->streams[w->n_streams++] = s;
        }
    }
    unsigned n_clients = O.w == W_WATCH ? 0 : O.clients;
    for (unsigned t = 0; t < n_threads; t++)
        workers[t].clients = calloc(n_clients / n_threads + 1, sizeof(client));
    for (unsigned i = 0; i < n_clients; i++) {
        worker *w = &workers[i % n_threads];
        client *c = &w->clients[w->n_clients++];
        c->w = w;
        c->t.owner = c;
        c->ch = CHANNELS[i % O.conns];
    }

    uint64_t put_ok = 0, put_errors = 0;
    char put_error[256] = "";
    uint64_t t0 = 0, t1;
    double cpu0 = 0;
    if (watching) {
        /* streams open and create their watchers before anything is timed */
        N_PUTS = O.w == W_WATCH ? O.total : 0;
        PUT_SENT_NS = calloc(N_PUTS ? N_PUTS : 1, sizeof *PUT_SENT_NS);
        if (O.w == W_WATCH_GET) {
            /* clients start only once the watchers exist: hold them back */
            for (unsigned t = 0; t < n_threads; t++) {
                workers[t].n_clients = 0;
            }
        }
        for (unsigned t = 0; t < n_threads; t++)
            pthread_create(&workers[t].th, NULL, worker_main, &workers[t]);
        uint64_t setup_deadline = now_ns() + 120ull * 1000000000u;
        while (atomic_load(&CREATED) < O.watchers && now_ns() < setup_deadline)
            usleep(10000);
        if (atomic_load(&CREATED) < O.watchers) {
            fprintf(stderr, "ballast-bench: only %" PRIu64 " of %u watchers created in 120 s\n",
                    (uint64_t)atomic_load(&CREATED), O.watchers);
            return 1;
        }
        fprintf(stderr, "ballast-bench: %u watchers on %u streams\n", O.watchers, O.streams);
        if (O.duration > 0)
            DEADLINE_NS = now_ns() + (uint64_t)(O.duration * 1e9);
        t0 = now_ns();
        cpu0 = cpu_seconds();
        if (O.w == W_WATCH) {
            run_putter(&put_ok, &put_errors, put_error, sizeof put_error);
            /* events still on their way */
            uint64_t wait_until = now_ns() + 10ull * 1000000000u;
            while (atomic_load(&EVENTS) < put_ok && now_ns() < wait_until)
                usleep(1000);
        } else {
            /* watch-get: the range clients, on threads of their own */
            worker *readers = calloc(n_threads, sizeof *readers);
            for (unsigned t = 0; t < n_threads; t++) {
                readers[t].cq = grpc_completion_queue_create_for_next(NULL);
                readers[t].rng = workers[t].rng + 1;
                readers[t].clients = workers[t].clients;
            }
            for (unsigned i = 0; i < n_clients; i++) {
                worker *r = &readers[i % n_threads];
                client *c = &r->clients[r->n_clients++];
                c->w = r;
            }
            for (unsigned t = 0; t < n_threads; t++)
                pthread_create(&readers[t].th, NULL, worker_main, &readers[t]);
            for (unsigned t = 0; t < n_threads; t++)
                pthread_join(readers[t].th, NULL);
            /* the reads are what is measured: move their figures to the workers */
            for (unsigned t = 0; t < n_threads; t++) {
                free(workers[t].lat.v);
                workers[t].lat = readers[t].lat;
                workers[t].ok = readers[t].ok;
                workers[t].errors += readers[t].errors;
                if (!workers[t].first_error[0])
                    memcpy(workers[t].first_error, readers[t].first_error, sizeof readers[t].first_error);
                cq_drain(readers[t].cq);
                grpc_completion_queue_destroy(readers[t].cq);
            }
            free(readers);
        }
        t1 = now_ns();
        atomic_store(&STOP, 1);
        atomic_store(&WATCH_DONE, 1);
        for (unsigned t = 0; t < n_threads; t++)
            pthread_join(workers[t].th, NULL);
    } else {
        if (O.duration > 0)
            DEADLINE_NS = now_ns() + (uint64_t)(O.duration * 1e9);
        t0 = now_ns();
        cpu0 = cpu_seconds();
        for (unsigned t = 0; t < n_threads; t++)
            pthread_create(&workers[t].th, NULL, worker_main, &workers[t]);
        for (unsigned t = 0; t < n_threads; t++)
            pthread_join(workers[t].th, NULL);
        t1 = now_ns();
    }
    double cpu = cpu_seconds() - cpu0;

    /* figures */
    uint64_t ok = 0, errors = 0, reads = 0, writes = 0;
    size_t n_lat = 0;
    const char *first_error = put_error;
    for (unsigned t = 0; t < n_threads; t++) {
        ok += workers[t].ok;
        errors += workers[t].errors;
        reads += workers[t].reads;
        writes += workers[t].writes;
        n_lat += workers[t].lat.n;
        if (!first_error[0] && workers[t].first_error[0])
            first_error = workers[t].first_error;
    }
    errors += put_errors;
    uint64_t *all = malloc((n_lat ? n_lat : 1) * sizeof *all);
    size_t at = 0;
    double sum = 0;
    for (unsigned t = 0; t < n_threads; t++) {
        if (!workers[t].lat.n)
            continue; /* a thread with no client (fewer clients than threads) has no vector */
        memcpy(all + at, workers[t].lat.v, workers[t].lat.n * sizeof *all);
        at += workers[t].lat.n;
    }
    for (size_t i = 0; i < n_lat; i++)
        sum += (double)all[i];
    qsort(all, n_lat, sizeof *all, cmp_u64);
#define PCT(p) (n_lat ? (double)all[(size_t)fmin((double)n_lat - 1, floor((p) * (double)n_lat))] / 1000.0 : 0.0)
    double seconds = (double)(t1 - t0) / 1e9;
    double throughput = seconds > 0 ? (double)ok / seconds : 0;
    double mean = n_lat ? sum / (double)n_lat / 1000.0 : 0;
    double p50 = PCT(0.50), p90 = PCT(0.90), p99 = PCT(0.99), p999 = PCT(0.999),
           max = n_lat ? (double)all[n_lat - 1] / 1000.0 : 0;
#undef PCT

    fprintf(stderr,
            "%s: %" PRIu64 " ok, %" PRIu64 " errors in %.2f s: %.1f/s; latency us mean %.0f "
            "p50 %.0f p90 %.0f p99 %.0f p99.9 %.0f max %.0f; client CPU %.2f s (%.1f us/op)%s%s\n",
            WORKLOAD_NAMES[O.w], ok, errors, seconds, throughput, mean, p50, p90, p99, p999, max,
            cpu, ok ? cpu * 1e6 / (double)ok : 0.0, first_error[0] ? "; first error: " : "",
            first_error);

    if (O.json_path) {
        FILE *f = strcmp(O.json_path, "-") == 0 ? stdout : fopen(O.json_path, "a");
        if (!f) {
            fprintf(stderr, "ballast-bench: cannot open %s: %s\n", O.json_path, strerror(errno));
            return 1;
        }
        fprintf(f, "{\"workload\":");
        json_string(f, WORKLOAD_NAMES[O.w]);
        fprintf(f, ",\"label\":");
        json_string(f, O.label);
        fprintf(f, ",\"endpoints\":");
        json_string(f, O.endpoints_arg);
        fprintf(f,
                ",\"clients\":%u,\"conns\":%u,\"threads\":%u,\"total\":%" PRIu64
                ",\"duration\":%.3f,\"key_size\":%u,\"val_size\":%u,\"key_space_size\":%" PRIu64
                ",\"sequential_keys\":%s,\"consistency\":\"%s\",\"txn_ops\":%u,\"rw_ratio\":%.3f"
                ",\"watchers\":%u,\"streams\":%u,\"put_rate\":%.1f"
                ",\"ok\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"reads\":%" PRIu64 ",\"writes\":%" PRIu64
                ",\"puts_ok\":%" PRIu64 ",\"seconds\":%.4f,\"throughput\":%.1f"
                ",\"latency_us\":{\"mean\":%.1f,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,"
                "\"max\":%.1f},\"client_cpu_s\":%.4f,\"client_cpu_us_per_op\":%.2f,\"first_error\":",
                n_clients, O.conns, n_threads, O.total, O.duration, O.key_size, O.val_size,
                O.key_space, O.sequential ? "true" : "false", O.serializable ? "s" : "l",
                O.txn_ops, O.rw_ratio, watching ? O.watchers : 0, watching ? O.streams : 0,
                O.w == W_WATCH ? O.put_rate : 0.0, ok, errors, reads, writes, put_ok, seconds,
                throughput, mean, p50, p90, p99, p999, max, cpu,
                ok ? cpu * 1e6 / (double)ok : 0.0);
        json_string(f, first_error);
        fprintf(f, "}\n");
        if (f != stdout)
            fclose(f);
        else
            fflush(stdout);
    }
    free(all);
    cleanup(workers, n_threads, streams);
    /* A run where nothing succeeded, or where errors were more than a trace, is a failed run. */
    return ok == 0 || errors * 100 > ok ? 1 : 0;
}
