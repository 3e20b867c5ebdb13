/*
 * The lessor: a hash table of leases by ID and, while primary, a binary
 * min-heap of the same records ordered by expiry, so finding what expired is
 * O(log n) per lease and never a scan.
 */
#include "lessor.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NOT_IN_HEAP ((size_t)-1)
#define NS_PER_SEC 1000000000LL
#define NS_PER_MS 1000000LL
#define FOREVER INT64_MAX
/* etcd revokes at most 500 leases per half second (leaseRevokeRate / 2). */
#define EXPIRE_BATCH 500
#define EXPIRE_PAUSE_NS (500 * NS_PER_MS)
/* etcd spreads expiries after a promotion once there are as many leases as
 * its revoke rate (1000/s), aiming at 3/4 of that rate per second. */
#define PROMOTE_SPREAD_MIN 1000
#define PROMOTE_SPREAD_RATE 750

typedef struct lease {
    int64_t id;
    int64_t ttl;    /* granted, seconds */
    int64_t expiry; /* ns on the lessor's clock; FOREVER when not primary */
    int64_t due;    /* heap key: expiry, or when to offer an expired lease again */
    uint64_t seq;   /* grant order: ties in expiry keep it */
    size_t heap_idx;
} lease;

struct lessor {
    lessor_config cfg;
    pthread_mutex_t mu;
    bool primary;
    uint64_t next_seq;

    /* Open addressing, linear probing; cap is a power of two. */
    lease **slots;
    size_t cap, count;

    lease **heap;
    size_t heap_n, heap_cap;

    pthread_t thread;
    bool thread_started, stopping;
    pthread_cond_t cv;
};

static int64_t now_ns(lessor *l)
{
    if (l->cfg.now_ns)
        return l->cfg.now_ns(l->cfg.clock_arg);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

static int64_t add_sat(int64_t a, int64_t b)
{
    return a > INT64_MAX - b ? INT64_MAX : a + b;
}

static int64_t ttl_ns(int64_t ttl)
{
    return ttl > INT64_MAX / NS_PER_SEC ? INT64_MAX : ttl * NS_PER_SEC;
}

/* ---- hash table ---- */

static size_t slot_of(const lessor *l, int64_t id)
{
    uint64_t h = (uint64_t)id * 0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 17) & (l->cap - 1);
}

static lease *table_get(const lessor *l, int64_t id)
{
    if (!l->cap)
        return NULL;
    for (size_t i = slot_of(l, id);; i = (i + 1) & (l->cap - 1)) {
        if (!l->slots[i])
            return NULL;
        if (l->slots[i]->id == id)
            return l->slots[i];
    }
}

static void table_insert_slot(lease **slots, size_t cap, lease *e)
{
    uint64_t h = (uint64_t)e->id * 0x9e3779b97f4a7c15ull;
    size_t i = (size_t)(h >> 17) & (cap - 1);
    while (slots[i])
        i = (i + 1) & (cap - 1);
    slots[i] = e;
}

static int table_put(lessor *l, lease *e)
{
    if ((l->count + 1) * 2 > l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        lease **slots = calloc(cap, sizeof(*slots));
        if (!slots)
            return -1;
        for (size_t i = 0; i < l->cap; i++)
            if (l->slots[i])
                table_insert_slot(slots, cap, l->slots[i]);
        free(l->slots);
        l->slots = slots;
        l->cap = cap;
    }
    table_insert_slot(l->slots, l->cap, e);
    l->count++;
    return 0;
}

/* Removes by backward shift, so lookups never need tombstones. */
static void table_del(lessor *l, int64_t id)
{
    size_t mask = l->cap - 1;
    size_t i = slot_of(l, id);
    while (l->slots[i] && l->slots[i]->id != id)
        i = (i + 1) & mask;
    if (!l->slots[i])
        return;
    l->slots[i] = NULL;
    l->count--;
    for (size_t j = (i + 1) & mask; l->slots[j]; j = (j + 1) & mask) {
        size_t home = slot_of(l, l->slots[j]->id);
        /* move j back to i when its home is not in (i, j] cyclically */
        bool between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!between) {
            l->slots[i] = l->slots[j];
            l->slots[j] = NULL;
            i = j;
        }
    }
}

/* ---- heap ---- */

static bool before(const lease *a, const lease *b)
{
    return a->due != b->due ? a->due < b->due : a->seq < b->seq;
}

static bool expires_before(const lease *a, const lease *b)
{
    return a->expiry != b->expiry ? a->expiry < b->expiry : a->seq < b->seq;
}

static void heap_set(lessor *l, size_t i, lease *e)
{
    l->heap[i] = e;
    e->heap_idx = i;
}

static void heap_up(lessor *l, size_t i)
{
    lease *e = l->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!before(e, l->heap[p]))
            break;
        heap_set(l, i, l->heap[p]);
        i = p;
    }
    heap_set(l, i, e);
}

