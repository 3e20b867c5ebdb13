"""Members join as learners, get promoted, are removed and move, under write load.

A 3-member cluster (each member also listening on a spare peer port) gets
PRE_KEYS keys, then WRITERS clients Put unique keys through the 3 members in
the background for the whole test, while:
  - `etcdctl member add m4 --peer-urls=... --learner`, and m4 starts with
    --initial-cluster-state existing and the --initial-cluster etcdctl
    printed; `member list -w json` shows it as a learner; it catches up (its
    serializable reads return every key written before it joined); a
    linearizable Range on it fails with UNAVAILABLE "etcdserver: rpc not
    supported for learner" (etcd 3.4 learners serve only serializable Range
    and Status);
  - `etcdctl member promote` (retried while etcd answers "can only promote a
    learner member which is in sync with leader") prints "Member ID promoted";
    `member list` then shows 4 voters, and m4 serves linearizable reads;
  - `etcdctl member remove` of m4 prints "Member ID removed"; the member list
    shows 3 (m4 is stopped; etcd stops a removed member by itself);
  - `etcdctl member update` gives a follower its spare peer URL: member list
    shows it.  This needs no restart because the member already listens on
    both peer ports (`--listen-peer-urls` takes several URLs); to prove the
    others really use the new URL, the member is then restarted listening
    only on the new port and must rejoin.  (Moving to a port it does not
    listen on would cut it off until restarted: not done.)
At the end every acknowledged background Put (and every early key) is on all
3 members with its value and mod_revision, HashKV is equal, and `member list`
shows the 3 members with their peer URLs.
"""

import json
import threading
import time

import grpc

import harness
from harness import check, rpc_pb2

PRE_KEYS = 500
WRITERS = 4
WRITER_MAX_SECONDS = 80.0
CATCHUP_BOUND = 20.0
PROMOTE_BOUND = 30.0
NOT_IN_SYNC = "etcdserver: can only promote a learner member which is in sync with leader"


def member_list(cluster, members=None):
    res = cluster.etcdctl("member", "list", "-w", "json", members=members or cluster.live())
    check(res.returncode == 0, "member list failed: %s%s" % (res.stdout, res.stderr))
    return json.loads(res.stdout)["members"]


def check_listed(cluster, expected, bound=5.0):
    """`expected`: [(name, peer URL, learner)] in any order. MemberList is
    answered from the member's own applied state (etcd 3.4 too), and etcdctl
    may ask a member that has not applied the change yet: the list must show
    it within `bound` seconds."""
    want = sorted((name, (peer,), learner) for name, peer, learner in expected)
    deadline = time.monotonic() + bound
    while True:
        listed = member_list(cluster)
        got = sorted((m.get("name", ""), tuple(m.get("peerURLs", [])), bool(m.get("isLearner")))
                     for m in listed)
        if got == want:
            return listed
        check(time.monotonic() < deadline,
              "member list shows %s, expected %s (after %.0f s)" % (got, want, bound))
        time.sleep(0.1)


def wait_serves(member, prefix, count, bound):
    deadline = time.monotonic() + bound
    got = -1
    while time.monotonic() < deadline:
        try:
            got = len(harness.range_all(member.kv(), prefix, serializable=True, timeout=5)[0])
            if got == count:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise harness.TestFailure("%s serves %d of the %d keys under %s after %.0fs"
                              % (member, got, count, prefix, bound))


def promote(cluster, member):
    deadline = time.monotonic() + PROMOTE_BOUND
    tries = 0
    while True:
        tries += 1
        res = cluster.etcdctl("member", "promote", "%x" % member.member_id,
                              members=[m for m in cluster.live() if m is not member])
        if res.returncode == 0:
            check(res.stdout.startswith("Member %16x promoted in cluster " % member.member_id),
                  "member promote printed %r" % res.stdout)
            member.learner = False
            return tries
        check(NOT_IN_SYNC in res.stderr, "member promote failed: %s%s" % (res.stdout,
                                                                         res.stderr))
        check(time.monotonic() < deadline, "learner %s not promotable within %.0fs"
              % (member, PROMOTE_BOUND))
        time.sleep(0.5)


