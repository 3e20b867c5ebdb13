#include "rpc.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "tsan_annotate.h"

#define DEFAULT_BACKLOG 8
#define GENERIC_BACKLOG 2
#define STREAM_BACKLOG 4
/* Replies up to this size (a Put's, a DeleteRange's without prev_kv) are
 * copied into the call when another thread answers it; see reply_later. */
#define RPC_SMALL_REPLY 64

/* Every completion-queue tag starts with this: the queue thread calls fn. */
typedef rpc_tag tag;

/* Every batch starts here: its tag comes back on a queue thread (queue_main). */
static grpc_call_error start_batch(grpc_call *call, const grpc_op *ops, size_t n, tag *t)
{
    TSAN_RELEASE(t);
    return grpc_call_start_batch(call, ops, n, t, NULL);
}

typedef struct rpc_queue {
    rpc_server *server;
    grpc_completion_queue *cq;
    pthread_t thread;
    unsigned index;
    bool streams; /* serves stream methods only (see rpc_server_create) */
    /* Replies handed over by other threads (rpc_defer_replies_here), sent
     * by this queue's thread: the first one posts `kick`, an empty batch
     * that completes at once on this queue. */
    pthread_mutex_t mu;
    pthread_cond_t idle;
    struct rpc_call *reply_head, *reply_tail;
    int kick_pending, closed;
    tag kick;
} rpc_queue;

typedef struct registered {
    rpc_method m;
    void *handle;
} registered;

typedef struct registered_stream {
    rpc_stream_method m;
    void *handle;
} registered_stream;

struct rpc_server {
    grpc_server *server;
    rpc_queue *queues;    /* n_call_queues for unary calls, then the stream ones */
    unsigned n_queues;
    unsigned n_call_queues;
    unsigned next_client_queue; /* atomic: rpc_server_client_queue */
    registered *methods;
    size_t n_methods;
    registered_stream *streams;
    size_t n_streams;
    int shutting_down;
    grpc_completion_queue *shutdown_cq;
    int (*admit)(rpc_call *call, const char *method, const uint8_t *req, size_t len, void *arg);
    void *admit_arg;
};

struct rpc_call {
    tag requested;     /* the call arrived */
    tag finished;      /* the reply batch completed */
    rpc_server *server;
    rpc_queue *queue;
    registered *method;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    grpc_slice req;
    int have_req;
    int cancelled;
    grpc_slice details;
    int have_details;
    grpc_byte_buffer *resp;
    /* a small reply handed to the queue thread: its byte buffer is made
     * there (reply_later), not by the thread that answered */
    uint8_t small_resp[RPC_SMALL_REPLY];
    uint8_t small_len;
    bool small;
    void *data;
    gpr_timespec arrived;
    /* a reply waiting for its queue thread (reply_on_queue) */
    struct rpc_call *next_reply;
    grpc_status_code reply_code;
    char *reply_message;
    /* a part of another call (rpc_call_dispatch): no gRPC call of its own,
     * its answer goes to sub_done */
    struct rpc_call *parent;
    rpc_sub_done_fn sub_done;
    void *sub_arg;
};

/* An unregistered method: answered UNIMPLEMENTED at once (otherwise gRPC
 * would keep it until the client's deadline). */
typedef struct generic_call {
    tag requested;
    tag finished;
    rpc_server *server;
    rpc_queue *queue;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    int cancelled;
    grpc_slice status;
} generic_call;

static void post_call(rpc_server *s, rpc_queue *q, registered *m);
static void post_generic(rpc_server *s, rpc_queue *q);
static void post_stream(rpc_server *s, rpc_queue *q, registered_stream *m);

/* ---- unary calls ---- */

static void call_free(rpc_call *c)
{
    if (c->have_req)
        grpc_slice_unref(c->req);
    if (c->have_details)
        grpc_slice_unref(c->details);
    if (c->payload)
        grpc_byte_buffer_destroy(c->payload);
    if (c->resp)
        grpc_byte_buffer_destroy(c->resp);
    grpc_metadata_array_destroy(&c->md);
    if (c->call)
        grpc_call_unref(c->call);
    free(c);
}

static void on_finished(tag *t, int ok)
{
    (void)ok;
    rpc_call *c = (rpc_call *)((char *)t - offsetof(rpc_call, finished));
    call_free(c);
}

