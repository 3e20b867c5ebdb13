"""One follower of a 3-member cluster runs out of disk: the cluster keeps
serving, the follower stops cleanly (or NOSPACE is raised), and once space
returns it catches up with every acknowledged write.

The third member's data dir is on a 640 MiB tmpfs where a filler leaves
160 MiB free; it is made a follower (move-leader if it was elected).
8 clients Put 32 KiB values through the two other members until the
follower stops (or raises NOSPACE), and go on for 5 s more:
  1. the follower stopped with a status > 0 and a "no space left" line in
     its log (or NOSPACE was raised);
  2. Puts through the two others were acknowledged after it stopped;
  3. the filler is removed and the follower restarted: every member
     reaches the same applied index; every acknowledged Put is on each
     member (serializable reads) with its value and mod_revision; HashKV
     at that revision is equal on all three; a Put through the follower
     works.
Needs root (mount); skips otherwise.
"""

import os
import time

import disk_fault
from disk_fault import MIB, check, harness, rpc_pb2

# Room once the filler is gone: the follower may fetch the leader's whole
# store (two copies of every 32 KiB value until compaction, ~240 MiB after a
# slow run's 3,700 Puts) next to its own; 320 MiB was seen to run out then.
TMPFS_MIB = 640
FREE_AT_START = 160 * MIB
FILL_TIMEOUT = 180.0
WRITE_ON_SECONDS = 5.0


def make_follower(cluster, member):
    """Moves leadership away from `member` if it leads."""
    leader = cluster.leader()
    if leader is not member:
        return
    other = next(m for m in cluster.members if m is not member)
    other.status()
    res = cluster.etcdctl("move-leader", "%x" % other.member_id, members=[member])
    check(res.returncode == 0, "move-leader failed: %s%s" % (res.stdout, res.stderr))
    deadline = time.monotonic() + 30
    while cluster.leader() is member:
        check(time.monotonic() < deadline, "%s is still the leader after move-leader" % member)
        time.sleep(0.1)


def main():
    disk_fault.require_root()
    tmpfs = disk_fault.Tmpfs(TMPFS_MIB)
    cluster = harness.Cluster(3)
    victim = cluster.members[2]
    others = cluster.members[:2]
    try:
        victim.data_dir = os.path.join(tmpfs.path, "data")
        os.mkdir(victim.data_dir, 0o700)
        tmpfs.fill_to(FREE_AT_START)
        cluster.start()
        make_follower(cluster, victim)
        harness.log("%s (a follower) on a %d MiB tmpfs with %d MiB free; leader %s"
                    % (victim.name, TMPFS_MIB, tmpfs.free_bytes() // MIB, cluster.leader().name))

        writers = disk_fault.Writers(others, b"cfull/").start()
        started = time.monotonic()
        outcome = None
        while outcome is None:
            check(time.monotonic() - started < FILL_TIMEOUT,
                  "after %.0fs of writes %s neither stopped nor raised NOSPACE (%d MiB free)"
                  % (FILL_TIMEOUT, victim.name, tmpfs.free_bytes() // MIB))
            if victim.proc.poll() is not None:
                outcome = "stopped"
            elif len(writers.errors) > 20:
                try:
                    active = disk_fault.alarms(others[0])
                except Exception:
                    active = []
                if any(kind == rpc_pb2.AlarmType.Value("NOSPACE") for _, kind in active):
                    outcome = "alarm"
            time.sleep(0.05)
        full_at = time.monotonic()
        acked_when_full = writers.acked_count()
        harness.log("%s %s after %.1fs of writes, %d Puts acknowledged"
                    % (victim.name, outcome, full_at - started, acked_when_full))
        time.sleep(WRITE_ON_SECONDS)
        writers.stop()
        after = [t for _, _, t in writers.acked if t > full_at]
        harness.log("%d more Puts acknowledged in the %.0fs after that (%d failed in all)"
                    % (len(after), WRITE_ON_SECONDS, len(writers.uncertain)))
        if outcome == "stopped":
            status = victim.proc.returncode
            line = disk_fault.NO_SPACE_LINE.search(victim.log_tail(20000))
            check(status > 0, "%s died from signal %d when its disk filled (a crash, not a "
                  "clean stop):\n%s" % (victim.name, -status, victim.log_tail()))
            check(line, "%s exited with status %d but its log does not say the disk is full:"
                  "\n%s" % (victim.name, status, victim.log_tail()))
            harness.log("%s stopped with status %d: %s" % (victim.name, status,
                                                          line.group(0).strip()))
            check(after, "no Put was acknowledged by the two other members after %s stopped"
                  % victim.name)
        else:
            check(after or writers.errors, "writes neither went on nor failed after NOSPACE")
            victim.stop()

        tmpfs.remove_fillers()
        freed = time.monotonic()
        victim.start()
        applied = cluster.wait_applied_equal(timeout=120)
        catch_up = time.monotonic() - freed
        if outcome == "alarm":
            res = cluster.etcdctl("alarm", "disarm")
            check(res.returncode == 0, "alarm disarm failed: %s%s" % (res.stdout, res.stderr))
        for member in cluster.members:
            disk_fault.check_acked(member, writers, serializable=True)
        revision = victim.get(b"cfull/", serializable=True)[1]
        hashes = cluster.check_hashkv_equal(revision)
        harness.log("space freed: %s serving and caught up (applied index %d) %.2fs later; all "
                    "%d acknowledged Puts on every member; HashKV at %d equal: %s"
                    % (victim.name, applied, catch_up, len(writers.acked), revision, hashes))
        resp = victim.kv().Put(rpc_pb2.PutRequest(key=b"after", value=b"v"), timeout=10)
        top = max(rev for _, rev, _ in writers.acked)
        check(resp.header.revision > top, "a Put through %s got revision %d, not above %d"
              % (victim.name, resp.header.revision, top))
    finally:
        cluster.stop()
        tmpfs.keep_copy(victim.data_dir, os.path.join(victim.work_dir, "data-from-tmpfs"))
        tmpfs.close()


if __name__ == "__main__":
    harness.run(main)
