/*
 * raft_node — one Ballast member's c-raft node.
 *
 * It owns a thread running a libuv loop with c-raft (raft_uv log on disk,
 * TCP transport on the peer address) and the BatchProposer that feeds it.
 * Committed entries are decoded (entry_codec) and applied to the mvcc store
 * in one write batch each, on this thread. Results go back through the
 * op_done callback, on this thread, only on the member that proposed.
 *
 * Every raft_* call happens on the loop thread; other threads talk to the
 * node through raft_node_submit / raft_node_read_index / the status calls,
 * which are thread-safe.
 */
#ifndef BALLAST_RAFTLOG_RAFT_NODE_H
#define BALLAST_RAFTLOG_RAFT_NODE_H

#include <stddef.h>
#include <stdint.h>

#include "batch_proposer.h"
#include "mvcc.h"

typedef struct raft_node raft_node;

typedef struct raft_node_peer {
    uint64_t id;
    const char *address; /* "host:port" of its raft transport */
} raft_node_peer;

/* Called on the raft thread once per op of a proposal made through this node:
 * with its result when applied (res->status may be an etcd error), or with a
 * failure status (e.g. MVCC_STATUS_UNAVAILABLE, "etcdserver: leader changed")
 * when the entry could not be committed. The response bytes are at
 * resp_base + res->off and stay valid only during the call. */
typedef void (*raft_node_op_done_fn)(void *ctx, const mvcc_result *res, const uint8_t *resp_base,
                                     void *arg);

/* Called on the raft thread when a linearizable read may proceed (status 0),
 * or with a failure status and etcd's message. */
typedef void (*raft_node_read_fn)(void *ctx, int status, const char *message, void *arg);

/* Called on the raft thread when this member starts leading — it is the
 * leader and has applied every entry of earlier terms, as etcd promotes its
 * lessor — (leading = 1), and when it stops being the leader (0). */
typedef void (*raft_node_leader_fn)(void *arg, int leading);

/* Called on the raft thread when reads wait on a follower that knows its
 * leader: ask the leader for a read index (it runs a barrier and answers
 * its applied index) and hand the answer to raft_node_remote_read_done. At
 * most one such request is outstanding. */
typedef void (*raft_node_remote_read_fn)(void *arg, uint64_t leader_id);

/* Called on the raft thread, inside snapshot installation, when the local
 * store is behind the raft snapshot at `index` (this member fell behind, or
 * joined late): replace the store's contents with another member's (the
 * leader's, `leader_id`; 0 when none is known) whose applied index is >=
 * index. `urls` are the client URLs of the members as the snapshot's
 * author knew them (a member that just joined knows no other way to reach
 * them). Blocking. Returns 0 when the store now has applied >= index. */
typedef int (*raft_node_fetch_fn)(void *arg, uint64_t leader_id, uint64_t index,
                                  const char *const *urls, size_t n_urls);

/* Called on the raft thread after each entry was applied to the store. */
typedef void (*raft_node_applied_fn)(void *arg, uint64_t index);

/* Called on the raft thread when a leadership transfer ends: 0 when the
 * target leads now, else an etcd message. */
typedef void (*raft_node_transfer_fn)(void *ctx, const char *error, void *arg);

typedef struct raft_node_config {
    const char *dir;           /* raft log directory; created if missing */
    uint64_t id;               /* this member's id (non-zero) */
    const char *address;       /* this member's raft address "host:port" */
    const char *bind_address;  /* IPv4 "a.b.c.d:port" to listen on, or NULL for `address` */
    const raft_node_peer *initial_members; /* the bootstrap configuration */
    size_t n_initial_members;
    int join_existing;         /* --initial-cluster-state existing: do not bootstrap */
    unsigned heartbeat_ms;
    unsigned election_ms;
    uint64_t snapshot_count;   /* entries between snapshots */
    mvcc *store;
    uint64_t cluster_id;       /* for response headers */
    batch_config batch;
    raft_node_op_done_fn op_done;
    raft_node_read_fn read_done;
    raft_node_leader_fn leader_change; /* may be NULL */
    raft_node_remote_read_fn remote_read; /* may be NULL for a single member */
    raft_node_fetch_fn fetch_store;       /* may be NULL: then a lagging member cannot catch up */
    raft_node_applied_fn applied;         /* may be NULL */
    raft_node_transfer_fn transfer_done;  /* may be NULL */
    void (*loop_started)(void *arg);      /* may be NULL: first thing on the raft thread */
    /* may be NULL: on the raft thread after the ops of an entry have been
     * answered, and before its loop waits (or ends): what the answers held
     * back can go out. `idle`: no entry is in flight and no op waits to be
     * proposed, so nothing the raft thread does next is urgent. */
    void (*answers_flush)(void *arg, int idle);
    void *cb_arg;
} raft_node_config;

/* Opens the log, starts the loop thread and returns at once; the node
 * becomes leader on its own (single member) or by election. On failure
 * returns non-zero and sets *errmsg (malloc'd). */
int raft_node_start(const raft_node_config *cfg, raft_node **out, char **errmsg);

/* Stops the loop thread, failing whatever is still waiting, and frees the
 * node. The store is not closed. */
void raft_node_stop(raft_node *n);

/* Proposes one write. `data` must stay valid until op_done is called for ctx.
 * Thread-safe. Returns 0, or -1 if it could not be queued. */
int raft_node_submit(raft_node *n, batch_op_type type, const uint8_t *data, size_t len, void *ctx);

/* True when the local store may be read linearizably at once: this member
 * is the only voter and the leader, and has applied every entry of earlier
 * terms (every acknowledged write is then applied here). Thread-safe. */
int raft_node_read_ready(raft_node *n);

/* Asks for a linearizable read: read_done(ctx, ...) follows on the raft
 * thread once the store has applied everything committed when the read
 * arrived (concurrent reads share one raft barrier). Thread-safe. */
void raft_node_read_index(raft_node *n, void *ctx);

/* The leader's answer to a remote read (see raft_node_remote_read_fn):
 * status 0 and its applied index, or a failure status (gRPC code) and an
 * etcd message (copied). Thread-safe. */
void raft_node_remote_read_done(raft_node *n, int status, const char *message, uint64_t index);

/* Asks the leader (this member) to hand leadership to voter `target`;
 * transfer_done(ctx, ...) follows. Thread-safe. */
void raft_node_transfer(raft_node *n, uint64_t target, void *ctx);

/* On the leader: how far member `id` has replicated the log (*match) and
 * how long ago the leader last heard from it (*idle_ms; 0 for the leader
 * itself). 1 when known, 0 when not (not the leader, or no such server).
 * Thread-safe. */
int raft_node_progress(raft_node *n, uint64_t id, uint64_t *match, uint64_t *idle_ms);

typedef struct raft_node_status {
    uint64_t term;
    uint64_t leader_id;     /* 0 when unknown */
    uint64_t commit_index;
    uint64_t applied_index;
    uint64_t last_index;
    int is_leader;
    int is_learner;         /* a standby or spare of the raft configuration */
    /* A follower with a known leader: milliseconds since a message from
     * that leader last arrived (a leader that has taken this member out of
     * its configuration stops sending to it); 0 otherwise. */
    uint64_t leader_silent_ms;
} raft_node_status;

/* A recent view of the node (updated by the loop thread). Thread-safe. */
void raft_node_get_status(raft_node *n, raft_node_status *st);

/* Current raft term, for response headers. Thread-safe. */
uint64_t raft_node_term(raft_node *n);

void raft_node_batch_metrics(raft_node *n, batch_metrics *out);

#endif
