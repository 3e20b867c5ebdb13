/*
 * config — etcd 3.4's flags and ETCD_* variables, parsed the way etcd's Go
 * program parses them, so that a script written for etcd starts Ballast
 * unchanged and a mistake fails the same way.
 *
 * What etcd does and Ballast copies:
 *   - Go's flag package: -flag and --flag are the same; a value follows as
 *     "=value" or as the next argument (never for a boolean flag); parsing
 *     stops at the first argument that is not a flag, or after "--"; -h and
 *     -help print the help; numbers take Go's base prefixes (0x, 0o, 0b, a
 *     leading 0 is octal) and '_' separators; durations are Go durations.
 *   - Every flag --some-flag may come from ETCD_SOME_FLAG (Ballast's own flags
 *     from BALLAST_SOME_FLAG). An empty variable counts as unset. Giving a flag
 *     on the command line while its variable exists is an error (etcd 3.4
 *     stops with "conflicting environment variable"). An ETCD_* variable that
 *     names no flag gets a warning.
 *   - Validation after parsing: bind URLs need an IP or "localhost",
 *     advertised URLs need a host, the election timeout is 5..(50000 ms /
 *     heartbeat) heartbeats, --listen-client-urls needs
 *     --advertise-client-urls.
 *
 * Where Ballast differs: every error exits with status 2 (etcd uses 1 for
 * what it finds after the flag parser), and the etcd flags Ballast does not
 * implement are refused unless they carry etcd's default value, instead of
 * being silently ignored.
 */
#include "config.h"
#include "mvcc.h" /* MVCC_WRITE_BUFFER_BYTES */

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#ifndef BALLAST_VERSION
#define BALLAST_VERSION "0.1.0"
#endif
#if defined(__clang__)
#define COMPILER __VERSION__
#elif defined(__GNUC__)
#define COMPILER "gcc " __VERSION__
#else
#define COMPILER "unknown"
#endif
#ifndef BALLAST_GIT_SHA
#define BALLAST_GIT_SHA "not provided"
#endif

#define MAX_ELECTION_MS 50000u

enum kind {
    K_STRING,
    K_BOOL,
    K_UINT,     /* Go uint: 64 bits */
    K_UINT32,
    K_INT,      /* Go int / int64 */
    K_DURATION, /* Go time.Duration */
    K_CHOICE,   /* one of flag_def.choices */
    K_URLS,     /* comma-separated URL list */
    K_CLUSTER,  /* name=url,... */
    K_OBSOLETE, /* takes no value, warns, does nothing */
};

enum support {
    S_STORED,      /* lands in ballast_config */
    S_COMPAT,      /* value checked, then ignored: no effect in Ballast */
    S_DEFAULT_ONLY,/* Ballast lacks the feature: only etcd's default passes */
    S_OBSOLETE,    /* etcd's own ignored flags */
};

enum section { SEC_MEMBER, SEC_CLUSTER, SEC_BATCH, SEC_LOG, SEC_INFO, SEC_OTHER };

enum target {
    T_NONE,
    T_NAME, T_DATA_DIR,
    T_LISTEN_CLIENT, T_ADVERTISE_CLIENT, T_LISTEN_PEER, T_ADVERTISE_PEER, T_METRICS,
    T_INITIAL_CLUSTER, T_CLUSTER_STATE, T_CLUSTER_TOKEN,
    T_HEARTBEAT, T_ELECTION, T_SNAPSHOT_COUNT,
    T_MAX_REQUEST_BYTES, T_MAX_TXN_OPS, T_QUOTA,
    T_LOG_LEVEL, T_DEBUG, T_VERSION,
    T_BATCH_MAX_OPS, T_BATCH_MAX_WAIT, T_BATCH_POLICY, T_WATCH_PROGRESS,
    T_MEMTABLE_RESERVE,
};

struct flag_def {
    const char *name;
    enum kind kind;
    enum support support;
    enum target target;
    enum section section;  /* S_STORED only */
    const char *def;       /* default as --help shows it; S_DEFAULT_ONLY: the accepted value */
    const char *choices;   /* K_CHOICE: "a|b|c" */
    const char *help;      /* S_STORED: description; S_DEFAULT_ONLY: why it is refused */
    bool ballast;          /* BALLAST_ variable instead of ETCD_ */
};

#define DEFAULT_TEXT(x) DEFAULT_TEXT_(x)
#define DEFAULT_TEXT_(x) #x

#define STORED(n, k, t, sec, d, ch, h) { n, k, S_STORED, t, sec, d, ch, h, false }
#define OWN(n, k, t, d, ch, h) { n, k, S_STORED, t, SEC_BATCH, d, ch, h, true }
#define COMPAT(n, k, d, ch) { n, k, S_COMPAT, T_NONE, SEC_OTHER, d, ch, NULL, false }
#define DEFAULT_ONLY(n, k, d, why) { n, k, S_DEFAULT_ONLY, T_NONE, SEC_OTHER, d, NULL, why, false }
#define OBSOLETE(n) { n, K_OBSOLETE, S_OBSOLETE, T_NONE, SEC_OTHER, "", NULL, NULL, false }

#define NO_TLS "Ballast does not implement TLS"
#define NO_DISCOVERY "Ballast does not implement discovery; list the members with --initial-cluster"
#define NO_V2 "Ballast implements only the v3 API"

