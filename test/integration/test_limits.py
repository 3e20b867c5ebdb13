"""etcd's request limits, at and around their edges, side by side with etcd.

Each request goes to etcd 3.4.23 and to the candidate; the answers must be
the same (status code and message, or the whole response with the header's
IDs cleared: kvs, count, more, revisions).  After every abuse the candidate
must answer a Put and a linearizable Range within 5 s (Server.check_healthy;
etcd gets the same Put, so that both stay at the same revision).

  - a 10,000-key range: Range with `limit` (0, 1, 100, 9,999, 10,000, 10,001,
    negative), with every sort, count_only, keys_only, an old revision,
    min/max revision filters, serializable, `range_end` "\\0", inside a Txn,
    and paged through;
  - --max-request-bytes: etcd rejects a write when its InternalRaftRequest
    (the request + a header with a 64-bit request ID) is larger than the
    limit.  The ID's varint is 7 to 10 bytes long, set by the low 16 bits of
    etcd's member ID, so etcd's exact edge moves by up to 3 bytes from one
    member to another.  Checked: a Put and a Txn just under the edge (as
    if the ID took 10 bytes) pass on both; one byte over it for a 7-byte ID
    (4 bytes more) they are refused on both with INVALID_ARGUMENT
    "etcdserver: request is too large"; and
    each server's own exact edge (etcd's from its member ID, Ballast's with
    10-byte IDs: it never takes a request etcd would refuse).  A Range with
    a key over the limit is not a proposal: answered on both.  The gRPC
    receive limit (max-request-bytes + 512 KiB): a message of exactly that
    size gets "request is too large", one byte more RESOURCE_EXHAUSTED.
    With --max-request-bytes 10000 as well;
  - --max-txn-ops: 128 operations in compare, success or failure pass,
    129 in any of them fail with "etcdserver: too many operations in txn
    request"; a nested txn gets what its parent leaves; with --max-txn-ops 4
    as well;
  - the txn that makes etcd 3.4.23 panic (see etcd_panic_case below).
"""

import subprocess

import grpc

import harness
from harness import Failures, check, rpc_pb2

MiB = 1024 * 1024
RANGE_KEYS = 10000
TOO_LARGE = "etcdserver: request is too large"
TOO_MANY_OPS = "etcdserver: too many operations in txn request"
KEY_NOT_FOUND = "etcdserver: key not found"
R = rpc_pb2.RangeRequest


def varint_len(value):
    n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


def raft_request_size(request_len, id_len):
    """etcd's InternalRaftRequest around a request of `request_len` bytes:
    the request's field (1-byte tag, length) and the header field (2-byte
    tag 100, length 1 byte) holding RequestHeader{ID} (1-byte tag, ID)."""
    return 1 + varint_len(request_len) + request_len + 2 + 1 + 1 + id_len


def etcd_id_len(member_id):
    """Bytes of the varint of etcd's request IDs: the low 16 bits of the
    member ID above 48 bits of milliseconds and counter (idutil)."""
    bits = 48 + (member_id & 0xFFFF).bit_length()
    return (bits + 6) // 7


def answer(server, method, request):
    """(code name, details, response with the header IDs cleared or None)."""
    try:
        resp = getattr(server.kv(), method)(request, timeout=30)
        return "OK", "", harness.strip_header_ids(resp)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details(), None


class Pair:
    """etcd and the candidate, started with the same flags."""

    def __init__(self, ref, cand, failures):
        self.ref, self.cand, self.failures = ref, cand, failures
        self.count = 0

    def both(self, method, request):
        return answer(self.ref, method, request), answer(self.cand, method, request)

    def compare(self, what, method, request, compare_details=True, healthy=True):
        """Same code, details and response on both; returns etcd's answer."""
        self.count += 1
        want, got = self.both(method, request)
        if healthy:
            self.healthy(what)
        same = got[0] == want[0] and got[2] == want[2] and \
            (not compare_details or got[1] == want[1])
        self.failures.check(same, "%s: etcd %s %r, candidate %s %r%s" % (
            what, want[0], want[1], got[0], got[1],
            "" if want[2] == got[2] else "\n--- etcd:\n%s--- candidate:\n%s" % (
                str(want[2])[:3000], str(got[2])[:3000])))
        return want

    def healthy(self, what):
        """Both answer a Put and a Range (on etcd too, so that revisions
        stay the same on both)."""
        self.ref.check_healthy(what)
        self.cand.check_healthy(what)

    def put_both(self, key, value):
        for server in (self.ref, self.cand):
            server.kv().Put(rpc_pb2.PutRequest(key=key, value=value), timeout=30)


