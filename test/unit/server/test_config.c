/* Unit tests for server/config: etcd 3.4's flags and ETCD_* variables. The
 * expected behaviour was checked against etcd 3.4.23 itself where etcd has
 * it (exit statuses aside: Ballast reports every configuration error with
 * status 2). */
#include "config.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static char *g_out, *g_err;

#define ARGS(...) ((const char *[]){ __VA_ARGS__, NULL })
#define NO_ARGS ((const char *[]){ NULL })
#define ENV(...) ((const char *[]){ __VA_ARGS__, NULL })
#define NO_ENV ((const char *[]){ NULL })

/* Runs config_parse on "ballast <args...>" with exactly the environment
 * `env`; what it prints is left in g_out and g_err. */
static config_status parse(ballast_config *cfg, const char **args, const char **env)
{
    char *argv[128];
    int argc = 0;
    size_t olen, elen;

    argv[argc++] = "ballast";
    for (; *args; args++) {
        CHECK(argc + 1 < (int)(sizeof argv / sizeof argv[0]));
        argv[argc++] = (char *)*args;
    }
    argv[argc] = NULL;

    free(g_out);
    free(g_err);
    FILE *out = open_memstream(&g_out, &olen);
    FILE *err = open_memstream(&g_err, &elen);
    CHECK(out && err);
    config_status st = config_parse(cfg, argc, argv, (char **)env, out, err);
    fclose(out);
    fclose(err);
    return st;
}

static bool has(const char *haystack, const char *needle)
{
    return haystack && strstr(haystack, needle) != NULL;
}

#define CHECK_STR(a, b) CHECK((a) != NULL && strcmp((a), (b)) == 0)
#define CHECK_OUT(s) CHECK(has(g_out, s))
#define CHECK_ERR(s) CHECK(has(g_err, s))

/* Parses args that must be accepted, then frees. */
static void accepted(const char **args, const char **env)
{
    ballast_config cfg;
    config_status st = parse(&cfg, args, env);
    if (st != CONFIG_OK)
        fprintf(stderr, "unexpected rejection: %s", g_err);
    CHECK_EQ_INT(st, CONFIG_OK);
    config_free(&cfg);
}

/* Parses args that must be refused with `msg` on stderr. */
static void refused(const char **args, const char **env, const char *msg)
{
    ballast_config cfg;
    config_status st = parse(&cfg, args, env);
    if (st != CONFIG_EXIT_USAGE || !has(g_err, msg))
        fprintf(stderr, "expected \"%s\", got status %d and: %s", msg, st, g_err);
    CHECK_EQ_INT(st, CONFIG_EXIT_USAGE);
    CHECK_ERR(msg);
    CHECK_ERR("See 'ballast --help'.");
    CHECK_STR(g_out, "");
    /* A refused parse leaves nothing to free and config_free stays safe. */
    CHECK(cfg.name == NULL && cfg.initial_cluster == NULL && cfg.listen_client_urls.items == NULL);
    config_free(&cfg);
}

static void check_url(const config_url *u, const char *scheme, const char *host, int port,
                      const char *text)
{
    CHECK_STR(u->scheme, scheme);
    CHECK_STR(u->host, host);
    CHECK_EQ_INT(u->port, port);
    CHECK_STR(u->text, text);
}

static void test_defaults(void)
{
    ballast_config cfg;
    CHECK_EQ_INT(parse(&cfg, NO_ARGS, NO_ENV), CONFIG_OK);
    CHECK_STR(g_out, "");
    CHECK_STR(g_err, "");
    CHECK_STR(cfg.name, "default");
    CHECK_STR(cfg.data_dir, "default.etcd");
    CHECK_EQ_INT(cfg.listen_client_urls.n, 1);
    check_url(&cfg.listen_client_urls.items[0], "http", "localhost", 2379, "http://localhost:2379");
    CHECK_EQ_INT(cfg.advertise_client_urls.n, 1);
    check_url(&cfg.advertise_client_urls.items[0], "http", "localhost", 2379, "http://localhost:2379");
    CHECK_EQ_INT(cfg.listen_peer_urls.n, 1);
    check_url(&cfg.listen_peer_urls.items[0], "http", "localhost", 2380, "http://localhost:2380");
    CHECK_EQ_INT(cfg.initial_advertise_peer_urls.n, 1);
    check_url(&cfg.initial_advertise_peer_urls.items[0], "http", "localhost", 2380,
              "http://localhost:2380");
    CHECK_EQ_INT(cfg.listen_metrics_urls.n, 0);
    CHECK_EQ_INT(cfg.n_initial_cluster, 1);
    CHECK_STR(cfg.initial_cluster[0].name, "default");
    check_url(&cfg.initial_cluster[0].url, "http", "localhost", 2380, "http://localhost:2380");
    CHECK_EQ_INT(cfg.initial_cluster_state_existing, 0);
    CHECK_STR(cfg.initial_cluster_token, "etcd-cluster");
    CHECK_EQ_INT(cfg.heartbeat_interval_ms, 100);
    CHECK_EQ_INT(cfg.election_timeout_ms, 1000);
    CHECK_EQ_INT(cfg.snapshot_count, 100000);
    CHECK_EQ_INT(cfg.max_request_bytes, 1572864);
    CHECK_EQ_INT(cfg.max_txn_ops, 128);
    CHECK_EQ_INT(cfg.quota_backend_bytes, 0);
    CHECK_STR(cfg.log_level, "info");
    CHECK_EQ_INT(cfg.batch_max_ops, 100);
    CHECK_EQ_INT(cfg.batch_max_wait_us, 1000);
    CHECK_EQ_INT(cfg.watch_progress_notify_interval_us, 600000000);
    CHECK_EQ_INT(cfg.batch_policy, BATCH_POLICY_ADAPTIVE);
    CHECK_EQ_INT(cfg.memtable_reserve_bytes, 128 << 20);
    config_free(&cfg);
    CHECK(cfg.name == NULL && cfg.data_dir == NULL && cfg.initial_cluster == NULL);
    config_free(&cfg); /* freeing twice is harmless */

    /* A NULL environment is an empty one. */
    char *argv[] = { "ballast", NULL };
    FILE *null_out = fopen("/dev/null", "w");
    CHECK(null_out);
    CHECK_EQ_INT(config_parse(&cfg, 1, argv, NULL, null_out, null_out), CONFIG_OK);
    fclose(null_out);
    config_free(&cfg);
}

