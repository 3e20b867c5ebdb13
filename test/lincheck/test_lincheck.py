"""Unit test of lincheck.py: hand-made histories that are linearizable must
be accepted, and the classic violations (stale read, lost write, revisions
out of real-time order across keys, a compare-and-set that succeeded twice,
two writes with one revision, a value no one wrote) must be rejected.  A
random linearizable history of 20,000 operations from 8 clients, with
unknown outcomes, must check within a few seconds (also with 1% of answers
very slow); each with one read made stale must be rejected.

Run: /usr/bin/python3 test/lincheck/test_lincheck.py  (ctest: unit.lincheck)
"""

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lincheck  # noqa: E402

FAILURES = []


def build(spec):
    """spec: (client, kind, key, arg, invoked, returned or None, answer).
    put: arg=value, answer=revision; get: answer=(revision, kv or None);
    cas: arg=(value, compare), answer=(revision, succeeded);
    range: answer=(revision, {key: kv})."""
    history = lincheck.History()
    for client, kind, key, arg, invoked, returned, answer in spec:
        value, compare = (arg if kind == "cas" else (arg, None))
        op = history.invoke(client, kind, key, value=value, compare=compare, at=invoked)
        if returned is None:
            history.fail(op)
        elif kind == "put":
            history.ok(op, answer, at=returned)
        elif kind == "get":
            history.ok(op, answer[0], kv=answer[1], at=returned)
        elif kind == "cas":
            history.ok(op, answer[0], succeeded=answer[1], at=returned)
        else:
            history.ok(op, answer[0], kvs=answer[1], at=returned)
    return history.operations()


def expect(name, spec, linearizable):
    result = lincheck.check(build(spec))
    if not linearizable and "search bound" in result.reason:
        FAILURES.append("%s: the search gave up instead of rejecting: %s" % (name, result))
        print("FAIL %s" % name)
    elif result.ok != linearizable:
        FAILURES.append("%s: expected %s, got %s" % (
            name, "linearizable" if linearizable else "a rejection", result))
        print("FAIL %s" % name)
    else:
        print("ok   %s: %s" % (name, str(result).splitlines()[0]))
    return result


def kv(value, create, mod, version):
    return (value, create, mod, version)


