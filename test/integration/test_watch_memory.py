"""Ballast's memory stays bounded while a watch stream stops reading, and the
stream still gets every event once it reads again (Ballast only).

A stream with 8 watchers on the prefix `mem/` (4 plain, 4 with prev_kv) is
created on a raw HTTP/2 connection (watch_h2.py) that then stops reading: its
flow-control windows stay at 64 KiB, so the server can hand it almost nothing.
Then 1,000 puts of 100 KiB values (~98 MiB) go to 50 keys under `mem/`.  Every
put makes 4 events of ~100 KiB and 4 of ~200 KiB (value + prev value) for the
stalled stream: a server that kept the backlog in memory would grow by
~1.1 GiB (one encoded response per watcher), or by ~195 MiB even if it shared
one copy of each value and prev value between the watchers.

Bound: the server's RSS (VmRSS of /proc/PID/status, sampled every 20 ms) must
stay under its peak RSS during a warm-up + 120 MiB.  The warm-up writes the
same volume to the same keys with no watcher, so the write path's own memory
(RocksDB's 128 MiB write buffers and 64 MiB block cache, gRPC buffers) is
already there; the 120 MiB cover what the write path may still add in a second
round plus the watch hub's bounded per-stream buffer (Ballast measured +18 to
+23 MiB over the baseline).  The server runs with
`--snapshot-count 100` so that c-raft's in-memory log of recent entries (up to
snapshot-count + 1024 entries, here of 100 KiB each) does not grow with the
written volume and hide what the watch path does.

Then the stream reads again: every watcher must get all 1,000 events in order
(consecutive revisions, each value as written, each prev_kv the key's previous
value): the backlog was served from storage, not dropped.

Skipped when the candidate is etcd (its bbolt file is mapped into its memory,
so its RSS follows the database size); BALLAST_WATCH_MEMORY_ON_ETCD=1 runs it
against etcd anyway, to see the measurement.
"""

import os
import threading
import time

from etcd3.etcdrpc import kv_pb2, rpc_pb2

import harness
import watch_h2
import watch_load
from harness import check

PREFIX = b"mem/"
KEYS = 50
VALUE_SIZE = 100 * 1024
PUTS = 1000
PLAIN_WATCHERS = 4
PREV_KV_WATCHERS = 4
ALLOWANCE_MIB = 120
RESUME_TIMEOUT = 120


def key(i):
    return PREFIX + b"%02d" % (i % KEYS)


def value(phase, i):
    return (b"%s-%08d-" % (phase, i)).ljust(VALUE_SIZE, b"v")


class RssSampler:
    """Samples a process's VmRSS every 20 ms in a thread; keeps the peak."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, harness.read_rss_kib(self.pid))
            except (OSError, harness.TestFailure):
                return
            self._stop.wait(0.02)

    def reset(self):
        self.peak = harness.read_rss_kib(self.pid)

    def stop(self):
        self._stop.set()
        self._thread.join(2)


def write_phase(channel, phase, history):
    """PUTS puts of `phase`; appends (revision, key, phase, index) to history."""
    items = [(key(i), value(phase, i)) for i in range(PUTS)]
    try:
        seconds, revisions, _ = watch_load.put_load(channel, items, inflight=8, timeout=60)
    except Exception as exc:
        raise harness.TestFailure("%s: a put failed: %s" % (phase.decode(),
                                                            watch_load.rpc_error_text(exc)))
    check(sorted(revisions) == list(range(min(revisions), min(revisions) + PUTS)),
          "%s: the puts did not get consecutive revisions" % phase.decode())
    history.extend((rev, key(i), phase, i) for i, rev in enumerate(revisions))
    return seconds, min(revisions)


class Expected:
    """Checks every event of every watcher of the stalled stream: the puts
    made from revision first_rev on, in revision order, each value as written
    and, for the prev_kv watchers, each prev_kv the key's previous value."""

    def __init__(self, history, first_rev, watch_ids, prev_kv_ids):
        self.want = {}                 # revision -> (key, (phase, i), previous (phase, i))
        last = {}
        for rev, k, phase, i in sorted(history):
            if rev >= first_rev:
                self.want[rev] = (k, (phase, i), last.get(k))
            last[k] = (phase, i)
        self.first_rev = first_rev
        self.prev_kv_ids = prev_kv_ids
        self.next = {w: first_rev for w in watch_ids}     # watch_id -> next revision
        self.last_rev = first_rev + len(self.want) - 1
        self.errors = []

    def error(self, text):
        if len(self.errors) < 20:
            self.errors.append(text)

    def handle(self, _conn, payload):
        resp = rpc_pb2.WatchResponse.FromString(payload)
        if resp.canceled or resp.compact_revision or resp.created or \
                resp.watch_id not in self.next:
            self.error("unexpected response: %s" % str(resp)[:300])
            return
        for ev in resp.events:
            rev = self.next[resp.watch_id]
            self.next[resp.watch_id] = rev + 1
            k, (phase, i), prev = self.want.get(rev, (None, (b"", -1), None))
            if k is None or ev.type != kv_pb2.Event.PUT or ev.kv.mod_revision != rev or \
                    ev.kv.key != k or ev.kv.value != value(phase, i):
                self.error("watch %d: expected the put of %r at revision %d, got %s %r at %d "
                           "(value %r...)" % (resp.watch_id, k, rev,
                                              kv_pb2.Event.EventType.Name(ev.type), ev.kv.key,
                                              ev.kv.mod_revision, ev.kv.value[:20]))
            elif resp.watch_id in self.prev_kv_ids:
                if ev.prev_kv.key != k or ev.prev_kv.value != value(*prev):
                    self.error("watch %d: wrong prev_kv at revision %d: %r %r..." % (
                        resp.watch_id, rev, ev.prev_kv.key, ev.prev_kv.value[:20]))
            elif ev.HasField("prev_kv"):
                self.error("watch %d: a prev_kv it did not ask for" % resp.watch_id)

    def complete(self):
        return sum(1 for n in self.next.values() if n > self.last_rev)


