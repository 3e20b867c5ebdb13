"""A 5-member cluster: writes on any member visible on all; it survives the
loss of two members (kill -9 of the leader, then of a follower) and they
catch up when restarted.

  - one Put through each of the five members; every member serves all five
    (serializable reads, after the applied indexes are equal);
  - kill -9 of the leader: the four others agree on a new leader within
    NEW_LEADER_BOUND;
  - kill -9 of a follower as well: 50 Puts through the three left (a
    quorum of five) all succeed;
  - both restarted: applied indexes equal, every acknowledged Put on all five,
    HashKV equal at the current revision; `etcdctl endpoint status` of all
    five names one leader.
"""

import time

import harness
from harness import check, rpc_pb2

NEW_LEADER_BOUND = 3.0


def main():
    cluster = harness.Cluster(5)
    with cluster:
        acked = []
        for i, member in enumerate(cluster.members):
            key = b"k/first/%d" % i
            resp = member.kv().Put(rpc_pb2.PutRequest(key=key, value=b"v%d" % i), timeout=10)
            acked.append((key, b"v%d" % i, resp.header.revision))
        cluster.wait_applied_equal(timeout=10)
        harness.check_acked_on_members(cluster.members, b"k/", acked)
        harness.log("a Put through each of the 5 members is on all 5")

        old_leader = cluster.leader()
        killed_at = time.monotonic()
        old_leader.kill9()
        others = [m for m in cluster.members if m is not old_leader]
        new_leader = cluster.leader(members=others, timeout=10)
        elapsed = time.monotonic() - killed_at
        check(elapsed <= NEW_LEADER_BOUND, "new leader after %.2fs (bound %.0fs)"
              % (elapsed, NEW_LEADER_BOUND))
        harness.log("leader %s killed; %s leads after %.2fs" % (old_leader.name, new_leader.name,
                                                                elapsed))

        follower = [m for m in others if m is not new_leader][0]
        follower.kill9()
        rest = [m for m in others if m is not follower]
        for i in range(50):
            key = b"k/three/%02d" % i
            resp = rest[i % len(rest)].kv().Put(rpc_pb2.PutRequest(key=key, value=b"x"),
                                                timeout=10)
            acked.append((key, b"x", resp.header.revision))
        harness.log("50 Puts through the 3 members left (%s)" % [m.name for m in rest])

        old_leader.start()
        follower.start()
        cluster.wait_applied_equal(timeout=20)
        harness.check_acked_on_members(cluster.members, b"k/", acked)
        revision = cluster.leader().kv().Range(rpc_pb2.RangeRequest(key=b"k/"),
                                               timeout=10).header.revision
        cluster.check_hashkv_equal(revision)
        out = harness.etcdctl(",".join(m.endpoint for m in cluster.members), "endpoint",
                              "status", "-w", "json")
        check(out.returncode == 0, "etcdctl endpoint status: %s" % out.stderr)
        leaders = {line for line in out.stdout.split('"leader":')[1:]}
        check(out.stdout.count('"Endpoint"') == 5, "endpoint status did not list 5 members:\n%s"
              % out.stdout)
        check(len({l.split(",")[0] for l in leaders}) == 1,
              "the members name different leaders:\n%s" % out.stdout)
        harness.log("both restarted; all %d Puts on all 5 members, HashKV at revision %d equal"
                    % (len(acked), revision))


if __name__ == "__main__":
    harness.run(main)
