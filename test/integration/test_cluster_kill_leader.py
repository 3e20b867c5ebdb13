"""kill -9 of the leader of a 3-member cluster under write load loses nothing.

16 client threads (one channel per member each, starting on different
members) Put unique keys k/<client>/<n>; each records its acknowledged Puts
with their revisions and moves to the next member after an error, like a
client given all three endpoints.  After ~2 s the leader gets SIGKILL:
  - a survivor's Status names a new leader within ELECTION_BOUND (3 s) of the
    kill (etcd with --election-timeout 1000: about 1-2 s);
  - every client acknowledges Puts again after the election, within
    WRITE_AFTER_ELECTION (it reconnected to a surviving member; a Put that
    was in flight at the killed leader fails at its 5 s client deadline);
then the writers stop, the killed member restarts on its data dir and:
  - every member's applied index becomes equal; every acknowledged Put is on
    every member (serializable reads) with its value and mod_revision; a
    failed Put is there with its value or not at all;
  - HashKV at the current revision is the same on every member.
Prints the acknowledged Puts before/after the kill and the election time.
"""

import threading
import time

import grpc

import harness
from harness import check, rpc_pb2

CLIENTS = 16
WRITE_BEFORE_KILL = 2.0
WRITE_AFTER_ELECTION = 15.0     # at most, until every client wrote again
ELECTION_BOUND = 3.0
WRITER_MAX_SECONDS = 40.0


def wait_new_leader(survivors, old_id, bound):
    """Seconds until a survivor's Status names a leader other than old_id."""
    started = time.monotonic()
    deadline = started + bound + 10          # measure past the bound, then fail
    while time.monotonic() < deadline:
        for member in survivors:
            try:
                status = member.status(timeout=0.5)
            except grpc.RpcError:
                continue
            if status.leader not in (0, old_id):
                return time.monotonic() - started, status.leader
        time.sleep(0.02)
    raise harness.TestFailure("no survivor named a new leader within %.0fs of the kill"
                              % (deadline - started))


def main():
    with harness.Cluster(3) as cluster:
        leader = cluster.leader()
        old_id = leader.member_id
        survivors = [m for m in cluster.members if m is not leader]
        stop = threading.Event()
        writers = [harness.ClusterWriter(cluster.members, b"k/%02d/" % c, stop, first=c,
                                         max_seconds=WRITER_MAX_SECONDS)
                   for c in range(CLIENTS)]
        for w in writers:
            w.start()
        time.sleep(WRITE_BEFORE_KILL)
        before = sum(len(w.acked) for w in writers)
        check(before > 0, "no Put acknowledged in the first %.0fs" % WRITE_BEFORE_KILL)
        check(not any(w.errors for w in writers), "Puts failed before the kill: %s"
              % [w.errors[0] for w in writers if w.errors][:3])
        leader.kill9()
        killed_at = time.monotonic()
        election, new_id = wait_new_leader(survivors, old_id, ELECTION_BOUND)
        elected_at = killed_at + election
        new_leader = cluster.member_by_id(new_id)
        harness.log("leader %s killed after %d acknowledged Puts; %s named new leader "
                    "%.2fs later" % (leader.name, before, new_leader and new_leader.name,
                                     election))
        check(new_leader in survivors, "the new leader %x is not a survivor" % new_id)
        check(election <= ELECTION_BOUND, "a new leader took %.2fs (bound %.1fs)"
              % (election, ELECTION_BOUND))
        # Puts in flight at the old leader are lost with it: their clients
        # wait for their deadline (5 s) before moving on
        wait_until = time.monotonic() + WRITE_AFTER_ELECTION
        while time.monotonic() < wait_until and not all(
                w.ack_times and w.ack_times[-1] > elected_at for w in writers):
            time.sleep(0.1)
        stop.set()
        for w in writers:
            w.join(WRITER_MAX_SECONDS + 10)
        check(not any(w.is_alive() for w in writers), "a writer thread did not stop")
        late = [w.prefix.decode() for w in writers
                if not any(t > elected_at for t in w.ack_times)]
        check(not late, "%d clients got no Put acknowledged after the election: %s"
              % (len(late), late))
        acked = [a for w in writers for a in w.acked]
        uncertain = [u for w in writers for u in w.uncertain]
        errors = [e for w in writers for e in w.errors]
        codes = sorted({"%s: %s" % (e[2], e[3]) for e in errors})
        harness.log("%d Puts acknowledged (%d after the kill), %d failed around the kill: %s"
                    % (len(acked), len(acked) - before, len(uncertain), codes))

        leader.start(wait=False)
        cluster.wait_ready()
        index = cluster.wait_applied_equal(timeout=30)
        harness.check_acked_on_members(cluster.members, b"k/", acked, uncertain)
        revision = cluster.leader().kv().Range(rpc_pb2.RangeRequest(key=b"k/"),
                                               timeout=10).header.revision
        hashes = cluster.check_hashkv_equal(revision)
        harness.log("after restarting %s: applied index %d on all members; all %d acknowledged "
                    "Puts on every member; HashKV at revision %d equal (%s)"
                    % (leader.name, index, len(acked), revision, hashes[leader.name][0]))
        print("FIGURES kill_leader: acked=%d acked_after_kill=%d failed=%d election_s=%.2f"
              % (len(acked), len(acked) - before, len(uncertain), election))


if __name__ == "__main__":
    harness.run(main)
