"""Bad input gets etcd's error status and the server keeps serving.

The same raw requests go to etcd 3.4.23 and to the candidate:
  - malformed protobuf bytes to KV/Put, KV/Range, KV/DeleteRange, KV/Txn,
    Lease/LeaseGrant and Lease/LeaseRevoke, and a field numbered 0 in the
    Watch and LeaseKeepAlive streams:
    same gRPC status code as etcd (and the same message when etcd's message is
    not a Go decoder text, e.g. a valid message whose key is missing);
  - a Put just under --max-request-bytes (1.5 MiB) succeeds on both; one above
    it gets etcd's code and message (INVALID_ARGUMENT "etcdserver: request is
    too large"); one above the gRPC receive limit (max-request-bytes + 512 KiB)
    gets etcd's code (RESOURCE_EXHAUSTED);
  - Txns nested 128, 129 and 5,000 (34 KB) deep get etcd's answers (OK, then
    "too many operations in txn request");
  - unknown methods (/etcdserverpb.KV/RangeStream, /foo.Bar/Baz), unary and
    server-streaming, with a 5 s deadline: UNIMPLEMENTED, at once, never
    DEADLINE_EXCEEDED.
After every request the candidate still answers a Range and is still running.
"""

import time

import grpc

import harness
from harness import Failures, rpc_pb2

DEADLINE = 5.0
MiB = 1024 * 1024
GO_DECODER_PREFIX = "grpc: error unmarshalling request"

MALFORMED = [
    ("truncated varint", b"\xff\xff\xff"),
    ("length beyond the end", b"\x0a\x05ab"),
    ("tag without a value", b"\x0a\x01a\x12"),
    ("wrong wire type (varint) for bytes field 1", b"\x08\x01"),
    ("field number 0", b"\x00"),
    ("11-byte varint length", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),
    ("start-group wire type", b"\x0b"),
    ("invalid wire type 7", b"\x0f"),
    ("length of 4 GiB", b"\x12\x80\x80\x80\x80\x10"),
    ("unknown field only (key missing)", b"\xf8\xff\xff\xff\x0f\x01"),
    # protobuf-c keeps these as an unknown field and re-packs it as a bare
    # tag 0 it cannot read back: a re-packed LeaseGrant stopped apply (found
    # by test/fuzz's request target)
    ("field number 0 in a two-byte tag", b"\x80\x00\x00"),
    ("field number 0 in a nested message", b"\x12\x03\x80\x00\x00"),
]
# (field 2 of WatchRequest is a message, cancel_request; LeaseKeepAliveRequest
# has none, so there the nested case would be a valid unknown field)
BIDI_CASES = [
    ("/etcdserverpb.Watch/Watch", "field number 0 in a two-byte tag", b"\x80\x00\x00"),
    ("/etcdserverpb.Watch/Watch", "field number 0 in a nested message", b"\x12\x03\x80\x00\x00"),
    ("/etcdserverpb.Lease/LeaseKeepAlive", "field number 0 in a two-byte tag", b"\x80\x00\x00"),
]
# Lease methods are proposed re-packed from the decoded request, not as the
# client's bytes.
METHODS = ["/etcdserverpb.KV/Put", "/etcdserverpb.KV/Range",
           "/etcdserverpb.KV/DeleteRange", "/etcdserverpb.KV/Txn",
           "/etcdserverpb.Lease/LeaseGrant", "/etcdserverpb.Lease/LeaseRevoke"]
UNKNOWN_METHODS = ["/etcdserverpb.KV/RangeStream", "/foo.Bar/Baz"]


def identity(data):
    return data


def call(server, method, payload, streaming=False, bidi=False):
    """Sends raw bytes; returns (code name, details, seconds)."""
    channel = server.channel()
    started = time.monotonic()
    try:
        if bidi:
            stub = channel.stream_stream(method, request_serializer=identity,
                                         response_deserializer=identity)
            list(stub(iter([payload]), timeout=DEADLINE))
        elif streaming:
            stub = channel.unary_stream(method, request_serializer=identity,
                                        response_deserializer=identity)
            list(stub(payload, timeout=DEADLINE))
        else:
            stub = channel.unary_unary(method, request_serializer=identity,
                                       response_deserializer=identity)
            stub(payload, timeout=DEADLINE)
        code, details = "OK", ""
    except grpc.RpcError as exc:
        code, details = exc.code().name, exc.details()
    return code, details, time.monotonic() - started


def varint(n):
    out = b""
    while n >= 0x80:
        out += bytes([(n & 0x7f) | 0x80])
        n >>= 7
    return out + bytes([n])


