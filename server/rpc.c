#include "rpc.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#define DEFAULT_BACKLOG 8
#define GENERIC_BACKLOG 2

/* Every completion-queue tag starts with this: the queue thread calls fn. */
typedef struct tag {
    void (*fn)(struct tag *t, int ok);
} tag;

typedef struct rpc_queue {
    rpc_server *server;
    grpc_completion_queue *cq;
    pthread_t thread;
    unsigned index;
} rpc_queue;

typedef struct registered {
    rpc_method m;
    void *handle;
} registered;

struct rpc_server {
    grpc_server *server;
    rpc_queue *queues;
    unsigned n_queues;
    registered *methods;
    size_t n_methods;
    int shutting_down;
    grpc_completion_queue *shutdown_cq;
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
    void *data;
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

static void send_reply(rpc_call *c, grpc_status_code code, const char *message)
{
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
    grpc_call_error err = grpc_call_start_batch(c->call, ops, n, &c->finished, NULL);
    if (err != GRPC_CALL_OK) {
        fprintf(stderr, "ballast warn rpc: cannot answer %s: error %d\n", c->method->m.path, err);
        call_free(c);
    }
}

void rpc_reply(rpc_call *c, const uint8_t *resp, size_t len)
{
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)resp, len);
    c->resp = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    send_reply(c, GRPC_STATUS_OK, NULL);
}

void rpc_fail(rpc_call *c, grpc_status_code code, const char *message)
{
    send_reply(c, code, message);
}

void rpc_call_set_data(rpc_call *c, void *data)
{
    c->data = data;
}

void *rpc_call_data(rpc_call *c)
{
    return c->data;
}

static void on_requested(tag *t, int ok)
{
    rpc_call *c = (rpc_call *)((char *)t - offsetof(rpc_call, requested));
    if (!ok) {
        /* The server is shutting down: nothing arrived. */
        call_free(c);
        return;
    }
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
    c->method->m.handler(c, GRPC_SLICE_START_PTR(c->req), GRPC_SLICE_LENGTH(c->req), c->method->m.arg);
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
    if (grpc_call_start_batch(g->call, ops, 3, &g->finished, NULL) != GRPC_CALL_OK)
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

/* ---- threads and life cycle ---- */

static void *queue_main(void *arg)
{
    rpc_queue *q = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(q->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE)
            ((tag *)ev.tag)->fn((tag *)ev.tag, ev.success);
    }
    return NULL;
}

rpc_server *rpc_server_create(const rpc_options *opt, const rpc_method *methods, size_t n_methods,
                              char **errmsg)
{
    rpc_server *s = calloc(1, sizeof *s);
    s->n_queues = opt->threads ? opt->threads : (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
    if (s->n_queues == 0)
        s->n_queues = 1;

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
    for (unsigned i = 0; i < s->n_queues; i++) {
        s->queues[i].server = s;
        s->queues[i].index = i;
        s->queues[i].cq = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(s->server, s->queues[i].cq, NULL);
    }
    s->methods = calloc(n_methods, sizeof *s->methods);
    s->n_methods = n_methods;
    for (size_t i = 0; i < n_methods; i++) {
        s->methods[i].m = methods[i];
        s->methods[i].handle = grpc_server_register_method(
            s->server, methods[i].path, NULL, GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    }
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    for (size_t i = 0; i < opt->n_listen; i++) {
        if (grpc_server_add_http2_port(s->server, opt->listen[i], creds) == 0) {
            char buf[512];
            snprintf(buf, sizeof buf, "cannot listen for clients on %s (address in use?)", opt->listen[i]);
            *errmsg = strdup(buf);
            grpc_server_credentials_release(creds);
            rpc_server_destroy(s);
            return NULL;
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
        for (size_t m = 0; m < s->n_methods; m++) {
            unsigned backlog = s->methods[m].m.backlog ? s->methods[m].m.backlog : DEFAULT_BACKLOG;
            for (unsigned k = 0; k < backlog; k++)
                post_call(s, q, &s->methods[m]);
        }
        for (unsigned k = 0; k < GENERIC_BACKLOG; k++)
            post_generic(s, q);
        pthread_create(&q->thread, NULL, queue_main, q);
    }
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
    grpc_server_destroy(s->server);
    for (unsigned i = 0; i < s->n_queues; i++)
        grpc_completion_queue_destroy(s->queues[i].cq);
    free(s->queues);
    free(s->methods);
    free(s);
}
