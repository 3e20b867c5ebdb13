/* raft_crc32 (raftlog/raft_crc.c), which replaces libraft's byteCrc32 at link
 * time, gives exactly what libraft's own function gives: random data of every
 * length up to 4 KiB and more, at every alignment, with random initial
 * values, and chained over pieces as c-raft chains its header and data. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "raft_crc.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

int main(void)
{
    CHECK(raft_crc_selftest() == 0);
    enum { MAX = 70000 };
    unsigned char *buf = malloc(MAX + 8);
    CHECK(buf != NULL);
    for (size_t i = 0; i < MAX + 8; i++)
        buf[i] = (unsigned char)next();

    /* every length 0..4100 at every alignment, with initial values 0 (c-raft's) and random */
    for (size_t len = 0; len <= 4100; len++) {
        size_t off = len % 8;
        unsigned init = (len & 1) ? next() : 0;
        CHECK_EQ_INT(raft_crc32(buf + off, len, init), __real_byteCrc32(buf + off, len, init));
    }
    /* large and odd sizes */
    for (int i = 0; i < 200; i++) {
        size_t len = next() % MAX, off = next() % 8;
        unsigned init = next();
        CHECK_EQ_INT(raft_crc32(buf + off, len, init), __real_byteCrc32(buf + off, len, init));
    }
    /* chained: the CRC of a whole equals the CRC of its second part started
     * from the CRC of its first */
    for (int i = 0; i < 200; i++) {
        size_t len = next() % 5000, cut = len ? next() % len : 0;
        unsigned whole = raft_crc32(buf, len, 0);
        CHECK_EQ_INT(raft_crc32(buf + cut, len - cut, raft_crc32(buf, cut, 0)), whole);
    }
    /* a flipped bit changes it */
    unsigned before = raft_crc32(buf, 1000, 0);
    buf[500] ^= 0x10;
    CHECK(raft_crc32(buf, 1000, 0) != before);
    free(buf);
    return 0;
}