# ---------------------------------------------------------------- ranges

def range_key(i):
    return b"r/%05d" % i


def fill_range_keys(pair):
    """10,000 keys r/00000.. in txns of 100 puts, then every 7th key
    updated and every 1,000th deleted (so versions, mod and create
    revisions differ between keys); same revisions on both servers."""
    for server in (pair.ref, pair.cand):
        kv = server.kv()
        for start in range(0, RANGE_KEYS, 100):
            ops = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(
                key=range_key(i), value=b"v%d" % (i * 7919 % 10007)))
                for i in range(start, start + 100)]
            kv.Txn(rpc_pb2.TxnRequest(success=ops), timeout=30)
        ops = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=range_key(i), value=b"u"))
               for i in range(0, RANGE_KEYS, 7)]
        for start in range(0, len(ops), 100):
            kv.Txn(rpc_pb2.TxnRequest(success=ops[start:start + 100]), timeout=30)
        for i in range(0, RANGE_KEYS, 1000):
            kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=range_key(i)), timeout=30)


def check_ranges(pair):
    fill_range_keys(pair)
    lo, hi = b"r/", b"r0"
    mid_rev = pair.ref.kv().Range(R(key=b"x"), timeout=10).header.revision - 150
    cases = [("limit %d" % n, R(key=lo, range_end=hi, limit=n))
             for n in (0, 1, 100, 9899, 9900, 9901, 9999, 10000, 10001, -5)]
    for target in ("KEY", "VERSION", "CREATE", "MOD", "VALUE"):
        for order in ("ASCEND", "DESCEND", "NONE"):
            cases.append(("limit 10 sort %s %s" % (target, order), R(
                key=lo, range_end=hi, limit=10,
                sort_target=getattr(R, target), sort_order=getattr(R, order))))
    cases += [
        ("count_only limit 10", R(key=lo, range_end=hi, limit=10, count_only=True)),
        ("keys_only limit 3", R(key=lo, range_end=hi, limit=3, keys_only=True)),
        ("limit 100 at an older revision", R(key=lo, range_end=hi, limit=100,
                                             revision=mid_rev)),
        ("limit 5 min_mod_revision", R(key=lo, range_end=hi, limit=5,
                                       min_mod_revision=mid_rev)),
        ("limit 5 max_mod_revision", R(key=lo, range_end=hi, limit=5,
                                       max_mod_revision=mid_rev)),
        ("limit 5 min_create_revision", R(key=lo, range_end=hi, limit=5,
                                          min_create_revision=mid_rev - 50)),
        ("limit 5 max_create_revision", R(key=lo, range_end=hi, limit=5,
                                          max_create_revision=3)),
        ("serializable limit 1000", R(key=lo, range_end=hi, limit=1000, serializable=True)),
        ("from the middle limit 50", R(key=range_key(5555), range_end=hi, limit=50)),
        ("range_end \\0 limit 20", R(key=range_key(9990), range_end=b"\0", limit=20)),
        ("prefix r/05 limit 10 descending", R(key=b"r/05", range_end=b"r/06", limit=10,
                                              sort_order=R.DESCEND)),
    ]
    for what, request in cases:
        pair.compare("Range " + what, "Range", request, healthy=False)
    txn = rpc_pb2.TxnRequest(success=[
        rpc_pb2.RequestOp(request_range=R(key=lo, range_end=hi, limit=2500)),
        rpc_pb2.RequestOp(request_range=R(key=lo, range_end=hi, limit=10, count_only=True))])
    pair.compare("Txn with two limited ranges", "Txn", txn, healthy=False)
    pair.healthy("the limited ranges")
    paged, _ = harness.range_all(pair.cand.kv(), lo, page=997)
    check(len(paged) == RANGE_KEYS - RANGE_KEYS // 1000,
          "paging through r/ by 997 keys gave %d keys, expected %d"
          % (len(paged), RANGE_KEYS - RANGE_KEYS // 1000))
    check([kv.key for kv in paged] == sorted(kv.key for kv in paged),
          "paging through r/ gave the keys out of order")


# ---------------------------------------------------------- request bytes

def put_of_value_len(value_len):
    return rpc_pb2.PutRequest(key=b"big", value=b"x" * value_len)


def txn_of_value_len(value_len):
    return rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(
        request_put=rpc_pb2.PutRequest(key=b"bigtxn", value=b"x" * value_len))])


