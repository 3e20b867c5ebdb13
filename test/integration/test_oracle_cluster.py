"""The etcd-oracle finds no divergence when the candidate is a follower of a 3-member cluster.

For each seed (default 1..5) a fresh 3-member candidate cluster is started and
`etcd-oracle run --start-reference --seed S --ops N --mix
kv,txn,watch,lease,compact` compares one of its followers (not the leader),
step by step, with a private single-member etcd 3.4.23.  A follower must
answer like a lone etcd: it forwards writes and linearizable reads, answers
serializable reads after its own apply of the client's earlier writes, gets
watch events from its own apply, and forwards lease TimeToLive to the leader.
One seed runs at a time by default (a seed runs 5 servers on 2 cores).  Any
seed that diverges or cannot run fails the test; reproduction files are kept
under the build dir's integration-artifacts/oracle_cluster/ (replay one
against a fresh cluster's follower).  The machinery is oracle_common.py's,
with cluster_size=3.

Environment: BALLAST_ORACLE_CLUSTER_SEEDS ("1-5", "3", "1,5,7"),
BALLAST_ORACLE_CLUSTER_OPS (2000), BALLAST_ORACLE_CLUSTER_PARALLEL (1); these
do not fall back to the single-server tests' BALLAST_ORACLE_SEEDS etc.
BALLAST_ORACLE_BIN as in test_oracle_kv.py.
"""


import harness
import oracle_common

SEED_TIMEOUT = 150
BUDGET = 700


def main():
    oracle_common.run_mix("oracle_cluster", "kv,txn,watch,lease,compact", "CLUSTER",
                          seed_timeout=SEED_TIMEOUT, budget=BUDGET, cluster_size=3,
                          default_seeds="1-5", default_parallel="1", shared_env=False)


if __name__ == "__main__":
    harness.run(main)
