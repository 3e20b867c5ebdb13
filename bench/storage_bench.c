/*
 * ballast-storage-bench: the cost of applying Puts to the store alone, with
 * no gRPC, raft or other threads in the way. It applies entries of --batch
 * Puts (random keys out of --key-space-size, --val-size byte values) to a
 * store in a fresh temporary directory and prints the apply thread's CPU
 * time per Put, the whole process's (RocksDB's flushes and compactions
 * included) and the wall time. Under `valgrind --tool=callgrind` its
 * instruction counts are repeatable whatever else the machine runs, which
 * the server's own benchmarks (ballast-bench, scripts/bench) cannot be.
 */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mvcc.h"

static double cpu_seconds(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t next_random(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void usage(void)
{
    fprintf(stderr, "usage: ballast-storage-bench [--puts N] [--batch N] [--key-space-size N]\n"
                    "                             [--key-size N] [--val-size N] [--dir DIR]\n");
}

int main(int argc, char **argv)
{
    long puts = 200000, batch = 42, key_space = 100000, key_size = 8, val_size = 256;
    const char *dir_arg = NULL;
    static const struct option opts[] = {
        {"puts", required_argument, NULL, 'p'},     {"batch", required_argument, NULL, 'b'},
        {"key-space-size", required_argument, NULL, 'k'},
        {"key-size", required_argument, NULL, 's'}, {"val-size", required_argument, NULL, 'v'},
        {"dir", required_argument, NULL, 'd'},      {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'p': puts = atol(optarg); break;
        case 'b': batch = atol(optarg); break;
        case 'k': key_space = atol(optarg); break;
        case 's': key_size = atol(optarg); break;
        case 'v': val_size = atol(optarg); break;
        case 'd': dir_arg = optarg; break;
        default: usage(); return 2;
        }
    }
    if (puts < 1 || batch < 1 || key_space < 1 || key_size < 8 || val_size < 0 || optind != argc) {
        usage();
        return 2;
    }

    char dir[64] = "/tmp/ballast-storage-bench-XXXXXX";
    if (!dir_arg && !mkdtemp(dir)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    mvcc *m = NULL;
    char *err = NULL;
    if (mvcc_open(dir_arg ? dir_arg : dir, &m, &err) != 0) {
        fprintf(stderr, "mvcc_open: %s\n", err ? err : "?");
        free(err);
        return 1;
    }

    uint8_t *keys = calloc((size_t)batch, (size_t)key_size);
    uint8_t *val = malloc((size_t)val_size + 1);
    Etcdserverpb__PutRequest *reqs = calloc((size_t)batch, sizeof *reqs);
    Ballastpb__Op *ops = calloc((size_t)batch, sizeof *ops);
    Ballastpb__Op **op_ptrs = calloc((size_t)batch, sizeof *op_ptrs);
    mvcc_result *results = calloc((size_t)batch, sizeof *results);
    if (!keys || !val || !reqs || !ops || !op_ptrs || !results) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    memset(val, 'v', (size_t)val_size);
    for (long i = 0; i < batch; i++) {
        etcdserverpb__put_request__init(&reqs[i]);
        reqs[i].key.data = keys + i * key_size;
        reqs[i].key.len = (size_t)key_size;
        reqs[i].value.data = val;
        reqs[i].value.len = (size_t)val_size;
        ballastpb__op__init(&ops[i]);
        ops[i].op_case = BALLASTPB__OP__OP_PUT;
        ops[i].put = &reqs[i];
        op_ptrs[i] = &ops[i];
    }

    mvcc_header h = {.cluster_id = 1, .member_id = 1, .raft_term = 1};
    mvcc_buf out = {0};
    uint64_t seed = 0x9e3779b97f4a7c15ull, index = mvcc_applied_index(m);
    double t0 = cpu_seconds(CLOCK_THREAD_CPUTIME_ID), p0 = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID);
    double w0 = cpu_seconds(CLOCK_MONOTONIC);
    long done = 0;
    while (done < puts) {
        long n = puts - done < batch ? puts - done : batch;
        for (long i = 0; i < n; i++) {
            uint8_t *k = keys + i * key_size;
            memset(k, '0', (size_t)key_size);
            snprintf((char *)k, (size_t)key_size + 1, "%0*lu", (int)key_size,
                     (unsigned long)(next_random(&seed) % (uint64_t)key_space));
        }
        out.len = 0;
        if (mvcc_apply(m, ++index, &h, op_ptrs, (size_t)n, &out, results) != 0) {
            fprintf(stderr, "mvcc_apply failed at entry %llu\n", (unsigned long long)index);
            return 1;
        }
        for (long i = 0; i < n; i++) {
            if (results[i].status != MVCC_STATUS_OK) {
                fprintf(stderr, "put failed: %s\n", results[i].message);
                return 1;
            }
        }
        done += n;
    }
    double t1 = cpu_seconds(CLOCK_THREAD_CPUTIME_ID), p1 = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID);
    double w1 = cpu_seconds(CLOCK_MONOTONIC);
    printf("{\"puts\":%ld,\"batch\":%ld,\"key_space\":%ld,\"val_size\":%ld,"
           "\"apply_cpu_us_per_put\":%.2f,\"process_cpu_us_per_put\":%.2f,\"wall_us_per_put\":%.2f}\n",
           done, batch, key_space, val_size, (t1 - t0) * 1e6 / (double)done,
           (p1 - p0) * 1e6 / (double)done, (w1 - w0) * 1e6 / (double)done);

    mvcc_close(m);
    free(out.data);
    free(keys);
    free(val);
    free(reqs);
    free(ops);
    free(op_ptrs);
    free(results);
    if (!dir_arg) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", dir);
    }
    return 0;
}
