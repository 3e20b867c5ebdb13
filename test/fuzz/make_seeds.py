#!/usr/bin/python3
"""Writes the hand-made seeds of test/fuzz/corpus/ (valid requests, entries
and flag sets) so that fuzzing starts from meaningful inputs. The committed
corpus also holds inputs found by fuzzing (scripts/test --fuzz --fuzz-merge).
Run with /usr/bin/python3 (python3-etcd3's stubs)."""
import os
import struct
import sys

from etcd3.etcdrpc import rpc_pb2 as pb

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

# fuzz_request.c's method table, in order.
METHODS = ["Range", "Put", "DeleteRange", "Txn", "Compact", "Watch", "LeaseGrant",
           "LeaseRevoke", "LeaseKeepAlive", "LeaseTimeToLive", "LeaseLeases", "MemberAdd",
           "MemberRemove", "MemberUpdate", "MemberList", "MemberPromote", "Alarm", "Status",
           "Defragment", "Hash", "HashKV", "Snapshot", "MoveLeader", "AuthEnable",
           "AuthDisable", "Authenticate", "UserAdd"]


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def txn():
    return pb.TxnRequest(
        compare=[pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.VERSION, key=b"a", version=0)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=b"a", value=b"1")),
                 pb.RequestOp(request_range=pb.RangeRequest(key=b"a", range_end=b"\0"))],
        failure=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"b", range_end=b"c"))])


def requests():
    return {
        "Range": pb.RangeRequest(key=b"a", range_end=b"z", limit=2, revision=1,
                                 sort_order=pb.RangeRequest.DESCEND, sort_target=pb.RangeRequest.MOD),
        "Put": pb.PutRequest(key=b"k", value=b"v", lease=7, prev_kv=True),
        "DeleteRange": pb.DeleteRangeRequest(key=b"a", range_end=b"\0", prev_kv=True),
        "Txn": txn(),
        "Compact": pb.CompactionRequest(revision=3, physical=True),
        "LeaseGrant": pb.LeaseGrantRequest(TTL=10, ID=5),
        "LeaseRevoke": pb.LeaseRevokeRequest(ID=5),
        "LeaseKeepAlive": pb.LeaseKeepAliveRequest(ID=5),
        "LeaseTimeToLive": pb.LeaseTimeToLiveRequest(ID=5, keys=True),
        "LeaseLeases": pb.LeaseLeasesRequest(),
        "MemberAdd": pb.MemberAddRequest(peerURLs=["http://127.0.0.1:2380", "https://[::1]:2381"]),
        "MemberRemove": pb.MemberRemoveRequest(ID=12345),
        "MemberUpdate": pb.MemberUpdateRequest(ID=12345, peerURLs=["http://127.0.0.2:2380"]),
        "MemberList": pb.MemberListRequest(),
        "Alarm": pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=1, alarm=pb.NOSPACE),
        "Status": pb.StatusRequest(),
        "Defragment": pb.DefragmentRequest(),
        "Hash": pb.HashRequest(),
        "HashKV": pb.HashKVRequest(revision=2),
        "Snapshot": pb.SnapshotRequest(),
        "Authenticate": pb.AuthenticateRequest(name="root", password="pw"),
        "UserAdd": pb.AuthUserAddRequest(name="u", password="p"),
    }


def watch_stream():
    # etcd 3.3's stubs have no watch_id (field 7): appended by hand, = 3
    msgs = [pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"a", range_end=b"\0", prev_kv=True,
                                                                  filters=[pb.WatchCreateRequest.NOPUT])),
            pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"b", start_revision=1)),
            pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"z", range_end=b"a")),
            pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=3))]
    out = b""
    for i, m in enumerate(msgs):
        b = m.SerializeToString()
        if i == 0:
            inner = m.create_request.SerializeToString() + bytes([0x38, 0x03])
            b = ld(1, inner)
        out += bytes([len(b)]) + b
    return out


def varint(n):
    out = b""
    while n >= 0x80:
        out += bytes([(n & 0x7f) | 0x80])
        n >>= 7
    return out + bytes([n])


def ld(field, data):
    return bytes([(field << 3) | 2]) + varint(len(data)) + data


def frame(payload):
    pad = (-len(payload)) % 8
    return b"BLS1" + struct.pack("<I", len(payload)) + payload + b"\0" * pad


def main():
    for name, msg in requests().items():
        write("request", name, bytes([METHODS.index(name)]) + msg.SerializeToString())
    write("request", "Watch", bytes([METHODS.index("Watch")]) + watch_stream())

    put = pb.PutRequest(key=b"k", value=b"v").SerializeToString()
    dele = pb.DeleteRangeRequest(key=b"a", range_end=b"\0").SerializeToString()
    grant = pb.LeaseGrantRequest(TTL=10, ID=5).SerializeToString()
    # ballastpb.Op field numbers: put 1, delete_range 2, txn 3, lease_grant 5
    write("entry_codec", "single-put", frame(ld(1, ld(1, put))))
    batch = ld(1, ld(1, put)) + ld(1, ld(2, dele)) + ld(1, ld(3, txn().SerializeToString())) + ld(1, ld(5, grant))
    write("entry_codec", "batch", frame(ld(2, batch)))
    # MemberOp (field 8): kind ADD, one member with id and a peer URL
    member = ld(2, bytes([0x08, 0x07]) + ld(3, b"http://127.0.0.1:2380"))
    write("entry_codec", "member", frame(ld(1, ld(8, bytes([0x08, 0x01]) + member))))

    flags = [
        ["--name", "n1", "--data-dir", "/tmp/n1", "--listen-client-urls", "http://127.0.0.1:2379",
         "--advertise-client-urls", "http://127.0.0.1:2379", "--listen-peer-urls", "http://127.0.0.1:2380",
         "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
         "--initial-cluster", "n1=http://127.0.0.1:2380,n2=http://127.0.0.2:2380"],
        ["--heartbeat-interval=50", "--election-timeout=0x3e8", "--snapshot-count", "1_000",
         "--batch-max-wait=1.5ms", "--batch-policy", "tiers", "ETCD_MAX_TXN_OPS=64"],
        ["-version"],
        ["--initial-cluster-state", "existing", "BALLAST_BATCH_MAX_OPS=7", "--quota-backend-bytes=-1"],
    ]
    for i, f in enumerate(flags):
        write("config", "flags%d" % i, "\0".join(f).encode())


if __name__ == "__main__":
    sys.exit(main())
