"""A member cut off from the majority refuses linearizable reads and writes with etcd's errors.

On a 3-member cluster, two members are SIGSTOPped, twice: once keeping the
leader alone, once keeping a follower alone.  On the member left, each time,
in two rounds (right after the SIGSTOP, while it still believes in its leader;
and once its Status shows no leader), concurrently, with a client deadline of
CLIENT_DEADLINE (10 s):
  - a linearizable Range fails with one of LINEARIZABLE_READ_ERRORS and a
    Put fails with one of PUT_ERRORS (a success is a stale read or a write
    without a quorum: a failure of the test);
  - a serializable Range answers at once with the data from before the stop;
  - (second round) a Range and a Put carrying gRPC metadata hasleader=true,
    what clientv3.WithRequireLeader sends, fail at once with UNAVAILABLE
    "etcdserver: no leader";
then both get SIGCONT and the cluster recovers (a leader, every member
answers); every key a failed Put wrote has either its old or its new value,
the same on every member (no half state), HashKV is equal; new Puts through
every member succeed and are read back from every member.

The error sets, from etcd 3.4.23's source (etcdserver/v3_server.go) and seen
by experiment (ReqTimeout = 5 s + 2 x election timeout = 7 s):
  - linearizable Range: UNAVAILABLE "etcdserver: request timed out" after 7 s
    (the read-index request got no answer: requestCurrentIndex's timer), or
    the client's DEADLINE_EXCEEDED at 10 s (a read that arrives while an
    earlier read-index round is pending waits for the next round: seen when
    two reads are sent together);
  - Put: UNAVAILABLE "etcdserver: request timed out" after 7 s (proposed, no
    commit: parseProposeCtxErr), or "etcdserver: request timed out, possibly
    due to connection lost" (the same when the transport has marked the
    peers inactive since the Put began; in the source, not seen with
    SIGSTOP), or UNKNOWN "context deadline exceeded" after 7 s (once the
    member knows it has no leader raft's Propose blocks until the 7 s
    context ends, and that raw error goes out as grpc-go's Unknown).
"""

import threading
import time

import grpc

import harness
from harness import check, rpc_pb2

CLIENT_DEADLINE = 10.0
NO_LEADER_BOUND = 10.0           # until the member left alone reports no leader
UNAVAILABLE, UNKNOWN, DEADLINE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN,
                                  grpc.StatusCode.DEADLINE_EXCEEDED)
LINEARIZABLE_READ_ERRORS = {
    (UNAVAILABLE, "etcdserver: request timed out"),
    (DEADLINE, "Deadline Exceeded"),
}
PUT_ERRORS = {
    (UNAVAILABLE, "etcdserver: request timed out"),
    (UNAVAILABLE, "etcdserver: request timed out, possibly due to connection lost"),
    (UNKNOWN, "context deadline exceeded"),
}
NO_LEADER = (UNAVAILABLE, "etcdserver: no leader")
REQUIRE_LEADER = (("hasleader", "true"),)


class Call(threading.Thread):
    """One unary call in a thread: .result is ("ok", response) or (code, details)."""

    def __init__(self, name, fn):
        super().__init__(daemon=True)
        self.name, self.fn = name, fn
        self.result, self.seconds = None, None

    def run(self):
        started = time.monotonic()
        try:
            self.result = ("ok", self.fn())
        except grpc.RpcError as exc:
            self.result = (exc.code(), exc.details())
        self.seconds = time.monotonic() - started

    def describe(self):
        if self.result[0] == "ok":
            return "%s: success after %.1fs: %s" % (self.name, self.seconds,
                                                   str(self.result[1]).replace("\n", " ")[:300])
        return "%s: %s %r (%.1fs)" % (self.name, self.result[0], self.result[1], self.seconds)


def wait_no_leader(member):
    deadline = time.monotonic() + NO_LEADER_BOUND
    while time.monotonic() < deadline:
        try:
            if member.status(timeout=1).leader == 0:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise harness.TestFailure("%s still names a leader %.0fs after the two others were "
                              "SIGSTOPped" % (member, NO_LEADER_BOUND))


