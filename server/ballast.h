/*
 * ballast — the state one Ballast member's front end shares between its
 * services: configuration, identity, the store and the raft node.
 */
#ifndef BALLAST_SERVER_BALLAST_H
#define BALLAST_SERVER_BALLAST_H

#include <pthread.h>
#include <stdint.h>

#include "config.h"
#include "mvcc.h"
#include "raft_node.h"
#include "rpc.h"

#define BALLAST_VERSION "0.1.0"
/* The etcd server version Ballast answers as (Maintenance.Status), since
 * clients use it to decide which API they may call. */
#define BALLAST_ETCD_VERSION "3.4.23"

struct compact_wait;

typedef struct ballast_server {
    const ballast_config *cfg;
    uint64_t cluster_id;
    uint64_t member_id;
    mvcc *store;
    raft_node *node;
    mvcc_limits limits;
    /* Compact calls with physical=true, answered once the store has removed
     * the old revisions (guarded by compact_mu). */
    pthread_mutex_t compact_mu;
    struct compact_wait *compact_waiters;
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

/* Sets up the KV service's state (before serving) and answers what still
 * waits at shutdown (after the raft node has stopped). */
void kv_service_init(ballast_server *b);
void kv_service_stop(ballast_server *b);

/* The raft node's callbacks: answer the waiting call. */
void kv_service_op_done(void *ctx, const mvcc_result *res, const uint8_t *resp_base, void *arg);
void kv_service_read_done(void *ctx, int status, const char *message, void *arg);

/* Answers a call with an mvcc result (response bytes in buf). */
void ballast_reply_result(rpc_call *call, const mvcc_result *res, const uint8_t *buf);

/* Packs a response message and sends it with status OK. */
void ballast_reply_packed(rpc_call *call, const ProtobufCMessage *msg);

/* A per-thread response buffer for reads; shrunk after big responses. */
mvcc_buf *ballast_thread_buf(void);
void ballast_thread_buf_done(mvcc_buf *buf);

/* etcd's message for a request that gRPC delivered but protobuf cannot decode. */
extern const char BALLAST_ERR_MALFORMED[];

#endif
