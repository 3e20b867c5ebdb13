#include "member.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <raft.h>

static int fail(char **errmsg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(char **errmsg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(errmsg, fmt, ap) < 0)
        *errmsg = NULL;
    va_end(ap);
    return -1;
}

/* A malloc'd path made of dir + "/" + name. */
static char *join(const char *dir, const char *name)
{
    char *p;
    if (asprintf(&p, "%s/%s", dir, name) < 0)
        abort();
    return p;
}

uint64_t member_id_for_url(const char *peer_url, const char *token)
{
    char text[2048];
    snprintf(text, sizeof text, "%s|%s", peer_url, token);
    uint64_t id = raft_digest(text, 0);
    return id ? id : 1;
}

uint64_t member_id_for(const config_url_list *peer_urls, const char *token)
{
    /* Members are named by their first advertised peer URL, which is also
     * what --initial-cluster lists for them. */
    return member_id_for_url(peer_urls->n ? peer_urls->items[0].text : "", token);
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static int write_identity(const char *path, const member_identity *id, char **errmsg)
{
    char *tmp;
    if (asprintf(&tmp, "%s.tmp", path) < 0)
        abort();
    int rv = 0;
    FILE *f = fopen(tmp, "w");
    if (!f) {
        rv = fail(errmsg, "cannot create %s: %s", tmp, strerror(errno));
        free(tmp);
        return rv;
    }
    fprintf(f, "ballast-member 1\nmember_id %016llx\ncluster_id %016llx\n",
            (unsigned long long)id->member_id, (unsigned long long)id->cluster_id);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        rv = fail(errmsg, "cannot write %s: %s", tmp, strerror(errno));
    fclose(f);
    if (rv == 0 && rename(tmp, path) != 0)
        rv = fail(errmsg, "cannot rename %s: %s", tmp, strerror(errno));
    free(tmp);
    return rv;
}

static int read_identity(const char *path, member_identity *id, char **errmsg)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return fail(errmsg, "cannot read %s: %s", path, strerror(errno));
    unsigned version = 0;
    unsigned long long mid = 0, cid = 0;
    int n = fscanf(f, "ballast-member %u\nmember_id %llx\ncluster_id %llx\n", &version, &mid, &cid);
    fclose(f);
    if (n != 3 || version != 1 || mid == 0)
        return fail(errmsg, "%s is not a Ballast member file this version can read", path);
    id->member_id = mid;
    id->cluster_id = cid;
    return 0;
}

static uint64_t cluster_id_for(const ballast_config *cfg)
{
    /* A hash of every initial member's ID and the token: the same on every
     * member started with the same --initial-cluster. */
    char text[8192];
    size_t len = 0;
    for (size_t i = 0; i < cfg->n_initial_cluster && len < sizeof text - 32; i++)
        len += (size_t)snprintf(text + len, sizeof text - len, "%016llx,",
                                (unsigned long long)member_id_for_url(cfg->initial_cluster[i].url.text,
                                                                      cfg->initial_cluster_token));
    snprintf(text + len, sizeof text - len, "%s", cfg->initial_cluster_token);
    uint64_t id = raft_digest(text, 1);
    return id ? id : 1;
}

int member_open_data_dir(const ballast_config *cfg, member_identity *id, char **errmsg)
{
    memset(id, 0, sizeof *id);
    int rv = 0;
    char *etcd_member = join(cfg->data_dir, "member");
    char *ballast_dir = join(cfg->data_dir, "ballast");
    char *member_file = join(ballast_dir, "member");
    id->kv_dir = join(ballast_dir, "kv");
    id->raft_dir = join(ballast_dir, "raft");
    if (exists(etcd_member)) {
        rv = fail(errmsg,
                  "data directory %s holds an etcd member tree (%s): Ballast cannot read etcd's "
                  "bbolt and WAL files and leaves them untouched; use an empty data directory",
                  cfg->data_dir, etcd_member);
    } else if (mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
        rv = fail(errmsg, "cannot create data directory %s: %s", cfg->data_dir, strerror(errno));
    } else if (mkdir(ballast_dir, 0700) != 0 && errno != EEXIST) {
        rv = fail(errmsg, "cannot create %s: %s", ballast_dir, strerror(errno));
    } else if (exists(member_file)) {
        rv = read_identity(member_file, id, errmsg);
    } else if (exists(id->kv_dir) || exists(id->raft_dir)) {
        rv = fail(errmsg, "%s has data but no member file (%s): refusing to guess its identity",
                  ballast_dir, member_file);
    } else {
        id->member_id = member_id_for(&cfg->initial_advertise_peer_urls, cfg->initial_cluster_token);
        for (size_t i = 0; i < cfg->n_initial_cluster; i++)
            if (strcmp(cfg->initial_cluster[i].name, cfg->name) == 0)
                id->member_id =
                    member_id_for_url(cfg->initial_cluster[i].url.text, cfg->initial_cluster_token);
        id->cluster_id = cluster_id_for(cfg);
        rv = write_identity(member_file, id, errmsg);
    }
    free(etcd_member);
    free(ballast_dir);
    free(member_file);
    if (rv != 0)
        member_identity_free(id);
    return rv;
}

void member_identity_free(member_identity *id)
{
    free(id->kv_dir);
    free(id->raft_dir);
    id->kv_dir = id->raft_dir = NULL;
}
