/*
 * The cluster layer of the front end: what makes any member accept any
 * request.
 *
 * - Routing: a request only the leader serves is forwarded as it arrived to
 *   the same method on the leader's client URL (from the replicated member
 *   list). Its answer is held until this member has applied the revision in
 *   the answer's header, so that a serializable read or a watch here sees the
 *   write afterwards — etcd's follower waits for its own apply likewise.
 *   Without a known leader the call is parked and runs again once one is
 *   known, or fails with etcd's "request timed out" after the request
 *   timeout.
 * - Linearizable reads on a follower ask the leader for a read index (the
 *   raft node calls cluster_remote_read) and wait for it to be applied here.
 * - A thread records the bootstrap member list (first leader of a new
 *   cluster), publishes this member's name and client URLs, retries parked
 *   calls, and stops this member when it has been removed from the cluster.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ballast.h"
#include "member.h"

#define TICK_MS 20 /* parked calls are retried this often */
#define PUBLISH_RETRY_MS 1000
/* The longest a removed member keeps running (see check_self). */
#define REMOVED_WAIT_MS 5000
#define KV_COMPACT "/etcdserverpb.KV/Compact"

static const char ERR_TIMEOUT[] = "etcdserver: request timed out";
static const char ERR_NO_LEADER[] = "etcdserver: no leader";

/* A forwarded call's answer, waiting for this member to apply `rev`. */
typedef struct fwd_wait {
    struct fwd_wait *next;
    rpc_call *call;
    int64_t rev;
    int physical; /* a physical Compact: also wait for the removal here */
    int64_t compact_rev;
    size_t len;
    uint8_t resp[];
} fwd_wait;

/* A call waiting for a leader to be known. */
typedef struct parked {
    struct parked *next;
    rpc_unary_handler handler;
    rpc_call *call;
    const uint8_t *data;
    size_t len;
} parked;

/* A stream that asked for a leader (metadata hasleader=true). */
typedef struct leader_stream {
    struct leader_stream *next;
    rpc_stream *st; /* a reference of ours */
} leader_stream;

/* A forward in flight. */
typedef struct forward {
    ballast_server *b;
    rpc_call *call;
    rpc_unary_handler handler;
    const uint8_t *data;
    size_t len;
    int physical;
    int64_t compact_rev;
} forward;

struct cluster_state {
    pthread_mutex_t mu;
    pthread_t thread;
    int thread_started;
    int stopping;
    fwd_wait *waiters; /* ordered by rev */
    int have_waiters;  /* atomic: waiters != NULL */
    parked *parked;
    /* the member list as last read from the store */
    uint64_t members_gen;
    Ballastpb__Member **members;
    size_t n_members;
    int members_loaded;
    /* cluster thread */
    uint64_t next_publish_ms;
    int publish_in_flight; /* atomic */
    uint64_t next_bootstrap_ms;
    leader_stream *leader_streams; /* under mu */
    uint64_t next_leader_check_ms;
    unsigned no_leader_checks;
    int seen_self;
    uint64_t removed_at_ms;
    int removed_saw_leader; /* since its removal, another member led */
    int removed;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

unsigned cluster_request_timeout_ms(ballast_server *b)
{
    return 5000u + 2u * b->cfg->election_timeout_ms;
}

/* ---- the member list ---- */

/* Reloads the cached list if the store's changed. Called with mu held. */
static void members_refresh_locked(ballast_server *b)
{
    struct cluster_state *c = b->cluster;
    uint64_t gen = mvcc_members_generation(b->store);
    if (c->members_loaded && gen == c->members_gen)
        return;
    Ballastpb__Member **list;
    size_t n;
    if (mvcc_members(b->store, &list, &n) != 0)
        return;
    mvcc_members_free(c->members, c->n_members);
    c->members = list;
    c->n_members = n;
    c->members_gen = gen;
    c->members_loaded = 1;
}

/* "host:port" of a URL such as "http://127.0.0.1:2379". */
static int url_target(const char *url, char *out, size_t cap)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    size_t len = strcspn(p, "/");
    if (len == 0 || len >= cap)
        return -1;
    memcpy(out, p, len);
    out[len] = 0;
    return 0;
}

int cluster_leader_target(ballast_server *b, uint64_t leader_id, char *out, size_t cap)
{
    struct cluster_state *c = b->cluster;
    int rv = -1;
    pthread_mutex_lock(&c->mu);
    members_refresh_locked(b);
    for (size_t i = 0; i < c->n_members; i++)
        if (c->members[i]->id == leader_id && c->members[i]->n_client_urls > 0)
            rv = url_target(c->members[i]->client_urls[0], out, cap);
    pthread_mutex_unlock(&c->mu);
    return rv;
}

/* ---- answers held until this member has applied the leader's revision ---- */

/* Finds the first occurrence of `field`: 1 when found (see ballast_pb_next for
 * what is set), 0 when not or the bytes do not parse. */
