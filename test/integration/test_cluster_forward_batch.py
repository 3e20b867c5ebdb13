"""Writes through a follower go to the leader together, and each gets its own answer.

A Ballast follower sends the writes of its clients to the leader in batches
(/ballastpb.Internal/Forward): while one batch is on its way, new writes wait
and go together in the next. Each write still runs on the leader as the call
it came in as, and its answer (or error) must reach its own client only.

On a 3-member cluster, WRITERS threads write through one follower at once,
each to a key of its own, WRITES times, sequentially:
  - Puts with prev_kv: each answer's header names the follower, revisions
    rise per writer and are unique across writers, and prev_kv is the
    writer's previous value at the previous answer's revision;
  - in between, writes that fail on the leader, not on the follower: a Put
    with a lease nobody granted (NOT_FOUND "etcdserver: requested lease not
    found") and a Put with ignore_value on a key that does not exist
    (INVALID_ARGUMENT "etcdserver: key not found"); the writes around them
    in the same batches succeed;
  - (Ballast) the follower's /metrics show the writes went in batches: more
    forwarded requests than batches, and at least as many forwarded
    requests as writes made;
  - every member then reads each writer's last value at its revision.
etcd passes all but the metrics part (BALLAST_TEST_SERVER=etcd).
"""

import threading
import time

import grpc

import harness
from harness import check, rpc_pb2

WRITERS = 32
WRITES = 40           # per writer; every 10th is a failing lease Put, every 10th+5 a failing ignore_value Put
UNKNOWN_LEASE = 0x7A7A7A7A


def writer(follower, index, results, errors):
    kv = follower.kv()
    key = b"fb/%02d" % index
    prev_value, prev_rev, answers = None, 0, []
    try:
        for i in range(WRITES):
            if i % 10 == 3:
                try:
                    kv.Put(rpc_pb2.PutRequest(key=key, value=b"x", lease=UNKNOWN_LEASE), timeout=30)
                    errors.append("writer %d: a Put with an unknown lease succeeded" % index)
                except grpc.RpcError as exc:
                    answers.append(("lease", exc.code(), exc.details()))
                continue
            if i % 10 == 8:
                try:
                    kv.Put(rpc_pb2.PutRequest(key=b"fb/missing/%02d" % index, ignore_value=True),
                           timeout=30)
                    errors.append("writer %d: ignore_value on a missing key succeeded" % index)
                except grpc.RpcError as exc:
                    answers.append(("ignore", exc.code(), exc.details()))
                continue
            value = b"%d-%d" % (index, i)
            resp = kv.Put(rpc_pb2.PutRequest(key=key, value=value, prev_kv=True), timeout=30)
            rev = resp.header.revision
            if resp.header.member_id != follower.member_id:
                errors.append("writer %d: header member_id %x, not the follower's %x"
                              % (index, resp.header.member_id, follower.member_id))
            if rev <= prev_rev:
                errors.append("writer %d: revision %d after %d" % (index, rev, prev_rev))
            if prev_value is None:
                if resp.HasField("prev_kv"):
                    errors.append("writer %d: a prev_kv on the first Put: %s" % (index, resp.prev_kv))
            elif (resp.prev_kv.value != prev_value or resp.prev_kv.mod_revision != prev_rev):
                errors.append("writer %d: prev_kv %r at %d, expected %r at %d"
                              % (index, resp.prev_kv.value, resp.prev_kv.mod_revision,
                                 prev_value, prev_rev))
            answers.append(("put", rev, value))
            prev_value, prev_rev = value, rev
    except grpc.RpcError as exc:
        errors.append("writer %d: %s %s" % (index, exc.code(), exc.details()))
    results[index] = answers


def forwarded(member):
    m = member.metrics()
    return (m.require("ballast_forward_requests_total"), m.require("ballast_forward_batches_total"))


def main():
    ballast = harness.candidate_kind() == "ballast"
    with harness.Cluster(3) as cluster:
        follower = cluster.followers()[0]
        follower.kv().Put(rpc_pb2.PutRequest(key=b"fb/warm", value=b"1"), timeout=30)
        before = forwarded(follower) if ballast else None
        results, errors = {}, []
        threads = [threading.Thread(target=writer, args=(follower, i, results, errors), daemon=True)
                   for i in range(WRITERS)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        check(not any(t.is_alive() for t in threads), "writers still running after 120 s")
        harness.log("%d writers x %d writes through %s in %.1fs"
                    % (WRITERS, WRITES, follower.name, time.monotonic() - started))
        check(not errors, "%d problems, the first ones:\n  %s" % (len(errors), "\n  ".join(errors[:10])))

        revisions = []
        for index, answers in sorted(results.items()):
            for answer in answers:
                if answer[0] == "put":
                    revisions.append(answer[1])
                elif answer[0] == "lease":
                    check(answer[1] == grpc.StatusCode.NOT_FOUND
                          and answer[2] == "etcdserver: requested lease not found",
                          "writer %d: the unknown lease gave %s %r" % (index, answer[1], answer[2]))
                else:
                    check(answer[1] == grpc.StatusCode.INVALID_ARGUMENT
                          and answer[2] == "etcdserver: key not found",
                          "writer %d: ignore_value on a missing key gave %s %r"
                          % (index, answer[1], answer[2]))
        check(len(results) == WRITERS, "only %d writers reported" % len(results))
        check(len(set(revisions)) == len(revisions),
              "%d Puts were answered with only %d distinct revisions"
              % (len(revisions), len(set(revisions))))
        harness.log("%d Puts at distinct revisions; every failing write got its own error"
                    % len(revisions))

        if ballast:
            after = forwarded(follower)
            requests, batches = after[0] - before[0], after[1] - before[1]
            harness.log("the follower forwarded %d requests in %d batches (%.1f a batch)"
                        % (requests, batches, requests / batches if batches else 0))
            check(requests >= WRITERS * WRITES,
                  "%d requests forwarded in batches for %d writes" % (requests, WRITERS * WRITES))
            check(batches > 0 and requests > 1.5 * batches,
                  "%d requests in %d batches: the writes did not go together" % (requests, batches))

        for index, answers in sorted(results.items()):
            rev, value = [(a[1], a[2]) for a in answers if a[0] == "put"][-1]
            key = b"fb/%02d" % index
            for member in cluster.members:
                deadline = time.monotonic() + 10
                while True:
                    kv, _ = member.get(key, serializable=True)
                    if (kv is not None and kv.mod_revision >= rev) or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                check(kv is not None and kv.value == value and kv.mod_revision == rev,
                      "%s has %s for %s, expected %r at revision %d"
                      % (member.name, kv, key, value, rev))
        harness.log("every member holds each writer's last value at its revision")


if __name__ == "__main__":
    harness.run(main)
