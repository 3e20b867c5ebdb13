/* Helpers for the watch hub tests: a fake stream that decodes every
 * WatchResponse the hub sends, with a controllable backlog, and request
 * builders. */
#ifndef BALLAST_TEST_WATCH_H
#define BALLAST_TEST_WATCH_H

#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#include "storage_test.h"
#include "watch.h"

typedef struct fake {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    Etcdserverpb__WatchResponse **m;
    size_t n, cap, rd;
    bool count_only;   /* keep no messages, only count them */
    size_t count, events;
    size_t backlog;    /* what backlog() reports */
    bool stall;        /* every send adds its size to the backlog */
    bool gate;         /* send blocks while set */
    bool in_gate;
    bool released;
    int64_t last_rev;  /* count_only: highest event mod_revision seen */
    bool order_ok;     /* count_only: revisions strictly increase */
    watch_stream *s;
} fake;

static inline int fake_send(void *ctx, const uint8_t *msg, size_t len)
{
    fake *f = ctx;
    pthread_mutex_lock(&f->mu);
    while (f->gate) {
        f->in_gate = true;
        pthread_cond_broadcast(&f->cv);
        pthread_cond_wait(&f->cv, &f->mu);
    }
    f->in_gate = false;
    if (f->stall)
        f->backlog += len;
    f->count++;
    if (f->count_only) {
        Etcdserverpb__WatchResponse *r = etcdserverpb__watch_response__unpack(NULL, len, msg);
        CHECK(r != NULL);
        f->events += r->n_events;
        for (size_t i = 0; i < r->n_events; i++) {
            if (r->events[i]->kv->mod_revision <= f->last_rev)
                f->order_ok = false;
            f->last_rev = r->events[i]->kv->mod_revision;
        }
        etcdserverpb__watch_response__free_unpacked(r, NULL);
    } else {
        Etcdserverpb__WatchResponse *r = etcdserverpb__watch_response__unpack(NULL, len, msg);
        if (!r) {
            fprintf(stderr, "undecodable WatchResponse (%zu bytes):", len);
            for (size_t i = 0; i < len && i < 64; i++)
                fprintf(stderr, " %02x", msg[i]);
            fprintf(stderr, "\n");
        }
        CHECK(r != NULL);
        if (f->n == f->cap) {
            f->cap = f->cap ? 2 * f->cap : 64;
            f->m = realloc(f->m, f->cap * sizeof(*f->m));
            CHECK(f->m != NULL);
        }
        f->m[f->n++] = r;
        f->events += r->n_events;
    }
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return 0;
}

static inline size_t fake_backlog(void *ctx)
{
    fake *f = ctx;
    pthread_mutex_lock(&f->mu);
    size_t b = f->backlog;
    pthread_mutex_unlock(&f->mu);
    return b;
}

static inline void fake_released(void *ctx)
{
    fake *f = ctx;
    pthread_mutex_lock(&f->mu);
    f->released = true;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static const watch_stream_ops fake_ops = {fake_send, fake_backlog, fake_released};

static inline void fake_init(fake *f, watch_hub *h)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    f->order_ok = true;
    f->s = watch_stream_open(h, &fake_ops, f);
    CHECK(f->s != NULL);
}

static inline void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    long ns = ts->tv_nsec + (long)(ms % 1000) * 1000000L;
    ts->tv_sec += ms / 1000 + ns / 1000000000L;
    ts->tv_nsec = ns % 1000000000L;
}

/* The next message not yet looked at, or NULL after `ms`. */
static inline Etcdserverpb__WatchResponse *fake_next(fake *f, int ms)
{
    struct timespec ts;
    deadline_in(&ts, ms);
    pthread_mutex_lock(&f->mu);
    while (f->rd == f->n) {
        if (pthread_cond_timedwait(&f->cv, &f->mu, &ts) != 0 && f->rd == f->n) {
            pthread_mutex_unlock(&f->mu);
            return NULL;
        }
    }
    Etcdserverpb__WatchResponse *r = f->m[f->rd++];
    pthread_mutex_unlock(&f->mu);
    return r;
}

static inline Etcdserverpb__WatchResponse *fake_must(fake *f)
{
    Etcdserverpb__WatchResponse *r = fake_next(f, 5000);
    CHECK(r != NULL);
    return r;
}

