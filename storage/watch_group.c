/*
 * Matching events to watchers. Watchers of the same key (or the same range)
 * share one node; single-key nodes are found by hashing the event's key,
 * range nodes by a walk over the ranges whose start is <= the key (sorted
 * by start, found by binary search). A thousand watchers on one key cost
 * one hash lookup per event, not a thousand compares.
 */
#include <stdlib.h>
#include <string.h>

#include "watch_internal.h"

struct wnode {
    wnode *hnext;
    uint64_t hash;
    bool is_range;
    uint8_t *key;
    size_t key_len;
    uint8_t *end;
    size_t end_len;
    watcher **ws;
    size_t n, cap;
};

static int bcmp_keys(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    size_t n = an < bn ? an : bn;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c < 0 ? -1 : 1;
    return an < bn ? -1 : an > bn;
}

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t node_hash(bool is_range, const uint8_t *key, size_t kn, const uint8_t *end,
                          size_t en)
{
    uint64_t h = fnv(14695981039346656037ull, key, kn);
    if (is_range) {
        uint8_t sep[9] = {0xff};
        memcpy(sep + 1, &kn, sizeof(kn) < 8 ? sizeof(kn) : 8);
        h = fnv(h, sep, sizeof(sep));
        h = fnv(h, end, en);
    }
    return h;
}

static bool node_is(const wnode *n, uint64_t h, bool is_range, const uint8_t *key, size_t kn,
                    const uint8_t *end, size_t en)
{
    return n->hash == h && n->is_range == is_range && n->key_len == kn &&
           (kn == 0 || memcmp(n->key, key, kn) == 0) &&
           (!is_range || (n->end_len == en && (en == 0 || memcmp(n->end, end, en) == 0)));
}

static wnode *node_find(wgroup *g, uint64_t h, bool is_range, const uint8_t *key, size_t kn,
                        const uint8_t *end, size_t en)
{
    if (!g->nbuckets)
        return NULL;
    for (wnode *n = g->buckets[h & (g->nbuckets - 1)]; n; n = n->hnext)
        if (node_is(n, h, is_range, key, kn, end, en))
            return n;
    return NULL;
}

static int rehash(wgroup *g)
{
    size_t nb = g->nbuckets ? 2 * g->nbuckets : 64;
    wnode **b = calloc(nb, sizeof(*b));
    if (!b)
        return -1;
    for (size_t i = 0; i < g->nbuckets; i++) {
        wnode *n = g->buckets[i];
        while (n) {
            wnode *next = n->hnext;
            n->hnext = b[n->hash & (nb - 1)];
            b[n->hash & (nb - 1)] = n;
            n = next;
        }
    }
    free(g->buckets);
    g->buckets = b;
    g->nbuckets = nb;
    return 0;
}

static int range_cmp(const wnode *a, const wnode *b)
{
    int c = bcmp_keys(a->key, a->key_len, b->key, b->key_len);
    if (c)
        return c;
    /* ">= key" (empty end) sorts after every bounded end. */
    if (a->end_len == 0 || b->end_len == 0)
        return (a->end_len == 0) - (b->end_len == 0);
    return bcmp_keys(a->end, a->end_len, b->end, b->end_len);
}

