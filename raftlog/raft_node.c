#include "raft_node.h"
#include "peer_transport.h"
#include "segment_check.h"
#include "aio_reaper.h"
#include "raft_crc.h"
#include "segment_prefill.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#define TICK_MS 50
/* Entries between two snapshots at most, and entries kept after one. */
#define SNAPSHOT_THRESHOLD_MIN 128
#define SNAPSHOT_THRESHOLD_START 512
#define SNAPSHOT_THRESHOLD_MAX 8192
#define SNAPSHOT_TRAILING 128
/* Bytes of entries c-raft may hold in memory between two snapshots: the
 * threshold follows the entries' mean size (adapt_snapshot_threshold). */
#define SNAPSHOT_LOG_BUDGET (32u << 20)
#define SNAPSHOT_MAGIC 0x31504e5354534c42ull /* "BLSTSNP1": applied index */
#define SNAPSHOT_MAGIC2 0x32504e5354534c42ull /* "BLSTSNP2": + members' client URLs */
#define SNAPSHOT_MAX_URLS 64
/* help_lagging_peers: bytes stuck in a follower's connection; how long its
 * match index may stand still while it rejects probes; the least time between
 * two interventions for one follower. */
#define UNCLOG_MIN_BYTES (256u * 1024u)
#define PROBE_STALL_MS 1000u
#define UNCLOG_INTERVAL_MS 5000u
/* c-raft's progress states (src/progress.h; not in its public header). */
#define CRAFT_PROGRESS_PROBE 0

static const char ERR_NO_LEADER[] = "etcdserver: no leader";
static const char ERR_LEADER_CHANGED[] = "etcdserver: leader changed";
static const char ERR_STOPPED[] = "etcdserver: server stopped";
static const char ERR_CANCELLED[] = "etcdserver: request cancelled";
static const char ERR_TIMEOUT[] = "etcdserver: request timed out";
static const char ERR_TIMEOUT_LEADER_FAIL[] =
    "etcdserver: request timed out, possibly due to previous leader failure";
/* How long a membership change that failed waits before it is tried again. */
#define CHANGE_RETRY_MS 1000
/* How long reads wait before asking the leader again after a failed ask. */
#define REMOTE_RETRY_MS 50

/* A proposed entry waiting for its apply callback, or, once leadership was
 * lost with it in the log, for the apply of its index (an orphan). */
typedef struct proposal {
    struct raft_apply req;
    raft_node *node;
    void **ctxs;
    size_t n_ops;
    uint64_t term;        /* the term it was appended in */
    uint64_t deadline_ms; /* an orphan gives up then (now_ms) */
    struct proposal *next; /* in the orphan list */
} proposal;

/* What the FSM's apply hands to the apply callback of the same entry. */
typedef struct apply_results {
    mvcc_result *results;
    size_t n;
} apply_results;

/* A waiting read: its ctx, and when it gives up (ms, now_ms()) or, in the
 * apply wait list, the index it waits for. */
typedef struct read_item {
    void *ctx;
    uint64_t until;
} read_item;

typedef struct ctx_list {
    read_item *items;
    size_t len, cap;
} ctx_list;

/* Work handed to the raft thread by other threads. */
enum { CMD_REMOTE_READ, CMD_TRANSFER };
typedef struct node_cmd {
    struct node_cmd *next;
    int kind;
    int status;
    char *message;
    uint64_t index;
    void *ctx;
} node_cmd;

typedef struct progress_item {
    uint64_t id, match;
    uint64_t last_seen;  /* ms, now_ms(): when the leader last heard from it (on_message) */
    uint64_t last_reset; /* ms: when its connection was last reset (help_lagging_peers) */
    uint64_t match_moved; /* ms: when its match index last changed */
} progress_item;

/* When a message from member `id` last arrived (ms, now_ms()). */
typedef struct heard_item {
    uint64_t id, at;
} heard_item;

struct raft_node {
    raft_node_config cfg;
    char *dir;
    char *address;

    uv_loop_t loop;
    uv_async_t wake;
    uv_check_t check;
    uv_prepare_t prepare; /* answers_flush before the loop polls */
    int prefill_registered; /* segment_prefill */
    uv_timer_t tick;
    uv_poll_t batch_poll;
    int batch_timerfd;
    uint64_t batch_deadline_us;
    peer_transport transport;
    struct raft_io io;
    /* raft_uv's start and the receive callback c-raft gives it: start_io
     * puts on_message between them, which notes when each member was last
     * heard from before c-raft takes the message. */
    int (*io_start)(struct raft_io *, unsigned, raft_io_tick_cb, raft_io_recv_cb);
    raft_io_recv_cb raft_recv;
    /* raft_uv's append and close: append_io and close_io wrap them so that
     * a finished log write's callbacks (and with them commit and apply) run
     * in the loop's check step, after raft_uv has started the next write
     * (see append_io). Raft thread only. */
    int (*io_append)(struct raft_io *, struct raft_io_append *, const struct raft_entry[], unsigned,
                     raft_io_append_cb);
    void (*io_close)(struct raft_io *, raft_io_close_cb);
    struct append_wait *appends, *appends_tail; /* in the order given to raft_uv */
    /* A follower's entries that c-raft applied while fire_appends handed it
     * the finished writes: the store applies them once the loop has
     * returned, after c-raft has sent its acknowledgements (see
     * fire_appends). Raft thread only. */
    struct deferred_entry *deferred;
    size_t n_deferred, deferred_cap;
    int deferring;
    heard_item *heard; /* raft thread */
    size_t n_heard, heard_cap;
    struct raft_fsm fsm;
    struct raft raft;
    pthread_t thread;
    int thread_started;

    batch_proposer *bp;
    unsigned in_flight;

    /* Apply scratch, reused for every entry. */
    entry_arena arena;
    mvcc_buf out;
    mvcc_result *results;
    size_t results_cap;
    apply_results cur;

    /* Reads and commands handed over by other threads (guarded by mu), and
     * the leader's replication progress per member. */
    pthread_mutex_t mu;
    ctx_list read_queue;
    node_cmd *cmds, *cmds_tail;
    progress_item *progress;
    uint64_t entry_bytes_avg;  /* raft thread: see fsm_apply */
    unsigned snapshot_cap;     /* --snapshot-count, at most SNAPSHOT_THRESHOLD_MAX */
    size_t n_progress, progress_cap;
    int stopping;
    int loop_done; /* the loop no longer takes commands */
    int closing; /* raft thread: raft_close called */

    /* Raft-thread read state. */
    ctx_list read_pending;  /* waiting for the next barrier */
    ctx_list read_barrier;  /* waiting for the barrier in flight */
    struct raft_barrier barrier;
    int barrier_in_flight;
    uint64_t barrier_term;
    uint64_t ready_term;    /* a barrier of this term has been applied */
    /* c-raft tells followers the commit index only with the next append or
     * heartbeat: when the pipeline goes idle after applying proposals, a
     * barrier carries it at once (a follower that forwarded a write waits
     * for its own apply of it). */
    struct raft_barrier commit_barrier;
    int commit_barrier_in_flight;
    int commit_unpropagated;
    ctx_list read_remote;   /* waiting for the leader's read index */
    int remote_in_flight;
    uint64_t remote_retry_at;
    ctx_list read_applied;  /* waiting until `until` (an index) is applied */
    uint64_t no_leader_since; /* ms; 0 while a leader is known */
    const char *drain_message; /* why queued proposals are being failed */
    uint64_t request_timeout_ms;
    uint64_t synced_gen, synced_term; /* configuration matched the members then */

    /* Membership: the leader makes c-raft's configuration follow the
     * store's member list, one change at a time. */
    struct raft_change change;
    int change_in_flight;
    uint64_t change_retry_at;
    struct raft_transfer transfer;
    void *transfer_ctx;
    int transfer_in_flight;

    /* Published status (atomics). */
    uint64_t st_term, st_leader, st_commit, st_applied, st_last;
    int st_is_leader;
    int st_is_learner;
    uint64_t st_leader_silent;
    int st_fast_reads; /* sole voter, leader and ready: reads need no barrier */

    /* What leader_change was last told, and for which term. */
    int leading;
    uint64_t leading_term;

    /* Proposals whose leader stepped down before they were committed, in
     * index order: the entry may still be committed by the next leader, so
     * they wait for their index to be applied (see settle_orphans). */
    proposal *orphans, *orphans_tail;
    /* When this member last saw a new leader (leader or term changed), ms */
    uint64_t seen_leader, seen_leader_term, leader_elected_ms;
};

