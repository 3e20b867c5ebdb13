/*
 * Checks done before a request is proposed, as etcd 3.4's v3rpc layer does
 * them (key.go): empty keys, ignore_value / ignore_lease misuse, the txn
 * operation limit and the duplicate-key rule.
 */
#include <stdlib.h>
#include <string.h>

#include "mvcc_internal.h"

void result_error(mvcc_result *res, int status, const char *msg)
{
    res->status = status;
    res->message = msg;
    res->off = 0;
    res->len = 0;
}

static int fail(mvcc_result *res, int status, const char *msg)
{
    result_error(res, status, msg);
    return -1;
}

int mvcc_validate_range(const Etcdserverpb__RangeRequest *req, const mvcc_limits *l,
                        mvcc_result *res)
{
    (void)l;
    if (req->key.len == 0)
        return fail(res, MVCC_STATUS_INVALID_ARGUMENT, ERR_EMPTY_KEY);
    return 0;
}

int mvcc_validate_put(const Etcdserverpb__PutRequest *req, const mvcc_limits *l,
                      mvcc_result *res)
{
    (void)l;
    if (req->key.len == 0)
        return fail(res, MVCC_STATUS_INVALID_ARGUMENT, ERR_EMPTY_KEY);
    if (req->ignore_value && req->value.len != 0)
        return fail(res, MVCC_STATUS_INVALID_ARGUMENT, ERR_VALUE_PROVIDED);
    if (req->ignore_lease && req->lease != 0)
        return fail(res, MVCC_STATUS_INVALID_ARGUMENT, ERR_LEASE_PROVIDED);
    return 0;
}

int mvcc_validate_delete_range(const Etcdserverpb__DeleteRangeRequest *req,
                               const mvcc_limits *l, mvcc_result *res)
{
    (void)l;
    if (req->key.len == 0)
        return fail(res, MVCC_STATUS_INVALID_ARGUMENT, ERR_EMPTY_KEY);
    return 0;
}

static size_t max3(size_t a, size_t b, size_t c)
{
    size_t m = a > b ? a : b;
    return m > c ? m : c;
}

/* etcd budgets nested txns with what the parent leaves: the parent's widest
 * list (compares, success or failure) is subtracted from the limit. */
static int check_txn(const Etcdserverpb__TxnRequest *r, long max_ops, mvcc_result *res);

static int check_op(const Etcdserverpb__RequestOp *op, long max_ops, mvcc_result *res)
{
    mvcc_limits none = {0, 0};
    switch (op->request_case) {
    case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE:
        return mvcc_validate_range(op->request_range, &none, res);
    case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT:
        return mvcc_validate_put(op->request_put, &none, res);
    case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE:
        return mvcc_validate_delete_range(op->request_delete_range, &none, res);
    case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN:
        return check_txn(op->request_txn, max_ops, res);
    default:
        /* An empty RequestOp: etcd answers with its "key not found" error. */
        return fail(res, MVCC_STATUS_INVALID_ARGUMENT, ERR_KEY_NOT_FOUND);
    }
}

static int check_txn(const Etcdserverpb__TxnRequest *r, long max_ops, mvcc_result *res)
{
    long opc = (long)max3(r->n_compare, r->n_success, r->n_failure);
    if (opc > max_ops)
        return fail(res, MVCC_STATUS_INVALID_ARGUMENT, ERR_TOO_MANY_OPS);
    for (size_t i = 0; i < r->n_compare; i++)
        if (r->compare[i]->key.len == 0)
            return fail(res, MVCC_STATUS_INVALID_ARGUMENT, ERR_EMPTY_KEY);
    for (size_t i = 0; i < r->n_success; i++)
        if (check_op(r->success[i], max_ops - opc, res))
            return -1;
    for (size_t i = 0; i < r->n_failure; i++)
        if (check_op(r->failure[i], max_ops - opc, res))
            return -1;
    return 0;
}

/*
 * The duplicate-key rule (etcd's checkIntervals). Within one list of
 * operations no key may be put twice, and no key may be both put and inside
 * a deleted range. Nested txns contribute their puts and deleted ranges;
 * a key put in both branches of one nested txn is fine, as only one runs.
 * The order of the checks is etcd's, which is not symmetric: a nested txn's
 * puts are checked against the deletes of the txns nested before it, not
 * after it.
 *
 * A delete's interval is [key, range_end) compared bytewise; with no
 * range_end it is the key alone. A range_end of "\0" ("every key >= key")
 * makes an interval that ends before it starts, which contains no key: etcd
 * does not see such deletes, and neither does this check.
 */
typedef struct bytes_ref {
    const uint8_t *p;
    size_t n;
} bytes_ref;

typedef struct ivl {
    bytes_ref begin, end; /* end.n == 0: just begin */
} ivl;

typedef struct keyset {
    bytes_ref *puts;
    size_t n_puts, cap_puts;
    ivl *dels;
    size_t n_dels, cap_dels;
} keyset;

static int bytes_cmp(bytes_ref a, bytes_ref b)
{
    size_t n = a.n < b.n ? a.n : b.n;
    int c = n ? memcmp(a.p, b.p, n) : 0;
    if (c)
        return c;
    return a.n < b.n ? -1 : a.n > b.n;
}

static bool set_has_put(const keyset *s, bytes_ref k)
{
    for (size_t i = 0; i < s->n_puts; i++)
        if (bytes_cmp(s->puts[i], k) == 0)
            return true;
    return false;
}

