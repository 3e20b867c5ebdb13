"""Leases survive a restart (graceful and kill -9) with their TTL renewed.

The same steps run on a reference etcd 3.4.23 and on the candidate, side by
side (each on its own data dir):

 1. grant 1,000 leases with TTL 30 s, put one key per lease (r/NNNN); grant
    one more 30 s lease and revoke it (it must stay revoked);
 2. wait until ~8 s have passed (the 30 s leases then have ~22 s left);
    grant 10 leases with TTL 5 s with a key each (s/NN);
 3. stop the server gracefully (SIGTERM) and start it again on the same data
    dir; right after it is ready:
      - LeaseLeases lists exactly the 1,010 live leases;
      - LeaseTimeToLive(keys=True) of every 30 s lease: grantedTTL 30, its one
        key, and a remaining TTL renewed to about the full TTL (etcd 3.4
        gives every lease now + TTL + election timeout when a member becomes
        leader, and with 1,000 leases or more spreads the expiries so that
        at most 750 fall in one second, giving some leases up to ~2 s more):
        the remaining TTL plus the seconds since the server was ready again
        is at least TTL - 1 s, and its min and max over the 1,000 are within
        1.5 s of etcd's in the same situation (both servers truncate to
        whole seconds; the time of each answer is estimated);
      - every r/ key is there with its lease;
      - the 5 s leases got a full TTL too (their keys are there), and then
        expire by themselves: every s/ key gone within TTL + election timeout
        + 1.5 s of the restart (and not before TTL - 0.5 s), as on etcd;
      - revoking one lease after the restart deletes its key (and only it);
 4. grant 50 more 30 s leases with keys just before the crash, wait ~5 s,
    kill -9, start again: the same checks (1,049 leases: all acknowledged
    grants and puts survived), and revoking another lease deletes its key.

Comparing the remaining TTLs with etcd's (min/max ±1 s) and the lease and key
counts with etcd's makes etcd the expectation; the absolute bounds are there
so that a candidate cannot pass by matching a broken reference.

The upper bound of the 5 s leases' expiry binds the candidate only; on the
reference a late expiry is logged, not counted (harness.late_expiry).  The
wait (TTL + election timeout + 10 s) is long enough for such a late expiry
still to be seen.
"""

import time

import grpc

import harness
from harness import Failures, rpc_pb2, rpc_pb2_grpc

LONG_TTL = 30
LONG_COUNT = 1000
SHORT_TTL = 5
SHORT_COUNT = 10
CRASH_COUNT = 50
DECAY_BEFORE_STOP = 8.0       # s after the grants before the graceful stop
DECAY_BEFORE_KILL = 5.0
ELECTION_TIMEOUT = 1.0        # etcd's default --election-timeout (the promotion extension)
SHORT_EXPIRY_SLACK = 1.5      # s over TTL + election timeout the short leases may take
SHORT_EXPIRY_WAIT = 10.0      # s over TTL + election timeout the test waits for them
IN_FLIGHT = 100
# remaining TTLs + seconds since the restart, etcd vs candidate: both servers
# truncate the remaining TTL to whole seconds (up to 1 s each way), plus the
# estimate of when each answer was given (a sweep takes ~0.1-0.3 s)
TTL_TOLERANCE = 1.5


class Side:
    """One server and what the test granted on it."""

    def __init__(self, server, reference=False):
        self.server = server
        self.reference = reference  # the reference etcd (harness.late_expiry)
        self.long = {}             # key -> lease ID
        self.short = {}
        self.revoked = {}          # key -> lease ID revoked (its key must be gone)
        self.extra_revoked = []    # lease IDs revoked that had no key
        self.restarted_at = None
        self.next_key = 0
        self.short_gone = None     # (first, last) seconds after the restart

    def lease(self):
        return rpc_pb2_grpc.LeaseStub(self.server.channel())

    def kv(self):
        return self.server.kv()

    def live_keys(self):
        return dict(list(self.long.items()) + list(self.short.items()))


