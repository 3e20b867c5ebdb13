/*
 * watch — etcd's Watch service behind a stream-agnostic interface.
 *
 * The hub owns every watcher of every watch stream and speaks etcd's watch
 * protocol: it takes decoded WatchRequests (create / cancel / progress) and
 * produces encoded WatchResponses (created, canceled, events, compaction,
 * progress, fragments) exactly as etcd 3.4.23 does. It knows nothing of gRPC:
 * the server gives each stream a set of callbacks (watch_stream_ops).
 *
 * Events come from mvcc_apply (through the store's event hook) in revision
 * order. Watchers are "synced" (they get events as they are applied) or
 * "unsynced" (behind: they catch up from the store's history, like etcd's
 * unsynced group), so a slow stream never slows apply, writers or other
 * streams, and memory stays bounded: a stream whose backlog is over the
 * limit has its watchers moved aside and fed from storage later.
 *
 * Threads: the hub runs its own thread. watch_hub_* and watch_stream_*
 * calls are thread-safe and return at once (the work is queued). The
 * callbacks of a stream's ops are called on the hub thread only.
 */
#ifndef BALLAST_STORAGE_WATCH_H
#define BALLAST_STORAGE_WATCH_H

#include <stddef.h>
#include <stdint.h>

#include "mvcc.h"
#include "rpc.pb-c.h"

typedef struct watch_hub watch_hub;
typedef struct watch_stream watch_stream;

typedef struct watch_stream_ops {
    /* Queues one encoded WatchResponse to the client. Returns 0, or -1 when
     * the stream can take nothing more (closed). */
    int (*send)(void *ctx, const uint8_t *msg, size_t len);
    /* Bytes queued to the client and not yet sent. */
    size_t (*backlog)(void *ctx);
    /* Called once after watch_stream_close(): the hub will not use ctx again. */
    void (*released)(void *ctx);
} watch_stream_ops;

typedef struct watch_hub_config {
    mvcc *store;
    /* Fills the cluster_id, member_id and raft_term of a response header. */
    void (*header)(void *arg, mvcc_header *out);
    void *header_arg;
    uint64_t max_request_bytes;     /* fragmenting threshold (etcd: --max-request-bytes;
                                     * like etcd, responses are cut at this + 512 KiB;
                                     * 0 = 1.5 MiB) */
    size_t stream_backlog_limit;    /* bytes queued on a stream before its watchers are moved aside */
    uint64_t progress_interval_ms;  /* progress notifications (etcd default 10 min) */
    /* Added: bytes of events queued from apply before the queue is dropped
     * and every synced watcher catches up from storage (0 = 64 MiB). */
    size_t event_queue_limit;
    /* Added: event bytes a sync step builds for one stream's watchers
     * before they stop at a revision and go on in a later step; all
     * streams together get 4 times that (0 = 4 MiB). */
    size_t sync_stream_bytes;
} watch_hub_config;

/* Starts the hub thread and registers the hub as the store's event hook.
 * Returns NULL with *errmsg (malloc'd) on failure. */
watch_hub *watch_hub_start(const watch_hub_config *cfg, char **errmsg);
/* Stops the thread; streams still open are released (ops->released). Call
 * once apply has stopped (the raft node is stopped: the hook must not be
 * running) and before mvcc_close(). */
void watch_hub_stop(watch_hub *h);

/* The store's contents were replaced by another member's (a snapshot
 * install): revisions [from, to] were never applied here as events, so
 * every synced watcher catches up on them from the store's history. Call it
 * on the apply thread, after the store was replaced. */
void watch_hub_store_replaced(watch_hub *h, int64_t from, int64_t to);

/* A new watch stream. */
watch_stream *watch_stream_open(watch_hub *h, const watch_stream_ops *ops, void *ctx);
/* One request received on the stream (the hub copies what it needs). */
void watch_stream_request(watch_stream *s, const Etcdserverpb__WatchRequest *req);
/* The client went away or the stream ended: its watchers are removed, then
 * ops->released(ctx) is called. The stream must not be used afterwards. */
void watch_stream_close(watch_stream *s);

typedef struct watch_hub_stats {
    uint64_t streams;
    uint64_t synced_watchers;
    uint64_t unsynced_watchers;
    uint64_t events_total;   /* events delivered to watchers */
    uint64_t pending_events; /* events queued from apply, not yet dispatched */
    uint64_t queue_drops;    /* added: times the queue overflowed and was dropped */
    uint64_t revisions_skipped; /* added: applied while nobody watched, events not copied */
    uint64_t sync_held_max;  /* most event bytes one sync step built for its watchers at once */
} watch_hub_stats;

void watch_hub_get_stats(watch_hub *h, watch_hub_stats *out);

#endif
