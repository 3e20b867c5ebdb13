"""100,000 watchers on one stream, and a stream that never reads anything.

1. One raw Watch stream (watch_h2.py, one HTTP/2 connection) creates 100,000
   watchers on the key `wl/k`, in chunks of 2,000 while it reads the
   `created` replies (so neither side's buffers stop the other).  Every one
   must be created with its own watch ID (0 to 99,999, as etcd numbers
   them per stream).  Then the server answers a Put and a linearizable Range
   within 5 s, and two Puts of `wl/k` each reach all 100,000 watchers once,
   in order, within 60 s.  The stream is closed; the server is healthy and a
   new watcher gets the next Put.

2. A stream that never reads: its connection announces a 64 KiB window and
   nothing is ever read from its socket, not even the `created` replies.
   It sends 10,000 create requests (for at most 10 s: a server may stop
   reading a stream it cannot answer, like etcd, which then blocks the
   sender), then 1,000 Puts (64 in flight) of the key it watches go to the
   server; each makes up to 10,000 events it cannot deliver.  The Puts must
   finish within 60 s, the server's RSS must grow by less than 256 MiB
   (keeping those events would take ~5.6 GiB), it must answer a Put and a
   linearizable Range within 5 s while the stream is still open, and again
   after the client closes the connection; a new watcher then gets the next
   Put.

Both parts pass against etcd.  BALLAST_WATCH_LIMITS_WATCHERS (100000) and
_STALLED (10000) size them.
"""

import os
import time

from etcd3.etcdrpc import rpc_pb2

import harness
import watch_h2
import watch_load
from harness import check

WATCHERS = int(os.environ.get("BALLAST_WATCH_LIMITS_WATCHERS", "100000"))
STALLED_WATCHERS = int(os.environ.get("BALLAST_WATCH_LIMITS_STALLED", "10000"))
CHUNK = 2000
KEY = b"wl/k"
STALLED_KEY = b"wl/stalled"
STALLED_PUTS = 1000
SEND_BUDGET = 10.0
# what the server may grow by while the never-reading stream is open: the
# events it cannot deliver (~600 bytes each with prev_kv, one per watcher per
# Put: ~5.6 GiB) must not be kept for it
RSS_ALLOWANCE_MIB = 256
TIMEOUT = 60.0 * harness.TIME_SCALE


def create_watchers(server, count):
    """A reading stream with `count` watchers on KEY; returns (conn, checker)."""
    conn = watch_h2.WatchConnection("127.0.0.1", server.client_port,
                                    label="stream of %d watchers" % count)
    checker = watch_load.WatchChecker(0, KEY)
    create = watch_load.create_request(KEY).SerializeToString()
    deadline = time.monotonic() + TIMEOUT
    sent = 0
    while sent < count:
        n = min(CHUNK, count - sent)
        conn._sendall(b"".join(watch_h2._frame(watch_h2.DATA, 0, 1,
                                               watch_h2.grpc_message(create))
                               for _ in range(n)))
        sent += n
        watch_h2.pump([conn], checker.handle, lambda: checker.created() >= sent - CHUNK or
                      conn.closed or checker.errors, deadline)
        check(not conn.closed and not checker.errors and time.monotonic() < deadline,
              "creating watchers: %d sent, %d created after %.0fs; closed: %s; errors: %s"
              % (sent, checker.created(), TIMEOUT, conn.closed, checker.errors[:3]))
    watch_h2.pump([conn], checker.handle, lambda: checker.created() >= count or
                  conn.closed or checker.errors, deadline)
    check(checker.created() == count and not checker.errors,
          "%d of %d watchers created within %.0fs; closed: %s; errors: %s"
          % (checker.created(), count, TIMEOUT, conn.closed, checker.errors[:3]))
    ids = sorted(watch_id for _, watch_id in checker.state)
    check(ids == list(range(count)), "watch IDs are not 0..%d: first ones %s, last %s"
          % (count - 1, ids[:5], ids[-5:]))
    return conn, checker


def check_new_watcher(server, key, what):
    """A new watcher on `key` (own connection) gets the next Put within TIMEOUT."""
    conn = watch_h2.WatchConnection("127.0.0.1", server.client_port, label="new watcher")
    try:
        checker = watch_load.WatchChecker(0, key)
        conn.send(watch_load.create_request(key))
        watch_h2.pump([conn], checker.handle, lambda: checker.created() == 1 or conn.closed,
                      time.monotonic() + TIMEOUT)
        check(checker.created() == 1, "after %s: a new watcher was not created (%s)"
              % (what, conn.closed))
        rev = server.kv().Put(rpc_pb2.PutRequest(key=key, value=b"after"),
                              timeout=TIMEOUT).header.revision
        for state in checker.state.values():
            state[0] = rev
        watch_h2.pump([conn], checker.handle, lambda: checker.events >= 1 or conn.closed,
                      time.monotonic() + TIMEOUT)
        check(checker.events == 1 and not checker.errors,
              "after %s: a new watcher did not get the Put at revision %d: %s"
              % (what, rev, checker.errors[:3] or conn.closed))
    finally:
        conn.close()


