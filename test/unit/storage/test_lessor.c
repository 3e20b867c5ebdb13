/* The lessor with a fake clock: expiry order from the heap, retry of a lease
 * whose revoke did not happen, renew, leases surviving a promotion with a
 * full TTL plus the election timeout, demotion, LeaseLeases order, and many
 * leases granted and revoked in random order. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lessor.h"

#define SEC 1000000000LL
#define MS 1000000LL

typedef struct fake {
    int64_t now;
    int64_t expired[20000];
    size_t n;
} fake;

static int64_t fake_now(void *arg)
{
    return ((fake *)arg)->now;
}

static void on_expired(void *arg, int64_t id)
{
    fake *f = arg;
    CHECK(f->n < sizeof f->expired / sizeof f->expired[0]);
    f->expired[f->n++] = id;
}

static lessor *new_lessor(fake *f)
{
    memset(f, 0, sizeof *f);
    f->now = 1000 * SEC;
    lessor_config c = {.now_ns = fake_now, .clock_arg = f, .expired = on_expired,
                       .expired_arg = f, .promote_extend_ms = 1000, .retry_ms = 3000};
    lessor *l = lessor_new(&c);
    CHECK(l != NULL);
    return l;
}

static void test_expiry_order_and_retry(void)
{
    fake f;
    lessor *l = new_lessor(&f);
    lessor_promote(l);
    CHECK(lessor_is_primary(l));
    lessor_store_changed(l, 30, 30);
    lessor_store_changed(l, 10, 10);
    lessor_store_changed(l, 20, 20);
    lessor_store_changed(l, 11, 10); /* same TTL, granted later */
    f.now += 9 * SEC;
    CHECK_EQ_INT(lessor_expire(l, 100), 0);
    f.now += 1 * SEC;
    CHECK_EQ_INT(lessor_expire(l, 100), 2);
    CHECK_EQ_INT(f.expired[0], 10);
    CHECK_EQ_INT(f.expired[1], 11);
    /* 10 is revoked through raft; 11's revoke got lost: offered again 3 s on */
    lessor_store_changed(l, 10, 0);
    f.now += 2999 * MS;
    CHECK_EQ_INT(lessor_expire(l, 100), 0);
    f.now += 1 * MS;
    CHECK_EQ_INT(lessor_expire(l, 100), 1);
    CHECK_EQ_INT(f.expired[2], 11);
    /* an expired lease still waiting for its revoke: lookup says so, renew
     * says not found (etcd answers a keep-alive with TTL 0) */
    int64_t ttl, rem;
    CHECK_EQ_INT(lessor_lookup(l, 11, &ttl, &rem), LESSOR_OK);
    CHECK(rem < 0);
    CHECK_EQ_INT(lessor_renew(l, 11, &ttl), LESSOR_NOT_FOUND);
    lessor_store_changed(l, 11, 0);
    f.now += 20 * SEC;
    CHECK_EQ_INT(lessor_expire(l, 100), 2);
    CHECK_EQ_INT(f.expired[3], 20);
    CHECK_EQ_INT(f.expired[4], 30);
    /* the limit is honoured; the rest come next time */
    lessor_store_changed(l, 20, 0);
    lessor_store_changed(l, 30, 0);
    for (int64_t id = 100; id < 110; id++)
        lessor_store_changed(l, id, 5);
    f.now += 5 * SEC;
    CHECK_EQ_INT(lessor_expire(l, 4), 4);
    CHECK_EQ_INT(lessor_expire(l, 100), 6);
    CHECK_EQ_INT(lessor_lookup(l, 999, &ttl, &rem), LESSOR_NOT_FOUND);
    lessor_free(l);
}

