"""Checks oracle_common.etcd_prev_kv_race, which decides when a diverged
seed runs again: only the shape of etcd's prev_kv race passes, nothing near it.
Runs without servers (ctest: unit.oracle_common)."""

import sys

import oracle_common

HEAD = "seed 15: 185 passed, 1 failed\n"
E1 = 'event { kv { key: "a" create_revision: 3 mod_revision: 27 version: 4 value: "v1" }%s }'
P1 = ' prev_kv { key: "a" create_revision: 3 mod_revision: 19 version: 3 value: "r{\\"}" }'
E2 = 'event { kv { key: "a" create_revision: 3 mod_revision: 34 version: 5 value: "v2" }%s }'
P2 = ' prev_kv { key: "a" create_revision: 3 mod_revision: 27 version: 4 value: "v1" }'
NEW = 'event { kv { key: "b" create_revision: 35 mod_revision: 35 version: 1 value: "v0" } }'


def output(reference, candidate):
    return (HEAD + "reference response (normalised):\n" +
            "".join("  %s\n" % line for line in reference) +
            "\ncandidate response (normalised):\n" +
            "".join("  %s\n" % line for line in candidate) + "\ndiff ...\n")


CASES = [
    # etcd's race: the leading events lack the prev_kv (a quote and a brace in a value)
    ("all events lack prev_kv", True, [E1 % "", NEW, E2 % ""], [E1 % P1, NEW, E2 % P2]),
    ("the first event lacks it", True, [E1 % "", E2 % P2], [E1 % P1, E2 % P2]),
    # not the race
    ("a later event lacks it", False, [E1 % P1, E2 % ""], [E1 % P1, E2 % P2]),
    ("the candidate lacks it", False, [E1 % P1], [E1 % ""]),
    ("a value differs", False, [E1 % "", E2 % ""], [E1 % P1, E2.replace("v2", "v3") % P2]),
    ("an event is missing", False, [E1 % ""], [E1 % P1, E2 % P2]),
    ("no difference at all", False, [E1 % P1], [E1 % P1]),
    ("not events", False, ["header { revision: 3 }"], ['header { revision: 4 }']),
]


def main():
    failed = 0
    for name, want, reference, candidate in CASES:
        got = oracle_common.etcd_prev_kv_race(output(reference, candidate))
        if got != want:
            print("FAIL %s: etcd_prev_kv_race says %s" % (name, got))
            failed += 1
    if oracle_common.etcd_prev_kv_race(HEAD + "oracle exit status 2\n"):
        print("FAIL an output without responses is taken for the race")
        failed += 1
    print("oracle_common_check: %s" % ("ok" if not failed else "%d failed" % failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