def many_watchers(server):
    started = time.monotonic()
    conn, checker = create_watchers(server, WATCHERS)
    harness.log("%d watchers created on one stream in %.1fs; server RSS %d MiB"
                % (WATCHERS, time.monotonic() - started,
                   harness.read_rss_kib(server.proc.pid) // 1024))
    try:
        server.check_healthy("%d watchers on one stream" % WATCHERS)
        for round_number in (1, 2):
            rev = server.kv().Put(rpc_pb2.PutRequest(key=KEY, value=b"v%d" % round_number),
                                  timeout=TIMEOUT).header.revision
            if round_number == 1:
                for state in checker.state.values():
                    state[0] = rev
            started = time.monotonic()
            want = WATCHERS * round_number
            watch_h2.pump([conn], checker.handle, lambda: checker.events >= want or
                          conn.closed or checker.errors, time.monotonic() + TIMEOUT)
            check(not checker.errors, "wrong events: %s" % checker.errors[:5])
            check(checker.complete(rev) == WATCHERS,
                  "%d of %d watchers got the Put at revision %d within %.0fs (%s)"
                  % (checker.complete(rev), WATCHERS, rev, TIMEOUT, conn.closed))
            harness.log("Put %d: its event reached %d watchers in %.1fs" % (
                round_number, WATCHERS, time.monotonic() - started))
    finally:
        conn.close()
    server.check_healthy("closing a stream of %d watchers" % WATCHERS)
    check_new_watcher(server, KEY, "closing a stream of %d watchers" % WATCHERS)


def send_for_a_while(conn, data, budget):
    """Writes as much of `data` as the socket takes within `budget` seconds
    (never blocking longer); returns the number of bytes written."""
    sock = conn.sock
    sock.settimeout(0.5)
    written, deadline = 0, time.monotonic() + budget
    try:
        while written < len(data) and time.monotonic() < deadline:
            try:
                written += sock.send(data[written:written + 65536])
            except TimeoutError:
                continue
    finally:
        sock.setblocking(False)
    return written


def never_reading_stream(server):
    conn = watch_h2.WatchConnection("127.0.0.1", server.client_port,
                                    window=watch_h2.DEFAULT_WINDOW, label="never reads")
    conn.stop_reading()
    try:
        create = watch_h2._frame(watch_h2.DATA, 0, 1, watch_h2.grpc_message(
            watch_load.create_request(STALLED_KEY, prev_kv=True).SerializeToString()))
        data = create * STALLED_WATCHERS
        written = send_for_a_while(conn, data, SEND_BUDGET)
        harness.log("never-reading stream: %d of %d create requests written in at most %.0fs"
                    % (written // len(create), STALLED_WATCHERS, SEND_BUDGET))
        server.check_healthy("a stream that never reads sent %d create requests"
                             % (written // len(create)))
        rss = harness.read_rss_kib(server.proc.pid)
        channel = server.new_channel()
        try:
            items = [(STALLED_KEY, (b"%06d-" % i).ljust(256, b"x")) for i in range(STALLED_PUTS)]
            seconds, _, _ = watch_load.put_load(channel, items, 64, timeout=TIMEOUT)
        finally:
            channel.close()
        check(seconds < TIMEOUT, "%d Puts watched by a stream that never reads took %.0fs"
              % (STALLED_PUTS, seconds))
        # the events are made after the Puts are answered: the peak of 2 s more
        after, settle = 0, time.monotonic() + 2.0
        while time.monotonic() < settle:
            after = max(after, harness.read_rss_kib(server.proc.pid))
            time.sleep(0.05)
        harness.log("never-reading stream: %d Puts of its key in %.1fs; server RSS %d -> %d MiB"
                    % (STALLED_PUTS, seconds, rss // 1024, after // 1024))
        check(after - rss < RSS_ALLOWANCE_MIB * 1024,
              "the server's RSS grew from %d to %d MiB while a stream that never reads had "
              "%d Puts to get (kept for it, that would be ~%d MiB)" % (
                  rss // 1024, after // 1024, STALLED_PUTS,
                  STALLED_PUTS * STALLED_WATCHERS * 600 // (1024 * 1024)))
        server.check_healthy("%d Puts for a stream that never reads" % STALLED_PUTS)
        check(conn.messages_received == 0, "the never-reading stream read something")
    finally:
        conn.close()
    time.sleep(0.5)
    server.check_healthy("closing a stream that never read")
    check_new_watcher(server, STALLED_KEY, "closing a stream that never read")


def main():
    with harness.Server() as server:
        many_watchers(server)
        never_reading_stream(server)


if __name__ == "__main__":
    harness.run(main)
