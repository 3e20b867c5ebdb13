"""`etcdctl snapshot save` from Ballast and `ballast snapshot restore`.

- `etcdctl snapshot save FILE` exits 0 and prints what it prints against
  etcd; the file's length is 32 past a multiple of 512 (etcdctl's SHA-256
  check); a store of ~3 MiB goes over in many 32 KiB messages, and a raw
  Snapshot stream carries remaining_bytes counting down to 0.
- `ballast snapshot restore FILE --data-dir DIR --name --initial-cluster
  --initial-cluster-token --initial-advertise-peer-urls` makes a data
  directory that `ballast` with the same flags serves as a new one-member
  cluster: every key with its create/mod revisions and version, the
  history above the compact revision, the compact revision, the lease with
  its key, the same HashKV; new writes continue at the next revision; a
  restart keeps everything.
- A second restore into the same directory fails like etcdctl's; a
  corrupted or truncated file is refused and leaves no data directory.
"""

import os
import re

import grpc

import harness
from harness import Failures, check, rpc_pb2
from etcd3.etcdrpc import rpc_pb2_grpc


def fill(srv):
    kv = srv.kv()
    for i in range(300):
        kv.Put(rpc_pb2.PutRequest(key=b"big/%03d" % i, value=os.urandom(5000).hex().encode()),
               timeout=10)
    for i in range(200):
        kv.Put(rpc_pb2.PutRequest(key=b"k/%02d" % (i % 40), value=b"v%d" % i), timeout=10)
    kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"k/05", range_end=b"k/10"), timeout=10)
    rev = kv.Range(rpc_pb2.RangeRequest(key=b"x"), timeout=10).header.revision
    kv.Compact(rpc_pb2.CompactionRequest(revision=rev - 50, physical=True), timeout=30)
    lease = rpc_pb2_grpc.LeaseStub(srv.channel()).LeaseGrant(
        rpc_pb2.LeaseGrantRequest(TTL=600), timeout=10)
    kv.Put(rpc_pb2.PutRequest(key=b"leased", value=b"l", lease=lease.ID), timeout=10)
    return rev - 50, lease.ID


def state(srv, compact_rev):
    """What a client can read: all keys, the history above the compact
    revision, and HashKV at a few revisions."""
    kv = srv.kv()
    cur = kv.Range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0"), timeout=30)
    out = {"rev": cur.header.revision,
           "kvs": [(k.key, k.value, k.create_revision, k.mod_revision, k.version, k.lease)
                   for k in cur.kvs]}
    for rev in range(compact_rev, cur.header.revision + 1, 13):
        r = kv.Range(rpc_pb2.RangeRequest(key=b"k/", range_end=b"k0", revision=rev), timeout=10)
        out["at%d" % rev] = [(k.key, k.value, k.mod_revision) for k in r.kvs]
    for rev in (0, compact_rev + 1, cur.header.revision):
        h = srv.maintenance().HashKV(rpc_pb2.HashKVRequest(revision=rev), timeout=10)
        out["hashkv%d" % rev] = (h.hash, h.compact_revision)
    try:
        kv.Range(rpc_pb2.RangeRequest(key=b"k/", revision=compact_rev - 1), timeout=10)
        out["compacted"] = False
    except grpc.RpcError as exc:
        out["compacted"] = (exc.code(), exc.details())
    return out


def restore(data_dir, file, name, peer_url, extra=()):
    return harness.run_command(
        [harness.ballast_binary(), "snapshot", "restore", file, "--data-dir", data_dir,
         "--name", name, "--initial-cluster", "%s=%s" % (name, peer_url),
         "--initial-cluster-token", "restored", "--initial-advertise-peer-urls", peer_url]
        + list(extra), timeout=120)


