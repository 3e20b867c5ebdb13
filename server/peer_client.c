#include "peer_client.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "rpc.h"
#include "tsan_annotate.h"

typedef struct channel_entry {
    char *target;
    grpc_channel *channel;
} channel_entry;

/* One asynchronous unary call. */
typedef struct pcall {
    struct pcall *prev, *next; /* in flight, guarded by pc->mu */
    grpc_call *call;
    grpc_metadata_array md_initial, md_trailing;
    grpc_byte_buffer *send, *recv;
    grpc_status_code status;
    grpc_slice details;
    peer_done_fn cb;
    void *arg;
} pcall;

struct peer_client {
    grpc_completion_queue *cq;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t idle; /* the in-flight list became empty */
    pcall *in_flight;
    int stopping;
    channel_entry *channels;
    size_t n_channels;
};

static gpr_timespec deadline_in(unsigned ms)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

/* The channel to `target`, created on first use. Called with mu held. */
static grpc_channel *channel_for(peer_client *pc, const char *target)
{
    for (size_t i = 0; i < pc->n_channels; i++)
        if (strcmp(pc->channels[i].target, target) == 0)
            return pc->channels[i].channel;
    channel_entry *c = realloc(pc->channels, (pc->n_channels + 1) * sizeof *c);
    if (!c)
        return NULL;
    pc->channels = c;
    grpc_arg args[2];
    memset(args, 0, sizeof args);
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = -1;
    /* A member that restarts should be found again quickly. */
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
    args[1].value.integer = 1000;
    grpc_channel_args ca = {2, args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(target, creds, &ca);
    grpc_channel_credentials_release(creds);
    char *t = strdup(target);
    if (!ch || !t) {
        free(t);
        if (ch)
            grpc_channel_destroy(ch);
        return NULL;
    }
    c[pc->n_channels].target = t;
    c[pc->n_channels].channel = ch;
    pc->n_channels++;
    return ch;
}

static void unlink_call(peer_client *pc, pcall *c)
{
    pthread_mutex_lock(&pc->mu);
    if (c->prev)
        c->prev->next = c->next;
    else
        pc->in_flight = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (!pc->in_flight)
        pthread_cond_broadcast(&pc->idle);
    pthread_mutex_unlock(&pc->mu);
}

static void pcall_free(pcall *c)
{
    if (c->send)
        grpc_byte_buffer_destroy(c->send);
    if (c->recv)
        grpc_byte_buffer_destroy(c->recv);
    grpc_slice_unref(c->details);
    grpc_metadata_array_destroy(&c->md_initial);
    grpc_metadata_array_destroy(&c->md_trailing);
    if (c->call)
        grpc_call_unref(c->call);
    free(c);
}

/* Copies a received message into one contiguous slice. */
static grpc_slice read_all(grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return grpc_empty_slice();
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    return s;
}

static void complete(peer_client *pc, pcall *c)
{
    unlink_call(pc, c);
    if (c->status == GRPC_STATUS_OK && !c->recv) {
        /* gRPC-Go answers a unary call with OK and no message only if broken */
        c->cb(c->arg, GRPC_STATUS_INTERNAL, "etcdserver: no response from the leader", NULL, 0);
    } else if (c->status == GRPC_STATUS_OK) {
        grpc_slice s = read_all(c->recv);
        c->cb(c->arg, GRPC_STATUS_OK, NULL, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s));
        grpc_slice_unref(s);
    } else {
        char *msg = grpc_slice_to_c_string(c->details);
        c->cb(c->arg, c->status, msg, NULL, 0);
        gpr_free(msg);
    }
    pcall_free(c);
}

static void *client_main(void *arg)
{
    pthread_setname_np(pthread_self(), "peer-client");
    /* the answers of forwarded calls, given from the callbacks here, are
     * sent by their own queue threads (cheaper, as for the raft thread) */
    rpc_defer_replies_here();
    peer_client *pc = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(pc->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            return NULL;
        if (ev.type == GRPC_OP_COMPLETE) {
            TSAN_ACQUIRE(ev.tag);
            complete(pc, ev.tag);
        }
    }
}

peer_client *peer_client_new(void)
{
    peer_client *pc = calloc(1, sizeof *pc);
    if (!pc)
        return NULL;
    pthread_mutex_init(&pc->mu, NULL);
    pthread_cond_init(&pc->idle, NULL);
    pc->cq = grpc_completion_queue_create_for_next(NULL);
    if (pthread_create(&pc->thread, NULL, client_main, pc) != 0) {
        grpc_completion_queue_shutdown(pc->cq);
        grpc_completion_queue_destroy(pc->cq);
        free(pc);
        return NULL;
    }
    return pc;
}

void peer_client_shutdown(peer_client *pc)
{
    pthread_mutex_lock(&pc->mu);
    pc->stopping = 1;
    for (pcall *c = pc->in_flight; c; c = c->next)
        grpc_call_cancel(c->call, NULL);
    while (pc->in_flight)
        pthread_cond_wait(&pc->idle, &pc->mu);
    pthread_mutex_unlock(&pc->mu);
}

void peer_client_free(peer_client *pc)
{
    if (!pc)
        return;
    peer_client_shutdown(pc);
    grpc_completion_queue_shutdown(pc->cq);
    pthread_join(pc->thread, NULL);
    grpc_completion_queue_destroy(pc->cq);
    for (size_t i = 0; i < pc->n_channels; i++) {
        grpc_channel_destroy(pc->channels[i].channel);
        free(pc->channels[i].target);
    }
    free(pc->channels);
    pthread_cond_destroy(&pc->idle);
    pthread_mutex_destroy(&pc->mu);
    free(pc);
}

