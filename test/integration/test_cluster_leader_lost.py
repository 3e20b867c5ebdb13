"""A write whose leader steps down before the write commits waits for the next leader.

On a 2-member cluster the follower is SIGSTOPped and a Put is sent to the
leader: the leader appends it to its log but cannot commit it (no quorum).
Once an election timeout passes without word from the follower, the leader
steps down (its Status names no leader), with the Put still waiting.  Then
the follower is continued.  Whoever wins the next election needs the old
leader's vote, so its log holds the Put's entry and it commits the entry.

etcd 3.4.23 answers such a Put once the entry is applied: a proposal waits
for its apply until the request timeout (5 s + 2 election timeouts), whatever
happens to the leader meanwhile.  So the Put must succeed, and the key must
be read back at the Put's revision from both members.  (Ballast used to fail
the Put with "etcdserver: request timed out" the moment its leader stepped
down, although the write was then committed: a client saw an error for a
write that took effect.)
"""

import threading
import time

import grpc

import harness
from harness import check, rpc_pb2

# a short election timeout keeps the whole story well inside the request
# timeout (5 s + 2 x 0.5 s)
TIMING = ["--heartbeat-interval", "50", "--election-timeout", "500"]
STEP_DOWN_BOUND = 10.0 * harness.TIME_SCALE


def main():
    with harness.Cluster(2, extra_args=TIMING) as cluster:
        leader = cluster.leader()
        follower = cluster.followers()[0]
        leader.kv().Put(rpc_pb2.PutRequest(key=b"before", value=b"0"), timeout=10)
        follower.sigstop()
        result = {}

        def put():
            started = time.monotonic()
            try:
                result["resp"] = leader.kv().Put(rpc_pb2.PutRequest(key=b"k", value=b"v"),
                                                 timeout=20)
            except grpc.RpcError as exc:
                result["error"] = (exc.code(), exc.details())
            result["seconds"] = time.monotonic() - started

        caller = threading.Thread(target=put, daemon=True)
        caller.start()
        deadline = time.monotonic() + STEP_DOWN_BOUND
        while time.monotonic() < deadline and leader.status(timeout=2).leader == leader.member_id:
            time.sleep(0.05)
        check(leader.status(timeout=2).leader != leader.member_id,
              "%s still leads %.0fs after its only follower was SIGSTOPped"
              % (leader.name, STEP_DOWN_BOUND))
        check(caller.is_alive(), "the Put was answered before its leader stepped down: %r"
              % result)
        harness.log("%s stepped down with the Put waiting" % leader.name)
        follower.sigcont()
        caller.join(30)
        check(not caller.is_alive(), "the Put got no answer in 30 s")
        check("resp" in result, "the Put failed after its leader stepped down and the follower "
              "came back: %r (etcd answers it once the next leader commits it)" % (result,))
        revision = result["resp"].header.revision
        harness.log("the Put succeeded at revision %d after %.1fs" % (revision, result["seconds"]))
        for member in cluster.members:
            deadline = time.monotonic() + 10
            while True:
                kv, _ = member.get(b"k", serializable=True)
                if (kv is not None and kv.mod_revision == revision) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            check(kv is not None and kv.value == b"v" and kv.mod_revision == revision,
                  "%s has %s for the key, expected v at revision %d" % (member.name, kv, revision))
        harness.log("both members hold the write at revision %d" % revision)


if __name__ == "__main__":
    harness.run(main)
