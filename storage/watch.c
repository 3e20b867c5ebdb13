/*
 * The watch hub: etcd 3.4's watch protocol (etcdserver/api/v3rpc/watch.go,
 * mvcc/watchable_store.go) on one thread of its own.
 *
 * Input: one locked FIFO. Apply's event hook appends a copy of each entry's
 * events; gRPC threads append opened streams, requests and closes. The FIFO
 * keeps their order, so a watch created after a put was answered sees that
 * put as history and not as a new event. Queued event bytes are bounded:
 * past the limit, every queued event is dropped and replaced by a marker
 * "revisions [from, to] dropped"; the hub then moves every synced watcher
 * to the unsynced group from `from`, and they catch up from storage.
 *
 * `dispatched` is the last revision the hub has handed out: every synced
 * watcher has been sent every matching event up to it. It is the revision
 * the hub reports as "current" (created, canceled, progress headers), so a
 * client never sees a header revision whose events it has not been sent.
 *
 * Synced watchers get each revision's events as one response as soon as it
 * is dequeued. Unsynced ones (created in the past, on a stream whose
 * backlog is over the limit, or after a drop) are fed by the sync step,
 * which runs every 100 ms like etcd's syncWatchersLoop, or at once when
 * there is work: it reads the store's history in bounded chunks from the
 * oldest revision any of them needs up to `dispatched`, sends each watcher
 * one response per chunk, and moves those that reached `dispatched` back
 * to synced. A stream over its backlog limit is sent no events at all; its
 * watchers wait, unsynced, until the backlog has drained. A step builds at
 * most sync_stream_bytes of events for one stream's watchers (whole
 * revisions; the rest wait for the next step, 10 ms later) and sends all
 * of it, so a stream's backlog stays under the limit plus one step.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mvcc_internal.h"
#include "watch_internal.h"

#define DEFAULT_QUEUE_LIMIT (64u << 20)
#define DEFAULT_MAX_REQUEST (3u << 19) /* 1.5 MiB */
#define GRPC_OVERHEAD (512u << 10)
#define DEFAULT_PROGRESS_MS (10u * 60 * 1000)
#define SYNC_INTERVAL_MS 100
/* The next sync step after one that stopped short of what its watchers
 * need: soon, like etcd's 10 ms retry of its blocked ("victim") watchers. */
#define SYNC_RETRY_MS 10
#define SYNC_MAX_EVENTS 4096
#define SYNC_MAX_BYTES (4u << 20)
/* Event bytes one sync step builds for one stream's watchers (the default
 * of sync_stream_bytes) and, times SYNC_STREAMS_HELD, for all of them. */
#define DEFAULT_SYNC_STREAM_BYTES SYNC_MAX_BYTES
#define SYNC_STREAMS_HELD 4

#define ERR_RANGE_EMPTY "mvcc: watcher range is empty"
#define ERR_DUP_ID "mvcc: duplicate watch ID provided on the WatchStream"

enum { IT_EVENTS, IT_DROPPED, IT_OPEN, IT_CREATE, IT_CANCEL, IT_PROGRESS, IT_CLOSE };

typedef struct create_req {
    uint8_t *key;
    size_t key_len;
    uint8_t *end;
    size_t end_len;
    int64_t start_rev;
    int64_t watch_id;
    bool prev_kv, progress_notify, fragment, no_put, no_delete;
} create_req;

typedef struct item {
    struct item *next;
    int kind;
    watch_stream *s;
    size_t bytes;               /* counted against the queue limit */
    int64_t first_rev, last_rev; /* events, dropped */
    size_t n;
    mvcc_event *evs;
    create_req cr;
    int64_t id;                 /* cancel */
} item;

struct watch_stream {
    watch_hub *h;
    const watch_stream_ops *ops;
    void *ctx;
    watch_stream *prev, *next;  /* the hub's list */
    watcher **tab;              /* id -> watcher, chained */
    size_t tab_cap, nwatchers;
    int64_t next_id;
    bool dead;                  /* send failed: nothing more is sent */
    struct item *close_item;    /* made at open, so that close cannot fail */
    uint64_t tick_ms, next_tick;
    size_t scan_held;           /* event bytes built for its watchers by a sync step */
};

struct watch_hub {
    watch_hub_config cfg;
    uint64_t frag_limit;
    size_t queue_limit;
    uint64_t progress_ms;
    size_t sync_stream_bytes;

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    item *qhead, *qtail;
    size_t q_bytes, q_events;
    bool stop;
    item *spare;                /* a drop marker for when malloc fails */
    uint64_t creates_queued;    /* create requests not yet counted in stats */
    watch_hub_stats stats;      /* published under mu */

