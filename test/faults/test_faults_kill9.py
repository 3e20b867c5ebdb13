"""kill -9 of random members of a 3-member cluster under mixed load.

Six clients (faults.Load) run Puts, linearizable Gets and Txn
compare-and-sets on 4 shared keys and Puts of unique keys, spread over the
three members, failing over after an error; every operation is recorded.
Each round (BALLAST_FAULT_ROUNDS, default 20):
  - after 1-2 s of load, kill -9 a member: the leader every third round
    (rounds 1, 4, 7, ...), else a random member (which may be the leader);
  - the load goes on: a unique-key Put must be acknowledged by the two
    survivors within 20 s of the kill (a new election included);
  - the member restarts on its data dir, the cluster is healthy again
    (every member answers a linearizable Range, one leader), 1 s more load;
  - load paused: every member at the same applied index, every acknowledged
    unique-key Put on every member with its value and mod_revision (none
    lost), HashKV equal on all members at the current revision.
After all rounds the whole history must be linearizable (lincheck).
About 10 s a round: ~4 min for 20 rounds on 2 cores.
"""

import random
import time

import faults
import harness
from harness import check


def main():
    rounds = faults.env_int("BALLAST_FAULT_ROUNDS", 20)
    rng = random.Random(faults.seed())
    started = time.monotonic()
    with harness.Cluster(3) as cluster:
        load = faults.Load(cluster.members, rng.randrange(1 << 30)).start()
        kills = {"leader": 0, "follower": 0}
        recoveries = []
        try:
            for n in range(rounds):
                time.sleep(rng.uniform(1.0, 2.0))
                leader = cluster.leader()
                victim = leader if n % 3 == 0 else rng.choice(cluster.members)
                role = "leader" if victim is leader else "follower"
                kills[role] += 1
                victim.kill9()
                killed_at = time.monotonic()
                recovery = load.wait_acked_after(killed_at, 20.0,
                                                 "after the kill of %s" % victim.name)
                recoveries.append(recovery)
                time.sleep(rng.uniform(0.0, 1.0))
                victim.start(wait=False)
                cluster.wait_ready(60)
                time.sleep(1.0)
                load.pause()
                faults.round_checks(cluster, load, "round %d/%d (kill -9 of %s, the %s; "
                                    "writes again %.2fs later)"
                                    % (n + 1, rounds, victim.name, role, recovery))
                load.resume()
        finally:
            load.stop()
        result = faults.check_linearizable(load, "kill9")
        check(load.acked_count() > 0, "no write acknowledged")
        print("FIGURES faults_kill9: rounds=%d leader_kills=%d follower_kills=%d acked_unique=%d "
              "unknown_unique=%d ops=%d unknown_ops=%d check_s=%.2f max_write_gap_s=%.2f "
              "total_s=%.0f" % (rounds, kills["leader"], kills["follower"], load.acked_count(),
                                len(load.uncertain), result.ops, result.pending, result.seconds,
                                max(recoveries), time.monotonic() - started))
        print("errors seen by clients: %s" % load.error_summary())


if __name__ == "__main__":
    harness.run(main)
