/*
 * ballast — the state one Ballast member's front end shares between its
 * services: configuration, identity, the store and the raft node.
 */
#ifndef BALLAST_SERVER_BALLAST_H
#define BALLAST_SERVER_BALLAST_H

#include <pthread.h>
#include <stdint.h>

#include "config.h"
#include "lessor.h"
#include "mvcc.h"
#include "raft_node.h"
#include "rpc.h"
#include "watch.h"

#define BALLAST_VERSION "0.1.0"
/* The etcd server version Ballast answers as (Maintenance.Status), since
 * clients use it to decide which API they may call. */
#define BALLAST_ETCD_VERSION "3.4.23"

struct compact_wait;
struct maintenance;

typedef struct ballast_server {
    const ballast_config *cfg;
    uint64_t cluster_id;
    uint64_t member_id;
    mvcc *store;
    raft_node *node;
    mvcc_limits limits;
    watch_hub *watch;
    /* Leases: expiry timers (leader only), the minimum TTL a grant is
     * raised to, and the next server-assigned lease ID. */
    lessor *lessor;
    int64_t min_lease_ttl;
    uint64_t next_lease_id;
    /* Compact calls with physical=true, answered once the store has removed
     * the old revisions (guarded by compact_mu). */
    pthread_mutex_t compact_mu;
    struct compact_wait *compact_waiters;
    /* The Maintenance service's threads and the backend quota. */
    struct maintenance *maint;
} ballast_server;

/* The header fields of every response, for this member now. */
mvcc_header ballast_header(ballast_server *b);

/* Fills a ResponseHeader as etcd's services do: ids, term and the store's
 * current revision. */
void ballast_fill_header(ballast_server *b, Etcdserverpb__ResponseHeader *h);

/* Services: each fills its methods into `out` (room for at least 16) and
 * returns how many. */
size_t kv_service_methods(ballast_server *b, rpc_method *out);
size_t maintenance_service_methods(ballast_server *b, rpc_method *out);
size_t cluster_service_methods(ballast_server *b, rpc_method *out);
size_t lease_service_methods(ballast_server *b, rpc_method *out);
/* Stream services fill `out` likewise (room for at least 4). */
size_t watch_service_streams(ballast_server *b, rpc_stream_method *out);
/* The watch hub's header callback (arg: the ballast_server). */
void watch_service_header(void *arg, mvcc_header *out);

/* The Lease service: its lessor is loaded from the store and hooked to it
 * before the raft node starts (0, or -1 with *errmsg malloc'd); the raft
 * node's op_done and leader_change callbacks are lease_service_op_done
 * (which hands everything that is not the Lease service's own proposal to
 * kv_service_op_done) and lease_service_leader_change. Stop the expiry
 * timers before the raft node stops, free the lessor after it has. */
int lease_service_init(ballast_server *b, char **errmsg);
void lease_service_stop_timers(ballast_server *b);
void lease_service_free(ballast_server *b);
size_t lease_service_streams(ballast_server *b, rpc_stream_method *out);
void lease_service_op_done(void *ctx, const mvcc_result *res, const uint8_t *resp_base, void *arg);
void lease_service_leader_change(void *arg, int leading);

/* Proposes an etcd request message of the Lease service's kind of op (the
 * Maintenance service's alarms too); the call, if any, gets the applied
 * result. */
void lease_service_propose(ballast_server *b, rpc_call *call, batch_op_type type,
                           const ProtobufCMessage *msg);

/* The Maintenance service: its state (before serving), the Snapshot stream,
 * and, at shutdown, stopping its threads (after rpc_server_begin_shutdown,
 * before the store closes) and freeing it. */
int maintenance_service_init(ballast_server *b, char **errmsg);
size_t maintenance_service_streams(ballast_server *b, rpc_stream_method *out);
void maintenance_service_stop(ballast_server *b);
void maintenance_service_free(ballast_server *b);

/* etcd's backend quota, checked before a Put, a Txn or a LeaseGrant is
 * proposed: 0 when a request costing `cost` bytes (etcd's estimate; 0 for
 * requests that write nothing) fits; otherwise -1 — answer it with
 * RESOURCE_EXHAUSTED and BALLAST_ERR_NO_SPACE — after proposing this
 * member's NOSPACE alarm, as etcd does. */
int ballast_quota_check(ballast_server *b, uint64_t cost);
extern const char BALLAST_ERR_NO_SPACE[];
#define BALLAST_COST_PUT_OVERHEAD 256   /* etcd's kvOverhead */
#define BALLAST_COST_LEASE 64           /* etcd's leaseOverhead */

/* Sets up the KV service's state (before serving) and answers what still
 * waits at shutdown (after the raft node has stopped). */
void kv_service_init(ballast_server *b);
void kv_service_stop(ballast_server *b);

/* The raft node's callbacks: answer the waiting call. */
void kv_service_op_done(void *ctx, const mvcc_result *res, const uint8_t *resp_base, void *arg);
void kv_service_read_done(void *ctx, int status, const char *message, void *arg);

/* Answers a call with an mvcc result (response bytes in buf). */
void ballast_reply_result(rpc_call *call, const mvcc_result *res, const uint8_t *buf);

/* Decodes a request; on failure answers the call with gRPC's decoding
 * error and returns NULL. Free with protobuf_c_message_free_unpacked. */
void *ballast_unpack(rpc_call *call, const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len);

/* Packs a response message and sends it with status OK. */
void ballast_reply_packed(rpc_call *call, const ProtobufCMessage *msg);

/* A per-thread response buffer for reads; shrunk after big responses. */
mvcc_buf *ballast_thread_buf(void);
void ballast_thread_buf_done(mvcc_buf *buf);

/* etcd's message for a request that gRPC delivered but protobuf cannot decode. */
extern const char BALLAST_ERR_MALFORMED[];

#endif
