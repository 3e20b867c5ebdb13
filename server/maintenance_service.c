/*
 * The Maintenance service (etcd 3.4's v3rpc maintenance server): Status,
 * Hash, HashKV, Alarm, Defragment and the Snapshot stream; and etcd's
 * backend quota, which the KV and Lease services ask before proposing a
 * write (etcd's quotaKVServer / quotaLeaseServer).
 *
 * Defragment and Snapshot run on threads of their own (one per call): a
 * RocksDB manual compaction or a large dump must not hold a completion
 * queue thread, and neither touches the raft thread. Shutdown cancels
 * both and waits for the threads.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "ballast.h"

const char BALLAST_ERR_NO_SPACE[] = "etcdserver: mvcc: database space exceeded";
static const char ERR_NOMEM[] = "etcdserver: out of memory";
static const char ERR_STOPPED[] = "etcdserver: server stopped";
static const char ERR_COMPACTED[] = "etcdserver: mvcc: required revision has been compacted";
static const char ERR_FUTURE_REV[] = "etcdserver: mvcc: required revision is a future revision";

#define DEFAULT_QUOTA_BYTES (2LL * 1024 * 1024 * 1024) /* etcd 3.4's default */
#define SIZE_REFRESH_MS 100     /* the db size the quota uses is this fresh */
#define ALARM_RETRY_MS 1000     /* a NOSPACE proposal per member at most this often */
#define SNAPSHOT_BLOB 32768     /* etcd's snapshotSendBufferSize */
#define SNAPSHOT_BACKLOG (256u << 10)
#define SNAPSHOT_ALIGN 512      /* etcdctl wants len % 512 == 32 (the SHA-256) */

struct maintenance {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned threads; /* defragment and snapshot threads running */
    int stopping;
    int64_t quota;    /* bytes; <= 0: no quota */
    /* the db size the quota reads, refreshed at most every SIZE_REFRESH_MS */
    int64_t size;
    uint64_t size_at_ms;
    uint64_t alarm_at_ms;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int maintenance_service_init(ballast_server *b, char **errmsg)
{
    struct maintenance *mt = calloc(1, sizeof *mt);
    if (!mt) {
        *errmsg = strdup("out of memory");
        return -1;
    }
    pthread_mutex_init(&mt->mu, NULL);
    pthread_cond_init(&mt->cv, NULL);
    int64_t q = b->cfg->quota_backend_bytes;
    mt->quota = q == 0 ? DEFAULT_QUOTA_BYTES : q; /* negative: off, as in etcd */
    b->maint = mt;
    return 0;
}

void maintenance_service_stop(ballast_server *b)
{
    struct maintenance *mt = b->maint;
    if (!mt)
        return;
    pthread_mutex_lock(&mt->mu);
    mt->stopping = 1;
    pthread_mutex_unlock(&mt->mu);
    mvcc_defragment_cancel(b->store);
    pthread_mutex_lock(&mt->mu);
    while (mt->threads > 0)
        pthread_cond_wait(&mt->cv, &mt->mu);
    pthread_mutex_unlock(&mt->mu);
}

void maintenance_service_free(ballast_server *b)
{
    struct maintenance *mt = b->maint;
    if (!mt)
        return;
    pthread_cond_destroy(&mt->cv);
    pthread_mutex_destroy(&mt->mu);
    free(mt);
    b->maint = NULL;
}

/* A thread of this service starts (0) or may not (-1: stopping). */
static int thread_enter(struct maintenance *mt)
{
    pthread_mutex_lock(&mt->mu);
    int ok = !mt->stopping;
    if (ok)
        mt->threads++;
    pthread_mutex_unlock(&mt->mu);
    return ok ? 0 : -1;
}

static void thread_leave(struct maintenance *mt)
{
    pthread_mutex_lock(&mt->mu);
    mt->threads--;
    pthread_cond_broadcast(&mt->cv);
    pthread_mutex_unlock(&mt->mu);
}

static int start_detached(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &a, fn, arg);
    pthread_attr_destroy(&a);
    return rc;
}

/* ---- quota ---- */

static int member_alarm_active(ballast_server *b, uint64_t member, int type)
{
    mvcc_alarm *a;
    size_t n;
    if (mvcc_alarm_list(b->store, type, &a, &n) != 0)
        return 0;
    int found = 0;
    for (size_t i = 0; i < n && !found; i++)
        found = a[i].member_id == member;
    free(a);
    return found;
}

