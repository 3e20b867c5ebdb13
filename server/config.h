/*
 * config — etcd's command-line flags and ETCD_* environment variables.
 *
 * Every flag has etcd 3.4's name and default; a flag may also be given as the
 * environment variable ETCD_<FLAG IN UPPER CASE WITH '-' AS '_'>. As in etcd,
 * giving both the flag and its variable is an error; an empty variable counts
 * as unset. Ballast's own --batch-max-ops, --batch-max-wait and --batch-policy
 * are read from BALLAST_BATCH_MAX_OPS etc.
 */
#ifndef BALLAST_SERVER_CONFIG_H
#define BALLAST_SERVER_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    BATCH_POLICY_ADAPTIVE = 0,
    BATCH_POLICY_TIERS,
    BATCH_POLICY_OFF,
} batch_policy;

/* A parsed URL list entry such as http://127.0.0.1:2379. */
typedef struct config_url {
    char *scheme;   /* "http" or "https" */
    char *host;     /* "127.0.0.1", "localhost", "[::1]" without brackets: "::1" */
    int port;
    char *text;     /* the URL as given, e.g. "http://127.0.0.1:2379" */
} config_url;

typedef struct config_url_list {
    config_url *items;
    size_t n;
} config_url_list;

/* One name=peer-url pair of --initial-cluster. */
typedef struct config_member {
    char *name;
    config_url url;
} config_member;

typedef struct ballast_config {
    char *name;                          /* --name, default "default" */
    char *data_dir;                      /* --data-dir, default "<name>.etcd" */
    config_url_list listen_client_urls;  /* default http://localhost:2379 */
    config_url_list advertise_client_urls; /* default http://localhost:2379 */
    config_url_list listen_peer_urls;    /* default http://localhost:2380 */
    config_url_list initial_advertise_peer_urls; /* default http://localhost:2380 */
    config_url_list listen_metrics_urls; /* default empty */
    config_member *initial_cluster;      /* default "<name>=http://localhost:2380" */
    size_t n_initial_cluster;
    int initial_cluster_state_existing;  /* --initial-cluster-state new|existing */
    char *initial_cluster_token;         /* default "etcd-cluster" */
    unsigned heartbeat_interval_ms;      /* default 100 */
    unsigned election_timeout_ms;        /* default 1000 */
    uint64_t snapshot_count;             /* default 100000 */
    uint64_t max_request_bytes;          /* default 1572864 */
    uint32_t max_txn_ops;                /* default 128 */
    int64_t quota_backend_bytes;         /* default 0 = etcd's 2 GiB default quota */
    uint64_t watch_progress_notify_interval_us; /* --experimental-watch-progress-notify-interval, 10m */
    char *log_level;                     /* debug|info|warn|error|panic|fatal, default info */
    uint32_t batch_max_ops;              /* --batch-max-ops, default 100 */
    uint64_t batch_max_wait_us;          /* --batch-max-wait, default 1ms (Go duration syntax) */
    batch_policy batch_policy;           /* --batch-policy adaptive|tiers|off */
    uint64_t memtable_reserve_bytes;     /* --memtable-reserve-bytes, default 128 MiB */
} ballast_config;

typedef enum {
    CONFIG_OK = 0,      /* run the server */
    CONFIG_EXIT_OK,     /* --help or --version was printed: exit 0 */
    CONFIG_EXIT_USAGE,  /* a bad flag: a message was printed to stderr: exit 2 */
} config_status;

/* Parses argv and the environment into *cfg (which it initialises; free it
 * with config_free). Prints --help/--version output to `out` and error
 * messages to `err`. */
#include <stdio.h>
config_status config_parse(ballast_config *cfg, int argc, char **argv, char **envp,
                           FILE *out, FILE *err);
void config_free(ballast_config *cfg);

/* Parses a Go duration ("1ms", "100us", "1.5s") into microseconds. */
int config_parse_duration_us(const char *s, uint64_t *us);

#endif
