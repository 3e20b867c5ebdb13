"""The etcd-oracle finds no divergence in Watch (with KV, Txn and Compact).

For each seed (default 1..20) a fresh candidate with an empty data dir is
started and `etcd-oracle run --start-reference --seed S --ops N --mix
kv,txn,watch,compact` compares it step by step with a private etcd 3.4.23:
every response, and every event, created/cancel reply and compaction
cancellation that the open watch streams receive (watches on one key, prefixes,
"\\0", empty ranges, past/compacted/future start revisions, prev_kv, NOPUT and
NODELETE filters, cancels).  Two seeds run at a time; any seed that diverges
or cannot run fails the test.  Reproduction files are kept under the build
dir's integration-artifacts/oracle_watch/ (replay one with `etcd-oracle replay
FILE --candidate ... --start-reference` against a fresh candidate).
(The machinery is in oracle_common.py, shared with test_oracle_kv.py.)

Environment: BALLAST_ORACLE_WATCH_SEEDS ("1-20", "3", "1,5,7"),
BALLAST_ORACLE_WATCH_OPS (2000) and BALLAST_ORACLE_WATCH_PARALLEL (2); each
falls back to BALLAST_ORACLE_SEEDS / _OPS / _PARALLEL (shared with
test_oracle_kv.py) when unset.  BALLAST_ORACLE_BIN as in test_oracle_kv.py.
"""


import harness
import oracle_common

SEED_TIMEOUT = 150          # one seed of 2000 ops takes ~5-20 s
BUDGET = 700                # all seeds (ctest's TIMEOUT is 900 s)


def main():
    oracle_common.run_mix("oracle_watch", "kv,txn,watch,compact", "WATCH", seed_timeout=SEED_TIMEOUT, budget=BUDGET)


if __name__ == "__main__":
    harness.run(main)
