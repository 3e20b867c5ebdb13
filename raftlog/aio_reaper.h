/*
 * aio_reaper — raft_uv's kernel AIO contexts destroyed off the raft thread.
 *
 * c-raft 0.15 gives each open segment a kernel AIO context and destroys it
 * with io_destroy(2) when the segment is closed: when it is full, and at
 * every snapshot (its barrier closes the open segment). The kernel's
 * io_destroy waits for an RCU grace period before it returns, 25-60 ms
 * here, and raft_uv calls it on the raft thread: every request in flight
 * waited that long (the watch benchmark's p99.9, the put rows' max). c-raft
 * calls it through the C library's syscall(), which Ballast defines itself
 * (the executable's definition is the one libraft binds to): once enabled,
 * an io_destroy is handed to a reaper thread and returns 0 at once. By then
 * raft_uv has finished or cancelled every write of the context and closed
 * its file; what remains is the kernel's own wait. Every other system call
 * goes to the C library's syscall() unchanged.
 */
#ifndef BALLAST_RAFTLOG_AIO_REAPER_H
#define BALLAST_RAFTLOG_AIO_REAPER_H

/* From now on io_destroy calls made through syscall() are deferred to the
 * reaper thread (started on the first one). Idempotent, thread-safe. */
void aio_reaper_enable(void);

/* io_destroy calls handed to the reaper since start, and those it has
 * finished (for tests). */
unsigned long aio_reaper_deferred(void);
unsigned long aio_reaper_done(void);

#endif
