/* The apply thread's cache of live records (see mvcc_internal.h). */
#include <stdlib.h>
#include <string.h>

#include "mvcc_internal.h"

#ifndef CACHE_SETS /* tests build it tiny, to exercise evictions */
#define CACHE_SETS (1u << 17) /* of two slots: the recently used one first */
#endif
#define CACHE_BUDGET (32u << 20)  /* bytes of keys and values */
#define CACHE_MAX_RECORD (8u << 10) /* larger records are not kept */

static uint64_t key_hash(const void *key, size_t n)
{
    /* FNV-1a, then a final mix so that the low bits (the slot) depend on
     * every byte */
    const uint8_t *p = key;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static bool written(const cur_cache *c, uint64_t h)
{
    unsigned bit = (unsigned)(h >> 52); /* 12 bits: 4096 */
    return (c->written[bit / 64] >> (bit % 64)) & 1u;
}

int cache_init(cur_cache *c)
{
    memset(c, 0, sizeof *c);
    c->slots = calloc(2 * (size_t)CACHE_SETS, sizeof *c->slots);
    if (!c->slots)
        return -1;
    c->mask = CACHE_SETS - 1;
    c->budget = CACHE_BUDGET;
    return 0;
}

void cache_clear(cur_cache *c)
{
    if (!c->slots)
        return;
    for (size_t i = 0; i < 2 * (c->mask + 1); i++) {
        free(c->slots[i].data);
        c->slots[i].data = NULL;
    }
    c->bytes = 0;
    cache_begin(c);
}

void cache_free(cur_cache *c)
{
    cache_clear(c);
    free(c->slots);
    free(c->notes);
    free(c->notes_buf.data);
    memset(c, 0, sizeof *c);
}

void cache_begin(cur_cache *c)
{
    memset(c->written, 0, sizeof c->written);
    c->n_notes = 0;
    c->notes_buf.len = 0;
    c->save_notes = c->save_len = 0;
}

/* The key's slot in its set, moved to the front (most recently used); NULL
 * when the set does not hold the key. */
static struct cur_slot *slot_find(cur_cache *c, uint64_t h, const void *key, size_t klen)
{
    struct cur_slot *set = &c->slots[2 * (h & c->mask)];
    for (int i = 0; i < 2; i++) {
        struct cur_slot *s = &set[i];
        if (s->data && s->hash == h && s->klen == klen && memcmp(s->data, key, klen) == 0) {
            if (i == 1) {
                struct cur_slot t = set[0];
                set[0] = set[1];
                set[1] = t;
            }
            return &set[0];
        }
    }
    return NULL;
}

static void slot_drop(cur_cache *c, struct cur_slot *s)
{
    if (s->data) {
        c->bytes -= s->klen + s->vlen;
        free(s->data);
        s->data = NULL;
    }
}

int cache_read(cur_cache *c, const void *key, size_t klen, char **val, size_t *vlen)
{
    if (!c->slots)
        return 2; /* no cache: the batch and the store answer */
    uint64_t h = key_hash(key, klen);
    if (written(c, h))
        return 2; /* maybe written by this entry: the batch knows */
    struct cur_slot *s = slot_find(c, h, key, klen);
    if (!s)
        return 0;
    if (!s->present) {
        *val = NULL;
        *vlen = 0;
        return 1;
    }
    *val = malloc(s->vlen ? s->vlen : 1);
    if (!*val)
        return -1;
    memcpy(*val, s->data + s->klen, s->vlen);
    *vlen = s->vlen;
    return 1;
}

static void slot_set(cur_cache *c, uint64_t h, const void *key, size_t klen, const void *val,
                     size_t vlen, bool present)
{
    struct cur_slot *s = slot_find(c, h, key, klen);
    if (!s) {
        /* a new key takes the front slot; the least recently used leaves */
        struct cur_slot *set = &c->slots[2 * (h & c->mask)];
        slot_drop(c, &set[1]);
        set[1] = set[0];
        set[0].data = NULL;
        s = &set[0];
    }
    /* s is empty or holds this key */
    size_t need = klen + (present ? vlen : 0);
    size_t have = s->data ? (size_t)s->klen + s->vlen : 0;
    if (klen + vlen > CACHE_MAX_RECORD || c->bytes - have + need > c->budget) {
        slot_drop(c, s);
        return;
    }
    if (!s->data || have != need) {
        slot_drop(c, s);
        s->data = malloc(need ? need : 1);
        if (!s->data)
            return;
        c->bytes += need;
    }
    memcpy(s->data, key, klen);
    if (present && vlen)
        memcpy(s->data + klen, val, vlen);
    s->hash = h;
    s->klen = (uint32_t)klen;
    s->vlen = present ? (uint32_t)vlen : 0;
    s->present = present;
}

void cache_fill(cur_cache *c, const void *key, size_t klen, const char *val, size_t vlen)
{
    if (!c->slots)
        return;
    uint64_t h = key_hash(key, klen);
    if (!written(c, h))
        slot_set(c, h, key, klen, val, vlen, val != NULL);
}

int cache_note(cur_cache *c, const void *key, size_t klen, const void *val, size_t vlen)
{
    if (!c->slots)
        return 0;
    uint64_t h = key_hash(key, klen);
    unsigned bit = (unsigned)(h >> 52);
    c->written[bit / 64] |= 1ull << (bit % 64);
    if (c->n_notes == c->cap_notes) {
        size_t cap = c->cap_notes ? 2 * c->cap_notes : 256;
        struct cur_note *n = realloc(c->notes, cap * sizeof *n);
        if (!n)
            return -1;
        c->notes = n;
        c->cap_notes = cap;
    }
    struct cur_note *n = &c->notes[c->n_notes];
    n->hash = h;
    n->off = c->notes_buf.len;
    n->klen = (uint32_t)klen;
    n->vlen = val ? (uint32_t)vlen : 0;
    n->present = val != NULL;
    if (buf_put(&c->notes_buf, key, klen) || (val && vlen && buf_put(&c->notes_buf, val, vlen)))
        return -1;
    c->n_notes++;
    return 0;
}

void cache_save_point(cur_cache *c)
{
    c->save_notes = c->n_notes;
    c->save_len = c->notes_buf.len;
}

void cache_rollback(cur_cache *c)
{
    /* The written-keys filter keeps the rolled-back keys: they are read
     * through the batch, which is right, only slower. */
    c->n_notes = c->save_notes;
    c->notes_buf.len = c->save_len;
}

void cache_commit(cur_cache *c)
{
    if (!c->slots)
        return;
    for (size_t i = 0; i < c->n_notes; i++) {
        const struct cur_note *n = &c->notes[i];
        const uint8_t *p = c->notes_buf.data + n->off;
        slot_set(c, n->hash, p, n->klen, p + n->klen, n->vlen, n->present);
    }
    cache_begin(c);
}