    /* Hub thread only. */
    int64_t dispatched;
    wgroup synced, unsynced;
    watch_stream *streams;
    size_t nstreams;
    mvcc_buf out;
    watcher **touched;
    size_t ntouched, touched_cap;
    bool sync_now;
    uint64_t next_sync, next_tick_check;
    uint64_t events_total;
    mvcc_history *hist;         /* during a sync step */
    size_t scan_held;           /* event bytes built by this sync step */
    bool scan_stopped;          /* some watcher stopped short of the end */
    bool sync_soon;             /* the next sync step in SYNC_RETRY_MS */
    uint64_t sync_held_max;
    mvcc_buf prev;
    int64_t prev_rev;           /* prev holds the prev_kv of this event, if >= 0 */
    const mvcc_event *prev_ev;
    int prev_found;
    uint64_t rng;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- responses ---- */

static int resp_begin(watch_hub *h, mvcc_buf *b, int64_t rev, int64_t watch_id)
{
    mvcc_header mh = {0};
    if (h->cfg.header)
        h->cfg.header(h->cfg.header_arg, &mh);
    b->len = 0;
    if (pb_header(b, 1, &mh, rev))
        return -1;
    return pb_uint_field(b, 2, (uint64_t)watch_id);
}

static void stream_send(watch_stream *s, const mvcc_buf *b)
{
    if (s->dead)
        return;
    if (s->ops->send(s->ctx, b->data, b->len) != 0)
        s->dead = true;
}

static bool stream_blocked(watch_hub *h, watch_stream *s)
{
    return s->dead || s->ops->backlog(s->ctx) > h->cfg.stream_backlog_limit;
}

/* A control response: created / canceled / progress / compaction. */
static void send_ctrl(watch_hub *h, watch_stream *s, int64_t rev, int64_t id, bool created,
                      bool canceled, int64_t compact_rev, const char *reason)
{
    mvcc_buf *b = &h->out;
    if (resp_begin(h, b, rev, id) || pb_bool_field(b, 3, created) ||
        pb_bool_field(b, 4, canceled) || pb_uint_field(b, 5, (uint64_t)compact_rev) ||
        (reason && pb_bytes_field(b, 6, reason, strlen(reason))))
        return;
    stream_send(s, b);
}

/* Size of the Event field starting at p (tag, length, content). */
static size_t event_field_size(const uint8_t *p)
{
    size_t pos = 1, len = 0;
    for (int shift = 0;; shift += 7) {
        uint8_t c = p[pos++];
        len |= (size_t)(c & 0x7f) << shift;
        if (!(c & 0x80))
            break;
    }
    return pos + len;
}

/* Sends w's pending events as one response, or as fragments like etcd's
 * sendFragments when the watcher asked for them and the response is too
 * big: each fragment takes events while it stays under the limit (at
 * least one), every fragment but the last has fragment=true. */
static int send_events(watch_hub *h, watcher *w, int64_t rev)
{
    watch_stream *s = w->s;
    mvcc_buf *b = &h->out;
    if (w->pend_failed || resp_begin(h, b, rev, w->id))
        return -1;
    size_t base = b->len;
    if (!w->fragment || base + w->pend.len < h->frag_limit || w->pend_n < 2) {
        if (buf_put(b, w->pend.data, w->pend.len))
            return -1;
        stream_send(s, b);
    } else {
        size_t pos = 0;
        while (pos < w->pend.len) {
            b->len = base;
            size_t size = base + 2, count = 0, start = pos;
            while (pos < w->pend.len) {
                size_t sz = event_field_size(w->pend.data + pos);
                if (count >= 1 && size + sz >= h->frag_limit)
                    break;
                size += sz;
                pos += sz;
                count++;
            }
            bool last = pos == w->pend.len;
            if (pb_bool_field(b, 7, !last) || buf_put(b, w->pend.data + start, pos - start))
                return -1;
            stream_send(s, b);
        }
    }
    h->events_total += w->pend_n;
    w->progress_due = false;
    return 0;
}

static int pend_event(watcher *w, const mvcc_event *ev, const uint8_t *prev, size_t prev_len)
{
    mvcc_buf *p = &w->pend;
    size_t mark = pb_msg_begin(p, 11);
    if (mark == (size_t)-1 || pb_uint_field(p, 1, (uint64_t)ev->type))
        return -1;
    /* kv is always present, even if it were empty */
    if (pb_tag(p, 2, 2) || pb_varint(p, ev->kv_len) || buf_put(p, ev->kv, ev->kv_len))
        return -1;
    if (prev && (pb_tag(p, 3, 2) || pb_varint(p, prev_len) || buf_put(p, prev, prev_len)))
        return -1;
    if (pb_msg_end(p, mark))
        return -1;
    w->pend_n++;
    return 0;
}

static void pend_add(watcher *w, const mvcc_event *ev, const uint8_t *prev, size_t prev_len)
{
    if (!w->pend_failed && pend_event(w, ev, prev, prev_len))
        w->pend_failed = true;
}

static void pend_reset(watcher *w)
{
    if (w->pend.cap > (1u << 20)) {
        free(w->pend.data);
        w->pend = (mvcc_buf){0};
    }
    w->pend.len = 0;
    w->pend_n = 0;
    w->pend_failed = false;
}

static bool filtered(const watcher *w, const mvcc_event *ev)
{
    return (ev->type == MVCC_EVENT_PUT && w->no_put) ||
           (ev->type == MVCC_EVENT_DELETE && w->no_delete);
}

/* Room to touch every watcher of a group, taken before matching so that
 * matching itself cannot fail. */
static int touch_reserve(watch_hub *h, size_t n)
{
    if (h->touched_cap >= n)
        return 0;
    size_t cap = h->touched_cap ? h->touched_cap : 64;
    while (cap < n)
        cap *= 2;
    watcher **t = realloc(h->touched, cap * sizeof(*t));
    if (!t)
        return -1;
    h->touched = t;
    h->touched_cap = cap;
    return 0;
}

static void touch(watch_hub *h, watcher *w)
{
    if (w->touched)
        return;
    h->touched[h->ntouched++] = w;
    w->touched = true;
}

/* ---- watcher lifecycle ---- */

static void group_move(watch_hub *h, watcher *w, int state)
{
    if (w->state == state)
        return;
    wgroup *from = w->state == W_SYNCED ? &h->synced : w->state == W_UNSYNCED ? &h->unsynced : NULL;
    wgroup *to = state == W_SYNCED ? &h->synced : state == W_UNSYNCED ? &h->unsynced : NULL;
    if (from)
        wgroup_remove(from, w);
    w->state = state;
    if (to && wgroup_add(to, w)) {
        /* Out of memory: the watcher cannot be matched any more; end it
         * the way etcd ends a watcher it cannot serve. */
        w->state = W_COMPACTED;
    }
    if (state == W_UNSYNCED)
        h->sync_now = true;
}

static size_t id_slot(const watch_stream *s, int64_t id)
{
    uint64_t x = (uint64_t)id * 0x9E3779B97F4A7C15ull;
    return (size_t)(x >> 32) & (s->tab_cap - 1);
}

static watcher *id_find(watch_stream *s, int64_t id)
{
    if (!s->tab_cap)
        return NULL;
    for (watcher *w = s->tab[id_slot(s, id)]; w; w = w->id_next)
        if (w->id == id)
            return w;
    return NULL;
}

static int id_insert(watch_stream *s, watcher *w)
{
    if (s->nwatchers >= s->tab_cap) {
        size_t cap = s->tab_cap ? 2 * s->tab_cap : 8;
        watcher **t = calloc(cap, sizeof(*t));
        if (!t)
            return -1;
        size_t old = s->tab_cap;
        watcher **ot = s->tab;
        s->tab = t;
        s->tab_cap = cap;
        for (size_t i = 0; i < old; i++) {
            watcher *x = ot[i];
            while (x) {
                watcher *next = x->id_next;
                size_t k = id_slot(s, x->id);
                x->id_next = t[k];
                t[k] = x;
                x = next;
            }
        }
        free(ot);
    }
    size_t k = id_slot(s, w->id);
    w->id_next = s->tab[k];
    s->tab[k] = w;
    s->nwatchers++;
    return 0;
}

static void id_remove(watch_stream *s, watcher *w)
{
    watcher **pp = &s->tab[id_slot(s, w->id)];
    while (*pp != w)
        pp = &(*pp)->id_next;
    *pp = w->id_next;
    s->nwatchers--;
}

static void watcher_free(watch_hub *h, watcher *w)
{
    if (w->state == W_SYNCED)
        wgroup_remove(&h->synced, w);
    else if (w->state == W_UNSYNCED)
        wgroup_remove(&h->unsynced, w);
    free(w->key);
    free(w->end);
    free(w->pend.data);
    free(w);
}

/* ---- requests ---- */

static int bytes_cmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    size_t n = an < bn ? an : bn;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c < 0 ? -1 : 1;
    return an < bn ? -1 : an > bn;
}