/* Waits until `events` events arrived (count_only or not). */
static inline bool fake_wait_events(fake *f, size_t events, int ms)
{
    struct timespec ts;
    deadline_in(&ts, ms);
    pthread_mutex_lock(&f->mu);
    while (f->events < events)
        if (pthread_cond_timedwait(&f->cv, &f->mu, &ts) != 0 && f->events < events)
            break;
    bool ok = f->events >= events;
    pthread_mutex_unlock(&f->mu);
    return ok;
}

static inline void fake_close(fake *f)
{
    watch_stream_close(f->s);
    struct timespec ts;
    deadline_in(&ts, 5000);
    pthread_mutex_lock(&f->mu);
    while (!f->released)
        if (pthread_cond_timedwait(&f->cv, &f->mu, &ts) != 0)
            break;
    CHECK(f->released);
    pthread_mutex_unlock(&f->mu);
    for (size_t i = 0; i < f->n; i++)
        etcdserverpb__watch_response__free_unpacked(f->m[i], NULL);
    free(f->m);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
}

typedef struct wopts {
    const char *end;    /* NULL: single key; "": "\0" */
    int64_t start;
    int64_t id;
    bool prev_kv, progress, fragment, noput, nodelete;
} wopts;

static inline void w_create(fake *f, const char *key, wopts o)
{
    Etcdserverpb__WatchCreateRequest c = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    c.key = bin(key);
    if (o.end)
        c.range_end = binn(o.end, o.end[0] ? strlen(o.end) : 1);
    c.start_revision = o.start;
    c.watch_id = o.id;
    c.prev_kv = o.prev_kv;
    c.progress_notify = o.progress;
    c.fragment = o.fragment;
    Etcdserverpb__WatchCreateRequest__FilterType ft[2];
    size_t nf = 0;
    if (o.noput)
        ft[nf++] = ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NOPUT;
    if (o.nodelete)
        ft[nf++] = ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NODELETE;
    c.n_filters = nf;
    c.filters = ft;
    Etcdserverpb__WatchRequest r = ETCDSERVERPB__WATCH_REQUEST__INIT;
    r.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    r.create_request = &c;
    watch_stream_request(f->s, &r);
}

static inline void w_cancel(fake *f, int64_t id)
{
    Etcdserverpb__WatchCancelRequest c = ETCDSERVERPB__WATCH_CANCEL_REQUEST__INIT;
    c.watch_id = id;
    Etcdserverpb__WatchRequest r = ETCDSERVERPB__WATCH_REQUEST__INIT;
    r.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST;
    r.cancel_request = &c;
    watch_stream_request(f->s, &r);
}

static inline void w_progress(fake *f)
{
    Etcdserverpb__WatchProgressRequest p = ETCDSERVERPB__WATCH_PROGRESS_REQUEST__INIT;
    Etcdserverpb__WatchRequest r = ETCDSERVERPB__WATCH_REQUEST__INIT;
    r.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_PROGRESS_REQUEST;
    r.progress_request = &p;
    watch_stream_request(f->s, &r);
}

static inline void hdr_fn(void *arg, mvcc_header *out)
{
    (void)arg;
    out->cluster_id = 11;
    out->member_id = 22;
    out->raft_term = 3;
}

/* A hub on t's store with the test header and the limits of c. */
static inline watch_hub *hub_start_with(tstore *t, watch_hub_config c)
{
    c.store = t->m;
    c.header = hdr_fn;
    char *err = NULL;
    watch_hub *h = watch_hub_start(&c, &err);
    CHECK(h != NULL);
    return h;
}

static inline watch_hub *hub_start(tstore *t, uint64_t max_req, size_t backlog_limit,
                                   uint64_t progress_ms, size_t queue_limit)
{
    return hub_start_with(t, (watch_hub_config){
                                 .max_request_bytes = max_req,
                                 .stream_backlog_limit = backlog_limit,
                                 .progress_interval_ms = progress_ms,
                                 .event_queue_limit = queue_limit,
                             });
}

static inline int ev_is(const Mvccpb__Event *e, int type, const char *k, const char *v,
                        int64_t mod)
{
    return (int)e->type == type && e->kv && kv_is(e->kv, k, v) && e->kv->mod_revision == mod;
}

#endif
