"""etcd's strict reconfiguration check, and removing the leader.

On a 3-member cluster with one follower stopped:
  - `member add` of a voter is refused with etcd's "etcdserver: unhealthy
    cluster" (etcd wants every voter connected before it adds one);
  - so is `member add --learner` (etcd wants every voter connected for any
    add);
  - removing the stopped member is accepted (two started of two), after
    which a learner can be added and removed.
Then the leader itself is removed: the remaining member leads, takes writes,
lists one member, and the removed one stops by itself.
"""

import time

import harness
from harness import check, rpc_pb2

UNHEALTHY = "etcdserver: unhealthy cluster"


def etcdctl_ok(cluster, members, *args):
    res = cluster.etcdctl(*args, members=members)
    check(res.returncode == 0, "etcdctl %s failed (%d): %s %s" % (" ".join(args), res.returncode,
                                                                 res.stdout, res.stderr))
    return res


def main():
    with harness.Cluster(3) as cluster:
        stopped = cluster.followers()[0]
        stopped.status()
        stopped.stop()
        alive = [m for m in cluster.members if m is not stopped]
        time.sleep(2.3)              # just past two election timeouts: the leader misses it
        spare = harness.free_port()
        res = cluster.etcdctl("member", "add", "x4", "--peer-urls=http://127.0.0.1:%d" % spare,
                              members=alive)
        check(res.returncode != 0 and res.stderr.strip().endswith("Error: " + UNHEALTHY),
              "member add of a voter with 1 of 3 stopped: exit %d %r %r (expected %r)"
              % (res.returncode, res.stdout, res.stderr, UNHEALTHY))
        harness.log("voter add with a member stopped: %s" % res.stderr.strip().splitlines()[-1])

        res = cluster.etcdctl("member", "add", "x4", "--learner",
                              "--peer-urls=http://127.0.0.1:%d" % spare, members=alive)
        check(res.returncode != 0 and res.stderr.strip().endswith("Error: " + UNHEALTHY),
              "member add of a learner with 1 of 3 stopped: exit %d %r %r (expected %r)"
              % (res.returncode, res.stdout, res.stderr, UNHEALTHY))
        harness.log("learner add with a member stopped: refused the same way")

        etcdctl_ok(cluster, alive, "member", "remove", "%x" % stopped.member_id)
        cluster.members.remove(stopped)
        cluster.removed.append(stopped)
        listed = etcdctl_ok(cluster, alive, "member", "list").stdout
        check(len(listed.splitlines()) == 2, "member list after removing the stopped member:\n%s"
              % listed)
        harness.log("the stopped member removed: 2 members")
        # etcd wants its voters connected for 5 s after a change: it answers
        # "unhealthy cluster" until then
        deadline = time.monotonic() + 15
        while True:
            added = cluster.etcdctl("member", "add", "x4", "--learner",
                                    "--peer-urls=http://127.0.0.1:%d" % spare, members=alive)
            if added.returncode == 0 or time.monotonic() > deadline or \
                    not added.stderr.strip().endswith(UNHEALTHY):
                break
            time.sleep(0.5)
        check(added.returncode == 0, "member add --learner with every voter up: %s %s"
              % (added.stdout, added.stderr))
        learner_id = added.stdout.split()[1]
        etcdctl_ok(cluster, alive, "member", "remove", learner_id)
        harness.log("with every voter up, a learner added and removed")

        leader = cluster.leader()
        leader_id = leader.member_id
        other = [m for m in alive if m is not leader][0]
        etcdctl_ok(cluster, alive, "member", "remove", "%x" % leader_id)
        deadline = time.monotonic() + 15
        while leader.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        check(not leader.running(), "removed leader %s still runs after 15s" % leader.name)
        leader.stop()
        cluster.members.remove(leader)
        cluster.removed.append(leader)
        now = cluster.leader(timeout=15)
        check(now is other, "after removing the leader, %s leads, not %s" % (now.name, other.name))
        resp = other.kv().Put(rpc_pb2.PutRequest(key=b"after", value=b"1"), timeout=10)
        kv, _ = other.get(b"after")
        check(kv is not None and kv.mod_revision == resp.header.revision, "Put after removal lost")
        listed = etcdctl_ok(cluster, [other], "member", "list").stdout
        check(len(listed.splitlines()) == 1 and ("%x" % leader_id) not in listed,
              "member list after removing the leader:\n%s" % listed)
        harness.log("leader %s removed: it stopped by itself, %s leads alone and takes writes"
                    % (leader.name, other.name))


if __name__ == "__main__":
    harness.run(main)
