/* segment_check alone: an open segment whose batches are whole (followed by
 * zeros or garbage, as after a crash) passes; one cut inside a batch's
 * header or data is refused with the file's name; closed segments are left
 * to c-raft. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "segment_check.h"

static char dir[] = "/tmp/ballast-segcheck-XXXXXX";

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* format 1, then one batch of two entries (8 and 16 bytes of data), then
 * `tail` bytes of `fill`: returns the length of the whole batch part. */
static size_t segment(unsigned char *buf, size_t tail, unsigned char fill)
{
    memset(buf, 0, 256);
    put64(buf, 1);
    unsigned char *b = buf + 8;
    put64(b + 8, 2);                         /* entry count */
    b[16 + 12] = 8;                          /* entry 1: data length */
    b[32 + 12] = 16;                         /* entry 2: data length */
    memset(b + 48, 0x11, 24);                /* their data */
    size_t len = 8 + 48 + 24;
    memset(buf + len, fill, tail);
    return len;
}

static int check_file(const char *name, const unsigned char *data, size_t len, char **err)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f);
    CHECK(fwrite(data, 1, len, f) == len);
    fclose(f);
    *err = NULL;
    int rv = segment_check_open(dir, err);
    unlink(path);
    return rv;
}

int main(void)
{
    CHECK(mkdtemp(dir));
    unsigned char buf[256];
    char *err = NULL;

    size_t whole = segment(buf, 64, 0);
    CHECK_EQ_INT(check_file("open-1", buf, whole + 64, &err), 0);   /* zeros after it */
    CHECK_EQ_INT(check_file("open-1", buf, whole, &err), 0);        /* ends with it */
    segment(buf, 64, 0xff);                                         /* garbage count after it */
    CHECK_EQ_INT(check_file("open-1", buf, whole + 64, &err), 0);

    segment(buf, 0, 0);
    CHECK_EQ_INT(check_file("open-1", buf, whole - 5, &err), -1);   /* cut in the data */
    CHECK(err && strstr(err, "open-1 is cut inside a batch") && strstr(err, "byte 8 needs 72"));
    free(err);
    CHECK_EQ_INT(check_file("open-2", buf, 8 + 30, &err), -1);      /* cut in the entry headers */
    CHECK(err && strstr(err, "open-2 is cut inside a batch"));
    free(err);
    /* closed segments are c-raft's to judge (it refuses a cut one cleanly) */
    CHECK_EQ_INT(check_file("0000000000000001-0000000000000002", buf, whole - 5, &err), 0);
    /* no raft directory yet: a new member */
    CHECK_EQ_INT(segment_check_open("/nonexistent/ballast-raft", &err), 0);

    rmdir(dir);
    printf("segment_check: ok\n");
    return 0;
}
