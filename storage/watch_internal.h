/*
 * Internals of the watch hub shared by watch*.c; not part of the interface.
 */
#ifndef BALLAST_STORAGE_WATCH_INTERNAL_H
#define BALLAST_STORAGE_WATCH_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mvcc.h"
#include "watch.h"

typedef struct wnode wnode;

enum { W_SYNCED, W_UNSYNCED, W_COMPACTED };

typedef struct watcher {
    watch_stream *s;
    int64_t id;
    struct watcher *id_next;  /* chain in the stream's id table */

    /* What it watches: a single key, or [key, end) (end_len 0 = every key >= key). */
    uint8_t *key;
    size_t key_len;
    uint8_t *end;
    size_t end_len;
    bool is_range;

    bool prev_kv, progress_notify, fragment, no_put, no_delete;
    bool progress_due;  /* no events sent since the last progress tick */

    int state;
    /* Everything in [next, the hub's dispatched revision] has been sent
     * (synced), or the revision it must be caught up from (unsynced). */
    int64_t next;

    wnode *node;        /* its place in the synced or unsynced group */
    size_t node_idx;

    /* The response being built (encoded Event fields) during one dispatch. */
    mvcc_buf pend;
    size_t pend_n;
    bool touched;
    bool in_scan;
    /* During a sync step: the revision whose events it is taking, and the
     * revision it stopped at because the step's bytes for its stream (or
     * for all streams) were used (0: none). */
    int64_t scan_rev, scan_stop;
    bool pend_failed;   /* out of memory while building: read it again later */
} watcher;

/* Watchers indexed for matching: a hash of distinct single keys and
 * distinct ranges; ranges also sorted by start key for stabbing. */
typedef struct wgroup {
    wnode **buckets;
    size_t nbuckets, nnodes;
    wnode **ranges;
    size_t nranges, rcap;
    size_t count;
} wgroup;

typedef void (*wgroup_visit)(void *arg, watcher *w);

int wgroup_add(wgroup *g, watcher *w);
void wgroup_remove(wgroup *g, watcher *w);
/* Visits every watcher whose key or range holds `key`. fn must not change
 * the group. */
void wgroup_match(wgroup *g, const uint8_t *key, size_t n, wgroup_visit fn, void *arg);
/* Visits every watcher; fn must not change the group. */
void wgroup_each(wgroup *g, wgroup_visit fn, void *arg);
void wgroup_free(wgroup *g);

#endif
