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
#include "peer_client.h"
#include "mvcc.h"
#include "raft_node.h"
#include "rpc.h"
#include "watch.h"

#define BALLAST_VERSION "0.1.0"
/* The etcd server version Ballast answers as (Maintenance.Status), since
 * clients use it to decide which API they may call. */
#define BALLAST_ETCD_VERSION "3.4.23"

struct compact_wait;
struct cluster_state;
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
    /* Calls to other members, and what the cluster layer keeps
     * (server/cluster.c): forwarded calls waiting for this member to apply,
     * calls parked until a leader is known, the member publisher. */
    peer_client *peers;
    struct cluster_state *cluster;
    /* The Maintenance service's threads and the backend quota. */
    struct maintenance *maint;
} ballast_server;

/* ---- proposals made by a service itself ----
 *
 * ballast_propose_msg packs `msg`, proposes it and, once applied, calls
 * done(b, call, res, resp_base, extra) on the raft thread — or, when done
 * is NULL, answers `call` (if any) with the result. A call that cannot be
 * proposed is answered with an error at once. The raft node's op_done is
 * ballast_op_done: it dispatches these proposals, and hands client writes
 * (ctx = the rpc_call) to kv_service_op_done. */
typedef void (*ballast_done_fn)(ballast_server *b, rpc_call *call, const mvcc_result *res,
                                const uint8_t *resp_base, void *extra);
void ballast_propose_msg(ballast_server *b, rpc_call *call, batch_op_type type,
                         const ProtobufCMessage *msg, ballast_done_fn done, void *extra);
void ballast_op_done(void *ctx, const mvcc_result *res, const uint8_t *resp_base, void *arg);

/* ---- the cluster layer (server/cluster.c) ---- */

/* For a request only the leader serves (a proposal, or a question for the
 * leader's lessor): returns 0 when this member leads — serve it here —, else
 * 1: the call was forwarded as it is to `method` on the leader (a success is
 * answered once this member has applied the leader's revision, so a read
 * here right after sees the write, as on etcd), or parked until a leader is
 * known (`handler` then runs again), failing after etcd's request timeout. */
int ballast_route(ballast_server *b, rpc_call *call, const char *method, rpc_unary_handler handler,
                  const uint8_t *data, size_t len);
/* The front end's admission check (rpc_options.admit, arg: the
 * ballast_server), as etcd's interceptor: a learner serves only Status and
 * serializable Ranges; a request with metadata hasleader=true fails at once
 * with "etcdserver: no leader" while no leader is known. */
int cluster_admit(rpc_call *call, const char *method, const uint8_t *req, size_t len, void *arg);
/* A stream's start and end, as etcd's stream interceptor sees them: a
 * learner serves no stream, and a stream with metadata hasleader=true is
 * refused while no leader is known and ended with "etcdserver: no leader"
 * after 3 election timeouts without one. cluster_stream_open finishes `st`
 * and returns 1 when it is refused, else 0; every stream service calls
 * cluster_stream_done from its on_done. */
int cluster_stream_open(ballast_server *b, rpc_stream *st);
void cluster_stream_done(ballast_server *b, rpc_stream *st);
/* etcd's check of MemberAdd's and MemberUpdate's peer URLs: at least one,
 * each http(s)://host:port without a path, or unix(s)://... Returns 1 when
 * valid. (Pure: test/fuzz calls it on arbitrary requests.) */
int cluster_urls_valid(char **urls, size_t n);
/* "host:port" of the leader's first client URL: 0, or -1 when unknown. */
int cluster_leader_target(ballast_server *b, uint64_t leader_id, char *out, size_t cap);
/* etcd's request timeout for this member (5 s + 2 election timeouts). */
unsigned cluster_request_timeout_ms(ballast_server *b);
/* Sets up the cluster state and the peer client (after grpc_init, before
 * the raft node starts: its hooks use them). 0, or -1 with *errmsg. */
int cluster_init(ballast_server *b, char **errmsg);
/* Starts the cluster thread (bootstrap record, member attributes, parked
 * calls, removal) once the raft node runs. 0, or -1 with *errmsg. */
