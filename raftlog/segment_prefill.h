/*
 * segment_prefill — c-raft's open segments written through once, so its
 * log writes stay on the fast path.
 *
 * c-raft 0.15 prepares each open segment (open-N, 8 MiB) with
 * posix_fallocate(), which leaves unwritten extents on ext4, and writes the
 * log with kernel AIO and RWF_NOWAIT. ext4 turns an AIO direct write into
 * unwritten extents into a waiting one, which RWF_NOWAIT refuses: every log
 * write completed with EAGAIN and c-raft wrote it again from libuv's thread
 * pool (a second submission and two thread hand-offs per write). Ballast
 * defines posix_fallocate itself (the executable's definition is the one
 * libraft binds to): it calls the C library's, and for an open segment in a
 * registered raft directory then writes zeros over the range, which makes
 * the extents written. Any other file is left as the C library leaves it.
 * It runs on c-raft's thread pool while it prepares a segment ahead of use.
 */
#ifndef BALLAST_RAFTLOG_SEGMENT_PREFILL_H
#define BALLAST_RAFTLOG_SEGMENT_PREFILL_H

/* Registers a raft directory (it must exist); its open segments are
 * written through from then on. Thread-safe; 0, or -1 when it cannot be
 * resolved or too many are registered. */
int segment_prefill_register(const char *dir);
/* Forgets it (the node stopped). */
void segment_prefill_unregister(const char *dir);

/* Segments written through since start (for tests). */
unsigned long segment_prefill_count(void);

#endif