static void do_create(watch_hub *h, watch_stream *s, create_req *r)
{
    int64_t rev = h->dispatched;
    static const uint8_t zero = 0;
    const uint8_t *key = r->key_len ? r->key : &zero;
    size_t key_len = r->key_len ? r->key_len : 1;
    /* etcd: no range_end = the key alone, "\0" = every key >= key */
    bool is_range = r->end_len > 0;
    size_t end_len = (r->end_len == 1 && r->end[0] == 0) ? 0 : r->end_len;
    if (is_range && end_len && bytes_cmp(key, key_len, r->end, end_len) >= 0) {
        send_ctrl(h, s, rev, -1, true, true, 0, ERR_RANGE_EMPTY);
        return;
    }
    int64_t id = r->watch_id;
    if (id == 0) {
        while (id_find(s, s->next_id))
            s->next_id++;
        id = s->next_id++;
    } else if (id_find(s, id)) {
        send_ctrl(h, s, rev, -1, true, true, 0, ERR_DUP_ID);
        return;
    }
    watcher *w = calloc(1, sizeof(*w));
    if (!w)
        return;
    w->s = s;
    w->id = id;
    w->key = malloc(key_len);
    w->end = malloc(end_len ? end_len : 1);
    if (!w->key || !w->end || id_insert(s, w)) {
        free(w->key);
        free(w->end);
        free(w);
        return;
    }
    memcpy(w->key, key, key_len);
    w->key_len = key_len;
    if (end_len)
        memcpy(w->end, r->end, end_len);
    w->end_len = end_len;
    w->is_range = is_range;
    w->prev_kv = r->prev_kv;
    w->progress_notify = r->progress_notify;
    w->progress_due = r->progress_notify;
    w->fragment = r->fragment;
    w->no_put = r->no_put;
    w->no_delete = r->no_delete;
    w->state = W_COMPACTED; /* in no group yet */
    send_ctrl(h, s, rev, id, true, false, 0, NULL);
    int64_t start = r->start_rev;
    if (start == 0 || start > rev) {
        w->next = start > rev + 1 ? start : rev + 1;
        group_move(h, w, W_SYNCED);
    } else {
        w->next = start;
        group_move(h, w, W_UNSYNCED);
    }
}

