/* Helpers shared by the storage unit tests: a store in a fresh temporary
 * directory, one-op entries, and decoding of the encoded responses. */
#ifndef BALLAST_TEST_STORAGE_H
#define BALLAST_TEST_STORAGE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "mvcc.h"

typedef struct tstore {
    mvcc *m;
    char dir[64];
    uint64_t index;
    mvcc_buf out;
    mvcc_header h;
} tstore;

static inline void ts_open_dir(tstore *t)
{
    char *err = NULL;
    int rc = mvcc_open(t->dir, &t->m, &err);
    if (rc)
        fprintf(stderr, "mvcc_open: %s\n", err ? err : "?");
    CHECK(rc == 0);
    t->index = mvcc_applied_index(t->m);
}

static inline void ts_open(tstore *t)
{
    memset(t, 0, sizeof(*t));
    snprintf(t->dir, sizeof(t->dir), "/tmp/ballast-mvcc-XXXXXX");
    CHECK(mkdtemp(t->dir) != NULL);
    t->h.cluster_id = 11;
    t->h.member_id = 22;
    t->h.raft_term = 3;
    ts_open_dir(t);
}

static inline void ts_reopen(tstore *t)
{
    mvcc_close(t->m);
    t->m = NULL;
    ts_open_dir(t);
}

static inline void ts_close(tstore *t)
{
    mvcc_close(t->m);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", t->dir);
    CHECK(system(cmd) == 0);
    free(t->out.data);
}

static inline ProtobufCBinaryData bin(const char *s)
{
    ProtobufCBinaryData b = {strlen(s), (uint8_t *)s};
    return b;
}

static inline ProtobufCBinaryData binn(const char *s, size_t n)
{
    ProtobufCBinaryData b = {n, (uint8_t *)s};
    return b;
}

/* Applies one op as its own entry. */
static inline mvcc_result ts_apply(tstore *t, Ballastpb__Op *op)
{
    mvcc_result r;
    Ballastpb__Op *ops[1] = {op};
    t->out.len = 0;
    CHECK(mvcc_apply(t->m, ++t->index, &t->h, ops, 1, &t->out, &r) == 0);
    return r;
}

static inline Etcdserverpb__PutResponse *ts_put_req(tstore *t, Etcdserverpb__PutRequest *p,
                                                    mvcc_result *rr)
{
    Ballastpb__Op op = BALLASTPB__OP__INIT;
    op.op_case = BALLASTPB__OP__OP_PUT;
    op.put = p;
    mvcc_result r = ts_apply(t, &op);
    if (rr)
        *rr = r;
    if (r.status != MVCC_STATUS_OK)
        return NULL;
    Etcdserverpb__PutResponse *resp =
        etcdserverpb__put_response__unpack(NULL, r.len, t->out.data + r.off);
    CHECK(resp != NULL);
    return resp;
}

/* A plain put; returns the response header revision. */
static inline int64_t ts_put(tstore *t, const char *k, const char *v)
{
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    p.key = bin(k);
    p.value = bin(v);
    Etcdserverpb__PutResponse *resp = ts_put_req(t, &p, NULL);
    CHECK(resp != NULL);
    CHECK(resp->header != NULL);
    CHECK_EQ_INT(resp->header->cluster_id, 11);
    CHECK_EQ_INT(resp->header->member_id, 22);
    CHECK_EQ_INT(resp->header->raft_term, 3);
    int64_t rev = resp->header->revision;
    etcdserverpb__put_response__free_unpacked(resp, NULL);
    return rev;
}

static inline Etcdserverpb__DeleteRangeResponse *ts_del_req(tstore *t,
                                                            Etcdserverpb__DeleteRangeRequest *d)
{
    Ballastpb__Op op = BALLASTPB__OP__INIT;
    op.op_case = BALLASTPB__OP__OP_DELETE_RANGE;
    op.delete_range = d;
    mvcc_result r = ts_apply(t, &op);
    CHECK_EQ_INT(r.status, MVCC_STATUS_OK);
    Etcdserverpb__DeleteRangeResponse *resp =
        etcdserverpb__delete_range_response__unpack(NULL, r.len, t->out.data + r.off);
    CHECK(resp != NULL);
    return resp;
}

