"""A torn or cut last raft segment after a crash (Ballast only: c-raft's
segment format).

Each case kills a member with SIGKILL, changes bytes of the last raft
segment that holds batches (the newest open segment: c-raft preallocates
it and writes batch after batch, each acknowledged once durable), then
starts the member again.  What is torn decides what is guaranteed:

  unsynced tail (single member, two variants): bytes are written AFTER the
      last whole batch, where the write in flight at a crash would land:
      half a copy of the last batch (its header whole, its data not), or
      4 KiB of random bytes.  No acknowledged entry is in them, so the
      member must start, drop exactly them (the segment is closed at the
      end of the last whole batch), keep every acknowledged Put (value and
      mod_revision), and take new Puts at higher revisions.
  synced tail destroyed (single member): the last 20 whole batches, written
      and applied before the kill (writers stopped first), are zeroed.
      Acknowledged entries are gone from the log while the store holds
      them: the sole voter must refuse to start, with a clear message,
      every time (before the fix it started, re-used the indexes and the
      store skipped them: new Puts acknowledged with revision 0, lost).
  cut (single member): the open segment file is cut in the middle of its
      last batch (shorter than preallocated).  The member must refuse to
      start with a clear message (c-raft 0.15 alone aborts: double free).
  follower (3 members): a follower is killed under writes through the two
      others and its last 20 whole batches are zeroed.  Those entries are
      committed on the others: it must start, catch up from its peers, hold
      every acknowledged Put, and HashKV must be equal on all three.
"""

import os
import time

import disk_fault
from disk_fault import check, harness, rpc_pb2

WRITE_SECONDS = 1.5
ZEROED_BATCHES = 20
REFUSE_TIMEOUT = 30.0


def raft_dir(server):
    return os.path.join(server.data_dir, "ballast", "raft")


def write_then_kill(server, prefix, stop_first):
    """Writers through `server` for WRITE_SECONDS, then SIGKILL (after
    stopping the writers if `stop_first`: every acknowledged entry then
    applied and idle)."""
    writers = disk_fault.Writers([server], prefix, value_size=256).start()
    time.sleep(WRITE_SECONDS)
    if stop_first:
        writers.stop()
        server.kill9()
    else:
        server.kill9()
        writers.stop()
    check(len(writers.acked) > 100, "only %d Puts acknowledged in %.1fs"
          % (len(writers.acked), WRITE_SECONDS))
    return writers


def open_segment(server):
    path, batches = disk_fault.last_written_segment(raft_dir(server))
    check(os.path.basename(path).startswith("open-"), "after kill -9 the last segment "
          "with batches is %s, not an open segment" % path)
    check(len(batches) > ZEROED_BATCHES, "%s has only %d batches" % (path, len(batches)))
    return path, batches


def rewrite(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def check_new_puts(server, writers):
    top = max(rev for _, rev, _ in writers.acked)
    for i in range(10):
        resp = server.kv().Put(rpc_pb2.PutRequest(key=b"new/%d" % i, value=b"v%d" % i),
                               timeout=10)
        check(resp.header.revision > top, "a new Put got revision %d, not above the last "
              "acknowledged %d" % (resp.header.revision, top))
        got = server.kv().Range(rpc_pb2.RangeRequest(key=b"new/%d" % i), timeout=10).kvs
        check(len(got) == 1 and got[0].mod_revision == resp.header.revision,
              "new Put %d (revision %d) is not stored: %s" % (i, resp.header.revision, got))


def unsynced_tail(variant):
    srv = harness.Server().start()
    writers = write_then_kill(srv, b"u/", stop_first=False)
    path, batches = open_segment(srv)
    start, end, _ = batches[-1]
    if variant == "half batch":
        with open(path, "rb") as f:
            f.seek(start)
            torn = f.read((end - start) // 2)
    else:
        torn = os.urandom(4096)
    rewrite(path, end, torn)
    srv.start()
    disk_fault.check_acked(srv, writers)
    closed, _ = disk_fault.segment_files(raft_dir(srv))
    sizes = {name: os.path.getsize(os.path.join(raft_dir(srv), name)) for name in closed}
    check(end in sizes.values(), "no closed segment ends at byte %d, where the torn bytes "
          "began (closed segments: %s)" % (end, sizes))
    check_new_puts(srv, writers)
    harness.log("unsynced tail (%s, %d bytes after the last of %d batches of %s): starts, "
                "segment closed at byte %d, all %d acknowledged Puts there"
                % (variant, len(torn), len(batches), os.path.basename(path), end,
                   len(writers.acked)))
    srv.stop()


def expect_refusal(srv, words, what):
    for attempt in (1, 2):
        offset = disk_fault.log_size(srv)
        srv.start(wait=False)
        status = disk_fault.wait_exit(srv, REFUSE_TIMEOUT)
        text = disk_fault.log_since(srv, offset)
        if status is None:
            srv.stop()
        check(status is not None and status > 0 and words in text,
              "start %d after %s: expected a refusal saying %r, got %s; log:\n%s"
              % (attempt, what, words, "a running member" if status is None else
                 "exit status %d" % status, text[-3000:]))
    line = next(l for l in text.splitlines() if words in l)
    harness.log("%s: refused twice: %s" % (what, line.strip()))


def synced_tail_destroyed():
    srv = harness.Server().start()
    write_then_kill(srv, b"s/", stop_first=True)
    path, batches = open_segment(srv)
    start = batches[-ZEROED_BATCHES][0]
    rewrite(path, start, bytes(batches[-1][1] - start))
    expect_refusal(srv, "entries are missing from the log",
                   "last %d batches of %s zeroed" % (ZEROED_BATCHES, os.path.basename(path)))


def cut_segment():
    srv = harness.Server().start()
    write_then_kill(srv, b"c/", stop_first=False)
    path, batches = open_segment(srv)
    start, end, _ = batches[-1]
    with open(path, "r+b") as f:
        f.truncate((start + end) // 2)
    expect_refusal(srv, "is cut inside a batch",
                   "%s cut at byte %d (inside its last batch)" % (os.path.basename(path),
                                                                (start + end) // 2))


def follower_destroyed_tail():
    with harness.Cluster(3) as cluster:
        leader = cluster.leader()
        victim = next(m for m in cluster.members if m is not leader)
        others = [m for m in cluster.members if m is not victim]
        writers = disk_fault.Writers(others, b"f/", value_size=256).start()
        time.sleep(WRITE_SECONDS)
        victim.kill9()
        path, batches = open_segment(victim)
        start = batches[-ZEROED_BATCHES][0]
        rewrite(path, start, bytes(batches[-1][1] - start))
        time.sleep(WRITE_SECONDS)
        restarted = time.monotonic()
        victim.start()
        writers.stop()
        cluster.wait_applied_equal(timeout=60)
        caught_up = time.monotonic() - restarted
        for member in cluster.members:
            disk_fault.check_acked(member, writers, serializable=True)
        revision = victim.get(b"f/", serializable=True)[1]
        cluster.check_hashkv_equal(revision)
        harness.log("follower %s with its last %d batches zeroed: caught up %.2fs after its "
                    "start; all %d acknowledged Puts on every member; HashKV at %d equal"
                    % (victim.name, ZEROED_BATCHES, caught_up, len(writers.acked), revision))


def main():
    harness.skip_unless_ballast("the test tears c-raft's segment files (etcd has a WAL)")
    for variant in ("half batch", "random bytes"):
        unsynced_tail(variant)
    synced_tail_destroyed()
    cut_segment()
    follower_destroyed_tail()


if __name__ == "__main__":
    harness.run(main)