static void test_renew(void)
{
    fake f;
    lessor *l = new_lessor(&f);
    lessor_promote(l);
    lessor_store_changed(l, 1, 10);
    f.now += 8 * SEC;
    int64_t ttl = 0, rem;
    CHECK_EQ_INT(lessor_renew(l, 1, &ttl), LESSOR_OK);
    CHECK_EQ_INT(ttl, 10);
    CHECK_EQ_INT(lessor_lookup(l, 1, &ttl, &rem), LESSOR_OK);
    CHECK_EQ_INT(rem, 10 * SEC);
    f.now += 9 * SEC;
    CHECK_EQ_INT(lessor_expire(l, 100), 0);
    f.now += 1 * SEC;
    CHECK_EQ_INT(lessor_expire(l, 100), 1);
    CHECK_EQ_INT(lessor_renew(l, 2, &ttl), LESSOR_NOT_FOUND);
    lessor_free(l);
}

static void test_follower_and_promotion(void)
{
    fake f;
    lessor *l = new_lessor(&f);
    /* loaded from the store at start, before any leadership */
    lessor_store_changed(l, 1, 5);
    lessor_store_changed(l, 2, 60);
    int64_t ttl, rem;
    CHECK_EQ_INT(lessor_lookup(l, 1, &ttl, &rem), LESSOR_OK);
    CHECK_EQ_INT(ttl, 5);
    CHECK_EQ_INT(rem, INT64_MAX);
    CHECK_EQ_INT(lessor_renew(l, 1, &ttl), LESSOR_NOT_PRIMARY);
    f.now += 3600 * SEC;
    CHECK_EQ_INT(lessor_expire(l, 100), 0); /* a follower never expires */

    /* promotion: every lease gets now + TTL + the election timeout */
    lessor_promote(l);
    CHECK_EQ_INT(lessor_lookup(l, 1, &ttl, &rem), LESSOR_OK);
    CHECK_EQ_INT(rem, 6 * SEC);
    CHECK_EQ_INT(lessor_lookup(l, 2, &ttl, &rem), LESSOR_OK);
    CHECK_EQ_INT(rem, 61 * SEC);
    f.now += 6 * SEC - 1;
    CHECK_EQ_INT(lessor_expire(l, 100), 0);
    f.now += 1;
    CHECK_EQ_INT(lessor_expire(l, 100), 1);
    CHECK_EQ_INT(f.expired[0], 1);

    /* demotion stops expiry; a new promotion renews again */
    lessor_demote(l);
    CHECK(!lessor_is_primary(l));
    f.now += 120 * SEC;
    CHECK_EQ_INT(lessor_expire(l, 100), 0);
    CHECK_EQ_INT(lessor_lookup(l, 2, &ttl, &rem), LESSOR_OK);
    CHECK_EQ_INT(rem, INT64_MAX);
    lessor_promote(l);
    CHECK_EQ_INT(lessor_lookup(l, 2, &ttl, &rem), LESSOR_OK);
    CHECK_EQ_INT(rem, 61 * SEC);
    /* a lease granted while primary expires TTL after it is applied */
    lessor_store_changed(l, 3, 7);
    CHECK_EQ_INT(lessor_lookup(l, 3, &ttl, &rem), LESSOR_OK);
    CHECK_EQ_INT(rem, 7 * SEC);
    lessor_free(l);
}

static void test_leases_order(void)
{
    fake f;
    lessor *l = new_lessor(&f);
    int64_t *ids;
    size_t n;
    CHECK(lessor_leases(l, &ids, &n) == 0);
    CHECK(ids == NULL && n == 0);
    lessor_promote(l);
    lessor_store_changed(l, 5, 50);
    lessor_store_changed(l, 6, 10);
    lessor_store_changed(l, 7, 30);
    lessor_store_changed(l, 4, 10); /* ties keep grant order */
    CHECK(lessor_leases(l, &ids, &n) == 0);
    CHECK_EQ_INT(n, 4);
    CHECK_EQ_INT(ids[0], 6);
    CHECK_EQ_INT(ids[1], 4);
    CHECK_EQ_INT(ids[2], 7);
    CHECK_EQ_INT(ids[3], 5);
    free(ids);
    /* renewing 6 puts it after 4 */
    f.now += 8 * SEC;
    int64_t ttl;
    CHECK_EQ_INT(lessor_renew(l, 6, &ttl), LESSOR_OK);
    CHECK(lessor_leases(l, &ids, &n) == 0);
    CHECK_EQ_INT(ids[0], 4);
    CHECK_EQ_INT(ids[1], 6);
    CHECK_EQ_INT(ids[2], 7);
    CHECK_EQ_INT(ids[3], 5);
    free(ids);
    lessor_free(l);
}