static void test_every_flag(void)
{
    ballast_config cfg;
    CHECK_EQ_INT(parse(&cfg,
                       ARGS("--name", "n1",
                            "--data-dir=/var/lib/b",
                            "--listen-client-urls", "http://127.0.0.1:12379",
                            "--advertise-client-urls=http://10.0.0.1:12379",
                            "--listen-peer-urls", "http://127.0.0.1:12380",
                            "--initial-advertise-peer-urls", "http://10.0.0.1:12380",
                            "--listen-metrics-urls", "http://127.0.0.1:12381",
                            "--initial-cluster", "n1=http://10.0.0.1:12380,n2=http://10.0.0.2:12380",
                            "--initial-cluster-state", "existing",
                            "--initial-cluster-token=tok",
                            "--heartbeat-interval", "50",
                            "--election-timeout", "500",
                            "--snapshot-count", "5000",
                            "--max-request-bytes", "10485760",
                            "--max-txn-ops", "1024",
                            "--quota-backend-bytes", "8589934592",
                            "--log-level", "warn",
                            "--batch-max-ops", "64",
                            "--batch-max-wait", "250us",
                            "--batch-policy", "tiers"),
                       NO_ENV),
                 CONFIG_OK);
    CHECK_STR(g_err, "");
    CHECK_STR(cfg.name, "n1");
    CHECK_STR(cfg.data_dir, "/var/lib/b");
    check_url(&cfg.listen_client_urls.items[0], "http", "127.0.0.1", 12379, "http://127.0.0.1:12379");
    check_url(&cfg.advertise_client_urls.items[0], "http", "10.0.0.1", 12379, "http://10.0.0.1:12379");
    check_url(&cfg.listen_peer_urls.items[0], "http", "127.0.0.1", 12380, "http://127.0.0.1:12380");
    check_url(&cfg.initial_advertise_peer_urls.items[0], "http", "10.0.0.1", 12380,
              "http://10.0.0.1:12380");
    CHECK_EQ_INT(cfg.listen_metrics_urls.n, 1);
    check_url(&cfg.listen_metrics_urls.items[0], "http", "127.0.0.1", 12381, "http://127.0.0.1:12381");
    CHECK_EQ_INT(cfg.n_initial_cluster, 2);
    CHECK_STR(cfg.initial_cluster[0].name, "n1");
    CHECK_STR(cfg.initial_cluster[1].name, "n2");
    check_url(&cfg.initial_cluster[1].url, "http", "10.0.0.2", 12380, "http://10.0.0.2:12380");
    CHECK_EQ_INT(cfg.initial_cluster_state_existing, 1);
    CHECK_STR(cfg.initial_cluster_token, "tok");
    CHECK_EQ_INT(cfg.heartbeat_interval_ms, 50);
    CHECK_EQ_INT(cfg.election_timeout_ms, 500);
    CHECK_EQ_INT(cfg.snapshot_count, 5000);
    CHECK_EQ_INT(cfg.max_request_bytes, 10485760);
    CHECK_EQ_INT(cfg.max_txn_ops, 1024);
    CHECK_EQ_INT(cfg.quota_backend_bytes, 8589934592LL);
    CHECK_STR(cfg.log_level, "warn");
    CHECK_EQ_INT(cfg.batch_max_ops, 64);
    CHECK_EQ_INT(cfg.batch_max_wait_us, 250);
    CHECK_EQ_INT(cfg.batch_policy, BATCH_POLICY_TIERS);
    config_free(&cfg);
}

static void test_flag_syntax(void)
{
    ballast_config cfg;

    /* Go's flag package: one or two dashes, value joined by '=' or next. */
    const char **forms[] = {
        ARGS("--name", "x"), ARGS("--name=x"), ARGS("-name", "x"), ARGS("-name=x"),
    };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        CHECK_EQ_INT(parse(&cfg, forms[i], NO_ENV), CONFIG_OK);
        CHECK_STR(cfg.name, "x");
        config_free(&cfg);
    }

    /* The last occurrence wins; a value may start with '-' or contain '='. */
    CHECK_EQ_INT(parse(&cfg, ARGS("--name", "a", "--name", "-b=c"), NO_ENV), CONFIG_OK);
    CHECK_STR(cfg.name, "-b=c");
    config_free(&cfg);

    /* An empty value is a value. */
    CHECK_EQ_INT(parse(&cfg, ARGS("--initial-cluster-token="), NO_ENV), CONFIG_OK);
    CHECK_STR(cfg.initial_cluster_token, "");
    config_free(&cfg);

    /* "--" ends the flags; nothing may follow. */
    accepted(ARGS("--name", "x", "--"), NO_ENV);
    refused(ARGS("--", "--name", "x"), NO_ENV, "'--name' is not a valid flag");

    /* Booleans take no separate argument. */
    CHECK_EQ_INT(parse(&cfg, ARGS("--debug"), NO_ENV), CONFIG_OK);
    CHECK_STR(cfg.log_level, "debug");
    config_free(&cfg);
    CHECK_EQ_INT(parse(&cfg, ARGS("-debug=false", "--log-level", "error"), NO_ENV), CONFIG_OK);
    CHECK_STR(cfg.log_level, "error");
    config_free(&cfg);
    CHECK_EQ_INT(parse(&cfg, ARGS("--debug=T"), NO_ENV), CONFIG_OK);
    CHECK_STR(cfg.log_level, "debug");
    config_free(&cfg);
    refused(ARGS("--debug", "false"), NO_ENV, "'false' is not a valid flag");
    refused(ARGS("--debug=maybe"), NO_ENV, "invalid boolean value \"maybe\" for -debug: parse error");

    refused(ARGS("--foo"), NO_ENV, "flag provided but not defined: -foo");
    refused(ARGS("-foo=1"), NO_ENV, "flag provided but not defined: -foo");
    refused(ARGS("--batch-max-ops=1", "--nope", "--help"), NO_ENV,
            "flag provided but not defined: -nope");
    refused(ARGS("---name", "x"), NO_ENV, "bad flag syntax: ---name");
    refused(ARGS("-=x"), NO_ENV, "bad flag syntax: -=x");
    refused(ARGS("--name"), NO_ENV, "flag needs an argument: -name");
    refused(ARGS("extra"), NO_ENV, "'extra' is not a valid flag");
    refused(ARGS("--name", "x", "-"), NO_ENV, "'-' is not a valid flag");
    refused(ARGS("gateway"), NO_ENV, "'gateway' is not a valid flag");
}

