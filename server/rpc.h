/*
 * rpc — Ballast's gRPC C-core front end: completion-queue threads, registered
 * methods, unary calls, and the catch-all that answers UNIMPLEMENTED.
 *
 * A service describes its methods with an rpc_method table; for each unary
 * call the method's handler runs on a completion-queue thread with the
 * request bytes. It must eventually call rpc_reply() or rpc_fail() exactly
 * once — from any thread (grpc_call_start_batch is thread-safe), e.g. from the
 * raft thread after the write was applied. Everything the call owns is freed
 * when the reply has been sent.
 */
#ifndef BALLAST_SERVER_RPC_H
#define BALLAST_SERVER_RPC_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/grpc.h>

typedef struct rpc_server rpc_server;
typedef struct rpc_call rpc_call;

/* `req` stays valid until the call has been answered. */
typedef void (*rpc_unary_handler)(rpc_call *call, const uint8_t *req, size_t len, void *arg);

typedef struct rpc_method {
    const char *path;          /* e.g. "/etcdserverpb.KV/Range" */
    rpc_unary_handler handler;
    void *arg;
    unsigned backlog;          /* requests kept posted per thread (0: a default) */
} rpc_method;

/* ---- bidirectional and server streams ----
 *
 * A stream method's handler gets callbacks on a completion-queue thread of
 * the streams' own (never one of the unary calls'), one at a time per
 * stream: on_open once, on_message for each client message, on_recv_end
 * when the client will send no more, and on_done once when the call has
 * ended (finished by the server, cancelled or broken by the client). After
 * on_done no callback follows; the handler must then call
 * rpc_stream_release() once, when it holds no more references. */
typedef struct rpc_stream rpc_stream;

typedef struct rpc_stream_handler {
    void (*on_open)(rpc_stream *s, void *arg);
    void (*on_message)(rpc_stream *s, const uint8_t *msg, size_t len, void *arg);
    void (*on_recv_end)(rpc_stream *s, void *arg);
    void (*on_done)(rpc_stream *s, int cancelled, void *arg);
} rpc_stream_handler;

/* Queues a message (copied) to the client; messages go out one at a time in
 * order. Thread-safe. Returns 0, or -1 once the stream is finished or done. */
int rpc_stream_send(rpc_stream *s, const uint8_t *msg, size_t len);
/* Bytes queued and not yet handed to gRPC: how far a slow reader is behind. */
size_t rpc_stream_backlog(rpc_stream *s);
/* Ends the stream with a status after the queued messages. Thread-safe; only
 * the first call counts. */
void rpc_stream_finish(rpc_stream *s, grpc_status_code code, const char *message);
void rpc_stream_set_data(rpc_stream *s, void *data);
void *rpc_stream_data(rpc_stream *s);
/* True when the stream's request carries metadata `key` = `value`. */
int rpc_stream_has_metadata(rpc_stream *s, const char *key, const char *value);
/* Takes one more reference (e.g. for an answer that will be sent later);
 * each reference is given back with rpc_stream_release. */
void rpc_stream_ref(rpc_stream *s);
void rpc_stream_release(rpc_stream *s);

typedef struct rpc_stream_method {
    const char *path;
    const rpc_stream_handler *handler;
    void *arg;
} rpc_stream_method;

typedef struct rpc_options {
    const char *const *listen;   /* "host:port" addresses */
    size_t n_listen;
    /* unary calls' completion-queue threads (0: one per core); streams get
     * one of their own per four of these */
    unsigned threads;
    size_t max_receive_bytes;    /* gRPC's receive limit */
    /* Called before every unary handler with the method's path and the
     * request: returns 0 to let the call through, or non-zero after
     * answering it itself (may be NULL). */
    int (*admit)(rpc_call *call, const char *method, const uint8_t *req, size_t len, void *arg);
    void *admit_arg;
} rpc_options;

/* Creates the server and binds every address. Returns NULL and sets *errmsg
 * (malloc'd) on failure, e.g. an address already in use. */
