/* c-raft's TCP transport (raft_uv_tcp), with a hand on the outgoing
 * connections it makes.
 *
 * c-raft 0.15 writes every AppendEntries for a follower into one TCP
 * connection, and keeps each entry in memory until its write completes. A
 * follower that is alive for TCP but does not read (SIGSTOP, a hung process)
 * leaves that connection open: the leader keeps streaming entries into it,
 * keeps them all in memory, and never switches to a snapshot, however far the
 * log moves on. peer_transport lets the raft thread see how much is stuck in
 * such a connection and abort it; c-raft then sees the sends fail, goes back
 * to probing the follower and, as the entries it needs are gone from the log,
 * sends it a snapshot.
 *
 * Everything here runs on the raft loop's thread, as c-raft's own use of the
 * transport does. */
#ifndef BALLAST_PEER_TRANSPORT_H
#define BALLAST_PEER_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

/* One outgoing connection as it was when c-raft got it; the fd is checked
 * against both addresses before it is touched, since c-raft closes its
 * streams without telling the transport. */
typedef struct {
    raft_id id;
    int fd; /* -1: none known */
    struct sockaddr_storage local, peer;
    socklen_t local_len, peer_len;
} peer_conn;

typedef struct {
    struct raft_uv_transport outer; /* what raft_uv_init is given */
    struct raft_uv_transport tcp;   /* c-raft's TCP transport underneath */
    raft_uv_accept_cb accept_cb;
    raft_uv_transport_close_cb close_cb;
    peer_conn *conns;
    size_t n_conns, cap_conns;
} peer_transport;

/* raft_uv_tcp_init (+ set_bind_address when bind_address is not NULL). Returns
 * 0 or a RAFT_* code. */
int peer_transport_init(peer_transport *t, uv_loop_t *loop, const char *bind_address);

/* The transport to give raft_uv_init. */
struct raft_uv_transport *peer_transport_raft(peer_transport *t);

/* Bytes written to the connection to `id` that its kernel has not yet had
 * acknowledged (SIOCOUTQ); 0 when there is no live connection. */
size_t peer_transport_unacked(peer_transport *t, raft_id id);

/* Aborts the outgoing connection to `id` (the kernel drops what it holds and
 * resets it); c-raft's pending sends on it fail and it reconnects. Returns 1
 * if a connection was aborted. */
int peer_transport_abort(peer_transport *t, raft_id id);

/* After raft_uv_close(): releases what raft_uv_tcp_init allocated. */
void peer_transport_release(peer_transport *t);

#endif