static const struct flag_def flags[] = {
    STORED("name", K_STRING, T_NAME, SEC_MEMBER, "default", NULL,
           "Name of this member; the same name must appear in --initial-cluster."),
    STORED("data-dir", K_STRING, T_DATA_DIR, SEC_MEMBER, "${name}.etcd", NULL,
           "Directory where this member keeps its raft log and key-value data."),
    STORED("listen-client-urls", K_URLS, T_LISTEN_CLIENT, SEC_MEMBER, "http://localhost:2379", NULL,
           "Comma-separated URLs on which clients are served (gRPC and HTTP/JSON).\n"
           "      Each host must be an IP address or localhost."),
    STORED("advertise-client-urls", K_URLS, T_ADVERTISE_CLIENT, SEC_MEMBER, "http://localhost:2379", NULL,
           "Comma-separated client URLs this member publishes to clients and to the\n"
           "      other members. Required once --listen-client-urls is given."),
    STORED("listen-peer-urls", K_URLS, T_LISTEN_PEER, SEC_MEMBER, "http://localhost:2380", NULL,
           "Comma-separated URLs on which the other members reach this one.\n"
           "      Each host must be an IP address or localhost."),
    STORED("listen-metrics-urls", K_URLS, T_METRICS, SEC_MEMBER, "", NULL,
           "Additional comma-separated URLs that serve only /metrics and /health."),
    STORED("snapshot-count", K_UINT, T_SNAPSHOT_COUNT, SEC_MEMBER, "100000", NULL,
           "Number of applied raft entries after which the log is snapshotted."),
    STORED("heartbeat-interval", K_UINT32, T_HEARTBEAT, SEC_MEMBER, "100", NULL,
           "Milliseconds between two heartbeats of the leader."),
    STORED("election-timeout", K_UINT32, T_ELECTION, SEC_MEMBER, "1000", NULL,
           "Milliseconds a follower waits for the leader before it calls an\n"
           "      election: at least 5 heartbeat intervals and at most 50000."),
    STORED("max-request-bytes", K_UINT, T_MAX_REQUEST_BYTES, SEC_MEMBER, "1572864", NULL,
           "Size in bytes of the largest client request accepted."),
    STORED("max-txn-ops", K_UINT32, T_MAX_TXN_OPS, SEC_MEMBER, "128", NULL,
           "Largest number of operations allowed in one transaction."),
    STORED("quota-backend-bytes", K_INT, T_QUOTA, SEC_MEMBER, "0", NULL,
           "Stored size in bytes past which a NOSPACE alarm is raised and writes are\n"
           "      refused; 0 selects the default quota, a negative value turns it off."),

    STORED("initial-advertise-peer-urls", K_URLS, T_ADVERTISE_PEER, SEC_CLUSTER, "http://localhost:2380", NULL,
           "Comma-separated peer URLs this member announces to the other members."),
    STORED("initial-cluster", K_CLUSTER, T_INITIAL_CLUSTER, SEC_CLUSTER, "default=http://localhost:2380", NULL,
           "Comma-separated name=peer-URL pairs, one per member URL, used when a\n"
           "      cluster is first started. Unset: <name>=<each advertised peer URL>."),
    STORED("initial-cluster-state", K_CHOICE, T_CLUSTER_STATE, SEC_CLUSTER, "new", "new|existing",
           "'new' to start a new cluster, 'existing' to join a running one."),
    STORED("initial-cluster-token", K_STRING, T_CLUSTER_TOKEN, SEC_CLUSTER, "etcd-cluster", NULL,
           "Token mixed into the cluster and member IDs so that two clusters started\n"
           "      with the same URLs cannot be mistaken for one another."),

    OWN("batch-max-ops", K_UINT32, T_BATCH_MAX_OPS, "100", NULL,
        "Largest number of client operations carried by one raft entry."),
    OWN("batch-max-wait", K_DURATION, T_BATCH_MAX_WAIT, "1ms", NULL,
        "Longest time an operation waits for others to share its raft entry,\n"
        "      as a Go duration such as 250us, 1ms or 1.5s."),
    OWN("batch-policy", K_CHOICE, T_BATCH_POLICY, "adaptive", "adaptive|tiers|off",
        "How long a batch waits: 'adaptive' follows the load, 'tiers' picks one of\n"
        "      three waits once a second from the rate of operations, 'off' puts each\n"
        "      operation in its own entry."),
    OWN("memtable-reserve-bytes", K_UINT, T_MEMTABLE_RESERVE, DEFAULT_TEXT(MVCC_WRITE_BUFFER_BYTES), NULL,
        "Memory for the store's write buffers mapped at start-up on the thread\n"
        "      that applies writes, which then takes no page faults for them; freed\n"
        "      memory is kept for reuse. 0: neither (RSS starts this much lower)."),

    STORED("experimental-watch-progress-notify-interval", K_DURATION, T_WATCH_PROGRESS, SEC_MEMBER, "10m", NULL,
           "Interval between progress notifications to watchers that asked for them."),

    STORED("log-level", K_CHOICE, T_LOG_LEVEL, SEC_LOG, "info", "debug|info|warn|error|dpanic|panic|fatal",
           "Least severe level logged: debug, info, warn, error, panic or fatal."),
    STORED("debug", K_BOOL, T_DEBUG, SEC_LOG, "false", NULL,
           "Old spelling of --log-level=debug."),

    STORED("version", K_BOOL, T_VERSION, SEC_INFO, "false", NULL,
           "Print the version and exit."),

    COMPAT("wal-dir", K_STRING, "", NULL),
    COMPAT("max-snapshots", K_UINT, "5", NULL),
    COMPAT("max-wals", K_UINT, "5", NULL),
    COMPAT("initial-election-tick-advance", K_BOOL, "true", NULL),
    COMPAT("backend-batch-interval", K_DURATION, "0s", NULL),
    COMPAT("backend-batch-limit", K_INT, "0", NULL),
    COMPAT("max-concurrent-streams", K_UINT32, "4294967295", NULL),
    COMPAT("grpc-keepalive-min-time", K_DURATION, "5s", NULL),
    COMPAT("grpc-keepalive-interval", K_DURATION, "2h", NULL),
    COMPAT("grpc-keepalive-timeout", K_DURATION, "20s", NULL),
    COMPAT("strict-reconfig-check", K_BOOL, "true", NULL),
    COMPAT("pre-vote", K_BOOL, "false", NULL),
    COMPAT("enable-grpc-gateway", K_BOOL, "true", NULL),
    COMPAT("cors", K_STRING, "*", NULL),
    COMPAT("host-whitelist", K_STRING, "*", NULL),
    COMPAT("logger", K_CHOICE, "capnslog", "capnslog|zap"),
    COMPAT("log-outputs", K_STRING, "default", NULL),
    COMPAT("log-output", K_STRING, "default", NULL),
    COMPAT("log-package-levels", K_STRING, "", NULL),
    COMPAT("enable-pprof", K_BOOL, "false", NULL),
    COMPAT("metrics", K_CHOICE, "basic", "basic|extensive"),
    COMPAT("auto-compaction-mode", K_CHOICE, "periodic", "periodic|revision"),
    COMPAT("bcrypt-cost", K_UINT, "10", NULL),
    COMPAT("auth-token-ttl", K_UINT, "300", NULL),
    COMPAT("proxy-failure-wait", K_UINT, "5000", NULL),
    COMPAT("proxy-refresh-interval", K_UINT, "30000", NULL),
    COMPAT("proxy-dial-timeout", K_UINT, "1000", NULL),
    COMPAT("proxy-write-timeout", K_UINT, "5000", NULL),
    COMPAT("proxy-read-timeout", K_UINT, "0", NULL),
    COMPAT("experimental-initial-corrupt-check", K_BOOL, "false", NULL),
    COMPAT("experimental-corrupt-check-time", K_DURATION, "0s", NULL),
    COMPAT("experimental-backend-bbolt-freelist-type", K_STRING, "array", NULL),
    COMPAT("experimental-enable-lease-checkpoint", K_BOOL, "false", NULL),
    COMPAT("experimental-enable-lease-checkpoint-persist", K_BOOL, "false", NULL),
    COMPAT("experimental-compaction-batch-limit", K_INT, "1000", NULL),
    COMPAT("experimental-warning-apply-duration", K_DURATION, "100ms", NULL),
    COMPAT("unsafe-no-fsync", K_BOOL, "false", NULL),

    DEFAULT_ONLY("config-file", K_STRING, "",
                 "Ballast reads no configuration file; use flags or ETCD_* variables"),
    DEFAULT_ONLY("discovery", K_STRING, "", NO_DISCOVERY),
    DEFAULT_ONLY("discovery-fallback", K_STRING, "proxy", NO_DISCOVERY),
    DEFAULT_ONLY("discovery-proxy", K_STRING, "", NO_DISCOVERY),
    DEFAULT_ONLY("discovery-srv", K_STRING, "", NO_DISCOVERY),
    DEFAULT_ONLY("discovery-srv-name", K_STRING, "", NO_DISCOVERY),
    DEFAULT_ONLY("enable-v2", K_BOOL, "false", NO_V2),
    DEFAULT_ONLY("experimental-enable-v2v3", K_STRING, "", NO_V2),
    DEFAULT_ONLY("proxy", K_STRING, "off", NO_V2),
    DEFAULT_ONLY("force-new-cluster", K_BOOL, "false", "Ballast cannot force a new cluster"),
    DEFAULT_ONLY("auto-compaction-retention", K_STRING, "0",
                 "Ballast does not compact automatically; clients compact"),
    DEFAULT_ONLY("auth-token", K_STRING, "simple", "Ballast implements only simple auth tokens"),
    DEFAULT_ONLY("cert-file", K_STRING, "", NO_TLS),
    DEFAULT_ONLY("key-file", K_STRING, "", NO_TLS),
    DEFAULT_ONLY("client-cert-auth", K_BOOL, "false", NO_TLS),
    DEFAULT_ONLY("client-crl-file", K_STRING, "", NO_TLS),
    DEFAULT_ONLY("client-cert-allowed-hostname", K_STRING, "", NO_TLS),
    DEFAULT_ONLY("trusted-ca-file", K_STRING, "", NO_TLS),
    DEFAULT_ONLY("auto-tls", K_BOOL, "false", NO_TLS),
    DEFAULT_ONLY("peer-cert-file", K_STRING, "", NO_TLS),
    DEFAULT_ONLY("peer-key-file", K_STRING, "", NO_TLS),
    DEFAULT_ONLY("peer-client-cert-auth", K_BOOL, "false", NO_TLS),
    DEFAULT_ONLY("peer-trusted-ca-file", K_STRING, "", NO_TLS),
    DEFAULT_ONLY("peer-auto-tls", K_BOOL, "false", NO_TLS),
    DEFAULT_ONLY("peer-crl-file", K_STRING, "", NO_TLS),
    DEFAULT_ONLY("peer-cert-allowed-cn", K_STRING, "", NO_TLS),
    DEFAULT_ONLY("peer-cert-allowed-hostname", K_STRING, "", NO_TLS),
    DEFAULT_ONLY("cipher-suites", K_STRING, "", NO_TLS),
    DEFAULT_ONLY("experimental-peer-skip-client-san-verification", K_BOOL, "false", NO_TLS),

    OBSOLETE("cluster-active-size"),
    OBSOLETE("cluster-remove-delay"),
    OBSOLETE("cluster-sync-interval"),
    OBSOLETE("config"),
    OBSOLETE("force"),
    OBSOLETE("max-result-buffer"),
    OBSOLETE("max-retry-attempts"),
    OBSOLETE("peer-heartbeat-interval"),
    OBSOLETE("peer-election-timeout"),
    OBSOLETE("retry-interval"),
    OBSOLETE("snapshot"),
    OBSOLETE("v"),
    OBSOLETE("vv"),
};