int ballast_quota_check(ballast_server *b, uint64_t cost)
{
    struct maintenance *mt = b->maint;
    if (cost == 0 || mt->quota <= 0)
        return 0;
    uint64_t now = now_ms();
    pthread_mutex_lock(&mt->mu);
    int refresh = now - mt->size_at_ms >= SIZE_REFRESH_MS || mt->size_at_ms == 0;
    int64_t size = mt->size;
    pthread_mutex_unlock(&mt->mu);
    if (refresh) {
        int64_t in_use;
        mvcc_db_size(b->store, &size, &in_use);
        pthread_mutex_lock(&mt->mu);
        mt->size = size;
        mt->size_at_ms = now;
        pthread_mutex_unlock(&mt->mu);
    }
    if (size + (int64_t)cost < mt->quota)
        return 0;
    /* etcd raises this member's NOSPACE alarm through raft and refuses */
    pthread_mutex_lock(&mt->mu);
    int propose = mt->alarm_at_ms == 0 || now - mt->alarm_at_ms >= ALARM_RETRY_MS;
    if (propose)
        mt->alarm_at_ms = now;
    pthread_mutex_unlock(&mt->mu);
    if (propose && !member_alarm_active(b, b->member_id, MVCC_ALARM_NOSPACE)) {
        Etcdserverpb__AlarmRequest r = ETCDSERVERPB__ALARM_REQUEST__INIT;
        r.action = ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__ACTIVATE;
        r.memberid = b->member_id;
        r.alarm = ETCDSERVERPB__ALARM_TYPE__NOSPACE;
        ballast_propose_msg(b, NULL, BATCH_OP_ALARM, &r.base, NULL, NULL);
    }
    return -1;
}

/* ---- Status ---- */

/* An AlarmMember as Go's compact text format prints it (etcd puts that in
 * Status.errors): each set field as "name:value " — the trailing space
 * included. */
static void alarm_text(const mvcc_alarm *a, char *out, size_t cap)
{
    static const char *const names[] = {"NONE", "NOSPACE", "CORRUPT"};
    size_t len = 0;
    out[0] = 0;
    if (a->member_id)
        len += (size_t)snprintf(out + len, cap - len, "memberID:%llu ", (unsigned long long)a->member_id);
    if (a->alarm && len < cap) {
        if (a->alarm > 0 && a->alarm < 3)
            snprintf(out + len, cap - len, "alarm:%s ", names[a->alarm]);
        else
            snprintf(out + len, cap - len, "alarm:%d ", a->alarm);
    }
}

static void maintenance_status(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    Etcdserverpb__StatusRequest *r = ballast_unpack(call, &etcdserverpb__status_request__descriptor, data, len);
    if (!r)
        return;
    protobuf_c_message_free_unpacked(&r->base, NULL);

    raft_node_status st;
    raft_node_get_status(b->node, &st);
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    ballast_fill_header(b, &h);
    Etcdserverpb__StatusResponse resp = ETCDSERVERPB__STATUS_RESPONSE__INIT;
    resp.header = &h;
    resp.version = (char *)BALLAST_ETCD_VERSION;
    mvcc_db_size(b->store, &resp.dbsize, &resp.dbsizeinuse);
    resp.leader = st.leader_id;
    resp.raftindex = st.commit_index;
    resp.raftterm = st.term;
    resp.raftappliedindex = st.applied_index;
    mvcc_alarm *alarms = NULL;
    size_t n_alarms = 0;
    if (mvcc_alarm_list(b->store, MVCC_ALARM_NONE, &alarms, &n_alarms) != 0) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, ERR_NOMEM);
        return;
    }
    char **errors = calloc(n_alarms + 1, sizeof *errors);
    char (*texts)[64] = calloc(n_alarms + 1, sizeof *texts);
    if (!errors || !texts) {
        free(errors);
        free(texts);
        free(alarms);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, ERR_NOMEM);
        return;
    }
    if (st.leader_id == 0)
        errors[resp.n_errors++] = (char *)"etcdserver: no leader";
    for (size_t i = 0; i < n_alarms; i++) {
        alarm_text(&alarms[i], texts[i], sizeof texts[i]);
        errors[resp.n_errors++] = texts[i];
    }
    resp.errors = errors;
    resp.islearner = st.is_learner;
    ballast_reply_packed(call, &resp.base);
    free(errors);
    free(texts);
    free(alarms);
}

/* ---- Hash, HashKV ---- */