def nested_txn(levels):
    """A TxnRequest whose success branch holds a Txn, `levels` deep."""
    txn = b""
    for _ in range(levels):
        op = b"\x22" + varint(len(txn)) + txn   # RequestOp.request_txn
        txn = b"\x12" + varint(len(op)) + op    # TxnRequest.success
    return txn


def put_bytes(value_size):
    return rpc_pb2.PutRequest(key=b"big", value=b"x" * value_size).SerializeToString()


class Comparison:
    def __init__(self, ref, cand):
        self.ref, self.cand = ref, cand
        self.failures = Failures()
        self.count = 0

    def still_serving(self, what):
        try:
            self.cand.kv().Range(rpc_pb2.RangeRequest(key=b"health"), timeout=DEADLINE)
            ok = self.cand.running()
        except grpc.RpcError as exc:
            ok = False
            what += " (Range afterwards: %s %s)" % (exc.code().name, exc.details())
        if not ok:
            raise harness.TestFailure("candidate stopped serving after %s; end of its log:\n%s"
                                      % (what, self.cand.log_tail()))

    def compare(self, what, method, payload, streaming=False, same_message=None, bidi=False):
        """Same code as etcd; same message too when `same_message` (default:
        unless etcd's message is its Go decoder's text)."""
        self.count += 1
        want = call(self.ref, method, payload, streaming, bidi)
        got = call(self.cand, method, payload, streaming, bidi)
        self.still_serving(what)
        if same_message is None:
            same_message = not want[1].startswith(GO_DECODER_PREFIX)
        label = "%s %s" % (method, what)
        if got[0] != want[0] or (same_message and got[1] != want[1]):
            self.failures.add("%s: etcd %s %r, candidate %s %r (after %.1fs)"
                              % (label, want[0], want[1], got[0], got[1], got[2]))
        return want, got


def main():
    with harness.Server(kind="etcd", name="ref") as ref, harness.Server() as cand:
        cmp = Comparison(ref, cand)
        for method in METHODS:
            for what, payload in MALFORMED:
                want, _ = cmp.compare(what, method, payload)
                harness.check(want[0] != "OK" or method != "/etcdserverpb.KV/Put",
                              "etcd accepted %r on Put: the case is not malformed" % payload)

        # A stream message that does not decode ends the stream with
        # INTERNAL (etcd's text is "grpc: failed to unmarshal the received
        # message" + its Go decoder's); a valid one leaves it open until the
        # deadline.
        for method, what, payload in BIDI_CASES:
            want, _ = cmp.compare(what, method, payload, bidi=True, same_message=False)
            harness.check(want[0] == "INTERNAL", "etcd answered %s on %s" % (want, method))

        # Nested Txns: etcd's op budget shrinks by one per level, so 128
        # levels pass and 129 get "too many operations"; 5,000 levels (34 KB)
        # overflowed protobuf-c's recursive decoder and killed Ballast.
        for levels in (128, 129, 5000):
            want, _ = cmp.compare("Txn nested %d deep" % levels, "/etcdserverpb.KV/Txn",
                                  nested_txn(levels), same_message=True)
            harness.check(want[0] == ("OK" if levels <= 128 else "INVALID_ARGUMENT"),
                          "etcd answered %s to a Txn nested %d deep" % (want, levels))

        limit = 3 * MiB // 2
        want, _ = cmp.compare("value of 1 MiB", METHODS[0], put_bytes(MiB))
        harness.check(want[0] == "OK", "etcd rejected a 1 MiB Put: %s" % (want,))
        want, _ = cmp.compare("value of 1.5 MiB + 1 KiB", METHODS[0],
                              put_bytes(limit + 1024), same_message=True)
        harness.check(want[0] == "INVALID_ARGUMENT",
                      "etcd answered %s to a Put above --max-request-bytes" % (want,))
        want, _ = cmp.compare("value of 2 MiB + 1 KiB", METHODS[0],
                              put_bytes(limit + 512 * 1024 + 1024), same_message=False)
        harness.check(want[0] == "RESOURCE_EXHAUSTED",
                      "etcd answered %s to a Put above the gRPC limit" % (want,))

        for method in UNKNOWN_METHODS:
            for streaming in (False, True):
                what = "unknown method (%s)" % ("server-streaming" if streaming else "unary")
                want, got = cmp.compare(what, method, b"\x0a\x01a", streaming,
                                        same_message=False)
                harness.check(want[0] == "UNIMPLEMENTED", "etcd answered %s" % (want,))
                cmp.failures.check(got[2] < DEADLINE / 2, "%s %s: answered after %.1fs"
                                   % (method, what, got[2]))
        harness.log("%d bad requests compared" % cmp.count)
        cmp.failures.raise_if_any()


if __name__ == "__main__":
    harness.run(main)
