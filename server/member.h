/*
 * member — this member's data directory and identity.
 *
 * Layout: <data-dir>/ballast/{member, kv/, raft/}. `member` records the
 * member and cluster IDs chosen at the first start, so they stay the same
 * whatever flags a restart is given. A data directory that holds an etcd
 * member tree (member/ with bbolt and WAL files) is refused untouched.
 */
#ifndef BALLAST_SERVER_MEMBER_H
#define BALLAST_SERVER_MEMBER_H

#include <stdint.h>

#include "config.h"

typedef struct member_identity {
    uint64_t member_id;
    uint64_t cluster_id;
    char *kv_dir;   /* malloc'd */
    char *raft_dir; /* malloc'd */
} member_identity;

/* The ID of a member from its peer URLs and the cluster token (like etcd,
 * a hash of both), never 0. */
uint64_t member_id_for(const config_url_list *peer_urls, const char *token);
uint64_t member_id_for_url(const char *peer_url, const char *token);

/* Prepares the data directory and loads or creates the identity. Returns 0,
 * or -1 with *errmsg (malloc'd) saying why the directory cannot be used. */
int member_open_data_dir(const ballast_config *cfg, member_identity *id, char **errmsg);
void member_identity_free(member_identity *id);

#endif
