/*
 * `ballast snapshot restore FILE --data-dir DIR [--name --initial-cluster
 * --initial-cluster-token --initial-advertise-peer-urls]`: like `etcdctl
 * snapshot restore`, a new data directory from a snapshot file (what
 * `etcdctl snapshot save` fetched from Maintenance.Snapshot), for a member
 * of a new cluster that `ballast` started with the same flags serves.
 *
 * The member and cluster IDs come from the flags exactly as a first start
 * would choose them (member.c). The store gets the snapshot's keys,
 * history, leases, revisions and alarms, with its applied index set back
 * to 0: the new cluster's raft log starts again at index 1, and an applied
 * index left from the old cluster would make the store skip those entries.
 * raft/ is left empty, so the first start bootstraps the new cluster.
 */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "member.h"
#include "mvcc.h"
#include "snapshot_restore.h"

static const char *const restore_flags[] = {"data-dir", "name", "initial-cluster",
                                            "initial-cluster-token",
                                            "initial-advertise-peer-urls"};

static void usage(FILE *f)
{
    fputs("Usage: ballast snapshot restore FILE [--data-dir DIR] [--name NAME]\n"
          "         [--initial-cluster NAME=URL,...] [--initial-cluster-token TOKEN]\n"
          "         [--initial-advertise-peer-urls URL,...]\n"
          "\n"
          "Creates a new data directory (which must not exist) from a snapshot saved\n"
          "with `etcdctl snapshot save` from a Ballast server. Start ballast with the\n"
          "same --name, --initial-cluster, --initial-cluster-token and\n"
          "--initial-advertise-peer-urls to serve it as a member of a new cluster.\n",
          f);
}

static int allowed(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof restore_flags / sizeof restore_flags[0]; i++)
        if (strlen(restore_flags[i]) == len && strncmp(restore_flags[i], name, len) == 0)
            return 1;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static int restore(const char *file, const ballast_config *cfg)
{
    struct stat st;
    if (stat(cfg->data_dir, &st) == 0) {
        fprintf(stderr, "Error: data-dir \"%s\" exists\n", cfg->data_dir);
        return 1;
    }
    FILE *f = fopen(file, "rb");
    if (!f) {
        fprintf(stderr, "Error: cannot open %s: %s\n", file, strerror(errno));
        return 1;
    }
    member_identity id;
    char *err = NULL;
    mvcc *m = NULL;
    mvcc_load *l = NULL;
    int rc = 1;
    size_t cap = 1 << 20;
    uint8_t *buf = malloc(cap);
    if (!buf) {
        fprintf(stderr, "Error: out of memory\n");
        fclose(f);
        return 1;
    }
    if (member_open_data_dir(cfg, &id, &err) != 0) {
        fprintf(stderr, "Error: %s\n", err ? err : "cannot create the data directory");
        free(err);
        free(buf);
        fclose(f);
        return 1;
    }
    if (mvcc_open(id.kv_dir, &m, &err) != 0)
        goto fail;
    l = mvcc_load_begin(m, &err);
    if (!l)
        goto fail;
    size_t n;
    while ((n = fread(buf, 1, cap, f)) > 0)
        if (mvcc_load_feed(l, buf, n, &err) != 0)
            goto fail;
    if (ferror(f)) {
        err = strdup(strerror(errno));
        goto fail;
    }
    int end = mvcc_load_end(l, &err);
    l = NULL;
    if (end != 0)
        goto fail;
    if (mvcc_reset_for_new_cluster(m) != 0) {
        err = strdup("cannot reset the applied index");
        goto fail;
    }
    fprintf(stderr,
            "ballast info: restored snapshot %s into %s: revision %lld, member %016llx of new "
            "cluster %016llx\n",
            file, cfg->data_dir, (long long)mvcc_current_revision(m),
            (unsigned long long)id.member_id, (unsigned long long)id.cluster_id);
    rc = 0;
fail:
    if (l)
        mvcc_load_abort(l);
    mvcc_close(m);
    if (rc != 0) {
        fprintf(stderr, "Error: cannot restore %s: %s\n", file, err ? err : "store error");
        /* never leave a half-made data directory a server could start on */
        nftw(cfg->data_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    free(err);
    free(buf);
    fclose(f);
    member_identity_free(&id);
    return rc;
}

int snapshot_command_main(int argc, char **argv, char **envp)
{
    (void)envp; /* like etcdctl's restore, only the command line counts */
    /* argv: ballast snapshot restore FILE flags... */
    if (argc < 3 || strcmp(argv[2], "restore") != 0) {
        usage(argc >= 3 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0) ? stdout
                                                                                            : stderr);
        return argc >= 3 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0) ? 0 : 2;
    }
    const char *file = NULL;
    char **cargv = calloc((size_t)argc + 1, sizeof *cargv);
    if (!cargv)
        return 1;
    int cargc = 0;
    cargv[cargc++] = argv[0];
    for (int i = 3; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            free(cargv);
            return 0;
        }
        if (a[0] != '-') {
            if (file) {
                fprintf(stderr, "Error: snapshot restore takes one snapshot file (got %s and %s)\n",
                        file, a);
                free(cargv);
                return 2;
            }
            file = a;
            continue;
        }
        const char *name = a + (a[1] == '-' ? 2 : 1);
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        if (!allowed(name, len)) {
            fprintf(stderr, "Error: unknown flag for snapshot restore: %s\n", a);
            usage(stderr);
            free(cargv);
            return 2;
        }
        cargv[cargc++] = argv[i];
        if (!eq && i + 1 < argc)
            cargv[cargc++] = argv[++i];
    }
    if (!file) {
        fprintf(stderr, "Error: snapshot restore needs a snapshot file\n");
        usage(stderr);
        free(cargv);
        return 2;
    }
    char *no_env[] = {NULL};
    ballast_config cfg;
    config_status cs = config_parse(&cfg, cargc, cargv, no_env, stdout, stderr);
    free(cargv);
    if (cs != CONFIG_OK)
        return cs == CONFIG_EXIT_OK ? 0 : 2;
    int rc = restore(file, &cfg);
    config_free(&cfg);
    return rc;
}
