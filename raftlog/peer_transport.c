#include "peer_transport.h"

#include <errno.h>
#include <linux/sockios.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#define OUTER(p) ((peer_transport *)((char *)(p) - offsetof(peer_transport, outer)))
#define INNER(p) ((peer_transport *)((char *)(p) - offsetof(peer_transport, tcp)))

typedef struct {
    struct raft_uv_connect req; /* given to the TCP transport */
    struct raft_uv_connect *caller;
    raft_uv_connect_cb cb;
    peer_transport *t;
    raft_id id;
} connect_req;

static void copy_errmsg(peer_transport *t)
{
    memcpy(t->outer.errmsg, t->tcp.errmsg, sizeof t->outer.errmsg);
}

static peer_conn *conn_of(peer_transport *t, raft_id id, int create)
{
    for (size_t i = 0; i < t->n_conns; i++)
        if (t->conns[i].id == id)
            return &t->conns[i];
    if (!create)
        return NULL;
    if (t->n_conns == t->cap_conns) {
        size_t cap = t->cap_conns ? 2 * t->cap_conns : 8;
        peer_conn *p = realloc(t->conns, cap * sizeof *p);
        if (!p)
            return NULL;
        t->conns = p;
        t->cap_conns = cap;
    }
    peer_conn *c = &t->conns[t->n_conns++];
    memset(c, 0, sizeof *c);
    c->id = id;
    c->fd = -1;
    return c;
}

static int same_addr(const struct sockaddr_storage *a, socklen_t alen,
                     const struct sockaddr_storage *b, socklen_t blen)
{
    return alen == blen && memcmp(a, b, alen) == 0;
}

/* The connection's fd, if it is still the socket that was recorded. */
static int live_fd(peer_conn *c)
{
    if (!c || c->fd < 0)
        return -1;
    struct sockaddr_storage local, peer;
    socklen_t llen = sizeof local, plen = sizeof peer;
    memset(&local, 0, sizeof local);
    memset(&peer, 0, sizeof peer);
    if (getsockname(c->fd, (struct sockaddr *)&local, &llen) != 0 ||
        getpeername(c->fd, (struct sockaddr *)&peer, &plen) != 0 ||
        !same_addr(&local, llen, &c->local, c->local_len) ||
        !same_addr(&peer, plen, &c->peer, c->peer_len)) {
        c->fd = -1; /* closed by c-raft, or the number now names another socket */
        return -1;
    }
    return c->fd;
}

static void record(peer_transport *t, raft_id id, struct uv_stream_s *stream)
{
    peer_conn *c = conn_of(t, id, 1);
    if (!c)
        return;
    c->fd = -1;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)stream, &fd) != 0)
        return;
    memset(&c->local, 0, sizeof c->local);
    memset(&c->peer, 0, sizeof c->peer);
    c->local_len = sizeof c->local;
    c->peer_len = sizeof c->peer;
    if (getsockname(fd, (struct sockaddr *)&c->local, &c->local_len) != 0 ||
        getpeername(fd, (struct sockaddr *)&c->peer, &c->peer_len) != 0)
        return;
    c->fd = fd;
}

static int tr_init(struct raft_uv_transport *outer, raft_id id, const char *address)
{
    peer_transport *t = OUTER(outer);
    int rv = t->tcp.init(&t->tcp, id, address);
    if (rv != 0)
        copy_errmsg(t);
    return rv;
}

/* c-raft leaves Nagle's algorithm on: a small message (an append's answer,
 * a heartbeat) sent while an earlier one is unacknowledged would wait for
 * that acknowledgement, which the peer delays up to 40 ms. */
static void no_delay(struct uv_stream_s *stream)
{
    if (stream && stream->type == UV_TCP)
        uv_tcp_nodelay((uv_tcp_t *)stream, 1);
}

