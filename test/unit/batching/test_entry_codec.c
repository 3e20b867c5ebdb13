/* The entry codec: hand-written framing must decode with protobuf-c to the
 * same ops, entries are multiples of 8 bytes, and damaged entries are refused. */
#include <string.h>

#include "check.h"
#include "entry_codec.h"

static size_t pack_put(const char *key, const char *value, uint8_t *out)
{
    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    put.key.data = (uint8_t *)key;
    put.key.len = strlen(key);
    put.value.data = (uint8_t *)value;
    put.value.len = strlen(value);
    put.prev_kv = 1;
    return etcdserverpb__put_request__pack(&put, out);
}

static void test_single_and_batch(size_t n)
{
    uint8_t reqs[300][64];
    batch_op ops[300];
    char key[32];
    for (size_t i = 0; i < n; i++) {
        snprintf(key, sizeof key, "key-%zu", i);
        ops[i].type = BATCH_OP_PUT;
        ops[i].data = reqs[i];
        ops[i].len = pack_put(key, i % 2 ? "" : "some value", reqs[i]);
    }
    size_t len = entry_encoded_size(ops, n);
    CHECK(len % 8 == 0);
    uint8_t *buf = malloc(len);
    memset(buf, 0xAA, len);
    entry_encode(ops, n, buf, len);

    entry_arena arena;
    entry_arena_init(&arena);
    entry_decoded d;
    CHECK_EQ_INT(entry_decode(buf, len, &arena, &d), 0);
    CHECK_EQ_INT(d.n_ops, n);
    for (size_t i = 0; i < n; i++) {
        snprintf(key, sizeof key, "key-%zu", i);
        CHECK_EQ_INT(d.ops[i]->op_case, BALLASTPB__OP__OP_PUT);
        CHECK_EQ_INT(d.ops[i]->put->key.len, strlen(key));
        CHECK(memcmp(d.ops[i]->put->key.data, key, strlen(key)) == 0);
        CHECK_EQ_INT(d.ops[i]->put->prev_kv, 1);
        CHECK_EQ_INT(d.ops[i]->put->value.len, i % 2 ? 0 : 10);
    }
    /* The same message built with protobuf-c has the same payload bytes. */
    if (n > 1) {
        Ballastpb__Op *pops[300];
        Ballastpb__Op opv[300];
        Etcdserverpb__PutRequest *puts[300];
        for (size_t i = 0; i < n; i++) {
            puts[i] = etcdserverpb__put_request__unpack(NULL, ops[i].len, ops[i].data);
            ballastpb__op__init(&opv[i]);
            opv[i].op_case = BALLASTPB__OP__OP_PUT;
            opv[i].put = puts[i];
            pops[i] = &opv[i];
        }
        Ballastpb__Batch batch = BALLASTPB__BATCH__INIT;
        batch.n_ops = n;
        batch.ops = pops;
        Ballastpb__RaftMessage msg = BALLASTPB__RAFT_MESSAGE__INIT;
        msg.msg_case = BALLASTPB__RAFT_MESSAGE__MSG_BATCH;
        msg.batch = &batch;
        size_t plen = ballastpb__raft_message__get_packed_size(&msg);
        uint8_t *p = malloc(plen);
        ballastpb__raft_message__pack(&msg, p);
        CHECK(ENTRY_HEADER_SIZE + plen <= len);
        CHECK(memcmp(p, buf + ENTRY_HEADER_SIZE, plen) == 0);
        for (size_t i = ENTRY_HEADER_SIZE + plen; i < len; i++)
            CHECK_EQ_INT(buf[i], 0);
        free(p);
        for (size_t i = 0; i < n; i++)
            etcdserverpb__put_request__free_unpacked(puts[i], NULL);
    }

    /* Damage: bad magic, truncated, a length beyond the buffer. */
    buf[0] ^= 1;
    CHECK_EQ_INT(entry_decode(buf, len, &arena, &d), -1);
    buf[0] ^= 1;
    entry_arena_reset(&arena);
    CHECK_EQ_INT(entry_decode(buf, 4, &arena, &d), -1);
    entry_arena_reset(&arena);
    buf[7] = 0x7f;
    CHECK_EQ_INT(entry_decode(buf, len, &arena, &d), -1);
    entry_arena_free(&arena);
    free(buf);
}

static void test_garbage_payload(void)
{
    uint8_t buf[16] = {'B', 'L', 'S', '1', 8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    entry_arena arena;
    entry_arena_init(&arena);
    entry_decoded d;
    CHECK_EQ_INT(entry_decode(buf, sizeof buf, &arena, &d), -1);
    /* A well-formed but empty RaftMessage has no op: refused, not skipped. */
    uint8_t empty[8] = {'B', 'L', 'S', '1', 0, 0, 0, 0};
    entry_arena_reset(&arena);
    CHECK_EQ_INT(entry_decode(empty, sizeof empty, &arena, &d), -1);
    entry_arena_free(&arena);
}

int main(void)
{
    test_single_and_batch(1);
    test_single_and_batch(2);
    test_single_and_batch(100);
    test_single_and_batch(300);
    test_garbage_payload();
    printf("entry codec: ok\n");
    return 0;
}
