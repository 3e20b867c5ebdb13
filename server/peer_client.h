/*
 * peer_client — gRPC calls from this member to another member's client
 * URL: how a follower forwards proposals, read-index requests and lease
 * keep-alives to the leader, and how a member that fell behind fetches the
 * leader's store.
 *
 * Asynchronous calls complete on the client server's queue threads once
 * peer_client_attach has been called, before that on a thread of the
 * client's own (started with the first such call). Channels are kept per
 * target address. Callbacks run on those threads and must not block.
 */
#ifndef BALLAST_SERVER_PEER_CLIENT_H
#define BALLAST_SERVER_PEER_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/grpc.h>

#include "rpc.h"

typedef struct peer_client peer_client;

/* The outcome of a unary call: code GRPC_STATUS_OK with the response bytes
 * (valid during the callback only), or a failure code and the server's (or
 * gRPC's) message. */
typedef void (*peer_done_fn)(void *arg, grpc_status_code code, const char *message,
                             const uint8_t *resp, size_t len);

/* NULL when out of resources. grpc_init() must have been called. */
peer_client *peer_client_new(void);

/* Calls started from now on complete on s's queues (rpc_server_client_queue)
 * instead of the client's own thread. s must outlive peer_client_shutdown. */
void peer_client_attach(peer_client *pc, rpc_server *s);

/* Cancels what is in flight (their callbacks run with CANCELLED) and waits
 * for their callbacks; later calls fail at once ("cannot reach the
 * leader"). */
void peer_client_shutdown(peer_client *pc);
/* Shuts down if not done yet, joins the thread and frees everything. */
void peer_client_free(peer_client *pc);

/* Starts a unary call of `method` (e.g. "/etcdserverpb.KV/Put") on target
 * ("host:port") with the request bytes (copied). `cb` runs exactly once, on
 * a queue thread (see above) — or, when the call cannot even start, on the
 * calling thread before this returns. */
void peer_client_call(peer_client *pc, const char *target, const char *method, const uint8_t *req,
                      size_t len, unsigned timeout_ms, peer_done_fn cb, void *arg);

/* Like peer_client_call, for a client's request forwarded to the leader:
 * while FWD_MAX_IN_FLIGHT batches to the target are on their way, requests
 * wait and then go together as one /ballastpb.Internal/Forward call, where
 * each runs as the call it came in as and gets its own answer. Alone when
 * large, or when the target predates that method. */
void peer_client_forward(peer_client *pc, const char *target, const char *method, const uint8_t *req,
                         size_t len, unsigned timeout_ms, peer_done_fn cb, void *arg);

/* Batches sent by peer_client_forward, and the requests in them. */
void peer_client_forward_stats(peer_client *pc, uint64_t *batches, uint64_t *requests);

/* A server-streaming call read to its end on the calling thread (which
 * must not be a queue thread): on_message gets each message in order and
 * may stop the call by returning non-zero. Returns the final status code;
 * *message is malloc'd (or NULL) and must be freed by the caller. */
grpc_status_code peer_client_read_stream(peer_client *pc, const char *target, const char *method,
                                         const uint8_t *req, size_t len, unsigned timeout_ms,
                                         int (*on_message)(void *arg, const uint8_t *msg, size_t len),
                                         void *arg, char **message);

#endif