enum { N_FLAGS = sizeof flags / sizeof flags[0] };

struct parser {
    ballast_config *cfg;
    FILE *err;
    bool on_cmdline[N_FLAGS];
    bool set[N_FLAGS];     /* by the command line or the environment */
    bool env_used[N_FLAGS];
    bool version;
    bool debug;
};

/* A message for the user, on the heap so that no URL or value is cut short.
 * Functions below report failure with -1 and a message in *why; a NULL
 * message means that memory ran out. */
__attribute__((format(printf, 1, 2))) static char *format(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = n < 0 ? NULL : malloc((size_t)n + 1);
    if (s) {
        va_start(ap, fmt);
        vsnprintf(s, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    return s;
}

static const char *or_oom(const char *why) { return why ? why : "out of memory"; }

/* ---- Go's number, boolean and duration syntax ---------------------------- */

enum { NUM_OK = 0, NUM_SYNTAX, NUM_RANGE };

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c; }
static bool is_digit(int c) { return c >= '0' && c <= '9'; }

/* Go allows '_' in a base-prefixed literal only between digits (a base
 * prefix counts as a digit). */
static bool underscores_ok(const char *s)
{
    char saw = '^';
    bool hex = false;
    if (*s == '-' || *s == '+')
        s++;
    if (s[0] == '0' && (lower(s[1]) == 'b' || lower(s[1]) == 'o' || lower(s[1]) == 'x')) {
        hex = lower(s[1]) == 'x';
        saw = '0';
        s += 2;
    }
    for (; *s; s++) {
        int c = (unsigned char)*s;
        if (is_digit(c) || (hex && lower(c) >= 'a' && lower(c) <= 'f')) {
            saw = '0';
        } else if (c == '_') {
            if (saw != '0')
                return false;
            saw = '_';
        } else {
            if (saw == '_')
                return false;
            saw = '!';
        }
    }
    return saw != '_';
}

/* strconv.ParseUint(s, 0, bits). */
static int go_parse_uint(const char *s0, int bits, uint64_t *out)
{
    const char *s = s0;
    unsigned base = 10;
    uint64_t max = bits == 64 ? UINT64_MAX : ((uint64_t)1 << bits) - 1;
    uint64_t n = 0;
    bool underscores = false;

    if (*s == '\0')
        return NUM_SYNTAX;
    if (s[0] == '0') {
        bool long_enough = strlen(s) >= 3;
        int c = lower((unsigned char)s[1]);
        if (long_enough && c == 'b') {
            base = 2;
            s += 2;
        } else if (long_enough && c == 'o') {
            base = 8;
            s += 2;
        } else if (long_enough && c == 'x') {
            base = 16;
            s += 2;
        } else {
            base = 8;
            s += 1;
        }
    }
    uint64_t cutoff = UINT64_MAX / base + 1;
    for (; *s; s++) {
        int c = (unsigned char)*s;
        unsigned d;
        if (c == '_') {
            underscores = true;
            continue;
        } else if (is_digit(c)) {
            d = (unsigned)(c - '0');
        } else if (lower(c) >= 'a' && lower(c) <= 'z') {
            d = (unsigned)(lower(c) - 'a' + 10);
        } else {
            return NUM_SYNTAX;
        }
        if (d >= base)
            return NUM_SYNTAX;
        if (n >= cutoff)
            return NUM_RANGE;
        n *= base;
        uint64_t n1 = n + d;
        if (n1 < n || n1 > max)
            return NUM_RANGE;
        n = n1;
    }
    if (underscores && !underscores_ok(s0))
        return NUM_SYNTAX;
    *out = n;
    return NUM_OK;
}

/* strconv.ParseInt(s, 0, 64). */
static int go_parse_int(const char *s, int64_t *out)
{
    bool neg = false;
    uint64_t u;
    if (*s == '+' || *s == '-') {
        neg = *s == '-';
        s++;
    }
    int rc = go_parse_uint(s, 64, &u);
    if (rc != NUM_OK)
        return rc;
    uint64_t cutoff = (uint64_t)1 << 63;
    if ((!neg && u >= cutoff) || (neg && u > cutoff))
        return NUM_RANGE;
    *out = neg ? (int64_t)(0 - u) : (int64_t)u;
    return NUM_OK;
}

/* strconv.ParseBool. */
static int go_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = { "1", "t", "T", "TRUE", "true", "True" };
    static const char *const no[] = { "0", "f", "F", "FALSE", "false", "False" };
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

static uint64_t duration_unit(const char *u, size_t n)
{
    static const struct { const char *name; uint64_t ns; } units[] = {
        { "ns", 1 },
        { "us", 1000 },
        { "\xc2\xb5s", 1000 }, /* U+00B5 MICRO SIGN */
        { "\xce\xbcs", 1000 }, /* U+03BC GREEK SMALL LETTER MU */
        { "ms", 1000000 },
        { "s", 1000000000 },
        { "m", 60ull * 1000000000 },
        { "h", 3600ull * 1000000000 },
    };
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strlen(units[i].name) == n && memcmp(units[i].name, u, n) == 0)
            return units[i].ns;
    return 0;
}