grpc_byte_buffer *rpc_byte_buffer(const uint8_t *data, size_t len)
{
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)data, len);
    grpc_byte_buffer *b = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return b;
}

static void set_resp(rpc_call *c, const uint8_t *resp, size_t len)
{
    c->resp = rpc_byte_buffer(resp, len);
}

static void send_reply(rpc_call *c, grpc_status_code code, const char *message)
{
    if (c->small) {
        c->small = false;
        set_resp(c, c->small_resp, c->small_len);
    }
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    n++;
    if (c->resp) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->resp;
        n++;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    if (message) {
        c->details = grpc_slice_from_copied_string(message);
        c->have_details = 1;
        ops[n].data.send_status_from_server.status_details = &c->details;
    }
    n++;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n].data.recv_close_on_server.cancelled = &c->cancelled;
    n++;
    c->finished.fn = on_finished;
    grpc_call_error err = start_batch(c->call, ops, n, &c->finished);
    if (err != GRPC_CALL_OK) {
        fprintf(stderr, "ballast warn rpc: cannot answer %s: error %d\n", c->method->m.path, err);
        call_free(c);
    }
}

static __thread int defer_replies;

/* rpc_hold_replies_here: the kicks owed, one per queue, each with the call
 * whose empty batch will carry it (queued, so alive until on_kick). */
#define MAX_HELD_KICKS 16
typedef struct held_kick {
    rpc_queue *q;
    rpc_call *c;
} held_kick;
static __thread int hold_kicks;
static __thread held_kick held[MAX_HELD_KICKS];
static __thread unsigned n_held;

void rpc_defer_replies_here(void)
{
    defer_replies = 1;
}

void rpc_hold_replies_here(void)
{
    hold_kicks = 1;
}

/* Takes q's reply list, and with it the kick the list was owed; with
 * `only_one`, only a list of a single reply (else NULL, and q is as it was). */
static rpc_call *take_replies(rpc_queue *q, int only_one)
{
    pthread_mutex_lock(&q->mu);
    rpc_call *list = q->reply_head;
    if (only_one && list != q->reply_tail)
        list = NULL;
    if (list || !only_one) {
        q->reply_head = q->reply_tail = NULL;
        q->kick_pending = 0;
        pthread_cond_broadcast(&q->idle);
    }
    pthread_mutex_unlock(&q->mu);
    return list;
}

static void send_replies(rpc_call *list)
{
    while (list) {
        rpc_call *next = list->next_reply;
        char *msg = list->reply_message;
        list->reply_message = NULL;
        send_reply(list, list->reply_code, msg);
        free(msg);
        list = next;
    }
}

/* On a queue thread: sends the replies handed over since the last kick. */
static void on_kick(tag *t, int ok)
{
    (void)ok;
    send_replies(take_replies((rpc_queue *)((char *)t - offsetof(rpc_queue, kick)), 0));
}

/* The empty batch that wakes q's thread for its reply list (c is in it). */
static void kick(rpc_queue *q, rpc_call *c)
{
    /* c stays queued (alive) until on_kick runs, which needs this kick: an
     * empty batch completes at once on the call's queue (gRPC's rule for a
     * batch of no ops), which wakes the queue's thread. */
    if (start_batch(c->call, NULL, 0, &q->kick) != GRPC_CALL_OK)
        on_kick(&q->kick, 0); /* then they are sent from here */
}

void rpc_flush_replies(int idle)
{
    unsigned n = n_held;
    n_held = 0;
    rpc_call *one = idle && n == 1 ? take_replies(held[0].q, 1) : NULL;
    if (one) {
        send_replies(one);
        return;
    }
    for (unsigned i = 0; i < n; i++)
        kick(held[i].q, held[i].c);
}

/* Hands c's reply to the thread of c's completion queue; 0 if it must be
 * sent here (the queues are closing). Sent there, a reply costs the server
 * less gRPC work than from another thread (put at 256 clients: 50 vs 58 us
 * of server CPU per Put, 6 interleaved runs; a thread of its own before). */