static void test_numbers(void)
{
    ballast_config cfg;

    /* Go's base prefixes and separators, as etcd accepts them. */
    CHECK_EQ_INT(parse(&cfg,
                       ARGS("--heartbeat-interval", "0x64", "--election-timeout", "1_000",
                            "--max-txn-ops=0b11", "--snapshot-count", "010",
                            "--max-request-bytes", "0o17", "--quota-backend-bytes=-1"),
                       NO_ENV),
                 CONFIG_OK);
    CHECK_EQ_INT(cfg.heartbeat_interval_ms, 100);
    CHECK_EQ_INT(cfg.election_timeout_ms, 1000);
    CHECK_EQ_INT(cfg.max_txn_ops, 3);
    CHECK_EQ_INT(cfg.snapshot_count, 8);
    CHECK_EQ_INT(cfg.max_request_bytes, 15);
    CHECK_EQ_INT(cfg.quota_backend_bytes, -1);
    config_free(&cfg);

    CHECK_EQ_INT(parse(&cfg, ARGS("--snapshot-count", "18446744073709551615",
                                  "--quota-backend-bytes", "-9223372036854775808"), NO_ENV),
                 CONFIG_OK);
    CHECK(cfg.snapshot_count == UINT64_MAX);
    CHECK(cfg.quota_backend_bytes == INT64_MIN);
    config_free(&cfg);
    CHECK_EQ_INT(parse(&cfg, ARGS("--max-txn-ops", "4294967295"), NO_ENV), CONFIG_OK);
    CHECK(cfg.max_txn_ops == UINT32_MAX);
    config_free(&cfg);

    refused(ARGS("--heartbeat-interval", "abc"), NO_ENV,
            "invalid value \"abc\" for flag -heartbeat-interval: parse error");
    refused(ARGS("--heartbeat-interval", "-5"), NO_ENV,
            "invalid value \"-5\" for flag -heartbeat-interval: parse error");
    refused(ARGS("--heartbeat-interval", "+5"), NO_ENV, "parse error");
    refused(ARGS("--heartbeat-interval", "08"), NO_ENV, "parse error"); /* octal */
    refused(ARGS("--heartbeat-interval", ""), NO_ENV, "parse error");
    refused(ARGS("--heartbeat-interval", "1__0"), NO_ENV, "parse error");
    refused(ARGS("--heartbeat-interval", "_10"), NO_ENV, "parse error");
    refused(ARGS("--heartbeat-interval", "10_"), NO_ENV, "parse error");
    refused(ARGS("--heartbeat-interval", "0x"), NO_ENV, "parse error");
    refused(ARGS("--heartbeat-interval", "10ms"), NO_ENV, "parse error");
    refused(ARGS("--max-txn-ops", "4294967296"), NO_ENV,
            "invalid value \"4294967296\" for flag -max-txn-ops: value out of range");
    refused(ARGS("--snapshot-count", "18446744073709551616"), NO_ENV, "value out of range");
    refused(ARGS("--quota-backend-bytes", "9223372036854775808"), NO_ENV, "value out of range");
    refused(ARGS("--quota-backend-bytes=-1x"), NO_ENV,
            "invalid value \"-1x\" for flag -quota-backend-bytes: parse error");
    refused(ARGS("--batch-max-ops", "0"), NO_ENV,
            "invalid value \"0\" for flag -batch-max-ops: must be at least 1");
}