static int pb_find(const uint8_t *p, size_t n, uint32_t field, uint64_t *v, const uint8_t **sub,
                   size_t *sub_len)
{
    size_t i = 0;
    uint32_t f;
    int rc;
    while ((rc = ballast_pb_next(p, n, &i, &f, v, sub, sub_len)) == 1)
        if (f == field)
            return 1;
    return 0;
}

/* The revision in the ResponseHeader (field 1, its field 3) of an encoded
 * etcd response, or 0 when it has none. */
static int64_t header_revision(const uint8_t *p, size_t n)
{
    const uint8_t *h;
    size_t hn;
    uint64_t rev = 0;
    if (pb_find(p, n, 1, &rev, &h, &hn) && pb_find(h, hn, 3, &rev, &h, &hn))
        return (int64_t)rev;
    return 0;
}

static size_t put_varint(uint8_t *out, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

/* The leader's answer with this member's ResponseHeader (its member_id and
 * raft_term; cluster_id and revision kept), as etcd's follower answers from
 * its own apply. Writes into `out` (room for len + 64 bytes); returns the
 * new length, or 0 when the answer does not parse or has no header. */
static size_t rewrite_header(ballast_server *b, const uint8_t *p, size_t len, uint8_t *out)
{
    size_t o = 64; /* the new header goes in front, the other fields after */
    size_t i = 0, start = 0;
    int found = 0, rc;
    uint32_t field;
    uint64_t v, cluster_id = 0, revision = 0;
    const uint8_t *h, *sub;
    size_t hn, sub_len;
    while ((rc = ballast_pb_next(p, len, &i, &field, &v, &h, &hn)) == 1) {
        if (field == 1 && h && !found) {
            pb_find(h, hn, 1, &cluster_id, &sub, &sub_len);
            pb_find(h, hn, 3, &revision, &sub, &sub_len);
            found = 1;
        } else {
            memcpy(out + o, p + start, i - start);
            o += i - start;
        }
        start = i;
    }
    if (rc != 0)
        return 0;
    if (!found)
        return 0;
    mvcc_header mine = ballast_header(b);
    uint8_t hdr[48];
    size_t n = 0;
    uint64_t fields[4] = {cluster_id, mine.member_id, revision, mine.raft_term};
    for (uint32_t f = 0; f < 4; f++) {
        if (!fields[f])
            continue;
        hdr[n++] = (uint8_t)((f + 1) << 3);
        n += put_varint(hdr + n, fields[f]);
    }
    /* four varints of at most 10 bytes and their tags: n <= 44, and the
     * field's tag and one-byte length make at most 46 of the 64-byte gap */
    uint8_t head[2 + sizeof hdr];
    size_t hl = 0;
    if (n > sizeof hdr)
        return 0;
    head[hl++] = (1 << 3) | 2;
    hl += put_varint(head + hl, n);
    memcpy(head + hl, hdr, n);
    hl += n;
    /* the fields were copied after a 64-byte gap: close it */
    memcpy(out, head, hl);
    memmove(out + hl, out + 64, o - 64);
    return hl + o - 64;
}

static void deliver(ballast_server *b, fwd_wait *w)
{
    if (w->physical)
        kv_service_answer_compacted(b, w->call, w->compact_rev, w->resp, w->len);
    else
        rpc_reply(w->call, w->resp, w->len);
    free(w);
}

static void answer_after_apply(ballast_server *b, rpc_call *call, const uint8_t *resp, size_t len,
                               int physical, int64_t compact_rev)
{
    struct cluster_state *c = b->cluster;
    fwd_wait *w = malloc(sizeof *w + len + 64);
    if (!w) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        return;
    }
    w->call = call;
    w->rev = header_revision(resp, len);
    w->physical = physical;
    w->compact_rev = compact_rev;
    w->len = rewrite_header(b, resp, len, w->resp);
    if (w->len == 0) {
        w->len = len;
        memcpy(w->resp, resp, len);
    }
    pthread_mutex_lock(&c->mu);
    if (mvcc_current_revision(b->store) >= w->rev) {
        pthread_mutex_unlock(&c->mu);
        deliver(b, w);
        return;
    }
    fwd_wait **p = &c->waiters;
    while (*p && (*p)->rev <= w->rev)
        p = &(*p)->next;
    w->next = *p;
    *p = w;
    __atomic_store_n(&c->have_waiters, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&c->mu);
}

/* Takes the waiters that may be answered: applied here, or (all = 1) every
 * one. Called with mu held. */
static fwd_wait *take_waiters_locked(ballast_server *b, int all)
{
    struct cluster_state *c = b->cluster;
    int64_t rev = mvcc_current_revision(b->store);
    fwd_wait **p = &c->waiters;
    while (*p && (all || (*p)->rev <= rev))
        p = &(*p)->next;
    if (p == &c->waiters)
        return NULL;
    /* the list is ordered by revision: the ready ones are its head, up to p */
    fwd_wait *ready = c->waiters;
    c->waiters = *p;
    *p = NULL;
    if (!c->waiters)
        __atomic_store_n(&c->have_waiters, 0, __ATOMIC_RELEASE);
    return ready;
}