static int reply_on_queue(rpc_call *c, grpc_status_code code, const char *message)
{
    rpc_queue *q = c->queue;
    char *msg = NULL;
    if (message && !(msg = strdup(message)))
        return 0;
    pthread_mutex_lock(&q->mu);
    if (q->closed) {
        pthread_mutex_unlock(&q->mu);
        free(msg);
        return 0;
    }
    c->reply_code = code;
    c->reply_message = msg;
    c->next_reply = NULL;
    if (q->reply_tail)
        q->reply_tail->next_reply = c;
    else
        q->reply_head = c;
    q->reply_tail = c;
    int owed = !q->kick_pending;
    q->kick_pending = 1;
    pthread_mutex_unlock(&q->mu);
    if (owed && hold_kicks && n_held < MAX_HELD_KICKS)
        held[n_held++] = (held_kick){q, c};
    else if (owed)
        kick(q, c);
    return 1;
}

/* Queues c's reply for its queue's thread when this thread defers its
 * replies; 0 if it must be sent here. */
static int reply_later(rpc_call *c, grpc_status_code code, const char *message)
{
    return defer_replies && reply_on_queue(c, code, message);
}

void rpc_reply(rpc_call *c, const uint8_t *resp, size_t len)
{
    if (c->parent) {
        c->sub_done(c->sub_arg, GRPC_STATUS_OK, NULL, resp, len);
        call_free(c);
        return;
    }
    if (defer_replies && len <= RPC_SMALL_REPLY) {
        /* the queue thread makes the byte buffer: its allocations are then
         * freed by the thread that made them, and this one (the raft
         * thread) has less to do */
        if (len) /* an empty reply may come as NULL */
            memcpy(c->small_resp, resp, len);
        c->small_len = (uint8_t)len;
        c->small = true;
    } else {
        set_resp(c, resp, len);
    }
    if (!reply_later(c, GRPC_STATUS_OK, NULL))
        send_reply(c, GRPC_STATUS_OK, NULL);
}

void rpc_fail(rpc_call *c, grpc_status_code code, const char *message)
{
    if (c->parent) {
        c->sub_done(c->sub_arg, code, message, NULL, 0);
        call_free(c);
        return;
    }
    if (!reply_later(c, code, message))
        send_reply(c, code, message);
}

static int has_metadata(const grpc_metadata_array *md, const char *key, const char *value)
{
    for (size_t i = 0; i < md->count; i++)
        if (grpc_slice_str_cmp(md->metadata[i].key, key) == 0 &&
            grpc_slice_str_cmp(md->metadata[i].value, value) == 0)
            return 1;
    return 0;
}

int rpc_call_has_metadata(rpc_call *c, const char *key, const char *value)
{
    return has_metadata(c->parent ? &c->parent->md : &c->md, key, value);
}

uint64_t rpc_call_age_ms(rpc_call *c)
{
    gpr_timespec d = gpr_time_sub(gpr_now(GPR_CLOCK_MONOTONIC), c->arrived);
    return d.tv_sec < 0 ? 0 : (uint64_t)d.tv_sec * 1000u + (uint64_t)d.tv_nsec / 1000000u;
}

void rpc_call_set_data(rpc_call *c, void *data)
{
    c->data = data;
}

void *rpc_call_data(rpc_call *c)
{
    return c->data;
}

/* The admit hook, then (if it let the call through) the method's handler. */
static void run_handler(rpc_call *c, const uint8_t *req, size_t len)
{
    rpc_server *s = c->server;
    if (s->admit && s->admit(c, c->method->m.path, req, len, s->admit_arg) != 0)
        return;
    c->method->m.handler(c, req, len, c->method->m.arg);
}

static void on_requested(tag *t, int ok)
{
    rpc_call *c = (rpc_call *)((char *)t - offsetof(rpc_call, requested));
    if (!ok) {
        /* The server is shutting down: nothing arrived. */
        call_free(c);
        return;
    }
    c->arrived = gpr_now(GPR_CLOCK_MONOTONIC);
    post_call(c->server, c->queue, c->method);
    if (!c->payload) {
        rpc_fail(c, GRPC_STATUS_INTERNAL, "grpc: error receiving the request message");
        return;
    }
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, c->payload)) {
        rpc_fail(c, GRPC_STATUS_INTERNAL, "grpc: error reading the request message");
        return;
    }
    c->req = grpc_byte_buffer_reader_readall(&reader);
    c->have_req = 1;
    grpc_byte_buffer_reader_destroy(&reader);
    grpc_byte_buffer_destroy(c->payload);
    c->payload = NULL;
    run_handler(c, GRPC_SLICE_START_PTR(c->req), GRPC_SLICE_LENGTH(c->req));
}