static void do_cancel(watch_hub *h, watch_stream *s, int64_t id)
{
    watcher *w = id_find(s, id);
    if (!w)
        return;
    id_remove(s, w);
    watcher_free(h, w);
    send_ctrl(h, s, h->dispatched, id, false, true, 0, NULL);
}

static void stream_free_watchers(watch_hub *h, watch_stream *s)
{
    for (size_t i = 0; i < s->tab_cap; i++) {
        watcher *w = s->tab[i];
        while (w) {
            watcher *next = w->id_next;
            watcher_free(h, w);
            w = next;
        }
    }
    free(s->tab);
    s->tab = NULL;
    s->tab_cap = s->nwatchers = 0;
}

static void do_close(watch_hub *h, watch_stream *s)
{
    stream_free_watchers(h, s);
    if (s->prev)
        s->prev->next = s->next;
    else
        h->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    h->nstreams--;
    s->ops->released(s->ctx);
    /* once queued, the close item is freed by whoever dequeues it */
    if (s->close_item->kind != IT_CLOSE)
        free(s->close_item);
    free(s);
}

static void do_open(watch_hub *h, watch_stream *s)
{
    s->next = h->streams;
    if (h->streams)
        h->streams->prev = s;
    h->streams = s;
    h->nstreams++;
    /* etcd adds up to a tenth of the interval as jitter, once per stream */
    h->rng = h->rng * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t jitter = h->progress_ms / 10 ? (h->rng >> 33) % (h->progress_ms / 10) : 0;
    s->tick_ms = h->progress_ms + jitter;
    s->next_tick = now_ms() + s->tick_ms;
}

/* etcd's progress ticker: a watcher that asked for progress_notify and was
 * sent no events since the last tick gets an empty response, if synced. */
static void progress_tick(watch_hub *h, watch_stream *s)
{
    for (size_t i = 0; i < s->tab_cap; i++)
        for (watcher *w = s->tab[i]; w; w = w->id_next) {
            if (!w->progress_notify)
                continue;
            if (w->progress_due && w->state == W_SYNCED)
                send_ctrl(h, s, h->dispatched, w->id, false, false, 0, NULL);
            w->progress_due = true;
        }
}

/* ---- synced dispatch ---- */

typedef struct match_ctx {
    watch_hub *h;
    const mvcc_event *ev;
} match_ctx;

static void match_synced(void *arg, watcher *w)
{
    match_ctx *m = arg;
    const mvcc_event *ev = m->ev;
    if (ev->rev < w->next || filtered(w, ev))
        return;
    touch(m->h, w);
    pend_add(w, ev, w->prev_kv ? ev->prev_kv : NULL, ev->prev_kv_len);
}

static void flush_synced(watch_hub *h, int64_t rev)
{
    for (size_t i = 0; i < h->ntouched; i++) {
        watcher *w = h->touched[i];
        w->touched = false;
        if (w->state != W_SYNCED || w->s->dead) {
            pend_reset(w);
            continue;
        }
        if (stream_blocked(h, w->s) || send_events(h, w, rev)) {
            /* Nothing more for this stream until its backlog drains (or
             * memory is back): it catches up from storage. */
            if (w->next < rev)
                w->next = rev;
            group_move(h, w, W_UNSYNCED);
        }
        pend_reset(w);
    }
    h->ntouched = 0;
}

static void dispatch_dropped(watch_hub *h, int64_t from, int64_t to);

static void dispatch_events(watch_hub *h, item *it)
{
    size_t i = 0;
    while (i < it->n) {
        int64_t rev = it->evs[i].rev;
        size_t j = i;
        while (j < it->n && it->evs[j].rev == rev)
            j++;
        if (rev > h->dispatched && touch_reserve(h, h->synced.count)) {
            /* out of memory: as if these events had been dropped */
            dispatch_dropped(h, rev, it->last_rev);
            return;
        }
        if (rev > h->dispatched) {
            for (size_t k = i; k < j; k++) {
                match_ctx m = {h, &it->evs[k]};
                wgroup_match(&h->synced, it->evs[k].key, it->evs[k].key_len, match_synced, &m);
            }
            flush_synced(h, rev);
            h->dispatched = rev;
        }
        i = j;
    }
}

typedef struct collect_ctx {
    watcher **v;
    size_t n, cap;
    bool oom;
} collect_ctx;

static void collect(void *arg, watcher *w)
{
    collect_ctx *c = arg;
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 64;
        watcher **v = realloc(c->v, cap * sizeof(*v));
        if (!v) {
            c->oom = true;
            return;
        }
        c->v = v;
        c->cap = cap;
    }
    c->v[c->n++] = w;
}

/* Events of revisions [from, to] were dropped from the queue: every synced
 * watcher catches up from storage instead. */
