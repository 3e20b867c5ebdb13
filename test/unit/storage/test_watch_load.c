/* The watch hub under load: a stalled stream catches up from storage with
 * every event exactly once and in order while another stream keeps getting
 * events at once; the bounded input queue overflows and everybody catches
 * up; a thousand watchers on one key; a randomized run checked against a
 * model of the history. */
#include <stdatomic.h>

#include "watch_test.h"

static void put_i(tstore *t, const char *k, int i)
{
    char v[32];
    snprintf(v, sizeof(v), "v%d", i);
    ts_put(t, k, v);
}

/* Events of watch `id` on f, in order, must be exactly the puts of key k
 * with values v<first>..v<first+n-1> at revisions rev0.., each with the
 * previous value as prev_kv when `prev`. */
static void check_put_run(fake *f, int64_t id, const char *k, int first, int n, int64_t rev0,
                          bool prev)
{
    int seen = 0;
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < f->n; i++) {
        Etcdserverpb__WatchResponse *r = f->m[i];
        if (r->watch_id != id || r->n_events == 0)
            continue;
        for (size_t j = 0; j < r->n_events; j++) {
            const Mvccpb__Event *e = r->events[j];
            char v[32];
            snprintf(v, sizeof(v), "v%d", first + seen);
            CHECK(seen < n);
            CHECK(ev_is(e, 0, k, v, rev0 + seen));
            if (prev && first + seen > 0) {
                snprintf(v, sizeof(v), "v%d", first + seen - 1);
                CHECK(e->prev_kv && kv_is(e->prev_kv, k, v));
            }
            if (!prev)
                CHECK(e->prev_kv == NULL);
            seen++;
        }
    }
    pthread_mutex_unlock(&f->mu);
    CHECK_EQ_INT(seen, n);
}

typedef struct drainer {
    fake *f;
    atomic_bool stop; /* set by the test's thread while the drainer runs */
} drainer;

/* A slow reader: the backlog empties every 20 ms. */
static void *drain_main(void *arg)
{
    drainer *d = arg;
    while (!atomic_load(&d->stop)) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&d->f->mu);
        d->f->backlog = 0;
        pthread_mutex_unlock(&d->f->mu);
    }
    return NULL;
}

static void test_stalled_stream(void)
{
    tstore t;
    ts_open(&t);
    ts_put(&t, "k", "v0"); /* 2 */
    watch_hub *h = hub_start(&t, 0, 4096, 0, 0);
    fake a, b;
    fake_init(&a, h);
    fake_init(&b, h);
    w_create(&a, "k", (wopts){.prev_kv = true});
    w_create(&a, "k", (wopts){.end = "l"});
    w_create(&b, "k", (wopts){.prev_kv = true});
    CHECK(fake_wait_events(&a, 0, 100));
    /* a reads nothing from now on */
    pthread_mutex_lock(&a.mu);
    a.stall = true;
    pthread_mutex_unlock(&a.mu);
    const int n = 2000;
    for (int i = 1; i <= n; i++)
        put_i(&t, "k", i); /* revisions 3..n+2 */
    CHECK(fake_wait_events(&b, n, 5000));
    check_put_run(&b, 0, "k", 1, n, 3, true);
    watch_hub_stats st;
    watch_hub_get_stats(h, &st);
    CHECK_EQ_INT(st.unsynced_watchers, 2);
    CHECK_EQ_INT(st.synced_watchers, 1);
    pthread_mutex_lock(&a.mu);
    size_t before = a.events, backlog = a.backlog;
    pthread_mutex_unlock(&a.mu);
    CHECK(before < (size_t)n);
    CHECK(backlog < 4096 + 2048); /* nothing was sent past the limit but one response */

    /* b keeps getting events at once while a is stalled */
    put_i(&t, "k", n + 1);
    CHECK(fake_wait_events(&b, n + 1, 2000));

    /* a slow reader: catches up chunk by chunk */
    drainer d = {&a, false};
    pthread_t th;
    pthread_create(&th, NULL, drain_main, &d);
    for (int i = n + 2; i <= n + 200; i++)
        put_i(&t, "k", i);
    CHECK(fake_wait_events(&a, 2 * (n + 200), 20000));
    atomic_store(&d.stop, true);
    pthread_join(th, NULL);
    check_put_run(&a, 0, "k", 1, n + 200, 3, true);
    check_put_run(&a, 1, "k", 1, n + 200, 3, false);
    CHECK(fake_wait_events(&b, n + 200, 2000));
    check_put_run(&b, 0, "k", 1, n + 200, 3, true);
    pthread_mutex_lock(&a.mu);
    a.stall = false;
    a.backlog = 0;
    pthread_mutex_unlock(&a.mu);
    put_i(&t, "k", n + 201);
    CHECK(fake_wait_events(&a, 2 * (n + 201), 2000));
    struct timespec ts = {0, 250 * 1000 * 1000};
    nanosleep(&ts, NULL);
    watch_hub_get_stats(h, &st);
    CHECK_EQ_INT(st.unsynced_watchers, 0);
    CHECK_EQ_INT(st.synced_watchers, 3);
    CHECK_EQ_INT(a.events, 2 * (n + 201)); /* nothing twice */
    fake_close(&a);
    fake_close(&b);
    watch_hub_stop(h);
    ts_close(&t);
}

