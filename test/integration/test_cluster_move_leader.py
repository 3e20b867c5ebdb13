"""etcdctl move-leader hands leadership over as on etcd, with etcd's errors.

On a 3-member cluster, with clients writing in the background:
  - `etcdctl --endpoints <all> move-leader <follower id>` prints "Leadership
    transferred from <leader> to <follower>" and exits 0; Status on every
    member then names that follower; the background writes go on (each
    acknowledged Put is on every member at the end, HashKV equal; a Put that
    failed around the hand-over is there with its value or not at all);
  - moving it again to the member that now leads is a success that changes
    nothing, as on etcd;
  - Maintenance.MoveLeader sent to a follower fails with FAILED_PRECONDITION
    "etcdserver: not leader" (etcdctl sends it to the leader it finds);
  - a target that is not a member fails with "etcdserver: bad leader
    transferee" (FAILED_PRECONDITION), stdout/stderr and exit code as etcd's.
"""

import re
import threading

import grpc

import harness
from harness import check, rpc_pb2


def main():
    with harness.Cluster(3) as cluster:
        leader = cluster.leader()
        target = [m for m in cluster.followers()][0]
        check(target.member_id, "no member id for %s" % target)
        stop = threading.Event()
        writer = harness.ClusterWriter(cluster.members, b"ml/", stop, max_seconds=30)
        writer.start()
        try:
            out = cluster.etcdctl("move-leader", "%x" % target.member_id)
            check(out.returncode == 0, "move-leader failed: %s %s" % (out.stdout, out.stderr))
            expected = "Leadership transferred from %x to %x" % (leader.member_id, target.member_id)
            check(re.fullmatch(re.escape(expected) + r"\s*", out.stdout),
                  "move-leader printed %r, expected %r" % (out.stdout, expected))
            now = cluster.leader(timeout=10)
            check(now is target, "after move-leader the leader is %s, not %s" % (now.name, target.name))
            harness.log("move-leader: %s" % out.stdout.strip())

            again = cluster.etcdctl("move-leader", "%x" % target.member_id)
            check(again.returncode == 0 and cluster.leader() is target,
                  "move-leader to the leader itself: exit %d %r %r, leader %s"
                  % (again.returncode, again.stdout, again.stderr, cluster.leader().name))

            follower = [m for m in cluster.members if m is not target][0]
            try:
                follower.maintenance().MoveLeader(
                    rpc_pb2.MoveLeaderRequest(targetID=leader.member_id), timeout=10)
                check(False, "MoveLeader on follower %s succeeded" % follower.name)
            except grpc.RpcError as exc:
                check((exc.code(), exc.details()) ==
                      (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader"),
                      "MoveLeader on a follower: %s %r" % (exc.code(), exc.details()))

            bad = cluster.etcdctl("move-leader", "1234abcd")
            check(bad.returncode != 0 and "etcdserver: bad leader transferee" in bad.stderr,
                  "move-leader to a non-member: exit %d %r %r" % (bad.returncode, bad.stdout,
                                                                  bad.stderr))
            harness.log("non-member target: exit %d, %s" % (bad.returncode, bad.stderr.strip().splitlines()[-1]))
        finally:
            stop.set()
            writer.join(30)
        cluster.wait_applied_equal(timeout=20)
        harness.check_acked_on_members(cluster.members, b"ml/", writer.acked,
                                       uncertain=writer.uncertain)
        revision = leader.kv().Range(rpc_pb2.RangeRequest(key=b"ml/"), timeout=10).header.revision
        cluster.check_hashkv_equal(revision)
        harness.log("%d background Puts acknowledged (%d failed around the hand-over), on every "
                    "member; HashKV equal" % (len(writer.acked), len(writer.errors)))


if __name__ == "__main__":
    harness.run(main)
