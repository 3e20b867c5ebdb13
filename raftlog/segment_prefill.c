#include "segment_prefill.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libc_next.h"

#define MAX_DIRS 16
#define CHUNK (1u << 20)
#define ALIGN 4096u

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char *dirs[MAX_DIRS]; /* resolved paths, guarded by mu */
static unsigned long prefilled;   /* atomic */

int segment_prefill_register(const char *dir)
{
    char *path = realpath(dir, NULL);
    if (!path)
        return -1;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < MAX_DIRS; i++) {
        if (!dirs[i]) {
            dirs[i] = path;
            pthread_mutex_unlock(&mu);
            return 0;
        }
    }
    pthread_mutex_unlock(&mu);
    free(path);
    return -1;
}

void segment_prefill_unregister(const char *dir)
{
    char *path = realpath(dir, NULL);
    if (!path)
        return;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < MAX_DIRS; i++) {
        if (dirs[i] && strcmp(dirs[i], path) == 0) {
            free(dirs[i]);
            dirs[i] = NULL;
            break;
        }
    }
    pthread_mutex_unlock(&mu);
    free(path);
}

unsigned long segment_prefill_count(void)
{
    return __atomic_load_n(&prefilled, __ATOMIC_RELAXED);
}

/* True when fd is an open segment ("open-<digits>") of a registered dir. */
static int is_open_segment(int fd)
{
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return 0;
    path[n] = '\0';
    char *slash = strrchr(path, '/');
    if (!slash || strncmp(slash + 1, "open-", 5) != 0 || !slash[6])
        return 0;
    for (const char *p = slash + 6; *p; p++)
        if (*p < '0' || *p > '9')
            return 0;
    *slash = '\0';
    int found = 0;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < MAX_DIRS && !found; i++)
        found = dirs[i] && strcmp(dirs[i], path) == 0;
    pthread_mutex_unlock(&mu);
    return found;
}

/* Writes zeros over [offset, offset + len); an errno value or 0. */
static int write_zeros(int fd, off_t offset, off_t len)
{
    void *zeros = NULL;
    if (posix_memalign(&zeros, ALIGN, CHUNK) != 0)
        return ENOMEM;
    memset(zeros, 0, CHUNK);
    int err = 0;
    for (off_t done = 0; done < len && !err;) {
        size_t want = len - done < (off_t)CHUNK ? (size_t)(len - done) : CHUNK;
        ssize_t w = pwrite(fd, zeros, want, offset + done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            err = w < 0 ? errno : EIO;
        else
            done += w;
    }
    if (!err && fdatasync(fd) != 0)
        err = errno;
    free(zeros);
    return err;
}

typedef int (*fallocate_fn)(int, off_t, off_t);

int posix_fallocate(int fd, off_t offset, off_t len)
{
    static void *libc_fallocate;
    fallocate_fn real = (fallocate_fn)libc_next(&libc_fallocate, "posix_fallocate");
    if (!real)
        return ENOSYS;
    int rv = real(fd, offset, len);
    if (rv != 0 || offset % ALIGN || len % ALIGN || !is_open_segment(fd))
        return rv;
    rv = write_zeros(fd, offset, len);
    if (rv == 0)
        __atomic_add_fetch(&prefilled, 1, __ATOMIC_RELAXED);
    return rv;
}
