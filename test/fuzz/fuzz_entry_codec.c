/* Fuzz target: the raft entry codec (batching/entry_codec). Arbitrary bytes
 * are decoded as an entry; what decodes is encoded again from its ops' own
 * bytes and decoded a second time, and both decodings must hold the same
 * ops. The frame must keep c-raft's 8-byte length rule. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "entry_codec.h"

#include "fuzz_check.h"

/* The variant message of an Op, with its field number (batch_op_type). */
static const ProtobufCMessage *op_variant(const Ballastpb__Op *op)
{
    switch (op->op_case) {
    case BALLASTPB__OP__OP_PUT: return &op->put->base;
    case BALLASTPB__OP__OP_DELETE_RANGE: return &op->delete_range->base;
    case BALLASTPB__OP__OP_TXN: return &op->txn->base;
    case BALLASTPB__OP__OP_COMPACTION: return &op->compaction->base;
    case BALLASTPB__OP__OP_LEASE_GRANT: return &op->lease_grant->base;
    case BALLASTPB__OP__OP_LEASE_REVOKE: return &op->lease_revoke->base;
    case BALLASTPB__OP__OP_ALARM: return &op->alarm->base;
    case BALLASTPB__OP__OP_MEMBER: return &op->member->base;
    default: return NULL;
    }
}

/* Packs every op of `d`; the buffers are malloc'd, ops[i].data owned by the caller. */
static batch_op *pack_ops(const entry_decoded *d)
{
    batch_op *ops = calloc(d->n_ops, sizeof *ops);
    FUZZ_CHECK(ops);
    for (size_t i = 0; i < d->n_ops; i++) {
        const ProtobufCMessage *m = op_variant(d->ops[i]);
        /* entry_decode promises an Op with no variant is refused. */
        FUZZ_CHECK(m != NULL);
        size_t len = protobuf_c_message_get_packed_size(m);
        uint8_t *buf = malloc(len ? len : 1);
        FUZZ_CHECK(buf);
        FUZZ_CHECK(protobuf_c_message_pack(m, buf) == len);
        ops[i] = (batch_op){(uint32_t)d->ops[i]->op_case, buf, len};
    }
    return ops;
}

static void free_ops(batch_op *ops, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free((void *)ops[i].data);
    free(ops);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    entry_arena a1, a2;
    entry_arena_init(&a1);
    entry_arena_init(&a2);
    entry_decoded d1;
    if (entry_decode(data, size, &a1, &d1) == 0) {
        FUZZ_CHECK(d1.n_ops > 0);
        batch_op *ops = pack_ops(&d1);
        size_t len = entry_encoded_size(ops, d1.n_ops);
        FUZZ_CHECK(len % 8 == 0 && len >= ENTRY_HEADER_SIZE);
        uint8_t *frame = malloc(len);
        FUZZ_CHECK(frame);
        entry_encode(ops, d1.n_ops, frame, len);
        entry_decoded d2;
        FUZZ_CHECK(entry_decode(frame, len, &a2, &d2) == 0);
        FUZZ_CHECK(d2.n_ops == d1.n_ops);
        batch_op *again = pack_ops(&d2);
        for (size_t i = 0; i < d1.n_ops; i++) {
            FUZZ_CHECK(again[i].type == ops[i].type);
            FUZZ_CHECK(again[i].len == ops[i].len);
            FUZZ_CHECK(memcmp(again[i].data, ops[i].data, ops[i].len) == 0);
        }
        /* A second decode into a reset arena must give the same ops too
         * (apply reuses one arena for every entry). */
        entry_arena_reset(&a1);
        entry_decoded d3;
        FUZZ_CHECK(entry_decode(frame, len, &a1, &d3) == 0 && d3.n_ops == d1.n_ops);
        free_ops(again, d2.n_ops);
        free_ops(ops, d1.n_ops);
        free(frame);
    }
    entry_arena_free(&a1);
    entry_arena_free(&a2);
    return 0;
}
