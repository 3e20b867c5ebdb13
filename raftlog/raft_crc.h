/* c-raft's log checksum, computed eight bytes per step (see raft_crc.c).
 * libraft's own byteCrc32 is replaced by it at link time. */
#ifndef BALLAST_RAFT_CRC_H
#define BALLAST_RAFT_CRC_H
#include <stddef.h>

/* CRC-32, polynomial 0x04C11DB7, MSB first, no final inversion: the same
 * value as libraft's byteCrc32(buf, size, init). */
unsigned raft_crc32(const void *buf, size_t size, unsigned init);

/* 0 when raft_crc32 gives the standard check value (also makes the linker
 * keep this file, whose __wrap_byteCrc32 libraft's objects call). */
int raft_crc_selftest(void);

/* libraft's function, reachable only through the wrap (for tests). */
unsigned __real_byteCrc32(const void *buf, size_t size, unsigned init);
#endif
