/*
 * heap_pages — glibc's malloc heaps on transparent huge pages.
 *
 * On a kernel whose transparent huge pages are "madvise" (Debian's default),
 * memory that glibc's malloc takes from the kernel is mapped 4 KiB at a time,
 * one page fault per page the first time it is written; the raft thread's
 * memtable inserts write new memory all the time until the write buffers have
 * all been allocated once. glibc asks for huge pages for its heaps (one fault
 * per 2 MiB) when the tunable glibc.malloc.hugetlb=1 is set, and tunables are
 * read only from the environment a program starts with. So the server starts
 * itself again, the same program and arguments, with the tunable added.
 */
#ifndef BALLAST_HEAP_PAGES_H
#define BALLAST_HEAP_PAGES_H

/* The tunable, as it appears in GLIBC_TUNABLES. */
#define HEAP_PAGES_TUNABLE "glibc.malloc.hugetlb"

/* What GLIBC_TUNABLES should be to restart with huge-page heaps: a malloc'd
 * string (the tunable, then the user's own), or NULL when no restart is
 * wanted. thp_mode is the text of
 * /sys/kernel/mm/transparent_hugepage/enabled (the mode in brackets), and
 * tunables and ld_preload the variables as the process has them; NULL for
 * any that is missing. No restart when the mode is not "madvise" ("always"
 * backs the heaps with huge pages already, "never" refuses them), when
 * GLIBC_TUNABLES already names glibc.malloc.hugetlb (the user's choice,
 * glibc.malloc.hugetlb=0 turns this off), or when LD_PRELOAD is set (a tool
 * such as valgrind runs the program and would not follow it).  */
char *heap_pages_tunables(const char *thp_mode, const char *tunables, const char *ld_preload);

/* Starts /proc/self/exe again with argv and the environment plus the
 * tunable when heap_pages_tunables asks for it. Returns only when it does
 * not (or exec failed, which leaves the process as it was: its own
 * environment is never changed). Call it in main before anything is opened
 * or started: nothing is there yet that a restart would lose. */
void heap_pages_restart(char **argv);

#endif
