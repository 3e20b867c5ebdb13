/* mvcc_reserve_write_memory: after it, blocks of a memtable's size that the
 * same thread allocates and writes take (almost) no page faults, the first
 * time and again after they were freed; without it each of their pages
 * faults once. Faults are the thread's minor faults (getrusage). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "check.h"
#include "mvcc.h"

#define MIB ((size_t)1 << 20)
#define BLOCKS 16

static long thread_faults(void)
{
    struct rusage u;
    CHECK(getrusage(RUSAGE_THREAD, &u) == 0);
    return u.ru_minflt;
}

/* Allocates BLOCKS blocks of 1 MiB (RocksDB's memtable arena block), writes
 * every byte, frees them; returns the faults that took. */
static long write_blocks(void)
{
    void *b[BLOCKS];
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    long before = thread_faults();
    for (int i = 0; i < BLOCKS; i++) {
        b[i] = malloc(MIB);
        CHECK(b[i] != NULL);
        /* counted in small pages even where transparent huge pages are
         * "always" (adjacent blocks can make a huge-page-sized mapping) */
        uintptr_t lo = ((uintptr_t)b[i] + page - 1) & ~(page - 1);
        uintptr_t hi = ((uintptr_t)b[i] + MIB) & ~(page - 1);
        madvise((void *)lo, hi - lo, MADV_NOHUGEPAGE);
        memset(b[i], i + 1, MIB);
    }
    long faults = thread_faults() - before;
    for (int i = 0; i < BLOCKS; i++)
        free(b[i]);
    return faults;
}

typedef struct run {
    size_t reserve;
    size_t mapped;
    long first, again;
} run;

/* on a new thread, so that it has a malloc arena of its own */
static void *run_main(void *arg)
{
    run *r = arg;
    r->mapped = mvcc_reserve_write_memory(r->reserve);
    r->first = write_blocks();
    r->again = write_blocks();
    return NULL;
}

static run on_new_thread(size_t reserve)
{
    run r = {.reserve = reserve};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, run_main, &r) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    return r;
}

int main(void)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    /* the sanitizer's allocator ignores mallopt */
    printf("test_mvcc_memory: skipped (sanitizer allocator)\n");
    return 0;
#endif
    const long pages = (long)(BLOCKS * MIB / (size_t)sysconf(_SC_PAGESIZE));

    /* No reserve (and, before the first reserve, glibc's defaults): every
     * page is new the first time. The count shows the test can tell. */
    run none = on_new_thread(0);
    printf("no reserve: %ld faults for %ld pages, %ld the second time\n", none.first, pages,
           none.again);
    CHECK_EQ_INT(none.mapped, 0);
    CHECK(none.first >= pages * 9 / 10);

    run with = on_new_thread(2 * BLOCKS * MIB);
    printf("reserve of %zu MiB: %ld faults for %ld pages, %ld the second time\n",
           with.mapped / MIB, with.first, pages, with.again);
    CHECK(with.mapped >= 2 * BLOCKS * MIB - 2 * BLOCKS * 64);
    CHECK(with.first <= pages / 20);
    CHECK(with.again <= pages / 20);

    /* the advice holds for the whole process: a thread that reserves
     * nothing gets its freed blocks back without faults the second time
     * (glibc's defaults map and unmap 1 MiB blocks each time: see "no
     * reserve" above) */
    run after = on_new_thread(0);
    printf("after a reserve, no reserve: %ld faults the first time, %ld the second\n",
           after.first, after.again);
    CHECK(after.again <= pages / 20);

    printf("test_mvcc_memory: ok\n");
    return 0;
}