/* Many leases, revoked at random: the heap offers what is left in expiry
 * order, and the table finds every survivor. */
static void test_many(void)
{
    fake f;
    lessor *l = new_lessor(&f);
    lessor_promote(l);
    enum { N = 10000 };
    static int64_t ttl_of[N + 1];
    static char revoked[N + 1];
    srand(7);
    for (int64_t id = 1; id <= N; id++) {
        ttl_of[id] = 1 + rand() % 1000;
        lessor_store_changed(l, id * 7919, ttl_of[id]);
    }
    for (int i = 0; i < N / 2; i++) {
        int64_t id = 1 + rand() % N;
        if (!revoked[id]) {
            revoked[id] = 1;
            lessor_store_changed(l, id * 7919, 0);
        }
    }
    size_t live = 0;
    for (int64_t id = 1; id <= N; id++) {
        int64_t ttl, rem;
        int rc = lessor_lookup(l, id * 7919, &ttl, &rem);
        CHECK_EQ_INT(rc, revoked[id] ? LESSOR_NOT_FOUND : LESSOR_OK);
        if (!revoked[id]) {
            CHECK_EQ_INT(ttl, ttl_of[id]);
            live++;
        }
    }
    f.now += 1001 * SEC;
    CHECK_EQ_INT(lessor_expire(l, N), live);
    for (size_t i = 1; i < f.n; i++)
        CHECK(ttl_of[f.expired[i - 1] / 7919] <= ttl_of[f.expired[i] / 7919]);
    lessor_free(l);
}

/* With 1000 leases or more, a promotion spreads expiries that would fall in
 * one second so that no second holds more than 750 (etcd 3.4's rule). */
static void test_promotion_spreads_expiries(void)
{
    fake f;
    lessor *l = new_lessor(&f);
    enum { N = 2000 };
    for (int64_t id = 1; id <= N; id++)
        lessor_store_changed(l, id, 30);
    lessor_promote(l);
    int64_t per_second[16] = {0}, latest = 0;
    for (int64_t id = 1; id <= N; id++) {
        int64_t ttl, remaining;
        CHECK_EQ_INT(lessor_lookup(l, id, &ttl, &remaining), LESSOR_OK);
        CHECK(remaining >= 31 * SEC); /* never earlier than TTL + extend */
        int64_t s = remaining / SEC - 31;
        CHECK(s >= 0 && s < 16);
        per_second[s]++;
        if (remaining > latest)
            latest = remaining;
    }
    for (int i = 0; i < 16; i++)
        CHECK(per_second[i] <= 750);
    /* 2000 leases at 750 a second need under three seconds. */
    CHECK(latest < 34 * SEC);
    CHECK(latest > 33 * SEC);
    lessor_free(l);

    /* Under 1000 leases nothing moves. */
    l = new_lessor(&f);
    for (int64_t id = 1; id < 1000; id++)
        lessor_store_changed(l, id, 30);
    lessor_promote(l);
    for (int64_t id = 1; id < 1000; id++) {
        int64_t ttl, remaining;
        CHECK_EQ_INT(lessor_lookup(l, id, &ttl, &remaining), LESSOR_OK);
        CHECK_EQ_INT(remaining, 31 * SEC);
    }
    lessor_free(l);
}

int main(void)
{
    test_expiry_order_and_retry();
    test_renew();
    test_follower_and_promotion();
    test_leases_order();
    test_many();
    test_promotion_spreads_expiries();
    printf("test_lessor: ok\n");
    return 0;
}