int rpc_call_dispatch(rpc_call *parent, const char *path, size_t path_len, const uint8_t *req,
                      size_t len, rpc_sub_done_fn done, void *arg)
{
    rpc_server *s = parent->server;
    registered *m = NULL;
    for (size_t i = 0; i < s->n_methods && !m; i++)
        if (strlen(s->methods[i].m.path) == path_len &&
            memcmp(s->methods[i].m.path, path, path_len) == 0)
            m = &s->methods[i];
    if (!m || m == parent->method)
        return -1;
    rpc_call *c = calloc(1, sizeof *c);
    if (!c) {
        done(arg, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory", NULL, 0);
        return 0;
    }
    c->server = s;
    c->queue = parent->queue;
    c->method = m;
    c->parent = parent;
    c->sub_done = done;
    c->sub_arg = arg;
    c->arrived = gpr_now(GPR_CLOCK_MONOTONIC);
    grpc_metadata_array_init(&c->md);
    run_handler(c, req, len);
    return 0;
}

static void post_call(rpc_server *s, rpc_queue *q, registered *m)
{
    if (__atomic_load_n(&s->shutting_down, __ATOMIC_ACQUIRE))
        return;
    rpc_call *c = calloc(1, sizeof *c);
    if (!c) {
        fprintf(stderr, "ballast error rpc: out of memory posting %s\n", m->m.path);
        return;
    }
    c->requested.fn = on_requested;
    c->server = s;
    c->queue = q;
    c->method = m;
    grpc_metadata_array_init(&c->md);
    grpc_call_error err = grpc_server_request_registered_call(
        s->server, m->handle, &c->call, &c->deadline, &c->md, &c->payload, q->cq, q->cq,
        &c->requested);
    if (err != GRPC_CALL_OK) {
        grpc_metadata_array_destroy(&c->md);
        free(c);
    }
}

/* ---- unregistered methods ---- */

static void generic_free(generic_call *g)
{
    grpc_call_details_destroy(&g->details);
    grpc_metadata_array_destroy(&g->md);
    if (g->call)
        grpc_call_unref(g->call);
    grpc_slice_unref(g->status);
    free(g);
}

static void on_generic_finished(tag *t, int ok)
{
    (void)ok;
    generic_free((generic_call *)((char *)t - offsetof(generic_call, finished)));
}

static void on_generic_requested(tag *t, int ok)
{
    generic_call *g = (generic_call *)((char *)t - offsetof(generic_call, requested));
    if (!ok) {
        generic_free(g);
        return;
    }
    post_generic(g->server, g->queue);
    char *path = grpc_slice_to_c_string(g->details.method);
    char msg[512];
    snprintf(msg, sizeof msg, "unknown service or method %s", path);
    gpr_free(path);
    g->status = grpc_slice_from_copied_string(msg);
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[1].data.send_status_from_server.status = GRPC_STATUS_UNIMPLEMENTED;
    ops[1].data.send_status_from_server.status_details = &g->status;
    ops[2].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[2].data.recv_close_on_server.cancelled = &g->cancelled;
    g->finished.fn = on_generic_finished;
    if (start_batch(g->call, ops, 3, &g->finished) != GRPC_CALL_OK)
        generic_free(g);
}

static void post_generic(rpc_server *s, rpc_queue *q)
{
    if (__atomic_load_n(&s->shutting_down, __ATOMIC_ACQUIRE))
        return;
    generic_call *g = calloc(1, sizeof *g);
    if (!g)
        return;
    g->requested.fn = on_generic_requested;
    g->server = s;
    g->queue = q;
    g->status = grpc_empty_slice();
    grpc_call_details_init(&g->details);
    grpc_metadata_array_init(&g->md);
    if (grpc_server_request_call(s->server, &g->call, &g->details, &g->md, q->cq, q->cq,
                                 &g->requested) != GRPC_CALL_OK)
        generic_free(g);
}

/* ---- streams ---- */

typedef struct out_msg {
    struct out_msg *next;
    grpc_byte_buffer *buf;
    size_t len;
} out_msg;

struct rpc_stream {
    tag requested;
    tag recv_done;
    tag send_done;
    tag close_done;
    rpc_server *server;
    rpc_queue *queue;
    registered_stream *method;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *recv_buf;
    int cancelled;
    void *data;

    pthread_mutex_t mu;
    int refs;             /* outstanding batches + the handler's reference */
    out_msg *head, *tail; /* queued, not yet handed to gRPC */
    size_t backlog;
    int sending;          /* a SEND_MESSAGE or SEND_STATUS batch is in flight */
    int finishing;        /* rpc_stream_finish was called */
    int status_sent;
    int done;             /* RECV_CLOSE_ON_SERVER completed */
    grpc_status_code status;
    grpc_slice status_details;
    int have_details;
    grpc_byte_buffer *in_flight; /* the message being sent */
};

static void stream_unref(rpc_stream *st)
{
    pthread_mutex_lock(&st->mu);
    int last = --st->refs == 0;
    pthread_mutex_unlock(&st->mu);
    if (!last)
        return;
    while (st->head) {
        out_msg *m = st->head;
        st->head = m->next;
        grpc_byte_buffer_destroy(m->buf);
        free(m);
    }
    if (st->in_flight)
        grpc_byte_buffer_destroy(st->in_flight);
    if (st->recv_buf)
        grpc_byte_buffer_destroy(st->recv_buf);
    if (st->have_details)
        grpc_slice_unref(st->status_details);
    grpc_metadata_array_destroy(&st->md);
    if (st->call)
        grpc_call_unref(st->call);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

/* Starts the next send if none is in flight. Called with mu held. */
static void stream_pump_locked(rpc_stream *st)
{
    if (st->sending || st->done || st->status_sent)
        return;
    grpc_op op;
    memset(&op, 0, sizeof op);
    if (st->head) {
        out_msg *m = st->head;
        st->head = m->next;
        if (!st->head)
            st->tail = NULL;
        st->backlog -= m->len;
        st->in_flight = m->buf;
        free(m);
        op.op = GRPC_OP_SEND_MESSAGE;
        op.data.send_message.send_message = st->in_flight;
    } else if (st->finishing) {
        op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        op.data.send_status_from_server.status = st->status;
        if (st->have_details)
            op.data.send_status_from_server.status_details = &st->status_details;
        st->status_sent = 1;
    } else {
        return;
    }
    st->sending = 1;
    st->refs++;
    if (start_batch(st->call, &op, 1, &st->send_done) != GRPC_CALL_OK) {
        /* The call is broken: drop what is queued; close_done will follow. */
        st->sending = 0;
        st->refs--;
        st->status_sent = 1;
    }
}

static void on_stream_send_done(tag *t, int ok)
{
    rpc_stream *st = (rpc_stream *)((char *)t - offsetof(rpc_stream, send_done));
    pthread_mutex_lock(&st->mu);
    st->sending = 0;
    if (st->in_flight) {
        grpc_byte_buffer_destroy(st->in_flight);
        st->in_flight = NULL;
    }
    if (ok)
        stream_pump_locked(st);
    pthread_mutex_unlock(&st->mu);
    stream_unref(st);
}

int rpc_stream_send(rpc_stream *st, const uint8_t *msg, size_t len)
{
    out_msg *m = malloc(sizeof *m);
    if (!m)
        return -1;
    m->buf = rpc_byte_buffer(msg, len);
    m->len = len;
    m->next = NULL;
    pthread_mutex_lock(&st->mu);
    if (st->finishing || st->done) {
        pthread_mutex_unlock(&st->mu);
        grpc_byte_buffer_destroy(m->buf);
        free(m);
        return -1;
    }
    if (st->tail)
        st->tail->next = m;
    else
        st->head = m;
    st->tail = m;
    st->backlog += len;
    stream_pump_locked(st);
    pthread_mutex_unlock(&st->mu);
    return 0;
}

size_t rpc_stream_backlog(rpc_stream *st)
{
    pthread_mutex_lock(&st->mu);
    size_t b = st->backlog;
    pthread_mutex_unlock(&st->mu);
    return b;
}

void rpc_stream_finish(rpc_stream *st, grpc_status_code code, const char *message)
{
    pthread_mutex_lock(&st->mu);
    if (!st->finishing) {
        st->finishing = 1;
        st->status = code;
        if (message) {
            st->status_details = grpc_slice_from_copied_string(message);
            st->have_details = 1;
        }
        stream_pump_locked(st);
    }
    pthread_mutex_unlock(&st->mu);
}

void rpc_stream_set_data(rpc_stream *st, void *data)
{
    st->data = data;
}

void *rpc_stream_data(rpc_stream *st)
{
    return st->data;
}

int rpc_stream_has_metadata(rpc_stream *st, const char *key, const char *value)
{
    return has_metadata(&st->md, key, value);
}

void rpc_stream_ref(rpc_stream *st)
{
    pthread_mutex_lock(&st->mu);
    st->refs++;
    pthread_mutex_unlock(&st->mu);
}

void rpc_stream_release(rpc_stream *st)
{
    stream_unref(st);
}

static void stream_start_recv(rpc_stream *st)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &st->recv_buf;
    pthread_mutex_lock(&st->mu);
    st->refs++;
    pthread_mutex_unlock(&st->mu);
    if (start_batch(st->call, &op, 1, &st->recv_done) != GRPC_CALL_OK)
        stream_unref(st);
}

static void on_stream_recv_done(tag *t, int ok)
{
    rpc_stream *st = (rpc_stream *)((char *)t - offsetof(rpc_stream, recv_done));
    const rpc_stream_handler *h = st->method->m.handler;
    void *arg = st->method->m.arg;
    pthread_mutex_lock(&st->mu);
    int done = st->done;
    pthread_mutex_unlock(&st->mu);
    if (!ok || !st->recv_buf) {
        if (ok && !done && h->on_recv_end)
            h->on_recv_end(st, arg);
    } else {
        grpc_byte_buffer_reader reader;
        grpc_byte_buffer *buf = st->recv_buf;
        st->recv_buf = NULL;
        if (grpc_byte_buffer_reader_init(&reader, buf)) {
            grpc_slice slice = grpc_byte_buffer_reader_readall(&reader);
            grpc_byte_buffer_reader_destroy(&reader);
            if (!done)
                h->on_message(st, GRPC_SLICE_START_PTR(slice), GRPC_SLICE_LENGTH(slice), arg);
            grpc_slice_unref(slice);
        }
        grpc_byte_buffer_destroy(buf);
        if (!done)
            stream_start_recv(st);
    }
    stream_unref(st);
}

static void on_stream_close_done(tag *t, int ok)
{
    (void)ok;
    rpc_stream *st = (rpc_stream *)((char *)t - offsetof(rpc_stream, close_done));
    pthread_mutex_lock(&st->mu);
    st->done = 1;
    pthread_mutex_unlock(&st->mu);
    st->method->m.handler->on_done(st, st->cancelled, st->method->m.arg);
    stream_unref(st);
}

static void on_stream_requested(tag *t, int ok)
{
    rpc_stream *st = (rpc_stream *)((char *)t - offsetof(rpc_stream, requested));
    if (!ok) {
        stream_unref(st);
        return;
    }
    post_stream(st->server, st->queue, st->method);
    /* refs: the handler's, close_done's (taken here) and recv's (below). */
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[1].data.recv_close_on_server.cancelled = &st->cancelled;
    st->refs++;
    if (start_batch(st->call, ops, 2, &st->close_done) != GRPC_CALL_OK) {
        fprintf(stderr, "ballast warn rpc: cannot start stream %s\n", st->method->m.path);
        st->refs -= 2;
        stream_unref(st);
        return;
    }
    st->method->m.handler->on_open(st, st->method->m.arg);
    stream_start_recv(st);
}

static void post_stream(rpc_server *s, rpc_queue *q, registered_stream *m)
{
    if (__atomic_load_n(&s->shutting_down, __ATOMIC_ACQUIRE))
        return;
    rpc_stream *st = calloc(1, sizeof *st);
    if (!st)
        return;
    st->requested.fn = on_stream_requested;
    st->recv_done.fn = on_stream_recv_done;
    st->send_done.fn = on_stream_send_done;
    st->close_done.fn = on_stream_close_done;
    st->server = s;
    st->queue = q;
    st->method = m;
    st->refs = 1; /* the handler's reference, released by rpc_stream_release */
    pthread_mutex_init(&st->mu, NULL);
    grpc_metadata_array_init(&st->md);
    if (grpc_server_request_registered_call(s->server, m->handle, &st->call, &st->deadline, &st->md,
                                            NULL, q->cq, q->cq, &st->requested) != GRPC_CALL_OK)
        stream_unref(st);
}

/* ---- threads and life cycle ---- */

static void *queue_main(void *arg)
{
    rpc_queue *q = arg;
    pthread_setname_np(pthread_self(), q->streams ? "rpc-stream" : "rpc-cq");
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(q->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE) {
            TSAN_ACQUIRE(ev.tag);
            ((tag *)ev.tag)->fn((tag *)ev.tag, ev.success);
        }
    }
    return NULL;
}