int cluster_start(ballast_server *b, char **errmsg);
/* Waits until this member's name and client URLs are in the replicated
 * member list (etcd serves clients once it has published them): 0, or -1
 * after timeout_ms. */
int cluster_wait_published(ballast_server *b, unsigned timeout_ms);
/* Before the raft node stops: fails parked calls, cancels forwarded ones. */
void cluster_stop_calls(ballast_server *b);
/* After the raft node stopped. */
void cluster_free(ballast_server *b);
/* raft node hooks (arg: the ballast_server) */
void cluster_remote_read(void *arg, uint64_t leader_id);
void cluster_applied(void *arg, uint64_t index);
int cluster_fetch_store(void *arg, uint64_t leader_id, uint64_t index, const char *const *urls,
                        size_t n_urls);
void cluster_transfer_done(void *ctx, const char *error, void *arg);
/* /ballastpb.Internal/Forward: a follower's batch of its clients'
 * requests, each run here as the call it came in as. */
void cluster_forwarded(rpc_call *call, const uint8_t *data, size_t len, void *arg);
/* A forwarded call failed with `code`/`message` from gRPC or the leader:
 * the status and etcd message to answer the client with. */
void cluster_map_forward_error(grpc_status_code *code, const char **message);

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
 * node's leader_change callback is lease_service_leader_change. Stop the
 * expiry timers before the raft node stops, free the lessor after it has.
 * lease_service_reload reads the leases again after the store was replaced
 * by another member's. */
int lease_service_init(ballast_server *b, char **errmsg);
void lease_service_stop_timers(ballast_server *b);
void lease_service_free(ballast_server *b);
int lease_service_reload(ballast_server *b);
size_t lease_service_streams(ballast_server *b, rpc_stream_method *out);
void lease_service_leader_change(void *arg, int leading);

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
/* Answers a successful Compact (physical, at `rev`) once this member has
 * removed the old revisions. */
void kv_service_answer_compacted(ballast_server *b, rpc_call *call, int64_t rev, const uint8_t *resp,
                                 size_t len);

/* Answers a call with an mvcc result (response bytes in buf). */
void ballast_reply_result(rpc_call *call, const mvcc_result *res, const uint8_t *buf);

/* Reads the field at *i of an encoded protobuf message: its number, and a
 * varint's value in *v or a length-delimited field's bytes in *sub,
 * *sub_len (*sub is NULL for other wire types, which are skipped). Returns
 * 1, 0 at the end, -1 when the bytes do not parse. */
int ballast_pb_next(const uint8_t *p, size_t n, size_t *i, uint32_t *field, uint64_t *v,
                    const uint8_t **sub, size_t *sub_len);
/* Decodes a request as etcd's Go decoder would: NULL when it is not a valid
 * message. protobuf-c keeps a field numbered 0 (a tag written in two or more
 * bytes) as an unknown field and packs it as a one-byte tag 0, which
 * protobuf-c then refuses: a LeaseGrant carrying one was re-packed into an
 * entry that stopped apply on every member. Go refuses such a message
 * ("illegal tag 0"), so it is refused here too, at any depth. Messages
 * nested more than 300 deep (only a Txn can nest) are refused before
 * protobuf-c's recursion can overflow the stack. Pure; the Watch and
 * LeaseKeepAlive streams use it for each message. */
void *ballast_decode(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len);
/* ballast_decode; on failure answers the call with gRPC's decoding error,
 * or for a message nested too deep with etcd's answer to a Txn nested
 * deeper than --max-txn-ops 128 allows (INVALID_ARGUMENT "etcdserver: too
 * many operations in txn request"), and returns NULL. Free with
 * protobuf_c_message_free_unpacked. */
void *ballast_unpack(rpc_call *call, const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len);

/* Packs a response message and sends it with status OK. */
void ballast_reply_packed(rpc_call *call, const ProtobufCMessage *msg);

/* A per-thread response buffer for reads; shrunk after big responses. */
mvcc_buf *ballast_thread_buf(void);
void ballast_thread_buf_done(mvcc_buf *buf);

/* etcd's message for a request that gRPC delivered but protobuf cannot decode. */
extern const char BALLAST_ERR_MALFORMED[];

#endif