/* time.ParseDuration, in nanoseconds. */
static int go_parse_duration(const char *s, int64_t *out)
{
    const uint64_t limit = (uint64_t)1 << 63;
    uint64_t d = 0;
    bool neg = false;

    if (*s == '-' || *s == '+') {
        neg = *s == '-';
        s++;
    }
    if (strcmp(s, "0") == 0) {
        *out = 0;
        return 0;
    }
    if (*s == '\0')
        return -1;
    while (*s) {
        uint64_t v = 0, f = 0;
        double scale = 1;
        const char *start = s;

        if (!(*s == '.' || is_digit((unsigned char)*s)))
            return -1;
        for (; is_digit((unsigned char)*s); s++) {
            if (v > limit / 10)
                return -1;
            v = v * 10 + (uint64_t)(*s - '0');
            if (v > limit)
                return -1;
        }
        bool pre = s != start, post = false;
        if (*s == '.') {
            const char *frac = ++s;
            bool overflow = false;
            for (; is_digit((unsigned char)*s); s++) {
                if (overflow)
                    continue;
                if (f > (limit - 1) / 10) {
                    overflow = true;
                    continue;
                }
                uint64_t y = f * 10 + (uint64_t)(*s - '0');
                if (y > limit) {
                    overflow = true;
                    continue;
                }
                f = y;
                scale *= 10;
            }
            post = s != frac;
        }
        if (!pre && !post)
            return -1;
        const char *u = s;
        while (*s && *s != '.' && !is_digit((unsigned char)*s))
            s++;
        uint64_t unit = duration_unit(u, (size_t)(s - u));
        if (unit == 0)
            return -1;
        if (v > limit / unit)
            return -1;
        v *= unit;
        if (f > 0) {
            v += (uint64_t)((double)f * ((double)unit / scale));
            if (v > limit)
                return -1;
        }
        d += v;
        if (d > limit)
            return -1;
    }
    if (neg)
        *out = d == limit ? INT64_MIN : -(int64_t)d;
    else if (d > (uint64_t)INT64_MAX)
        return -1;
    else
        *out = (int64_t)d;
    return 0;
}

int config_parse_duration_us(const char *s, uint64_t *us)
{
    int64_t ns;
    if (s == NULL || go_parse_duration(s, &ns) != 0 || ns < 0)
        return -1;
    *us = (uint64_t)ns / 1000 + ((uint64_t)ns % 1000 >= 500);
    return 0;
}

/* ---- URLs ----------------------------------------------------------------- */

static void url_clear(config_url *u)
{
    free(u->scheme);
    free(u->host);
    free(u->text);
    memset(u, 0, sizeof *u);
}