/* A streams' queue does not poll: its thread only runs its own calls'
 * completions and the unary calls' threads, whose queues do poll, do every
 * socket's I/O (the poller's epoll set holds every socket). As a third
 * poller on two cores, it took part in the unary calls' I/O, and the
 * range-ceiling read fell to 41-51k/s from 64-76k (interleaved runs). */
static grpc_completion_queue *stream_queue_create(void)
{
    grpc_completion_queue_attributes attr = {GRPC_CQ_CURRENT_VERSION, GRPC_CQ_NEXT,
                                             GRPC_CQ_NON_POLLING, NULL};
    /* NULL, says grpc.h, when no factory offers such a queue */
    const grpc_completion_queue_factory *f = grpc_completion_queue_factory_lookup(&attr);
    return f ? grpc_completion_queue_create(f, &attr, NULL) : NULL;
}

/* rpc_server_create's way out when something cannot be had: the reason in
 * *errmsg, and what was built so far destroyed. */
static rpc_server *create_failed(rpc_server *s, char **errmsg, const char *why)
{
    *errmsg = strdup(why);
    rpc_server_destroy(s);
    return NULL;
}

rpc_server *rpc_server_create(const rpc_options *opt, const rpc_method *methods, size_t n_methods,
                              const rpc_stream_method *streams, size_t n_streams, char **errmsg)
{
    rpc_server *s = calloc(1, sizeof *s);
    if (!s)
        return create_failed(NULL, errmsg, "out of memory");
    s->admit = opt->admit;
    s->admit_arg = opt->admit_arg;
    s->n_call_queues = opt->threads ? opt->threads : (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
    if (s->n_call_queues == 0)
        s->n_call_queues = 1;
    /* Streams get queues of their own. A stream with a backlog keeps its
     * queue busy: each send that completes starts the next, which usually
     * completes at once, so the queue never empties. A thread calls into
     * gRPC's poller only when its queue is empty, so on a queue shared with
     * unary calls, new requests would sit unread in their sockets (seconds,
     * with 1,000 watchers whose readers lag). The unary queues empty
     * between requests and keep polling every socket. */
    s->n_queues = s->n_call_queues + (s->n_call_queues + 3) / 4;

    grpc_arg args[] = {
        {GRPC_ARG_INTEGER, GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, {.integer = (int)opt->max_receive_bytes}},
        {GRPC_ARG_INTEGER, GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, {.integer = -1}},
        {GRPC_ARG_INTEGER, GRPC_ARG_ALLOW_REUSEPORT, {.integer = 0}},
        /* etcd's keepalive policy: clients may ping every 5 s, even idle. */
        {GRPC_ARG_INTEGER, GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, {.integer = 5000}},
        {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, {.integer = 1}},
        {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_TIME_MS, {.integer = 2 * 60 * 60 * 1000}},
        {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_TIMEOUT_MS, {.integer = 20 * 1000}},
        {GRPC_ARG_INTEGER, GRPC_ARG_MAX_CONCURRENT_STREAMS, {.integer = 1 << 30}},
    };
    grpc_channel_args ch = {sizeof args / sizeof args[0], args};
    s->server = grpc_server_create(&ch, NULL);

    s->queues = calloc(s->n_queues, sizeof *s->queues);
    s->methods = calloc(n_methods ? n_methods : 1, sizeof *s->methods);
    s->streams = calloc(n_streams ? n_streams : 1, sizeof *s->streams);
    if (!s->server || !s->queues || !s->methods || !s->streams)
        return create_failed(s, errmsg, "cannot create the gRPC server (out of memory?)");
    for (unsigned i = 0; i < s->n_queues; i++) {
        s->queues[i].server = s;
        s->queues[i].index = i;
        s->queues[i].streams = i >= s->n_call_queues;
        s->queues[i].cq = s->queues[i].streams ? stream_queue_create()
                                               : grpc_completion_queue_create_for_next(NULL);
        if (!s->queues[i].cq)
            return create_failed(s, errmsg,
                                 s->queues[i].streams
                                     ? "gRPC offers no non-polling completion queue for streams"
                                     : "cannot create a gRPC completion queue");
        pthread_mutex_init(&s->queues[i].mu, NULL);
        pthread_cond_init(&s->queues[i].idle, NULL);
        s->queues[i].kick.fn = on_kick;
        grpc_server_register_completion_queue(s->server, s->queues[i].cq, NULL);
    }
    s->n_methods = n_methods;
    for (size_t i = 0; i < n_methods; i++) {
        s->methods[i].m = methods[i];
        s->methods[i].handle = grpc_server_register_method(
            s->server, methods[i].path, NULL, GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    }
    s->n_streams = n_streams;
    for (size_t i = 0; i < n_streams; i++) {
        s->streams[i].m = streams[i];
        s->streams[i].handle =
            grpc_server_register_method(s->server, streams[i].path, NULL, GRPC_SRM_PAYLOAD_NONE, 0);
    }
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    for (size_t i = 0; i < opt->n_listen; i++) {
        if (grpc_server_add_http2_port(s->server, opt->listen[i], creds) == 0) {
            char buf[512];
            snprintf(buf, sizeof buf, "cannot listen for clients on %s (address in use?)", opt->listen[i]);
            grpc_server_credentials_release(creds);
            return create_failed(s, errmsg, buf);
        }
    }
    grpc_server_credentials_release(creds);
    return s;
}

void rpc_server_start(rpc_server *s)
{
    grpc_server_start(s->server);
    for (unsigned i = 0; i < s->n_queues; i++) {
        rpc_queue *q = &s->queues[i];
        if (q->streams) {
            for (size_t m = 0; m < s->n_streams; m++)
                for (unsigned k = 0; k < STREAM_BACKLOG; k++)
                    post_stream(s, q, &s->streams[m]);
        } else {
            for (size_t m = 0; m < s->n_methods; m++) {
                unsigned backlog =
                    s->methods[m].m.backlog ? s->methods[m].m.backlog : DEFAULT_BACKLOG;
                for (unsigned k = 0; k < backlog; k++)
                    post_call(s, q, &s->methods[m]);
            }
            for (unsigned k = 0; k < GENERIC_BACKLOG; k++)
                post_generic(s, q);
        }
        pthread_create(&q->thread, NULL, queue_main, q);
    }
}

grpc_completion_queue *rpc_server_client_queue(rpc_server *s)
{
    unsigned i = __atomic_fetch_add(&s->next_client_queue, 1, __ATOMIC_RELAXED);
    return s->queues[i % s->n_call_queues].cq;
}

void rpc_server_begin_shutdown(rpc_server *s)
{
    __atomic_store_n(&s->shutting_down, 1, __ATOMIC_RELEASE);
    s->shutdown_cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_server_shutdown_and_notify(s->server, s->shutdown_cq, s);
    grpc_server_cancel_all_calls(s->server);
}

void rpc_server_finish_shutdown(rpc_server *s)
{
    /* replies handed to the queue threads go out before the queues close */
    for (unsigned i = 0; i < s->n_queues; i++) {
        rpc_queue *q = &s->queues[i];
        pthread_mutex_lock(&q->mu);
        q->closed = 1;
        while (q->kick_pending)
            pthread_cond_wait(&q->idle, &q->mu);
        pthread_mutex_unlock(&q->mu);
    }
    grpc_completion_queue_pluck(s->shutdown_cq, s, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    grpc_completion_queue_shutdown(s->shutdown_cq);
    grpc_completion_queue_destroy(s->shutdown_cq);
    s->shutdown_cq = NULL;
    for (unsigned i = 0; i < s->n_queues; i++)
        grpc_completion_queue_shutdown(s->queues[i].cq);
    for (unsigned i = 0; i < s->n_queues; i++)
        pthread_join(s->queues[i].thread, NULL);
}

void rpc_server_destroy(rpc_server *s)
{
    if (!s)
        return;
    if (s->server)
        grpc_server_destroy(s->server);
    /* queues past one that could not be created are still all zeros */
    for (unsigned i = 0; s->queues && i < s->n_queues && s->queues[i].cq; i++) {
        grpc_completion_queue_destroy(s->queues[i].cq);
        pthread_mutex_destroy(&s->queues[i].mu);
        pthread_cond_destroy(&s->queues[i].idle);
    }
    free(s->queues);
    free(s->methods);
    free(s->streams);
    free(s);
}