def main():
    harness.skip_unless_ballast("a Ballast snapshot and `ballast snapshot restore`")
    failures = Failures()
    work = harness.make_temp_dir("ballast-snap-")
    file = os.path.join(work, "snap.db")

    with harness.Server(kind="etcd", name="ref") as ref:
        ref_file = os.path.join(work, "etcd.db")
        want = ref.etcdctl("snapshot", "save", ref_file)

    src = harness.Server(name="src")
    with src:
        compact_rev, lease_id = fill(src)
        before = state(src, compact_rev)
        got = src.etcdctl("snapshot", "save", file)
        failures.check(got.returncode == want.returncode == 0 and
                       got.stdout.replace(file, "F") == want.stdout.replace(ref_file, "F"),
                       "snapshot save: etcd %r, ballast %r (stderr %s)"
                       % (want.stdout, got.stdout, got.stderr[-2000:]))
        size = os.path.getsize(file)
        failures.check(size % 512 == 32 and size > 3 * 1024 * 1024,
                       "snapshot file of %d bytes (want > 3 MiB, 32 past a multiple of 512)" % size)
        # the raw stream: 32 KiB blobs, remaining_bytes ending at 0
        stream = src.maintenance().Snapshot(rpc_pb2.SnapshotRequest(), timeout=60)
        msgs = [(len(m.blob), m.remaining_bytes) for m in stream]
        failures.check(len(msgs) > 90 and all(n == 32768 for n, _ in msgs[:-2]) and
                       msgs[-1] == (32, 0) and msgs[-2][1] == 0 and
                       all(r > 0 for _, r in msgs[:-2]) and sum(n for n, _ in msgs) == size,
                       "Snapshot stream: %d messages, first %s, last %s" % (len(msgs), msgs[:2], msgs[-3:]))
        # a second stream started mid-way and cancelled does not disturb the server
        stream = src.maintenance().Snapshot(rpc_pb2.SnapshotRequest(), timeout=60)
        next(stream)
        stream.cancel()
        src.kv().Put(rpc_pb2.PutRequest(key=b"after-snapshot", value=b"1"), timeout=10)

    # restore into a new one-member cluster and serve it
    dst = harness.Server(name="restored")
    os.rmdir(dst.data_dir)
    res = restore(dst.data_dir, file, dst.name, dst.peer_url)
    check(res.returncode == 0, "snapshot restore failed (%d): %s" % (res.returncode, res.stderr))
    again = restore(dst.data_dir, file, dst.name, dst.peer_url)
    failures.check(again.returncode == 1 and
                   again.stderr.strip() == 'Error: data-dir "%s" exists' % dst.data_dir,
                   "restore into an existing dir: %d %r" % (again.returncode, again.stderr))
    dst.extra_args = ["--initial-cluster-token", "restored"]
    with dst:
        after = state(dst, compact_rev)
        for key in before:
            failures.check(before[key] == after.get(key),
                           "restored %s differs: %r vs %r" % (key, str(before[key])[:300],
                                                              str(after.get(key))[:300]))
        ttl = rpc_pb2_grpc.LeaseStub(dst.channel()).LeaseTimeToLive(
            rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=True), timeout=10)
        failures.check(ttl.grantedTTL == 600 and list(ttl.keys) == [b"leased"],
                       "restored lease: %s" % ttl)
        put = dst.kv().Put(rpc_pb2.PutRequest(key=b"new", value=b"1"), timeout=10)
        failures.check(put.header.revision == before["rev"] + 1,
                       "first write after restore at revision %d, want %d"
                       % (put.header.revision, before["rev"] + 1))
        status = dst.etcdctl("endpoint", "status", "-w", "json")
        failures.check(status.returncode == 0 and '"raftAppliedIndex"' in status.stdout,
                       "endpoint status after restore: %s" % status.stderr)
        dst.stop()
        dst.start()
        got = dst.kv().Range(rpc_pb2.RangeRequest(key=b"new"), timeout=10)
        failures.check(len(got.kvs) == 1 and got.kvs[0].mod_revision == before["rev"] + 1 and
                       got.header.revision == before["rev"] + 1,
                       "after a restart: %s" % got)
        failures.check(state(dst, compact_rev)["kvs"][:-1] == [k for k in after["kvs"]],
                       "keys changed across a restart of the restored member")

    # a damaged file is refused and leaves no data directory
    with open(file, "rb") as f:
        data = bytearray(f.read())
    bad_dir = os.path.join(work, "bad")
    for what, blob in (("truncated", data[: len(data) // 2]),
                       ("corrupted", data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])):
        bad = os.path.join(work, what + ".db")
        with open(bad, "wb") as f:
            f.write(blob)
        res = restore(bad_dir, bad, "x", "http://127.0.0.1:1")
        failures.check(res.returncode == 1 and "Error: cannot restore" in res.stderr and
                       not os.path.exists(bad_dir),
                       "%s snapshot: exit %d, stderr %r, dir left: %s"
                       % (what, res.returncode, res.stderr, os.path.exists(bad_dir)))
    res = harness.run_command([harness.ballast_binary(), "snapshot", "restore", file,
                               "--data-dir", bad_dir, "--bogus", "1"])
    failures.check(res.returncode == 2 and re.search("unknown flag", res.stderr),
                   "unknown restore flag: %d %r" % (res.returncode, res.stderr))
    failures.raise_if_any()


if __name__ == "__main__":
    harness.run(main)