def largest_passing(make, limit, id_len):
    """The largest value length whose request `make(n)` etcd takes with
    request IDs of `id_len` bytes."""
    n = limit
    while raft_request_size(make(n).ByteSize(), id_len) > limit:
        n -= 1
    return n


def server_id_len(server):
    """The request-ID length that sets a server's edge: etcd's from its
    member ID; Ballast counts 10 bytes (the longest, whatever its ID)."""
    if server.kind == "etcd":
        member_id = server.kv().Range(R(key=b"x"), timeout=10).header.member_id
        return etcd_id_len(member_id)
    return 10


def check_request_bytes(pair, limit):
    for method, make in (("Put", put_of_value_len), ("Txn", txn_of_value_len)):
        under = largest_passing(make, limit, 10)
        over = largest_passing(make, limit, 7) + 1
        want = pair.compare("%s just under --max-request-bytes %d" % (method, limit),
                            method, make(under))
        check(want[0] == "OK", "etcd refused a %s just under the limit: %s" % (method, want))
        want = pair.compare("%s just over --max-request-bytes %d" % (method, limit),
                            method, make(over))
        check(want[:2] == ("INVALID_ARGUMENT", TOO_LARGE),
              "etcd answered %s to a %s just over the limit" % (want[:2], method))
        for server in (pair.ref, pair.cand):
            edge = largest_passing(make, limit, server_id_len(server))
            for n, expected in ((edge, "OK"), (edge + 1, "INVALID_ARGUMENT")):
                got = answer(server, method, make(n))
                pair.failures.check(got[0] == expected, "%s: a %s of %d bytes (edge %d) "
                                    "answered %s %r, expected %s" % (
                                        server, method, make(n).ByteSize(),
                                        make(edge).ByteSize(), got[0], got[1], expected))
        pair.healthy("%ss at --max-request-bytes %d" % (method, limit))
    delete = rpc_pb2.DeleteRangeRequest(key=b"d" * (limit + 10))
    want = pair.compare("DeleteRange of a key over --max-request-bytes %d" % limit,
                        "DeleteRange", delete)
    check(want[:2] == ("INVALID_ARGUMENT", TOO_LARGE), "etcd answered %s" % (want[:2],))
    rng = R(key=b"k" * (limit + 10))
    want = pair.compare("Range of a key over --max-request-bytes %d" % limit, "Range", rng)
    check(want[0] == "OK", "etcd answered %s" % (want[:2],))

    grpc_limit = limit + 512 * 1024
    at_grpc_limit = put_of_value_len(grpc_limit - 10)
    while at_grpc_limit.ByteSize() < grpc_limit:
        at_grpc_limit.value += b"x"
    check(at_grpc_limit.ByteSize() == grpc_limit, "could not build a Put of %d bytes"
          % grpc_limit)
    want = pair.compare("Put of exactly the gRPC receive limit %d" % grpc_limit,
                        "Put", at_grpc_limit)
    check(want[:2] == ("INVALID_ARGUMENT", TOO_LARGE), "etcd answered %s" % (want[:2],))
    at_grpc_limit.value += b"x"
    # the text differs between grpc-go and gRPC C core: the code must match
    want = pair.compare("Put one byte over the gRPC receive limit %d" % grpc_limit,
                        "Put", at_grpc_limit, compare_details=False)
    check(want[0] == "RESOURCE_EXHAUSTED", "etcd answered %s" % (want[:2],))


# ---------------------------------------------------------------- txn ops

def puts(prefix, count):
    return [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"%s%04d" % (prefix, i),
                                                             value=b"v"))
            for i in range(count)]


def compares(prefix, count):
    return [rpc_pb2.Compare(key=b"%s%04d" % (prefix, i), target=rpc_pb2.Compare.VERSION,
                            result=rpc_pb2.Compare.EQUAL, version=0)
            for i in range(count)]