def main():
    # ---- linearizable ----
    expect("sequential put/get", [
        (1, "put", b"a", b"1", 0, 1, 2),
        (1, "get", b"a", None, 2, 3, (2, kv(b"1", 2, 2, 1))),
        (1, "put", b"a", b"2", 4, 5, 3),
        (1, "get", b"a", None, 6, 7, (3, kv(b"2", 2, 3, 2))),
        (1, "get", b"b", None, 8, 9, (3, None)),
    ], True)
    expect("concurrent puts ordered by revision, not by invocation", [
        (1, "put", b"a", b"1", 0, 10, 3),
        (2, "put", b"b", b"1", 1, 11, 2),
        (3, "get", b"a", None, 12, 13, (3, kv(b"1", 3, 3, 1))),
    ], True)
    expect("a read concurrent with a put sees the old value", [
        (1, "put", b"a", b"1", 0, 1, 2),
        (1, "put", b"a", b"2", 2, 10, 3),
        (2, "get", b"a", None, 3, 4, (2, kv(b"1", 2, 2, 1))),
        (2, "get", b"a", None, 5, 6, (3, kv(b"2", 2, 3, 2))),
    ], True)
    expect("an unknown put that took effect and was read", [
        (1, "put", b"a", b"1", 0, None, None),
        (2, "put", b"b", b"1", 5, 6, 3),
        (2, "get", b"a", None, 7, 8, (3, kv(b"1", 2, 2, 1))),
    ], True)
    expect("an unknown put that never took effect", [
        (1, "put", b"a", b"1", 0, None, None),
        (2, "put", b"b", b"1", 5, 6, 2),
        (2, "get", b"a", None, 7, 8, (2, None)),
    ], True)
    expect("an unknown put that took effect after later reads", [
        (1, "put", b"a", b"1", 0, None, None),
        (2, "get", b"a", None, 7, 8, (1, None)),
        (2, "get", b"a", None, 9, 10, (2, kv(b"1", 2, 2, 1))),
    ], True)
    expect("an unknown put fills a revision gap and is overwritten unread", [
        (1, "put", b"a", b"1", 0, None, None),
        (2, "put", b"a", b"2", 1, 2, 3),
        (2, "get", b"a", None, 3, 4, (3, kv(b"2", 2, 3, 2))),
    ], True)
    expect("compare-and-set on value and mod_revision", [
        (1, "put", b"a", b"1", 0, 1, 2),
        (1, "cas", b"a", (b"2", ("value", b"1")), 2, 3, (3, True)),
        (2, "cas", b"a", (b"3", ("value", b"1")), 4, 5, (3, False)),
        (2, "cas", b"a", (b"3", ("mod", 3)), 6, 7, (4, True)),
        (2, "cas", b"b", (b"1", ("mod", 0)), 8, 9, (5, True)),
        (2, "cas", b"c", (b"1", ("value", b"")), 10, 11, (5, False)),
        (2, "get", b"a", None, 12, 13, (5, kv(b"3", 2, 4, 3))),
    ], True)
    expect("an unknown compare-and-set that succeeded", [
        (1, "put", b"a", b"1", 0, 1, 2),
        (1, "cas", b"a", (b"2", ("value", b"1")), 2, None, None),
        (2, "cas", b"a", (b"3", ("value", b"1")), 3, 4, (3, False)),
        (2, "get", b"a", None, 5, 6, (3, kv(b"2", 2, 3, 2))),
    ], True)
    expect("a prefix range", [
        (1, "put", b"d/1", b"x", 0, 1, 2),
        (2, "put", b"d/2", b"y", 0, None, None),
        (1, "put", b"e", b"z", 2, 3, 4),
        (1, "range", b"d/", None, 4, 5, (4, {b"d/1": kv(b"x", 2, 2, 1),
                                             b"d/2": kv(b"y", 3, 3, 1)})),
    ], True)

    # ---- not linearizable ----
    expect("stale read", [
        (1, "put", b"a", b"1", 0, 1, 2),
        (1, "put", b"a", b"2", 2, 3, 3),
        (2, "get", b"a", None, 4, 5, (2, kv(b"1", 2, 2, 1))),
    ], False)
    expect("stale value under the current revision", [
        (1, "put", b"a", b"1", 0, 1, 2),
        (1, "put", b"a", b"2", 2, 3, 3),
        (2, "get", b"a", None, 4, 5, (3, kv(b"1", 2, 2, 1))),
    ], False)
    expect("lost write", [
        (1, "put", b"a", b"1", 0, 1, 2),
        (1, "put", b"b", b"1", 2, 3, 3),
        (2, "get", b"a", None, 4, 5, (3, None)),
    ], False)
    expect("revisions out of real-time order across keys", [
        (1, "put", b"a", b"1", 0, 1, 3),
        (2, "put", b"b", b"1", 2, 3, 2),
    ], False)
    expect("a compare-and-set that succeeded twice", [
        (1, "put", b"a", b"0", 0, 1, 2),
        (1, "cas", b"a", (b"1", ("value", b"0")), 2, 6, (3, True)),
        (2, "cas", b"a", (b"2", ("value", b"0")), 3, 7, (4, True)),
    ], False)
    expect("a compare-and-set on mod_revision that succeeded twice", [
        (1, "put", b"a", b"0", 0, 1, 2),
        (1, "cas", b"a", (b"1", ("mod", 2)), 2, 6, (3, True)),
        (2, "cas", b"a", (b"2", ("mod", 2)), 3, 7, (4, True)),
    ], False)
    expect("a compare-and-set that failed although it should hold", [
        (1, "put", b"a", b"0", 0, 1, 2),
        (2, "cas", b"a", (b"2", ("value", b"0")), 3, 4, (2, False)),
    ], False)
    expect("two acknowledged writes with one revision", [
        (1, "put", b"a", b"1", 0, 5, 2),
        (2, "put", b"b", b"1", 0, 5, 2),
    ], False)
    expect("a value no one wrote", [
        (1, "put", b"a", b"1", 0, 1, 2),
        (2, "get", b"a", None, 2, 3, (2, kv(b"9", 2, 2, 1))),
    ], False)
    expect("an unknown put read before it was invoked", [
        (2, "get", b"a", None, 0, 1, (2, kv(b"1", 2, 2, 1))),
        (1, "put", b"a", b"1", 2, None, None),
    ], False)
    expect("a prefix range that misses an acknowledged put", [
        (1, "put", b"d/1", b"x", 0, 1, 2),
        (1, "put", b"d/2", b"y", 2, 3, 3),
        (1, "range", b"d/", None, 4, 5, (3, {b"d/1": kv(b"x", 2, 2, 1)})),
    ], False)

    random_history()
    random_history(seed=8, slow_answers=True)
    if FAILURES:
        print("FAIL test_lincheck:\n  " + "\n  ".join(FAILURES))
        sys.exit(1)
    print("PASS test_lincheck")


