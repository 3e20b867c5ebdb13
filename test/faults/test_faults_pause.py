"""SIGSTOP/SIGCONT pauses of random members of a 3-member cluster under
mixed load.

The load of faults.Load (six clients: Puts, linearizable Gets and Txn
compare-and-sets on shared keys, unique-key Puts; every operation recorded).
Each round (BALLAST_FAULT_PAUSE_ROUNDS, default 8):
  - after 1-2 s of load, SIGSTOP a member: the leader on even rounds (1, 3,
    5, ... counting from 1), else a random member; it stays stopped 1.5-4 s
    (longer than the 1 s election timeout: a stopped leader is replaced, and
    when it is continued it still believes it leads until it hears the new
    term, while requests queued on its sockets during the pause arrive at
    once: reads answered then must not be stale, which the history shows);
  - when a leader was stopped, the two others must acknowledge a
    unique-key Put while it is still stopped (within 20 s);
  - SIGCONT; healthy again; 1 s more load; load paused: same applied index,
    every acknowledged unique-key Put on every member, HashKV equal.
After all rounds the whole history must be linearizable.
About 10 s a round: ~1.5 min for 8 rounds on 2 cores.
"""

import random
import time

import faults
import harness
from harness import check


def main():
    rounds = faults.env_int("BALLAST_FAULT_PAUSE_ROUNDS", 8)
    rng = random.Random(faults.seed())
    started = time.monotonic()
    with harness.Cluster(3) as cluster:
        load = faults.Load(cluster.members, rng.randrange(1 << 30)).start()
        pauses = {"leader": 0, "follower": 0}
        try:
            for n in range(rounds):
                time.sleep(rng.uniform(1.0, 2.0))
                leader = cluster.leader()
                victim = leader if n % 2 == 0 else rng.choice(cluster.members)
                role = "leader" if victim is leader else "follower"
                pauses[role] += 1
                length = rng.uniform(1.5, 4.0)
                victim.sigstop()
                stopped_at = time.monotonic()
                note = ""
                if role == "leader":
                    recovery = load.wait_acked_after(stopped_at, 20.0, "with the leader %s "
                                                     "stopped" % victim.name)
                    note = "; the others wrote again %.2fs later" % recovery
                time.sleep(max(0.0, stopped_at + length - time.monotonic()))
                victim.sigcont()
                stopped_for = time.monotonic() - stopped_at
                cluster.wait_ready(60)
                time.sleep(1.0)
                load.pause()
                faults.round_checks(cluster, load, "round %d/%d (%s, the %s, stopped %.1fs%s)"
                                    % (n + 1, rounds, victim.name, role,
                                       stopped_for, note))
                load.resume()
        finally:
            load.stop()
        result = faults.check_linearizable(load, "pause")
        check(load.acked_count() > 0, "no write acknowledged")
        print("FIGURES faults_pause: rounds=%d leader_pauses=%d follower_pauses=%d "
              "acked_unique=%d unknown_unique=%d ops=%d unknown_ops=%d check_s=%.2f total_s=%.0f"
              % (rounds, pauses["leader"], pauses["follower"], load.acked_count(),
                 len(load.uncertain), result.ops, result.pending, result.seconds,
                 time.monotonic() - started))
        print("errors seen by clients: %s" % load.error_summary())


if __name__ == "__main__":
    harness.run(main)