def in_batches(calls):
    """Runs (function returning a future) items IN_FLIGHT at a time; returns
    their results in order."""
    results = []
    for start in range(0, len(calls), IN_FLIGHT):
        futures = [c() for c in calls[start:start + IN_FLIGHT]]
        results.extend(f.result() for f in futures)
    return results


def grant_with_keys(side, prefix, count, ttl, into):
    stub = side.lease()
    grants = in_batches([lambda: stub.LeaseGrant.future(rpc_pb2.LeaseGrantRequest(TTL=ttl),
                                                        timeout=30)] * count)
    kv = side.kv()
    keys = [prefix + b"%04d" % (side.next_key + n) for n in range(count)]
    side.next_key += count
    puts = []
    for key, grant in zip(keys, grants):
        harness.check(grant.TTL == ttl, "%s: LeaseGrant(TTL=%d) answered TTL %d"
                      % (side.server, ttl, grant.TTL))
        puts.append(lambda key=key, lid=grant.ID: kv.Put.future(
            rpc_pb2.PutRequest(key=key, value=b"v", lease=lid), timeout=30))
    in_batches(puts)
    for key, grant in zip(keys, grants):
        into[key] = grant.ID


def time_to_live_all(side, ids):
    stub = side.lease()
    return in_batches([lambda lid=lid: stub.LeaseTimeToLive.future(
        rpc_pb2.LeaseTimeToLiveRequest(ID=lid, keys=True), timeout=30) for lid in ids])


def ttl_at_restart(side, ids):
    """LeaseTimeToLive of `ids`, and each remaining TTL plus the seconds since
    the server was ready again (asked at different moments, two servers
    compare by what they gave each lease at their restart)."""
    asked = time.monotonic()
    answers = time_to_live_all(side, ids)
    elapsed = (asked + time.monotonic()) / 2 - side.restarted_at
    return answers, [a.TTL + elapsed for a in answers]


def restart(side, kill):
    if kill:
        side.server.kill9()
    else:
        side.server.stop()
    side.server.start()
    side.restarted_at = time.monotonic()


def check_after_restart(failures, sides, how):
    """The checks of step 3/4 on every side; returns {kind: summary}."""
    summaries = []
    for side in sides:
        srv = side.server
        name = "%s after %s" % (srv.kind, how)
        live = side.live_keys()
        leases = side.lease().LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=30)
        listed = set(l.ID for l in leases.leases)
        want = set(live.values())
        failures.check(listed == want, "%s: LeaseLeases lists %d leases; %d granted leases "
                       "missing, %d unexpected" % (name, len(listed), len(want - listed),
                                                   len(listed - want)))
        ttls, remaining = ttl_at_restart(side, list(side.long.values()))
        for (key, lid), resp in zip(side.long.items(), ttls):
            if resp.grantedTTL != LONG_TTL or list(resp.keys) != [key]:
                failures.add("%s: LeaseTimeToLive of the lease of %r: grantedTTL %d, keys %r "
                             "(expected %d, [%r])" % (name, key, resp.grantedTTL,
                                                      list(resp.keys), LONG_TTL, key))
                break
        low = min(remaining)
        failures.check(low >= LONG_TTL - 1, "%s: remaining TTL + seconds since the restart "
                       "of the 30 s leases: min %.1f (expected the TTL renewed: >= %d)"
                       % (name, low, LONG_TTL - 1))
        short_remaining = ttl_at_restart(side, list(side.short.values()))[1]
        failures.check(not side.short or min(short_remaining) >= SHORT_TTL - 1,
                       "%s: remaining TTL + seconds since the restart of the 5 s leases: %s "
                       "(expected renewed to ~%d)" % (name, short_remaining, SHORT_TTL))
        kvs = side.kv().Range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0"),
                              timeout=30).kvs
        present = {kv.key: kv.lease for kv in kvs}
        wrong = [k for k, lid in live.items() if present.get(k) != lid]
        failures.check(not wrong, "%s: %d keys missing or with another lease, e.g. %r: %r "
                       "(expected lease %d)" % (name, len(wrong), wrong[0] if wrong else b"",
                                                present.get(wrong[0]) if wrong else None,
                                                live[wrong[0]] if wrong else 0))
        gone = [k for k in side.revoked if k in present]
        failures.check(not gone, "%s: keys of leases revoked before the restart are back: %r"
                       % (name, gone[:3]))
        extra = [k for k in present if k not in live]
        failures.check(not extra, "%s: unexpected keys %r" % (name, extra[:3]))
        dead = [lid for lid in side.extra_revoked if lid in listed]
        failures.check(not dead, "%s: a lease revoked before the restart is listed again"
                       % name)
        summary = {"leases": len(listed), "keys": len(present),
                   "remaining min": round(low, 2), "remaining max": round(max(remaining), 2),
                   SPREAD: sum(
                       1 for r in remaining if r >= low + 1.5),
                   "short remaining": (round(min(short_remaining), 2) if side.short else None,
                                       round(max(short_remaining), 2) if side.short else None)}
        harness.log("%s: %s" % (name, summary))
        summaries.append(summary)
    return summaries


