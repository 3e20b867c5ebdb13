"""Every acknowledged Put survives kill -9.

16 client threads (one gRPC channel each) write a stream of Puts to unique keys
k/<round>/<client>/<n> and record (key, value, header.revision) of every
acknowledged Put.  After ~2 s, while they are writing, the server gets SIGKILL
and is restarted on the same data dir.  Then, for every round so far:
  - every acknowledged Put is there, with its value and mod_revision equal to
    the revision in its acknowledgement;
  - acknowledged revisions are all distinct (one revision per Put, even when
    many Puts share one raft entry);
  - a new Put gets a revision above every acknowledged one.
Three rounds on the same data dir.
"""

import os
import threading
import time

import grpc

import harness
from harness import check, rpc_pb2, rpc_pb2_grpc

CLIENTS = 16
ROUNDS = 3
WRITE_SECONDS = 2.0
MAX_PUTS_PER_CLIENT = 200000
CLIENT_DEADLINE = 30.0       # a writer stops by itself after this long


class Writer(threading.Thread):
    def __init__(self, server, round_no, client_no, killed):
        super().__init__(daemon=True)
        self.server = server
        self.prefix = "k/%d/%02d/" % (round_no, client_no)
        self.token = os.urandom(4).hex()
        self.killed = killed
        self.acked = []              # (key, value, revision)
        self.error_before_kill = None

    def run(self):
        channel = self.server.new_channel()
        kv = rpc_pb2_grpc.KVStub(channel)
        deadline = time.monotonic() + CLIENT_DEADLINE
        try:
            for n in range(MAX_PUTS_PER_CLIENT):
                if time.monotonic() > deadline:
                    return
                key = ("%s%06d" % (self.prefix, n)).encode()
                value = ("%s-%d" % (self.token, n)).encode()
                try:
                    resp = kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=5)
                except grpc.RpcError as exc:
                    if not self.killed.is_set():
                        self.error_before_kill = "%s %s: %s" % (key, exc.code(), exc.details())
                    return
                self.acked.append((key, value, resp.header.revision))
        finally:
            channel.close()


def acked_count(writers):
    return sum(len(w.acked) for w in writers)


def write_and_kill(server, round_no):
    """Runs the writers, kills the server while they write; returns acks."""
    killed = threading.Event()
    writers = [Writer(server, round_no, c, killed) for c in range(CLIENTS)]
    for w in writers:
        w.start()
    time.sleep(WRITE_SECONDS)
    before = acked_count(writers)
    time.sleep(0.3)
    after = acked_count(writers)
    killed.set()
    server.kill9()
    for w in writers:
        w.join(CLIENT_DEADLINE + 10)
    check(not any(w.is_alive() for w in writers), "a writer thread did not stop")
    errors = [w.error_before_kill for w in writers if w.error_before_kill]
    check(not errors, "Puts failed before the kill: %s" % errors[:5])
    check(after > before > 0, "writers were not writing when the server was killed "
          "(%d acks at %.1fs, %d at %.1fs)" % (before, WRITE_SECONDS, after, WRITE_SECONDS + 0.3))
    acks = [a for w in writers for a in w.acked]
    harness.log("round %d: %d Puts acknowledged before kill -9" % (round_no, len(acks)))
    return acks


def verify(server, acks):
    revisions = [rev for _, _, rev in acks]
    check(len(set(revisions)) == len(revisions),
          "%d acknowledged Puts share a revision with another one"
          % (len(revisions) - len(set(revisions))))
    stored, _ = harness.range_all(server.kv(), b"k/")
    by_key = {kv.key: kv for kv in stored}
    missing, wrong = [], []
    for key, value, rev in acks:
        kv = by_key.get(key)
        if kv is None:
            missing.append(key)
        elif kv.value != value or kv.mod_revision != rev:
            wrong.append("%s: acknowledged value %r at revision %d, found %r at mod_revision %d"
                         % (key.decode(), value, rev, kv.value, kv.mod_revision))
    check(not missing, "%d of %d acknowledged Puts lost, e.g. %s"
          % (len(missing), len(acks), [k.decode() for k in missing[:5]]))
    check(not wrong, "%d acknowledged Puts differ, e.g.\n  %s"
          % (len(wrong), "\n  ".join(wrong[:5])))
    resp = server.kv().Put(rpc_pb2.PutRequest(key=b"after-restart", value=b"x"), timeout=10)
    check(resp.header.revision > max(revisions),
          "a new Put got revision %d, not above the highest acknowledged %d"
          % (resp.header.revision, max(revisions)))


def main():
    server = harness.Server().start()
    acks = []
    try:
        for round_no in range(1, ROUNDS + 1):
            acks += write_and_kill(server, round_no)
            server.start()
            verify(server, acks)
            harness.log("round %d: all %d acknowledged Puts found after restart"
                        % (round_no, len(acks)))
    finally:
        server.stop()


if __name__ == "__main__":
    harness.run(main)