static void logf_(const char *level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ballast %s raft: ", level);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint64_t now_ms(void)
{
    return batch_now_us() / 1000u;
}

static int ctx_list_push(ctx_list *l, void *ctx, uint64_t until)
{
    if (l->len == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        read_item *items = realloc(l->items, cap * sizeof *items);
        if (!items)
            return -1;
        l->items = items;
        l->cap = cap;
    }
    l->items[l->len++] = (read_item){ctx, until};
    return 0;
}

static void ctx_list_append(ctx_list *dst, ctx_list *src)
{
    for (size_t i = 0; i < src->len; i++)
        if (ctx_list_push(dst, src->items[i].ctx, src->items[i].until) != 0)
            abort(); /* cannot lose a waiting read */
    src->len = 0;
}

static void publish(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static uint64_t load(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

/* ---- failing waiters ---- */

static void fail_op(raft_node *n, void *ctx, const char *message)
{
    mvcc_result res = {MVCC_STATUS_UNAVAILABLE, message, 0, 0};
    n->cfg.op_done(ctx, &res, NULL, n->cfg.cb_arg);
}

static void fail_drained_op(void *ctx, void *arg)
{
    raft_node *n = arg;
    fail_op(n, ctx, n->stopping ? ERR_STOPPED : n->drain_message);
}

static void fail_reads(raft_node *n, ctx_list *l, const char *message)
{
    for (size_t i = 0; i < l->len; i++)
        n->cfg.read_done(l->items[i].ctx, MVCC_STATUS_UNAVAILABLE, message, n->cfg.cb_arg);
    l->len = 0;
}

/* Fails the reads of `l` whose time is up (until <= now). */
static void expire_reads(raft_node *n, ctx_list *l, uint64_t now, const char *message)
{
    size_t keep = 0;
    for (size_t i = 0; i < l->len; i++) {
        if (l->items[i].until <= now)
            n->cfg.read_done(l->items[i].ctx, MVCC_STATUS_UNAVAILABLE, message, n->cfg.cb_arg);
        else
            l->items[keep++] = l->items[i];
    }
    l->len = keep;
}

typedef struct deferred_entry {
    uint64_t index;
    const void *base; /* c-raft's log holds the entry (see fire_appends) */
    size_t len;
} deferred_entry;

/* The index the store has applied through: c-raft's, less the entries
 * whose apply is deferred. */
static uint64_t applied_index(raft_node *n)
{
    return n->n_deferred ? n->deferred[0].index - 1 : raft_last_applied(&n->raft);
}

/* Answers the reads waiting for an index that is now applied. */
static void release_applied(raft_node *n)
{
    if (n->read_applied.len == 0)
        return;
    uint64_t applied = applied_index(n);
    size_t keep = 0;
    for (size_t i = 0; i < n->read_applied.len; i++) {
        read_item it = n->read_applied.items[i];
        if (it.until <= applied)
            n->cfg.read_done(it.ctx, 0, NULL, n->cfg.cb_arg);
        else
            n->read_applied.items[keep++] = it;
    }
    n->read_applied.len = keep;
}

/* ---- FSM ---- */

/* The term of the log entry at `index`, or 0 when c-raft's in-memory log
 * (struct raft_log in raft.h: a ring of entries, the first at offset + 1)
 * does not hold it. An entry being applied is always there. */
static uint64_t entry_term(const raft_node *n, uint64_t index)
{
    const struct raft_log *l = &n->raft.log;
    if (l->size == 0 || index <= l->offset)
        return 0;
    size_t count = l->back >= l->front ? l->back - l->front : l->size - l->front + l->back;
    uint64_t k = index - l->offset - 1;
    if (k >= count)
        return 0;
    return l->entries[(l->front + k) % l->size].term;
}

static proposal *take_orphan(raft_node *n)
{
    proposal *p = n->orphans;
    n->orphans = p->next;
    if (!n->orphans)
        n->orphans_tail = NULL;
    return p;
}

static void free_proposal(proposal *p)
{
    free(p->ctxs);
    free(p);
}

/* Notes when a new leader (or the same one in a new term) is first seen. */
static void note_leader(raft_node *n, uint64_t leader, uint64_t now)
{
    if (leader != 0 && (leader != n->seen_leader || n->raft.current_term != n->seen_leader_term)) {
        n->seen_leader = leader;
        n->seen_leader_term = n->raft.current_term;
        n->leader_elected_ms = now;
    }
}

/* etcd's answer for a write that waited in vain: "possibly due to previous
 * leader failure" when a leader was elected within two election timeouts
 * after the write began, plain "request timed out" otherwise. */
static const char *orphan_message(raft_node *n, const proposal *p)
{
    raft_id leader = 0;
    const char *addr = NULL;
    raft_leader(&n->raft, &leader, &addr);
    note_leader(n, leader, now_ms());
    uint64_t start = p->deadline_ms - n->request_timeout_ms;
    uint64_t elected = n->leader_elected_ms;
    if (elected && start < elected && start + 2u * (uint64_t)n->cfg.election_ms > elected)
        return ERR_TIMEOUT_LEADER_FAIL;
    return ERR_TIMEOUT;
}

static void fail_proposal(raft_node *n, proposal *p, const char *message)
{
    for (size_t i = 0; i < p->n_ops; i++)
        fail_op(n, p->ctxs[i], message);
    free_proposal(p);
}

/* Index `index` has been applied (r: its results) or, with r NULL, skipped
 * by a snapshot. An orphan at that index whose entry is still the one it
 * appended (same term) gets the results; any other orphan up to `index`
 * lost its entry to another leader's, or cannot know: it fails with the
 * timeout etcd would give it. */
static void settle_orphans(raft_node *n, uint64_t index, const apply_results *r)
{
    while (n->orphans && n->orphans->req.index <= index) {
        proposal *p = take_orphan(n);
        if (r && p->req.index == index && p->n_ops == r->n && entry_term(n, index) == p->term) {
            for (size_t i = 0; i < p->n_ops; i++)
                n->cfg.op_done(p->ctxs[i], &r->results[i], n->out.data, n->cfg.cb_arg);
            free_proposal(p);
        } else {
            fail_proposal(n, p, orphan_message(n, p));
        }
    }
}

/* Orphans wait no longer than the request timeout, as etcd's writes do. */
static void expire_orphans(raft_node *n, uint64_t now)
{
    proposal **link = &n->orphans, *last = NULL;
    while (*link) {
        proposal *p = *link;
        if (p->deadline_ms <= now) {
            *link = p->next;
            fail_proposal(n, p, orphan_message(n, p));
        } else {
            last = p;
            link = &p->next;
        }
    }
    n->orphans_tail = last;
}

/* Applies the raft entry at `index` to the store. */
static int apply_entry(raft_node *n, uint64_t index, const void *base, size_t len)
{
    entry_decoded d;
    entry_arena_reset(&n->arena);
    if (entry_decode(base, len, &n->arena, &d) != 0) {
        /* Never skip an entry: the state would silently diverge. */
        logf_("FATAL", "raft entry %llu (%zu bytes) cannot be decoded; stopping apply",
              (unsigned long long)index, len);
        fflush(stderr);
        _exit(1);
    }
    if (d.n_ops > n->results_cap) {
        mvcc_result *r = realloc(n->results, d.n_ops * sizeof *r);
        if (!r)
            return RAFT_NOMEM;
        n->results = r;
        n->results_cap = d.n_ops;
    }
    uint64_t cluster_id = mvcc_cluster_id(n->cfg.store);
    mvcc_header h = {cluster_id ? cluster_id : n->cfg.cluster_id, n->cfg.id, n->raft.current_term};
    n->out.len = 0;
    if (mvcc_apply(n->cfg.store, index, &h, d.ops, d.n_ops, &n->out, n->results) != 0) {
        const char *why = mvcc_write_error(n->cfg.store);
        logf_("FATAL", "the store failed to apply raft entry %llu%s%s; stopping",
              (unsigned long long)index, *why ? ": " : "", why);
        fflush(stderr);
        _exit(1);
    }
    n->cur.results = n->results;
    n->cur.n = d.n_ops;
    /* mean entry size, for adapt_snapshot_threshold: an exponential
     * average with weight 1/64 */
    n->entry_bytes_avg = n->entry_bytes_avg ? n->entry_bytes_avg - n->entry_bytes_avg / 64 + len / 64
                                            : len;
    if (n->cfg.applied)
        n->cfg.applied(n->cfg.cb_arg, index);
    if (n->orphans)
        settle_orphans(n, index, &n->cur);
    return 0;
}

/* Applies the deferred entries, oldest first. */
static void apply_deferred(raft_node *n)
{
    for (size_t i = 0; i < n->n_deferred; i++) {
        const deferred_entry *e = &n->deferred[i];
        if (apply_entry(n, e->index, e->base, e->len) != 0) {
            logf_("FATAL", "out of memory applying raft entry %llu; stopping",
                  (unsigned long long)e->index);
            fflush(stderr);
            _exit(1);
        }
    }
    n->n_deferred = 0;
}

/* Notes a follower's entry to apply once fire_appends is done; -1 when it
 * cannot (no memory: it is applied now). */
static int defer_entry(raft_node *n, uint64_t index, const struct raft_buffer *buf)
{
    if (n->n_deferred == n->deferred_cap) {
        size_t cap = n->deferred_cap ? 2 * n->deferred_cap : 16;
        deferred_entry *d = realloc(n->deferred, cap * sizeof *d);
        if (!d)
            return -1;
        n->deferred = d;
        n->deferred_cap = cap;
    }
    n->deferred[n->n_deferred++] = (deferred_entry){index, buf->base, buf->len};
    return 0;
}

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    raft_node *n = fsm->data;
    uint64_t index = raft_last_applied(&n->raft) + 1;
    if (n->deferring && n->raft.state == RAFT_FOLLOWER && defer_entry(n, index, buf) == 0) {
        *result = NULL; /* a follower has no request waiting for it */
        return 0;
    }
    apply_deferred(n);
    int rv = apply_entry(n, index, buf->base, buf->len);
    *result = &n->cur;
    return rv;
}

/* A raft snapshot is the store's applied index (the store itself is the
 * state) and the client URL of each member, so that a member that joins
 * with an empty store knows where to fetch the state from. Layout, all
 * 8-byte words: magic, applied index, URL count, then per URL its length
 * and its bytes padded to a multiple of 8. */
static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    raft_node *n = fsm->data;
    /* The store is the snapshot; fsm_snapshot_async makes it durable before
     * c-raft records the snapshot and drops the log before it. The store
     * must hold every entry c-raft counts as applied. */
    apply_deferred(n);
    Ballastpb__Member **members = NULL;
    size_t n_members = 0;
    if (mvcc_members(n->cfg.store, &members, &n_members) != 0)
        n_members = 0;
    size_t len = 24, n_urls = 0;
    for (size_t i = 0; i < n_members && n_urls < SNAPSHOT_MAX_URLS; i++)
        if (members[i]->n_client_urls > 0) {
            len += 8 + ((strlen(members[i]->client_urls[0]) + 7) & ~(size_t)7);
            n_urls++;
        }
    struct raft_buffer *b = raft_malloc(sizeof *b);
    uint8_t *data = raft_malloc(len);
    if (!b || !data) {
        raft_free(b);
        raft_free(data);
        mvcc_members_free(members, n_members);
        return RAFT_NOMEM;
    }
    memset(data, 0, len);
    uint64_t head[3] = {SNAPSHOT_MAGIC2, mvcc_applied_index(n->cfg.store), n_urls};
    memcpy(data, head, sizeof head);
    size_t off = 24, done = 0;
    for (size_t i = 0; i < n_members && done < n_urls; i++) {
        if (members[i]->n_client_urls == 0)
            continue;
        uint64_t ulen = strlen(members[i]->client_urls[0]);
        memcpy(data + off, &ulen, 8);
        memcpy(data + off + 8, members[i]->client_urls[0], ulen);
        off += 8 + ((ulen + 7) & ~(uint64_t)7);
        done++;
    }
    mvcc_members_free(members, n_members);
    b->base = data;
    b->len = len;
    *bufs = b;
    *n_bufs = 1;
    return 0;
}

/* raft_uv (c-raft 0.15) has no async_work, which c-raft needs for
 * asynchronous snapshots: it is added here, on libuv's thread pool. */
typedef struct {
    uv_work_t work;
    struct raft_io_async_work *req;
    raft_io_async_work_cb cb;
    int status;
} async_work;

static void async_work_run(uv_work_t *w)
{
    async_work *a = w->data;
    a->status = a->req->work(a->req);
}

static void async_work_done(uv_work_t *w, int status)
{
    async_work *a = w->data;
    int rv = status == UV_ECANCELED ? RAFT_CANCELED : a->status;
    struct raft_io_async_work *req = a->req;
    raft_io_async_work_cb cb = a->cb;
    free(a);
    cb(req, rv);
}

static int io_async_work(struct raft_io *io, struct raft_io_async_work *req,
                         raft_io_async_work_cb cb)
{
    raft_node *n = (raft_node *)((char *)io - offsetof(raft_node, io));
    async_work *a = calloc(1, sizeof *a);
    if (!a)
        return RAFT_NOMEM;
    a->req = req;
    a->cb = cb;
    a->work.data = a;
    int rv = uv_queue_work(&n->loop, &a->work, async_work_run, async_work_done);
    if (rv != 0) {
        free(a);
        return RAFT_IOERR;
    }
    return 0;
}

/* On a libuv worker thread (fsm version 3): syncing RocksDB's WAL took up
 * to 30 ms on the raft thread, once per snapshot (then every 512 entries at
 * most), which stalled every request in flight: a put at 1 client saw it as
 * a p99 of 12 ms. */
static int fsm_snapshot_async(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    raft_node *n = fsm->data;
    (void)bufs;
    (void)n_bufs;
    return mvcc_sync(n->cfg.store) == 0 ? 0 : RAFT_IOERR;
}

/* With fsm_snapshot_async, the buffers fsm_snapshot made are ours to free. */
static int fsm_snapshot_finalize(struct raft_fsm *fsm, struct raft_buffer *bufs[],
                                 unsigned *n_bufs)
{
    (void)fsm;
    if (*bufs) {
        for (unsigned i = 0; i < *n_bufs; i++)
            raft_free((*bufs)[i].base);
        raft_free(*bufs);
    }
    *bufs = NULL;
    *n_bufs = 0;
    return 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    raft_node *n = fsm->data;
    apply_deferred(n);
    const uint8_t *p = buf->base;
    uint64_t head[3] = {0, 0, 0};
    if (buf->len >= 16)
        memcpy(head, p, buf->len >= 24 ? 24 : 16);
    int v2 = head[0] == SNAPSHOT_MAGIC2 && buf->len >= 24 && head[2] <= SNAPSHOT_MAX_URLS;
    if (!v2 && (buf->len != 16 || head[0] != SNAPSHOT_MAGIC)) {
        logf_("error", "raft snapshot is not a Ballast snapshot");
        return RAFT_MALFORMED;
    }
    uint64_t index = head[1];
    char *urls[SNAPSHOT_MAX_URLS];
    size_t n_urls = 0;
    for (size_t off = 24; v2 && n_urls < head[2] && off + 8 <= buf->len;) {
        uint64_t ulen;
        memcpy(&ulen, p + off, 8);
        if (ulen > buf->len - off - 8)
            break;
        urls[n_urls] = strndup((const char *)p + off + 8, ulen);
        if (!urls[n_urls])
            break;
        n_urls++;
        off += 8 + ((ulen + 7) & ~(uint64_t)7);
    }
    uint64_t applied = mvcc_applied_index(n->cfg.store);
    int rv = 0;
    if (applied < index) {
        /* The snapshot only says how far the sender's store had got: this
         * member is behind it, so it takes a copy of a store that is at
         * least that far (the leader's) in place of its own. */
        raft_id leader = 0;
        const char *addr = NULL;
        raft_leader(&n->raft, &leader, &addr);
        logf_("info", "store is at %llu, behind the raft snapshot at %llu: fetching the store of member %llx",
              (unsigned long long)applied, (unsigned long long)index, (unsigned long long)leader);
        if (!n->cfg.fetch_store ||
            n->cfg.fetch_store(n->cfg.cb_arg, leader, index, (const char *const *)urls, n_urls) != 0 ||
            mvcc_applied_index(n->cfg.store) < index) {
            logf_("error", "could not bring the store to raft index %llu", (unsigned long long)index);
            rv = RAFT_IOERR;
        } else {
            logf_("info", "store installed at applied index %llu",
                  (unsigned long long)mvcc_applied_index(n->cfg.store));
        }
    }
    for (size_t i = 0; i < n_urls; i++)
        free(urls[i]);
    if (rv == 0)
        raft_free(buf->base);
    return rv;
}

/* ---- proposals ---- */

static void flush_answers(raft_node *n)
{
    if (n->cfg.answers_flush)
        n->cfg.answers_flush(n->cfg.cb_arg,
                             n->in_flight == 0 && !n->closing && batch_proposer_queued(n->bp) == 0);
}

static void apply_cb(struct raft_apply *req, int status, void *result)
{
    proposal *p = req->data;
    raft_node *n = p->node;
    n->in_flight--;
    n->commit_unpropagated = 1;
    if (status == 0 && result) {
        apply_results *r = result;
        for (size_t i = 0; i < p->n_ops; i++)
            n->cfg.op_done(p->ctxs[i], &r->results[i], n->out.data, n->cfg.cb_arg);
        flush_answers(n);
    } else if (status == RAFT_LEADERSHIPLOST && !n->closing) {
        /* The entry stays in this member's log and the next leader may
         * still commit it (this member itself, when it is the only voter
         * left): like etcd, the write waits for that, up to its timeout. */
        p->next = NULL;
        if (n->orphans_tail)
            n->orphans_tail->next = p;
        else
            n->orphans = p;
        n->orphans_tail = p;
        return;
    } else {
        const char *msg = status == RAFT_SHUTDOWN ? ERR_STOPPED
                          : status == RAFT_NOSPACE ? ERR_CANCELLED
                                                   : ERR_TIMEOUT;
        for (size_t i = 0; i < p->n_ops; i++)
            fail_op(n, p->ctxs[i], msg);
    }
    free_proposal(p);
}

static void propose(raft_node *n, batch_entry *e)
{
    proposal *p = malloc(sizeof *p);
    if (!p) {
        raft_free(e->buf);
        for (size_t i = 0; i < e->n_ops; i++)
            fail_op(n, e->ctxs[i], ERR_CANCELLED);
        free(e->ctxs);
        return;
    }
    p->req.data = p;
    p->node = n;
    p->ctxs = e->ctxs;
    p->n_ops = e->n_ops;
    struct raft_buffer buf = {e->buf, e->len};
    int rv = raft_apply(&n->raft, &p->req, &buf, 1, apply_cb);
    if (rv != 0) {
        raft_free(e->buf);
        const char *msg = rv == RAFT_NOTLEADER ? ERR_NO_LEADER : ERR_LEADER_CHANGED;
        for (size_t i = 0; i < p->n_ops; i++)
            fail_op(n, p->ctxs[i], msg);
        free(p->ctxs);
        free(p);
        return;
    }
    p->term = n->raft.current_term;
    p->deadline_ms = now_ms() + n->request_timeout_ms;
    n->in_flight++;
}

static void arm_batch_timer(raft_node *n, uint64_t deadline_us)
{
    if (deadline_us == n->batch_deadline_us)
        return;
    n->batch_deadline_us = deadline_us;
    struct itimerspec its = {{0, 0}, {0, 0}};
    if (deadline_us) {
        its.it_value.tv_sec = (time_t)(deadline_us / 1000000u);
        its.it_value.tv_nsec = (long)(deadline_us % 1000000u) * 1000;
    }
    timerfd_settime(n->batch_timerfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static void pump_batches(raft_node *n)
{
    if (n->raft.state != RAFT_LEADER)
        return;
    for (;;) {
        batch_entry e;
        uint64_t deadline;
        int rv = batch_proposer_next(n->bp, batch_now_us(), n->in_flight, raft_malloc, &e, &deadline);
        if (rv == 1) {
            propose(n, &e);
            continue;
        }
        arm_batch_timer(n, rv == 0 ? deadline : batch_now_us() + 1000);
        return;
    }
}

/* ---- reads ---- */

static void barrier_cb(struct raft_barrier *req, int status)
{
    raft_node *n = req->data;
    n->barrier_in_flight = 0;
    if (status == 0) {
        /* a read index served from here must cover the barrier */
        apply_deferred(n);
        publish(&n->st_applied, raft_last_applied(&n->raft));
        if (n->barrier_term > n->ready_term)
            n->ready_term = n->barrier_term;
        for (size_t i = 0; i < n->read_barrier.len; i++)
            n->cfg.read_done(n->read_barrier.items[i].ctx, 0, NULL, n->cfg.cb_arg);
        n->read_barrier.len = 0;
    } else if (status == RAFT_SHUTDOWN) {
        fail_reads(n, &n->read_barrier, ERR_STOPPED);
    } else {
        /* Leadership was lost: the reads wait for the next leader, as
         * etcd's do, until their request timeout. */
        ctx_list_append(&n->read_pending, &n->read_barrier);
    }
}

static void pump_remote_reads(raft_node *n)
{
    if (n->read_pending.len == 0 || n->remote_in_flight || !n->cfg.remote_read ||
        now_ms() < n->remote_retry_at)
        return;
    raft_id leader = 0;
    const char *addr = NULL;
    raft_leader(&n->raft, &leader, &addr);
    if (leader == 0 || leader == n->cfg.id)
        return;
    ctx_list_append(&n->read_remote, &n->read_pending);
    n->remote_in_flight = 1;
    n->cfg.remote_read(n->cfg.cb_arg, leader);
}

static void pump_reads(raft_node *n)
{
    if (n->raft.state != RAFT_LEADER) {
        pump_remote_reads(n);
        return;
    }
    if (n->barrier_in_flight)
        return;
    if (n->read_pending.len == 0 && n->ready_term == n->raft.current_term)
        return;
    ctx_list_append(&n->read_barrier, &n->read_pending);
    n->barrier.data = n;
    n->barrier_term = n->raft.current_term;
    int rv = raft_barrier(&n->raft, &n->barrier, barrier_cb);
    if (rv != 0) {
        ctx_list_append(&n->read_pending, &n->read_barrier);
        return;
    }
    n->barrier_in_flight = 1;
}

/* ---- membership ---- */

/* "host:port" of a peer URL ("http://host:port"); c-raft's TCP transport
 * takes IPv4 dotted quads. Returns 0, or -1 when it has no host:port. */
static int peer_address(const char *url, char *out, size_t cap)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    size_t len = strcspn(p, "/");
    if (len == 0 || len >= cap)
        return -1;
    if (strncmp(p, "localhost:", 10) == 0)
        snprintf(out, cap, "127.0.0.1%.*s", (int)(len - 9), p + 9);
    else
        snprintf(out, cap, "%.*s", (int)len, p);
    return strchr(out, ':') ? 0 : -1;
}

static void change_cb(struct raft_change *req, int status)
{
    raft_node *n = req->data;
    n->change_in_flight = 0;
    n->synced_gen = 0;
    if (status != 0) {
        logf_("warn", "membership change failed: %s; trying again", raft_strerror(status));
        n->change_retry_at = now_ms() + CHANGE_RETRY_MS;
    }
}

static void transfer_cb(struct raft_transfer *req)
{
    raft_node *n = req->data;
    n->transfer_in_flight = 0;
    n->synced_gen = 0;
    raft_id leader = 0;
    const char *addr = NULL;
    raft_leader(&n->raft, &leader, &addr);
    void *ctx = n->transfer_ctx;
    n->transfer_ctx = NULL;
    if (ctx && n->cfg.transfer_done)
        n->cfg.transfer_done(ctx, leader == req->id ? NULL : ERR_TIMEOUT, n->cfg.cb_arg);
}

static void start_transfer(raft_node *n, uint64_t target, void *ctx)
{
    const char *error = NULL;
    if (n->raft.state != RAFT_LEADER) {
        error = "etcdserver: not leader";
    } else if (n->transfer_in_flight) {
        error = ERR_TIMEOUT;
    } else {
        n->transfer.data = n;
        int rv = raft_transfer(&n->raft, &n->transfer, target, transfer_cb);
        if (rv == 0) {
            n->transfer_in_flight = 1;
            n->transfer_ctx = ctx;
            return;
        }
        error = rv == RAFT_BADID || rv == RAFT_NOTFOUND ? "etcdserver: bad leader transferee" : ERR_TIMEOUT;
    }
    if (ctx && n->cfg.transfer_done)
        n->cfg.transfer_done(ctx, error, n->cfg.cb_arg);
}

static const struct raft_server *config_find(const struct raft_configuration *c, uint64_t id)
{
    for (unsigned i = 0; i < c->n; i++)
        if (c->servers[i].id == id)
            return &c->servers[i];
    return NULL;
}

/* True when the store's member list names `id`. */
static int member_listed(Ballastpb__Member **list, size_t cnt, uint64_t id)
{
    for (size_t j = 0; j < cnt; j++)
        if (list[j]->id == id)
            return 1;
    return 0;
}

/* On the leader: makes c-raft's configuration follow the store's member
 * list (the record of MemberAdd/Remove/Promote), one change at a time:
 * first a server no longer listed is removed (a removed member is often a
 * stopped one, and while it stays a voter the quorum still counts it);
 * then a member missing from the configuration is added, then given its
 * role (voter, or standby for a learner: c-raft catches a new voter up
 * before it counts). The leader itself, when no longer listed, hands
 * leadership over last, once the configuration it leaves behind names no
 * other removed server. */
static void reconcile_members(raft_node *n)
{
    if (n->raft.state != RAFT_LEADER || n->change_in_flight || n->transfer_in_flight ||
        now_ms() < n->change_retry_at)
        return;
    uint64_t gen = mvcc_members_generation(n->cfg.store);
    if (n->synced_gen == gen + 1 && n->synced_term == n->raft.current_term)
        return;
    Ballastpb__Member **list;
    size_t cnt;
    if (mvcc_members(n->cfg.store, &list, &cnt) != 0)
        return;
    const struct raft_configuration *c = &n->raft.configuration;
    int rv = 0, acted = 0;
    n->change.data = n;
    for (unsigned i = 0; i < c->n && cnt > 0 && !acted; i++) {
        uint64_t id = c->servers[i].id;
        if (id == n->cfg.id || member_listed(list, cnt, id))
            continue;
        acted = 1;
        logf_("info", "removing member %llx from the raft configuration", (unsigned long long)id);
        rv = raft_remove(&n->raft, &n->change, id, change_cb);
    }
    for (size_t i = 0; i < cnt && cnt > 0 && !acted; i++) {
        const Ballastpb__Member *m = list[i];
        const struct raft_server *srv = config_find(c, m->id);
        int role = m->is_learner ? RAFT_STANDBY : RAFT_VOTER;
        char addr[300];
        if (!srv) {
            if (m->n_peer_urls == 0 || peer_address(m->peer_urls[0], addr, sizeof addr) != 0)
                continue;
            logf_("info", "adding member %llx (%s) to the raft configuration", (unsigned long long)m->id, addr);
            rv = raft_add(&n->raft, &n->change, m->id, addr, change_cb);
            acted = 1;
        } else if (m->n_peer_urls > 0 && peer_address(m->peer_urls[0], addr, sizeof addr) == 0 &&
                   strcmp(addr, srv->address) != 0) {
            /* MemberUpdate moved its peer URL: c-raft has no way to change
             * an address, so the server leaves the configuration and comes
             * back with the new one (and its role) on the next passes. */
            acted = 1;
            if (m->id == n->cfg.id) {
                logf_("info", "this member's peer address changes: handing leadership over");
                start_transfer(n, 0, NULL);
            } else {
                logf_("info", "member %llx moves to %s", (unsigned long long)m->id, addr);
                rv = raft_remove(&n->raft, &n->change, m->id, change_cb);
            }
        } else if (srv->role != role) {
            logf_("info", "member %llx becomes a %s", (unsigned long long)m->id,
                  role == RAFT_VOTER ? "voter" : "learner");
            rv = raft_assign(&n->raft, &n->change, m->id, role, change_cb);
            acted = 1;
        }
    }
    if (cnt > 0 && !acted && !member_listed(list, cnt, n->cfg.id)) {
        acted = 1;
        logf_("info", "this member was removed: handing leadership over");
        start_transfer(n, 0, NULL);
    }
    mvcc_members_free(list, cnt);
    if (!acted && cnt > 0) {
        n->synced_gen = gen + 1;
        n->synced_term = n->raft.current_term;
    } else if (acted && rv == 0 && !n->transfer_in_flight) {
        n->change_in_flight = 1;
    } else if (rv != 0) {
        logf_("warn", "membership change refused: %s", raft_strerror(rv));
        n->change_retry_at = now_ms() + CHANGE_RETRY_MS;
    }
}

/* ---- commands from other threads ---- */

static void run_commands(raft_node *n, node_cmd *cmd)
{
    while (cmd) {
        node_cmd *next = cmd->next;
        switch (cmd->kind) {
        case CMD_REMOTE_READ:
            n->remote_in_flight = 0;
            if (cmd->status == 0) {
                for (size_t i = 0; i < n->read_remote.len; i++)
                    if (ctx_list_push(&n->read_applied, n->read_remote.items[i].ctx, cmd->index) != 0)
                        abort(); /* cannot lose a waiting read */
                n->read_remote.len = 0;
            } else {
                /* reads are safe to ask again: they wait for an answer
                 * until their request timeout */
                ctx_list_append(&n->read_pending, &n->read_remote);
                n->remote_retry_at = now_ms() + REMOTE_RETRY_MS;
            }
            break;
        case CMD_TRANSFER:
            start_transfer(n, cmd->index, cmd->ctx);
            break;
        }
        free(cmd->message);
        free(cmd);
        cmd = next;
    }
    release_applied(n);
}

/* Once the loop is closing: a command is answered "stopped" at once. */
static void answer_stopped(raft_node *n, node_cmd *cmd)
{
    if (cmd->kind == CMD_TRANSFER && cmd->ctx && n->cfg.transfer_done)
        n->cfg.transfer_done(cmd->ctx, ERR_STOPPED, n->cfg.cb_arg);
    free(cmd->message);
    free(cmd);
}

static void push_command(raft_node *n, node_cmd *cmd)
{
    pthread_mutex_lock(&n->mu);
    if (n->loop_done) {
        pthread_mutex_unlock(&n->mu);
        answer_stopped(n, cmd);
        return;
    }
    if (n->cmds_tail)
        n->cmds_tail->next = cmd;
    else
        n->cmds = cmd;
    n->cmds_tail = cmd;
    pthread_mutex_unlock(&n->mu);
    uv_async_send(&n->wake);
}

static int sole_voter(raft_node *n)
{
    struct raft_configuration *c = &n->raft.configuration;
    unsigned voters = 0, me = 0;
    for (unsigned i = 0; i < c->n; i++) {
        if (c->servers[i].role != RAFT_VOTER)
            continue;
        voters++;
        if (c->servers[i].id == n->cfg.id)
            me = 1;
    }
    return voters == 1 && me;
}

static void commit_barrier_cb(struct raft_barrier *req, int status)
{
    (void)status;
    raft_node *n = req->data;
    n->commit_barrier_in_flight = 0;
}

static void propagate_commit(raft_node *n)
{
    if (!n->commit_unpropagated || n->in_flight || n->commit_barrier_in_flight || n->barrier_in_flight ||
        n->raft.state != RAFT_LEADER || sole_voter(n))
        return;
    n->commit_unpropagated = 0;
    n->commit_barrier.data = n;
    if (raft_barrier(&n->raft, &n->commit_barrier, commit_barrier_cb) == 0)
        n->commit_barrier_in_flight = 1;
}

/* ---- loop callbacks ---- */

/* Runs on every pass of the loop; tells leader_change only of changes. A
 * new term while still leading is a stop and a start. */
static void report_leadership(raft_node *n, int leading)
{
    uint64_t term = n->raft.current_term;
    if (n->leading && (!leading || n->leading_term != term)) {
        n->leading = 0;
        logf_("info", "this member no longer leads (it led in term %llu)",
              (unsigned long long)n->leading_term);
        if (n->cfg.leader_change)
            n->cfg.leader_change(n->cfg.cb_arg, 0);
    }
    if (leading && !n->leading) {
        n->leading = 1;
        n->leading_term = term;
        if (n->raft.configuration.n > 1)
            logf_("info", "this member leads in term %llu", (unsigned long long)term);
        if (n->cfg.leader_change)
            n->cfg.leader_change(n->cfg.cb_arg, 1);
    }
}

static heard_item *heard_find(const raft_node *n, uint64_t id)
{
    for (size_t i = 0; i < n->n_heard; i++)
        if (n->heard[i].id == id)
            return &n->heard[i];
    return NULL;
}

/* When member id was last heard from (0: not since this member started). */
static uint64_t heard_at(const raft_node *n, uint64_t id)
{
    const heard_item *h = heard_find(n, id);
    return h ? h->at : 0;
}

/* Every message c-raft receives passes here first. c-raft's own "recent
 * contact" flag stays set until its next election-timeout check, so a
 * member stopped just after a message would still count as heard for up
 * to an election timeout; the time of arrival does not. */
static void on_message(struct raft_io *io, struct raft_message *msg)
{
    raft_node *n = (raft_node *)((char *)io - offsetof(raft_node, io));
    uint64_t now = now_ms();
    heard_item *known = heard_find(n, msg->server_id);
    if (known) {
        known->at = now;
    } else if (config_find(&n->raft.configuration, msg->server_id)) {
        /* only members: a stranger's messages cannot grow the list */
        if (n->n_heard == n->heard_cap) {
            size_t cap = n->heard_cap ? 2 * n->heard_cap : 8;
            heard_item *h = realloc(n->heard, cap * sizeof *h);
            if (h) {
                n->heard = h;
                n->heard_cap = cap;
            }
        }
        if (n->n_heard < n->heard_cap) /* else it is not heard: refusals err safe */
            n->heard[n->n_heard++] = (heard_item){msg->server_id, now};
    }
    n->raft_recv(io, msg);
}

static int start_io(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick, raft_io_recv_cb recv)
{
    raft_node *n = (raft_node *)((char *)io - offsetof(raft_node, io));
    n->raft_recv = recv;
    return n->io_start(io, msecs, tick, on_message);
}

/* One log write c-raft asked for: its own callback and user data, kept
 * while raft_uv holds the request with append_io's. */
typedef struct append_wait {
    struct append_wait *next;
    raft_node *n;
    struct raft_io_append *req;
    raft_io_append_cb cb;
    void *data;
    int status;
    int written;
} append_wait;

/* Hands c-raft the results of the writes raft_uv has finished, oldest
 * first, as raft_uv would have. One still being written holds back those
 * after it (raft_uv finishes them in order anyway).
 *
 * A follower's write callback in c-raft applies the entries the leader has
 * said are committed and only then acknowledges the write, so the leader's
 * commit of the next entries waited for this member's apply of earlier
 * ones. Here the entries a follower applies are noted instead (fsm_apply),
 * the acknowledgements go out, and then the store applies them, before
 * anything else runs on this thread: nothing sees c-raft's applied index
 * run ahead of the store (a snapshot or a barrier applies them first), and
 * the entries stay in c-raft's in-memory log meanwhile (only a snapshot,
 * which applies them first, or an InstallSnapshot, which comes in another
 * loop step, drops entries that are applied). */
static void fire_appends(raft_node *n)
{
    n->deferring = 1;
    while (n->appends && n->appends->written) {
        append_wait *w = n->appends;
        n->appends = w->next;
        if (!n->appends)
            n->appends_tail = NULL;
        struct raft_io_append *req = w->req;
        raft_io_append_cb cb = w->cb;
        int status = w->status;
        req->data = w->data;
        req->cb = cb;
        free(w);
        cb(req, status);
    }
    n->deferring = 0;
    apply_deferred(n);
}

static void on_appended(struct raft_io_append *req, int status)
{
    append_wait *w = req->data;
    w->written = 1;
    w->status = status;
    if (w->n->closing)
        fire_appends(w->n);
}

/* raft_uv runs a finished write's callbacks, and with them c-raft's commit
 * and the apply of the entries written, before it starts the next write,
 * which holds whatever was appended meanwhile: the disk waited for apply
 * and apply for the disk. Here raft_uv's callback only notes the write; it
 * then starts the next one at once, and the check step that follows in the
 * same loop iteration hands c-raft the results (on_check). c-raft sees a
 * disk that answered a little later. */
static int append_io(struct raft_io *io, struct raft_io_append *req, const struct raft_entry entries[],
                     unsigned cnt, raft_io_append_cb cb)
{
    raft_node *n = (raft_node *)((char *)io - offsetof(raft_node, io));
    if (n->closing)
        return n->io_append(io, req, entries, cnt, cb);
    append_wait *w = malloc(sizeof *w);
    if (!w)
        return RAFT_NOMEM;
    *w = (append_wait){.n = n, .req = req, .cb = cb, .data = req->data};
    req->data = w;
    int rv = n->io_append(io, req, entries, cnt, on_appended);
    if (rv != 0) {
        req->data = w->data;
        free(w);
        return rv;
    }
    if (n->appends_tail)
        n->appends_tail->next = w;
    else
        n->appends = w;
    n->appends_tail = w;
    return 0;
}

/* c-raft closes raft_uv when it closes (on_wake sets `closing` first): the
 * writes already finished are answered first, and those raft_uv finishes
 * (or cancels) while it closes at once. */
static void close_io(struct raft_io *io, raft_io_close_cb cb)
{
    raft_node *n = (raft_node *)((char *)io - offsetof(raft_node, io));
    fire_appends(n);
    n->io_close(io, cb);
}

static void publish_status(raft_node *n)
{
    raft_id leader = 0;
    const char *addr = NULL;
    raft_leader(&n->raft, &leader, &addr);
    int is_leader = n->raft.state == RAFT_LEADER;
    /* before the status says so, so that whoever sees a ready leader finds
     * its lessor promoted */
    report_leadership(n, is_leader && n->ready_term == n->raft.current_term);
    publish(&n->st_term, n->raft.current_term);
    publish(&n->st_leader, leader);
    publish(&n->st_commit, n->raft.commit_index);
    publish(&n->st_applied, applied_index(n));
    publish(&n->st_last, raft_last_index(&n->raft));
    __atomic_store_n(&n->st_is_leader, is_leader, __ATOMIC_RELEASE);
    const struct raft_server *me = config_find(&n->raft.configuration, n->cfg.id);
    __atomic_store_n(&n->st_is_learner, me && me->role != RAFT_VOTER, __ATOMIC_RELEASE);
    uint64_t silent = 0; /* since the leader's last message (on_message) */
    if (n->raft.state == RAFT_FOLLOWER && leader != 0) {
        uint64_t heard = heard_at(n, leader), now = now_ms();
        silent = heard != 0 && now > heard ? now - heard : 0;
    }
    publish(&n->st_leader_silent, silent);
    if (is_leader && n->raft.leader_state.progress) {
        pthread_mutex_lock(&n->mu);
        unsigned cnt = n->raft.configuration.n;
        if (cnt > n->progress_cap) {
            progress_item *p = realloc(n->progress, cnt * sizeof *p);
            if (p) {
                n->progress = p;
                n->progress_cap = cnt;
            }
        }
        uint64_t now = now_ms();
        size_t had = n->n_progress;
        n->n_progress = cnt <= n->progress_cap ? cnt : 0;
        for (size_t i = 0; i < n->n_progress; i++) {
            uint64_t id = n->raft.configuration.servers[i].id;
            uint64_t match = n->raft.leader_state.progress[i].match_index;
            uint64_t seen = 0, reset = 0, moved = now;
            for (size_t j = 0; j < had; j++)
                if (n->progress[j].id == id) {
                    seen = n->progress[j].last_seen;
                    reset = n->progress[j].last_reset;
                    if (n->progress[j].match == match)
                        moved = n->progress[j].match_moved;
                }
            uint64_t heard = id == n->cfg.id ? now : heard_at(n, id);
            if (heard > seen)
                seen = heard;
            n->progress[i] = (progress_item){id, match, seen, reset, moved};
        }
        pthread_mutex_unlock(&n->mu);
    }
    int fast = is_leader && n->ready_term == n->raft.current_term && sole_voter(n);
    __atomic_store_n(&n->st_fast_reads, fast, __ATOMIC_RELEASE);
}

static void close_cb(struct raft *r)
{
    raft_node *n = r->data;
    raft_uv_close(&n->io);
    peer_transport_release(&n->transport);
    uv_close((uv_handle_t *)&n->wake, NULL);
    uv_close((uv_handle_t *)&n->check, NULL);
    uv_close((uv_handle_t *)&n->prepare, NULL);
    uv_close((uv_handle_t *)&n->tick, NULL);
    uv_close((uv_handle_t *)&n->batch_poll, NULL);
}

static void on_wake(uv_async_t *h)
{
    raft_node *n = h->data;
    pthread_mutex_lock(&n->mu);
    int stopping = n->stopping;
    ctx_list_append(&n->read_pending, &n->read_queue);
    node_cmd *cmds = n->cmds;
    n->cmds = n->cmds_tail = NULL;
    if (stopping)
        n->loop_done = 1; /* the wake-up handle is about to close */
    pthread_mutex_unlock(&n->mu);
    run_commands(n, cmds);
    if (stopping) {
        if (n->closing)
            return;
        n->closing = 1;
        batch_proposer_drain(n->bp, fail_drained_op, n);
        fail_reads(n, &n->read_pending, ERR_STOPPED);
        fail_reads(n, &n->read_remote, ERR_STOPPED);
        fail_reads(n, &n->read_applied, ERR_STOPPED);
        while (n->orphans)
            fail_proposal(n, take_orphan(n), ERR_STOPPED);
        if (n->transfer_ctx && n->cfg.transfer_done)
            n->cfg.transfer_done(n->transfer_ctx, ERR_STOPPED, n->cfg.cb_arg);
        n->transfer_ctx = NULL;
        uv_timer_stop(&n->tick);
        uv_check_stop(&n->check);
        uv_prepare_stop(&n->prepare);
        uv_poll_stop(&n->batch_poll);
        raft_close(&n->raft, close_cb);
        return;
    }
    pump_batches(n);
    pump_reads(n);
    publish_status(n);
}

/* After the loop's I/O callbacks: c-raft learns of the log writes that
 * finished (commit, apply), then what that changed goes out. */
static void after_io(raft_node *n)
{
    fire_appends(n);
    release_applied(n);
    pump_batches(n);
    pump_reads(n);
    propagate_commit(n);
    publish_status(n);
    flush_answers(n);
}

static void on_check(uv_check_t *h)
{
    after_io(h->data);
}

/* Runs before the loop polls (and may wait): whatever timers and pending
 * callbacks answered goes out first, and a write noted after the last check
 * step (by a callback of another step of the loop) is handed to c-raft
 * before the loop can sleep on it. */
static void on_prepare(uv_prepare_t *h)
{
    raft_node *n = h->data;
    if (n->appends && n->appends->written)
        after_io(n);
    else
        flush_answers(n);
}

static void on_batch_timer(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    raft_node *n = h->data;
    uint64_t expirations;
    if (read(n->batch_timerfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
        logf_("warn", "batch timer read: %s", strerror(errno));
    n->batch_deadline_us = 0;
    pump_batches(n);
}

/* Two ways c-raft 0.15 leaves a follower behind for a long time; the leader's
 * raft thread checks for both on every tick.
 *
 * 1. A follower that does not read its raft connection (stopped, hung) while
 *    the log moves on: c-raft keeps pipelining entries into that connection,
 *    and keeps each in memory until the write completes, even once the log
 *    has been trimmed past them; it never sends the snapshot the follower
 *    needs. When the follower has been silent for two election timeouts,
 *    needs entries the log no longer holds, and the connection is clogged,
 *    the connection is reset: the sends fail, c-raft frees them, probes the
 *    follower again and, the entries being gone, sends it a snapshot.
 *
 * 2. A follower that answers but keeps rejecting the leader's probes (seen
 *    after a restart that interrupted the install of a snapshot): c-raft
 *    steps its next index back one entry per heartbeat, up to a minute for
 *    a log of 640 entries. When the match index has not moved for
 *    PROBE_STALL_MS while the follower answers, the probe restarts from the
 *    entry after the match index, the last one known to agree (where
 *    c-raft's own probing would end up); if that entry is gone from the log,
 *    c-raft sends a snapshot.
 *
 * Each at most once per UNCLOG_INTERVAL_MS per follower. */
static void help_lagging_peers(raft_node *n, uint64_t now)
{
    if (n->raft.state != RAFT_LEADER || !n->raft.leader_state.progress)
        return;
    raft_index log_offset = n->raft.log.offset; /* entries after it are in the log */
    uint64_t silent_ms = 2u * (uint64_t)n->cfg.election_ms;
    pthread_mutex_lock(&n->mu);
    for (size_t i = 0; i < n->n_progress && i < n->raft.configuration.n; i++) {
        progress_item *p = &n->progress[i];
        if (p->id == n->cfg.id || p->id != n->raft.configuration.servers[i].id ||
            now - p->last_reset < UNCLOG_INTERVAL_MS)
            continue;
        struct raft_progress *rp = &n->raft.leader_state.progress[i];
        raft_index match = rp->match_index;
        if (rp->state == CRAFT_PROGRESS_PROBE && rp->recent_recv &&
            rp->next_index > match + 1 && now - p->match_moved >= PROBE_STALL_MS) {
            logf_("info", "member %llx answers but its match index has not moved for %llu ms "
                  "(next index %llu, match %llu): probing again from %llu%s",
                  (unsigned long long)p->id,
                  (unsigned long long)(now - p->match_moved),
                  (unsigned long long)rp->next_index, (unsigned long long)match,
                  (unsigned long long)match + 1,
                  match < log_offset ? ", which the log no longer has: it will be sent a "
                                       "snapshot" : "");
            rp->next_index = match + 1;
            p->last_reset = now;
            continue;
        }
        if (match >= log_offset || now - p->last_seen < silent_ms)
            continue;
        size_t unacked = peer_transport_unacked(&n->transport, p->id);
        if (unacked < UNCLOG_MIN_BYTES)
            continue;
        p->last_reset = now;
        if (peer_transport_abort(&n->transport, p->id))
            logf_("warn", "member %llx has not read its raft connection for %llu ms (%zu bytes "
                  "unacknowledged) and needs entries from %llu, which the log (from %llu) no "
                  "longer has: connection reset, it will be sent a snapshot",
                  (unsigned long long)p->id, (unsigned long long)(now - p->last_seen), unacked,
                  (unsigned long long)match + 1, (unsigned long long)log_offset + 1);
    }
    pthread_mutex_unlock(&n->mu);
}

/* c-raft keeps every entry since the last snapshot in memory, and each
 * snapshot closes the open segment (a segment written, synced and renamed
 * on the thread pool, a new one started). So the threshold is as many
 * entries as fit in SNAPSHOT_LOG_BUDGET at their mean size, between
 * SNAPSHOT_THRESHOLD_MIN and --snapshot-count (at most
 * SNAPSHOT_THRESHOLD_MAX): small entries at a low rate take a snapshot every
 * few seconds instead of every 0.5 s. */
static void adapt_snapshot_threshold(raft_node *n)
{
    if (!n->entry_bytes_avg)
        return;
    uint64_t fit = SNAPSHOT_LOG_BUDGET / n->entry_bytes_avg;
    unsigned lo = n->snapshot_cap < SNAPSHOT_THRESHOLD_MIN ? n->snapshot_cap : SNAPSHOT_THRESHOLD_MIN;
    unsigned t = fit > n->snapshot_cap ? n->snapshot_cap : fit < lo ? lo : (unsigned)fit;
    /* only changes of an eighth or more: the threshold need not chase noise */
    unsigned now = n->raft.snapshot.threshold;
    unsigned diff = t > now ? t - now : now - t;
    if (diff * 8 >= now)
        raft_set_snapshot_threshold(&n->raft, t);
}

static void on_tick(uv_timer_t *h)
{
    raft_node *n = h->data;
    raft_id leader = 0;
    const char *addr = NULL;
    raft_leader(&n->raft, &leader, &addr);
    uint64_t now = now_ms();
    note_leader(n, leader, now);
    if (leader != 0)
        n->no_leader_since = 0;
    else if (n->no_leader_since == 0)
        n->no_leader_since = now;
    if (n->raft.state != RAFT_LEADER) {
        /* Proposals queued here were meant for this member as leader: once
         * another member leads they fail as etcd's do on a leader change;
         * while none does they wait, up to the request timeout. */
        if (leader != 0 && leader != n->cfg.id) {
            n->drain_message = ERR_LEADER_CHANGED;
            batch_proposer_drain(n->bp, fail_drained_op, n);
        } else if (leader == 0 && now - n->no_leader_since >= n->request_timeout_ms) {
            n->drain_message = ERR_TIMEOUT;
            batch_proposer_drain(n->bp, fail_drained_op, n);
        }
    }
    expire_reads(n, &n->read_pending, now, ERR_TIMEOUT);
    if (n->orphans)
        expire_orphans(n, now);
    pump_reads(n);
    reconcile_members(n);
    publish_status(n);
    help_lagging_peers(n, now);
    adapt_snapshot_threshold(n);
}

static void *loop_main(void *arg)
{
    /* libuv's thread pool is started from this thread, so its workers
     * carry this name too (they use little CPU: snapshot syncs, file
     * operations) */
    pthread_setname_np(pthread_self(), "raft");
    raft_node *n = arg;
    if (n->cfg.loop_started)
        n->cfg.loop_started(n->cfg.cb_arg);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    flush_answers(n); /* what the stop failed */
    return NULL;
}

static void wake_from_proposer(void *arg)
{
    raft_node *n = arg;
    uv_async_send(&n->wake);
}

/* ---- public ---- */

static int fail_start(char **errmsg, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    *errmsg = strdup(buf);
    return -1;
}

static int mkdir_p(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

int raft_node_start(const raft_node_config *cfg, raft_node **out, char **errmsg)
{
    raft_node *n = calloc(1, sizeof *n);
    if (!n)
        return fail_start(errmsg, "out of memory");
    n->cfg = *cfg;
    n->dir = strdup(cfg->dir);
    n->address = strdup(cfg->address);
    n->cfg.dir = n->dir;
    n->cfg.address = n->address;
    pthread_mutex_init(&n->mu, NULL);
    entry_arena_init(&n->arena);
    n->batch_timerfd = -1;
    n->drain_message = ERR_NO_LEADER;
    /* etcd's request timeout: 5 s plus two election timeouts */
    n->request_timeout_ms = 5000u + 2u * (uint64_t)cfg->election_ms;

    if (mkdir_p(n->dir) != 0)
        return fail_start(errmsg, "cannot create raft directory %s: %s", n->dir, strerror(errno));
    n->bp = batch_proposer_new(&cfg->batch, wake_from_proposer, n);
    if (!n->bp)
        return fail_start(errmsg, "out of memory");
    int rv = uv_loop_init(&n->loop);
    if (rv != 0)
        return fail_start(errmsg, "uv_loop_init: %s", uv_strerror(rv));
    rv = peer_transport_init(&n->transport, &n->loop, cfg->bind_address);
    if (rv != 0)
        return fail_start(errmsg, "raft transport%s%s: %s", cfg->bind_address ? " on " : "",
                          cfg->bind_address ? cfg->bind_address : "", raft_strerror(rv));
    char *cut = NULL;
    if (segment_check_open(n->dir, &cut) != 0) {
        fail_start(errmsg, "%s", cut);
        free(cut);
        return -1;
    }
    if (raft_crc_selftest() != 0)
        return fail_start(errmsg, "the raft log checksum (raftlog/raft_crc.c) gives a wrong value");
    if (segment_prefill_register(n->dir) == 0) /* else c-raft's slower path */
        n->prefill_registered = 1;
    aio_reaper_enable(); /* raft_uv's io_destroy off this loop's thread */
    rv = raft_uv_init(&n->io, &n->loop, n->dir, peer_transport_raft(&n->transport));
    if (rv != 0)
        return fail_start(errmsg, "raft log in %s: %s", n->dir, raft_strerror(rv));
    n->io.version = 2;
    n->io.async_work = io_async_work;
    n->io_start = n->io.start;
    n->io.start = start_io;
    n->io_append = n->io.append;
    n->io.append = append_io;
    n->io_close = n->io.close;
    n->io.close = close_io;
    n->fsm.version = 3;
    n->fsm.data = n;
    n->fsm.apply = fsm_apply;
    n->fsm.snapshot = fsm_snapshot;
    n->fsm.restore = fsm_restore;
    n->fsm.snapshot_finalize = fsm_snapshot_finalize;
    n->fsm.snapshot_async = fsm_snapshot_async;
    rv = raft_init(&n->raft, &n->io, &n->fsm, cfg->id, n->address);
    if (rv != 0)
        return fail_start(errmsg, "raft init: %s", raft_errmsg(&n->raft));
    n->raft.data = n;

    if (!cfg->join_existing) {
        struct raft_configuration conf;
        raft_configuration_init(&conf);
        for (size_t i = 0; i < cfg->n_initial_members; i++) {
            rv = raft_configuration_add(&conf, cfg->initial_members[i].id,
                                        cfg->initial_members[i].address, RAFT_VOTER);
            if (rv != 0) {
                raft_configuration_close(&conf);
                return fail_start(errmsg, "initial cluster: %s", raft_strerror(rv));
            }
        }
        rv = raft_bootstrap(&n->raft, &conf);
        raft_configuration_close(&conf);
        if (rv != 0 && rv != RAFT_CANTBOOTSTRAP)
            return fail_start(errmsg, "raft bootstrap: %s", raft_errmsg(&n->raft));
    }
    raft_set_heartbeat_timeout(&n->raft, cfg->heartbeat_ms);
    /* c-raft draws each follower's timeout from [T, 2T] and a follower
     * refuses votes until its own timer runs out, so a cluster elects at the
     * later of its followers' timers: about 1.7 T, 2 T and more at worst. etcd
     * stops refusing after the base timeout and elects in about 1-1.3 T
     * (measured). c-raft gets 60% of --election-timeout, which puts the
     * election in [0.6 T, 1.2 T] like etcd's; never under 3 heartbeats. */
    unsigned election = cfg->election_ms * 3 / 5;
    if (election < 3 * cfg->heartbeat_ms)
        election = 3 * cfg->heartbeat_ms;
    raft_set_election_timeout(&n->raft, election);
    raft_set_pre_vote(&n->raft, true);
    /* A snapshot only syncs RocksDB (the store is the snapshot), so it is
     * cheap; c-raft keeps every entry since the last snapshot in memory, so
     * taking one often bounds memory (entries may hold up to 100 ops). */
    n->snapshot_cap = cfg->snapshot_count < SNAPSHOT_THRESHOLD_MAX ? (unsigned)cfg->snapshot_count
                                                                   : SNAPSHOT_THRESHOLD_MAX;
    if (n->snapshot_cap == 0)
        n->snapshot_cap = 1;
    /* until the first entries give their mean size */
    unsigned threshold = n->snapshot_cap < SNAPSHOT_THRESHOLD_START ? n->snapshot_cap
                                                                    : SNAPSHOT_THRESHOLD_START;
    raft_set_snapshot_threshold(&n->raft, threshold);
    raft_set_snapshot_trailing(&n->raft, threshold < SNAPSHOT_TRAILING ? threshold : SNAPSHOT_TRAILING);

    n->batch_timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (n->batch_timerfd < 0)
        return fail_start(errmsg, "timerfd: %s", strerror(errno));
    uv_async_init(&n->loop, &n->wake, on_wake);
    n->wake.data = n;
    uv_check_init(&n->loop, &n->check);
    n->check.data = n;
    uv_check_start(&n->check, on_check);
    uv_prepare_init(&n->loop, &n->prepare);
    n->prepare.data = n;
    uv_prepare_start(&n->prepare, on_prepare);
    uv_timer_init(&n->loop, &n->tick);
    n->tick.data = n;
    uv_timer_start(&n->tick, on_tick, TICK_MS, TICK_MS);
    uv_poll_init(&n->loop, &n->batch_poll, n->batch_timerfd);
    n->batch_poll.data = n;
    uv_poll_start(&n->batch_poll, UV_READABLE, on_batch_timer);

    rv = raft_start(&n->raft);
    if (rv != 0)
        return fail_start(errmsg, "raft start: %s (%s)", raft_strerror(rv), raft_errmsg(&n->raft));
    /* The store applies only entries that were durable in the log, so a
     * sole voter whose store is ahead of its log has lost logged entries (a
     * torn or cut segment). Its next entries would reuse those indexes and
     * the store would skip them as applied: acknowledged writes lost
     * (test_torn_segment.py). A member of a larger cluster may be ahead
     * legitimately (a store fetched from the leader) and gets the committed
     * entries again from it. */
    unsigned voters = 0;
    for (unsigned i = 0; i < n->raft.configuration.n; i++)
        voters += n->raft.configuration.servers[i].role == RAFT_VOTER;
    uint64_t applied = mvcc_applied_index(cfg->store);
    if (voters == 1 && applied > raft_last_index(&n->raft))
        return fail_start(errmsg,
                          "the raft log in %s ends at entry %llu but the store has applied entry "
                          "%llu: entries are missing from the log (a torn or cut segment file); "
                          "the only voter cannot take them again from anyone, not starting",
                          n->dir, (unsigned long long)raft_last_index(&n->raft),
                          (unsigned long long)applied);
    publish_status(n);
    if (pthread_create(&n->thread, NULL, loop_main, n) != 0)
        return fail_start(errmsg, "cannot start the raft thread");
    n->thread_started = 1;
    *out = n;
    return 0;
}

void raft_node_stop(raft_node *n)
{
    if (!n)
        return;
    if (n->thread_started) {
        pthread_mutex_lock(&n->mu);
        n->stopping = 1;
        pthread_mutex_unlock(&n->mu);
        uv_async_send(&n->wake);
        pthread_join(n->thread, NULL);
        uv_loop_close(&n->loop);
    }
    if (n->batch_timerfd >= 0)
        close(n->batch_timerfd);
    batch_proposer_free(n->bp);
    entry_arena_free(&n->arena);
    free(n->out.data);
    free(n->results);
    free(n->deferred);
    free(n->read_queue.items);
    free(n->read_pending.items);
    free(n->read_barrier.items);
    free(n->read_remote.items);
    free(n->read_applied.items);
    free(n->progress);
    free(n->heard);
    pthread_mutex_destroy(&n->mu);
    if (n->prefill_registered)
        segment_prefill_unregister(n->dir);
    free(n->dir);
    free(n->address);
    free(n);
}

int raft_node_submit(raft_node *n, batch_op_type type, const uint8_t *data, size_t len, void *ctx)
{
    return batch_proposer_submit(n->bp, type, data, len, ctx);
}

int raft_node_read_ready(raft_node *n)
{
    return __atomic_load_n(&n->st_fast_reads, __ATOMIC_ACQUIRE);
}

void raft_node_read_index(raft_node *n, void *ctx)
{
    pthread_mutex_lock(&n->mu);
    int rv = ctx_list_push(&n->read_queue, ctx, now_ms() + n->request_timeout_ms);
    pthread_mutex_unlock(&n->mu);
    if (rv != 0)
        abort(); /* out of memory: a read cannot be dropped unanswered */
    uv_async_send(&n->wake);
}

/* A command for the loop; memory cannot fail here: what waits on it would
 * never be answered. */
static void send_command(raft_node *n, int kind, int status, const char *message, uint64_t index,
                         void *ctx)
{
    node_cmd *cmd = calloc(1, sizeof *cmd);
    if (!cmd || (message && !(cmd->message = strdup(message))))
        abort();
    cmd->kind = kind;
    cmd->status = status;
    cmd->index = index;
    cmd->ctx = ctx;
    push_command(n, cmd);
}

void raft_node_remote_read_done(raft_node *n, int status, const char *message, uint64_t index)
{
    send_command(n, CMD_REMOTE_READ, status, message, index, NULL);
}

void raft_node_transfer(raft_node *n, uint64_t target, void *ctx)
{
    send_command(n, CMD_TRANSFER, 0, NULL, target, ctx);
}

int raft_node_progress(raft_node *n, uint64_t id, uint64_t *match, uint64_t *idle_ms)
{
    int found = 0;
    uint64_t now = now_ms();
    pthread_mutex_lock(&n->mu);
    for (size_t i = 0; i < n->n_progress; i++) {
        if (n->progress[i].id == id) {
            *match = n->progress[i].match;
            *idle_ms = now > n->progress[i].last_seen ? now - n->progress[i].last_seen : 0;
            found = 1;
        }
    }
    pthread_mutex_unlock(&n->mu);
    return found;
}

void raft_node_get_status(raft_node *n, raft_node_status *st)
{
    st->term = load(&n->st_term);
    st->leader_id = load(&n->st_leader);
    st->commit_index = load(&n->st_commit);
    st->applied_index = load(&n->st_applied);
    st->last_index = load(&n->st_last);
    st->is_leader = __atomic_load_n(&n->st_is_leader, __ATOMIC_ACQUIRE);
    st->is_learner = __atomic_load_n(&n->st_is_learner, __ATOMIC_ACQUIRE);
    st->leader_silent_ms = load(&n->st_leader_silent);
}

uint64_t raft_node_term(raft_node *n)
{
    return load(&n->st_term);
}

void raft_node_batch_metrics(raft_node *n, batch_metrics *out)
{
    batch_proposer_metrics(n->bp, out);
}