SPREAD = "leases given >= 1.5 s more than the least"


def compare_summaries(failures, how, summaries):
    want, got = summaries
    for field in ("leases", "keys"):
        failures.check(want[field] == got[field], "after %s: %s: etcd %s, candidate %s"
                       % (how, field, want[field], got[field]))
    for field in ("remaining min", "remaining max"):
        failures.check(abs(want[field] - got[field]) <= TTL_TOLERANCE,
                       "after %s: %s (+ seconds since the restart) of the 30 s leases: "
                       "etcd %.2f, candidate %.2f (±%.1f s); leases given >= 1.5 s more than "
                       "the least: etcd %d, candidate %d (etcd 3.4's lessor.Promote spreads "
                       "the expiries of 1,000 leases or more to at most 750 a second)"
                       % (how, field, want[field], got[field], TTL_TOLERANCE, want[SPREAD],
                          got[SPREAD]))
    for w, g, what in zip(want["short remaining"], got["short remaining"], ("min", "max")):
        same = w == g or (w is not None and g is not None and abs(w - g) <= TTL_TOLERANCE)
        failures.check(same, "after %s: remaining %s (+ seconds since the restart) of the 5 s "
                       "leases: etcd %s, candidate %s (±%.1f s)"
                       % (how, what, w, g, TTL_TOLERANCE))


def wait_short_expiry(sides):
    """Polls (every 50 ms) until every s/ key is gone on every side, at most
    until TTL + election + SHORT_EXPIRY_WAIT after its restart; records
    first/last."""
    deadline = max(s.restarted_at for s in sides) + SHORT_TTL + ELECTION_TIMEOUT + SHORT_EXPIRY_WAIT
    pending = {id(s): set(s.short) for s in sides}
    first = {}
    while time.monotonic() < deadline and any(pending.values()):
        for side in sides:
            if not pending[id(side)]:
                continue
            resp = side.kv().Range(rpc_pb2.RangeRequest(key=b"s/", range_end=b"s0",
                                                        keys_only=True), timeout=10)
            now = time.monotonic() - side.restarted_at
            still = set(kv.key for kv in resp.kvs)
            if pending[id(side)] - still:
                first.setdefault(id(side), now)
            pending[id(side)] &= still
            if not pending[id(side)]:
                side.short_gone = (first[id(side)], now)
        time.sleep(0.05)
    for side in sides:
        side.short = {}


