/* Unit tests for server/heap_pages: when the server starts itself again with
 * glibc's huge-page tunable, and with what GLIBC_TUNABLES. (That the running
 * server has it, and huge pages, is test/integration/test_heap_pages.py.) */
#include "heap_pages.h"

#include <stdlib.h>
#include <string.h>

#include "check.h"

#define MADVISE "always [madvise] never\n"

static void expect(const char *mode, const char *tunables, const char *preload, const char *want)
{
    char *got = heap_pages_tunables(mode, tunables, preload);
    if (!want) {
        if (got)
            fprintf(stderr, "mode %s tunables %s preload %s: got %s, want no restart\n",
                    mode ? mode : "(none)", tunables ? tunables : "(unset)",
                    preload ? preload : "(unset)", got);
        CHECK(got == NULL);
        return;
    }
    if (!got || strcmp(got, want) != 0)
        fprintf(stderr, "mode %s tunables %s: got %s, want %s\n", mode ? mode : "(none)",
                tunables ? tunables : "(unset)", got ? got : "no restart", want);
    CHECK(got && strcmp(got, want) == 0);
    free(got);
}

int main(void)
{
    /* the kernel's mode decides first */
    expect(MADVISE, NULL, NULL, "glibc.malloc.hugetlb=1");
    expect("[always] madvise never\n", NULL, NULL, NULL);
    expect("always madvise [never]\n", NULL, NULL, NULL);
    expect(NULL, NULL, NULL, NULL); /* no THP file */
    expect("", NULL, NULL, NULL);

    /* the user's tunables are kept, ours put before them */
    expect(MADVISE, "", NULL, "glibc.malloc.hugetlb=1");
    expect(MADVISE, "glibc.malloc.arena_max=2", NULL,
           "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=2");
    expect(MADVISE, "glibc.malloc.arena_max=2:glibc.pthread.rseq=0", NULL,
           "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=2:glibc.pthread.rseq=0");
    /* a tunable whose name merely starts the same is another tunable */
    expect(MADVISE, "glibc.malloc.hugetlbx=1", NULL,
           "glibc.malloc.hugetlb=1:glibc.malloc.hugetlbx=1");
    expect(MADVISE, "glibc.malloc.hugetlb", NULL, "glibc.malloc.hugetlb=1:glibc.malloc.hugetlb");

    /* the user's own setting of it wins, whatever its value and place; this
     * is also what keeps the restarted program from starting again */
    expect(MADVISE, "glibc.malloc.hugetlb=0", NULL, NULL);
    expect(MADVISE, "glibc.malloc.hugetlb=1", NULL, NULL);
    expect(MADVISE, "glibc.malloc.hugetlb=2", NULL, NULL);
    expect(MADVISE, "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0", NULL, NULL);
    expect(MADVISE, "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2", NULL, NULL);
    char *again = heap_pages_tunables(MADVISE, "glibc.malloc.arena_max=2", NULL);
    CHECK(again != NULL);
    expect(MADVISE, again, NULL, NULL);
    free(again);

    /* a preloaded tool (valgrind sets LD_PRELOAD) keeps the process it runs */
    expect(MADVISE, NULL, "/usr/libexec/valgrind/vgpreload_core-amd64-linux.so", NULL);
    expect(MADVISE, NULL, "", "glibc.malloc.hugetlb=1");

    printf("ok\n");
    return 0;
}
