#include "entry_codec.h"

#include <stdlib.h>
#include <string.h>

static const uint8_t MAGIC[4] = {'B', 'L', 'S', '1'};

/* Field numbers of ballastpb.RaftMessage. */
enum { MSG_SINGLE = 1, MSG_BATCH = 2 };
/* Field number of ballastpb.Batch.ops. */
enum { BATCH_OPS = 1 };

static size_t varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Size of a length-delimited field with a one-byte tag. */
static size_t ld_size(size_t len)
{
    return 1 + varint_size(len) + len;
}

static size_t op_size(const batch_op *op)
{
    return ld_size(op->len);
}

static size_t payload_size(const batch_op *ops, size_t n)
{
    if (n == 1)
        return ld_size(op_size(&ops[0]));
    size_t batch = 0;
    for (size_t i = 0; i < n; i++)
        batch += ld_size(op_size(&ops[i]));
    return ld_size(batch);
}

size_t entry_encoded_size(const batch_op *ops, size_t n)
{
    size_t p = payload_size(ops, n);
    return ENTRY_HEADER_SIZE + ((p + 7) & ~(size_t)7);
}

static uint8_t *put_ld_header(uint8_t *p, uint32_t field, size_t len)
{
    *p++ = (uint8_t)((field << 3) | 2);
    return put_varint(p, len);
}

static uint8_t *put_op(uint8_t *p, const batch_op *op)
{
    p = put_ld_header(p, op->type, op->len);
    memcpy(p, op->data, op->len);
    return p + op->len;
}

void entry_encode(const batch_op *ops, size_t n, uint8_t *out, size_t size)
{
    size_t plen = payload_size(ops, n);
    memcpy(out, MAGIC, 4);
    out[4] = (uint8_t)plen;
    out[5] = (uint8_t)(plen >> 8);
    out[6] = (uint8_t)(plen >> 16);
    out[7] = (uint8_t)(plen >> 24);
    uint8_t *p = out + ENTRY_HEADER_SIZE;
    if (n == 1) {
        p = put_ld_header(p, MSG_SINGLE, op_size(&ops[0]));
        p = put_op(p, &ops[0]);
    } else {
        size_t batch = 0;
        for (size_t i = 0; i < n; i++)
            batch += ld_size(op_size(&ops[i]));
        p = put_ld_header(p, MSG_BATCH, batch);
        for (size_t i = 0; i < n; i++) {
            p = put_ld_header(p, BATCH_OPS, op_size(&ops[i]));
            p = put_op(p, &ops[i]);
        }
    }
    memset(p, 0, (size_t)(out + size - p));
}

/* ---- arena ---- */

struct entry_arena_block {
    struct entry_arena_block *next;
};

#define ARENA_MIN_CHUNK (64 * 1024)

void entry_arena_init(entry_arena *a)
{
    memset(a, 0, sizeof *a);
}

static void free_old(entry_arena *a)
{
    while (a->old) {
        struct entry_arena_block *b = a->old;
        a->old = b->next;
        free(b);
    }
}

void entry_arena_reset(entry_arena *a)
{
    free_old(a);
    /* The first 16 bytes of a chunk hold its block header once outgrown. */
    a->used = a->chunk ? 16 : 0;
}

void entry_arena_free(entry_arena *a)
{
    free_old(a);
    free(a->chunk);
    memset(a, 0, sizeof *a);
}

static void *arena_alloc(void *data, size_t size)
{
    entry_arena *a = data;
    size = (size + 15) & ~(size_t)15;
    if (a->used + size > a->cap) {
        /* Keep the outgrown chunk alive until reset: earlier allocations in
         * this entry still point into it. */
        size_t cap = a->cap ? a->cap * 2 : ARENA_MIN_CHUNK;
        while (cap < size)
            cap *= 2;
        uint8_t *chunk = malloc(cap + 16);
        if (!chunk)
            return NULL;
        if (a->chunk) {
            if (a->used > 16) {
                struct entry_arena_block *b = (struct entry_arena_block *)a->chunk;
                b->next = a->old;
                a->old = b;
            } else {
                free(a->chunk);
            }
        }
        a->chunk = chunk;
        a->cap = cap + 16;
        /* The block header lives in the first 16 bytes of every chunk. */
        a->used = 16;
    }
    void *p = a->chunk + a->used;
    a->used += size;
    return p;
}

static void arena_free(void *data, void *ptr)
{
    (void)data;
    (void)ptr;
}

int pb_has_field_zero(const ProtobufCMessage *msg)
{
    for (unsigned i = 0; i < msg->n_unknown_fields; i++)
        if (msg->unknown_fields[i].tag == 0)
            return 1;
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        const char *base = (const char *)msg;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *items = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t j = 0; j < n; j++)
                if (pb_has_field_zero(items[j]))
                    return 1;
            continue;
        }
        /* A oneof member's pointer is valid only when its case is set. */
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue;
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)(base + f->offset);
        if (sub && pb_has_field_zero(sub))
            return 1;
    }
    return 0;
}

int entry_decode(const uint8_t *buf, size_t len, entry_arena *arena, entry_decoded *out)
{
    if (len < ENTRY_HEADER_SIZE || memcmp(buf, MAGIC, 4) != 0)
        return -1;
    size_t plen = (size_t)buf[4] | (size_t)buf[5] << 8 | (size_t)buf[6] << 16 |
                  (size_t)buf[7] << 24;
    if (plen > len - ENTRY_HEADER_SIZE)
        return -1;
    ProtobufCAllocator alloc = {.alloc = arena_alloc, .free = arena_free, .allocator_data = arena};
    Ballastpb__RaftMessage *msg =
        ballastpb__raft_message__unpack(&alloc, plen, buf + ENTRY_HEADER_SIZE);
    /* protobuf-c reads a field 0 written with a two-byte tag but writes it
     * back with a one-byte tag that it then refuses: such an entry would
     * not survive re-encoding (requests with one are refused on arrival) */
    if (!msg || pb_has_field_zero(&msg->base))
        return -1;
    switch (msg->msg_case) {
    case BALLASTPB__RAFT_MESSAGE__MSG_SINGLE:
        out->ops = &msg->single;
        out->n_ops = 1;
        break;
    case BALLASTPB__RAFT_MESSAGE__MSG_BATCH:
        if (!msg->batch || msg->batch->n_ops == 0)
            return -1;
        out->ops = msg->batch->ops;
        out->n_ops = msg->batch->n_ops;
        break;
    default:
        return -1;
    }
    for (size_t i = 0; i < out->n_ops; i++)
        if (!out->ops[i] || out->ops[i]->op_case == BALLASTPB__OP__OP__NOT_SET)
            return -1;
    return 0;
}
