#include "metrics_http.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct metrics_http {
    ballast_server *b;
    int fd;
    int stop_pipe[2];
    pthread_t thread;
};

typedef struct out_buf {
    char *p;
    size_t len, cap;
} out_buf;

static void put(out_buf *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->len = o->len + (size_t)n < o->cap ? o->len + (size_t)n : o->cap - 1;
}

size_t metrics_render(ballast_server *b, char *buf, size_t cap)
{
    out_buf o = {buf, 0, cap};
    batch_metrics m;
    raft_node_batch_metrics(b->node, &m);
    raft_node_status st;
    raft_node_get_status(b->node, &st);

    put(&o, "# HELP ballast_batch_ops_total Write operations submitted to the BatchProposer.\n");
    put(&o, "# TYPE ballast_batch_ops_total counter\nballast_batch_ops_total %llu\n",
        (unsigned long long)m.ops_total);
    put(&o, "# HELP ballast_batch_entries_total Raft entries proposed by the BatchProposer.\n");
    put(&o, "# TYPE ballast_batch_entries_total counter\nballast_batch_entries_total %llu\n",
        (unsigned long long)m.entries_total);
    put(&o, "# HELP ballast_batch_flushes_total Entries closed, by what closed them.\n");
    put(&o, "# TYPE ballast_batch_flushes_total counter\n");
    put(&o, "ballast_batch_flushes_total{trigger=\"full\"} %llu\n", (unsigned long long)m.flush_full);
    put(&o, "ballast_batch_flushes_total{trigger=\"timer\"} %llu\n", (unsigned long long)m.flush_timer);
    put(&o, "ballast_batch_flushes_total{trigger=\"idle\"} %llu\n", (unsigned long long)m.flush_idle);
    put(&o, "# HELP ballast_batch_encode_seconds_total Time spent encoding entries.\n");
    put(&o, "# TYPE ballast_batch_encode_seconds_total counter\nballast_batch_encode_seconds_total %.9f\n",
        (double)m.encode_ns_total / 1e9);
    put(&o, "# HELP ballast_batch_wait_seconds The wait the batching policy applies now.\n");
    put(&o, "# TYPE ballast_batch_wait_seconds gauge\nballast_batch_wait_seconds %.6f\n",
        (double)m.current_wait_us / 1e6);
    put(&o, "# HELP ballast_batch_ops_per_second Ops submitted in the last whole second.\n");
    put(&o, "# TYPE ballast_batch_ops_per_second gauge\nballast_batch_ops_per_second %llu\n",
        (unsigned long long)m.ops_per_sec);
    put(&o, "# HELP ballast_batch_size Ops per raft entry.\n# TYPE ballast_batch_size histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < BATCH_SIZE_BUCKETS; i++) {
        cum += m.size_hist[i];
        if (i < BATCH_SIZE_BUCKETS - 1)
            put(&o, "ballast_batch_size_bucket{le=\"%d\"} %llu\n", 1 << i, (unsigned long long)cum);
    }
    put(&o, "ballast_batch_size_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    put(&o, "ballast_batch_size_sum %llu\nballast_batch_size_count %llu\n",
        (unsigned long long)m.ops_total, (unsigned long long)cum);
    uint64_t fwd_batches, fwd_requests;
    peer_client_forward_stats(b->peers, &fwd_batches, &fwd_requests);
    put(&o, "# HELP ballast_forward_batches_total Batches of client requests forwarded to the leader.\n");
    put(&o, "# TYPE ballast_forward_batches_total counter\nballast_forward_batches_total %llu\n",
        (unsigned long long)fwd_batches);
    put(&o, "# HELP ballast_forward_requests_total Client requests forwarded to the leader in batches.\n");
    put(&o, "# TYPE ballast_forward_requests_total counter\nballast_forward_requests_total %llu\n",
        (unsigned long long)fwd_requests);
    put(&o, "# TYPE etcd_server_has_leader gauge\netcd_server_has_leader %d\n", st.leader_id != 0);
    put(&o, "# TYPE etcd_server_is_leader gauge\netcd_server_is_leader %d\n", st.is_leader);
    put(&o, "# TYPE etcd_server_proposals_committed_total gauge\netcd_server_proposals_committed_total %llu\n",
        (unsigned long long)st.commit_index);
    put(&o, "# TYPE etcd_server_proposals_applied_total gauge\netcd_server_proposals_applied_total %llu\n",
        (unsigned long long)st.applied_index);
    put(&o, "# TYPE etcd_mvcc_db_total_size_in_bytes gauge\n");
    int64_t size, in_use;
    mvcc_db_size(b->store, &size, &in_use);
    put(&o, "etcd_mvcc_db_total_size_in_bytes %lld\n", (long long)size);
    return o.len;
}

static void serve_one(metrics_http *m, int fd)
{
    char req[2048];
    size_t got = 0;
    /* Read the request head (bounded in size and time). */
    while (got < sizeof req - 1) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 2000) <= 0)
            return;
        ssize_t n = read(fd, req + got, sizeof req - 1 - got);
        if (n <= 0)
            return;
        got += (size_t)n;
        req[got] = 0;
        if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
            break;
    }
    req[got] = 0;
    static char body[64 * 1024];
    const char *status = "200 OK", *type = "text/plain; version=0.0.4";
    size_t len;
    if (strncmp(req, "GET /metrics", 12) == 0) {
        len = metrics_render(m->b, body, sizeof body);
    } else if (strncmp(req, "GET /health", 11) == 0) {
        raft_node_status st;
        raft_node_get_status(m->b->node, &st);
        type = "application/json";
        len = (size_t)snprintf(body, sizeof body, "{\"health\":\"%s\"}", st.leader_id ? "true" : "false");
        if (!st.leader_id)
            status = "503 Service Unavailable";
    } else {
        status = "404 Not Found";
        len = (size_t)snprintf(body, sizeof body, "404 page not found\n");
    }
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                      status, type, len);
    if (write(fd, head, (size_t)hl) < 0 || write(fd, body, len) < 0)
        return;
}

static void *metrics_main(void *arg)
{
    pthread_setname_np(pthread_self(), "metrics");
    metrics_http *m = arg;
    for (;;) {
        struct pollfd p[2] = {{m->fd, POLLIN, 0}, {m->stop_pipe[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        int c = accept(m->fd, NULL, NULL);
        if (c < 0)
            continue;
        serve_one(m, c);
        close(c);
    }
    return NULL;
}

metrics_http *metrics_http_start(ballast_server *b, const char *host, int port, char **errmsg)
{
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if (getaddrinfo(host, portstr, &hints, &ai) != 0 || !ai) {
        *errmsg = strdup("cannot resolve the metrics address");
        return NULL;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0) {
        char buf[256];
        snprintf(buf, sizeof buf, "cannot listen for metrics on %s:%d: %s", host, port, strerror(errno));
        *errmsg = strdup(buf);
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return NULL;
    }
    freeaddrinfo(ai);
    metrics_http *m = calloc(1, sizeof *m);
    m->b = b;
    m->fd = fd;
    if (pipe(m->stop_pipe) != 0 || pthread_create(&m->thread, NULL, metrics_main, m) != 0) {
        *errmsg = strdup("cannot start the metrics thread");
        close(fd);
        free(m);
        return NULL;
    }
    return m;
}

void metrics_http_stop(metrics_http *m)
{
    if (!m)
        return;
    if (write(m->stop_pipe[1], "x", 1) < 0)
        return;
    pthread_join(m->thread, NULL);
    close(m->stop_pipe[0]);
    close(m->stop_pipe[1]);
    close(m->fd);
    free(m);
}
