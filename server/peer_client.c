#include "peer_client.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "raft_message.pb-c.h"
#include "rpc.h"
#include "tsan_annotate.h"

#define FWD_METHOD "/ballastpb.Internal/Forward"
/* Batches of forwarded requests on their way to one target at a time:
 * while they are, new requests wait and go together in the next one (put
 * at 256 clients on 3 members: 2 or 1 gave the same throughput within the
 * noise, 4 and 8 less; 2 waits less at 16 clients). */
#define FWD_MAX_IN_FLIGHT 2
#define FWD_ITEM_MAX (64u << 10)  /* larger requests are forwarded alone */
#define FWD_BATCH_MAX (256u << 10) /* far under any member's receive limit */

/* A forwarded request waiting for its batch. The first item of a batch in
 * flight stands for the batch (pc, q, n). */
typedef struct fwd_item {
    struct fwd_item *next;
    peer_client *pc;
    struct fwd_queue *q;
    size_t n; /* items in the batch */
    peer_done_fn cb;
    void *arg;
    gpr_timespec deadline; /* monotonic */
    size_t len;
    char *method; /* in data, after the request */
    uint8_t data[];
} fwd_item;

/* The forwarded requests for one target. Guarded by pc->mu. */
typedef struct fwd_queue {
    char *target;
    fwd_item *head, *tail;
    unsigned in_flight; /* batches */
    int unimplemented;  /* the target predates batches: one call each */
} fwd_queue;

typedef struct channel_entry {
    char *target;
    grpc_channel *channel;
    fwd_queue *fwd; /* created on first use */
} channel_entry;

/* One asynchronous unary call; its tag is `t`. */
typedef struct pcall {
    rpc_tag t; /* first: the tag */
    peer_client *pc;
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
    int thread_started; /* on the first call, under mu */
    rpc_server *rpc;    /* peer_client_attach: calls complete on its queues,
                         * the own queue is shut down */
    channel_entry *channels;
    size_t n_channels;
    uint64_t fwd_batches, fwd_items; /* atomic */
};

static gpr_timespec deadline_in(unsigned ms)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

/* The entry (channel and forward queue) for `target`, created on first
 * use; valid until the next one is created. Called with mu held. */
static channel_entry *entry_for(peer_client *pc, const char *target)
{
    for (size_t i = 0; i < pc->n_channels; i++)
        if (strcmp(pc->channels[i].target, target) == 0)
            return &pc->channels[i];
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
    c[pc->n_channels].fwd = NULL;
    return &c[pc->n_channels++];
}

/* The channel to `target`, created on first use. Called with mu held. */
static grpc_channel *channel_for(peer_client *pc, const char *target)
{
    channel_entry *e = entry_for(pc, target);
    return e ? e->channel : NULL;
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

static void pcall_done(rpc_tag *t, int ok)
{
    (void)ok; /* RECV_STATUS_ON_CLIENT: the status says what happened */
    pcall *c = (pcall *)t;
    complete(c->pc, c);
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
            ((rpc_tag *)ev.tag)->fn(ev.tag, ev.success);
        }
    }
}

/* The own queue's thread starts with the first call made before
 * peer_client_attach (most members make none). Any thread waiting in
 * grpc_completion_queue_next on a polling queue takes turns at polling
 * gRPC's one epoll set, also for the server's connections: a third poller
 * takes reads the server's queue threads would make and hands each over
 * with a wake-up (put at 256 clients, one member, 3 interleaved pairs:
 * 0.50-0.53 -> 0.32-0.36 voluntary context switches and 52.6-58.5 ->
 * 44.4-55.2 us of server CPU per Put, when it stopped starting there).
 * Called with mu held; 0 when running. */
static int start_thread_locked(peer_client *pc)
{
    if (pc->thread_started)
        return 0;
    if (pthread_create(&pc->thread, NULL, client_main, pc) != 0)
        return -1;
    pc->thread_started = 1;
    return 0;
}

peer_client *peer_client_new(void)
{
    peer_client *pc = calloc(1, sizeof *pc);
    if (!pc)
        return NULL;
    pthread_mutex_init(&pc->mu, NULL);
    pthread_cond_init(&pc->idle, NULL);
    pc->cq = grpc_completion_queue_create_for_next(NULL);
    if (!pc->cq) {
        free(pc);
        return NULL;
    }
    return pc;
}