static void maintenance_hash(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    Etcdserverpb__HashRequest *r = ballast_unpack(call, &etcdserverpb__hash_request__descriptor, data, len);
    if (!r)
        return;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    uint32_t hash;
    int64_t rev;
    if (mvcc_hash(b->store, &hash, &rev) != 0) {
        rpc_fail(call, GRPC_STATUS_INTERNAL, "etcdserver: storage read failed");
        return;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    ballast_fill_header(b, &h);
    h.revision = rev;
    Etcdserverpb__HashResponse resp = ETCDSERVERPB__HASH_RESPONSE__INIT;
    resp.header = &h;
    resp.hash = hash;
    ballast_reply_packed(call, &resp.base);
}

static void maintenance_hash_kv(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    Etcdserverpb__HashKVRequest *r = ballast_unpack(call, &etcdserverpb__hash_kvrequest__descriptor, data, len);
    if (!r)
        return;
    int64_t want = r->revision;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    uint32_t hash = 0;
    int64_t compact = 0, rev = 0;
    switch (mvcc_hash_kv(b->store, want, &hash, &compact, &rev)) {
    case MVCC_HASH_OK:
        break;
    case MVCC_HASH_COMPACTED:
        rpc_fail(call, GRPC_STATUS_OUT_OF_RANGE, ERR_COMPACTED);
        return;
    case MVCC_HASH_FUTURE:
        rpc_fail(call, GRPC_STATUS_OUT_OF_RANGE, ERR_FUTURE_REV);
        return;
    default:
        rpc_fail(call, GRPC_STATUS_INTERNAL, "etcdserver: storage read failed");
        return;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    ballast_fill_header(b, &h);
    h.revision = rev;
    Etcdserverpb__HashKVResponse resp = ETCDSERVERPB__HASH_KVRESPONSE__INIT;
    resp.header = &h;
    resp.hash = hash;
    resp.compact_revision = compact;
    ballast_reply_packed(call, &resp.base);
}

/* ---- Alarm ---- */

/* GET answers from this member's store; ACTIVATE and DEACTIVATE are raft
 * proposals applied by every member (etcd proposes all three). etcd's
 * AlarmResponse carries no header. */
static void maintenance_alarm(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    Etcdserverpb__AlarmRequest *r = ballast_unpack(call, &etcdserverpb__alarm_request__descriptor, data, len);
    if (!r)
        return;
    if (r->action != ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__GET) {
        protobuf_c_message_free_unpacked(&r->base, NULL);
        if (ballast_route(b, call, "/etcdserverpb.Maintenance/Alarm", maintenance_alarm, data, len))
            return;
        r = ballast_unpack(call, &etcdserverpb__alarm_request__descriptor, data, len);
        if (!r)
            return;
        ballast_propose_msg(b, call, BATCH_OP_ALARM, &r->base, NULL, NULL);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return;
    }
    int type = (int)r->alarm;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    mvcc_alarm *a;
    size_t n;
    Etcdserverpb__AlarmMember *members = NULL;
    Etcdserverpb__AlarmMember **ptrs = NULL;
    if (mvcc_alarm_list(b->store, type, &a, &n) != 0 ||
        (n && (!(members = calloc(n, sizeof *members)) || !(ptrs = calloc(n, sizeof *ptrs))))) {
        free(members);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, ERR_NOMEM);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        members[i] = (Etcdserverpb__AlarmMember)ETCDSERVERPB__ALARM_MEMBER__INIT;
        members[i].memberid = a[i].member_id;
        members[i].alarm = (Etcdserverpb__AlarmType)a[i].alarm;
        ptrs[i] = &members[i];
    }
    Etcdserverpb__AlarmResponse resp = ETCDSERVERPB__ALARM_RESPONSE__INIT;
    resp.alarms = ptrs;
    resp.n_alarms = n;
    ballast_reply_packed(call, &resp.base);
    free(ptrs);
    free(members);
    free(a);
}

/* ---- Defragment ---- */

typedef struct defrag_job {
    ballast_server *b;
    rpc_call *call;
} defrag_job;

static void *defrag_main(void *arg)
{
    defrag_job *j = arg;
    ballast_server *b = j->b;
    if (mvcc_defragment(b->store) == 0) {
        Etcdserverpb__DefragmentResponse resp = ETCDSERVERPB__DEFRAGMENT_RESPONSE__INIT;
        ballast_reply_packed(j->call, &resp.base);
    } else {
        pthread_mutex_lock(&b->maint->mu);
        int stopping = b->maint->stopping;
        pthread_mutex_unlock(&b->maint->mu);
        rpc_fail(j->call, stopping ? GRPC_STATUS_UNAVAILABLE : GRPC_STATUS_UNKNOWN,
                 stopping ? ERR_STOPPED : "etcdserver: defragment failed");
    }
    /* the db size the quota sees changes now, not SIZE_REFRESH_MS later */
    pthread_mutex_lock(&b->maint->mu);
    b->maint->size_at_ms = 0;
    pthread_mutex_unlock(&b->maint->mu);
    free(j);
    thread_leave(b->maint);
    return NULL;
}

static void maintenance_defragment(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    Etcdserverpb__DefragmentRequest *r = ballast_unpack(call, &etcdserverpb__defragment_request__descriptor, data, len);
    if (!r)
        return;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    defrag_job *j = malloc(sizeof *j);
    if (!j) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, ERR_NOMEM);
        return;
    }
    j->b = b;
    j->call = call;
    if (thread_enter(b->maint) != 0) {
        free(j);
        rpc_fail(call, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED);
        return;
    }
    if (start_detached(defrag_main, j) != 0) {
        free(j);
        thread_leave(b->maint);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: cannot start a thread");
    }
}

