#include "aio_reaper.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "libc_next.h"

/* Contexts waiting for the reaper; when it is this far behind, io_destroy
 * runs where it is called, as without the reaper (each context holds
 * kernel memory and counts against fs.aio-max-nr until it is gone). */
#define QUEUE_MAX 64

typedef long (*syscall_fn)(long, ...);

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static unsigned long queue[QUEUE_MAX]; /* ring, guarded by mu */
static unsigned q_head, q_len;         /* guarded by mu */
static int started;                    /* reaper thread runs; guarded by mu */
static int enabled;                    /* atomic */
static unsigned long n_deferred, n_done; /* atomic */

static syscall_fn libc_syscall(void)
{
    static void *real;
    return (syscall_fn)libc_next(&real, "syscall");
}

static void *reaper_main(void *arg)
{
    (void)arg;
    syscall_fn real = libc_syscall();
    pthread_mutex_lock(&mu);
    for (;;) {
        while (q_len == 0)
            pthread_cond_wait(&cv, &mu);
        unsigned long ctx = queue[q_head];
        q_head = (q_head + 1) % QUEUE_MAX;
        q_len--;
        pthread_mutex_unlock(&mu);
        if (real(SYS_io_destroy, ctx) != 0)
            fprintf(stderr, "ballast warn: io_destroy of a raft log AIO context: errno %d\n", errno);
        __atomic_add_fetch(&n_done, 1, __ATOMIC_RELAXED);
        pthread_mutex_lock(&mu);
    }
    return NULL;
}

/* Queues ctx for the reaper: 1, or 0 when it must be destroyed here. */
static int defer(unsigned long ctx)
{
    int queued = 0;
    pthread_mutex_lock(&mu);
    if (!started) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        started = pthread_create(&t, &attr, reaper_main, NULL) == 0;
        pthread_attr_destroy(&attr);
        if (started)
            pthread_setname_np(t, "aio-reaper");
    }
    if (started && q_len < QUEUE_MAX) {
        queue[(q_head + q_len) % QUEUE_MAX] = ctx;
        q_len++;
        queued = 1;
        pthread_cond_signal(&cv);
    }
    pthread_mutex_unlock(&mu);
    if (queued)
        __atomic_add_fetch(&n_deferred, 1, __ATOMIC_RELAXED);
    return queued;
}

void aio_reaper_enable(void)
{
    __atomic_store_n(&enabled, 1, __ATOMIC_RELEASE);
}

unsigned long aio_reaper_deferred(void)
{
    return __atomic_load_n(&n_deferred, __ATOMIC_RELAXED);
}

unsigned long aio_reaper_done(void)
{
    return __atomic_load_n(&n_done, __ATOMIC_RELAXED);
}

/* The C library's syscall() takes up to six word-sized arguments and reads
 * all six whatever the call; so does this one, to pass them on. */
long syscall(long number, ...)
{
    va_list ap;
    va_start(ap, number);
    long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long);
    long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_io_destroy && __atomic_load_n(&enabled, __ATOMIC_ACQUIRE) &&
        defer((unsigned long)a1))
        return 0;
    syscall_fn real = libc_syscall();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    return real(number, a1, a2, a3, a4, a5, a6);
}
