/*
 * The C library's own definition of a function that Ballast defines again
 * to wrap it for libraft (aio_reaper's syscall, segment_prefill's
 * posix_fallocate).
 */
#ifndef BALLAST_RAFTLOG_LIBC_NEXT_H
#define BALLAST_RAFTLOG_LIBC_NEXT_H

#include <dlfcn.h>

/* The next definition of `name` after this object's (dlsym RTLD_NEXT),
 * looked up once and kept in *cache; NULL if there is none. */
static inline void *libc_next(void **cache, const char *name)
{
    void *f = __atomic_load_n(cache, __ATOMIC_ACQUIRE);
    if (!f) {
        f = dlsym(RTLD_NEXT, name);
        if (f)
            __atomic_store_n(cache, f, __ATOMIC_RELEASE);
    }
    return f;
}

#endif
