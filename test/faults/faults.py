"""Shared machinery of the fault tests (test/faults/test_*.py).

- Load: concurrent clients that spread mixed KV operations over the members
  of a cluster, fail over to the next member after an error like a client
  given every endpoint, and record every operation in a lincheck.History:
  Puts of unique values and linearizable Gets on a few shared keys, Txn
  compare-and-set on them (compare the value or the mod_revision that client
  last read, then Put), and Puts of unique keys whose acknowledgements are
  the durability check.  It can be paused (every client idle) for checks.
- round_checks(): with the load paused, every member reaches the same applied
  index, every acknowledged unique-key Put is on every member with its value
  and mod_revision, HashKV is equal on all members at the current revision,
  and a linearizable Range of everything the clients wrote is recorded in
  the history (it pins unknown outcomes for the checker).
- check_linearizable(): runs the checker on the history, prints the figures.
- Netns: each member in its own network namespace, joined to the others by
  veth pairs with 127/8 addresses, and to the root namespace (where the test
  and its clients run) by one more veth pair each; partitions drop every
  packet on a member-to-member link.

Environment: BALLAST_FAULT_SEED (random seed, default: time-based, printed),
BALLAST_FAULT_CLIENTS (6).
"""

import os
import random
import re
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "lincheck"))

import grpc  # noqa: E402

import harness  # noqa: E402
import lincheck  # noqa: E402
from harness import check, rpc_pb2, rpc_pb2_grpc  # noqa: E402

PREFIX = b"f/"
SHARED_KEYS = [PREFIX + b"k%d" % i for i in range(4)]
DURABLE_PREFIX = PREFIX + b"d/"
OP_TIMEOUT = 5.0


def seed():
    value = int(os.environ.get("BALLAST_FAULT_SEED") or time.time_ns() % 1000000)
    harness.log("random seed %d (BALLAST_FAULT_SEED=%d repeats the choices)" % (value, value))
    return value


def env_int(name, default):
    return int(os.environ.get(name, default))


def kv_of(kv):
    return (kv.value, kv.create_revision, kv.mod_revision, kv.version)


class Client(threading.Thread):
    def __init__(self, load, number, first):
        super().__init__(daemon=True)
        self.load = load
        self.number = number
        self.index = first
        self.rng = random.Random(load.seed * 1000 + number)
        self.seen = {}               # shared key -> (value, mod_revision) last read
        self.count = 0
        self.idle = threading.Event()

    def run(self):
        channels = [m.new_channel() for m in self.load.members]
        stubs = [rpc_pb2_grpc.KVStub(c) for c in channels]
        try:
            while not self.load.stopping.is_set():
                if not self.load.go.is_set():
                    self.idle.set()
                    self.load.go.wait(1.0)
                    continue
                self.idle.clear()
                member = self.load.members[self.index]
                if not self.one_op(stubs[self.index], member):
                    self.index = (self.index + 1) % len(stubs)
                    self.load.stopping.wait(0.05)
        finally:
            self.idle.set()
            for channel in channels:
                channel.close()

    def one_op(self, stub, member):
        """Runs one random operation; False after an error."""
        history = self.load.history
        self.count += 1
        value = b"c%d-%d" % (self.number, self.count)
        what = self.rng.random()
        key = self.rng.choice(SHARED_KEYS)
        if what < 0.3:
            op = history.invoke(self.number, "put", key, value=value)
            call = lambda: stub.Put(rpc_pb2.PutRequest(key=key, value=value),  # noqa: E731
                                    timeout=OP_TIMEOUT)
            done = lambda r: history.ok(op, r.header.revision)  # noqa: E731
        elif what < 0.6:
            op = history.invoke(self.number, "get", key)
            call = lambda: stub.Range(rpc_pb2.RangeRequest(key=key),  # noqa: E731
                                      timeout=OP_TIMEOUT)

            def done(r):
                history.ok(op, r.header.revision, kv=kv_of(r.kvs[0]) if r.kvs else None)
                self.seen[key] = (r.kvs[0].value, r.kvs[0].mod_revision) if r.kvs \
                    else (None, 0)
        elif what < 0.8:
            last_value, last_mod = self.seen.get(key, (None, 0))
            if last_value is not None and self.rng.random() < 0.5:
                compare = ("value", last_value)
                cmp = rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.VALUE,
                                      result=rpc_pb2.Compare.EQUAL, value=last_value)
            else:
                compare = ("mod", last_mod)
                cmp = rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.MOD,
                                      result=rpc_pb2.Compare.EQUAL, mod_revision=last_mod)
            op = history.invoke(self.number, "cas", key, value=value, compare=compare)
            txn = rpc_pb2.TxnRequest(compare=[cmp], success=[rpc_pb2.RequestOp(
                request_put=rpc_pb2.PutRequest(key=key, value=value))])
            call = lambda: stub.Txn(txn, timeout=OP_TIMEOUT)  # noqa: E731

            def done(r):
                history.ok(op, r.header.revision, succeeded=r.succeeded)
                if r.succeeded:
                    self.seen[key] = (value, r.header.revision)
        else:
            key = DURABLE_PREFIX + b"%d/%07d" % (self.number, self.count)
            op = history.invoke(self.number, "put", key, value=value)
            call = lambda: stub.Put(rpc_pb2.PutRequest(key=key, value=value),  # noqa: E731
                                    timeout=OP_TIMEOUT)

            def done(r):
                history.ok(op, r.header.revision)
                with self.load.lock:
                    self.load.acked.append((key, value, r.header.revision))
                    self.load.ack_times.append((op.invoked, op.returned))
        try:
            done(call())
            with self.load.lock:
                self.load.served.append((member.name, op.invoked, op.returned))
            return True
        except grpc.RpcError as exc:
            history.fail(op)
            with self.load.lock:
                if op.kind == "put" and op.key.startswith(DURABLE_PREFIX):
                    self.load.uncertain.append((op.key, op.value))
                self.load.errors.append((time.monotonic(), member.name, exc.code(),
                                         exc.details()))
            return False