size_t maintenance_service_methods(ballast_server *b, rpc_method *out)
{
    out[0] = (rpc_method){"/etcdserverpb.Maintenance/Status", maintenance_status, b, 2};
    out[1] = (rpc_method){"/etcdserverpb.Maintenance/Hash", maintenance_hash, b, 1};
    out[2] = (rpc_method){"/etcdserverpb.Maintenance/HashKV", maintenance_hash_kv, b, 1};
    out[3] = (rpc_method){"/etcdserverpb.Maintenance/Alarm", maintenance_alarm, b, 2};
    out[4] = (rpc_method){"/etcdserverpb.Maintenance/Defragment", maintenance_defragment, b, 1};
    return 5;
}

/* ---- Snapshot: the store's dump, then what etcdctl checks ----
 *
 * Blobs of 32 KiB of mvcc_dump's stream; the last one is padded with zeros
 * to a multiple of 512 bytes; then one more message holds the SHA-256 of
 * everything sent (etcd sends a bbolt file, whose size is a multiple of
 * its page size, and etcdctl refuses a file whose length is not 32 past a
 * multiple of 512). remaining_bytes counts down from an estimate of the
 * dump's size (exact only at the end, where it is 0): the dump is streamed
 * from a RocksDB snapshot and its length is known only once read. */

typedef struct snap_send {
    ballast_server *b;
    rpc_stream *st;
    int refs;     /* the thread's and the stream's; under maint->mu */
    int done;     /* the call has ended */
} snap_send;

static void snap_unref(snap_send *s)
{
    struct maintenance *mt = s->b->maint;
    pthread_mutex_lock(&mt->mu);
    int last = --s->refs == 0;
    pthread_mutex_unlock(&mt->mu);
    if (last) {
        rpc_stream_release(s->st);
        free(s);
    }
}

static int snap_should_stop(snap_send *s)
{
    struct maintenance *mt = s->b->maint;
    pthread_mutex_lock(&mt->mu);
    int stop = s->done || mt->stopping;
    pthread_mutex_unlock(&mt->mu);
    return stop;
}