def check_txn_ops(pair, max_ops):
    T = rpc_pb2.TxnRequest
    cases = [
        ("%d puts in success" % max_ops, T(success=puts(b"t/s", max_ops)), True),
        ("%d puts in success" % (max_ops + 1), T(success=puts(b"t/s", max_ops + 1)), False),
        ("%d puts in failure" % (max_ops + 1),
         T(compare=compares(b"t/none", 1), failure=puts(b"t/f", max_ops + 1)), False),
        ("%d compares, success and failure" % max_ops,
         T(compare=compares(b"t/c", max_ops), success=puts(b"t/s", max_ops),
           failure=puts(b"t/f", max_ops)), True),
        ("%d compares" % (max_ops + 1), T(compare=compares(b"t/c", max_ops + 1)), False),
        ("nested txn of %d puts in a txn of 1 op" % (max_ops - 1),
         T(success=[rpc_pb2.RequestOp(request_txn=T(success=puts(b"t/n", max_ops - 1)))]),
         True),
        ("nested txn of %d puts in a txn of 1 op" % max_ops,
         T(success=[rpc_pb2.RequestOp(request_txn=T(success=puts(b"t/n", max_ops)))]),
         False),
        ("%d ranges in success" % (max_ops + 1),
         T(success=[rpc_pb2.RequestOp(request_range=R(key=b"t/s0000"))] * (max_ops + 1)),
         False),
    ]
    for what, txn, passes in cases:
        want = pair.compare("Txn with %s (--max-txn-ops %d)" % (what, max_ops), "Txn", txn)
        expected = ("OK", "") if passes else ("INVALID_ARGUMENT", TOO_MANY_OPS)
        check(want[:2] == expected, "etcd answered %s to a txn with %s, expected %s"
              % (want[:2], what, expected))


# -------------------------------------------------------- etcd's panic txn

def delete_all_from(key):
    """DeleteRange with range_end "\\0": every key >= key."""
    return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(
        key=key, range_end=b"\0"))


def panic_txns():
    """Txns that etcd 3.4.23 accepts and then cannot apply: a DeleteRange
    with range_end "\\0" removes a key that a later ignore_value or
    ignore_lease Put of the same txn needs.  etcd's duplicate-key check
    (v3rpc checkIntervals) makes the interval [key, "\\0"), which contains
    nothing, so it lets the txn through; its precondition check
    (checkRequestPut) looks for the Put's key in the store as it was before
    the txn, where it exists; while applying, the Put finds no key, and etcd
    panics ("unexpected error during txn") instead of answering."""
    T = rpc_pb2.TxnRequest
    before = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"q/before", value=b"b"))
    ignore_value = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"p/a",
                                                                   ignore_value=True))
    ignore_lease = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"p/a", value=b"n",
                                                                   ignore_lease=True))
    return [
        ("delete p/..\\0 then ignore_value put p/a",
         T(success=[before, delete_all_from(b"p/"), ignore_value])),
        ("delete p/..\\0 then ignore_lease put p/a",
         T(success=[before, delete_all_from(b"p/"), ignore_lease])),
        ("nested txn deleting p/..\\0, then ignore_value put p/a",
         T(success=[before, rpc_pb2.RequestOp(request_txn=T(
             success=[delete_all_from(b"p/")])), ignore_value])),
    ]