rpc_server *rpc_server_create(const rpc_options *opt, const rpc_method *methods, size_t n_methods,
                              const rpc_stream_method *streams, size_t n_streams, char **errmsg);
/* Starts the threads; calls are served from now on. */
void rpc_server_start(rpc_server *s);
/* Stops accepting calls and cancels those in flight. Calls still waiting for
 * an answer (e.g. from the raft thread) must then be answered — a reply to a
 * cancelled call is harmless — before rpc_server_finish_shutdown, which waits
 * for every call to end and joins the threads. */
void rpc_server_begin_shutdown(rpc_server *s);
void rpc_server_finish_shutdown(rpc_server *s);
void rpc_server_destroy(rpc_server *s);

/* A gRPC message holding a copy of `len` bytes at `data` (NULL when len is
 * 0), for a send op; the batch's owner destroys it. */
grpc_byte_buffer *rpc_byte_buffer(const uint8_t *data, size_t len);

/* Sends the response message (len bytes, copied) with status OK. */
void rpc_reply(rpc_call *call, const uint8_t *resp, size_t len);
/* Sends a failure status with etcd's message. */
void rpc_fail(rpc_call *call, grpc_status_code code, const char *message);
/* From now on, rpc_reply and rpc_fail called on this thread hand the reply
 * to the thread of the call's completion queue instead of running gRPC's
 * write path here (for the raft thread, whose time bounds the write
 * throughput). */
void rpc_defer_replies_here(void);
/* For a deferring thread that answers in runs (the raft thread: the ops of
 * an entry): a queue's thread is woken only by rpc_flush_replies, once per
 * run, instead of at the first reply it gets and again whenever it has
 * emptied its list meanwhile (each wake-up could preempt the answering
 * thread on a busy machine). The thread must call rpc_flush_replies before
 * it waits for anything. With `idle` (the thread has nothing urgent to do
 * next) a run of one reply is sent from the calling thread: a wake-up of the
 * queue's thread would only add to that reply's latency (put at 1 client:
 * p50 about 20 us lower, 17-29 us less server CPU per Put). */
void rpc_hold_replies_here(void);
void rpc_flush_replies(int idle);

/* Per-call scratch for the handler: a pointer it may set and read back in
 * later callbacks (e.g. a decoded request). The handler frees what it puts. */
void rpc_call_set_data(rpc_call *call, void *data);
/* True when the request carries metadata `key` (lower case) = `value`. */
int rpc_call_has_metadata(rpc_call *call, const char *key, const char *value);
/* Milliseconds since the call arrived. */
uint64_t rpc_call_age_ms(rpc_call *call);
void *rpc_call_data(rpc_call *call);

/* ---- the queues for the process's own calls ----
 *
 * Every tag on a queue of the server starts with an rpc_tag: the queue's
 * thread calls fn(tag, ok). Calls this process makes to other members may
 * complete on these queues too (rpc_server_client_queue picks one, round
 * robin, among the unary calls' queues): their completions then run on the
 * server's queue threads, which poll gRPC's sockets anyway, with no thread
 * of their own to wake. The queues last until rpc_server_finish_shutdown. */
typedef struct rpc_tag {
    void (*fn)(struct rpc_tag *t, int ok);
} rpc_tag;
grpc_completion_queue *rpc_server_client_queue(rpc_server *s);

/* ---- calls inside a call ----
 *
 * A call may carry other requests (a follower's batch of forwarded
 * requests): each runs through the admit hook and the handler of the
 * registered unary method `path` as a call of its own, whose rpc_reply or
 * rpc_fail goes to `done` — on the thread that answers — instead of to a
 * client. It has no metadata but the parent's. `req` must stay valid until
 * done has run, and the parent must not be answered before every part has
 * been. Returns -1 (done not called) when no such method is registered, or
 * the path is the parent's own method. */
typedef void (*rpc_sub_done_fn)(void *arg, grpc_status_code code, const char *message,
                                const uint8_t *resp, size_t len);
int rpc_call_dispatch(rpc_call *parent, const char *path, size_t path_len, const uint8_t *req,
                      size_t len, rpc_sub_done_fn done, void *arg);

#endif