/* Sends one SnapshotResponse once the stream's backlog is small enough. */
static int snap_send_blob(snap_send *s, const uint8_t *blob, size_t len, uint64_t remaining,
                          mvcc_buf *msg)
{
    while (rpc_stream_backlog(s->st) > SNAPSHOT_BACKLOG) {
        if (snap_should_stop(s))
            return -1;
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
    Etcdserverpb__SnapshotResponse resp = ETCDSERVERPB__SNAPSHOT_RESPONSE__INIT;
    resp.remaining_bytes = remaining;
    resp.blob.data = (uint8_t *)blob;
    resp.blob.len = len;
    size_t n = protobuf_c_message_get_packed_size(&resp.base);
    if (n > msg->cap) {
        uint8_t *p = realloc(msg->data, n);
        if (!p)
            return -1;
        msg->data = p;
        msg->cap = n;
    }
    protobuf_c_message_pack(&resp.base, msg->data);
    return rpc_stream_send(s->st, msg->data, n);
}

static void *snap_main(void *arg)
{
    snap_send *s = arg;
    ballast_server *b = s->b;
    mvcc_buf cur = {0}, next = {0}, msg = {0};
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    const char *error = NULL;
    grpc_status_code code = GRPC_STATUS_INTERNAL;
    int64_t size = 0, in_use = 0;
    mvcc_db_size(b->store, &size, &in_use);
    uint64_t estimate = in_use > 0 ? (uint64_t)in_use : (uint64_t)size;
    uint64_t sent = 0;
    mvcc_dump *d = mvcc_dump_open(b->store);
    if (!d || !sha || EVP_DigestInit_ex(sha, EVP_sha256(), NULL) != 1) {
        error = "etcdserver: cannot read the store";
        goto out;
    }
    int rc = mvcc_dump_next(d, &cur, SNAPSHOT_BLOB);
    while (rc == 1) {
        if (snap_should_stop(s)) {
            code = GRPC_STATUS_UNAVAILABLE;
            error = ERR_STOPPED;
            goto out;
        }
        next.len = 0;
        rc = mvcc_dump_next(d, &next, SNAPSHOT_BLOB);
        if (rc < 0)
            break;
        uint64_t remaining;
        if (rc == 0) {
            /* the last blob: pad the whole stream to a multiple of 512 */
            size_t pad = (size_t)((SNAPSHOT_ALIGN - (sent + cur.len) % SNAPSHOT_ALIGN) % SNAPSHOT_ALIGN);
            static const uint8_t zeros[SNAPSHOT_ALIGN];
            if (pad && mvcc_buf_put(&cur, zeros, pad)) {
                error = ERR_NOMEM;
                goto out;
            }
            remaining = 0;
        } else {
            uint64_t after = sent + cur.len;
            remaining = estimate > after ? estimate - after : next.len;
        }
        if (EVP_DigestUpdate(sha, cur.data, cur.len) != 1 ||
            snap_send_blob(s, cur.data, cur.len, remaining, &msg) != 0) {
            code = GRPC_STATUS_UNAVAILABLE;
            error = ERR_STOPPED;
            goto out;
        }
        sent += cur.len;
        mvcc_buf t = cur;
        cur = next;
        next = t;
    }
    if (rc < 0) {
        error = "etcdserver: cannot read the store";
        goto out;
    }
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (EVP_DigestFinal_ex(sha, md, &mdlen) != 1 || snap_send_blob(s, md, mdlen, 0, &msg) != 0) {
        code = GRPC_STATUS_UNAVAILABLE;
        error = ERR_STOPPED;
    }
out:
    rpc_stream_finish(s->st, error ? code : GRPC_STATUS_OK, error);
    mvcc_dump_close(d);
    EVP_MD_CTX_free(sha);
    free(cur.data);
    free(next.data);
    free(msg.data);
    snap_unref(s);
    thread_leave(b->maint);
    return NULL;
}

static void snapshot_open(rpc_stream *st, void *arg)
{
    ballast_server *b = arg;
    snap_send *s = calloc(1, sizeof *s);
    if (!s) {
        rpc_stream_finish(st, GRPC_STATUS_RESOURCE_EXHAUSTED, ERR_NOMEM);
        return;
    }
    s->b = b;
    s->st = st;
    s->refs = 2;
    rpc_stream_set_data(st, s);
    if (thread_enter(b->maint) != 0) {
        s->refs = 1;
        rpc_stream_finish(st, GRPC_STATUS_UNAVAILABLE, ERR_STOPPED);
        return;
    }
    if (start_detached(snap_main, s) != 0) {
        s->refs = 1;
        thread_leave(b->maint);
        rpc_stream_finish(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "etcdserver: cannot start a thread");
    }
}

static void snapshot_message(rpc_stream *st, const uint8_t *msg, size_t len, void *arg)
{
    (void)st;
    (void)msg;
    (void)len;
    (void)arg; /* the SnapshotRequest is empty */
}

static void snapshot_recv_end(rpc_stream *st, void *arg)
{
    (void)st;
    (void)arg; /* a server stream: the client has sent its request */
}

static void snapshot_done(rpc_stream *st, int cancelled, void *arg)
{
    (void)cancelled;
    ballast_server *b = arg;
    snap_send *s = rpc_stream_data(st);
    if (!s) {
        rpc_stream_release(st);
        return;
    }
    pthread_mutex_lock(&b->maint->mu);
    s->done = 1;
    pthread_mutex_unlock(&b->maint->mu);
    snap_unref(s);
}

static const rpc_stream_handler snapshot_handler = {snapshot_open, snapshot_message,
                                                    snapshot_recv_end, snapshot_done};

size_t maintenance_service_streams(ballast_server *b, rpc_stream_method *out)
{
    out[0] = (rpc_stream_method){"/etcdserverpb.Maintenance/Snapshot", &snapshot_handler, b};
    return 1;
}