static void test_durations(void)
{
    static const struct { const char *in; uint64_t us; } good[] = {
        { "0", 0 },          { "+0", 0 },          { "-0", 0 },
        { "0s", 0 },         { "1ms", 1000 },      { "100us", 100 },
        { "100\xc2\xb5s", 100 }, { "100\xce\xbcs", 100 },
        { "1.5s", 1500000 }, { "2m", 120000000 },  { "1h", 3600000000ull },
        { "1h2m3s", 3723000000ull }, { "1.5h", 5400000000ull },
        { ".5ms", 500 },     { "1.ms", 1000 },     { "+3s", 3000000 },
        { "500ns", 1 },      { "499ns", 0 },       { "1499ns", 1 },
        { "1500ns", 2 },     { "1ms500us", 1500 }, { "0.0001s", 100 },
        { "2562047h47m16.854775807s", 9223372036854776ull },
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        uint64_t us = 12345;
        if (config_parse_duration_us(good[i].in, &us) != 0 || us != good[i].us)
            fprintf(stderr, "duration %s -> %llu\n", good[i].in, (unsigned long long)us);
        CHECK_EQ_INT(config_parse_duration_us(good[i].in, &us), 0);
        CHECK(us == good[i].us);
    }
    static const char *const bad[] = {
        "", "1", "10", "ms", "1x", "1msx", "-1ms", "-1", ".", ".s", "1..5s", "1s ", " 1s",
        "9223372036854775808ns", "2562048h", "1e3s", NULL,
    };
    uint64_t us;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (config_parse_duration_us(bad[i], &us) == 0)
            fprintf(stderr, "duration \"%s\" accepted\n", bad[i] ? bad[i] : "(null)");
        CHECK(config_parse_duration_us(bad[i], &us) != 0);
    }

    ballast_config cfg;
    CHECK_EQ_INT(parse(&cfg, ARGS("--batch-max-wait=0"), NO_ENV), CONFIG_OK);
    CHECK_EQ_INT(cfg.batch_max_wait_us, 0);
    config_free(&cfg);
    CHECK_EQ_INT(parse(&cfg, ARGS("--batch-max-wait", "1.5s"), NO_ENV), CONFIG_OK);
    CHECK_EQ_INT(cfg.batch_max_wait_us, 1500000);
    config_free(&cfg);
    refused(ARGS("--batch-max-wait", "1"), NO_ENV,
            "invalid value \"1\" for flag -batch-max-wait: parse error");
    refused(ARGS("--batch-max-wait", "-1ms"), NO_ENV,
            "invalid value \"-1ms\" for flag -batch-max-wait: must not be negative");
}

static void test_choices(void)
{
    ballast_config cfg;
    static const struct { const char *v; batch_policy p; } policies[] = {
        { "adaptive", BATCH_POLICY_ADAPTIVE }, { "tiers", BATCH_POLICY_TIERS }, { "off", BATCH_POLICY_OFF },
    };
    for (size_t i = 0; i < 3; i++) {
        CHECK_EQ_INT(parse(&cfg, ARGS("--batch-policy", policies[i].v), NO_ENV), CONFIG_OK);
        CHECK_EQ_INT(cfg.batch_policy, policies[i].p);
        config_free(&cfg);
    }
    refused(ARGS("--batch-policy", "fast"), NO_ENV,
            "invalid value \"fast\" for flag -batch-policy: must be one of adaptive, tiers, off");
    refused(ARGS("--batch-policy", "Tiers"), NO_ENV, "must be one of");

    CHECK_EQ_INT(parse(&cfg, ARGS("--initial-cluster-state=new"), NO_ENV), CONFIG_OK);
    CHECK_EQ_INT(cfg.initial_cluster_state_existing, 0);
    config_free(&cfg);
    refused(ARGS("--initial-cluster-state", "bogus"), NO_ENV,
            "invalid value \"bogus\" for flag -initial-cluster-state: must be one of new, existing");

    static const char *const levels[] = { "debug", "info", "warn", "error", "dpanic", "panic", "fatal" };
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
        CHECK_EQ_INT(parse(&cfg, ARGS("--log-level", levels[i]), NO_ENV), CONFIG_OK);
        CHECK_STR(cfg.log_level, levels[i]);
        config_free(&cfg);
    }
    refused(ARGS("--log-level=bogus"), NO_ENV, "invalid value \"bogus\" for flag -log-level");
    refused(ARGS("--log-level=INFO"), NO_ENV, "invalid value \"INFO\" for flag -log-level");
}

