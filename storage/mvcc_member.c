/*
 * The cluster's member list, replicated like any data: meta records
 * "member/" + 8-byte BE id -> encoded ballastpb.Member, and "cluster_id".
 * MemberOp entries change it in the entry's own write batch, so a snapshot
 * of the store carries the member list with the data.
 */
#include <stdlib.h>
#include <string.h>

#include "mvcc_internal.h"

#define MEMBER_PREFIX "member/"
#define MEMBER_PREFIX_LEN 7
#define META_CLUSTER_ID "cluster_id"

#define ERR_MEMBER_EXIST "etcdserver: member ID already exist"
#define ERR_PEER_URL_EXIST "etcdserver: Peer URLs already exists"
#define ERR_MEMBER_NOT_FOUND "etcdserver: member not found"
#define ERR_MEMBER_NOT_LEARNER "etcdserver: can only promote a learner member"

static void member_key(uint8_t out[MEMBER_PREFIX_LEN + 8], uint64_t id)
{
    memcpy(out, MEMBER_PREFIX, MEMBER_PREFIX_LEN);
    be64_encode(out + MEMBER_PREFIX_LEN, id);
}

/* Every member record seen through the view, in id order (decoded; free
 * with mvcc_members_free). Returns 0 or -1. */
static int members_read(mvcc_view *v, Ballastpb__Member ***out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    rocksdb_readoptions_t *ro = v->snap ? view_ro(v) : rocksdb_readoptions_create();
    if (!ro)
        return -1;
    rocksdb_iterator_t *it = view_iter(v, CF_META, ro);
    int rv = 0;
    size_t cap = 0;
    Ballastpb__Member **list = NULL;
    for (rocksdb_iter_seek(it, MEMBER_PREFIX, MEMBER_PREFIX_LEN); rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kn, vn;
        const char *k = rocksdb_iter_key(it, &kn);
        if (kn != MEMBER_PREFIX_LEN + 8 || memcmp(k, MEMBER_PREFIX, MEMBER_PREFIX_LEN) != 0)
            break;
        const char *val = rocksdb_iter_value(it, &vn);
        Ballastpb__Member *mem = ballastpb__member__unpack(NULL, vn, (const uint8_t *)val);
        if (!mem) {
            rv = -1;
            break;
        }
        if (*n_out == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            Ballastpb__Member **l = realloc(list, ncap * sizeof *l);
            if (!l) {
                ballastpb__member__free_unpacked(mem, NULL);
                rv = -1;
                break;
            }
            list = l;
            cap = ncap;
        }
        list[(*n_out)++] = mem;
    }
    if (rv == 0 && iter_failed(it))
        rv = -1;
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    if (rv != 0) {
        mvcc_members_free(list, *n_out);
        list = NULL;
        *n_out = 0;
    }
    *out = list;
    return rv;
}

void mvcc_members_free(Ballastpb__Member **members, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ballastpb__member__free_unpacked(members[i], NULL);
    free(members);
}

int mvcc_members(mvcc *m, Ballastpb__Member ***out, size_t *n)
{
    mvcc_view v;
    if (view_begin(m, &v) != 0)
        return -1;
    int rv = members_read(&v, out, n);
    view_end(&v);
    return rv;
}

uint64_t mvcc_cluster_id(mvcc *m)
{
    return __atomic_load_n(&m->cluster_id, __ATOMIC_ACQUIRE);
}

uint64_t mvcc_members_generation(mvcc *m)
{
    return __atomic_load_n(&m->members_gen, __ATOMIC_ACQUIRE);
}

int member_load_cluster_id(mvcc *m)
{
    char *err = NULL;
    size_t n;
    char *v = rocksdb_get_cf(m->db, m->ro_plain, m->cf[CF_META], META_CLUSTER_ID,
                             strlen(META_CLUSTER_ID), &n, &err);
    if (err) {
        free(err);
        return -1;
    }
    __atomic_store_n(&m->cluster_id, v && n == 8 ? be64_decode((const uint8_t *)v) : 0, __ATOMIC_RELEASE);
    free(v);
    return 0;
}

int member_forget_all(mvcc *m, rocksdb_writebatch_t *wb)
{
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(m->db, ro, m->cf[CF_META]);
    for (rocksdb_iter_seek(it, MEMBER_PREFIX, MEMBER_PREFIX_LEN); rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kn;
        const char *k = rocksdb_iter_key(it, &kn);
        if (kn < MEMBER_PREFIX_LEN || memcmp(k, MEMBER_PREFIX, MEMBER_PREFIX_LEN) != 0)
            break;
        rocksdb_writebatch_delete_cf(wb, m->cf[CF_META], k, kn);
    }
    int rv = iter_failed(it) ? -1 : 0;
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    rocksdb_writebatch_delete_cf(wb, m->cf[CF_META], META_CLUSTER_ID, strlen(META_CLUSTER_ID));
    return rv;
}