/* Deletes [k, end) (end NULL: the key alone); returns the number deleted. */
static inline int64_t ts_del(tstore *t, const char *k, const char *end)
{
    Etcdserverpb__DeleteRangeRequest d = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    d.key = bin(k);
    if (end)
        d.range_end = binn(end, end[0] ? strlen(end) : 1);
    Etcdserverpb__DeleteRangeResponse *resp = ts_del_req(t, &d);
    int64_t n = resp->deleted;
    etcdserverpb__delete_range_response__free_unpacked(resp, NULL);
    return n;
}

static inline Etcdserverpb__RangeResponse *ts_range_req(tstore *t,
                                                        const Etcdserverpb__RangeRequest *q,
                                                        mvcc_result *rr)
{
    mvcc_result r;
    t->out.len = 0;
    CHECK(mvcc_range(t->m, q, &t->h, &t->out, &r) == 0);
    if (rr)
        *rr = r;
    if (r.status != MVCC_STATUS_OK)
        return NULL;
    Etcdserverpb__RangeResponse *resp =
        etcdserverpb__range_response__unpack(NULL, r.len, t->out.data + r.off);
    CHECK(resp != NULL);
    CHECK(resp->header != NULL);
    return resp;
}

/* Range of [k, end) at rev; end "" means "\0" (all keys >= k), NULL the key alone. */
static inline Etcdserverpb__RangeResponse *ts_range(tstore *t, const char *k, const char *end,
                                                    int64_t rev)
{
    Etcdserverpb__RangeRequest q = ETCDSERVERPB__RANGE_REQUEST__INIT;
    q.key = bin(k);
    if (end)
        q.range_end = binn(end, end[0] ? strlen(end) : 1);
    q.revision = rev;
    Etcdserverpb__RangeResponse *resp = ts_range_req(t, &q, NULL);
    CHECK(resp != NULL);
    return resp;
}

static inline int kv_is(const Mvccpb__KeyValue *kv, const char *k, const char *v)
{
    return kv->key.len == strlen(k) && (kv->key.len == 0 || memcmp(kv->key.data, k, kv->key.len) == 0) &&
           (v == NULL || (kv->value.len == strlen(v) &&
                          (kv->value.len == 0 || memcmp(kv->value.data, v, kv->value.len) == 0)));
}

static inline mvcc_result ts_compact(tstore *t, int64_t rev, int physical)
{
    Etcdserverpb__CompactionRequest c = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
    c.revision = rev;
    c.physical = physical;
    Ballastpb__Op op = BALLASTPB__OP__INIT;
    op.op_case = BALLASTPB__OP__OP_COMPACTION;
    op.compaction = &c;
    return ts_apply(t, &op);
}

static inline Etcdserverpb__TxnResponse *ts_txn(tstore *t, Etcdserverpb__TxnRequest *txn,
                                                mvcc_result *rr)
{
    mvcc_result r;
    if (mvcc_txn_is_read_only(txn)) {
        t->out.len = 0;
        CHECK(mvcc_txn_read(t->m, txn, &t->h, &t->out, &r) == 0);
    } else {
        Ballastpb__Op op = BALLASTPB__OP__INIT;
        op.op_case = BALLASTPB__OP__OP_TXN;
        op.txn = txn;
        r = ts_apply(t, &op);
    }
    if (rr)
        *rr = r;
    if (r.status != MVCC_STATUS_OK)
        return NULL;
    Etcdserverpb__TxnResponse *resp =
        etcdserverpb__txn_response__unpack(NULL, r.len, t->out.data + r.off);
    CHECK(resp != NULL);
    return resp;
}

#define CHECK_ERR(r, code, msg)                                                \
    do {                                                                       \
        CHECK_EQ_INT((r).status, (code));                                      \
        CHECK((r).message != NULL && strcmp((r).message, (msg)) == 0);         \
    } while (0)

#define ERR_COMPACTED "etcdserver: mvcc: required revision has been compacted"
#define ERR_FUTURE "etcdserver: mvcc: required revision is a future revision"

#endif