static void test_url_lists(void)
{
    ballast_config cfg;

    /* Several URLs: spaces around each are dropped, the list is sorted as
     * etcd sorts it, an IPv6 host loses its brackets, a scheme is lowered. */
    CHECK_EQ_INT(parse(&cfg,
                       ARGS("--listen-client-urls",
                            "http://127.0.0.1:2379, https://[::1]:2379 ,HTTP://0.0.0.0:12379",
                            "--advertise-client-urls", "https://node1.example.com:2379,http://node1:80"),
                       NO_ENV),
                 CONFIG_OK);
    CHECK_EQ_INT(cfg.listen_client_urls.n, 3);
    check_url(&cfg.listen_client_urls.items[0], "http", "0.0.0.0", 12379, "http://0.0.0.0:12379");
    check_url(&cfg.listen_client_urls.items[1], "http", "127.0.0.1", 2379, "http://127.0.0.1:2379");
    check_url(&cfg.listen_client_urls.items[2], "https", "::1", 2379, "https://[::1]:2379");
    CHECK_EQ_INT(cfg.advertise_client_urls.n, 2);
    check_url(&cfg.advertise_client_urls.items[0], "http", "node1", 80, "http://node1:80");
    check_url(&cfg.advertise_client_urls.items[1], "https", "node1.example.com", 2379,
              "https://node1.example.com:2379");
    config_free(&cfg);

    /* Several metrics URLs. */
    CHECK_EQ_INT(parse(&cfg, ARGS("--listen-metrics-urls=http://localhost:9000,http://127.0.0.1:9001"),
                       NO_ENV),
                 CONFIG_OK);
    CHECK_EQ_INT(cfg.listen_metrics_urls.n, 2);
    CHECK_EQ_INT(cfg.listen_metrics_urls.items[0].port, 9001);
    CHECK_EQ_INT(cfg.listen_metrics_urls.items[1].port, 9000);
    config_free(&cfg);

    refused(ARGS("--listen-peer-urls", "foo"), NO_ENV,
            "invalid value \"foo\" for flag -listen-peer-urls: URL scheme must be http or https: foo");
    refused(ARGS("--listen-peer-urls", ""), NO_ENV, "URL scheme must be http or https");
    refused(ARGS("--listen-peer-urls", "unix://localhost:2380"), NO_ENV, "URL scheme must be http or https");
    refused(ARGS("--listen-peer-urls", "127.0.0.1:2380"), NO_ENV, "URL scheme must be http or https");
    refused(ARGS("--listen-peer-urls", "http://127.0.0.1:2380,"), NO_ENV, "URL scheme must be http or https");
    refused(ARGS("--listen-peer-urls", "http://127.0.0.1"), NO_ENV,
            "URL address does not have the form \"host:port\": http://127.0.0.1");
    refused(ARGS("--listen-peer-urls", "http://127.0.0.1:"), NO_ENV, "does not have the form");
    refused(ARGS("--listen-peer-urls", "http:127.0.0.1:2380"), NO_ENV, "does not have the form");
    refused(ARGS("--listen-peer-urls", "http://::1:2380"), NO_ENV, "does not have the form");
    refused(ARGS("--listen-peer-urls", "http://[::1]"), NO_ENV, "does not have the form");
    refused(ARGS("--listen-peer-urls", "http://[::1:2380"), NO_ENV, "missing ']'");
    refused(ARGS("--listen-peer-urls", "http://[zz]:2380"), NO_ENV, "invalid IPv6 address");
    refused(ARGS("--listen-peer-urls", "http://127.0.0.1:abc"), NO_ENV, "invalid port");
    refused(ARGS("--listen-peer-urls", "http://127.0.0.1:65536"), NO_ENV, "invalid port");
    refused(ARGS("--listen-peer-urls", "http://127.0.0.1:2380/"), NO_ENV,
            "URL must not contain a path: http://127.0.0.1:2380/");
    refused(ARGS("--listen-peer-urls", "http://127.0.0.1:2380?a=b"), NO_ENV, "query or fragment");
    refused(ARGS("--listen-peer-urls", "http://u@127.0.0.1:2380"), NO_ENV, "user information");
    refused(ARGS("--listen-peer-urls", "http://a b:2380"), NO_ENV, "invalid character \" \" in host name");

    /* Bind URLs need an IP or localhost; advertised ones need a host. */
    refused(ARGS("--listen-client-urls", "http://example.com:2379",
                 "--advertise-client-urls", "http://example.com:2379"),
            NO_ENV, "error verifying flags, expected IP in URL for binding (http://example.com:2379)");
    refused(ARGS("--listen-peer-urls", "http://:2380"), NO_ENV,
            "expected IP in URL for binding (http://:2380)");
    refused(ARGS("--listen-metrics-urls", "http://metrics:2381"), NO_ENV, "expected IP in URL for binding");
    refused(ARGS("--advertise-client-urls", "http://:2379"), NO_ENV,
            "--advertise-client-urls \"http://:2379\" must be \"host:port\" "
            "(unexpected empty host (http://:2379))");
    refused(ARGS("--initial-advertise-peer-urls", "http://10.0.0.1:2380,http://:2380"), NO_ENV,
            "--initial-advertise-peer-urls \"http://10.0.0.1:2380,http://:2380\" must be \"host:port\"");
    accepted(ARGS("--listen-peer-urls", "http://[::]:2380,http://0.0.0.0:2381"), NO_ENV);

    /* Listening on chosen client URLs requires saying which to advertise. */
    refused(ARGS("--listen-client-urls", "http://127.0.0.1:2379"), NO_ENV,
            "--advertise-client-urls is required when --listen-client-urls is set explicitly");
    refused(NO_ARGS, ENV("ETCD_LISTEN_CLIENT_URLS=http://127.0.0.1:2379"),
            "--advertise-client-urls is required");
    accepted(ARGS("--listen-client-urls", "http://127.0.0.1:2379"),
             ENV("ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:2379"));
}

static void test_initial_cluster(void)
{
    ballast_config cfg;

    /* A member with two peer URLs, empty items skipped, sorted by name and
     * URL; the URL part is trimmed but the name is kept as written. */
    CHECK_EQ_INT(parse(&cfg,
                       ARGS("--initial-cluster",
                            "n3=http://10.0.0.3:2380,,n1=https://10.0.0.1:2380,n1= http://10.0.0.1:2390 ,"
                            "n2=http://[fd00::2]:2380,"),
                       NO_ENV),
                 CONFIG_OK);
    CHECK_EQ_INT(cfg.n_initial_cluster, 4);
    CHECK_STR(cfg.initial_cluster[0].name, "n1");
    check_url(&cfg.initial_cluster[0].url, "http", "10.0.0.1", 2390, "http://10.0.0.1:2390");
    CHECK_STR(cfg.initial_cluster[1].name, "n1");
    check_url(&cfg.initial_cluster[1].url, "https", "10.0.0.1", 2380, "https://10.0.0.1:2380");
    CHECK_STR(cfg.initial_cluster[2].name, "n2");
    check_url(&cfg.initial_cluster[2].url, "http", "fd00::2", 2380, "http://[fd00::2]:2380");
    CHECK_STR(cfg.initial_cluster[3].name, "n3");
    config_free(&cfg);

    /* A name runs to the first '='; etcd accepts an empty one. */
    CHECK_EQ_INT(parse(&cfg, ARGS("--initial-cluster", "=http://h:1, b=http://h:2"), NO_ENV), CONFIG_OK);
    CHECK_EQ_INT(cfg.n_initial_cluster, 2);
    CHECK_STR(cfg.initial_cluster[0].name, "");
    CHECK_STR(cfg.initial_cluster[1].name, " b");
    config_free(&cfg);

    /* Empty: no members (the server then reports that this member is missing). */
    CHECK_EQ_INT(parse(&cfg, ARGS("--initial-cluster="), NO_ENV), CONFIG_OK);
    CHECK_EQ_INT(cfg.n_initial_cluster, 0);
    config_free(&cfg);

    refused(ARGS("--initial-cluster", "foo"), NO_ENV,
            "invalid value \"foo\" for flag -initial-cluster: URL scheme must be http or https: ");
    refused(ARGS("--initial-cluster", "a=foo"), NO_ENV, "URL scheme must be http or https: foo");
    refused(ARGS("--initial-cluster", "a=http://h:1,http://h:2"), NO_ENV, "URL scheme must be http or https");
    refused(ARGS("--initial-cluster", "a=http://h:1/x"), NO_ENV, "URL must not contain a path");

    /* Unset, it is <name>=<each advertised peer URL>. */
    CHECK_EQ_INT(parse(&cfg,
                       ARGS("--name", "m1", "--initial-advertise-peer-urls",
                            "http://10.0.0.9:2380,http://10.0.0.8:2380"),
                       NO_ENV),
                 CONFIG_OK);
    CHECK_EQ_INT(cfg.n_initial_cluster, 2);
    CHECK_STR(cfg.initial_cluster[0].name, "m1");
    check_url(&cfg.initial_cluster[0].url, "http", "10.0.0.8", 2380, "http://10.0.0.8:2380");
    CHECK_STR(cfg.initial_cluster[1].name, "m1");
    check_url(&cfg.initial_cluster[1].url, "http", "10.0.0.9", 2380, "http://10.0.0.9:2380");
    CHECK_STR(cfg.data_dir, "m1.etcd");
    config_free(&cfg);

    /* An empty name still yields a cluster entry named "default", as in etcd. */
    CHECK_EQ_INT(parse(&cfg, ARGS("--name="), NO_ENV), CONFIG_OK);
    CHECK_STR(cfg.initial_cluster[0].name, "default");
    CHECK_STR(cfg.data_dir, ".etcd");
    config_free(&cfg);

    /* An empty --data-dir means the default one. */
    CHECK_EQ_INT(parse(&cfg, ARGS("--data-dir", "", "--name", "z"), NO_ENV), CONFIG_OK);
    CHECK_STR(cfg.data_dir, "z.etcd");
    config_free(&cfg);
}

