/*
 * entry_codec — the byte layout of one Ballast raft log entry.
 *
 * An entry is a frame: 8 bytes of header (the 4 bytes "BLS1" and the payload
 * length as a little-endian u32), the payload — a protobuf ballastpb.RaftMessage
 * holding one Op (`single`) or many (`batch`) — and zero padding to a multiple
 * of 8 bytes, because c-raft's on-disk log requires entry lengths that are
 * multiples of 8 (DEPENDENCY-NOTES.md) and protobuf-c would reject the padding
 * as trailing garbage.
 *
 * Encoding copies each client's request bytes as they arrived (an Op is a
 * oneof of etcd's own request messages, so no re-encoding is needed): the
 * only cost per op is one memcpy into the entry.
 */
#ifndef BALLAST_BATCHING_ENTRY_CODEC_H
#define BALLAST_BATCHING_ENTRY_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "raft_message.pb-c.h"

/* The kind of an operation: the field number of its variant in ballastpb.Op. */
typedef enum {
    BATCH_OP_PUT = 1,
    BATCH_OP_DELETE_RANGE = 2,
    BATCH_OP_TXN = 3,
    BATCH_OP_COMPACTION = 4,
    BATCH_OP_LEASE_GRANT = 5,
    BATCH_OP_LEASE_REVOKE = 6,
    BATCH_OP_ALARM = 7,
    BATCH_OP_MEMBER = 8,
} batch_op_type;

/* One encoded client request. `data` is borrowed: it must stay valid until the
 * entry that holds it has been encoded. */
typedef struct batch_op {
    uint32_t type;
    const uint8_t *data;
    size_t len;
} batch_op;

#define ENTRY_HEADER_SIZE 8

/* Size of the frame that entry_encode() writes for these ops. */
size_t entry_encoded_size(const batch_op *ops, size_t n);

/* Writes the frame for ops[0..n-1] into out (exactly `size` bytes, the value
 * of entry_encoded_size). One op is encoded as `single`, several as `batch`. */
void entry_encode(const batch_op *ops, size_t n, uint8_t *out, size_t size);

/* A bump allocator that decoded entries live in; reset per entry so decoding
 * a batch costs no malloc per field once it has grown to its working size. */
typedef struct entry_arena {
    uint8_t *chunk;
    size_t used;
    size_t cap;
    struct entry_arena_block *old; /* blocks outgrown, freed at reset */
} entry_arena;

void entry_arena_init(entry_arena *a);
void entry_arena_reset(entry_arena *a);
void entry_arena_free(entry_arena *a);

/* A decoded entry. `ops` points to n_ops Op messages; all memory belongs to
 * the arena and is valid until its next reset. */
typedef struct entry_decoded {
    Ballastpb__Op *const *ops;
    size_t n_ops;
} entry_decoded;

/* Decodes a frame. Returns 0 on success; -1 when the bytes are not a valid
 * Ballast entry (bad magic, bad length, protobuf that does not parse, an empty
 * batch, an Op with no variant or a field numbered 0). Such an entry must stop apply: it is never
 * skipped. */
int entry_decode(const uint8_t *buf, size_t len, entry_arena *arena, entry_decoded *out);

/* True when msg or a message inside it holds a field numbered 0, which
 * etcd's decoder refuses ("illegal tag 0") and protobuf-c accepts only when
 * the tag is written in two bytes. Used for raft entries here and for
 * requests by the server. */
int pb_has_field_zero(const ProtobufCMessage *msg);

#endif
