"""The etcd-oracle finds no divergence in KV, Txn and Compact.

For each seed (default 1..20) a fresh candidate with an empty data dir is
started and `etcd-oracle run --start-reference --seed S --ops N --mix
kv,txn,compact` compares it step by step with a private etcd 3.4.23.  Two seeds
run at a time.  Any seed that diverges (or cannot run) fails the test; the
report shows the end of the oracle's output and the path of its reproduction
file, which is kept under the build dir's integration-artifacts/oracle_kv/.
(The machinery is in oracle_common.py, shared with test_oracle_watch.py.)

Environment: BALLAST_ORACLE_SEEDS ("1-20", "3", "1,5,7") and BALLAST_ORACLE_OPS
(2000) shorten or lengthen the run; BALLAST_ORACLE_PARALLEL (2);
BALLAST_ORACLE_BIN (default: shared/etcd-oracle/etcd-oracle beside the repo).
"""


import harness
import oracle_common

SEED_TIMEOUT = 120          # one seed of 2000 ops takes ~5-20 s
BUDGET = 700                # all seeds (ctest's TIMEOUT is 900 s)


def main():
    oracle_common.run_mix("oracle_kv", "kv,txn,compact", None, seed_timeout=SEED_TIMEOUT, budget=BUDGET)


if __name__ == "__main__":
    harness.run(main)