static void test_timing_validation(void)
{
    accepted(ARGS("--heartbeat-interval", "200", "--election-timeout", "1000"), NO_ENV);
    accepted(ARGS("--election-timeout", "50000"), NO_ENV);
    refused(ARGS("--heartbeat-interval", "300"), NO_ENV,
            "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]");
    refused(ARGS("--heartbeat-interval", "4294967295"), NO_ENV,
            "should be at least as 5 times as --heartbeat-interval[4294967295ms]");
    refused(ARGS("--election-timeout", "60000"), NO_ENV,
            "--election-timeout[60000ms] is too long, and should be set less than 50000ms");
    refused(ARGS("--heartbeat-interval", "0"), NO_ENV, "--heartbeat-interval must be >0 (set to 0ms)");
    refused(ARGS("--election-timeout", "0"), NO_ENV, "--election-timeout must be >0 (set to 0ms)");
}

static void test_environment(void)
{
    ballast_config cfg;

    CHECK_EQ_INT(parse(&cfg, NO_ARGS,
                       ENV("PATH=/bin", "ETCD_NAME=envname", "ETCD_HEARTBEAT_INTERVAL=20",
                           "ETCD_ELECTION_TIMEOUT=200", "ETCD_INITIAL_CLUSTER_STATE=existing",
                           "ETCD_LISTEN_PEER_URLS=http://127.0.0.1:1,http://127.0.0.1:2",
                           "ETCD_INITIAL_CLUSTER=a=http://h:1", "ETCD_QUOTA_BACKEND_BYTES=0x10",
                           "ETCD_DEBUG=true", "ETCD_MAX_TXN_OPS=7",
                           "BALLAST_BATCH_MAX_OPS=9", "BALLAST_BATCH_MAX_WAIT=2ms",
                           "BALLAST_BATCH_POLICY=off", "BALLAST_MEMTABLE_RESERVE_BYTES=0",
                           "BALLAST_BIN=/x/ballast",
                           "ETCDCTL_API=3", "ETCD=1")),
                 CONFIG_OK);
    CHECK_STR(g_err, "");
    CHECK_STR(cfg.name, "envname");
    CHECK_STR(cfg.data_dir, "envname.etcd");
    CHECK_EQ_INT(cfg.heartbeat_interval_ms, 20);
    CHECK_EQ_INT(cfg.election_timeout_ms, 200);
    CHECK_EQ_INT(cfg.initial_cluster_state_existing, 1);
    CHECK_EQ_INT(cfg.listen_peer_urls.n, 2);
    CHECK_EQ_INT(cfg.n_initial_cluster, 1);
    CHECK_STR(cfg.initial_cluster[0].name, "a");
    CHECK_EQ_INT(cfg.quota_backend_bytes, 16);
    CHECK_STR(cfg.log_level, "debug");
    CHECK_EQ_INT(cfg.max_txn_ops, 7);
    CHECK_EQ_INT(cfg.batch_max_ops, 9);
    CHECK_EQ_INT(cfg.batch_max_wait_us, 2000);
    CHECK_EQ_INT(cfg.batch_policy, BATCH_POLICY_OFF);
    CHECK_EQ_INT(cfg.memtable_reserve_bytes, 0);
    config_free(&cfg);

    /* Command line and environment together, for different flags. */
    CHECK_EQ_INT(parse(&cfg, ARGS("--name", "cli"), ENV("ETCD_DATA_DIR=/d")), CONFIG_OK);
    CHECK_STR(cfg.name, "cli");
    CHECK_STR(cfg.data_dir, "/d");
    config_free(&cfg);

    /* The first of two entries with one name is the one used, as Getenv does. */
    CHECK_EQ_INT(parse(&cfg, NO_ARGS, ENV("ETCD_NAME=first", "ETCD_NAME=second")), CONFIG_OK);
    CHECK_STR(cfg.name, "first");
    config_free(&cfg);

    /* An empty variable is unset, and so unrecognized. */
    CHECK_EQ_INT(parse(&cfg, NO_ARGS, ENV("ETCD_NAME=")), CONFIG_OK);
    CHECK_STR(cfg.name, "default");
    CHECK_ERR("unrecognized environment variable ETCD_NAME=");
    config_free(&cfg);

    /* Unknown ETCD_ variables only warn; Ballast's flags are BALLAST_ only. */
    CHECK_EQ_INT(parse(&cfg, NO_ARGS, ENV("ETCD_FOO=1", "ETCD_BATCH_POLICY=off")), CONFIG_OK);
    CHECK_ERR("warning: unrecognized environment variable ETCD_FOO=1\n");
    CHECK_ERR("unrecognized environment variable ETCD_BATCH_POLICY=off");
    CHECK_EQ_INT(cfg.batch_policy, BATCH_POLICY_ADAPTIVE);
    config_free(&cfg);

    /* A flag given both ways: etcd 3.4 refuses to start, even when the
     * variable is empty. */
    refused(ARGS("--name", "y"), ENV("ETCD_NAME=x"),
            "environment variable ETCD_NAME conflicts with the command-line flag --name");
    refused(ARGS("--name", "y"), ENV("ETCD_NAME="), "ETCD_NAME conflicts");
    refused(ARGS("--batch-policy=off"), ENV("BALLAST_BATCH_POLICY=off"), "BALLAST_BATCH_POLICY conflicts");
    refused(ARGS("--debug=false"), ENV("ETCD_DEBUG=true"), "ETCD_DEBUG conflicts");

    /* Bad values. */
    refused(NO_ARGS, ENV("ETCD_HEARTBEAT_INTERVAL=abc"),
            "error verifying flags, invalid value \"abc\" for ETCD_HEARTBEAT_INTERVAL: parse error");
    refused(NO_ARGS, ENV("ETCD_INITIAL_CLUSTER_STATE=bogus"),
            "invalid value \"bogus\" for ETCD_INITIAL_CLUSTER_STATE: must be one of new, existing");
    refused(NO_ARGS, ENV("ETCD_LISTEN_PEER_URLS=foo"),
            "invalid value \"foo\" for ETCD_LISTEN_PEER_URLS: URL scheme must be http or https: foo");
    refused(NO_ARGS, ENV("ETCD_DEBUG=yes"), "invalid value \"yes\" for ETCD_DEBUG: parse error");
    refused(NO_ARGS, ENV("BALLAST_BATCH_POLICY=fast"), "invalid value \"fast\" for BALLAST_BATCH_POLICY");
    refused(NO_ARGS, ENV("BALLAST_BATCH_MAX_WAIT=1"), "invalid value \"1\" for BALLAST_BATCH_MAX_WAIT");
    refused(NO_ARGS, ENV("ETCD_CERT_FILE=/tls/cert.pem"), "ETCD_CERT_FILE: Ballast does not implement TLS");
    refused(NO_ARGS, ENV("ETCD_HEARTBEAT_INTERVAL=300"),
            "should be at least as 5 times as --heartbeat-interval[300ms]");

    /* --version on the command line is handled before the environment. */
    CHECK_EQ_INT(parse(&cfg, ARGS("--version"), ENV("ETCD_HEARTBEAT_INTERVAL=abc")), CONFIG_EXIT_OK);
    CHECK_OUT("ballast Version:");
    /* ETCD_VERSION is a known variable but, as in etcd, prints nothing. */
    CHECK_EQ_INT(parse(&cfg, NO_ARGS, ENV("ETCD_VERSION=true")), CONFIG_OK);
    CHECK_STR(g_out, "");
    CHECK_STR(g_err, "");
    config_free(&cfg);
}

