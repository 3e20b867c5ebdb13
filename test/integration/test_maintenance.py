"""The Maintenance service against etcd 3.4, side by side, and the quota.

1. etcdctl `alarm list`, `alarm disarm`, `defrag`, `endpoint hashkv` errors
   (future and compacted revisions), writes refused while a NOSPACE alarm
   is active (put, txn with a put, lease grant) while reads, deletes and
   txns without puts pass, and raw Alarm/HashKV/Status answers: the same
   exit code, stdout and stderr (masked as test_etcdctl_compare.py does)
   and the same protobuf answers against etcd and the candidate.
2. NOSPACE from a small --quota-backend-bytes, on each server in turn:
   puts of 64 KiB values fail at some point with etcd's error, and this
   member's alarm is raised (as Status.errors and `alarm list` show it);
   reads and deletes still work; compact + defrag + disarm make writes
   work again.
3. `endpoint hashkv` and Hash are the same before and after a restart
   (candidate only; etcd's hash values differ from Ballast's by design).
"""

import json
import re

import grpc

import harness
from harness import Failures, check, rpc_pb2

normalise = harness.mask_etcdctl


def txn_stdin(compares, success, failure):
    return "".join(line + "\n" for block in (compares, success, failure)
                   for line in list(block) + [""])


# Step kinds: ("ctl", args, stdin) runs etcdctl; ("rpc", name, fn) calls
# gRPC and compares the answer or the error.
def alarm_rpc(action, member=0, alarm=0):
    def call(srv):
        return srv.maintenance().Alarm(
            rpc_pb2.AlarmRequest(action=action, memberID=member, alarm=alarm), timeout=10)
    return call


def hashkv_error(rev):
    def call(srv):
        return srv.maintenance().HashKV(rpc_pb2.HashKVRequest(revision=rev), timeout=10)
    return call


def status_errors(srv):
    """Status.errors, through etcdctl (python3-etcd3's stubs predate it)."""
    res = srv.etcdctl("endpoint", "status", "-w", "json")
    check(res.returncode == 0, "endpoint status failed: %s" % res.stderr)
    return json.loads(res.stdout)[0]["Status"].get("errors", [])


GET, ACTIVATE, DEACTIVATE = 0, 1, 2
NOSPACE, CORRUPT = 1, 2

STEPS = [
    ("ctl", ["alarm", "list"], None),
    ("ctl", ["put", "a", "1"], None),
    ("ctl", ["put", "b", "2"], None),
    ("ctl", ["put", "a", "3"], None),
    ("ctl", ["endpoint", "hashkv", "--rev", "1000"], None),     # future revision
    ("ctl", ["compact", "3"], None),
    ("ctl", ["endpoint", "hashkv", "--rev", "2"], None),        # compacted
    ("ctl", ["endpoint", "hashkv", "--rev", "3"], None),        # compacted (== compact rev)
    ("rpc", "HashKV future", hashkv_error(99)),
    ("rpc", "HashKV compacted", hashkv_error(1)),
    ("ctl", ["defrag"], None),
    ("rpc", "Alarm GET (none)", alarm_rpc(GET)),
    ("rpc", "Alarm ACTIVATE NOSPACE 5", alarm_rpc(ACTIVATE, 5, NOSPACE)),
    ("rpc", "Alarm ACTIVATE NOSPACE 5 again", alarm_rpc(ACTIVATE, 5, NOSPACE)),
    ("rpc", "Status.errors", status_errors),
    ("ctl", ["alarm", "list"], None),
    ("ctl", ["put", "c", "1"], None),                            # refused
    ("ctl", ["put", "c", "1", "--lease", "1234"], None),         # refused before the lease check
    ("ctl", ["txn"], txn_stdin([], ["get a"], ["put c 2"])),     # a put in a branch: refused
    ("ctl", ["txn"], txn_stdin([], ["del b"], ["get a"])),       # no put: applied
    ("ctl", ["lease", "grant", "100"], None),                    # refused
    ("ctl", ["get", "a"], None),
    ("ctl", ["del", "nosuchkey"], None),
    ("ctl", ["compact", "5"], None),
    ("rpc", "Alarm ACTIVATE CORRUPT 7", alarm_rpc(ACTIVATE, 7, CORRUPT)),
    ("rpc", "Alarm GET NOSPACE", alarm_rpc(GET, 0, NOSPACE)),
    ("rpc", "Alarm DEACTIVATE absent", alarm_rpc(DEACTIVATE, 99, NOSPACE)),
    ("rpc", "Alarm DEACTIVATE CORRUPT 7", alarm_rpc(DEACTIVATE, 7, CORRUPT)),
    ("ctl", ["alarm", "disarm"], None),
    ("ctl", ["alarm", "list"], None),
    ("rpc", "Status.errors after disarm", status_errors),
    ("ctl", ["put", "c", "3"], None),
    ("ctl", ["lease", "grant", "100", "-w", "json"], None),
    ("ctl", ["alarm", "list", "-w", "json"], None),
]


def run_step(srv, step):
    kind = step[0]
    if kind == "ctl":
        res = srv.etcdctl(*(["-w", "json"] if "-w" not in step[1] else []) + step[1],
                          stdin=step[2])
        out = normalise(res.stdout)
        # lease IDs are the servers' own
        out = re.sub(r'"ID":\d+', '"ID":<id>', out)
        return (res.returncode, out, normalise(res.stderr))
    try:
        answer = step[2](srv)
        if hasattr(answer, "SerializeToString"):
            return ("ok", str(harness.strip_header_ids(answer)))
        return ("ok", repr(answer))
    except grpc.RpcError as exc:
        return ("error", str(exc.code()), exc.details())


