/*
 * Byte-level helpers: growable buffers, the protobuf wire format for the few
 * messages mvcc answers with, and the key encodings of the column families.
 *
 * Responses are encoded by hand rather than through protobuf-c structs: the
 * KeyValues are stored already encoded, so a range result is mostly copied
 * straight from RocksDB into the response, with no per-row allocation.
 */
#include <stdlib.h>
#include <string.h>

#include "mvcc_internal.h"

int buf_reserve(mvcc_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra)
        cap *= 2;
    uint8_t *d = realloc(b->data, cap);
    if (!d)
        return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

void buf_trim(mvcc_buf *b, size_t max_cap)
{
    if (b->cap > max_cap) {
        free(b->data);
        *b = (mvcc_buf){0};
    }
}

int buf_put(mvcc_buf *b, const void *p, size_t n)
{
    if (buf_reserve(b, n))
        return -1;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int mvcc_buf_put(mvcc_buf *b, const void *p, size_t n)
{
    return buf_put(b, p, n);
}

static size_t varint_write(uint8_t *p, uint64_t v)
{
    size_t i = 0;
    while (v >= 0x80) {
        p[i++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[i++] = (uint8_t)v;
    return i;
}

int pb_varint(mvcc_buf *b, uint64_t v)
{
    if (buf_reserve(b, 10))
        return -1;
    b->len += varint_write(b->data + b->len, v);
    return 0;
}

int pb_tag(mvcc_buf *b, uint32_t field, uint32_t wire_type)
{
    return pb_varint(b, ((uint64_t)field << 3) | wire_type);
}

int pb_uint_field(mvcc_buf *b, uint32_t field, uint64_t v)
{
    if (v == 0)
        return 0;
    return pb_tag(b, field, 0) || pb_varint(b, v);
}

int pb_bool_field(mvcc_buf *b, uint32_t field, bool v)
{
    return v ? pb_uint_field(b, field, 1) : 0;
}

int pb_bytes_field(mvcc_buf *b, uint32_t field, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    return pb_tag(b, field, 2) || pb_varint(b, n) || buf_put(b, p, n);
}

/* The length is not known until the content is written: leave room for the
 * longest varint we allow, then close the gap. */
#define LEN_ROOM 5

size_t pb_msg_begin(mvcc_buf *b, uint32_t field)
{
    if (pb_tag(b, field, 2) || buf_reserve(b, LEN_ROOM))
        return (size_t)-1;
    size_t mark = b->len;
    b->len += LEN_ROOM;
    return mark;
}

int pb_msg_end(mvcc_buf *b, size_t mark)
{
    size_t content = b->len - mark - LEN_ROOM;
    if (content >= ((size_t)1 << 35))
        return -1;
    uint8_t tmp[10];
    size_t vl = varint_write(tmp, content);
    memcpy(b->data + mark, tmp, vl);
    if (vl != LEN_ROOM)
        memmove(b->data + mark + vl, b->data + mark + LEN_ROOM, content);
    b->len = mark + vl + content;
    return 0;
}

int pb_header(mvcc_buf *b, uint32_t field, const mvcc_header *h, int64_t rev)
{
    size_t mark = pb_msg_begin(b, field);
    if (mark == (size_t)-1)
        return -1;
    if (h && (pb_uint_field(b, 1, h->cluster_id) || pb_uint_field(b, 2, h->member_id)))
        return -1;
    if (pb_uint_field(b, 3, (uint64_t)rev))
        return -1;
    if (h && pb_uint_field(b, 4, h->raft_term))
        return -1;
    return pb_msg_end(b, mark);
}

static int varint_read(const uint8_t *p, size_t n, size_t *pos, uint64_t *v)
{
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*pos >= n)
            return -1;
        uint8_t c = p[(*pos)++];
        r |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *v = r;
            return 0;
        }
    }
    return -1;
}