static void test_etcd_compat_flags(void)
{
    ballast_config cfg;

    /* Accepted and checked, no effect. */
    CHECK_EQ_INT(parse(&cfg,
                       ARGS("--wal-dir", "/wal", "--max-snapshots", "3", "--max-wals=0",
                            "--initial-election-tick-advance=false", "--backend-batch-interval", "10ms",
                            "--backend-batch-limit", "-1", "--max-concurrent-streams", "100",
                            "--grpc-keepalive-min-time", "1s", "--grpc-keepalive-interval", "1h",
                            "--grpc-keepalive-timeout", "5s", "--strict-reconfig-check=false",
                            "--pre-vote", "--enable-grpc-gateway", "--cors", "*",
                            "--host-whitelist", "a,b", "--logger", "zap", "--log-outputs", "stderr",
                            "--log-output", "stdout", "--log-package-levels", "etcdmain=DEBUG",
                            "--enable-pprof", "--metrics", "extensive", "--auto-compaction-mode",
                            "revision", "--bcrypt-cost", "4", "--auth-token-ttl", "60",
                            "--proxy-failure-wait", "1", "--proxy-refresh-interval", "1",
                            "--proxy-dial-timeout", "1", "--proxy-write-timeout", "1",
                            "--proxy-read-timeout", "1", "--experimental-initial-corrupt-check",
                            "--experimental-corrupt-check-time", "1m",
                            "--experimental-backend-bbolt-freelist-type", "map",
                            "--experimental-enable-lease-checkpoint",
                            "--experimental-enable-lease-checkpoint-persist",
                            "--experimental-compaction-batch-limit", "10",
                            "--experimental-watch-progress-notify-interval", "5s",
                            "--experimental-warning-apply-duration", "1s", "--unsafe-no-fsync"),
                       NO_ENV),
                 CONFIG_OK);
    CHECK_STR(g_err, "");
    CHECK_STR(cfg.name, "default");
    config_free(&cfg);
    refused(ARGS("--grpc-keepalive-min-time", "5"), NO_ENV,
            "invalid value \"5\" for flag -grpc-keepalive-min-time: parse error");
    refused(ARGS("--max-snapshots", "x"), NO_ENV, "parse error");
    refused(ARGS("--max-concurrent-streams", "4294967296"), NO_ENV, "value out of range");
    refused(ARGS("--logger", "glog"), NO_ENV, "invalid value \"glog\" for flag -logger");
    refused(ARGS("--pre-vote=2"), NO_ENV, "invalid boolean value \"2\" for -pre-vote: parse error");

    /* Features Ballast lacks: only etcd's default value gets through. */
    accepted(ARGS("--cert-file", "", "--key-file=", "--client-cert-auth=false", "--enable-v2=false",
                  "--proxy", "off", "--auth-token", "simple", "--auto-compaction-retention", "0",
                  "--discovery-fallback", "proxy", "--force-new-cluster=false", "--config-file="),
             NO_ENV);
    refused(ARGS("--cert-file", "/tls/server.pem"), NO_ENV,
            "invalid value \"/tls/server.pem\" for flag -cert-file: Ballast does not implement TLS");
    refused(ARGS("--client-cert-auth"), NO_ENV,
            "invalid boolean flag client-cert-auth: Ballast does not implement TLS");
    refused(ARGS("--peer-auto-tls=true"), NO_ENV, "Ballast does not implement TLS");
    refused(ARGS("--enable-v2"), NO_ENV, "Ballast implements only the v3 API");
    refused(ARGS("--proxy", "on"), NO_ENV, "Ballast implements only the v3 API");
    refused(ARGS("--discovery", "https://discovery.etcd.io/x"), NO_ENV, "does not implement discovery");
    refused(ARGS("--config-file", "/etc/etcd.yml"), NO_ENV, "reads no configuration file");
    refused(NO_ARGS, ENV("ETCD_CONFIG_FILE=/etc/etcd.yml"), "reads no configuration file");
    refused(ARGS("--auto-compaction-retention", "1h"), NO_ENV, "does not compact automatically");
    refused(ARGS("--auth-token", "jwt,pub-key=a"), NO_ENV, "only simple auth tokens");
    refused(ARGS("--force-new-cluster"), NO_ENV, "cannot force a new cluster");

    /* Flags etcd itself ignores: a warning, no value taken. */
    CHECK_EQ_INT(parse(&cfg, ARGS("--v", "-vv=3", "--name", "x"), NO_ENV), CONFIG_OK);
    CHECK_ERR("warning: flag -v is obsolete and ignored");
    CHECK_ERR("warning: flag -vv is obsolete and ignored");
    CHECK_STR(cfg.name, "x");
    config_free(&cfg);
}

