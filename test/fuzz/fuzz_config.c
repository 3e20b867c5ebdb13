/* Fuzz target: the flag parser (server/config). The input is split at NUL
 * bytes into strings: those that look like KEY=value with an ETCD_ or
 * BALLAST_ prefix become the environment, the others argv after
 * "ballast". Whatever it is given, config_parse must end in one of its
 * three outcomes, leave nothing behind on a refusal (as its header
 * promises), and on success hand back a configuration that holds what the
 * server relies on (names, URL lists with a host and a port, timeouts
 * etcd would accept). The input is also parsed as a Go duration. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#include "fuzz_check.h"

#define MAX_STRINGS 64

static void check_url(const config_url *u)
{
    FUZZ_CHECK(u->scheme && u->host && u->text);
    FUZZ_CHECK(u->port >= 0 && u->port <= 65535);
}

static void check_urls(const config_url_list *l)
{
    FUZZ_CHECK(l->n == 0 || l->items != NULL);
    for (size_t i = 0; i < l->n; i++)
        check_url(&l->items[i]);
}

static void check_accepted(const ballast_config *c)
{
    FUZZ_CHECK(c->name && c->data_dir && c->initial_cluster_token && c->log_level);
    check_urls(&c->listen_client_urls);
    check_urls(&c->advertise_client_urls);
    check_urls(&c->listen_peer_urls);
    check_urls(&c->initial_advertise_peer_urls);
    check_urls(&c->listen_metrics_urls);
    FUZZ_CHECK(c->listen_client_urls.n > 0 && c->listen_peer_urls.n > 0);
    for (size_t i = 0; i < c->n_initial_cluster; i++) {
        FUZZ_CHECK(c->initial_cluster[i].name);
        check_url(&c->initial_cluster[i].url);
    }
    /* etcd's rule: the election timeout is at least 5 heartbeats. */
    FUZZ_CHECK(c->heartbeat_interval_ms > 0);
    FUZZ_CHECK(c->election_timeout_ms >= 5 * (uint64_t)c->heartbeat_interval_ms);
    FUZZ_CHECK(c->batch_policy == BATCH_POLICY_ADAPTIVE || c->batch_policy == BATCH_POLICY_TIERS ||
               c->batch_policy == BATCH_POLICY_OFF);
}

static int is_env(const char *s)
{
    return (strncmp(s, "ETCD_", 5) == 0 || strncmp(s, "BALLAST_", 8) == 0) && strchr(s, '=');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *sink;
    if (!sink) {
        sink = fopen("/dev/null", "w");
        FUZZ_CHECK(sink);
    }
    char *copy = malloc(size + 1);
    FUZZ_CHECK(copy);
    memcpy(copy, data, size);
    copy[size] = '\0';

    uint64_t us;
    (void)config_parse_duration_us(copy, &us);

    char *argv[MAX_STRINGS + 2], *envp[MAX_STRINGS + 1];
    int argc = 0;
    size_t envc = 0;
    argv[argc++] = "ballast";
    for (char *s = copy; s <= copy + size && argc + envc < MAX_STRINGS; s += strlen(s) + 1) {
        if (is_env(s))
            envp[envc++] = s;
        else
            argv[argc++] = s;
    }
    argv[argc] = NULL;
    envp[envc] = NULL;

    ballast_config cfg;
    config_status st = config_parse(&cfg, argc, argv, envp, sink, sink);
    switch (st) {
    case CONFIG_OK:
        check_accepted(&cfg);
        break;
    case CONFIG_EXIT_OK:
    case CONFIG_EXIT_USAGE:
        FUZZ_CHECK(cfg.name == NULL && cfg.data_dir == NULL && cfg.initial_cluster == NULL &&
                   cfg.listen_client_urls.items == NULL);
        break;
    default:
        FUZZ_CHECK(!"config_parse returned an unknown status");
    }
    config_free(&cfg);
    free(copy);
    return 0;
}