def cut_off(cluster, keep_leader, keys):
    """SIGSTOPs all members but one; checks what that one answers; returns
    (the failed Puts as (key, old, new), what was seen)."""
    leader = cluster.leader()
    alone = leader if keep_leader else cluster.followers()[0]
    label = "leader" if keep_leader else "follower"
    before = {key: alone.get(key)[0] for key in keys}
    revision_before = alone.get(b"none")[1]
    kv = alone.kv()
    for member in cluster.members:
        if member is not alone:
            member.sigstop()
    harness.log("%s %s left alone (others SIGSTOPped)" % (label, alone.name))
    calls, puts, seen = [], [], []
    try:
        for round_no in (0, 1):
            if round_no == 1:
                wait_no_leader(alone)
                harness.log("%s reports no leader" % alone.name)
            key = keys[round_no]
            new = b"new-%s-%d" % (label.encode(), round_no)
            puts.append((key, before[key].value, new))
            round_calls = [
                Call("round %d linearizable Range" % round_no, lambda key=key: kv.Range(
                    rpc_pb2.RangeRequest(key=key), timeout=CLIENT_DEADLINE)),
                Call("round %d Put" % round_no, lambda key=key, new=new: kv.Put(
                    rpc_pb2.PutRequest(key=key, value=new), timeout=CLIENT_DEADLINE))]
            if round_no == 1:
                round_calls += [
                    Call("round 1 Range with hasleader", lambda: kv.Range(
                        rpc_pb2.RangeRequest(key=keys[0]), timeout=CLIENT_DEADLINE,
                        metadata=REQUIRE_LEADER)),
                    Call("round 1 Put with hasleader", lambda: kv.Put(
                        rpc_pb2.PutRequest(key=b"never", value=b"x"), timeout=CLIENT_DEADLINE,
                        metadata=REQUIRE_LEADER))]
            for call in round_calls:
                call.start()
            calls += round_calls
            started = time.monotonic()
            resp = kv.Range(rpc_pb2.RangeRequest(key=key, serializable=True), timeout=5)
            check(time.monotonic() - started < 2 and resp.kvs and
                  resp.kvs[0] == before[key] and resp.header.revision == revision_before,
                  "round %d: serializable Range of %s on %s %s gave %s (%.1fs), expected %s at "
                  "header revision %d" % (round_no, key, label, alone.name, resp,
                                          time.monotonic() - started, before[key],
                                          revision_before))
        for call in calls:
            call.join(CLIENT_DEADLINE + 5)
    finally:
        for member in cluster.members:
            member.sigcont()
    for call in calls:
        check(call.result is not None, "%s did not return" % call.name)
        seen.append("%s %s: %s" % (label, alone.name, call.describe()))
        harness.log(seen[-1])
        if call.name.endswith("hasleader"):
            expected = {NO_LEADER}
            check(call.seconds < 2, "%s took %.1fs (etcd answers at once)" % (call.name,
                                                                             call.seconds))
        elif call.name.endswith("Put"):
            expected = PUT_ERRORS
        else:
            expected = LINEARIZABLE_READ_ERRORS
        check(call.result[0] != "ok" and call.result in expected,
              "%s on %s %s cut off from the majority: %s; expected one of %s"
              % (call.name, label, alone.name, call.describe(),
                 sorted("%s %r" % e for e in expected)))
    return puts, seen


def check_recovered(cluster, puts):
    started = time.monotonic()
    cluster.wait_ready()
    harness.log("cluster recovered %.1fs after SIGCONT (leader %s)"
                % (time.monotonic() - started, cluster.leader().name))
    # a failed Put may still commit (from the old leader's log): sync, then compare
    cluster.leader().kv().Put(rpc_pb2.PutRequest(key=b"sync", value=b"x"), timeout=10)
    cluster.wait_applied_equal(timeout=20)
    for key, old, new in puts:
        values = {m.name: m.get(key, serializable=True)[0] for m in cluster.members}
        found = {kv.value if kv else None for kv in values.values()}
        check(len({(kv.value, kv.mod_revision) if kv else None for kv in values.values()}) == 1
              and found <= {old, new},
              "after recovery, key %s (old %r, failed Put of %r) is %s" % (key, old, new, values))
        harness.log("failed Put of %s: %s on every member" % (
            key.decode(), "applied" if found == {new} else "not applied"))
    revision = cluster.leader().get(b"none")[1]
    cluster.check_hashkv_equal(revision)
    for member in cluster.members:
        key = b"after/%s" % member.name.encode()
        resp = member.kv().Put(rpc_pb2.PutRequest(key=key, value=b"ok"), timeout=10)
        for other in cluster.members:
            kv, _ = other.get(key)
            check(kv is not None and kv.mod_revision == resp.header.revision,
                  "Put %s through %s after recovery: %s on %s" % (key, member.name, kv,
                                                                 other.name))


def main():
    with harness.Cluster(3) as cluster:
        all_seen = []
        for keep_leader in (True, False):
            label = b"leader" if keep_leader else b"follower"
            keys = [b"min/%s/%d" % (label, n) for n in (0, 1)]
            for key in keys:
                cluster.leader().kv().Put(rpc_pb2.PutRequest(key=key, value=b"old"), timeout=10)
            puts, seen = cut_off(cluster, keep_leader, keys)
            all_seen += seen
            check_recovered(cluster, puts)
        print("ANSWERS minority:\n  " + "\n  ".join(all_seen))


if __name__ == "__main__":
    harness.run(main)