def etcd_panic_case(pair):
    """What the candidate must answer to the txns of panic_txns().

    etcd checks a txn before it applies it because a write txn, once
    started, cannot be undone: every error is meant to be found first.  For
    these txns its checks pass (the duplicate-key rule does not see "\\0"
    ranges, and Ballast keeps that rule as etcd has it: a client may rely on
    a Put next to a "\\0" delete being accepted).  So the txn runs, in
    order, and its Put finds no key: what etcd answers for an ignore_value
    or ignore_lease Put of a missing key is INVALID_ARGUMENT "etcdserver:
    key not found", and a txn is all or nothing.  The correct answer is
    therefore that error, with nothing written: the revision stays, p/a
    keeps its value and mod_revision, the earlier Put q/before is not there,
    no watcher sees an event (the next Put takes the next revision).

    Compared with etcd: the same error for the same Put on a missing key
    when etcd's own precheck finds it; the same txns with the Put first
    (it runs before the delete: accepted by both); a plain Put after a "\\0"
    delete (accepted by both)."""
    T = rpc_pb2.TxnRequest
    ignore_value = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"p/a",
                                                                   ignore_value=True))
    want = pair.compare("ignore_value put of a missing key in a txn", "Txn",
                        T(success=[ignore_value]))
    check(want[:2] == ("INVALID_ARGUMENT", KEY_NOT_FOUND), "etcd answered %s" % (want[:2],))
    pair.put_both(b"p/a", b"old")
    pair.compare("ignore_value put of p/a, then delete p/..\\0", "Txn",
                 T(success=[ignore_value, delete_all_from(b"p/")]))
    pair.put_both(b"p/a", b"old")
    pair.compare("delete p/..\\0, then a plain put of p/a", "Txn",
                 T(success=[delete_all_from(b"p/"), rpc_pb2.RequestOp(
                     request_put=rpc_pb2.PutRequest(key=b"p/a", value=b"new"))]))

    cases = panic_txns()
    # the reference cannot answer: show that each txn still makes etcd 3.4.23
    # exit, so that this test keeps checking the case it is about
    for what, txn in cases:
        with harness.Server(kind="etcd", name="doomed") as doomed:
            doomed.kv().Put(rpc_pb2.PutRequest(key=b"p/a", value=b"old"), timeout=10)
            got = answer(doomed, "Txn", txn)
            try:
                doomed.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass                      # still running: reported just below
            check(not doomed.running() and "unexpected error during txn" in doomed.log_tail(),
                  "etcd 3.4.23 did not panic on the txn %s (answered %s %r): this test's "
                  "case no longer exists" % (what, got[0], got[1]))
        harness.log("etcd 3.4.23 panics on the txn %s" % what)
    if pair.cand.kind == "etcd":
        harness.log("candidate is etcd: the answer to etcd's panic txns is checked on "
                    "Ballast only")
        return

    kv = pair.cand.kv()
    for what, txn in cases:
        kv.Put(rpc_pb2.PutRequest(key=b"p/a", value=b"old"), timeout=10)
        before = kv.Range(R(key=b"p/", range_end=b"\0"), timeout=10)
        got = answer(pair.cand, "Txn", txn)
        pair.failures.check(got[:2] == ("INVALID_ARGUMENT", KEY_NOT_FOUND),
                            "txn %s: candidate answered %s %r, expected INVALID_ARGUMENT %r"
                            % (what, got[0], got[1], KEY_NOT_FOUND))
        after = kv.Range(R(key=b"p/", range_end=b"\0"), timeout=10)
        pair.failures.check(
            after.header.revision == before.header.revision and
            list(after.kvs) == list(before.kvs),
            "txn %s changed the store: revision %d -> %d, keys from p/ %s -> %s" % (
                what, before.header.revision, after.header.revision,
                [(k.key, k.value, k.mod_revision) for k in before.kvs],
                [(k.key, k.value, k.mod_revision) for k in after.kvs]))
        rev = pair.cand.check_healthy("the txn %s" % what)
        pair.failures.check(rev == before.header.revision + 1,
                            "the Put after the txn %s got revision %d, expected %d"
                            % (what, rev, before.header.revision + 1))


def main():
    failures = Failures()
    with harness.Server(kind="etcd", name="ref") as ref, harness.Server() as cand:
        pair = Pair(ref, cand, failures)
        check_ranges(pair)
        harness.log("10,000-key ranges compared")
        check_request_bytes(pair, 3 * MiB // 2)
        harness.log("--max-request-bytes edges compared")
        check_txn_ops(pair, 128)
        harness.log("--max-txn-ops edges compared")
        etcd_panic_case(pair)
        harness.log("%d requests compared" % pair.count)
    flags = ["--max-txn-ops", "4", "--max-request-bytes", "10000"]
    with harness.Server(kind="etcd", name="ref", extra_args=flags) as ref, \
            harness.Server(extra_args=flags) as cand:
        pair = Pair(ref, cand, failures)
        check_request_bytes(pair, 10000)
        check_txn_ops(pair, 4)
        harness.log("%d requests compared with %s" % (pair.count, " ".join(flags)))
    failures.raise_if_any()


if __name__ == "__main__":
    harness.run(main)
