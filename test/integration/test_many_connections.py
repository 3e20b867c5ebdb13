"""1,000 concurrent client connections, twice, with the usual open-file limit.

The server starts with a soft RLIMIT_NOFILE of 1024 (the default of a login
shell or a systemd service; the hard limit stays as it is).  etcd serves more
connections than that because the Go runtime raises its soft limit to the
hard one at start-up; a server that kept 1024 would fail to accept
connections once its own files (RocksDB, raft log, listeners) and the
clients' sockets reach it.

Each of 1,000 raw HTTP/2 connections (watch_h2.py) opens a Watch on the key
`conns/k` and all stay open together.  Every watcher must be created, and a
Put must reach every one of them (one event, that Put's revision, within
30 s).  With the 1,000 connections open the server answers a Put and a
linearizable Range within 5 s (Server.check_healthy).  Then every connection
is closed at once; the server must release them: its open file descriptors
(/proc/PID/fd) go back to at most what it had before + 50 within 30 s, and it
is healthy.  The whole round runs twice (a leak would add up).
"""

import os
import resource
import time

from etcd3.etcdrpc import rpc_pb2

import harness
import watch_h2
import watch_load
from harness import check

CONNECTIONS = int(os.environ.get("BALLAST_MANY_CONNECTIONS", "1000"))
SERVER_SOFT_NOFILE = 1024
KEY = b"conns/k"
ROUNDS = 2
TIMEOUT = 30.0 * harness.TIME_SCALE
FD_SLACK = 50


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def start_server_with_low_nofile():
    """The candidate, started while this process's soft limit is 1024 (the
    server inherits it); this process then takes its hard limit back for
    its own 1,000 sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    check(hard == resource.RLIM_INFINITY or hard >= 2 * CONNECTIONS + 200,
          "the hard open-file limit (%d) is too low for %d connections: raise it "
          "(ulimit -Hn)" % (hard, CONNECTIONS))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(SERVER_SOFT_NOFILE, soft), hard))
    try:
        server = harness.Server().start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return server


def one_round(server, number):
    base_fds = open_fds(server.proc.pid)
    conns = []
    started = time.monotonic()
    try:
        for i in range(CONNECTIONS):
            try:
                conn = watch_h2.WatchConnection("127.0.0.1", server.client_port,
                                                timeout=TIMEOUT, label="conn %d" % i)
            except OSError as exc:
                raise harness.TestFailure("round %d: connection %d of %d failed: %s; end of "
                                          "the server's log:\n%s" % (
                                              number, i + 1, CONNECTIONS, exc,
                                              server.log_tail()))
            conns.append(conn)
            conn.send(watch_load.create_request(KEY))
        checker = watch_load.WatchChecker(0, KEY)
        watch_h2.pump(conns, checker.handle, lambda: checker.created() >= CONNECTIONS or
                      any(c.closed for c in conns), time.monotonic() + TIMEOUT)
        closed = [(c.label, c.closed) for c in conns if c.closed]
        check(not closed and checker.created() == CONNECTIONS,
              "round %d: %d of %d watchers created in %.0fs; %d connections ended, e.g. %s; "
              "end of the server's log:\n%s" % (
                  number, checker.created(), CONNECTIONS, TIMEOUT, len(closed), closed[:3],
                  server.log_tail()))
        harness.log("round %d: %d connections open, a watcher on each, after %.1fs; "
                    "server fds %d -> %d" % (number, CONNECTIONS, time.monotonic() - started,
                                             base_fds, open_fds(server.proc.pid)))
        rev = server.check_healthy("%d open connections" % CONNECTIONS)
        put = server.kv().Put(rpc_pb2.PutRequest(key=KEY, value=b"v%d" % number),
                              timeout=TIMEOUT).header.revision
        check(put == rev + 1, "round %d: the Put got revision %d, expected %d"
              % (number, put, rev + 1))
        for state in checker.state.values():      # created before the Put: it is the first
            state[0] = put
        watch_h2.pump(conns, checker.handle, lambda: checker.events >= CONNECTIONS or
                      checker.errors, time.monotonic() + TIMEOUT)
        check(not checker.errors, "round %d: wrong events: %s" % (number, checker.errors[:5]))
        check(checker.events == CONNECTIONS,
              "round %d: %d of %d watchers got the Put at revision %d within %.0fs"
              % (number, checker.events, CONNECTIONS, put, TIMEOUT))
    finally:
        for conn in conns:
            conn.close()
    deadline = time.monotonic() + TIMEOUT
    while open_fds(server.proc.pid) > base_fds + FD_SLACK and time.monotonic() < deadline:
        time.sleep(0.2)
    fds = open_fds(server.proc.pid)
    check(fds <= base_fds + FD_SLACK,
          "round %d: %d connections closed, the server still has %d open files %.0fs later "
          "(%d before)" % (number, CONNECTIONS, fds, TIMEOUT, base_fds))
    server.check_healthy("%d connections closed at once" % CONNECTIONS)
    harness.log("round %d: all closed, server fds back to %d" % (number, fds))


def main():
    with start_server_with_low_nofile() as server:
        server.kv().Put(rpc_pb2.PutRequest(key=KEY, value=b"v0"), timeout=10)
        for number in range(1, ROUNDS + 1):
            one_round(server, number)


if __name__ == "__main__":
    harness.run(main)
