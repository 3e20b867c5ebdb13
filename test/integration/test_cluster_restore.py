"""A snapshot of a 3-member cluster restored into a new 3-member cluster.

Cluster A (3 members) gets keys, a leased key and a compaction; `etcdctl
snapshot save` is taken from a follower, A's HashKV is recorded and A is
stopped.  Every member of a new cluster B (other ports, names and token) is
restored from the file with the restore tool (`ballast snapshot restore`, or
`etcdctl snapshot restore` for etcd) and its own --name, --initial-cluster,
--initial-cluster-token and --initial-advertise-peer-urls, then B starts:
  - `member list` shows B's three members, none of A's;
  - every key is on every member of B with A's value and mod_revision, the
    lease still holds its key, and HashKV at A's revision equals A's;
  - a new Put gets the next revision and is seen on every member.
"""

import os

import harness
from harness import check, rpc_pb2

KEYS = 300


def restore_command(kind, file, member):
    args = ["--data-dir", member.data_dir, "--name", member.name,
            "--initial-cluster", member.initial_cluster,
            "--initial-cluster-token", member.cluster.token,
            "--initial-advertise-peer-urls", member.peer_url]
    if kind == "etcd":
        return [harness.ETCDCTL_BIN, "snapshot", "restore", file] + args
    return [harness.ballast_binary(), "snapshot", "restore", file] + args


def main():
    work = harness.make_temp_dir("ballast-restore-")
    file = os.path.join(work, "snapshot.db")
    with harness.Cluster(3, name_prefix="a") as a:
        leader = a.leader()
        for n in range(KEYS):
            leader.kv().Put(rpc_pb2.PutRequest(key=b"r/%04d" % n, value=b"v%d" % n), timeout=10)
        for n in range(0, KEYS, 3):
            leader.kv().Put(rpc_pb2.PutRequest(key=b"r/%04d" % n, value=b"w%d" % n), timeout=10)
        grant = a.etcdctl("lease", "grant", "3600")
        check(grant.returncode == 0, "lease grant: %s" % grant.stderr)
        lease_id = grant.stdout.split()[1]
        check(a.etcdctl("put", "--lease=%s" % lease_id, "r/leased", "x").returncode == 0,
              "put --lease failed")
        revision = leader.kv().Range(rpc_pb2.RangeRequest(key=b"r/"), timeout=10).header.revision
        leader.kv().Compact(rpc_pb2.CompactionRequest(revision=revision - 50, physical=True),
                            timeout=30)
        a.wait_applied_equal(timeout=20)
        before, _ = harness.range_all(leader.kv(), b"r/")
        hash_a = a.hashkv(leader, revision)
        follower = a.followers()[0]
        saved = harness.etcdctl(follower.endpoint, "snapshot", "save", file, timeout=60)
        check(saved.returncode == 0, "snapshot save from %s: %s %s" % (follower.name, saved.stdout,
                                                                       saved.stderr))
        harness.log("cluster A: %d keys at revision %d, HashKV %s; %s"
                    % (len(before), revision, hash_a, saved.stdout.strip()))

    b = harness.Cluster(3, name_prefix="b")
    for member in b.members:
        os.rmdir(member.data_dir)            # the restore tool creates it
        res = harness.run_command(restore_command(b.kind, file, member), timeout=120)
        check(res.returncode == 0, "restore for %s failed (%d): %s %s"
              % (member.name, res.returncode, res.stdout, res.stderr))
    with b:
        listed = b.etcdctl("member", "list")
        check(listed.returncode == 0, "member list: %s" % listed.stderr)
        names = sorted(line.split(", ")[2] for line in listed.stdout.splitlines())
        check(names == ["b1", "b2", "b3"], "member list of B names %s:\n%s" % (names, listed.stdout))
        check(all(m.peer_url in listed.stdout for m in b.members),
              "member list of B lacks B's peer URLs:\n%s" % listed.stdout)
        b.wait_applied_equal(timeout=20)
        expected = {kv.key: (kv.value, kv.mod_revision) for kv in before}
        for member in b.members:
            got, _ = harness.range_all(member.kv(), b"r/", serializable=True)
            check({kv.key: (kv.value, kv.mod_revision) for kv in got} == expected,
                  "%s does not hold A's %d keys as they were (%d keys)" % (member.name,
                                                                            len(expected), len(got)))
        ttl = b.etcdctl("lease", "timetolive", "--keys", lease_id)
        check(ttl.returncode == 0 and "r/leased" in ttl.stdout, "restored lease %s: %s %s"
              % (lease_id, ttl.stdout, ttl.stderr))
        hashes = b.check_hashkv_equal(revision)
        check(set(hashes.values()) == {hash_a}, "HashKV at revision %d: A %s, B %s"
              % (revision, hash_a, hashes))
        resp = b.leader().kv().Put(rpc_pb2.PutRequest(key=b"r/new", value=b"n"), timeout=10)
        check(resp.header.revision == revision + 1, "the first Put on B got revision %d, not %d"
              % (resp.header.revision, revision + 1))
        b.wait_applied_equal(timeout=20)
        for member in b.members:
            kv, _ = member.get(b"r/new", serializable=True)
            check(kv is not None and kv.value == b"n", "%s lacks the new Put" % member.name)
        harness.log("cluster B restored from A's snapshot: members %s, %d keys, lease %s, HashKV "
                    "equal to A's, next Put at revision %d" % (names, len(expected), lease_id,
                                                               resp.header.revision))


if __name__ == "__main__":
    harness.run(main)