static void deliver_all(ballast_server *b, fwd_wait *w)
{
    while (w) {
        fwd_wait *next = w->next;
        deliver(b, w);
        w = next;
    }
}

void cluster_applied(void *arg, uint64_t index)
{
    (void)index;
    ballast_server *b = arg;
    struct cluster_state *c = b->cluster;
    if (!__atomic_load_n(&c->have_waiters, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&c->mu);
    fwd_wait *ready = take_waiters_locked(b, 0);
    pthread_mutex_unlock(&c->mu);
    deliver_all(b, ready);
}

/* ---- routing ---- */

void cluster_map_forward_error(grpc_status_code *code, const char **message)
{
    if (*code == GRPC_STATUS_DEADLINE_EXCEEDED) {
        *code = GRPC_STATUS_UNAVAILABLE;
        *message = ERR_TIMEOUT;
    } else if (*code == GRPC_STATUS_UNAVAILABLE &&
               (!*message || strncmp(*message, "etcdserver:", 11) != 0)) {
        /* the connection to the leader broke: the outcome is unknown */
        *message = "etcdserver: request timed out, possibly due to connection lost";
    }
}

/* True when gRPC failed before the leader could have seen the request, so
 * running it again cannot apply it twice. */
static int never_sent(grpc_status_code code, const char *message)
{
    return code == GRPC_STATUS_UNAVAILABLE && message &&
           (strstr(message, "failed to connect") || strstr(message, "Connection refused") ||
            strstr(message, "cannot reach the leader"));
}

static void park(ballast_server *b, rpc_call *call, rpc_unary_handler handler, const uint8_t *data,
                 size_t len)
{
    struct cluster_state *c = b->cluster;
    parked *p = malloc(sizeof *p);
    if (!p) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        return;
    }
    *p = (parked){NULL, handler, call, data, len};
    pthread_mutex_lock(&c->mu);
    if (c->stopping) {
        pthread_mutex_unlock(&c->mu);
        free(p);
        rpc_fail(call, GRPC_STATUS_UNAVAILABLE, "etcdserver: server stopped");
        return;
    }
    p->next = c->parked;
    c->parked = p;
    pthread_mutex_unlock(&c->mu);
}

static void forward_done(void *arg, grpc_status_code code, const char *message, const uint8_t *resp,
                         size_t len)
{
    forward *f = arg;
    ballast_server *b = f->b;
    if (code == GRPC_STATUS_OK) {
        answer_after_apply(b, f->call, resp, len, f->physical, f->compact_rev);
    } else if (never_sent(code, message) && rpc_call_age_ms(f->call) < cluster_request_timeout_ms(b)) {
        park(b, f->call, f->handler, f->data, f->len);
    } else {
        cluster_map_forward_error(&code, &message);
        rpc_fail(f->call, code, message);
    }
    free(f);
}

int ballast_route(ballast_server *b, rpc_call *call, const char *method, rpc_unary_handler handler,
                  const uint8_t *data, size_t len)
{
    raft_node_status st;
    raft_node_get_status(b->node, &st);
    if (st.is_leader)
        return 0;
    char target[300];
    if (!st.leader_id || st.leader_id == b->member_id ||
        cluster_leader_target(b, st.leader_id, target, sizeof target) != 0) {
        park(b, call, handler, data, len);
        return 1;
    }
    forward *f = malloc(sizeof *f);
    if (!f) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        return 1;
    }
    *f = (forward){b, call, handler, data, len, 0, 0};
    int64_t *physical_rev = strcmp(method, KV_COMPACT) == 0 ? rpc_call_data(call) : NULL;
    if (physical_rev) {
        f->physical = 1;
        f->compact_rev = *physical_rev;
        free(physical_rev);
        rpc_call_set_data(call, NULL);
    }
    unsigned age = (unsigned)rpc_call_age_ms(call), timeout = cluster_request_timeout_ms(b);
    /* Only the writes that are answered once applied share batches: a
     * batch is answered when its slowest item is, and a member change, a
     * physical Compact or a lease question may take longer. */
    int batched = strcmp(method, "/etcdserverpb.KV/Put") == 0 ||
                  strcmp(method, "/etcdserverpb.KV/DeleteRange") == 0 ||
                  strcmp(method, "/etcdserverpb.KV/Txn") == 0;
    (batched ? peer_client_forward : peer_client_call)(b->peers, target, method, data, len,
                                                      age < timeout ? timeout - age : 1, forward_done, f);
    return 1;
}

/* ---- a follower's forwarded requests, on the leader ---- */

typedef struct fwd_in fwd_in;

/* One item's answer. */
typedef struct fwd_part {
    fwd_in *in;
    grpc_status_code code;
    char *message;
    uint8_t *resp;
    size_t len;
} fwd_part;