static void url_list_clear(config_url_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        url_clear(&l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

static void members_free(config_member *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(m[i].name);
        url_clear(&m[i].url);
    }
    free(m);
}

static bool is_space(int c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static char *dup_range(const char *s, size_t n)
{
    char *r = malloc(n + 1);
    if (r) {
        memcpy(r, s, n);
        r[n] = '\0';
    }
    return r;
}

static bool host_char_ok(int c)
{
    return is_digit(c) || (lower(c) >= 'a' && lower(c) <= 'z') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

/* Parses one URL of a list the way etcd's types.NewURLs does (surrounding
 * space is ignored; http or https; host:port; no path), a little stricter
 * where etcd would only fail later: the port must be a number up to 65535,
 * and user info, queries and fragments are refused. */
static int url_parse(const char *in, config_url *out, char **why)
{
    size_t len = strlen(in);
    while (len > 0 && is_space((unsigned char)*in)) {
        in++;
        len--;
    }
    while (len > 0 && is_space((unsigned char)in[len - 1]))
        len--;

    char *text = dup_range(in, len);
    if (text == NULL)
        return -1;
    const char *colon = strchr(text, ':');
    size_t slen = colon ? (size_t)(colon - text) : 0;
    if (!((slen == 4 && strncasecmp(text, "http", 4) == 0) ||
          (slen == 5 && strncasecmp(text, "https", 5) == 0))) {
        *why = format("URL scheme must be http or https: %s", text);
        goto fail;
    }
    for (size_t i = 0; i < slen; i++)
        text[i] = (char)lower((unsigned char)text[i]);
    const char *rest = colon + 1;
    if (strpbrk(rest, "?#")) {
        *why = format("URL must not contain a query or fragment: %s", text);
        goto fail;
    }
    if (strncmp(rest, "//", 2) != 0) {
        *why = format("URL address does not have the form \"host:port\": %s", text);
        goto fail;
    }
    const char *auth = rest + 2;
    const char *slash = strchr(auth, '/');
    size_t alen = slash ? (size_t)(slash - auth) : strlen(auth);
    if (slash) {
        *why = format("URL must not contain a path: %s", text);
        goto fail;
    }
    if (memchr(auth, '@', alen)) {
        *why = format("URL must not contain user information: %s", text);
        goto fail;
    }

    const char *host, *port;
    size_t hlen;
    if (auth[0] == '[') {
        const char *close = strchr(auth, ']');
        if (close == NULL) {
            *why = format("missing ']' in host: %s", text);
            goto fail;
        }
        host = auth + 1;
        hlen = (size_t)(close - host);
        if (close[1] != ':') {
            *why = format("URL address does not have the form \"host:port\": %s", text);
            goto fail;
        }
        port = close + 2;
        char buf[INET6_ADDRSTRLEN + 1] = "";
        unsigned char addr[16];
        if (hlen < sizeof buf)
            memcpy(buf, host, hlen);
        if (hlen >= sizeof buf || inet_pton(AF_INET6, buf, addr) != 1) {
            *why = format("invalid IPv6 address in URL: %s", text);
            goto fail;
        }
    } else {
        const char *last = strrchr(auth, ':');
        if (last == NULL || memchr(auth, ':', (size_t)(last - auth))) {
            *why = format("URL address does not have the form \"host:port\": %s", text);
            goto fail;
        }
        host = auth;
        hlen = (size_t)(last - auth);
        port = last + 1;
        for (size_t i = 0; i < hlen; i++) {
            if (!host_char_ok((unsigned char)host[i])) {
                *why = format("invalid character \"%c\" in host name: %s", host[i], text);
                goto fail;
            }
        }
    }
    if (*port == '\0') {
        *why = format("URL address does not have the form \"host:port\": %s", text);
        goto fail;
    }
    long portnum = 0;
    for (const char *p = port; *p; p++) {
        if (!is_digit((unsigned char)*p) || (portnum = portnum * 10 + (*p - '0')) > 65535) {
            *why = format("invalid port \":%s\" in URL: %s", port, text);
            goto fail;
        }
    }

    out->scheme = dup_range(text, slen);
    out->host = dup_range(host, hlen);
    out->port = (int)portnum;
    out->text = text;
    if (out->scheme == NULL || out->host == NULL) {
        url_clear(out);
        return -1;
    }
    return 0;
fail:
    free(text);
    return -1;
}

static int url_cmp(const void *a, const void *b)
{
    return strcmp(((const config_url *)a)->text, ((const config_url *)b)->text);
}

/* A comma-separated list. etcd sorts it, so that is the order its members
 * advertise; repeated URLs are kept, as etcd keeps them. */
static int url_list_parse(const char *s, config_url_list *out, char **why)
{
    size_t n = 1;
    for (const char *p = s; *p; p++)
        n += *p == ',';
    config_url_list l = { calloc(n, sizeof(config_url)), 0 };
    if (l.items == NULL)
        return -1;
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char *item = dup_range(p, len);
        int rc = item ? url_parse(item, &l.items[l.n], why) : -1;
        free(item);
        if (rc != 0) {
            url_list_clear(&l);
            return -1;
        }
        l.n++;
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    qsort(l.items, l.n, sizeof(config_url), url_cmp);
    *out = l;
    return 0;
}

static int member_cmp(const void *a, const void *b)
{
    const config_member *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->url.text, y->url.text);
}

/* --initial-cluster as etcd reads it: empty items are skipped; the name is
 * everything before the first '=' (kept as written, even empty); a member
 * with several peer URLs appears once per URL. The result is sorted by name
 * and URL, so one member's entries are adjacent. */
static int cluster_parse(const char *s, config_member **out, size_t *nout, char **why)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    config_member *m = calloc(cap, sizeof *m);
    size_t n = 0;
    if (m == NULL)
        return -1;
    for (const char *p = s; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len > 0) {
            const char *eq = memchr(p, '=', len);
            size_t nlen = eq ? (size_t)(eq - p) : len;
            char *name = dup_range(p, nlen);
            char *url = eq ? dup_range(eq + 1, len - nlen - 1) : strdup("");
            int rc = name && url ? url_parse(url, &m[n].url, why) : -1;
            free(url);
            if (rc != 0) {
                free(name);
                members_free(m, n);
                return -1;
            }
            m[n++].name = name;
        }
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    qsort(m, n, sizeof *m, member_cmp);
    *out = m;
    *nout = n;
    return 0;
}

/* ---- applying one flag value ---------------------------------------------- */

static bool choice_ok(const char *choices, const char *v)
{
    size_t vlen = strlen(v);
    for (const char *p = choices;;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == vlen && memcmp(p, v, len) == 0)
            return true;
        if (bar == NULL)
            return false;
        p = bar + 1;
    }
}

static void choice_list(const char *choices, char *buf, size_t n)
{
    size_t j = 0;
    for (const char *p = choices; *p && j + 3 < n; p++) {
        if (*p == '|') {
            buf[j++] = ',';
            buf[j++] = ' ';
        } else {
            buf[j++] = *p;
        }
    }
    buf[j] = '\0';
}

static int replace_string(char **dst, const char *v)
{
    char *s = strdup(v);
    if (s == NULL)
        return -1;
    free(*dst);
    *dst = s;
    return 0;
}

static config_url_list *url_target(ballast_config *cfg, enum target t)
{
    switch (t) {
    case T_LISTEN_CLIENT: return &cfg->listen_client_urls;
    case T_ADVERTISE_CLIENT: return &cfg->advertise_client_urls;
    case T_LISTEN_PEER: return &cfg->listen_peer_urls;
    case T_ADVERTISE_PEER: return &cfg->initial_advertise_peer_urls;
    case T_METRICS: return &cfg->listen_metrics_urls;
    default: return NULL;
    }
}

/* Parses `v` as flag f wants it and stores it. On failure *why gets the
 * reason (the caller frees it), worded as Go's flag package words what
 * follows "invalid value ...:". */