static void dispatch_dropped(watch_hub *h, int64_t from, int64_t to)
{
    collect_ctx c = {0};
    wgroup_each(&h->synced, collect, &c);
    for (size_t i = 0; i < c.n; i++) {
        if (c.v[i]->next < from)
            c.v[i]->next = from;
        group_move(h, c.v[i], W_UNSYNCED);
    }
    free(c.v);
    if (to > h->dispatched)
        h->dispatched = to;
    h->sync_now = true;
}

/* ---- the sync step: unsynced watchers from storage ---- */

/* Whether w may take the events of a revision it has not started in this
 * sync step: while its stream's events built so far are under
 * sync_stream_bytes and the step's, under SYNC_STREAMS_HELD times that (a
 * stream always gets one revision, so that it makes progress). Otherwise w
 * stops before that revision and goes on from there in a later step:
 * building every watcher's share of the history first would hold watchers
 * x events bytes (10,000 watchers of a key on one stream, 100 revisions
 * behind: 600 MB) before the backlog limit is even looked at. */
static bool scan_take(watch_hub *h, watcher *w, int64_t rev)
{
    if (w->scan_rev == rev)
        return true;
    watch_stream *s = w->s;
    if (s->scan_held && (s->scan_held >= h->sync_stream_bytes ||
                         h->scan_held >= SYNC_STREAMS_HELD * h->sync_stream_bytes)) {
        w->scan_stop = rev;
        h->scan_stopped = true;
        return false;
    }
    w->scan_rev = rev;
    return true;
}

static void match_unsynced(void *arg, watcher *w)
{
    match_ctx *m = arg;
    watch_hub *h = m->h;
    const mvcc_event *ev = m->ev;
    if (!w->in_scan || w->scan_stop || ev->rev < w->next || filtered(w, ev) ||
        !scan_take(h, w, ev->rev))
        return;
    const uint8_t *prev = NULL;
    size_t prev_len = 0;
    /* etcd looks up no prev_kv for a PUT that created the key */
    if (w->prev_kv && !(ev->type == MVCC_EVENT_PUT && ev->create_rev == ev->rev)) {
        if (h->prev_ev != ev) {
            h->prev_ev = ev;
            h->prev.len = 0;
            h->prev_found = mvcc_history_prev(h->hist, ev->key, ev->key_len, ev->rev, &h->prev);
        }
        if (h->prev_found == 1) {
            prev = h->prev.data;
            prev_len = h->prev.len;
        }
    }
    size_t before = w->pend.len;
    pend_add(w, ev, prev, prev_len);
    w->s->scan_held += w->pend.len - before;
    h->scan_held += w->pend.len - before;
}

static void history_event(void *arg, const mvcc_event *evs, size_t n)
{
    watch_hub *h = arg;
    for (size_t i = 0; i < n; i++) {
        match_ctx m = {h, &evs[i]};
        wgroup_match(&h->unsynced, evs[i].key, evs[i].key_len, match_unsynced, &m);
    }
    /* a new event: the cached prev_kv belongs to the one before */
    h->prev_ev = NULL;
}

static void sync_step(watch_hub *h)
{
    if (!h->unsynced.count)
        return;
    collect_ctx c = {0};
    wgroup_each(&h->unsynced, collect, &c);
    mvcc_history *hist = mvcc_history_open(h->cfg.store);
    if (!hist) {
        free(c.v);
        return;
    }
    int64_t compact = mvcc_history_compact_revision(hist);
    int64_t d = h->dispatched;
    int64_t min = INT64_MAX;
    size_t n = 0;
    for (size_t i = 0; i < c.n; i++) {
        watcher *w = c.v[i];
        if (stream_blocked(h, w->s))
            continue;
        w->s->scan_held = 0;
        if (w->next < compact) {
            /* etcd: the compaction response (header revision 0, canceled);
             * the id stays taken until the client cancels it. */
            send_ctrl(h, w->s, 0, w->id, false, true, compact, NULL);
            group_move(h, w, W_COMPACTED);
            continue;
        }
        if (w->next < 1)
            w->next = d + 1; /* etcd reads nothing for such a start */
        if (w->next > d) {
            group_move(h, w, W_SYNCED);
            continue;
        }
        w->in_scan = true;
        w->scan_rev = 0;
        w->scan_stop = 0;
        if (w->next < min)
            min = w->next;
        c.v[n++] = w;
    }
    if (n) {
        h->hist = hist;
        h->prev_ev = NULL;
        h->scan_held = 0;
        h->scan_stopped = false;
        int64_t next = min;
        int rc = mvcc_history_events(hist, min, d, SYNC_MAX_EVENTS, SYNC_MAX_BYTES,
                                     history_event, h, &next);
        h->hist = NULL;
        if (h->scan_held > h->sync_held_max)
            h->sync_held_max = h->scan_held;
        for (size_t i = 0; i < n; i++) {
            watcher *w = c.v[i];
            w->in_scan = false;
            if (rc != 0) {
                pend_reset(w);
                continue;
            }
            /* What was built for a stream is sent, though it may go past
             * the backlog limit: it is already in memory, bounded by
             * sync_stream_bytes, and the stream was under the limit when
             * the step began. */
            if (w->pend_n || w->pend_failed) {
                if (w->s->dead || send_events(h, w, d)) {
                    pend_reset(w); /* read again later */
                    continue;
                }
                pend_reset(w);
            }
            /* it has been sent everything before its stop, or before next */
            int64_t end = w->scan_stop ? w->scan_stop : next;
            if (w->next < end)
                w->next = end;
            if (w->next > d)
                group_move(h, w, W_SYNCED);
        }
        if (rc == 0 && next <= d && !h->scan_stopped)
            h->sync_now = true; /* the chunk's end: read on at once */
        h->sync_soon = rc == 0 && h->scan_stopped;
    }
    mvcc_history_close(hist);
    free(c.v);
}