def revoke_one(failures, sides, how, index):
    for side in sides:
        name = "%s after %s" % (side.server.kind, how)
        key = sorted(side.long)[index]
        lid = side.long.pop(key)
        side.lease().LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lid), timeout=30)
        side.revoked[key] = lid
        resp = side.kv().Range(rpc_pb2.RangeRequest(key=key), timeout=10)
        failures.check(resp.count == 0, "%s: revoking the lease of %r left the key there"
                       % (name, key))
        ttl = side.lease().LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lid), timeout=10)
        failures.check(ttl.TTL == -1, "%s: LeaseTimeToLive of a revoked lease: TTL %d "
                       "(expected -1)" % (name, ttl.TTL))
        others, _ = harness.range_all(side.kv(), b"r/")
        failures.check(len(others) == len(side.long), "%s: %d r/ keys after the revoke, "
                       "expected %d" % (name, len(others), len(side.long)))


def main():
    failures = Failures()
    ref = harness.Server(kind="etcd", name="ref")
    cand = harness.Server()
    ref.start()
    cand.start()
    sides = [Side(ref, reference=True), Side(cand)]
    try:
        # 1. grants
        started = time.monotonic()
        for side in sides:
            grant_with_keys(side, b"r/", LONG_COUNT, LONG_TTL, side.long)
            gone = {}
            grant_with_keys(side, b"x/", 1, LONG_TTL, gone)
            for key, lid in gone.items():
                side.lease().LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lid), timeout=10)
                side.revoked[key] = lid
                side.extra_revoked.append(lid)
        harness.log("granted %d + %d leases with keys on each server (%.1fs)"
                    % (LONG_COUNT, SHORT_COUNT, time.monotonic() - started))
        # 2. let the TTLs run down; the 5 s leases just before the stop
        time.sleep(max(0.0, started + DECAY_BEFORE_STOP - time.monotonic()))
        for side in sides:
            grant_with_keys(side, b"s/", SHORT_COUNT, SHORT_TTL, side.short)
            before = time_to_live_all(side, list(side.long.values())[:20])
            harness.log("%s before the stop: remaining %d..%d s"
                        % (side.server.kind, min(r.TTL for r in before),
                           max(r.TTL for r in before)))
        # 3. graceful restart
        for side in sides:
            restart(side, kill=False)
        compare_summaries(failures, "a graceful restart",
                          check_after_restart(failures, sides, "a graceful restart"))
        wait_short_expiry(sides)
        for side in sides:
            gone = side.short_gone
            harness.log("%s: the 5 s leases' keys were gone %s after the restart"
                        % (side.server.kind, "%.2f..%.2fs" % gone if gone else "never"))
            limit = SHORT_TTL + ELECTION_TIMEOUT + SHORT_EXPIRY_SLACK
            what = ("%s: the 5 s leases' keys after the restart: gone %s (expected between "
                    "%.1f and %.1f s)" % (side.server.kind, "%.2f..%.2fs" % gone if gone else
                                          "not within %.1fs" % (SHORT_TTL + ELECTION_TIMEOUT
                                                                + SHORT_EXPIRY_WAIT),
                                          SHORT_TTL - 0.5, limit))
            if gone is not None and gone[0] < SHORT_TTL - 0.5:
                failures.add(what)
            elif gone is None or gone[1] > limit:
                harness.late_expiry(side.reference, what, failures.add)
        revoke_one(failures, sides, "a graceful restart", 17)
        # 4. kill -9
        started = time.monotonic()
        for side in sides:
            grant_with_keys(side, b"r/", CRASH_COUNT, LONG_TTL, side.long)
        time.sleep(max(0.0, started + DECAY_BEFORE_KILL - time.monotonic()))
        for side in sides:
            restart(side, kill=True)
        compare_summaries(failures, "kill -9",
                          check_after_restart(failures, sides, "kill -9"))
        revoke_one(failures, sides, "kill -9", 400)
        for side in sides:
            harness.check(side.server.running(), "%s exited; log:\n%s"
                          % (side.server, side.server.log_tail()))
    except grpc.RpcError as exc:
        raise harness.TestFailure("gRPC error: %s %s" % (exc.code(), exc.details()))
    finally:
        for srv in (cand, ref):
            srv.stop()
    failures.raise_if_any()


if __name__ == "__main__":
    harness.run(main)
