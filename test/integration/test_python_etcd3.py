"""The python3-etcd3 client library gets the same answers as from etcd.

The same sequence of etcd3.client calls runs against a fresh etcd 3.4.23 and a
fresh candidate: put (prev_kv), get, get_prefix (sort orders and targets,
keys_only), get_range, get_all, replace, put_if_not_exists, delete (prev_kv,
return_response), delete_prefix, transaction (value/version/create/mod
compares; success and failure branches; put/get/delete ops), compact and its
errors, status and members.  Results are compared as plain data: values,
KeyValue metadata and header revisions included; only the ids that name a
cluster or member (and raft_term) are left out.  status() compares the version,
that the leader is the member itself, and that db_size and raft_index are
positive; members() compares names and URLs (with each server's own ports
replaced by placeholders).
"""

import etcd3
import grpc
from etcd3.client import KVMetadata, Transactions
from google.protobuf import text_format
from google.protobuf.message import Message

import harness
from harness import Failures


def plain(value):
    """A comparable, printable form of what an etcd3 call returned."""
    if isinstance(value, KVMetadata):
        return {"key": value.key, "create_revision": value.create_revision,
                "mod_revision": value.mod_revision, "version": value.version,
                "lease": value.lease_id, "header_revision": value.response_header.revision}
    if isinstance(value, Message):
        return text_format.MessageToString(harness.strip_header_ids(value), as_one_line=True)
    if isinstance(value, (list, tuple)) or hasattr(value, "__next__"):
        return [plain(v) for v in value]
    return value


t = Transactions()      # compare and op builders: t.value("a") == "1", t.put(...)


def plain_error(exc):
    if isinstance(exc, grpc.RpcError):
        return ("error", exc.code().name, exc.details())
    return ("error", type(exc).__name__, str(exc))


def status_summary(client):
    status = client.status()
    members = list(client.members)
    return {"version": status.version,
            "leader is the only member": (status.leader is not None and len(members) == 1
                                          and status.leader.id == members[0].id),
            "db_size > 0": status.db_size > 0,
            "raft_index > 0": status.raft_index > 0}


def members_summary(server):
    def summary(client):
        urls = {server.client_url: "<client-url>", server.peer_url: "<peer-url>"}
        return [(m.name, [urls.get(u, u) for u in m.peer_urls],
                 [urls.get(u, u) for u in m.client_urls], m.id != 0)
                for m in client.members]
    return summary


def steps(server):
    """(description, function of the client); all run in order."""
    return [
        ("put a 1", lambda c: c.put("a", "1")),
        ("put a 2 prev_kv", lambda c: c.put("a", "2", prev_kv=True)),
        ("put a/x, a/y, b, b/x, c", lambda c: [c.put(k, v) for k, v in (
            ("a/x", "10"), ("a/y", "11"), ("b", "20"), ("b/x", "21"), ("c", "30"))]),
        ("put a/x again", lambda c: c.put("a/x", "12", prev_kv=True)),
        ("get a", lambda c: c.get("a")),
        ("get missing", lambda c: c.get("nosuchkey")),
        ("get serializable", lambda c: c.get("b", serializable=True)),
        ("get_prefix a", lambda c: c.get_prefix("a")),
        ("get_prefix a/", lambda c: c.get_prefix("a/")),
        ("get_prefix descend by key", lambda c: c.get_prefix("a", sort_order="descend")),
        ("get_prefix descend by mod", lambda c: c.get_prefix("a", sort_order="descend",
                                                             sort_target="mod")),
        ("get_prefix ascend by value", lambda c: c.get_prefix("b", sort_order="ascend",
                                                              sort_target="value")),
        ("get_prefix by version", lambda c: c.get_prefix("a", sort_order="descend",
                                                         sort_target="version")),
        ("get_range descend by create", lambda c: c.get_range("a", "d", sort_order="descend",
                                                              sort_target="create")),
        ("get_prefix keys_only", lambda c: c.get_prefix("a", keys_only=True)),
        ("get_range [a/, b/)", lambda c: c.get_range("a/", "b/")),
        ("get_range empty", lambda c: c.get_range("b", "a")),
        ("get_all", lambda c: c.get_all()),
        ("get_all descend by mod", lambda c: c.get_all(sort_order="descend", sort_target="mod")),
        ("replace a 2->3", lambda c: c.replace("a", "2", "3")),
        ("replace a wrong", lambda c: c.replace("a", "2", "4")),
        ("put_if_not_exists new", lambda c: c.put_if_not_exists("d", "40")),
        ("put_if_not_exists existing", lambda c: c.put_if_not_exists("d", "41")),
        ("delete a/y", lambda c: c.delete("a/y")),
        ("delete missing", lambda c: c.delete("nosuchkey")),
        ("delete prev_kv response", lambda c: c.delete("d", prev_kv=True, return_response=True)),
        ("delete_prefix b", lambda c: c.delete_prefix("b")),
        ("delete_prefix missing", lambda c: c.delete_prefix("zzz")),
        ("txn success", lambda c: c.transaction(
            compare=[t.value("a") == "3", t.version("a") > 1],
            success=[t.put("b", "50"), t.get("a"), t.get("a/x")],
            failure=[t.put("b", "51")])),
        ("txn failure", lambda c: c.transaction(
            compare=[t.value("a") == "nope"],
            success=[t.put("b", "52")],
            failure=[t.put("c", "31"), t.delete("a/x"), t.get("c")])),
        ("txn create/mod compares", lambda c: c.transaction(
            compare=[t.create("b") > 0, t.mod("c") < 1000, t.value("b") != "x"],
            success=[t.put("e", "1")], failure=[])),
        ("txn version == 0 (absent key)", lambda c: c.transaction(
            compare=[t.version("nosuchkey") == 0], success=[t.get("e")], failure=[])),
        ("txn empty", lambda c: c.transaction(compare=[], success=[], failure=[])),
        ("compact 5", lambda c: c.compact(5)),
        ("compact 5 again", lambda c: c.compact(5)),
        ("compact future", lambda c: c.compact(100000)),
        ("compact physical", lambda c: c.compact(8, physical=True)),
        ("get_all after compaction", lambda c: c.get_all()),
        ("put after compaction", lambda c: c.put("a", "after", prev_kv=True)),
        ("status", status_summary),
        ("members", members_summary(server)),
    ]


def run_all(server):
    client = etcd3.client("127.0.0.1", server.client_port, timeout=10)
    results = []
    try:
        for description, fn in steps(server):
            try:
                results.append((description, plain(fn(client))))
            except (grpc.RpcError, etcd3.exceptions.Etcd3Exception) as exc:  # a result too
                results.append((description, plain_error(exc)))
    finally:
        client.close()
    return results


def main():
    failures = Failures()
    with harness.Server(kind="etcd") as ref, harness.Server() as cand:
        want, got = run_all(ref), run_all(cand)
        for (description, w), (_, g) in zip(want, got):
            failures.check(w == g, "%s:\n    etcd:      %r\n    candidate: %r"
                           % (description, w, g))
        harness.check(cand.running(), "candidate exited; log:\n%s" % cand.log_tail())
    harness.log("%d python-etcd3 calls compared" % len(want))
    failures.raise_if_any()


if __name__ == "__main__":
    harness.run(main)
