/* Happens-before edges that ThreadSanitizer cannot see by itself.
 *
 * gRPC is not instrumented and its mutexes are futex-based (absl), so a tag
 * handed to grpc_call_start_batch() on one thread and returned by
 * grpc_completion_queue_next() on another looks to ThreadSanitizer like an
 * unsynchronised hand-off of everything written before the batch started.
 * gRPC does order the two; these macros state that edge (release before the
 * batch starts, acquire when its tag comes back). Without -fsanitize=thread
 * they compile to nothing. */
#ifndef BALLAST_TSAN_ANNOTATE_H
#define BALLAST_TSAN_ANNOTATE_H

#ifdef __SANITIZE_THREAD__
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define TSAN_RELEASE(addr) __tsan_release(addr)
#define TSAN_ACQUIRE(addr) __tsan_acquire(addr)
#else
#define TSAN_RELEASE(addr) ((void)(addr))
#define TSAN_ACQUIRE(addr) ((void)(addr))
#endif

#endif