static void on_accept(struct raft_uv_transport *tcp, raft_id id, const char *address,
                      struct uv_stream_s *stream)
{
    peer_transport *t = INNER(tcp);
    no_delay(stream);
    t->accept_cb(&t->outer, id, address, stream);
}

static int tr_listen(struct raft_uv_transport *outer, raft_uv_accept_cb cb)
{
    peer_transport *t = OUTER(outer);
    t->accept_cb = cb;
    int rv = t->tcp.listen(&t->tcp, on_accept);
    if (rv != 0)
        copy_errmsg(t);
    return rv;
}

static void on_connect(struct raft_uv_connect *req, struct uv_stream_s *stream, int status)
{
    connect_req *cr = req->data;
    if (status == 0 && stream) {
        no_delay(stream);
        record(cr->t, cr->id, stream);
    }
    struct raft_uv_connect *caller = cr->caller;
    raft_uv_connect_cb cb = cr->cb;
    free(cr);
    cb(caller, stream, status);
}

static int tr_connect(struct raft_uv_transport *outer, struct raft_uv_connect *req, raft_id id,
                      const char *address, raft_uv_connect_cb cb)
{
    peer_transport *t = OUTER(outer);
    connect_req *cr = calloc(1, sizeof *cr);
    if (!cr)
        return RAFT_NOMEM;
    cr->req.data = cr;
    cr->caller = req;
    cr->cb = cb;
    cr->t = t;
    cr->id = id;
    int rv = t->tcp.connect(&t->tcp, &cr->req, id, address, on_connect);
    if (rv != 0) {
        copy_errmsg(t);
        free(cr);
    }
    return rv;
}

static void on_close(struct raft_uv_transport *tcp)
{
    peer_transport *t = INNER(tcp);
    if (t->close_cb)
        t->close_cb(&t->outer);
}

static void tr_close(struct raft_uv_transport *outer, raft_uv_transport_close_cb cb)
{
    peer_transport *t = OUTER(outer);
    t->close_cb = cb;
    t->tcp.close(&t->tcp, on_close);
}

int peer_transport_init(peer_transport *t, uv_loop_t *loop, const char *bind_address)
{
    memset(t, 0, sizeof *t);
    int rv = raft_uv_tcp_init(&t->tcp, loop);
    if (rv != 0)
        return rv;
    if (bind_address) {
        rv = raft_uv_tcp_set_bind_address(&t->tcp, bind_address);
        if (rv != 0) {
            raft_uv_tcp_close(&t->tcp);
            return rv;
        }
    }
    t->outer.init = tr_init;
    t->outer.listen = tr_listen;
    t->outer.connect = tr_connect;
    t->outer.close = tr_close;
    return 0;
}

struct raft_uv_transport *peer_transport_raft(peer_transport *t)
{
    return &t->outer;
}

size_t peer_transport_unacked(peer_transport *t, raft_id id)
{
    int fd = live_fd(conn_of(t, id, 0));
    int queued = 0;
    if (fd < 0 || ioctl(fd, SIOCOUTQ, &queued) != 0 || queued < 0)
        return 0;
    return (size_t)queued;
}

int peer_transport_abort(peer_transport *t, raft_id id)
{
    peer_conn *c = conn_of(t, id, 0);
    int fd = live_fd(c);
    if (fd < 0)
        return 0;
    /* connect() to AF_UNSPEC dissolves a TCP connection at once: the kernel
     * discards the send queue and resets the peer, where shutdown() would
     * wait behind data the peer is not reading. libuv's next write on the
     * socket fails, and c-raft drops the connection and its pending sends. */
    struct sockaddr unspec;
    memset(&unspec, 0, sizeof unspec);
    unspec.sa_family = AF_UNSPEC;
    int rv = connect(fd, &unspec, sizeof unspec);
    c->fd = -1;
    return rv == 0;
}

void peer_transport_release(peer_transport *t)
{
    raft_uv_tcp_close(&t->tcp);
    free(t->conns);
    t->conns = NULL;
    t->n_conns = t->cap_conns = 0;
}