def main():
    if harness.candidate_kind() == "etcd" and not os.environ.get("BALLAST_WATCH_MEMORY_ON_ETCD"):
        harness.skip_unless_ballast("etcd's RSS includes its memory-mapped bbolt file, so it "
                                    "follows the database size; this bound is Ballast's")
    watchers = PLAIN_WATCHERS + PREV_KV_WATCHERS
    with harness.Server(extra_args=["--snapshot-count", "100"]) as server:
        pid = server.proc.pid
        sampler = RssSampler(pid)
        channel = server.new_channel()
        conn = None
        try:
            start_rss = harness.read_rss_kib(pid)
            history = []
            seconds, _ = write_phase(channel, b"warm-up", history)
            time.sleep(1)
            # the write path's own memory: the most it took during the warm-up
            baseline = max(sampler.peak, harness.read_rss_kib(pid))
            harness.log("RSS %d MiB at start, baseline %d MiB (peak during the warm-up: %d "
                        "puts of %d KiB in %.1fs, no watcher)" % (
                            start_rss // 1024, baseline // 1024, PUTS, VALUE_SIZE // 1024,
                            seconds))

            conn = watch_h2.WatchConnection("127.0.0.1", server.client_port,
                                            window=watch_h2.DEFAULT_WINDOW, label="stalled")
            for n in range(watchers):
                conn.send(watch_load.create_request(PREFIX, harness.prefix_end(PREFIX),
                                                    prev_kv=n >= PLAIN_WATCHERS))
            created = []
            watch_h2.pump([conn], lambda _c, p: created.append(
                rpc_pb2.WatchResponse.FromString(p)), lambda: len(created) >= watchers or
                conn.closed, time.monotonic() + 10)
            check(len(created) == watchers and all(r.created and not r.canceled
                                                   for r in created),
                  "the stalled stream's watchers were not created: %s (%s)" % (
                      [str(r) for r in created], conn.closed))
            conn.stop_reading()
            backlog_mib = PUTS * VALUE_SIZE * (PLAIN_WATCHERS + 2 * PREV_KV_WATCHERS) / 2 ** 20

            sampler.reset()
            seconds, first_rev = write_phase(channel, b"stalled", history)
            time.sleep(2)          # the hub may still be working on the backlog
            peak = sampler.peak
            harness.log("with the stalled stream: %d puts in %.1fs; peak RSS %d MiB = "
                        "baseline + %d MiB (bound: + %d MiB; the stalled stream's backlog is "
                        "~%d MiB)" % (PUTS, seconds, peak // 1024, (peak - baseline) // 1024,
                                      ALLOWANCE_MIB, backlog_mib))
            check(server.running(), "the server exited; log:\n%s" % server.log_tail())
            check(not conn.closed, "the server ended the stalled stream: %s" % conn.closed)
            check(conn.data_bytes < 2 * watch_h2.DEFAULT_WINDOW,
                  "the stalled stream read %d bytes" % conn.data_bytes)
            check(peak <= baseline + ALLOWANCE_MIB * 1024,
                  "the server's RSS grew to %d MiB with a stalled watch stream: baseline "
                  "(after the same writes without it) %d MiB + %d MiB allowed" % (
                      peak // 1024, baseline // 1024, ALLOWANCE_MIB))

            expected = Expected(history, first_rev, [r.watch_id for r in created],
                                {r.watch_id for r in created[PLAIN_WATCHERS:]})
            started = time.monotonic()
            sampler.reset()
            conn.resume_reading()
            watch_h2.pump([conn], expected.handle, lambda: expected.complete() == watchers or
                          conn.closed or len(expected.errors) >= 20,
                          time.monotonic() + RESUME_TIMEOUT)
            harness.log("the stream read again: %d/%d watchers got all %d events in %.1fs "
                        "(%d MiB of responses; peak RSS meanwhile %d MiB)" % (
                            expected.complete(), watchers, PUTS, time.monotonic() - started,
                            conn.data_bytes // 2 ** 20, sampler.peak // 1024))
            check(not expected.errors, "after resuming: wrong events, first ones:\n  %s"
                  % "\n  ".join(expected.errors))
            check(expected.complete() == watchers,
                  "after resuming, only %d of %d watchers got every event within %ds "
                  "(next expected revision per watch: %s; stream %s)" % (
                      expected.complete(), watchers, RESUME_TIMEOUT, expected.next,
                      conn.closed or "open"))
        finally:
            sampler.stop()
            channel.close()
            if conn is not None:
                conn.close()


if __name__ == "__main__":
    harness.run(main)