int kv_parse(const uint8_t *p, size_t n, kvv *out)
{
    memset(out, 0, sizeof(*out));
    size_t pos = 0;
    while (pos < n) {
        uint64_t tag, v;
        if (varint_read(p, n, &pos, &tag))
            return -1;
        uint32_t field = (uint32_t)(tag >> 3), wt = (uint32_t)(tag & 7);
        if (wt == 0) {
            if (varint_read(p, n, &pos, &v))
                return -1;
            switch (field) {
            case 2: out->create_rev = (int64_t)v; break;
            case 3: out->mod_rev = (int64_t)v; break;
            case 4: out->version = (int64_t)v; break;
            case 6: out->lease = (int64_t)v; break;
            default: break;
            }
        } else if (wt == 2) {
            if (varint_read(p, n, &pos, &v) || v > n - pos)
                return -1;
            if (field == 1) {
                out->key = p + pos;
                out->key_len = (size_t)v;
            } else if (field == 5) {
                out->value = p + pos;
                out->value_len = (size_t)v;
            }
            pos += (size_t)v;
        } else if (wt == 1) {
            if (n - pos < 8)
                return -1;
            pos += 8;
        } else if (wt == 5) {
            if (n - pos < 4)
                return -1;
            pos += 4;
        } else {
            return -1;
        }
    }
    return 0;
}

int kv_encode(mvcc_buf *b, const kvv *kv, bool keys_only)
{
    if (pb_bytes_field(b, 1, kv->key, kv->key_len) ||
        pb_uint_field(b, 2, (uint64_t)kv->create_rev) ||
        pb_uint_field(b, 3, (uint64_t)kv->mod_rev) ||
        pb_uint_field(b, 4, (uint64_t)kv->version))
        return -1;
    if (!keys_only && pb_bytes_field(b, 5, kv->value, kv->value_len))
        return -1;
    return pb_uint_field(b, 6, (uint64_t)kv->lease);
}

int kv_field(mvcc_buf *b, uint32_t field, const kvv *kv, bool keys_only)
{
    size_t mark = pb_msg_begin(b, field);
    if (mark == (size_t)-1 || kv_encode(b, kv, keys_only))
        return -1;
    return pb_msg_end(b, mark);
}

void be64_encode(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

uint64_t be64_decode(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

void revkey_make(uint8_t out[REVKEY_LEN], int64_t main, int64_t sub)
{
    be64_encode(out, (uint64_t)main);
    be64_encode(out + 8, (uint64_t)sub);
}

void revkey_parse(const uint8_t *p, int64_t *main, int64_t *sub)
{
    *main = (int64_t)be64_decode(p);
    *sub = (int64_t)be64_decode(p + 8);
}

/* Escaping keeps byte order and makes a key's encoding never a prefix of
 * another key's: 0x00 becomes 00 FF, and the key ends with 00 01. */
int idxkey_prefix(mvcc_buf *b, const uint8_t *key, size_t n)
{
    if (buf_reserve(b, 2 * n + 2 + REVKEY_LEN))
        return -1;
    for (size_t i = 0; i < n; i++) {
        b->data[b->len++] = key[i];
        if (key[i] == 0)
            b->data[b->len++] = 0xff;
    }
    return 0;
}

int idxkey_key_start(mvcc_buf *b, const uint8_t *key, size_t n)
{
    static const uint8_t term[2] = {0x00, 0x01};
    return idxkey_prefix(b, key, n) || buf_put(b, term, 2);
}

int idxkey_key_after(mvcc_buf *b, const uint8_t *key, size_t n)
{
    static const uint8_t past[2] = {0x00, 0x02};
    return idxkey_prefix(b, key, n) || buf_put(b, past, 2);
}

int idxkey_make(mvcc_buf *b, const uint8_t *key, size_t n, int64_t main, int64_t sub)
{
    if (idxkey_key_start(b, key, n))
        return -1;
    uint8_t r[REVKEY_LEN];
    revkey_make(r, ~main, ~sub);
    return buf_put(b, r, REVKEY_LEN);
}

int idxkey_parse(const uint8_t *p, size_t n, mvcc_buf *key_out, int64_t *main, int64_t *sub)
{
    key_out->len = 0;
    if (n < 2 + REVKEY_LEN || buf_reserve(key_out, n))
        return -1;
    size_t end = n - REVKEY_LEN - 2;
    if (p[end] != 0x00 || p[end + 1] != 0x01)
        return -1;
    for (size_t i = 0; i < end; i++) {
        key_out->data[key_out->len++] = p[i];
        if (p[i] == 0) {
            if (i + 1 >= end || p[i + 1] != 0xff)
                return -1;
            i++;
        }
    }
    int64_t a, s;
    revkey_parse(p + n - REVKEY_LEN, &a, &s);
    *main = ~a;
    *sub = ~s;
    return 0;
}

bool iter_failed(rocksdb_iterator_t *it)
{
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    if (!err)
        return false;
    free(err);
    return true;
}