/* ---- the thread ---- */

static void item_free(item *it)
{
    free(it);
}

static void process(watch_hub *h, item *it)
{
    switch (it->kind) {
    case IT_EVENTS:
        dispatch_events(h, it);
        break;
    case IT_DROPPED:
        dispatch_dropped(h, it->first_rev, it->last_rev);
        break;
    case IT_OPEN:
        do_open(h, it->s);
        break;
    case IT_CREATE:
        do_create(h, it->s, &it->cr);
        break;
    case IT_CANCEL:
        do_cancel(h, it->s, it->id);
        break;
    case IT_PROGRESS:
        send_ctrl(h, it->s, h->dispatched, -1, false, false, 0, NULL);
        break;
    case IT_CLOSE:
        do_close(h, it->s);
        break;
    }
}

static void publish_stats(watch_hub *h)
{
    h->stats.streams = h->nstreams;
    h->stats.synced_watchers = h->synced.count;
    h->stats.unsynced_watchers = h->unsynced.count;
    h->stats.events_total = h->events_total;
    h->stats.pending_events = h->q_events;
    h->stats.sync_held_max = h->sync_held_max;
}

static void *hub_main(void *arg)
{
    pthread_setname_np(pthread_self(), "watch-hub");
    watch_hub *h = arg;
    uint64_t creates_taken = 0;
    pthread_mutex_lock(&h->mu);
    for (;;) {
        while (!h->stop && !h->qhead && !h->sync_now) {
            uint64_t now = now_ms();
            uint64_t wake = h->next_tick_check;
            if (h->unsynced.count && h->next_sync < wake)
                wake = h->next_sync;
            if (wake <= now)
                break;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t ns = (uint64_t)ts.tv_nsec + (wake - now) * 1000000ull;
            ts.tv_sec += (time_t)(ns / 1000000000ull);
            ts.tv_nsec = (long)(ns % 1000000000ull);
            if (pthread_cond_timedwait(&h->cv, &h->mu, &ts) == ETIMEDOUT)
                break;
        }
        if (h->stop)
            break;
        item *list = h->qhead;
        h->qhead = h->qtail = NULL;
        h->q_bytes = 0;
        h->q_events = 0;
        pthread_mutex_unlock(&h->mu);

        while (list) {
            item *next = list->next;
            if (list->kind == IT_CREATE)
                creates_taken++;
            process(h, list);
            item_free(list);
            list = next;
        }
        uint64_t now = now_ms();
        if (h->sync_now || (h->unsynced.count && now >= h->next_sync)) {
            h->sync_now = false;
            sync_step(h);
            h->next_sync = now + (h->sync_soon ? SYNC_RETRY_MS : SYNC_INTERVAL_MS);
            h->sync_soon = false;
        }
        if (now >= h->next_tick_check) {
            for (watch_stream *s = h->streams; s; s = s->next)
                if (now >= s->next_tick) {
                    progress_tick(h, s);
                    s->next_tick += s->tick_ms;
                    if (s->next_tick < now)
                        s->next_tick = now + s->tick_ms;
                }
            uint64_t step = h->progress_ms < 500 ? h->progress_ms / 5 + 1 : 100;
            h->next_tick_check = now + step;
        }
        pthread_mutex_lock(&h->mu);
        if (!h->spare)
            h->spare = calloc(1, sizeof(*h->spare));
        publish_stats(h);
        h->creates_queued -= creates_taken;
        creates_taken = 0;
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

/* Appends `it` to the queue; the caller holds mu. */
static void append_locked(watch_hub *h, item *it)
{
    it->next = NULL;
    if (h->qtail)
        h->qtail->next = it;
    else
        h->qhead = it;
    h->qtail = it;
}

static void enqueue(watch_hub *h, item *it)
{
    pthread_mutex_lock(&h->mu);
    if (it->kind == IT_CREATE)
        h->creates_queued++;
    append_locked(h, it);
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* ---- the event hook (apply thread) ---- */

static void drop_queued(watch_hub *h, item *marker, int64_t first, int64_t last)
{
    /* The oldest queued event (or marker) gives where watchers resume; the
     * marker takes its place in the queue so that requests before it still
     * come before it. */
    item **pp = &h->qhead, *pos_prev = NULL, *prev = NULL;
    bool placed = false;
    marker->kind = IT_DROPPED;
    marker->last_rev = last;
    marker->first_rev = first;
    while (*pp) {
        item *it = *pp;
        if (it->kind == IT_EVENTS || it->kind == IT_DROPPED) {
            if (!placed) {
                marker->first_rev = it->first_rev;
                pos_prev = prev;
                placed = true;
            }
            *pp = it->next;
            item_free(it);
            continue;
        }
        prev = it;
        pp = &it->next;
    }
    h->qtail = prev;
    if (placed) {
        if (pos_prev) {
            marker->next = pos_prev->next;
            pos_prev->next = marker;
        } else {
            marker->next = h->qhead;
            h->qhead = marker;
        }
        if (!marker->next)
            h->qtail = marker;
    } else {
        append_locked(h, marker);
    }
    h->q_bytes = 0;
    h->q_events = 0;
    h->stats.queue_drops++;
}

/* Apply's question before each entry: may anybody need its events? Not
 * while there is no watcher and no create request on its way; a create
 * queued after this answer comes before the entry's skip marker. */
static bool want_events(void *arg)
{
    watch_hub *h = arg;
    pthread_mutex_lock(&h->mu);
    bool want = h->creates_queued || h->stats.synced_watchers || h->stats.unsynced_watchers;
    pthread_mutex_unlock(&h->mu);
    return want;
}

/* A zeroed item for a drop marker. When malloc fails, the hub's spare
 * (refilled by the hub thread) stands in; without it, watchers could miss
 * revisions without a trace, so the process stops. Call without mu. */
static item *marker_alloc(watch_hub *h)
{
    item *it = calloc(1, sizeof(*it));
    if (it)
        return it;
    pthread_mutex_lock(&h->mu);
    it = h->spare;
    h->spare = NULL;
    pthread_mutex_unlock(&h->mu);
    if (!it)
        abort();
    memset(it, 0, sizeof(*it));
    return it;
}

/* An entry's events were not collected: revisions [first, last] are marked
 * as a drop, so any watcher that turns out to need them (made between the
 * question and this call) reads them from storage, and `dispatched` moves
 * on. A marker at the end of the queue is extended instead of adding one,
 * and the hub is not woken for it: whatever comes next is queued behind
 * it. */
static void on_skipped(void *arg, int64_t first, int64_t last)
{
    watch_hub *h = arg;
    pthread_mutex_lock(&h->mu);
    h->stats.revisions_skipped += (uint64_t)(last - first + 1);
    item *t = h->qtail;
    if (t && t->kind == IT_DROPPED && t->last_rev + 1 >= first) {
        if (last > t->last_rev)
            t->last_rev = last;
        pthread_mutex_unlock(&h->mu);
        return;
    }
    pthread_mutex_unlock(&h->mu);
    item *it = marker_alloc(h);
    pthread_mutex_lock(&h->mu);
    it->kind = IT_DROPPED;
    it->first_rev = first;
    it->last_rev = last;
    append_locked(h, it);
    pthread_mutex_unlock(&h->mu);
}

static void on_events(void *arg, const mvcc_event *evs, size_t n)
{
    watch_hub *h = arg;
    if (n == 0)
        return;
    size_t data = 0;
    for (size_t i = 0; i < n; i++)
        data += evs[i].key_len + evs[i].kv_len + (evs[i].prev_kv ? evs[i].prev_kv_len : 0);
    size_t bytes = sizeof(item) + n * sizeof(mvcc_event) + data;
    int64_t first = evs[0].rev, last = evs[n - 1].rev;

    pthread_mutex_lock(&h->mu);
    bool over = h->q_bytes + bytes > h->queue_limit;
    pthread_mutex_unlock(&h->mu);

    item *it = over ? NULL : malloc(bytes);
    if (it) {
        memset(it, 0, sizeof(*it));
    } else {
        over = true;
        it = marker_alloc(h);
    }
    if (!over) {
        it->kind = IT_EVENTS;
        it->bytes = bytes;
        it->first_rev = first;
        it->last_rev = last;
        it->n = n;
        it->evs = (mvcc_event *)(it + 1);
        uint8_t *p = (uint8_t *)(it->evs + n);
        for (size_t i = 0; i < n; i++) {
            mvcc_event *e = &it->evs[i];
            *e = evs[i];
            memcpy(p, evs[i].key, evs[i].key_len);
            e->key = p;
            p += evs[i].key_len;
            memcpy(p, evs[i].kv, evs[i].kv_len);
            e->kv = p;
            p += evs[i].kv_len;
            if (evs[i].prev_kv) {
                memcpy(p, evs[i].prev_kv, evs[i].prev_kv_len);
                e->prev_kv = p;
                p += evs[i].prev_kv_len;
            }
        }
    }
    pthread_mutex_lock(&h->mu);
    if (!over && h->q_bytes + bytes > h->queue_limit)
        over = true;
    if (over) {
        drop_queued(h, it, first, last);
    } else {
        append_locked(h, it);
        h->q_bytes += bytes;
        h->q_events += n;
    }
    h->stats.pending_events = h->q_events;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* ---- interface ---- */

void watch_hub_store_replaced(watch_hub *h, int64_t from, int64_t to)
{
    if (to < from)
        return;
    item *it = marker_alloc(h);
    it->kind = IT_DROPPED;
    it->first_rev = from;
    it->last_rev = to;
    enqueue(h, it);
}

watch_hub *watch_hub_start(const watch_hub_config *cfg, char **errmsg)
{
    if (errmsg)
        *errmsg = NULL;
    watch_hub *h = calloc(1, sizeof(*h));
    if (!h) {
        if (errmsg)
            *errmsg = strdup("watch: out of memory");
        return NULL;
    }
    h->cfg = *cfg;
    h->frag_limit = (cfg->max_request_bytes ? cfg->max_request_bytes : DEFAULT_MAX_REQUEST) +
                    GRPC_OVERHEAD;
    h->queue_limit = cfg->event_queue_limit ? cfg->event_queue_limit : DEFAULT_QUEUE_LIMIT;
    h->progress_ms = cfg->progress_interval_ms ? cfg->progress_interval_ms : DEFAULT_PROGRESS_MS;
    h->sync_stream_bytes = cfg->sync_stream_bytes ? cfg->sync_stream_bytes
                                                  : DEFAULT_SYNC_STREAM_BYTES;
    h->rng = (uint64_t)now_ms() ^ (uint64_t)(uintptr_t)h;
    pthread_mutex_init(&h->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_cond_init(&h->cv, &ca);
    pthread_condattr_destroy(&ca);
    h->next_tick_check = now_ms();
    h->spare = calloc(1, sizeof(*h->spare));
    mvcc_set_event_skip(cfg->store, want_events, on_skipped);
    h->dispatched = mvcc_set_event_hook(cfg->store, on_events, h);
    if (pthread_create(&h->thread, NULL, hub_main, h) != 0) {
        mvcc_set_event_hook(cfg->store, NULL, NULL);
        pthread_cond_destroy(&h->cv);
        pthread_mutex_destroy(&h->mu);
        free(h);
        if (errmsg)
            *errmsg = strdup("watch: cannot start the hub thread");
        return NULL;
    }
    return h;
}

void watch_hub_stop(watch_hub *h)
{
    if (!h)
        return;
    mvcc_set_event_hook(h->cfg.store, NULL, NULL);
    pthread_mutex_lock(&h->mu);
    h->stop = true;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->thread, NULL);
    /* Whatever is still queued: opens become streams to release, closes
     * release theirs, the rest is dropped. */
    item *it = h->qhead;
    while (it) {
        item *next = it->next;
        if (it->kind == IT_OPEN)
            do_open(h, it->s);
        else if (it->kind == IT_CLOSE)
            do_close(h, it->s);
        item_free(it);
        it = next;
    }
    while (h->streams)
        do_close(h, h->streams);
    free(h->spare);
    wgroup_free(&h->synced);
    wgroup_free(&h->unsynced);
    free(h->out.data);
    free(h->prev.data);
    free(h->touched);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

watch_stream *watch_stream_open(watch_hub *h, const watch_stream_ops *ops, void *ctx)
{
    watch_stream *s = calloc(1, sizeof(*s));
    item *it = calloc(1, sizeof(*it));
    item *close_it = calloc(1, sizeof(*close_it));
    if (!s || !it || !close_it) {
        free(s);
        free(it);
        free(close_it);
        return NULL;
    }
    s->close_item = close_it;
    s->h = h;
    s->ops = ops;
    s->ctx = ctx;
    it->kind = IT_OPEN;
    it->s = s;
    enqueue(h, it);
    return s;
}

void watch_stream_request(watch_stream *s, const Etcdserverpb__WatchRequest *req)
{
    item *it = NULL;
    switch (req->request_union_case) {
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST: {
        const Etcdserverpb__WatchCreateRequest *c = req->create_request;
        if (!c)
            return;
        it = calloc(1, sizeof(*it) + c->key.len + c->range_end.len);
        if (!it)
            return;
        it->kind = IT_CREATE;
        create_req *r = &it->cr;
        r->key = (uint8_t *)(it + 1);
        r->end = r->key + c->key.len;
        if (c->key.len)
            memcpy(r->key, c->key.data, c->key.len);
        if (c->range_end.len)
            memcpy(r->end, c->range_end.data, c->range_end.len);
        r->key_len = c->key.len;
        r->end_len = c->range_end.len;
        r->start_rev = c->start_revision;
        r->watch_id = c->watch_id;
        r->prev_kv = c->prev_kv;
        r->progress_notify = c->progress_notify;
        r->fragment = c->fragment;
        for (size_t i = 0; i < c->n_filters; i++) {
            if (c->filters[i] == ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NOPUT)
                r->no_put = true;
            else if (c->filters[i] == ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NODELETE)
                r->no_delete = true;
        }
        break;
    }
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST:
        if (!req->cancel_request)
            return;
        it = calloc(1, sizeof(*it));
        if (!it)
            return;
        it->kind = IT_CANCEL;
        it->id = req->cancel_request->watch_id;
        break;
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_PROGRESS_REQUEST:
        if (!req->progress_request)
            return;
        it = calloc(1, sizeof(*it));
        if (!it)
            return;
        it->kind = IT_PROGRESS;
        break;
    default:
        return; /* etcd ignores what it does not know */
    }
    it->s = s;
    enqueue(s->h, it);
}

void watch_stream_close(watch_stream *s)
{
    item *it = s->close_item;
    it->kind = IT_CLOSE;
    it->s = s;
    enqueue(s->h, it);
}

void watch_hub_get_stats(watch_hub *h, watch_hub_stats *out)
{
    pthread_mutex_lock(&h->mu);
    *out = h->stats;
    out->pending_events = h->q_events;
    pthread_mutex_unlock(&h->mu);
}
