"""Concurrent Puts share raft entries; a lone writer never waits for a timer.

Ballast only (etcd has no batching metrics).  Three phases:
  1. One sequential writer, 200 Puts on a fresh server (default adaptive
     policy): ballast_batch_flushes_total{trigger="timer"} does not grow, and
     the same after a burst of concurrent writes has ended (1 s later).
  2. 64 concurrent writers (asyncio tasks over 8 channels, 64 calls in flight),
     64 x 100 = N Puts: the raftIndex delta (Maintenance.Status) is at most N/4,
     ballast_batch_ops_total grew by exactly N and ballast_batch_entries_total
     by the number of raft entries (the raftIndex delta, give or take the
     entries that are not batches, e.g. a barrier: at most 2).
  3. --batch-policy off, the same 64 writers: one raft entry per op
     (entries delta == ops delta == N, raftIndex delta >= N).
"""

import asyncio
import time

import grpc

import harness
from harness import check, rpc_pb2, rpc_pb2_grpc

WRITERS = 64
CHANNELS = 8
PUTS_PER_WRITER = 100
SEQUENTIAL_PUTS = 200
NON_BATCH_ENTRY_SLACK = 2
LOAD_TIMEOUT = 120.0

OPS = "ballast_batch_ops_total"
ENTRIES = "ballast_batch_entries_total"
FLUSHES = "ballast_batch_flushes_total"


def snapshot(server):
    """(raftIndex, metrics) at one moment."""
    return server.raft_index(), server.metrics()


def counter_delta(before, after, name, **labels):
    return after.require(name, **labels) - before.require(name, **labels)


def sequential_puts(server, count, prefix):
    kv = server.kv()
    for n in range(count):
        kv.Put(rpc_pb2.PutRequest(key=b"%s/%d" % (prefix, n), value=b"v"), timeout=10)


def concurrent_puts(server, writers, per_writer, prefix):
    """`writers` concurrent closed loops of `per_writer` Puts each, over
    CHANNELS channels; returns the number of acknowledged Puts.

    The writers are asyncio tasks, not threads: measured here, 64 Python
    threads keep only ~13 calls in flight at the server (the rest wait for the
    GIL), while 64 tasks keep nearly all 64 there, which is the load to test."""

    async def load():
        channels = [grpc.aio.insecure_channel(server.endpoint) for _ in range(CHANNELS)]
        done, errors = [0], []

        async def writer(w):
            kv = rpc_pb2_grpc.KVStub(channels[w % CHANNELS])
            for n in range(per_writer):
                try:
                    await kv.Put(rpc_pb2.PutRequest(key=b"%s/%d/%d" % (prefix, w, n),
                                                    value=b"x" * 64), timeout=30)
                except grpc.RpcError as exc:
                    errors.append("%s: %s" % (exc.code(), exc.details()))
                    return
                done[0] += 1

        try:
            await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(writers))),
                                   LOAD_TIMEOUT)
        except asyncio.TimeoutError:
            errors.append("writers still running after %ds" % LOAD_TIMEOUT)
        finally:
            for ch in channels:
                await ch.close()
        return done[0], errors

    started = time.monotonic()
    done, errors = asyncio.run(load())
    harness.log("%d concurrent writers: %d Puts in %.2fs" % (writers, done,
                                                              time.monotonic() - started))
    check(not errors, "%d Puts failed, e.g. %s" % (len(errors), errors[:3]))
    return done


def check_no_timer_flush(server, label):
    index0, m0 = snapshot(server)
    sequential_puts(server, SEQUENTIAL_PUTS, label.encode())
    index1, m1 = snapshot(server)
    timer = counter_delta(m0, m1, FLUSHES, trigger="timer")
    idle = counter_delta(m0, m1, FLUSHES, trigger="idle")
    ops = counter_delta(m0, m1, OPS)
    harness.log("%s: %d sequential Puts: raftIndex +%d, ops +%d, flushes timer +%d idle +%d"
                % (label, SEQUENTIAL_PUTS, index1 - index0, ops, timer, idle))
    check(ops == SEQUENTIAL_PUTS,
          "%s: %s grew by %d for %d Puts" % (label, OPS, ops, SEQUENTIAL_PUTS))
    check(timer == 0, "%s: a lone sequential writer waited for the timer: "
          "flushes{trigger=\"timer\"} grew by %d over %d Puts" % (label, timer, SEQUENTIAL_PUTS))
    check(idle > 0, "%s: flushes{trigger=\"idle\"} did not grow over %d sequential Puts"
          % (label, SEQUENTIAL_PUTS))


def run_concurrent(server, label):
    """Returns (Puts made, raftIndex delta, ops delta, entries delta)."""
    n = WRITERS * PUTS_PER_WRITER
    index0, m0 = snapshot(server)
    done = concurrent_puts(server, WRITERS, PUTS_PER_WRITER, label.encode())
    index1, m1 = snapshot(server)
    ops, entries = counter_delta(m0, m1, OPS), counter_delta(m0, m1, ENTRIES)
    harness.log("%s: %d Puts: raftIndex +%d, %s +%d, %s +%d (%.1f ops per entry)"
                % (label, n, index1 - index0, OPS, ops, ENTRIES, entries,
                   ops / entries if entries else 0))
    check(done == n, "%s: only %d of %d Puts acknowledged" % (label, done, n))
    check(ops == n, "%s: %s grew by %d for %d Puts" % (label, OPS, ops, n))
    check(entries <= index1 - index0 <= entries + NON_BATCH_ENTRY_SLACK,
          "%s: %s grew by %d but raftIndex by %d" % (label, ENTRIES, entries, index1 - index0))
    return n, index1 - index0, ops, entries


def main():
    harness.skip_unless_ballast("batching metrics are Ballast's own")
    with harness.Server() as server:
        server.kv().Put(rpc_pb2.PutRequest(key=b"warm-up", value=b"v"), timeout=10)
        check_no_timer_flush(server, "fresh server")
        n, index_delta, _, _ = run_concurrent(server, "adaptive")
        check(index_delta <= n // 4,
              "%d concurrent Puts took %d raft entries (more than N/4 = %d): not batched"
              % (n, index_delta, n // 4))
        time.sleep(1.0)
        check_no_timer_flush(server, "after the burst")

    with harness.Server(extra_args=["--batch-policy", "off"]) as server:
        server.kv().Put(rpc_pb2.PutRequest(key=b"warm-up", value=b"v"), timeout=10)
        n, index_delta, ops, entries = run_concurrent(server, "policy off")
        check(entries == ops == n,
              "--batch-policy off: %d ops in %d entries (want one entry per op)" % (ops, entries))
        check(index_delta >= n, "--batch-policy off: raftIndex grew by %d for %d Puts"
              % (index_delta, n))


if __name__ == "__main__":
    harness.run(main)
