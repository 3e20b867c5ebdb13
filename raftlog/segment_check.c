#include "segment_check.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* c-raft's segment layout (format 1, little-endian): an 8-byte format
 * version, then batches: two CRC-32 words, the entry count n (8 bytes),
 * n entry headers of 16 bytes (term 8, type 1, unused 3, data length 4),
 * then the entries' data. */
#define SEGMENT_HEADER 8
#define BATCH_PREAMBLE 16
#define ENTRY_HEADER 16
/* c-raft reads a larger count as garbage (a torn batch), not as a cut */
#define MAX_ENTRIES ((64u << 20) / 32u)

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int fail(char **errmsg, const char *fmt, const char *dir, const char *name,
                size_t at, size_t need, size_t len)
{
    char buf[1024];
    snprintf(buf, sizeof buf, fmt, dir, name, at, need, len);
    *errmsg = strdup(buf);
    return -1;
}

/* 0 when every batch of `data` that has a count is whole. */
static int check_segment(const char *dir, const char *name, const unsigned char *data,
                         size_t len, char **errmsg)
{
    static const char cut[] =
        "raft segment %s/%s is cut inside a batch: the batch at byte %zu needs %zu bytes, "
        "the file has %zu; not starting (c-raft cannot load it)";
    size_t off = SEGMENT_HEADER;
    while (off + BATCH_PREAMBLE <= len) {
        uint64_t n = le64(data + off + 8);
        if (n == 0 || n > MAX_ENTRIES)
            return 0; /* zeros or garbage: c-raft stops there */
        size_t need = BATCH_PREAMBLE + (size_t)n * ENTRY_HEADER;
        if (need > len - off)
            return fail(errmsg, cut, dir, name, off, need, len);
        for (uint64_t i = 0; i < n; i++)
            need += le32(data + off + BATCH_PREAMBLE + i * ENTRY_HEADER + 12);
        if (need > len - off)
            return fail(errmsg, cut, dir, name, off, need, len);
        off += need;
    }
    return 0;
}

int segment_check_open(const char *dir, char **errmsg)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0; /* a new member: nothing to check */
    int rv = 0;
    struct dirent *e;
    while (rv == 0 && (e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "open-", 5) != 0)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f)
            continue; /* c-raft reports what it cannot read */
        unsigned char *data = NULL;
        size_t len = 0, cap = 0;
        for (;;) {
            if (len == cap) {
                cap = cap ? cap * 2 : 1u << 20;
                unsigned char *p = realloc(data, cap);
                if (!p) {
                    rv = -1;
                    *errmsg = strdup("out of memory reading raft segments");
                    break;
                }
                data = p;
            }
            size_t got = fread(data + len, 1, cap - len, f);
            len += got;
            if (got == 0)
                break;
        }
        fclose(f);
        if (rv == 0)
            rv = check_segment(dir, e->d_name, data, len, errmsg);
        free(data);
    }
    closedir(d);
    return rv;
}