static int apply(struct parser *p, const struct flag_def *f, const char *v, char **why)
{
    ballast_config *cfg = p->cfg;
    bool b = false;
    uint64_t u = 0;
    int64_t i = 0;
    int rc = NUM_OK;

    switch (f->kind) {
    case K_BOOL:
        if (go_parse_bool(v, &b) != 0) {
            *why = format("parse error");
            return -1;
        }
        break;
    case K_UINT:
        rc = go_parse_uint(v, 64, &u);
        break;
    case K_UINT32:
        rc = go_parse_uint(v, 32, &u);
        break;
    case K_INT:
        rc = go_parse_int(v, &i);
        break;
    case K_DURATION:
        if (go_parse_duration(v, &i) != 0)
            rc = NUM_SYNTAX;
        break;
    case K_CHOICE:
        if (!choice_ok(f->choices, v)) {
            char list[128];
            choice_list(f->choices, list, sizeof list);
            *why = format("must be one of %s", list);
            return -1;
        }
        break;
    case K_OBSOLETE:
        fprintf(p->err, "ballast: warning: flag -%s is obsolete and ignored\n", f->name);
        return 0;
    case K_STRING:
    case K_URLS:
    case K_CLUSTER:
        break;
    }
    if (rc != NUM_OK) {
        *why = format(rc == NUM_RANGE ? "value out of range" : "parse error");
        return -1;
    }

    if (f->support == S_DEFAULT_ONLY) {
        bool is_default = f->kind == K_BOOL ? b == (strcmp(f->def, "true") == 0)
                                            : strcmp(v, f->def) == 0;
        if (!is_default) {
            *why = format("%s", f->help);
            return -1;
        }
        return 0;
    }
    if (f->support != S_STORED)
        return 0;

    switch (f->target) {
    case T_NAME:
        return replace_string(&cfg->name, v);
    case T_DATA_DIR:
        return replace_string(&cfg->data_dir, v);
    case T_CLUSTER_TOKEN:
        return replace_string(&cfg->initial_cluster_token, v);
    case T_LOG_LEVEL:
        return replace_string(&cfg->log_level, v);
    case T_LISTEN_CLIENT:
    case T_ADVERTISE_CLIENT:
    case T_LISTEN_PEER:
    case T_ADVERTISE_PEER:
    case T_METRICS: {
        config_url_list l;
        if (url_list_parse(v, &l, why) != 0)
            return -1;
        config_url_list *dst = url_target(cfg, f->target);
        url_list_clear(dst);
        *dst = l;
        return 0;
    }
    case T_INITIAL_CLUSTER: {
        config_member *m;
        size_t n;
        if (cluster_parse(v, &m, &n, why) != 0)
            return -1;
        members_free(cfg->initial_cluster, cfg->n_initial_cluster);
        cfg->initial_cluster = m;
        cfg->n_initial_cluster = n;
        return 0;
    }
    case T_CLUSTER_STATE:
        cfg->initial_cluster_state_existing = strcmp(v, "existing") == 0;
        return 0;
    case T_HEARTBEAT:
        cfg->heartbeat_interval_ms = (unsigned)u;
        return 0;
    case T_ELECTION:
        cfg->election_timeout_ms = (unsigned)u;
        return 0;
    case T_SNAPSHOT_COUNT:
        cfg->snapshot_count = u;
        return 0;
    case T_MAX_REQUEST_BYTES:
        cfg->max_request_bytes = u;
        return 0;
    case T_MAX_TXN_OPS:
        cfg->max_txn_ops = (uint32_t)u;
        return 0;
    case T_QUOTA:
        cfg->quota_backend_bytes = i;
        return 0;
    case T_DEBUG:
        p->debug = b;
        return 0;
    case T_VERSION:
        p->version = b;
        return 0;
    case T_BATCH_MAX_OPS:
        if (u == 0) {
            *why = format("must be at least 1");
            return -1;
        }
        cfg->batch_max_ops = (uint32_t)u;
        return 0;
    case T_BATCH_MAX_WAIT:
        if (config_parse_duration_us(v, &cfg->batch_max_wait_us) != 0) {
            *why = format("must not be negative");
            return -1;
        }
        return 0;
    case T_WATCH_PROGRESS:
        if (config_parse_duration_us(v, &cfg->watch_progress_notify_interval_us) != 0 ||
            cfg->watch_progress_notify_interval_us == 0) {
            *why = format("must be a positive duration");
            return -1;
        }
        return 0;
    case T_MEMTABLE_RESERVE:
        cfg->memtable_reserve_bytes = u;
        return 0;
    case T_BATCH_POLICY:
        cfg->batch_policy = strcmp(v, "tiers") == 0 ? BATCH_POLICY_TIERS
                            : strcmp(v, "off") == 0 ? BATCH_POLICY_OFF
                                                    : BATCH_POLICY_ADAPTIVE;
        return 0;
    case T_NONE:
        break;
    }
    return 0;
}

/* ---- help and version ------------------------------------------------------ */

static void print_help(FILE *out)
{
    static const char *const titles[] = {
        [SEC_MEMBER] = "Member",
        [SEC_CLUSTER] = "Clustering",
        [SEC_BATCH] = "Batching and memory (Ballast's own; variables BALLAST_BATCH_MAX_OPS and so on)",
        [SEC_LOG] = "Logging",
        [SEC_INFO] = "Information",
    };
    fputs("Ballast: a key-value server that speaks etcd's v3 API (etcd 3.4).\n"
          "\n"
          "Usage:\n"
          "  ballast [flags]        run a member\n"
          "  ballast --version      print the version and exit\n"
          "  ballast -h | --help    print this help and exit\n"
          "\n"
          "Write a flag as --flag value, --flag=value, -flag value or -flag=value;\n"
          "a boolean flag as --flag or --flag=false. A flag may come from the\n"
          "environment instead: etcd's flags as ETCD_<FLAG>, so --initial-cluster-token\n"
          "is ETCD_INITIAL_CLUSTER_TOKEN, and Ballast's own as BALLAST_<FLAG>. Giving a\n"
          "flag both ways is an error. Numbers may be written 0x.., 0o.., 0b.. and with\n"
          "'_' separators; a leading 0 means octal, as in etcd.\n",
          out);
    for (int sec = SEC_MEMBER; sec <= SEC_INFO; sec++) {
        fprintf(out, "\n%s:\n", titles[sec]);
        for (size_t i = 0; i < N_FLAGS; i++) {
            const struct flag_def *f = &flags[i];
            if (f->support != S_STORED || (int)f->section != sec)
                continue;
            if (f->target == T_VERSION)
                fprintf(out, "  --%s\n      %s\n", f->name, f->help);
            else
                fprintf(out, "  --%s '%s'\n      %s\n", f->name, f->def, f->help);
        }
        if (sec == SEC_INFO)
            fputs("  -h, --help\n      Print this help and exit.\n", out);
    }

    fputs("\nAccepted for compatibility with etcd; the value is checked but has no\n"
          "effect in Ballast:\n",
          out);
    for (size_t i = 0; i < N_FLAGS; i++)
        if (flags[i].support == S_COMPAT)
            fprintf(out, "  --%s '%s'\n", flags[i].name, flags[i].def);

    fputs("\netcd features Ballast does not implement; these flags are accepted only\n"
          "with the value shown, which is etcd's default:\n",
          out);
    for (size_t i = 0; i < N_FLAGS; i++)
        if (flags[i].support == S_DEFAULT_ONLY)
            fprintf(out, "  --%s '%s'\n", flags[i].name, flags[i].def);

    fputs("\nFlags etcd itself no longer uses; they take no value and are ignored with a\n"
          "warning:\n",
          out);
    int col = 0;
    for (size_t i = 0; i < N_FLAGS; i++) {
        if (flags[i].support != S_OBSOLETE)
            continue;
        int w = 3 + (int)strlen(flags[i].name);
        if (col > 0 && col + w > 78) {
            fputs("\n", out);
            col = 0;
        }
        col += fprintf(out, col ? " --%s" : "  --%s", flags[i].name);
    }
    fputs("\n", out);
}

