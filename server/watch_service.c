/* The Watch service: one bidirectional stream per client watch session. The
 * storage watch hub speaks etcd's watch protocol; this file only carries its
 * messages between gRPC and the hub. */
#include <stdlib.h>

#include "ballast.h"

static int stream_send(void *ctx, const uint8_t *msg, size_t len)
{
    return rpc_stream_send(ctx, msg, len);
}

static size_t stream_backlog(void *ctx)
{
    return rpc_stream_backlog(ctx);
}

static void stream_released(void *ctx)
{
    rpc_stream_release(ctx);
}

static const watch_stream_ops hub_ops = {stream_send, stream_backlog, stream_released};

static void watch_open(rpc_stream *st, void *arg)
{
    ballast_server *b = arg;
    if (cluster_stream_open(b, st))
        return;
    watch_stream *ws = watch_stream_open(b->watch, &hub_ops, st);
    if (!ws) {
        rpc_stream_finish(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        return;
    }
    rpc_stream_set_data(st, ws);
}

static void watch_message(rpc_stream *st, const uint8_t *msg, size_t len, void *arg)
{
    (void)arg;
    watch_stream *ws = rpc_stream_data(st);
    if (!ws)
        return;
    Etcdserverpb__WatchRequest *req = ballast_decode(&etcdserverpb__watch_request__descriptor, msg, len);
    if (!req) {
        /* etcd's receive loop fails on a message it cannot decode, which
         * ends the stream with an error. */
        rpc_stream_finish(st, GRPC_STATUS_INTERNAL, BALLAST_ERR_MALFORMED);
        return;
    }
    watch_stream_request(ws, req);
    etcdserverpb__watch_request__free_unpacked(req, NULL);
}

/* A client that closes its sending side keeps receiving events, as with
 * etcd: the stream lasts until the call ends. */
static void watch_recv_end(rpc_stream *st, void *arg)
{
    (void)st;
    (void)arg;
}

static void watch_done(rpc_stream *st, int cancelled, void *arg)
{
    (void)cancelled;
    cluster_stream_done(arg, st);
    watch_stream *ws = rpc_stream_data(st);
    if (ws)
        watch_stream_close(ws); /* the hub releases st when it has let go */
    else
        rpc_stream_release(st);
}

static const rpc_stream_handler watch_handler = {watch_open, watch_message, watch_recv_end, watch_done};

size_t watch_service_streams(ballast_server *b, rpc_stream_method *out)
{
    out[0] = (rpc_stream_method){"/etcdserverpb.Watch/Watch", &watch_handler, b};
    return 1;
}

void watch_service_header(void *arg, mvcc_header *out)
{
    *out = ballast_header(arg);
}