def random_history(clients=8, count=20000, seed=7, slow_answers=False):
    """Runs a random workload on a sequential model of etcd at linearization
    points, and gives each operation an interval around its point.  The
    same history with one read made stale must then be rejected."""
    rng = random.Random(seed)
    keys = [b"k%d" % i for i in range(4)]
    store, revision = {}, 1
    spec = []
    t = 0.0
    free_at = [0.0] * clients
    for n in range(count):
        t += rng.expovariate(1.0)
        client = rng.randrange(clients)
        t = max(t, free_at[client] + 0.01)   # a client runs one operation at a time
        invoked = max(free_at[client], t - rng.uniform(0, 3))
        # with slow_answers, now and then a slow answer (an election, a stopped
        # member): the search's window of candidates spans hundreds of operations
        returned = t + (rng.uniform(100, 1000) if slow_answers and rng.random() < 0.01
                        else rng.uniform(0, 3))
        free_at[client] = returned
        key = rng.choice(keys)
        what = rng.random()
        unknown = rng.random() < 0.02
        if what < 0.3 or (what < 0.4 and unknown):
            value = b"v%d" % n
            applied = not unknown or rng.random() < 0.5
            if applied:
                old = store.get(key)
                revision += 1
                store[key] = (value, old[1] if old else revision, revision,
                              old[3] + 1 if old else 1)
            spec.append((client, "put", key, value, invoked, None if unknown else returned,
                         revision))
        elif what < 0.7:
            spec.append((client, "get", key, None, invoked, returned,
                         (revision, store.get(key))))
        else:
            old = store.get(key)
            if rng.random() < 0.5:
                compare = ("value", old[0] if old and rng.random() < 0.7 else b"x")
            else:
                compare = ("mod", old[2] if old and rng.random() < 0.7 else 0)
            holds = (old is not None and old[0] == compare[1]) if compare[0] == "value" \
                else (old[2] if old else 0) == compare[1]
            value = b"v%d" % n
            if holds:
                revision += 1
                store[key] = (value, old[1] if old else revision, revision,
                              old[3] + 1 if old else 1)
            spec.append((client, "cas", key, (value, compare), invoked, returned,
                         (revision, holds)))
    started = time.monotonic()
    result = expect("random linearizable history of %d operations%s"
                    % (count, ", 1% slow answers" if slow_answers else ""), spec, True)
    elapsed = time.monotonic() - started
    if elapsed > 30:
        FAILURES.append("checking %d operations took %.1fs" % (count, elapsed))
    # make one late read stale: it returns the value its key had 5 writes earlier
    for i in range(len(spec) - 1, 0, -1):
        client, kind, key, _, invoked, returned, answer = spec[i]
        if kind == "get" and answer[1] is not None and answer[1][3] > 5:
            earlier = [s for s in spec[:i] if s[1:3] == ("put", key) and s[5] is not None
                       and s[6] < answer[1][2]]
            if earlier:
                old = earlier[0]
                stale = (old[3], answer[1][1], old[6], answer[1][3] - 1)
                spec[i] = (client, kind, key, None, invoked, returned, (answer[0], stale))
                break
    print(expect("the same history with one stale read", spec, False).reason)
    return result


if __name__ == "__main__":
    main()
