"""A follower that falls far behind catches up (from a snapshot) and serves every key.

A 3-member cluster runs with --snapshot-count SNAPSHOT_COUNT (the number of
applied entries between two snapshots).  One follower is SIGSTOPped; 8
clients then Put unique keys through the two others for up to WRITE_SECONDS
or MAX_PUTS acknowledged Puts (at least MIN_PUTS: many snapshot counts).  The
follower gets SIGCONT and:
  - within CATCHUP_BOUND its serializable reads answer at the last
    acknowledged revision, and (after one more Put: etcd 3.4 reports the
    applied index of a snapshot only with the next entry) its applied index
    equals the leader's;
  - it serves every acknowledged Put (serializable reads) with its value and
    mod_revision, as do the two others;
  - HashKV at the current revision is the same on all three.

How etcd gets to send a snapshot: after each snapshot a member compacts its
raft log to (snapshot index - 5000) (etcd's SnapshotCatchUpEntries, fixed
outside etcd's own tests), so once the leader has applied more than
5000 + SNAPSHOT_COUNT entries past what the stopped follower has, the entries
the follower needs are gone from the leader's log and the leader sends it a
database snapshot (MsgSnap).  MIN_PUTS is well above that.  Against etcd the
test asserts the follower's log says so ("successfully received and saved
database snapshot", "finished applying incoming snapshot"); for Ballast it
prints the log lines and /metrics samples about snapshots that it finds,
without asserting on them.
"""

import re
import threading
import time

import grpc

import harness
from harness import check, rpc_pb2

SNAPSHOT_COUNT = 1000
ETCD_CATCHUP_ENTRIES = 5000      # etcd's SnapshotCatchUpEntries
CLIENTS = 8
WRITE_SECONDS = 30.0
MIN_PUTS = 10000                 # > 5000 + several snapshot counts
MAX_PUTS = 30000
CATCHUP_BOUND = 30.0
ETCD_SNAPSHOT_LINES = ("successfully received and saved database snapshot",
                       "finished applying incoming snapshot")


def log_lines(member, pattern):
    with open(member.log_path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    return [line for line in text.splitlines() if re.search(pattern, line, re.I)]


def wait_caught_up(member, revision, bound):
    """When `member`'s serializable Range first answers at `revision` or later."""
    deadline = time.monotonic() + bound
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            _, header_rev = member.get(b"k/", serializable=True, timeout=2)
            if header_rev >= revision:
                return time.monotonic()
            last = "revision %d" % header_rev
        except grpc.RpcError as exc:
            last = "%s %s" % (exc.code(), exc.details())
        time.sleep(0.05)
    raise harness.TestFailure("%s did not reach revision %d within %.0fs of SIGCONT (last: %s)"
                              % (member, revision, bound, last))


def main():
    cluster = harness.Cluster(3, extra_args=["--snapshot-count", str(SNAPSHOT_COUNT)])
    with cluster:
        lagging = cluster.followers()[0]
        others = [m for m in cluster.members if m is not lagging]
        for n in range(100):                  # some keys the follower has before it stops
            cluster.leader().kv().Put(rpc_pb2.PutRequest(key=b"k/early/%03d" % n, value=b"e"),
                                      timeout=10)
        early = [(b"k/early/%03d" % n, b"e") for n in range(100)]
        cluster.wait_applied_equal(timeout=10)
        stopped_index = harness.applied_index(lagging.status())
        lagging.sigstop()
        harness.log("%s SIGSTOPped at applied index %d" % (lagging.name, stopped_index))

        stop = threading.Event()
        writers = [harness.ClusterWriter(others, b"k/%02d/" % c, stop, first=c,
                                         max_seconds=WRITE_SECONDS + 10)
                   for c in range(CLIENTS)]
        started = time.monotonic()
        for w in writers:
            w.start()
        while time.monotonic() - started < WRITE_SECONDS and \
                sum(len(w.acked) for w in writers) < MAX_PUTS:
            time.sleep(0.1)
        stop.set()
        for w in writers:
            w.join(30)
        check(not any(w.is_alive() for w in writers), "a writer thread did not stop")
        acked = [a for w in writers for a in w.acked]
        errors = [e for w in writers for e in w.errors]
        check(not errors, "%d Puts failed with one follower stopped, e.g. %s"
              % (len(errors), errors[:3]))
        write_time = time.monotonic() - started
        leader_applied = harness.applied_index(cluster.leader(members=others).status())
        harness.log("%d Puts acknowledged in %.1fs while %s was stopped; leader applied index "
                    "%d (%d entries ahead)" % (len(acked), write_time, lagging.name,
                                               leader_applied, leader_applied - stopped_index))
        check(len(acked) >= MIN_PUTS, "only %d Puts in %.0fs (need %d to outrun %d snapshot "
              "counts)" % (len(acked), write_time, MIN_PUTS, MIN_PUTS // SNAPSHOT_COUNT))

        last_revision = max(rev for _, _, rev in acked)
        lagging.sigcont()
        resumed = time.monotonic()
        catchup = wait_caught_up(lagging, last_revision, CATCHUP_BOUND) - resumed
        # etcd reports the applied index of a snapshot only once it applies
        # an entry after it: one more Put
        cluster.leader().kv().Put(rpc_pb2.PutRequest(key=b"after", value=b"x"), timeout=10)
        index = cluster.wait_applied_equal(timeout=CATCHUP_BOUND)
        harness.log("%s served revision %d %.1fs after SIGCONT; applied index %d on all members"
                    % (lagging.name, last_revision, catchup, index))
        harness.check_acked_on_members(cluster.members, b"k/", acked + [
            (key, value, kv.mod_revision) for (key, value), kv in
            zip(early, (cluster.leader().get(k)[0] for k, _ in early))])
        revision = cluster.leader().kv().Range(rpc_pb2.RangeRequest(key=b"k/"),
                                               timeout=10).header.revision
        cluster.check_hashkv_equal(revision)
        harness.log("every member serves all %d keys; HashKV at revision %d equal"
                    % (len(acked) + len(early), revision))

        if cluster.kind == "etcd":
            for line in ETCD_SNAPSHOT_LINES:
                found = log_lines(lagging, re.escape(line))
                check(found, "etcd follower %s did not log %r: the leader did not send it a "
                      "snapshot (raise MIN_PUTS?)" % (lagging.name, line))
                harness.log("follower log: %s" % found[-1])
            sent = log_lines(cluster.leader(), r"database snapshot .* sent out successfully")
            for line in sent[-1:]:
                harness.log("leader log: %s" % line)
        else:
            lines = log_lines(lagging, r"snapshot")
            harness.log("%d lines about snapshots in %s's log%s" % (
                len(lines), lagging.name, "".join("\n    " + l for l in lines[-5:])))
            try:
                samples = [s for s in lagging.metrics().samples if "snapshot" in s[0]]
                harness.log("snapshot metrics of %s: %s" % (lagging.name, samples[:10]))
            except Exception as exc:       # informative only
                harness.log("no /metrics from %s: %s" % (lagging.name, exc))
        print("FIGURES snapshot_catchup: puts=%d write_s=%.1f entries_behind=%d catchup_s=%.1f"
              % (len(acked), write_time, leader_applied - stopped_index, catchup))


if __name__ == "__main__":
    harness.run(main)