static void test_help_and_version(void)
{
    ballast_config cfg;
    const char **helps[] = { ARGS("-h"), ARGS("--help"), ARGS("-help"), ARGS("--h=1"),
                             ARGS("--name", "x", "--help", "--nope") };
    for (size_t i = 0; i < sizeof helps / sizeof helps[0]; i++) {
        CHECK_EQ_INT(parse(&cfg, helps[i], NO_ENV), CONFIG_EXIT_OK);
        CHECK(cfg.name == NULL);
        CHECK_STR(g_err, "");
        CHECK_OUT("Usage:");
    }
    /* The help names every flag Ballast stores, with its default. */
    static const char *const shown[] = {
        "--name 'default'", "--data-dir '${name}.etcd'",
        "--listen-client-urls 'http://localhost:2379'", "--advertise-client-urls 'http://localhost:2379'",
        "--listen-peer-urls 'http://localhost:2380'", "--initial-advertise-peer-urls 'http://localhost:2380'",
        "--listen-metrics-urls ''", "--initial-cluster 'default=http://localhost:2380'",
        "--initial-cluster-state 'new'", "--initial-cluster-token 'etcd-cluster'",
        "--heartbeat-interval '100'", "--election-timeout '1000'", "--snapshot-count '100000'",
        "--max-request-bytes '1572864'", "--max-txn-ops '128'", "--quota-backend-bytes '0'",
        "--log-level 'info'", "--debug 'false'", "--version", "--help",
        "--batch-max-ops '100'", "--batch-max-wait '1ms'", "--batch-policy 'adaptive'",
        "--wal-dir ''", "--grpc-keepalive-min-time '5s'", "--cert-file ''", "--enable-v2 'false'",
        "--experimental-watch-progress-notify-interval '10m'", "--cluster-active-size",
        "ETCD_INITIAL_CLUSTER_TOKEN", "BALLAST_",
    };
    for (size_t i = 0; i < sizeof shown / sizeof shown[0]; i++) {
        if (!has(g_out, shown[i]))
            fprintf(stderr, "help lacks %s\n", shown[i]);
        CHECK_OUT(shown[i]);
    }

    CHECK_EQ_INT(parse(&cfg, ARGS("--version"), NO_ENV), CONFIG_EXIT_OK);
    CHECK(cfg.name == NULL);
    CHECK_STR(g_err, "");
    CHECK(strncmp(g_out, "ballast Version: ", 17) == 0);
    CHECK_OUT("\netcd API Version: 3.4\n");
    CHECK_OUT("\nGit SHA: ");
    CHECK_OUT("\nOS/Arch: ");
    CHECK_EQ_INT(parse(&cfg, ARGS("-version=true", "--name", "x"), NO_ENV), CONFIG_EXIT_OK);
    CHECK_OUT("ballast Version: ");
    /* An error anywhere on the line wins over --version. */
    refused(ARGS("--version", "--nope"), NO_ENV, "flag provided but not defined: -nope");
    CHECK_EQ_INT(parse(&cfg, ARGS("--version=false"), NO_ENV), CONFIG_OK);
    CHECK_STR(g_out, "");
    config_free(&cfg);
}

int main(void)
{
    test_defaults();
    test_every_flag();
    test_flag_syntax();
    test_numbers();
    test_durations();
    test_choices();
    test_url_lists();
    test_initial_cluster();
    test_timing_validation();
    test_environment();
    test_etcd_compat_flags();
    test_help_and_version();
    free(g_out);
    free(g_err);
    printf("test_config: ok\n");
    return 0;
}
