/*
 * mvcc_memory — memory for the write buffers, mapped before the applies
 * need it (see mvcc_reserve_write_memory in mvcc.h).
 */
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mvcc.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* RocksDB's memtable arena blocks are 1 MiB (write_buffer_size / 8, at most
 * 1 MiB); served from the heaps below this size, they are reused after a
 * free instead of being unmapped (glibc maps anything from 128 KiB up on
 * its own and unmaps it when freed). */
#define HEAP_BELOW ((size_t)4 << 20)
/* What a heap keeps at its top when memory is freed. glibc's heaps for
 * threads other than the main one are 64 MiB; with this pad a wholly free
 * heap is kept, not unmapped. */
#define KEEP_AT_TOP ((size_t)64 << 20)
#define BLOCK ((size_t)1 << 20)

size_t mvcc_reserve_write_memory(size_t bytes)
{
    if (bytes == 0)
        return 0;
    mallopt(M_MMAP_THRESHOLD, (int)HEAP_BELOW);
    mallopt(M_TOP_PAD, (int)KEEP_AT_TOP);
    mallopt(M_TRIM_THRESHOLD, (int)(2 * KEEP_AT_TOP));

    size_t n = (bytes + BLOCK - 1) / BLOCK;
    void **blocks = calloc(n, sizeof *blocks);
    if (!blocks)
        return 0;
    /* a little under a block, so that with malloc's header it stays one */
    const size_t len = BLOCK - 64;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    size_t mapped = 0;
    for (size_t i = 0; i < n; i++) {
        char *p = malloc(len);
        if (!p)
            break;
        blocks[i] = p;
        uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1);
        uintptr_t hi = ((uintptr_t)p + len) & ~(page - 1);
        if (madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE) != 0)
            memset(p, 0, len); /* an older kernel: one fault per page */
        mapped += len;
    }
    for (size_t i = n; i-- > 0;)
        free(blocks[i]);
    free(blocks);
    return mapped;
}