void peer_client_attach(peer_client *pc, rpc_server *s)
{
    pthread_mutex_lock(&pc->mu);
    pc->rpc = s;
    /* no call starts on the own queue any more: its thread, if any, ends
     * once the calls made before have completed */
    grpc_completion_queue_shutdown(pc->cq);
    pthread_mutex_unlock(&pc->mu);
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
    if (!pc->rpc) /* not shut down by attach */
        grpc_completion_queue_shutdown(pc->cq);
    if (pc->thread_started)
        pthread_join(pc->thread, NULL);
    else /* never used: only the shutdown event is queued */
        grpc_completion_queue_next(pc->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    grpc_completion_queue_destroy(pc->cq);
    for (size_t i = 0; i < pc->n_channels; i++) {
        grpc_channel_destroy(pc->channels[i].channel);
        free(pc->channels[i].target);
        if (pc->channels[i].fwd) /* its items went out before the shutdown ended */
            free(pc->channels[i].fwd->target);
        free(pc->channels[i].fwd);
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
    c->send = rpc_byte_buffer(req, len);

    c->t.fn = pcall_done;
    c->pc = pc;

    pthread_mutex_lock(&pc->mu);
    grpc_completion_queue *cq = NULL;
    if (pc->stopping)
        cq = NULL;
    else if (pc->rpc)
        cq = rpc_server_client_queue(pc->rpc);
    else if (start_thread_locked(pc) == 0)
        cq = pc->cq; /* before attach: the own thread's */
    grpc_channel *ch = cq ? channel_for(pc, target) : NULL;
    if (ch) {
        c->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
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
    TSAN_RELEASE(c); /* completed on a queue thread */
    grpc_call_error err = grpc_call_start_batch(c->call, ops, 6, &c->t, NULL);
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
    grpc_byte_buffer *send = rpc_byte_buffer(req, len);

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

/* ---- forwarded requests, in batches ---- */

static unsigned remaining_ms(gpr_timespec deadline, gpr_timespec now)
{
    if (gpr_time_cmp(deadline, now) <= 0)
        return 0;
    int64_t ms = gpr_time_to_millis(gpr_time_sub(deadline, now));
    return ms > 0 ? (unsigned)ms : 0;
}

/* The queue for target, created with its channel. Called with mu held. */
static fwd_queue *fwd_queue_for(peer_client *pc, const char *target)
{
    channel_entry *e = entry_for(pc, target);
    if (!e)
        return NULL;
    if (!e->fwd) {
        fwd_queue *q = calloc(1, sizeof *q);
        if (!q || !(q->target = strdup(target))) {
            free(q);
            return NULL;
        }
        e->fwd = q;
    }
    return e->fwd;
}

/* Takes the oldest waiting items, up to FWD_BATCH_MAX bytes (at least
 * one), as a batch in flight: the first item. Called with mu held and
 * q->head set. */
static fwd_item *take_batch_locked(peer_client *pc, fwd_queue *q)
{
    fwd_item *b = q->head;
    b->pc = pc;
    b->q = q;
    b->n = 0;
    size_t bytes = 0;
    fwd_item *last = NULL;
    for (fwd_item *it = q->head; it; it = it->next) {
        size_t sz = it->len + strlen(it->method) + 16;
        if (b->n > 0 && bytes + sz > FWD_BATCH_MAX)
            break;
        bytes += sz;
        b->n++;
        last = it;
    }
    q->head = last->next;
    if (!q->head)
        q->tail = NULL;
    last->next = NULL;
    q->in_flight++;
    __atomic_add_fetch(&pc->fwd_batches, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&pc->fwd_items, b->n, __ATOMIC_RELAXED);
    return b;
}

static void batch_done(void *arg, grpc_status_code code, const char *message, const uint8_t *resp,
                       size_t len);

static void send_batch(fwd_item *b)
{
    Ballastpb__ForwardRequest__Item *items = calloc(b->n, sizeof *items);
    Ballastpb__ForwardRequest__Item **ptrs = calloc(b->n, sizeof *ptrs);
    Ballastpb__ForwardRequest req = BALLASTPB__FORWARD_REQUEST__INIT;
    uint8_t *buf = NULL;
    size_t len = 0;
    /* the batch lasts as long as its youngest item may */
    gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
    unsigned timeout = 1;
    if (items && ptrs) {
        size_t i = 0;
        for (fwd_item *it = b; it; it = it->next, i++) {
            ballastpb__forward_request__item__init(&items[i]);
            items[i].method = it->method;
            items[i].request.data = it->data;
            items[i].request.len = it->len;
            ptrs[i] = &items[i];
            unsigned left = remaining_ms(it->deadline, now);
            if (left > timeout)
                timeout = left;
        }
        req.n_items = b->n;
        req.items = ptrs;
        len = ballastpb__forward_request__get_packed_size(&req);
        buf = malloc(len ? len : 1);
        if (buf)
            ballastpb__forward_request__pack(&req, buf);
    }
    free(items);
    free(ptrs);
    if (!buf) {
        batch_done(b, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory", NULL, 0);
        return;
    }
    peer_client_call(b->pc, b->q->target, FWD_METHOD, buf, len, timeout, batch_done, b);
    free(buf);
}

/* The answer to a batch: each item's own, or the batch's failure for
 * every item. Then the next batch goes, if requests are waiting. */
static void batch_done(void *arg, grpc_status_code code, const char *message, const uint8_t *resp,
                       size_t len)
{
    fwd_item *b = arg;
    peer_client *pc = b->pc;
    fwd_queue *q = b->q;
    size_t n = b->n;
    Ballastpb__ForwardResponse *r = NULL;
    if (code == GRPC_STATUS_OK) {
        r = ballastpb__forward_response__unpack(NULL, len, resp);
        if (!r || r->n_results != n) {
            code = GRPC_STATUS_INTERNAL;
            message = "etcdserver: malformed answer from the leader";
        }
    }
    int old_leader = code == GRPC_STATUS_UNIMPLEMENTED;
    if (old_leader) {
        pthread_mutex_lock(&pc->mu);
        q->unimplemented = 1;
        pthread_mutex_unlock(&pc->mu);
    }
    size_t i = 0;
    for (fwd_item *it = b, *next; it; it = next, i++) {
        next = it->next;
        if (old_leader) {
            unsigned left = remaining_ms(it->deadline, gpr_now(GPR_CLOCK_MONOTONIC));
            peer_client_call(pc, q->target, it->method, it->data, it->len, left ? left : 1, it->cb,
                             it->arg);
        } else if (code == GRPC_STATUS_OK) {
            const Ballastpb__ForwardResponse__Result *res = r->results[i];
            grpc_status_code c = (grpc_status_code)res->code;
            it->cb(it->arg, c, c == GRPC_STATUS_OK ? NULL : res->message,
                   res->response.data ? res->response.data : (const uint8_t *)"", res->response.len);
        } else {
            it->cb(it->arg, code, message, NULL, 0);
        }
        free(it);
    }
    if (r)
        ballastpb__forward_response__free_unpacked(r, NULL);
    pthread_mutex_lock(&pc->mu);
    q->in_flight--;
    fwd_item *next = q->head && q->in_flight < FWD_MAX_IN_FLIGHT ? take_batch_locked(pc, q) : NULL;
    pthread_mutex_unlock(&pc->mu);
    if (next)
        send_batch(next);
}

void peer_client_forward(peer_client *pc, const char *target, const char *method, const uint8_t *req,
                         size_t len, unsigned timeout_ms, peer_done_fn cb, void *arg)
{
    size_t ml = strlen(method);
    fwd_item *it = len <= FWD_ITEM_MAX ? malloc(sizeof *it + len + ml + 1) : NULL;
    pthread_mutex_lock(&pc->mu);
    fwd_queue *q = it && !pc->stopping ? fwd_queue_for(pc, target) : NULL;
    if (!q || q->unimplemented) {
        pthread_mutex_unlock(&pc->mu);
        free(it);
        peer_client_call(pc, target, method, req, len, timeout_ms, cb, arg);
        return;
    }
    it->next = NULL;
    it->cb = cb;
    it->arg = arg;
    it->deadline = deadline_in(timeout_ms);
    it->len = len;
    if (len)
        memcpy(it->data, req, len);
    it->method = (char *)it->data + len;
    memcpy(it->method, method, ml + 1);
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    fwd_item *b = q->in_flight < FWD_MAX_IN_FLIGHT ? take_batch_locked(pc, q) : NULL;
    pthread_mutex_unlock(&pc->mu);
    if (b)
        send_batch(b);
}

void peer_client_forward_stats(peer_client *pc, uint64_t *batches, uint64_t *requests)
{
    *batches = __atomic_load_n(&pc->fwd_batches, __ATOMIC_RELAXED);
    *requests = __atomic_load_n(&pc->fwd_items, __ATOMIC_RELAXED);
}