static void heap_down(lessor *l, size_t i)
{
    lease *e = l->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= l->heap_n)
            break;
        if (c + 1 < l->heap_n && before(l->heap[c + 1], l->heap[c]))
            c++;
        if (!before(l->heap[c], e))
            break;
        heap_set(l, i, l->heap[c]);
        i = c;
    }
    heap_set(l, i, e);
}

static int heap_push(lessor *l, lease *e)
{
    if (l->heap_n == l->heap_cap) {
        size_t cap = l->heap_cap ? 2 * l->heap_cap : 64;
        lease **h = realloc(l->heap, cap * sizeof(*h));
        if (!h)
            return -1;
        l->heap = h;
        l->heap_cap = cap;
    }
    heap_set(l, l->heap_n++, e);
    heap_up(l, e->heap_idx);
    return 0;
}

static void heap_remove(lessor *l, lease *e)
{
    size_t i = e->heap_idx;
    if (i == NOT_IN_HEAP)
        return;
    e->heap_idx = NOT_IN_HEAP;
    lease *last = l->heap[--l->heap_n];
    if (i == l->heap_n)
        return;
    heap_set(l, i, last);
    heap_up(l, i);
    heap_down(l, last->heap_idx);
}

/* Sets when the heap offers a lease next (the heap holds every lease while
 * primary). Out of memory leaves it out of the heap: it then never expires,
 * which is what a follower's leases do anyway. */
static void schedule(lessor *l, lease *e, int64_t due)
{
    e->due = due;
    if (e->heap_idx != NOT_IN_HEAP) {
        heap_up(l, e->heap_idx);
        heap_down(l, e->heap_idx);
    } else {
        heap_push(l, e);
    }
    if (l->heap_n && l->heap[0] == e)
        pthread_cond_signal(&l->cv);
}

/* ---- public ---- */

lessor *lessor_new(const lessor_config *cfg)
{
    lessor *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->cfg = *cfg;
    if (l->cfg.retry_ms <= 0)
        l->cfg.retry_ms = 3000;
    pthread_mutex_init(&l->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cv, &ca);
    pthread_condattr_destroy(&ca);
    return l;
}

static void refresh(lessor *l, lease *e, int64_t expiry)
{
    e->expiry = expiry;
    schedule(l, e, expiry);
}