static size_t range_lower(wgroup *g, const wnode *x)
{
    size_t lo = 0, hi = g->nranges;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (range_cmp(g->ranges[mid], x) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void node_free(wnode *n)
{
    free(n->key);
    free(n->end);
    free(n->ws);
    free(n);
}

static wnode *node_new(watcher *w, uint64_t h)
{
    wnode *n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    n->hash = h;
    n->is_range = w->is_range;
    n->key_len = w->key_len;
    n->end_len = w->end_len;
    n->key = malloc(w->key_len ? w->key_len : 1);
    n->end = malloc(w->end_len ? w->end_len : 1);
    n->ws = malloc(4 * sizeof(*n->ws));
    n->cap = 4;
    if (!n->key || !n->end || !n->ws) {
        node_free(n);
        return NULL;
    }
    memcpy(n->key, w->key, w->key_len);
    if (w->end_len)
        memcpy(n->end, w->end, w->end_len);
    return n;
}

int wgroup_add(wgroup *g, watcher *w)
{
    uint64_t h = node_hash(w->is_range, w->key, w->key_len, w->end, w->end_len);
    wnode *n = node_find(g, h, w->is_range, w->key, w->key_len, w->end, w->end_len);
    if (!n) {
        if (g->nnodes >= g->nbuckets && rehash(g))
            return -1;
        n = node_new(w, h);
        if (!n)
            return -1;
        if (n->is_range) {
            if (g->nranges == g->rcap) {
                size_t cap = g->rcap ? 2 * g->rcap : 16;
                wnode **r = realloc(g->ranges, cap * sizeof(*r));
                if (!r) {
                    node_free(n);
                    return -1;
                }
                g->ranges = r;
                g->rcap = cap;
            }
            size_t at = range_lower(g, n);
            memmove(g->ranges + at + 1, g->ranges + at, (g->nranges - at) * sizeof(*g->ranges));
            g->ranges[at] = n;
            g->nranges++;
        }
        n->hnext = g->buckets[h & (g->nbuckets - 1)];
        g->buckets[h & (g->nbuckets - 1)] = n;
        g->nnodes++;
    }
    if (n->n == n->cap) {
        size_t cap = n->cap ? 2 * n->cap : 4;
        watcher **ws = realloc(n->ws, cap * sizeof(*ws));
        if (!ws)
            return -1; /* the node is not new: a new one has room */
        n->ws = ws;
        n->cap = cap;
    }
    w->node = n;
    w->node_idx = n->n;
    n->ws[n->n++] = w;
    g->count++;
    return 0;
}

void wgroup_remove(wgroup *g, watcher *w)
{
    wnode *n = w->node;
    if (!n)
        return;
    size_t i = w->node_idx;
    n->ws[i] = n->ws[--n->n];
    n->ws[i]->node_idx = i;
    w->node = NULL;
    g->count--;
    if (n->n)
        return;
    wnode **pp = &g->buckets[n->hash & (g->nbuckets - 1)];
    while (*pp != n)
        pp = &(*pp)->hnext;
    *pp = n->hnext;
    g->nnodes--;
    if (n->is_range) {
        size_t at = range_lower(g, n);
        while (g->ranges[at] != n)
            at++;
        memmove(g->ranges + at, g->ranges + at + 1, (g->nranges - at - 1) * sizeof(*g->ranges));
        g->nranges--;
    }
    node_free(n);
}

void wgroup_match(wgroup *g, const uint8_t *key, size_t kn, wgroup_visit fn, void *arg)
{
    if (!g->count)
        return;
    uint64_t h = node_hash(false, key, kn, NULL, 0);
    wnode *n = node_find(g, h, false, key, kn, NULL, 0);
    if (n)
        for (size_t i = 0; i < n->n; i++)
            fn(arg, n->ws[i]);
    /* ranges starting at or before key */
    size_t lo = 0, hi = g->nranges;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const wnode *r = g->ranges[mid];
        if (bcmp_keys(r->key, r->key_len, key, kn) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = 0; i < lo; i++) {
        const wnode *r = g->ranges[i];
        if (r->end_len && bcmp_keys(key, kn, r->end, r->end_len) >= 0)
            continue;
        for (size_t j = 0; j < r->n; j++)
            fn(arg, r->ws[j]);
    }
}

void wgroup_each(wgroup *g, wgroup_visit fn, void *arg)
{
    for (size_t i = 0; i < g->nbuckets; i++)
        for (wnode *n = g->buckets[i]; n; n = n->hnext)
            for (size_t j = 0; j < n->n; j++)
                fn(arg, n->ws[j]);
}

void wgroup_free(wgroup *g)
{
    for (size_t i = 0; i < g->nbuckets; i++) {
        wnode *n = g->buckets[i];
        while (n) {
            wnode *next = n->hnext;
            node_free(n);
            n = next;
        }
    }
    free(g->buckets);
    free(g->ranges);
    memset(g, 0, sizeof(*g));
}