static void member_write(mvcc *m, const Ballastpb__Member *mem)
{
    uint8_t key[MEMBER_PREFIX_LEN + 8];
    member_key(key, mem->id);
    size_t len = ballastpb__member__get_packed_size(mem);
    uint8_t *buf = m->scratch2.data;
    m->scratch2.len = 0;
    if (buf_reserve(&m->scratch2, len ? len : 1) == 0) {
        buf = m->scratch2.data;
        ballastpb__member__pack(mem, buf);
        rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_META], (const char *)key, sizeof key,
                                     (const char *)buf, len);
    }
}

static Ballastpb__Member *find(Ballastpb__Member **list, size_t n, uint64_t id)
{
    for (size_t i = 0; i < n; i++)
        if (list[i]->id == id)
            return list[i];
    return NULL;
}

/* True when a peer URL of `mem` is already some other member's. */
static int peer_url_taken(Ballastpb__Member **list, size_t n, const Ballastpb__Member *mem)
{
    for (size_t i = 0; i < n; i++) {
        if (list[i]->id == mem->id)
            continue;
        for (size_t a = 0; a < list[i]->n_peer_urls; a++)
            for (size_t b = 0; b < mem->n_peer_urls; b++)
                if (strcmp(list[i]->peer_urls[a], mem->peer_urls[b]) == 0)
                    return 1;
    }
    return 0;
}

int member_apply(mvcc *m, mvcc_view *v, const Ballastpb__MemberOp *op, mvcc_result *res)
{
    Ballastpb__Member **list;
    size_t n;
    if (members_read(v, &list, &n) != 0)
        return -1;
    int rv = 0;
    Ballastpb__Member *arg = op->n_members ? op->members[0] : NULL;
    Ballastpb__Member *cur = arg ? find(list, n, arg->id) : NULL;
    switch (op->kind) {
    case BALLASTPB__MEMBER_OP__KIND__BOOTSTRAP:
        /* Only the first one counts: a later leader of the same new cluster
         * may propose it again. */
        if (n == 0) {
            for (size_t i = 0; i < op->n_members; i++)
                member_write(m, op->members[i]);
            uint8_t b[8];
            be64_encode(b, op->cluster_id);
            rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_META], META_CLUSTER_ID,
                                         strlen(META_CLUSTER_ID), (const char *)b, 8);
            m->pending_cluster_id = op->cluster_id;
            m->members_touched = true;
        }
        break;
    case BALLASTPB__MEMBER_OP__KIND__ADD:
        if (!arg) {
            result_error(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: given member URLs are invalid");
            rv = 1;
        } else if (cur) {
            result_error(res, MVCC_STATUS_FAILED_PRECONDITION, ERR_MEMBER_EXIST);
            rv = 1;
        } else if (peer_url_taken(list, n, arg)) {
            result_error(res, MVCC_STATUS_FAILED_PRECONDITION, ERR_PEER_URL_EXIST);
            rv = 1;
        } else {
            member_write(m, arg);
            m->members_touched = true;
        }
        break;
    case BALLASTPB__MEMBER_OP__KIND__REMOVE:
    case BALLASTPB__MEMBER_OP__KIND__UPDATE:
    case BALLASTPB__MEMBER_OP__KIND__PROMOTE:
        if (!cur) {
            result_error(res, MVCC_STATUS_NOT_FOUND, ERR_MEMBER_NOT_FOUND);
            rv = 1;
        } else if (op->kind == BALLASTPB__MEMBER_OP__KIND__REMOVE) {
            uint8_t key[MEMBER_PREFIX_LEN + 8];
            member_key(key, cur->id);
            rocksdb_writebatch_wi_delete_cf(m->wb, m->cf[CF_META], (const char *)key, sizeof key);
            m->members_touched = true;
        } else if (op->kind == BALLASTPB__MEMBER_OP__KIND__UPDATE) {
            if (peer_url_taken(list, n, arg)) {
                result_error(res, MVCC_STATUS_FAILED_PRECONDITION, ERR_PEER_URL_EXIST);
                rv = 1;
            } else {
                Ballastpb__Member upd = *cur;
                upd.peer_urls = arg->peer_urls;
                upd.n_peer_urls = arg->n_peer_urls;
                member_write(m, &upd);
                m->members_touched = true;
            }
        } else if (!cur->is_learner) {
            result_error(res, MVCC_STATUS_FAILED_PRECONDITION, ERR_MEMBER_NOT_LEARNER);
            rv = 1;
        } else {
            Ballastpb__Member upd = *cur;
            upd.is_learner = 0;
            member_write(m, &upd);
            m->members_touched = true;
        }
        break;
    case BALLASTPB__MEMBER_OP__KIND__ATTRS:
        /* A member removed meanwhile publishes into nothing. */
        if (cur) {
            Ballastpb__Member upd = *cur;
            upd.name = arg->name;
            upd.client_urls = arg->client_urls;
            upd.n_client_urls = arg->n_client_urls;
            member_write(m, &upd);
            m->members_touched = true;
        }
        break;
    default:
        result_error(res, MVCC_STATUS_INVALID_ARGUMENT, "etcdserver: unknown member operation");
        rv = 1;
        break;
    }
    mvcc_members_free(list, n);
    return rv;
}