class Load:
    """`clients` Client threads over `members`, client i starting at member
    i mod len(members)."""

    def __init__(self, members, seed_value, clients=None):
        self.members = list(members)
        self.seed = seed_value
        self.history = lincheck.History()
        self.lock = threading.Lock()
        self.acked = []              # (key, value, revision) of unique-key Puts
        self.ack_times = []          # (invoked, returned) of each acknowledged one
        self.uncertain = []          # (key, value) of unique-key Puts that failed
        self.errors = []             # (time, member name, code, details)
        self.served = []             # (member name, invoked, returned) of answered operations
        self.go = threading.Event()
        self.stopping = threading.Event()
        count = clients or env_int("BALLAST_FAULT_CLIENTS", 6)
        self.clients = [Client(self, n, n % len(self.members)) for n in range(count)]

    def start(self):
        self.go.set()
        for client in self.clients:
            client.start()
        return self

    def pause(self, timeout=OP_TIMEOUT * 3):
        """Returns once every client is idle (its operation in flight done)."""
        self.go.clear()
        deadline = time.monotonic() + timeout
        for client in self.clients:
            check(client.idle.wait(max(0.0, deadline - time.monotonic())),
                  "client %d still busy %.0fs after the load was paused" % (client.number, timeout))

    def resume(self):
        self.go.set()

    def stop(self):
        self.stopping.set()
        self.go.set()
        for client in self.clients:
            client.join(OP_TIMEOUT * 3)
        check(not any(c.is_alive() for c in self.clients), "a client thread did not stop")

    def acked_count(self):
        with self.lock:
            return len(self.acked)

    def wait_acked_after(self, since, timeout, what):
        """Waits until a unique-key Put invoked after `since` (time.monotonic())
        is acknowledged; returns how long after `since` that was."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                later = [returned for invoked, returned in self.ack_times[-200:]
                         if invoked > since]
            if later:
                return min(later) - since
            time.sleep(0.05)
        raise harness.TestFailure("no Put acknowledged within %.0fs %s (errors: %s)"
                                  % (timeout, what, self.error_summary()))

    def error_summary(self, since=0.0):
        with self.lock:
            errors = [e for e in self.errors if e[0] >= since]
        counts = {}
        for _, _, code, details in errors:
            what = "%s %s" % (code.name, re.sub(r"127\.[0-9.]+:\d+", "<address>", details))
            counts[what] = counts.get(what, 0) + 1
        return ", ".join("%d x %s" % (n, what) for what, n in sorted(counts.items()))


def record_final_range(cluster, load, member=None):
    """A linearizable Range of everything the clients wrote, recorded in the
    history (failed: left out)."""
    member = member or cluster.leader()
    history = load.history
    op = history.invoke("check", "range", PREFIX)
    try:
        resp = member.kv().Range(rpc_pb2.RangeRequest(key=PREFIX,
                                                      range_end=harness.prefix_end(PREFIX)),
                                 timeout=30)
    except grpc.RpcError:
        history.fail(op)
        raise
    history.ok(op, resp.header.revision, kvs={kv.key: kv_of(kv) for kv in resp.kvs})
    return resp.header.revision


def round_checks(cluster, load, label):
    """With the load paused: same applied index, every acknowledged
    unique-key Put on every member, HashKV equal at the current revision."""
    started = time.monotonic()
    cluster.wait_ready()
    index = cluster.wait_applied_equal(timeout=60)
    with load.lock:
        acked, uncertain = list(load.acked), list(load.uncertain)
    harness.check_acked_on_members(cluster.members, DURABLE_PREFIX, acked, uncertain)
    revision = record_final_range(cluster, load)
    hashes = cluster.check_hashkv_equal(revision)
    harness.log("%s: applied index %d everywhere, %d acknowledged unique Puts on every member "
                "(%d unknown), HashKV at revision %d equal (%s) [%.1fs]"
                % (label, index, len(acked), len(uncertain), revision,
                   next(iter(hashes.values()))[0], time.monotonic() - started))
    return revision


def check_linearizable(load, name):
    ops = load.history.operations()
    result = lincheck.check(ops)
    kinds = {}
    for op in ops:
        kinds[op.kind] = kinds.get(op.kind, 0) + 1
    harness.log("history: %s (%s)" % (str(result).splitlines()[0],
                                      ", ".join("%s %d" % kv for kv in sorted(kinds.items()))))
    if not result.ok:
        path = os.path.join(harness.artifacts_dir("faults"), "%s-history.txt" % name)
        with open(path, "w") as f:
            for op in sorted(ops, key=lambda o: o.invoked):
                f.write("%r\n" % op)
        check(False, "the recorded history is not linearizable (all operations in %s): %s"
              % (path, result.reason))
    return result


# --------------------------------------------------------------------------
# Network namespaces
# --------------------------------------------------------------------------

IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"
TC = "/usr/sbin/tc" if os.path.exists("/usr/sbin/tc") else "/sbin/tc"


def _run(*cmd):
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise harness.TestFailure("%s failed (%d): %s" % (" ".join(cmd), res.returncode,
                                                          res.stderr.strip()))
    return res.stdout


class Netns:
    """`size` network namespaces, one per member, named <tag>m<i>.

    Addresses stay on 127/8 (the project's rule: no traffic off loopback):
    member i is 127.B.0.i on its namespace's lo, where B is picked from this
    process's PID.  Members are joined pairwise by veth pairs; each member's
    namespace is joined to the root namespace by one more pair whose root end
    is 127.B.1.i.  Linux drops 127/8 packets that arrive on or leave by a
    non-loopback interface unless the interface has route_localnet=1 (set on
    each veth, in the members' namespaces and on our root ends only), and
    the local routing table's 127.0.0.0/8 route would keep them on lo: /32
    routes in that same table (longest prefix wins) send each peer address
    over its veth.  A partition replaces a link's queueing discipline by a
    pfifo of length 0 on both ends: every packet is dropped in silence, like
    a cable pulled, while routes and addresses stay (heal removes it)."""

    TAG = "blf"

    def __init__(self, size=3):
        pid = os.getpid()
        self.tag = "%s%d" % (self.TAG, pid)     # interface names stay within 15 characters
        self.block = 64 + pid % 128
        self.size = size
        self.names = ["%sm%d" % (self.tag, i + 1) for i in range(size)]
        self.created = []
        self.partitioned = set()

    @staticmethod
    def available():
        """Why network namespaces cannot be used here, or None."""
        if os.geteuid() != 0:
            return "network namespaces need root (ip netns add)"
        if not os.access(IP, os.X_OK) or not os.access(TC, os.X_OK):
            return "iproute2 (ip, tc) is not installed"
        return None

    def host(self, i):
        return "127.%d.0.%d" % (self.block, i + 1)

    def root_host(self, i):
        return "127.%d.1.%d" % (self.block, i + 1)

    def placement(self, i):
        return self.host(i), [IP, "netns", "exec", self.names[i]]

    def link(self, i, j):
        """The interface in member i's namespace that leads to member j
        (j = None: to the root namespace)."""
        return "%s%d%s" % (self.tag, i + 1, "r" if j is None else j + 1)

    def root_link(self, i):
        return "%sr%d" % (self.tag, i + 1)

    def ns(self, i, *cmd):
        return _run(IP, "netns", "exec", self.names[i], *cmd)

    @classmethod
    def remove_leftovers(cls):
        """Deletes the namespaces of earlier runs whose test process is gone
        (killed before its clean-up: a ctest timeout sends SIGKILL)."""
        try:
            names = os.listdir("/run/netns")
        except OSError:
            return
        for name in names:
            match = re.fullmatch(cls.TAG + r"(\d+)m\d+", name)
            if not match:
                continue
            try:
                os.kill(int(match.group(1)), 0)
                continue                     # its test is still running
            except ProcessLookupError:
                pass
            harness.log("deleting network namespace %s left by a killed run" % name)
            subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=30)

    def setup(self):
        self.remove_leftovers()
        try:
            self._setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def _setup(self):
        for i, name in enumerate(self.names):
            _run(IP, "netns", "add", name)
            self.created.append(name)
            self.ns(i, IP, "link", "set", "lo", "up")
            self.ns(i, IP, "addr", "add", self.host(i) + "/32", "dev", "lo")
        for i in range(self.size):
            for j in range(i + 1, self.size):
                _run(IP, "link", "add", self.link(i, j), "netns", self.names[i], "type", "veth",
                     "peer", "name", self.link(j, i), "netns", self.names[j])
        for i in range(self.size):
            _run(IP, "link", "add", self.root_link(i), "type", "veth", "peer", "name",
                 self.link(i, None), "netns", self.names[i])
            self._localnet(self.root_link(i))
            _run(IP, "addr", "add", self.root_host(i) + "/32", "dev", self.root_link(i))
            _run(IP, "link", "set", self.root_link(i), "up")
            _run(IP, "route", "add", self.host(i) + "/32", "dev", self.root_link(i), "src",
                 self.root_host(i), "table", "local")
            for j in [None] + [j for j in range(self.size) if j != i]:
                dev = self.link(i, j)
                self.ns(i, "sysctl", "-qw", "net.ipv4.conf.%s.route_localnet=1" % dev)
                self.ns(i, IP, "link", "set", dev, "up")
                peer = self.root_host(i) if j is None else self.host(j)
                self.ns(i, IP, "route", "add", peer + "/32", "dev", dev, "src", self.host(i),
                        "table", "local")

    @staticmethod
    def _localnet(dev):
        with open("/proc/sys/net/ipv4/conf/%s/route_localnet" % dev, "w") as f:
            f.write("1")

    def teardown(self):
        """Deletes the namespaces (their veth pairs, root ends included, go
        with them once the last process in them has exited)."""
        for name in reversed(self.created):
            subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=30)
        self.created = []

    def _drop(self, i, j, on):
        for a, b in ((i, j), (j, i)):
            if on:
                self.ns(a, TC, "qdisc", "replace", "dev", self.link(a, b), "root", "pfifo",
                        "limit", "0")
            else:
                self.ns(a, TC, "qdisc", "del", "dev", self.link(a, b), "root")

    def partition(self, i, j):
        """Drops every packet between members i and j."""
        self._drop(i, j, True)
        self.partitioned.add(frozenset((i, j)))

    def heal(self, i, j):
        self._drop(i, j, False)
        self.partitioned.discard(frozenset((i, j)))

    def isolate(self, i):
        for j in range(self.size):
            if j != i:
                self.partition(i, j)

    def heal_all(self):
        for pair in list(self.partitioned):
            self.heal(*sorted(pair))
