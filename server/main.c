/* ballast — an etcd v3 server: flags, start-up, serving, orderly stop. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "absl_checks.h"
#include "ballast.h"
#include "config.h"
#include "heap_pages.h"
#include "member.h"
#include "metrics_http.h"
#include "snapshot_restore.h"

#define MAX_METHODS 64
/* Free space the file systems of the data dir and of its raft log must
 * keep. c-raft 0.15 crashes (SIGSEGV or an abort) when it cannot create its
 * next 8 MiB log segment, and it prepares up to two ahead: the member stops
 * while there is still room for them (test_disk_full.py,
 * test_disk_full_split.py). Checked every DISK_CHECK_MS. */
#define DISK_RESERVE_BYTES (32ull << 20)
#define DISK_CHECK_MS 50

static void log_info(const ballast_config *cfg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void log_info(const ballast_config *cfg, const char *fmt, ...)
{
    if (strcmp(cfg->log_level, "debug") != 0 && strcmp(cfg->log_level, "info") != 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ballast info: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void die(const char *what, char *errmsg)
{
    fprintf(stderr, "ballast error: %s: %s\n", what, errmsg ? errmsg : "unknown error");
    free(errmsg);
    exit(1);
}

/* 1, after logging why, when the file system of one of `dirs` (the data
 * dir, and its raft log which may be mounted apart) has less than
 * DISK_RESERVE_BYTES free for an unprivileged writer. The store's own
 * directory is not watched: a store write that fails stops apply with
 * RocksDB's reason (test_disk_full_split.py). */
static int disk_short(const char *const dirs[], size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        struct statvfs st;
        if (statvfs(dirs[i], &st) != 0)
            continue; /* not created yet (a new member's raft dir) */
        uint64_t free_bytes = (uint64_t)st.f_bavail * st.f_frsize;
        if (free_bytes >= DISK_RESERVE_BYTES)
            continue;
        fprintf(stderr,
                "ballast FATAL: no space left for the data directory: %llu KiB free on the file "
                "system of %s, under the %llu KiB Ballast keeps free; %s (free space, then start "
                "it)\n",
                (unsigned long long)(free_bytes >> 10), dirs[i],
                (unsigned long long)(DISK_RESERVE_BYTES >> 10), what);
        return 1;
    }
    return 0;
}

/* c-raft's TCP transport takes IPv4 dotted quads. */
static const char *raft_host(const char *host)
{
    return strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
}

static void host_port(const config_url *u, char *out, size_t cap)
{
    snprintf(out, cap, "%s:%d", raft_host(u->host), u->port);
}

/* The raft thread applies entries; sending the replies through gRPC's
 * write path (a quarter of what it did per Put at 256 clients) is left to
 * the completion-queue threads. */
static void raft_thread_started(void *arg)
{
    ballast_server *b = arg;
    /* applies run on this thread: the memtables' memory is allocated here */
    mvcc_reserve_write_memory((size_t)b->cfg->memtable_reserve_bytes);
    rpc_defer_replies_here();
    rpc_hold_replies_here(); /* one wake-up per queue thread per entry */
}

static void raft_answers_flush(void *arg, int idle)
{
    (void)arg;
    rpc_flush_replies(idle);
}

/* grpc_shutdown() joins gRPC's executor threads. Under heavy CPU load one
 * of them was seen waiting ~10 s in an epoll inside a closure, which left
 * the process hung after SIGTERM (test_disk_full_split with two busy
 * loops beside it, before and after session 6's changes). The store is
 * closed by then, so when gRPC's own clean-up takes longer than
 * SHUTDOWN_GRPC_WAIT_S the process exits without it. */
#define SHUTDOWN_GRPC_WAIT_S 3

static void *grpc_shutdown_watchdog(void *arg)
{
    int code = (int)(intptr_t)arg;
    struct timespec t = {SHUTDOWN_GRPC_WAIT_S, 0};
    while (nanosleep(&t, &t) != 0 && errno == EINTR)
        ;
    fprintf(stderr, "ballast warn: gRPC's shutdown did not finish in %d s; exiting without it\n",
            SHUTDOWN_GRPC_WAIT_S);
    fflush(stderr);
    _exit(code);
    return NULL;
}

static void shutdown_grpc(int exit_code)
{
    pthread_t t;
    pthread_attr_t a;
    if (pthread_attr_init(&a) == 0) {
        /* without the watchdog (no thread) the wait is gRPC's alone */
        if (pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED) == 0)
            pthread_create(&t, &a, grpc_shutdown_watchdog, (void *)(intptr_t)exit_code);
        pthread_attr_destroy(&a);
    }
    grpc_shutdown();
}

/* Every client connection is a file: a soft limit of 1024 (a login shell's
 * or a systemd service's default) would refuse connections before the
 * thousandth, where etcd (the Go runtime raises its soft limit to the hard
 * one) keeps accepting. Failure leaves the limit as it was. */
static void raise_open_file_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv, char **envp)
{
    signal(SIGPIPE, SIG_IGN);
    raise_open_file_limit();
    if (argc >= 2 && strcmp(argv[1], "snapshot") == 0)
        return snapshot_command_main(argc, argv, envp);
    /* before anything is opened or started: may start the program again */
    heap_pages_restart(argv);
    ballast_config cfg;
    config_status cs = config_parse(&cfg, argc, argv, envp, stdout, stderr);
    if (cs == CONFIG_EXIT_OK) {
        config_free(&cfg);
        return 0;
    }
    if (cs == CONFIG_EXIT_USAGE)
        return 2;

    /* Signals are taken by sigwait in this thread only. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    member_identity id;
    char *err = NULL;
    if (member_open_data_dir(&cfg, &id, &err) != 0)
        die("cannot use the data directory", err);
    const char *watched[] = {cfg.data_dir, id.raft_dir};
    if (disk_short(watched, 2, "not starting"))
        exit(1);

    ballast_server b = {0};
    b.cfg = &cfg;
    b.member_id = id.member_id;
    b.cluster_id = id.cluster_id;
    b.limits.max_txn_ops = cfg.max_txn_ops;
    b.limits.max_request_bytes = cfg.max_request_bytes;
    if (mvcc_open(id.kv_dir, &b.store, &err) != 0)
        die("cannot open the key-value store", err);

    kv_service_init(&b);
    if (maintenance_service_init(&b, &err) != 0)
        die("cannot start the maintenance service", err);
    if (lease_service_init(&b, &err) != 0)
        die("cannot start the lessor", err);
    watch_hub_config wc = {
        .store = b.store,
        .header = watch_service_header,
        .header_arg = &b,
        .max_request_bytes = cfg.max_request_bytes,
        .stream_backlog_limit = 256u << 10,
        .progress_interval_ms = cfg.watch_progress_notify_interval_us / 1000,
    };
    b.watch = watch_hub_start(&wc, &err);
    if (!b.watch)
        die("cannot start the watch hub", err);

    absl_deadlock_detection_off();
    grpc_init();
    if (cluster_init(&b, &err) != 0)
        die("cannot start the cluster layer", err);

    raft_node_peer *peers = calloc(cfg.n_initial_cluster ? cfg.n_initial_cluster : 1, sizeof *peers);
    char (*peer_addr)[300] = calloc(cfg.n_initial_cluster ? cfg.n_initial_cluster : 1, sizeof *peer_addr);
    for (size_t i = 0; i < cfg.n_initial_cluster; i++) {
        host_port(&cfg.initial_cluster[i].url, peer_addr[i], sizeof peer_addr[i]);
        peers[i].id = member_id_for_url(cfg.initial_cluster[i].url.text, cfg.initial_cluster_token);
        peers[i].address = peer_addr[i];
    }
    char self_addr[300], bind_addr[300];
    if (cfg.initial_advertise_peer_urls.n == 0 || cfg.listen_peer_urls.n == 0)
        die("bad configuration", strdup("no peer URL to listen on or advertise"));
    host_port(&cfg.initial_advertise_peer_urls.items[0], self_addr, sizeof self_addr);
    /* c-raft listens on one address: the listen URL with the advertised
     * peer port (etcd lists URLs sorted, so the first may be another). */
    const config_url *bind = &cfg.listen_peer_urls.items[0];
    for (size_t i = 0; i < cfg.listen_peer_urls.n; i++)
        if (cfg.listen_peer_urls.items[i].port == cfg.initial_advertise_peer_urls.items[0].port)
            bind = &cfg.listen_peer_urls.items[i];
    host_port(bind, bind_addr, sizeof bind_addr);
    for (size_t i = 0; i < cfg.n_initial_cluster; i++)
        if (peers[i].id == b.member_id)
            snprintf(self_addr, sizeof self_addr, "%s", peer_addr[i]);

    raft_node_config rc = {
        .dir = id.raft_dir,
        .id = b.member_id,
        .address = self_addr,
        .bind_address = bind_addr,
        .initial_members = peers,
        .n_initial_members = cfg.n_initial_cluster,
        .join_existing = cfg.initial_cluster_state_existing,
        .heartbeat_ms = cfg.heartbeat_interval_ms,
        .election_ms = cfg.election_timeout_ms,
        .snapshot_count = cfg.snapshot_count,
        .store = b.store,
        .cluster_id = b.cluster_id,
        .batch =
            {
                .policy = cfg.batch_policy == BATCH_POLICY_TIERS ? BATCH_TIERS
                          : cfg.batch_policy == BATCH_POLICY_OFF ? BATCH_OFF
                                                                 : BATCH_ADAPTIVE,
                .max_ops = cfg.batch_max_ops,
                .max_wait_us = cfg.batch_max_wait_us,
                .max_in_flight = 4,
                .max_entry_bytes = cfg.max_request_bytes * 4,
            },
        .op_done = ballast_op_done,
        .read_done = kv_service_read_done,
        .leader_change = lease_service_leader_change,
        .remote_read = cluster_remote_read,
        .fetch_store = cluster_fetch_store,
        .applied = cluster_applied,
        .transfer_done = cluster_transfer_done,
        .loop_started = raft_thread_started,
        .answers_flush = raft_answers_flush,
        .cb_arg = &b,
    };
    if (raft_node_start(&rc, &b.node, &err) != 0)
        die("cannot start raft", err);
    if (cluster_start(&b, &err) != 0)
        die("cannot start the cluster layer", err);

    /* Serve once this member's attributes are in the replicated member list,
     * as etcd does — which also means a leader is known and this member has
     * caught up with it. A member that cannot get there soon (no quorum)
     * serves anyway: requests then get etcd's errors. */
    if (cluster_wait_published(&b, cfg.election_timeout_ms * 5) != 0)
        log_info(&cfg, "not yet published to the cluster (no leader?); serving anyway");

    rpc_method methods[MAX_METHODS];
    size_t n_methods = 0;
    n_methods += kv_service_methods(&b, methods + n_methods);
    n_methods += maintenance_service_methods(&b, methods + n_methods);
    n_methods += cluster_service_methods(&b, methods + n_methods);
    n_methods += lease_service_methods(&b, methods + n_methods);

    const char **listen = calloc(cfg.listen_client_urls.n ? cfg.listen_client_urls.n : 1, sizeof *listen);
    char (*listen_addr)[300] = calloc(cfg.listen_client_urls.n ? cfg.listen_client_urls.n : 1, sizeof *listen_addr);
    for (size_t i = 0; i < cfg.listen_client_urls.n; i++) {
        const config_url *u = &cfg.listen_client_urls.items[i];
        snprintf(listen_addr[i], sizeof listen_addr[i], strchr(u->host, ':') ? "[%s]:%d" : "%s:%d",
                 u->host, u->port);
        listen[i] = listen_addr[i];
    }
    rpc_options ro = {
        .listen = listen,
        .n_listen = cfg.listen_client_urls.n,
        .threads = 0,
        /* etcd lets gRPC receive up to --max-request-bytes plus 512 KiB and
         * answers "request is too large" itself in between. */
        .max_receive_bytes = cfg.max_request_bytes + 512 * 1024,
        .admit = cluster_admit,
        .admit_arg = &b,
    };
    rpc_stream_method streams[8];
    size_t n_streams = watch_service_streams(&b, streams);
    n_streams += lease_service_streams(&b, streams + n_streams);
    n_streams += maintenance_service_streams(&b, streams + n_streams);
    rpc_server *rpc = rpc_server_create(&ro, methods, n_methods, streams, n_streams, &err);
    if (!rpc)
        die("cannot serve clients", err);
    rpc_server_start(rpc);
    peer_client_attach(b.peers, rpc); /* peer calls complete on its queue threads */

    metrics_http *metrics = NULL;
    if (cfg.listen_metrics_urls.n) {
        const config_url *u = &cfg.listen_metrics_urls.items[0];
        metrics = metrics_http_start(&b, u->host, u->port, &err);
        if (!metrics)
            die("cannot serve metrics", err);
    }
    log_info(&cfg, "member %016llx of cluster %016llx ready to serve client requests on %s",
             (unsigned long long)b.member_id, (unsigned long long)b.cluster_id,
             cfg.listen_client_urls.n ? cfg.listen_client_urls.items[0].text : "(none)");

    int exit_code = 0;
    const struct timespec check_every = {0, DISK_CHECK_MS * 1000000L};
    for (;;) {
        int sig = sigtimedwait(&sigs, NULL, &check_every);
        if (sig == SIGINT || sig == SIGTERM) {
            log_info(&cfg, "received %s, stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
            break;
        }
        if (disk_short(watched, 2, "stopping")) {
            exit_code = 1;
            break;
        }
    }

    metrics_http_stop(metrics);
    rpc_server_begin_shutdown(rpc);
    lease_service_stop_timers(&b); /* no more expiry proposals */
    cluster_stop_calls(&b);  /* parked and forwarded calls */
    raft_node_stop(b.node); /* answers every call still waiting for raft */
    lease_service_free(&b);
    kv_service_stop(&b);
    maintenance_service_stop(&b); /* defragment and snapshot threads */
    cluster_free(&b);
    watch_hub_stop(b.watch); /* releases the streams still open */
    rpc_server_finish_shutdown(rpc);
    rpc_server_destroy(rpc);
    mvcc_close(b.store); /* everything is durable from here on */
    maintenance_service_free(&b);
    shutdown_grpc(exit_code);
    free(listen);
    free(listen_addr);
    free(peers);
    free(peer_addr);
    member_identity_free(&id);
    config_free(&cfg);
    return exit_code;
}