/* /ballastpb.Internal/Forward in progress: answered once every item is. */
struct fwd_in {
    rpc_call *call;
    Ballastpb__ForwardRequest *req; /* the items' bytes, until answered */
    size_t n;
    int remaining; /* atomic: items not answered yet, +1 while dispatching */
    fwd_part parts[];
};

static void fwd_in_answer(fwd_in *in)
{
    Ballastpb__ForwardResponse__Result *res = calloc(in->n ? in->n : 1, sizeof *res);
    Ballastpb__ForwardResponse__Result **ptrs = calloc(in->n ? in->n : 1, sizeof *ptrs);
    if (res && ptrs) {
        for (size_t i = 0; i < in->n; i++) {
            ballastpb__forward_response__result__init(&res[i]);
            res[i].code = (uint32_t)in->parts[i].code;
            if (in->parts[i].message)
                res[i].message = in->parts[i].message;
            res[i].response.data = in->parts[i].resp;
            res[i].response.len = in->parts[i].len;
            ptrs[i] = &res[i];
        }
        Ballastpb__ForwardResponse resp = BALLASTPB__FORWARD_RESPONSE__INIT;
        resp.n_results = in->n;
        resp.results = ptrs;
        ballast_reply_packed(in->call, &resp.base);
    } else {
        rpc_fail(in->call, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
    }
    free(res);
    free(ptrs);
    for (size_t i = 0; i < in->n; i++) {
        free(in->parts[i].message);
        free(in->parts[i].resp);
    }
    ballastpb__forward_request__free_unpacked(in->req, NULL);
    free(in);
}

static void fwd_part_done(void *arg, grpc_status_code code, const char *message, const uint8_t *resp,
                          size_t len)
{
    fwd_part *p = arg;
    p->code = code;
    if (code != GRPC_STATUS_OK) {
        p->message = strdup(message ? message : "");
        if (!p->message)
            p->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    } else if (len) {
        p->resp = malloc(len);
        if (p->resp) {
            memcpy(p->resp, resp, len);
            p->len = len;
        } else {
            p->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        }
    }
    if (__atomic_sub_fetch(&p->in->remaining, 1, __ATOMIC_ACQ_REL) == 0)
        fwd_in_answer(p->in);
}

void cluster_forwarded(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    (void)arg;
    Ballastpb__ForwardRequest *req = ballastpb__forward_request__unpack(NULL, len, data);
    if (!req) {
        rpc_fail(call, GRPC_STATUS_INTERNAL, BALLAST_ERR_MALFORMED);
        return;
    }
    fwd_in *in = calloc(1, sizeof *in + req->n_items * sizeof(fwd_part));
    if (!in) {
        ballastpb__forward_request__free_unpacked(req, NULL);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        return;
    }
    in->call = call;
    in->req = req;
    in->n = req->n_items;
    in->remaining = (int)req->n_items + 1;
    for (size_t i = 0; i < in->n; i++) {
        const Ballastpb__ForwardRequest__Item *it = req->items[i];
        fwd_part *p = &in->parts[i];
        p->in = in;
        if (rpc_call_dispatch(call, it->method, strlen(it->method), it->request.data,
                              it->request.len, fwd_part_done, p) != 0)
            fwd_part_done(p, GRPC_STATUS_UNIMPLEMENTED, "unknown method", NULL, 0);
    }
    if (__atomic_sub_fetch(&in->remaining, 1, __ATOMIC_ACQ_REL) == 0)
        fwd_in_answer(in);
}

static const char ERR_LEARNER[] = "etcdserver: rpc not supported for learner";

int cluster_stream_open(ballast_server *b, rpc_stream *st)
{
    raft_node_status ns;
    raft_node_get_status(b->node, &ns);
    if (ns.is_learner) {
        rpc_stream_finish(st, GRPC_STATUS_UNAVAILABLE, ERR_LEARNER);
        return 1;
    }
    if (!rpc_stream_has_metadata(st, "hasleader", "true"))
        return 0;
    if (ns.leader_id == 0) {
        rpc_stream_finish(st, GRPC_STATUS_UNAVAILABLE, ERR_NO_LEADER);
        return 1;
    }
    struct cluster_state *c = b->cluster;
    leader_stream *ls = malloc(sizeof *ls);
    if (!ls) {
        rpc_stream_finish(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        return 1;
    }
    rpc_stream_ref(st);
    ls->st = st;
    pthread_mutex_lock(&c->mu);
    ls->next = c->leader_streams;
    c->leader_streams = ls;
    pthread_mutex_unlock(&c->mu);
    return 0;
}

void cluster_stream_done(ballast_server *b, rpc_stream *st)
{
    struct cluster_state *c = b->cluster;
    leader_stream *found = NULL;
    pthread_mutex_lock(&c->mu);
    for (leader_stream **p = &c->leader_streams; *p; p = &(*p)->next) {
        if ((*p)->st == st) {
            found = *p;
            *p = found->next;
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    if (found) {
        rpc_stream_release(st);
        free(found);
    }
}

/* Ends the streams that require a leader once none has been known for 3
 * election timeouts (etcd is slower to end streams than to refuse calls). */
static void monitor_leader(ballast_server *b, const raft_node_status *st, uint64_t now)
{
    struct cluster_state *c = b->cluster;
    if (now < c->next_leader_check_ms)
        return;
    c->next_leader_check_ms = now + b->cfg->election_timeout_ms;
    c->no_leader_checks = st->leader_id ? 0 : c->no_leader_checks + 1;
    if (c->no_leader_checks < 3)
        return;
    pthread_mutex_lock(&c->mu);
    leader_stream *list = c->leader_streams;
    c->leader_streams = NULL;
    pthread_mutex_unlock(&c->mu);
    while (list) {
        leader_stream *ls = list;
        list = ls->next;
        rpc_stream_finish(ls->st, GRPC_STATUS_UNAVAILABLE, ERR_NO_LEADER);
        rpc_stream_release(ls->st);
        free(ls);
    }
}

int cluster_admit(rpc_call *call, const char *method, const uint8_t *req, size_t len, void *arg)
{
    ballast_server *b = arg;
    raft_node_status st;
    raft_node_get_status(b->node, &st);
    if (st.is_learner && strcmp(method, "/etcdserverpb.Maintenance/Status") != 0) {
        uint64_t serializable = 0;
        const uint8_t *sub;
        size_t sub_len;
        int range = strcmp(method, "/etcdserverpb.KV/Range") == 0;
        if (!range || !pb_find(req, len, 7, &serializable, &sub, &sub_len) || !serializable) {
            rpc_fail(call, GRPC_STATUS_UNAVAILABLE, ERR_LEARNER);
            return 1;
        }
    }
    /* clientv3.WithRequireLeader: fail at once while no leader is known */
    if (st.leader_id == 0 && rpc_call_has_metadata(call, "hasleader", "true")) {
        rpc_fail(call, GRPC_STATUS_UNAVAILABLE, ERR_NO_LEADER);
        return 1;
    }
    return 0;
}

/* ---- linearizable reads on a follower ---- */

static void read_index_done(void *arg, grpc_status_code code, const char *message, const uint8_t *resp,
                            size_t len)
{
    ballast_server *b = arg;
    if (code != GRPC_STATUS_OK) {
        raft_node_remote_read_done(b->node, -1, message, 0);
        return;
    }
    Ballastpb__ReadIndexResponse *r = ballastpb__read_index_response__unpack(NULL, len, resp);
    if (!r) {
        raft_node_remote_read_done(b->node, -1, "etcdserver: bad read index answer", 0);
        return;
    }
    raft_node_remote_read_done(b->node, 0, NULL, r->index);
    ballastpb__read_index_response__free_unpacked(r, NULL);
}

void cluster_remote_read(void *arg, uint64_t leader_id)
{
    ballast_server *b = arg;
    char target[300];
    if (cluster_leader_target(b, leader_id, target, sizeof target) != 0) {
        raft_node_remote_read_done(b->node, -1, "etcdserver: leader unknown", 0);
        return;
    }
    peer_client_call(b->peers, target, "/ballastpb.Internal/ReadIndex", NULL, 0,
                     cluster_request_timeout_ms(b), read_index_done, b);
}

/* ---- the cluster thread ---- */

static void publish_done_local(ballast_server *b, rpc_call *call, const mvcc_result *res,
                               const uint8_t *resp_base, void *extra)
{
    (void)call;
    (void)res;
    (void)resp_base;
    (void)extra;
    __atomic_store_n(&b->cluster->publish_in_flight, 0, __ATOMIC_RELEASE);
}

static void publish_done_remote(void *arg, grpc_status_code code, const char *message,
                                const uint8_t *resp, size_t len)
{
    (void)code;
    (void)message;
    (void)resp;
    (void)len;
    ballast_server *b = arg;
    __atomic_store_n(&b->cluster->publish_in_flight, 0, __ATOMIC_RELEASE);
}

static int same_urls(char **a, size_t na, const config_url_list *l)
{
    if (na != l->n)
        return 0;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i], l->items[i].text) != 0)
            return 0;
    return 1;
}

static void propose_member_op(ballast_server *b, const raft_node_status *st, Ballastpb__MemberOp *op)
{
    struct cluster_state *c = b->cluster;
    if (st->is_leader) {
        __atomic_store_n(&c->publish_in_flight, 1, __ATOMIC_RELEASE);
        ballast_propose_msg(b, NULL, BATCH_OP_MEMBER, &op->base, publish_done_local, NULL);
        return;
    }
    char target[300];
    if (!st->leader_id || cluster_leader_target(b, st->leader_id, target, sizeof target) != 0)
        return;
    size_t len = protobuf_c_message_get_packed_size(&op->base);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return;
    protobuf_c_message_pack(&op->base, buf);
    __atomic_store_n(&c->publish_in_flight, 1, __ATOMIC_RELEASE);
    peer_client_call(b->peers, target, "/ballastpb.Internal/PublishMember", buf, len,
                     cluster_request_timeout_ms(b), publish_done_remote, b);
    free(buf);
}

/* The first leader of a new cluster records the bootstrap member list (a
 * store from before member lists gets one the same way). */
static void maybe_bootstrap(ballast_server *b, const raft_node_status *st, size_t n_members, uint64_t now)
{
    struct cluster_state *c = b->cluster;
    if (!st->is_leader || n_members > 0 || now < c->next_bootstrap_ms ||
        __atomic_load_n(&c->publish_in_flight, __ATOMIC_ACQUIRE))
        return;
    c->next_bootstrap_ms = now + PUBLISH_RETRY_MS;
    const ballast_config *cfg = b->cfg;
    size_t n = cfg->n_initial_cluster;
    Ballastpb__Member *mem = calloc(n ? n : 1, sizeof *mem);
    Ballastpb__Member **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    char **urls = calloc(n ? n : 1, sizeof *urls);
    if (!mem || !ptrs || !urls) {
        free(mem);
        free(ptrs);
        free(urls);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        ballastpb__member__init(&mem[i]);
        mem[i].id = member_id_for_url(cfg->initial_cluster[i].url.text, cfg->initial_cluster_token);
        mem[i].name = cfg->initial_cluster[i].name;
        urls[i] = cfg->initial_cluster[i].url.text;
        mem[i].peer_urls = &urls[i];
        mem[i].n_peer_urls = 1;
        ptrs[i] = &mem[i];
    }
    Ballastpb__MemberOp op = BALLASTPB__MEMBER_OP__INIT;
    op.kind = BALLASTPB__MEMBER_OP__KIND__BOOTSTRAP;
    op.members = ptrs;
    op.n_members = n;
    op.cluster_id = b->cluster_id;
    propose_member_op(b, st, &op);
    free(mem);
    free(ptrs);
    free(urls);
}

static int published(ballast_server *b, Ballastpb__Member **members, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (members[i]->id == b->member_id)
            return strcmp(members[i]->name, b->cfg->name) == 0 &&
                   same_urls(members[i]->client_urls, members[i]->n_client_urls,
                             &b->cfg->advertise_client_urls);
    return 0;
}

int cluster_wait_published(ballast_server *b, unsigned timeout_ms)
{
    for (unsigned waited = 0; waited < timeout_ms; waited += 10) {
        Ballastpb__Member **members;
        size_t n;
        if (mvcc_members(b->store, &members, &n) == 0) {
            int done = published(b, members, n);
            mvcc_members_free(members, n);
            if (done)
                return 0;
        }
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return -1;
}

/* Publishes this member's name and client URLs when the record lacks them
 * (etcd publishes its attributes through raft the same way); notices a
 * removal. */
static void check_self(ballast_server *b, const raft_node_status *st, Ballastpb__Member **members,
                       size_t n_members, uint64_t now)
{
    struct cluster_state *c = b->cluster;
    const Ballastpb__Member *me = NULL;
    for (size_t i = 0; i < n_members; i++)
        if (members[i]->id == b->member_id)
            me = members[i];
    if (!me) {
        /* A removed member keeps running until the leader has taken it out
         * of c-raft's configuration: a removed leader first hands
         * leadership over (its raft node does that), and until the new
         * leader has appended its change, its configuration still counts
         * this member (with two voters, a new leader that hears from only
         * itself for an election timeout steps down). The leader stops
         * sending to a member it has taken out, so this member stops once
         * the leader it follows has been silent for three heartbeats, or,
         * following none, once another member has led since the removal;
         * at the latest after REMOVED_WAIT_MS. */
        if (c->seen_self && n_members > 0 && !c->removed) {
            if (!c->removed_at_ms)
                c->removed_at_ms = now;
            if (!st->is_leader && st->leader_id && st->leader_id != b->member_id)
                c->removed_saw_leader = 1;
            uint64_t silent_limit = 3 * (uint64_t)b->cfg->heartbeat_interval_ms;
            int let_go = !st->is_leader && c->removed_saw_leader &&
                         (st->leader_id == 0 || st->leader_silent_ms >= silent_limit);
            if (!let_go && now - c->removed_at_ms < REMOVED_WAIT_MS)
                return;
            c->removed = 1;
            fprintf(stderr, "ballast info: the member has been permanently removed from the cluster; stopping\n");
            kill(getpid(), SIGTERM);
        }
        return;
    }
    c->seen_self = 1;
    const ballast_config *cfg = b->cfg;
    if (published(b, members, n_members))
        return;
    if (now < c->next_publish_ms || __atomic_load_n(&c->publish_in_flight, __ATOMIC_ACQUIRE))
        return;
    c->next_publish_ms = now + PUBLISH_RETRY_MS;
    char **urls = calloc(cfg->advertise_client_urls.n ? cfg->advertise_client_urls.n : 1, sizeof *urls);
    if (!urls)
        return;
    for (size_t i = 0; i < cfg->advertise_client_urls.n; i++)
        urls[i] = cfg->advertise_client_urls.items[i].text;
    Ballastpb__Member m = BALLASTPB__MEMBER__INIT;
    m.id = b->member_id;
    m.name = cfg->name;
    m.client_urls = urls;
    m.n_client_urls = cfg->advertise_client_urls.n;
    Ballastpb__Member *ptr = &m;
    Ballastpb__MemberOp op = BALLASTPB__MEMBER_OP__INIT;
    op.kind = BALLASTPB__MEMBER_OP__KIND__ATTRS;
    op.members = &ptr;
    op.n_members = 1;
    propose_member_op(b, st, &op);
    free(urls);
}

/* Runs parked calls again once a leader is known; fails those out of time. */
static void retry_parked(ballast_server *b, const raft_node_status *st)
{
    struct cluster_state *c = b->cluster;
    char target[300];
    int leader_known = st->is_leader || (st->leader_id && st->leader_id != b->member_id &&
                                         cluster_leader_target(b, st->leader_id, target, sizeof target) == 0);
    unsigned timeout = cluster_request_timeout_ms(b);
    pthread_mutex_lock(&c->mu);
    parked *list = c->parked, *keep = NULL;
    c->parked = NULL;
    pthread_mutex_unlock(&c->mu);
    while (list) {
        parked *p = list;
        list = p->next;
        if (leader_known) {
            p->handler(p->call, p->data, p->len, b);
            free(p);
        } else if (rpc_call_age_ms(p->call) >= timeout) {
            rpc_fail(p->call, GRPC_STATUS_UNAVAILABLE, ERR_TIMEOUT);
            free(p);
        } else {
            p->next = keep;
            keep = p;
        }
    }
    if (keep) {
        pthread_mutex_lock(&c->mu);
        parked **tail = &keep;
        while (*tail)
            tail = &(*tail)->next;
        *tail = c->parked;
        c->parked = keep;
        pthread_mutex_unlock(&c->mu);
    }
}

static void *cluster_main(void *arg)
{
    pthread_setname_np(pthread_self(), "cluster");
    ballast_server *b = arg;
    struct cluster_state *c = b->cluster;
    for (;;) {
        struct timespec ts = {0, TICK_MS * 1000000L};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&c->mu);
        int stopping = c->stopping;
        pthread_mutex_unlock(&c->mu);
        if (stopping)
            return NULL;
        raft_node_status st;
        raft_node_get_status(b->node, &st);
        uint64_t now = now_ms();
        retry_parked(b, &st);
        monitor_leader(b, &st, now);
        Ballastpb__Member **members;
        size_t n_members;
        if (mvcc_members(b->store, &members, &n_members) == 0) {
            maybe_bootstrap(b, &st, n_members, now);
            check_self(b, &st, members, n_members, now);
            mvcc_members_free(members, n_members);
        }
        pthread_mutex_lock(&c->mu);
        /* an answer whose revision this member cannot reach in time (it is
         * stuck) is given anyway: the write is committed */
        fwd_wait *late = NULL;
        if (c->waiters && rpc_call_age_ms(c->waiters->call) >= cluster_request_timeout_ms(b))
            late = take_waiters_locked(b, 1);
        pthread_mutex_unlock(&c->mu);
        deliver_all(b, late);
    }
}

int cluster_init(ballast_server *b, char **errmsg)
{
    struct cluster_state *c = calloc(1, sizeof *c);
    if (!c) {
        *errmsg = strdup("out of memory");
        return -1;
    }
    pthread_mutex_init(&c->mu, NULL);
    b->cluster = c;
    b->peers = peer_client_new();
    if (!b->peers) {
        *errmsg = strdup("cannot start the peer client");
        return -1;
    }
    return 0;
}

int cluster_start(ballast_server *b, char **errmsg)
{
    struct cluster_state *c = b->cluster;
    if (pthread_create(&c->thread, NULL, cluster_main, b) != 0) {
        *errmsg = strdup("cannot start the cluster thread");
        return -1;
    }
    c->thread_started = 1;
    return 0;
}

void cluster_stop_calls(ballast_server *b)
{
    struct cluster_state *c = b->cluster;
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->stopping = 1;
    parked *list = c->parked;
    c->parked = NULL;
    pthread_mutex_unlock(&c->mu);
    if (c->thread_started)
        pthread_join(c->thread, NULL);
    c->thread_started = 0;
    while (list) {
        parked *p = list;
        list = p->next;
        rpc_fail(p->call, GRPC_STATUS_UNAVAILABLE, "etcdserver: server stopped");
        free(p);
    }
    pthread_mutex_lock(&c->mu);
    leader_stream *streams = c->leader_streams;
    c->leader_streams = NULL;
    pthread_mutex_unlock(&c->mu);
    while (streams) {
        leader_stream *ls = streams;
        streams = ls->next;
        rpc_stream_release(ls->st);
        free(ls);
    }
    peer_client_shutdown(b->peers);
}

void cluster_free(ballast_server *b)
{
    struct cluster_state *c = b->cluster;
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    fwd_wait *w = take_waiters_locked(b, 1);
    pthread_mutex_unlock(&c->mu);
    while (w) {
        fwd_wait *next = w->next;
        rpc_fail(w->call, GRPC_STATUS_UNAVAILABLE, "etcdserver: server stopped");
        free(w);
        w = next;
    }
    peer_client_free(b->peers);
    b->peers = NULL;
    mvcc_members_free(c->members, c->n_members);
    pthread_mutex_destroy(&c->mu);
    free(c);
    b->cluster = NULL;
}

/* ---- catching up from another member's store ---- */

typedef struct fetch_state {
    mvcc_load *load;
    char *error;
    uint64_t bytes;
} fetch_state;

static int fetch_message(void *arg, const uint8_t *msg, size_t len)
{
    fetch_state *f = arg;
    Etcdserverpb__SnapshotResponse *r = etcdserverpb__snapshot_response__unpack(NULL, len, msg);
    if (!r) {
        f->error = strdup("undecodable snapshot message");
        return 1;
    }
    int rv = mvcc_load_feed(f->load, r->blob.data, r->blob.len, &f->error);
    f->bytes += r->blob.len;
    etcdserverpb__snapshot_response__free_unpacked(r, NULL);
    return rv != 0;
}

/* Streams `target`'s Maintenance.Snapshot into the store. 0 on success. */
static int fetch_from(ballast_server *b, const char *target)
{
    fetch_state f = {0};
    f.load = mvcc_load_begin(b->store, &f.error);
    if (!f.load) {
        fprintf(stderr, "ballast error: cannot start loading a snapshot: %s\n", f.error ? f.error : "?");
        free(f.error);
        return -1;
    }
    char *message = NULL;
    /* generous: a large store takes a while to stream */
    grpc_status_code code = peer_client_read_stream(b->peers, target, "/etcdserverpb.Maintenance/Snapshot",
                                                    NULL, 0, 3600u * 1000u, fetch_message, &f, &message);
    int rv = -1;
    if (code == GRPC_STATUS_OK && !f.error) {
        rv = mvcc_load_end(f.load, &f.error);
    } else {
        mvcc_load_abort(f.load);
    }
    if (rv != 0)
        fprintf(stderr, "ballast warn: fetching the store from %s failed: %s\n", target,
                f.error ? f.error : message ? message : "stream failed");
    else
        fprintf(stderr, "ballast info: received %llu bytes of store from %s\n",
                (unsigned long long)f.bytes, target);
    free(message);
    free(f.error);
    return rv;
}

int cluster_fetch_store(void *arg, uint64_t leader_id, uint64_t index, const char *const *urls,
                        size_t n_urls)
{
    ballast_server *b = arg;
    struct cluster_state *c = b->cluster;
    /* the leader first, then any other member that has published its URLs */
    char targets[16][300];
    size_t n = 0;
    if (leader_id && cluster_leader_target(b, leader_id, targets[0], sizeof targets[0]) == 0)
        n++;
    pthread_mutex_lock(&c->mu);
    members_refresh_locked(b);
    for (size_t i = 0; i < c->n_members && n < 16; i++)
        if (c->members[i]->id != b->member_id && c->members[i]->id != leader_id &&
            c->members[i]->n_client_urls > 0 &&
            url_target(c->members[i]->client_urls[0], targets[n], sizeof targets[n]) == 0)
            n++;
    pthread_mutex_unlock(&c->mu);
    /* the snapshot's author's view, for a member that knows nobody yet */
    for (size_t i = 0; i < n_urls && n < 16; i++) {
        char t[300];
        if (url_target(urls[i], t, sizeof t) != 0)
            continue;
        int known = 0;
        for (size_t j = 0; j < n; j++)
            known |= strcmp(targets[j], t) == 0;
        for (size_t j = 0; j < b->cfg->advertise_client_urls.n; j++) {
            char mine[300];
            if (url_target(b->cfg->advertise_client_urls.items[j].text, mine, sizeof mine) == 0)
                known |= strcmp(mine, t) == 0;
        }
        if (!known) {
            snprintf(targets[n], sizeof targets[n], "%s", t);
            n++;
        }
    }
    int64_t old_rev = mvcc_current_revision(b->store);
    for (int attempt = 0; attempt < 3; attempt++) {
        for (size_t i = 0; i < n; i++) {
            if (fetch_from(b, targets[i]) != 0 || mvcc_applied_index(b->store) < index)
                continue;
            if (lease_service_reload(b) != 0)
                return -1;
            watch_hub_store_replaced(b->watch, old_rev + 1, mvcc_current_revision(b->store));
            return 0;
        }
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
    }
    if (n == 0)
        fprintf(stderr, "ballast error: no member known to fetch the store from\n");
    return -1;
}