void peer_client_call(peer_client *pc, const char *target, const char *method, const uint8_t *req,
                      size_t len, unsigned timeout_ms, peer_done_fn cb, void *arg)
{
    pcall *c = calloc(1, sizeof *c);
    if (!c) {
        cb(arg, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory", NULL, 0);
        return;
    }
    c->cb = cb;
    c->arg = arg;
    c->details = grpc_empty_slice();
    grpc_metadata_array_init(&c->md_initial);
    grpc_metadata_array_init(&c->md_trailing);
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)req, len);
    c->send = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);

    pthread_mutex_lock(&pc->mu);
    grpc_channel *ch = pc->stopping ? NULL : channel_for(pc, target);
    if (ch) {
        c->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, pc->cq,
                                           grpc_slice_from_static_string(method), NULL,
                                           deadline_in(timeout_ms), NULL);
    }
    if (!c->call) {
        pthread_mutex_unlock(&pc->mu);
        pcall_free(c);
        cb(arg, GRPC_STATUS_UNAVAILABLE, "etcdserver: cannot reach the leader", NULL, 0);
        return;
    }
    c->next = pc->in_flight;
    if (c->next)
        c->next->prev = c;
    pc->in_flight = c;
    pthread_mutex_unlock(&pc->mu);

    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = c->send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &c->md_initial;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &c->recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &c->md_trailing;
    ops[5].data.recv_status_on_client.status = &c->status;
    ops[5].data.recv_status_on_client.status_details = &c->details;
    TSAN_RELEASE(c); /* completed on client_main's thread */
    grpc_call_error err = grpc_call_start_batch(c->call, ops, 6, c, NULL);
    if (err != GRPC_CALL_OK) {
        c->status = GRPC_STATUS_INTERNAL;
        unlink_call(pc, c);
        pcall_free(c);
        cb(arg, GRPC_STATUS_UNAVAILABLE, "etcdserver: cannot reach the leader", NULL, 0);
    }
}

/* Runs one batch on a pluck queue and waits for it. */
static int run_batch(grpc_completion_queue *cq, grpc_call *call, const grpc_op *ops, size_t n, void *tag)
{
    if (grpc_call_start_batch(call, ops, n, tag, NULL) != GRPC_CALL_OK)
        return -1;
    grpc_event ev = grpc_completion_queue_pluck(cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success ? 0 : -1;
}

grpc_status_code peer_client_read_stream(peer_client *pc, const char *target, const char *method,
                                         const uint8_t *req, size_t len, unsigned timeout_ms,
                                         int (*on_message)(void *arg, const uint8_t *msg, size_t len),
                                         void *arg, char **message)
{
    *message = NULL;
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    pthread_mutex_lock(&pc->mu);
    grpc_channel *ch = pc->stopping ? NULL : channel_for(pc, target);
    grpc_call *call = ch ? grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                                    grpc_slice_from_static_string(method), NULL,
                                                    deadline_in(timeout_ms), NULL)
                         : NULL;
    pthread_mutex_unlock(&pc->mu);
    if (!call) {
        grpc_completion_queue_shutdown(cq);
        grpc_completion_queue_destroy(cq);
        *message = strdup("cannot create the call");
        return GRPC_STATUS_UNAVAILABLE;
    }
    grpc_metadata_array md_initial, md_trailing;
    grpc_metadata_array_init(&md_initial);
    grpc_metadata_array_init(&md_trailing);
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)req, len);
    grpc_byte_buffer *send = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);

    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &md_initial;
    int tag_start, tag_msg, tag_status;
    int stopped = 0;
    if (run_batch(cq, call, ops, 4, &tag_start) == 0) {
        for (;;) {
            grpc_byte_buffer *recv = NULL;
            grpc_op op;
            memset(&op, 0, sizeof op);
            op.op = GRPC_OP_RECV_MESSAGE;
            op.data.recv_message.recv_message = &recv;
            if (run_batch(cq, call, &op, 1, &tag_msg) != 0 || !recv)
                break;
            grpc_slice m = read_all(recv);
            grpc_byte_buffer_destroy(recv);
            int stop = on_message(arg, GRPC_SLICE_START_PTR(m), GRPC_SLICE_LENGTH(m));
            grpc_slice_unref(m);
            if (stop) {
                stopped = 1;
                grpc_call_cancel(call, NULL);
                break;
            }
        }
    }
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_op st;
    memset(&st, 0, sizeof st);
    st.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    st.data.recv_status_on_client.trailing_metadata = &md_trailing;
    st.data.recv_status_on_client.status = &status;
    st.data.recv_status_on_client.status_details = &details;
    if (run_batch(cq, call, &st, 1, &tag_status) != 0)
        status = GRPC_STATUS_UNKNOWN;
    if (stopped)
        status = GRPC_STATUS_CANCELLED;
    if (status != GRPC_STATUS_OK) {
        char *d = grpc_slice_to_c_string(details);
        *message = strdup(d);
        gpr_free(d);
    }
    grpc_slice_unref(details);
    grpc_byte_buffer_destroy(send);
    grpc_metadata_array_destroy(&md_initial);
    grpc_metadata_array_destroy(&md_trailing);
    grpc_call_unref(call);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
    return status;
}