static bool set_del_covers(const keyset *s, bytes_ref k)
{
    for (size_t i = 0; i < s->n_dels; i++) {
        const ivl *d = &s->dels[i];
        if (d->end.n == 0) {
            if (bytes_cmp(d->begin, k) == 0)
                return true;
        } else if (bytes_cmp(d->begin, k) <= 0 && bytes_cmp(k, d->end) < 0) {
            return true;
        }
    }
    return false;
}

/* A set, like etcd's map: adding a key twice keeps one copy. */
static int set_add_put(keyset *s, bytes_ref k)
{
    if (set_has_put(s, k))
        return 0;
    if (s->n_puts == s->cap_puts) {
        size_t cap = s->cap_puts ? 2 * s->cap_puts : 8;
        bytes_ref *p = realloc(s->puts, cap * sizeof(*p));
        if (!p)
            return -1;
        s->puts = p;
        s->cap_puts = cap;
    }
    s->puts[s->n_puts++] = k;
    return 0;
}

static int set_add_del(keyset *s, ivl d)
{
    if (s->n_dels == s->cap_dels) {
        size_t cap = s->cap_dels ? 2 * s->cap_dels : 8;
        ivl *p = realloc(s->dels, cap * sizeof(*p));
        if (!p)
            return -1;
        s->dels = p;
        s->cap_dels = cap;
    }
    s->dels[s->n_dels++] = d;
    return 0;
}

static void set_free(keyset *s)
{
    free(s->puts);
    free(s->dels);
    memset(s, 0, sizeof(*s));
}

enum { DUP_OK = 0, DUP_FOUND = 1, DUP_NOMEM = -1 };

static int check_intervals(Etcdserverpb__RequestOp **reqs, size_t n, keyset *out)
{
    keyset s = {0};
    int rc = DUP_OK;
    for (size_t i = 0; i < n; i++) {
        if (reqs[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE)
            continue;
        const Etcdserverpb__DeleteRangeRequest *d = reqs[i]->request_delete_range;
        ivl v = {{d->key.data, d->key.len}, {d->range_end.data, d->range_end.len}};
        if (set_add_del(&s, v))
            goto nomem;
    }
    for (size_t i = 0; i < n && rc == DUP_OK; i++) {
        if (reqs[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN)
            continue;
        const Etcdserverpb__TxnRequest *t = reqs[i]->request_txn;
        keyset then = {0}, els = {0};
        rc = check_intervals(t->success, t->n_success, &then);
        if (rc == DUP_OK)
            rc = check_intervals(t->failure, t->n_failure, &els);
        for (size_t j = 0; rc == DUP_OK && j < then.n_puts; j++) {
            if (set_has_put(&s, then.puts[j]) || set_del_covers(&s, then.puts[j]))
                rc = DUP_FOUND;
            else if (set_add_put(&s, then.puts[j]))
                rc = DUP_NOMEM;
        }
        for (size_t j = 0; rc == DUP_OK && j < els.n_puts; j++) {
            bytes_ref k = els.puts[j];
            if ((set_has_put(&s, k) && !set_has_put(&then, k)) || set_del_covers(&s, k))
                rc = DUP_FOUND;
            else if (set_add_put(&s, k))
                rc = DUP_NOMEM;
        }
        for (size_t j = 0; rc == DUP_OK && j < then.n_dels; j++)
            if (set_add_del(&s, then.dels[j]))
                rc = DUP_NOMEM;
        for (size_t j = 0; rc == DUP_OK && j < els.n_dels; j++)
            if (set_add_del(&s, els.dels[j]))
                rc = DUP_NOMEM;
        set_free(&then);
        set_free(&els);
    }
    for (size_t i = 0; i < n && rc == DUP_OK; i++) {
        if (reqs[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT)
            continue;
        const Etcdserverpb__PutRequest *p = reqs[i]->request_put;
        bytes_ref k = {p->key.data, p->key.len};
        if (set_has_put(&s, k) || set_del_covers(&s, k))
            rc = DUP_FOUND;
        else if (set_add_put(&s, k))
            rc = DUP_NOMEM;
    }
    if (rc != DUP_OK) {
        set_free(&s);
        return rc;
    }
    *out = s;
    return DUP_OK;
nomem:
    set_free(&s);
    return DUP_NOMEM;
}

static int check_dups(Etcdserverpb__RequestOp **reqs, size_t n, mvcc_result *res)
{
    keyset s = {0};
    int rc = check_intervals(reqs, n, &s);
    set_free(&s);
    if (rc == DUP_FOUND)
        return fail(res, MVCC_STATUS_INVALID_ARGUMENT, ERR_DUPLICATE_KEY);
    if (rc == DUP_NOMEM)
        return fail(res, MVCC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
    return 0;
}

int mvcc_validate_txn(const Etcdserverpb__TxnRequest *req, const mvcc_limits *l,
                      mvcc_result *res)
{
    long max_ops = l && l->max_txn_ops ? (long)l->max_txn_ops : 128;
    if (check_txn(req, max_ops, res))
        return -1;
    if (check_dups(req->success, req->n_success, res))
        return -1;
    return check_dups(req->failure, req->n_failure, res);
}

/* etcd serves a txn without raft when both branches hold only ranges; a
 * nested txn counts as a write even if it only reads. */
int mvcc_txn_is_read_only(const Etcdserverpb__TxnRequest *req)
{
    for (size_t i = 0; i < req->n_success; i++)
        if (req->success[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE)
            return 0;
    for (size_t i = 0; i < req->n_failure; i++)
        if (req->failure[i]->request_case != ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE)
            return 0;
    return 1;
}