def main():
    with harness.Cluster(3, spare_peer_ports=True) as cluster:
        pre = []
        for n in range(PRE_KEYS):
            resp = cluster.leader().kv().Put(rpc_pb2.PutRequest(
                key=b"pre/%03d" % n, value=b"p%d" % n), timeout=10)
            pre.append((b"pre/%03d" % n, b"p%d" % n, resp.header.revision))
        stop = threading.Event()
        writers = [harness.ClusterWriter(list(cluster.members), b"bg/%d/" % w, stop, first=w,
                                         max_seconds=WRITER_MAX_SECONDS) for w in range(WRITERS)]
        for w in writers:
            w.start()
        try:
            # a learner joins
            m4 = cluster.add_member("m4", learner=True)
            wait_serves(m4, b"pre/", PRE_KEYS, CATCHUP_BOUND)
            try:
                m4.kv().Range(rpc_pb2.RangeRequest(key=b"pre/000"), timeout=5)
                raise harness.TestFailure("a linearizable Range on learner %s succeeded" % m4)
            except grpc.RpcError as exc:
                check((exc.code(), exc.details()) == (grpc.StatusCode.UNAVAILABLE,
                                                      "etcdserver: rpc not supported for learner"),
                      "linearizable Range on learner: %s %r" % (exc.code(), exc.details()))
            check_listed(cluster, [(m.name, m.peer_url, m is m4) for m in cluster.members])
            harness.log("learner %s (%x) started and serves the %d early keys"
                        % (m4.name, m4.member_id, PRE_KEYS))

            tries = promote(cluster, m4)
            check_listed(cluster, [(m.name, m.peer_url, False) for m in cluster.members])
            m4.wait_ready()
            cluster.leader()                 # all 4 agree on one
            harness.log("%s promoted (after %d tries); member list shows 4 voters"
                        % (m4.name, tries))

            res = cluster.remove_member(m4)
            check(res.stdout.startswith("Member %16x removed from cluster " % m4.member_id),
                  "member remove printed %r" % res.stdout)
            exited = False
            for _ in range(100):
                if not m4.running():
                    exited = True
                    break
                time.sleep(0.1)
            m4.stop()
            check_listed(cluster, [(m.name, m.peer_url, False) for m in cluster.members])
            harness.log("%s removed (%s); member list shows 3" % (
                m4.name, "it stopped by itself" if exited else "stopped by the test"))

            moved = cluster.followers()[0]
            res = cluster.etcdctl("member", "update", "%x" % moved.status().header.member_id,
                                  "--peer-urls=%s" % moved.spare_peer_url)
            check(res.returncode == 0 and res.stdout.startswith(
                "Member %16x updated in cluster " % moved.member_id),
                "member update failed (%d): %s%s" % (res.returncode, res.stdout, res.stderr))
            check_listed(cluster, [(m.name, m.spare_peer_url if m is moved else m.peer_url, False)
                                   for m in cluster.members])
            cluster.leader()
            moved.stop()
            moved.move_to_spare_peer_port()
            moved.start(wait=False)
            cluster.wait_ready()
            harness.log("%s moved to peer URL %s (member update), restarted listening only "
                        "there, and rejoined" % (moved.name, moved.peer_url))
        finally:
            stop.set()
            for w in writers:
                w.join(WRITER_MAX_SECONDS + 10)
        check(not any(w.is_alive() for w in writers), "a writer thread did not stop")
        check(all(w.acked for w in writers), "a background writer got no Put acknowledged")
        acked = [a for w in writers for a in w.acked]
        uncertain = [u for w in writers for u in w.uncertain]
        errors = sorted({"%s %s" % (e[2], e[3]) for w in writers for e in w.errors})
        cluster.leader().kv().Put(rpc_pb2.PutRequest(key=b"sync", value=b"x"), timeout=10)
        cluster.wait_applied_equal(timeout=20)
        harness.check_acked_on_members(cluster.members, b"bg/", acked, uncertain)
        harness.check_acked_on_members(cluster.members, b"pre/", pre)
        revision = cluster.leader().get(b"none")[1]
        cluster.check_hashkv_equal(revision)
        check_listed(cluster, [(m.name, m.peer_url, False) for m in cluster.members])
        harness.log("%d background Puts acknowledged (%d failed: %s), all on the 3 members; "
                    "HashKV equal at revision %d" % (len(acked), len(uncertain), errors,
                                                     revision))


if __name__ == "__main__":
    harness.run(main)