static void *expire_loop(void *arg)
{
    pthread_setname_np(pthread_self(), "lessor");
    lessor *l = arg;
    pthread_mutex_lock(&l->mu);
    while (!l->stopping) {
        int64_t now = now_ns(l);
        int64_t wake = now + 3600 * NS_PER_SEC;
        if (l->primary && l->heap_n) {
            if (l->heap[0]->due <= now) {
                pthread_mutex_unlock(&l->mu);
                size_t n = lessor_expire(l, EXPIRE_BATCH);
                pthread_mutex_lock(&l->mu);
                if (n < EXPIRE_BATCH)
                    continue;
                wake = now_ns(l) + EXPIRE_PAUSE_NS;
            } else {
                wake = l->heap[0]->due;
            }
        }
        struct timespec ts = {(time_t)(wake / NS_PER_SEC), (long)(wake % NS_PER_SEC)};
        pthread_cond_timedwait(&l->cv, &l->mu, &ts);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

int lessor_start(lessor *l)
{
    if (pthread_create(&l->thread, NULL, expire_loop, l) != 0)
        return -1;
    l->thread_started = true;
    return 0;
}

void lessor_stop(lessor *l)
{
    if (!l->thread_started)
        return;
    pthread_mutex_lock(&l->mu);
    l->stopping = true;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thread, NULL);
    l->thread_started = false;
}

void lessor_free(lessor *l)
{
    if (!l)
        return;
    lessor_stop(l);
    for (size_t i = 0; i < l->cap; i++)
        free(l->slots[i]);
    free(l->slots);
    free(l->heap);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

void lessor_store_changed(void *arg, int64_t id, int64_t ttl)
{
    lessor *l = arg;
    pthread_mutex_lock(&l->mu);
    lease *e = table_get(l, id);
    if (ttl == 0) {
        if (e) {
            heap_remove(l, e);
            table_del(l, id);
            free(e);
        }
    } else if (!e && (e = calloc(1, sizeof(*e)))) {
        e->id = id;
        e->ttl = ttl;
        e->seq = l->next_seq++;
        e->heap_idx = NOT_IN_HEAP;
        e->expiry = FOREVER;
        if (table_put(l, e) != 0)
            free(e);
        else if (l->primary)
            refresh(l, e, add_sat(now_ns(l), ttl_ns(ttl)));
    }
    pthread_mutex_unlock(&l->mu);
}

static int by_expiry(const void *a, const void *b)
{
    const lease *x = *(lease *const *)a, *y = *(lease *const *)b;
    return expires_before(x, y) ? -1 : expires_before(y, x) ? 1 : 0;
}

/* After a promotion every lease's expiry moved to now + extend + TTL, so
 * leases granted close together would all expire in the same second. Like
 * etcd 3.4 (from PROMOTE_SPREAD_MIN leases on), walk them by expiry and push
 * those beyond PROMOTE_SPREAD_RATE in one one-second window into later
 * windows, so expiries stay under the revoke rate. */
static void spread_expiries(lessor *l, int64_t now, int64_t extend_ns)
{
    lease **v = malloc(l->count * sizeof *v);
    if (!v)
        return; /* unspread expiries are still correct, only bunched */
    size_t n = 0;
    for (size_t i = 0; i < l->cap; i++)
        if (l->slots[i])
            v[n++] = l->slots[i];
    qsort(v, n, sizeof *v, by_expiry);
    int64_t window = v[0]->expiry - now, window_end = window + NS_PER_SEC, in_window = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t remaining = v[i]->expiry - now;
        if (remaining > window_end) {
            window = remaining;
            window_end = window + NS_PER_SEC;
            in_window = 1;
            continue;
        }
        if (++in_window <= PROMOTE_SPREAD_RATE)
            continue;
        /* Later leases of a window are pushed further; a lease already
         * `remaining - window` into the window needs that much less. */
        int64_t delay = NS_PER_SEC * in_window / PROMOTE_SPREAD_RATE - (remaining - window);
        window_end = window + delay;
        refresh(l, v[i], add_sat(now, add_sat(add_sat(delay, extend_ns), ttl_ns(v[i]->ttl))));
    }
    free(v);
}

void lessor_promote(lessor *l)
{
    pthread_mutex_lock(&l->mu);
    l->primary = true;
    int64_t now = now_ns(l), extend = l->cfg.promote_extend_ms * NS_PER_MS;
    int64_t base = add_sat(now, extend);
    for (size_t i = 0; i < l->cap; i++)
        if (l->slots[i])
            refresh(l, l->slots[i], add_sat(base, ttl_ns(l->slots[i]->ttl)));
    if (l->count >= PROMOTE_SPREAD_MIN)
        spread_expiries(l, now, extend);
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

void lessor_demote(lessor *l)
{
    pthread_mutex_lock(&l->mu);
    l->primary = false;
    for (size_t i = 0; i < l->heap_n; i++) {
        l->heap[i]->heap_idx = NOT_IN_HEAP;
        l->heap[i]->expiry = FOREVER;
    }
    l->heap_n = 0;
    pthread_mutex_unlock(&l->mu);
}

int lessor_is_primary(lessor *l)
{
    pthread_mutex_lock(&l->mu);
    int p = l->primary;
    pthread_mutex_unlock(&l->mu);
    return p;
}

int lessor_renew(lessor *l, int64_t id, int64_t *ttl)
{
    pthread_mutex_lock(&l->mu);
    int rc = LESSOR_NOT_PRIMARY;
    if (l->primary) {
        lease *e = table_get(l, id);
        int64_t now = now_ns(l);
        /* An expired lease is being revoked: etcd answers not found. */
        if (!e || e->expiry <= now) {
            rc = LESSOR_NOT_FOUND;
        } else {
            refresh(l, e, add_sat(now, ttl_ns(e->ttl)));
            *ttl = e->ttl;
            rc = LESSOR_OK;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int lessor_lookup(lessor *l, int64_t id, int64_t *ttl, int64_t *remaining_ns)
{
    pthread_mutex_lock(&l->mu);
    lease *e = table_get(l, id);
    if (e) {
        *ttl = e->ttl;
        *remaining_ns = e->expiry == FOREVER ? FOREVER : e->expiry - now_ns(l);
    }
    pthread_mutex_unlock(&l->mu);
    return e ? LESSOR_OK : LESSOR_NOT_FOUND;
}

int lessor_leases(lessor *l, int64_t **ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    pthread_mutex_lock(&l->mu);
    int rc = 0;
    if (l->count) {
        lease **all = malloc(l->count * sizeof(*all));
        int64_t *out = malloc(l->count * sizeof(*out));
        if (all && out) {
            size_t k = 0;
            for (size_t i = 0; i < l->cap; i++)
                if (l->slots[i])
                    all[k++] = l->slots[i];
            qsort(all, k, sizeof(*all), by_expiry);
            for (size_t i = 0; i < k; i++)
                out[i] = all[i]->id;
            *ids = out;
            *n = k;
            out = NULL;
        } else {
            rc = -1;
        }
        free(all);
        free(out);
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

size_t lessor_expire(lessor *l, size_t limit)
{
    int64_t batch[EXPIRE_BATCH];
    size_t total = 0;
    while (total < limit) {
        size_t n = 0;
        pthread_mutex_lock(&l->mu);
        int64_t now = now_ns(l);
        while (l->primary && l->heap_n && n < EXPIRE_BATCH && total + n < limit &&
               l->heap[0]->due <= now) {
            lease *e = l->heap[0];
            batch[n++] = e->id;
            /* offered again later if the revoke does not happen */
            schedule(l, e, add_sat(now, l->cfg.retry_ms * NS_PER_MS));
        }
        pthread_mutex_unlock(&l->mu);
        for (size_t i = 0; i < n; i++)
            l->cfg.expired(l->cfg.expired_arg, batch[i]);
        total += n;
        if (n == 0)
            break;
    }
    return total;
}