/* Many watchers of one stalled stream catch up: each sync step builds
 * events for them only up to sync_stream_bytes (not every watcher's whole
 * share of the history, which would hold watchers x events bytes before
 * the backlog limit is looked at), and every watcher still gets every
 * event once, in order. */
static void test_stalled_many(void)
{
    enum { W = 200, P = 40, LIMIT = 64 << 10, STEP = 8 << 10 };
    tstore t;
    ts_open(&t);
    watch_hub *h = hub_start_with(
        &t, (watch_hub_config){.stream_backlog_limit = LIMIT, .sync_stream_bytes = STEP});
    fake a;
    fake_init(&a, h);
    for (int i = 0; i < W; i++)
        w_create(&a, "k", (wopts){.prev_kv = true});
    pthread_mutex_lock(&a.mu);
    while (a.n < W)
        pthread_cond_wait(&a.cv, &a.mu);
    a.stall = true;
    a.backlog = 2 * LIMIT;
    pthread_mutex_unlock(&a.mu);
    for (int i = 0; i < P; i++)
        put_i(&t, "k", i); /* revisions 2..P+1 */
    watch_hub_stats st;
    for (int tries = 0; tries < 500; tries++) {
        watch_hub_get_stats(h, &st);
        if (st.unsynced_watchers == W)
            break;
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    CHECK_EQ_INT(st.unsynced_watchers, W);
    drainer d = {&a, false};
    pthread_t th;
    pthread_create(&th, NULL, drain_main, &d);
    CHECK(fake_wait_events(&a, (size_t)W * P, 30000));
    atomic_store(&d.stop, true);
    pthread_join(th, NULL);
    for (int i = 0; i < W; i++)
        check_put_run(&a, i, "k", 0, P, 2, true);
    watch_hub_get_stats(h, &st);
    /* W * P events of ~40 bytes: 320 KB if built at once; one event may
     * go past the step's bytes */
    CHECK(st.sync_held_max > 0 && st.sync_held_max <= STEP + 256);
    fake_close(&a);
    watch_hub_stop(h);
    ts_close(&t);
}

static void test_queue_overflow(void)
{
    tstore t;
    ts_open(&t);
    watch_hub *h = hub_start(&t, 0, 64 << 20, 0, 16 << 10);
    fake g, a, b;
    fake_init(&g, h);
    fake_init(&a, h);
    fake_init(&b, h);
    w_create(&g, "g", (wopts){0});
    w_create(&a, "k", (wopts){.prev_kv = true});
    w_create(&b, "", (wopts){.end = ""});
    w_create(&b, "k", (wopts){.start = 1000}); /* future, synced: dropped too */
    CHECK(fake_wait_events(&b, 0, 100));
    /* b.n is written by the hub thread under b.mu */
    pthread_mutex_lock(&b.mu);
    while (b.n < 2)
        pthread_cond_wait(&b.cv, &b.mu);
    pthread_mutex_unlock(&b.mu);
    /* hold the hub thread inside a send */
    pthread_mutex_lock(&g.mu);
    g.gate = true;
    pthread_mutex_unlock(&g.mu);
    ts_put(&t, "g", "x"); /* 2 */
    pthread_mutex_lock(&g.mu);
    while (!g.in_gate)
        pthread_cond_wait(&g.cv, &g.mu);
    pthread_mutex_unlock(&g.mu);
    const int n = 3000;
    for (int i = 0; i < n; i++)
        put_i(&t, "k", i); /* 3..n+2 */
    watch_hub_stats st;
    watch_hub_get_stats(h, &st);
    CHECK(st.queue_drops > 0);
    CHECK(st.pending_events < 200); /* bounded */
    pthread_mutex_lock(&g.mu);
    g.gate = false;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    CHECK(fake_wait_events(&a, n, 10000));
    check_put_run(&a, 0, "k", 0, n, 3, true);
    CHECK(fake_wait_events(&b, n + 1 + (n + 2 - 1000 + 1), 10000));
    /* b's all-keys watcher: g at 2 then the puts; its future watcher: from 1000 */
    int seen = 0, seen_future = 0;
    for (size_t i = 0; i < b.n; i++) {
        Etcdserverpb__WatchResponse *r = b.m[i];
        for (size_t j = 0; j < r->n_events; j++) {
            if (r->watch_id == 0) {
                CHECK_EQ_INT(r->events[j]->kv->mod_revision, 2 + seen);
                seen++;
            } else {
                CHECK_EQ_INT(r->events[j]->kv->mod_revision, 1000 + seen_future);
                seen_future++;
            }
        }
    }
    CHECK_EQ_INT(seen, n + 1);
    CHECK_EQ_INT(seen_future, n + 2 - 1000 + 1);
    CHECK(fake_must(&g)->created);
    CHECK_EQ_INT(fake_must(&g)->n_events, 1);
    fake_close(&g);
    fake_close(&a);
    fake_close(&b);
    watch_hub_stop(h);
    ts_close(&t);
}

static double secs(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void test_many_watchers(void)
{
    tstore t;
    ts_open(&t);
    watch_hub *h = hub_start(&t, 0, 64 << 20, 0, 0);
    enum { STREAMS = 100, PER = 10, PUTS = 2000 };
    fake *f = calloc(STREAMS, sizeof(*f));
    for (int i = 0; i < STREAMS; i++) {
        fake_init(&f[i], h);
        f[i].count_only = i != 0;
        for (int j = 0; j < PER; j++)
            w_create(&f[i], "hot", (wopts){0});
        /* ranges that never match "hot" */
        char k[16], e[16];
        snprintf(k, sizeof(k), "r%03d/", i);
        snprintf(e, sizeof(e), "r%03d0", i);
        w_create(&f[i], k, (wopts){.end = e});
    }
    double t0 = secs();
    for (int i = 0; i < PUTS; i++)
        put_i(&t, "hot", i);
    double t1 = secs();
    for (int i = 0; i < STREAMS; i++)
        CHECK(fake_wait_events(&f[i], (size_t)PER * PUTS, 60000));
    double t2 = secs();
    printf("many watchers: %d puts in %.2fs, %d events delivered %.2fs after the last put\n",
           PUTS, t1 - t0, STREAMS * PER * PUTS, t2 - t1);
    for (int j = 0; j < PER; j++)
        check_put_run(&f[0], j, "hot", 0, PUTS, 2, false);
    for (int i = 1; i < STREAMS; i++)
        CHECK_EQ_INT(f[i].events, (size_t)PER * PUTS);
    for (int i = 0; i < STREAMS; i++)
        fake_close(&f[i]);
    free(f);
    watch_hub_stop(h);
    ts_close(&t);
}

/* ---- randomized: a model of the history ---- */

#define RKEYS 6
static const char *rkeys[RKEYS] = {"a", "a/x", "a/y", "b", "b/x", "c"};

typedef struct hev {
    int type;
    int key;
    int64_t rev;
    int val;      /* PUT value number */
    int prev_val; /* -1: no prev */
} hev;

typedef struct model {
    int val[RKEYS]; /* -1 absent */
    hev *h;
    size_t n, cap;
    int counter;
} model;

static void model_add(model *m, int type, int key, int64_t rev, int val)
{
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 256;
        m->h = realloc(m->h, m->cap * sizeof(*m->h));
    }
    m->h[m->n++] = (hev){type, key, rev, val, m->val[key]};
    m->val[key] = type == 0 ? val : -1;
}

typedef struct rwatch {
    fake *f;
    int64_t id;
    int key;         /* key index; range when prefix */
    bool prefix, all, prev, noput, nodel;
    int64_t start;   /* first revision expected (resolved once created) */
    bool resolved;
    int64_t start_req;
} rwatch;

static bool rw_matches(const rwatch *w, const hev *e)
{
    if (w->all)
        return true;
    if (w->prefix)
        return strncmp(rkeys[e->key], rkeys[w->key], strlen(rkeys[w->key])) == 0;
    return e->key == w->key;
}

static void test_random(unsigned seed)
{
    srand(seed);
    tstore t;
    ts_open(&t);
    watch_hub *h = hub_start(&t, 0, 2048, 0, 8 << 10);
    enum { NS = 4, NW = 24, STEPS = 3000 };
    fake f[NS];
    for (int i = 0; i < NS; i++)
        fake_init(&f[i], h);
    model m = {.n = 0};
    for (int i = 0; i < RKEYS; i++)
        m.val[i] = -1;
    rwatch w[NW];
    int nw = 0;
    int64_t rev = 1;
    drainer d[NS];
    pthread_t th[NS];
    for (int i = 0; i < NS; i++) {
        d[i].f = &f[i];
        atomic_init(&d[i].stop, false);
        pthread_create(&th[i], NULL, drain_main, &d[i]);
    }
    for (int step = 0; step < STEPS; step++) {
        int r = rand() % 100;
        if (r < 3 && nw < NW) {
            rwatch *x = &w[nw++];
            memset(x, 0, sizeof(*x));
            x->f = &f[rand() % NS];
            x->key = rand() % RKEYS;
            int kind = rand() % 3;
            x->prefix = kind == 1;
            x->all = kind == 2;
            x->prev = rand() % 2;
            x->noput = rand() % 5 == 0;
            x->nodel = !x->noput && rand() % 5 == 0;
            int s = rand() % 3;
            x->start_req = s == 0 ? 0 : s == 1 ? 1 + rand() % rev : rev + 1 + rand() % 20;
            char end[8];
            const char *k = x->all ? "" : rkeys[x->key];
            if (x->prefix) {
                snprintf(end, sizeof(end), "%s", k);
                end[strlen(end) - 1]++;
            }
            pthread_mutex_lock(&x->f->mu);
            x->id = -1;
            pthread_mutex_unlock(&x->f->mu);
            w_create(x->f, k, (wopts){.end = x->all ? "" : x->prefix ? end : NULL,
                                      .start = x->start_req, .prev_kv = x->prev,
                                      .noput = x->noput, .nodelete = x->nodel});
        } else if (r < 8) {
            /* a stream stops reading for a while */
            fake *s = &f[rand() % NS];
            pthread_mutex_lock(&s->mu);
            s->stall = !s->stall;
            pthread_mutex_unlock(&s->mu);
        } else if (r < 20) {
            int k = rand() % RKEYS;
            if (ts_del(&t, rkeys[k], NULL)) {
                rev++;
                model_add(&m, 1, k, rev, 0);
            }
        } else if (r < 25) {
            /* delete a prefix: several events in one revision */
            int k = rand() % 2 == 0 ? 0 : 3;
            char end[4] = {rkeys[k][0] + 1, 0};
            int64_t n = ts_del(&t, rkeys[k], end);
            if (n) {
                rev++;
                for (int i = 0; i < RKEYS; i++)
                    if (rkeys[i][0] == rkeys[k][0] && m.val[i] >= 0)
                        model_add(&m, 1, i, rev, 0);
            }
        } else {
            int k = rand() % RKEYS;
            int v = ++m.counter;
            put_i(&t, rkeys[k], v);
            rev++;
            model_add(&m, 0, k, rev, v);
        }
    }
    for (int i = 0; i < NS; i++) {
        atomic_store(&d[i].stop, true);
        pthread_join(th[i], NULL);
        pthread_mutex_lock(&f[i].mu);
        f[i].stall = false;
        f[i].backlog = 0;
        pthread_mutex_unlock(&f[i].mu);
    }
    /* watch ids: created responses come in creation order per stream */
    for (int s = 0; s < NS; s++) {
        size_t ci = 0;
        for (int i = 0; i < nw; i++) {
            if (w[i].f != &f[s])
                continue;
            for (;;) {
                CHECK(fake_wait_events(&f[s], 0, 10));
                pthread_mutex_lock(&f[s].mu);
                while (ci < f[s].n && !f[s].m[ci]->created)
                    ci++;
                bool have = ci < f[s].n;
                Etcdserverpb__WatchResponse *c = have ? f[s].m[ci++] : NULL;
                pthread_mutex_unlock(&f[s].mu);
                if (have) {
                    CHECK(!c->canceled);
                    w[i].id = c->watch_id;
                    w[i].start = w[i].start_req ? w[i].start_req : c->header->revision + 1;
                    break;
                }
                struct timespec ts = {0, 5 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
        }
    }
    /* expected events per watcher, then wait for them and compare */
    for (int i = 0; i < nw; i++) {
        rwatch *x = &w[i];
        size_t want = 0;
        for (size_t j = 0; j < m.n; j++) {
            const hev *e = &m.h[j];
            if (e->rev >= x->start && rw_matches(x, e) && !(e->type == 0 && x->noput) &&
                !(e->type == 1 && x->nodel))
                want++;
        }
        /* wait: count this watcher's events */
        size_t got = 0;
        for (int tries = 0; tries < 2000; tries++) {
            got = 0;
            pthread_mutex_lock(&x->f->mu);
            for (size_t j = 0; j < x->f->n; j++)
                if (x->f->m[j]->watch_id == x->id)
                    got += x->f->m[j]->n_events;
            pthread_mutex_unlock(&x->f->mu);
            if (got >= want)
                break;
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        CHECK_EQ_INT(got, want);
        size_t j = 0;
        pthread_mutex_lock(&x->f->mu);
        for (size_t mi = 0; mi < x->f->n; mi++) {
            Etcdserverpb__WatchResponse *resp = x->f->m[mi];
            if (resp->watch_id != x->id)
                continue;
            CHECK(!resp->canceled);
            for (size_t k = 0; k < resp->n_events; k++) {
                const hev *e;
                for (;;) {
                    CHECK(j < m.n);
                    e = &m.h[j++];
                    if (e->rev >= x->start && rw_matches(x, e) &&
                        !(e->type == 0 && x->noput) && !(e->type == 1 && x->nodel))
                        break;
                }
                const Mvccpb__Event *ev = resp->events[k];
                CHECK_EQ_INT(ev->type, e->type);
                CHECK_EQ_INT(ev->kv->mod_revision, e->rev);
                char v[32];
                snprintf(v, sizeof(v), "v%d", e->val);
                CHECK(kv_is(ev->kv, rkeys[e->key], e->type == 0 ? v : ""));
                if (x->prev && e->prev_val >= 0) {
                    snprintf(v, sizeof(v), "v%d", e->prev_val);
                    CHECK(ev->prev_kv && kv_is(ev->prev_kv, rkeys[e->key], v));
                } else {
                    CHECK(ev->prev_kv == NULL);
                }
            }
        }
        pthread_mutex_unlock(&x->f->mu);
    }
    watch_hub_stats st;
    watch_hub_get_stats(h, &st);
    printf("random seed %u: %zu events, %d watchers, %llu queue drops\n", seed, m.n, nw,
           (unsigned long long)st.queue_drops);
    for (int i = 0; i < NS; i++)
        fake_close(&f[i]);
    free(m.h);
    watch_hub_stop(h);
    ts_close(&t);
}

int main(void)
{
    test_stalled_stream();
    test_stalled_many();
    test_queue_overflow();
    test_many_watchers();
    for (unsigned s = 1; s <= 4; s++)
        test_random(s);
    printf("test_watch_load: ok\n");
    return 0;
}