static const char *os_arch(void)
{
#if defined(__linux__) && defined(__x86_64__)
    return "linux/amd64";
#elif defined(__linux__) && defined(__aarch64__)
    return "linux/arm64";
#elif defined(__linux__) && defined(__i386__)
    return "linux/386";
#elif defined(__linux__) && defined(__arm__)
    return "linux/arm";
#elif defined(__linux__) && defined(__powerpc64__)
    return "linux/ppc64le";
#elif defined(__linux__) && defined(__s390x__)
    return "linux/s390x";
#elif defined(__linux__) && defined(__riscv)
    return "linux/riscv64";
#elif defined(__linux__)
    return "linux/unknown";
#else
    return "unknown";
#endif
}

static void print_version(FILE *out)
{
    fprintf(out,
            "ballast Version: %s\n"
            "etcd API Version: 3.4\n"
            "Git SHA: %s\n"
            "C Compiler: %s\n"
            "OS/Arch: %s\n",
            BALLAST_VERSION, BALLAST_GIT_SHA, COMPILER, os_arch());
}

/* ---- putting it together ------------------------------------------------- */

static int find_flag(const char *name, size_t len)
{
    for (size_t i = 0; i < N_FLAGS; i++)
        if (strlen(flags[i].name) == len && memcmp(flags[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

static void env_key(const struct flag_def *f, char *buf, size_t n)
{
    size_t j = (size_t)snprintf(buf, n, "%s_", f->ballast ? "BALLAST" : "ETCD");
    for (const char *s = f->name; *s && j + 1 < n; s++)
        buf[j++] = *s == '-' ? '_' : (char)(*s >= 'a' && *s <= 'z' ? *s - 'a' + 'A' : *s);
    buf[j] = '\0';
}

/* The first KEY=value entry, as Go's os.Getenv picks it; NULL if absent. */
static const char *env_find(char **envp, const char *key)
{
    size_t klen = strlen(key);
    for (char **e = envp; e && *e; e++)
        if (strncmp(*e, key, klen) == 0 && (*e)[klen] == '=')
            return *e + klen + 1;
    return NULL;
}

static bool config_defaults(ballast_config *cfg)
{
    char *why = NULL; /* the defaults parse, so only memory can run out */
    memset(cfg, 0, sizeof *cfg);
    cfg->heartbeat_interval_ms = 100;
    cfg->election_timeout_ms = 1000;
    cfg->snapshot_count = 100000;
    cfg->max_request_bytes = 1572864;
    cfg->max_txn_ops = 128;
    cfg->quota_backend_bytes = 0;
    cfg->batch_max_ops = 100;
    cfg->batch_max_wait_us = 1000;
    cfg->watch_progress_notify_interval_us = 600000000; /* 10m */
    cfg->batch_policy = BATCH_POLICY_ADAPTIVE;
    cfg->memtable_reserve_bytes = MVCC_WRITE_BUFFER_BYTES;
    cfg->name = strdup("default");
    cfg->initial_cluster_token = strdup("etcd-cluster");
    cfg->log_level = strdup("info");
    bool ok = cfg->name && cfg->initial_cluster_token && cfg->log_level &&
              url_list_parse("http://localhost:2379", &cfg->listen_client_urls, &why) == 0 &&
              url_list_parse("http://localhost:2379", &cfg->advertise_client_urls, &why) == 0 &&
              url_list_parse("http://localhost:2380", &cfg->listen_peer_urls, &why) == 0 &&
              url_list_parse("http://localhost:2380", &cfg->initial_advertise_peer_urls, &why) == 0;
    free(why);
    return ok;
}

enum { PARSE_OK, PARSE_HELP, PARSE_ERROR };

/* Go's FlagSet.Parse. On PARSE_ERROR the message is in *why. */
static int parse_args(struct parser *p, int argc, char **argv, char **why)
{
    int i = 1;
    while (i < argc) {
        const char *s = argv[i];
        if (strlen(s) < 2 || s[0] != '-')
            break;
        int dashes = 1;
        if (s[1] == '-') {
            dashes = 2;
            if (s[2] == '\0') {
                i++;
                break;
            }
        }
        const char *name = s + dashes;
        if (name[0] == '-' || name[0] == '=') {
            *why = format("bad flag syntax: %s", s);
            return PARSE_ERROR;
        }
        i++;
        const char *eq = strchr(name + 1, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const char *value = eq ? eq + 1 : NULL;
        int idx = find_flag(name, nlen);
        if (idx < 0) {
            if ((nlen == 4 && memcmp(name, "help", 4) == 0) || (nlen == 1 && name[0] == 'h'))
                return PARSE_HELP;
            *why = format("flag provided but not defined: -%.*s", (int)nlen, name);
            return PARSE_ERROR;
        }
        const struct flag_def *f = &flags[idx];
        char *reason = NULL;
        if (f->kind == K_BOOL || f->kind == K_OBSOLETE) {
            if (apply(p, f, value ? value : "true", &reason) != 0) {
                if (value)
                    *why = format("invalid boolean value \"%s\" for -%s: %s", value, f->name,
                                  or_oom(reason));
                else
                    *why = format("invalid boolean flag %s: %s", f->name, or_oom(reason));
                free(reason);
                return PARSE_ERROR;
            }
        } else {
            if (value == NULL) {
                if (i >= argc) {
                    *why = format("flag needs an argument: -%s", f->name);
                    return PARSE_ERROR;
                }
                value = argv[i++];
            }
            if (apply(p, f, value, &reason) != 0) {
                *why = format("invalid value \"%s\" for flag -%s: %s", value, f->name,
                              or_oom(reason));
                free(reason);
                return PARSE_ERROR;
            }
        }
        p->on_cmdline[idx] = p->set[idx] = true;
    }
    if (i < argc) {
        *why = format("'%s' is not a valid flag", argv[i]);
        return PARSE_ERROR;
    }
    return PARSE_OK;
}

/* etcd's pkg/flags.SetFlagsFromEnv, conflicts first as etcd reports them. */
static int parse_env(struct parser *p, char **envp, char **why)
{
    char key[128];
    for (size_t i = 0; i < N_FLAGS; i++) {
        env_key(&flags[i], key, sizeof key);
        if (p->on_cmdline[i] && env_find(envp, key)) {
            *why = format("environment variable %s conflicts with the command-line flag --%s; "
                          "unset one of them",
                          key, flags[i].name);
            return -1;
        }
    }
    for (size_t i = 0; i < N_FLAGS; i++) {
        env_key(&flags[i], key, sizeof key);
        const char *v = env_find(envp, key);
        if (p->on_cmdline[i] || v == NULL || *v == '\0')
            continue;
        char *reason = NULL;
        if (apply(p, &flags[i], v, &reason) != 0) {
            *why = format("invalid value \"%s\" for %s: %s", v, key, or_oom(reason));
            free(reason);
            return -1;
        }
        p->set[i] = p->env_used[i] = true;
    }
    for (char **e = envp; e && *e; e++) {
        if (strncmp(*e, "ETCD_", 5) != 0)
            continue;
        bool used = false;
        for (size_t i = 0; i < N_FLAGS && !used; i++) {
            env_key(&flags[i], key, sizeof key);
            size_t klen = strlen(key);
            used = p->env_used[i] && strncmp(*e, key, klen) == 0 && (*e)[klen] == '=';
        }
        if (!used)
            fprintf(p->err, "ballast: warning: unrecognized environment variable %s\n", *e);
    }
    return 0;
}

static bool flag_set(const struct parser *p, enum target t)
{
    for (size_t i = 0; i < N_FLAGS; i++)
        if (flags[i].target == t)
            return p->set[i];
    return false;
}

static void join_urls(const config_url_list *l, char *buf, size_t n)
{
    size_t j = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < l->n && j < n; i++)
        j += (size_t)snprintf(buf + j, n - j, "%s%s", i ? "," : "", l->items[i].text);
}

/* Bind addresses must be literal: etcd accepts "localhost" and IPs only. */
static int check_bind(const config_url_list *l, char **why)
{
    for (size_t i = 0; i < l->n; i++) {
        const config_url *u = &l->items[i];
        unsigned char addr[16];
        if (strcmp(u->host, "localhost") == 0 || inet_pton(AF_INET, u->host, addr) == 1 ||
            inet_pton(AF_INET6, u->host, addr) == 1)
            continue;
        *why = format("expected IP in URL for binding (%s)", u->text);
        return -1;
    }
    return 0;
}

static int check_advertised(const char *flag, const config_url_list *l, char **why)
{
    for (size_t i = 0; i < l->n; i++) {
        if (l->items[i].host[0] == '\0') {
            char all[512];
            join_urls(l, all, sizeof all);
            *why = format("--%s \"%s\" must be \"host:port\" (unexpected empty host (%s))",
                          flag, all, l->items[i].text);
            return -1;
        }
    }
    return 0;
}

/* etcd's embed.Config.Validate, in its order, then the defaults that depend
 * on other flags. */
static int finish(struct parser *p, char **why)
{
    ballast_config *cfg = p->cfg;
    unsigned tick = cfg->heartbeat_interval_ms, election = cfg->election_timeout_ms;

    if (check_bind(&cfg->listen_peer_urls, why) ||
        check_bind(&cfg->listen_client_urls, why) ||
        check_bind(&cfg->listen_metrics_urls, why) ||
        check_advertised("initial-advertise-peer-urls", &cfg->initial_advertise_peer_urls, why) ||
        check_advertised("advertise-client-urls", &cfg->advertise_client_urls, why))
        return -1;
    if (tick == 0) {
        *why = format("--heartbeat-interval must be >0 (set to %ums)", tick);
        return -1;
    }
    if (election == 0) {
        *why = format("--election-timeout must be >0 (set to %ums)", election);
        return -1;
    }
    if (5 * (uint64_t)tick > election) {
        *why = format("--election-timeout[%ums] should be at least as 5 times as "
                      "--heartbeat-interval[%ums]",
                      election, tick);
        return -1;
    }
    if (election > MAX_ELECTION_MS) {
        *why = format("--election-timeout[%ums] is too long, and should be set less than %ums",
                      election, MAX_ELECTION_MS);
        return -1;
    }
    if (flag_set(p, T_LISTEN_CLIENT) && !flag_set(p, T_ADVERTISE_CLIENT)) {
        *why = format("--advertise-client-urls is required when --listen-client-urls is set "
                      "explicitly");
        return -1;
    }

    if (p->debug && replace_string(&cfg->log_level, "debug") != 0)
        return -1;
    if (cfg->data_dir == NULL || cfg->data_dir[0] == '\0') {
        size_t n = strlen(cfg->name) + sizeof ".etcd";
        free(cfg->data_dir);
        cfg->data_dir = malloc(n);
        if (cfg->data_dir == NULL)
            return -1;
        snprintf(cfg->data_dir, n, "%s.etcd", cfg->name);
    }
    if (!flag_set(p, T_INITIAL_CLUSTER)) {
        const config_url_list *ap = &cfg->initial_advertise_peer_urls;
        const char *name = cfg->name[0] ? cfg->name : "default";
        cfg->initial_cluster = calloc(ap->n ? ap->n : 1, sizeof(config_member));
        if (cfg->initial_cluster == NULL)
            return -1;
        for (size_t i = 0; i < ap->n; i++) {
            config_member *m = &cfg->initial_cluster[cfg->n_initial_cluster++];
            m->name = strdup(name);
            m->url.scheme = strdup(ap->items[i].scheme);
            m->url.host = strdup(ap->items[i].host);
            m->url.text = strdup(ap->items[i].text);
            m->url.port = ap->items[i].port;
            if (!m->name || !m->url.scheme || !m->url.host || !m->url.text)
                return -1;
        }
    }
    return 0;
}

config_status config_parse(ballast_config *cfg, int argc, char **argv, char **envp,
                           FILE *out, FILE *err)
{
    static const char hint[] = "See 'ballast --help'.\n";
    struct parser *p = NULL;
    char *why = NULL;
    config_status status = CONFIG_EXIT_USAGE;

    if (!config_defaults(cfg) || (p = calloc(1, sizeof *p)) == NULL) {
        fputs("ballast: out of memory\n", err);
        goto done;
    }
    p->cfg = cfg;
    p->err = err;

    switch (parse_args(p, argc, argv, &why)) {
    case PARSE_HELP:
        print_help(out);
        status = CONFIG_EXIT_OK;
        goto done;
    case PARSE_ERROR:
        fprintf(err, "%s\n%s", or_oom(why), hint);
        goto done;
    }
    if (p->version) {
        print_version(out);
        status = CONFIG_EXIT_OK;
        goto done;
    }
    if (parse_env(p, envp, &why) != 0 || finish(p, &why) != 0) {
        fprintf(err, "ballast: error verifying flags, %s. %s", or_oom(why), hint);
        goto done;
    }
    status = CONFIG_OK;
done:
    if (status != CONFIG_OK)
        config_free(cfg);
    free(why);
    free(p);
    return status;
}

void config_free(ballast_config *cfg)
{
    free(cfg->name);
    free(cfg->data_dir);
    url_list_clear(&cfg->listen_client_urls);
    url_list_clear(&cfg->advertise_client_urls);
    url_list_clear(&cfg->listen_peer_urls);
    url_list_clear(&cfg->initial_advertise_peer_urls);
    url_list_clear(&cfg->listen_metrics_urls);
    members_free(cfg->initial_cluster, cfg->n_initial_cluster);
    free(cfg->initial_cluster_token);
    free(cfg->log_level);
    memset(cfg, 0, sizeof *cfg);
}