def compare_side_by_side(failures):
    with harness.Server(kind="etcd", name="ref") as ref, harness.Server() as cand:
        for number, step in enumerate(STEPS, 1):
            want = run_step(ref, step)
            got = run_step(cand, step)
            if want != got:
                failures.add("step %d (%s): etcd %r\ncandidate %r"
                             % (number, step[1], want, got))
        check(ref.running() and cand.running(), "a server exited during the run")
    harness.log("%d maintenance steps compared" % len(STEPS))


def fill_until_nospace(srv, value_size=64 * 1024, limit=400):
    """Puts big values until the server refuses; returns (count, error)."""
    kv = srv.kv()
    value = b"v" * value_size
    for i in range(limit):
        try:
            kv.Put(rpc_pb2.PutRequest(key=b"big/%04d" % i, value=value), timeout=10)
        except grpc.RpcError as exc:
            return i, (exc.code(), exc.details())
    return limit, None


def nospace_scenario(kind, failures):
    """Returns the outcomes a client sees, for comparison with etcd's."""
    seen = []
    srv = harness.Server(kind=kind, name="q-" + kind,
                         extra_args=["--quota-backend-bytes", str(4 * 1024 * 1024)])
    with srv:
        member = srv.maintenance().Status(rpc_pb2.StatusRequest(), timeout=10).header.member_id
        count, error = fill_until_nospace(srv)
        failures.check(error is not None and 0 < count < 400,
                       "%s: no NOSPACE after %d puts of 64 KiB with a 4 MiB quota" % (kind, count))
        seen.append(("put over quota", error))
        own = "memberID:%d alarm:NOSPACE " % member
        res = srv.etcdctl("alarm", "list")
        seen.append(("alarm list", res.returncode, res.stdout.replace(own, "<own>")))
        seen.append(("status errors", [e.replace(own, "<own>") for e in status_errors(srv)]))
        res = srv.etcdctl("put", "small", "x")
        seen.append(("put small", res.returncode, normalise(res.stderr).splitlines()[-1:]))
        res = srv.etcdctl("get", "big/0000", "--keys-only")
        seen.append(("get", res.returncode, res.stdout))
        res = srv.etcdctl("del", "big/", "--prefix")
        seen.append(("del", res.returncode, res.stdout == "%d\n" % count))
        rev = srv.kv().Range(rpc_pb2.RangeRequest(key=b"x"), timeout=10).header.revision
        res = srv.etcdctl("compact", str(rev), "--physical")
        seen.append(("compact", res.returncode, res.stdout.strip() == "compacted revision %d" % rev))
        res = srv.etcdctl("defrag")
        seen.append(("defrag", res.returncode, normalise(res.stdout)))
        res = srv.etcdctl("alarm", "disarm")
        seen.append(("disarm", res.returncode, res.stdout.replace(own, "<own>")))
        res = srv.etcdctl("put", "small", "y")
        seen.append(("put after disarm", res.returncode, res.stdout))
        res = srv.etcdctl("alarm", "list")
        seen.append(("alarm list after", res.returncode, res.stdout))
    return seen


def hash_across_restart(failures):
    srv = harness.Server()
    with srv:
        for i in range(200):
            srv.kv().Put(rpc_pb2.PutRequest(key=b"h/%03d" % (i % 50), value=b"%d" % i), timeout=10)
        srv.kv().Compact(rpc_pb2.CompactionRequest(revision=120, physical=True), timeout=30)
        srv.kv().DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"h/010"), timeout=10)
        before = normalise(srv.etcdctl("endpoint", "hashkv").stdout)
        before_150 = srv.maintenance().HashKV(rpc_pb2.HashKVRequest(revision=150), timeout=10)
        before_hash = srv.maintenance().Hash(rpc_pb2.HashRequest(), timeout=10).hash
        srv.stop()
        srv.start()
        after = normalise(srv.etcdctl("endpoint", "hashkv").stdout)
        after_150 = srv.maintenance().HashKV(rpc_pb2.HashKVRequest(revision=150), timeout=10)
        after_hash = srv.maintenance().Hash(rpc_pb2.HashRequest(), timeout=10).hash
        failures.check(before == after and before.strip() != "",
                       "endpoint hashkv changed across a restart: %r -> %r" % (before, after))
        failures.check(before_150.hash == after_150.hash and
                       before_150.compact_revision == after_150.compact_revision == 120,
                       "HashKV(150) changed across a restart: %s -> %s" % (before_150, after_150))
        failures.check(before_hash == after_hash, "Hash changed across a restart")
        # a write changes it
        srv.kv().Put(rpc_pb2.PutRequest(key=b"h/001", value=b"new"), timeout=10)
        changed = normalise(srv.etcdctl("endpoint", "hashkv").stdout)
        failures.check(changed != after, "endpoint hashkv did not change after a put")


def main():
    failures = Failures()
    compare_side_by_side(failures)
    want = nospace_scenario("etcd", failures)
    got = nospace_scenario(harness.candidate_kind(), failures)
    for w, g in zip(want, got):
        failures.check(w == g, "quota scenario, %s: etcd %r, candidate %r" % (w[0], w, g))
    hash_across_restart(failures)
    failures.raise_if_any()


if __name__ == "__main__":
    harness.run(main)
