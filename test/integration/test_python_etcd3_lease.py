"""python3-etcd3's leases and locks work against the candidate as against etcd.

The same sequence of etcd3.client calls runs against a fresh etcd 3.4.23 and a
fresh candidate (at the same time, one thread each): lease() with server-chosen
and explicit IDs (a duplicate explicit ID, a TTL below the minimum), put with
a Lease object and with a lease ID, put with an unknown lease, get showing the
lease, Lease.remaining_ttl / .granted_ttl / .keys, get_lease_info,
Lease.refresh() (and refresh_lease of an unknown lease), that a refresh gives
the lease its full TTL again, a transaction that puts with a lease,
revoke_lease and Lease.revoke() (the keys go; a second revoke fails;
get_lease_info then says TTL -1), and a short lease that expires by itself.
Then lock(): acquire/is_acquired/release, the lock key holds the lock's lease,
a second lock's acquire(timeout=1) gives up after about 1 s, a third lock's
acquire waits (in a thread) and gets the lock within 3 s once the holder
releases it, release by a non-holder fails, a refreshed lock with ttl=2 is
still held after 3 s, a lock with ttl=2 that is not refreshed is taken over
by a waiter once its lease expires (between TTL - 0.5 s and TTL + 2.5 s after
the holder's acquire), and the context-manager form.

python3-etcd3 0.12.0 (Debian 12) hands tenacity a wait function of the old
(attempt, delay) form, which tenacity 8 calls with one argument, so a
contended Lock.acquire() raises TypeError against any server.  When that
mismatch is there, this test gives the library's lock module a tenacity whose
retry() adapts such a wait function (nothing else changes: the library's own
txn, watch_once and retry logic run as shipped).

The upper bounds of the expiry checks bind the candidate only; on the
reference a late expiry is logged, not counted (harness.late_expiry: etcd's
lock hand-over has been seen 9 s after a 2 s lease's grant).  The waits
themselves are long enough (12 s) for such a late expiry still to be compared
as data.

Results are compared as plain data: lease IDs become <Ln> in order of
creation on each server (explicit IDs stay), header ids are dropped, the
remaining TTL may differ by 1 s, lease keys are sorted.  The timing checks
(waits, hand-overs, expiry) are absolute and hold on both servers.
"""

import inspect
import threading
import time

import etcd3
import etcd3.locks
import tenacity
import grpc
from etcd3.client import KVMetadata, Transactions
from etcd3.leases import Lease
from google.protobuf.message import Message

import harness
from harness import Failures

t = Transactions()


class _TenacityCompat:
    """tenacity, with retry() accepting an old-style wait(attempt, delay)."""

    def __getattr__(self, name):
        return getattr(tenacity, name)

    @staticmethod
    def retry(*args, **kwargs):
        wait = kwargs.get("wait")
        if wait is not None and inspect.isfunction(wait) and \
                len(inspect.signature(wait).parameters) == 2:
            kwargs["wait"] = lambda state: wait(state.attempt_number, state.seconds_since_start)
        return tenacity.retry(*args, **kwargs)


def _lock_needs_compat():
    """True when etcd3.locks passes tenacity 8 an old-style wait function."""
    source = inspect.getsource(etcd3.locks.Lock.acquire)
    return ("def wait(previous_attempt_number, delay_since_first_attempt)" in source
            and "self.wait(retry_state)" in inspect.getsource(tenacity.BaseRetrying.iter))


if _lock_needs_compat():
    etcd3.locks.tenacity = _TenacityCompat()


class Remaining:
    """A remaining TTL: equal to another within 1 s."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Remaining) and abs(self.value - other.value) <= 1

    def __repr__(self):
        return "Remaining(%r)" % self.value


class Session:
    """One server's client, its lease IDs in order of creation, and the
    problems found by the absolute (timing) checks."""

    def __init__(self, server, reference):
        self.server = server
        self.reference = reference
        self.client = etcd3.client("127.0.0.1", server.client_port, timeout=10)
        self.leases = []           # server-chosen IDs in order of creation
        self.problems = []
        self.saved = {}

    def learn(self, lease_id):
        if lease_id and lease_id not in self.leases and not 0 < lease_id < 100000000:
            self.leases.append(lease_id)

    def problem(self, text):
        self.problems.append(text)

    def late(self, text):
        """An upper timing bound missed (harness.late_expiry)."""
        harness.late_expiry(self.reference, text, self.problem)

    def window(self, what, took, low, high, waited):
        """Check that `took` seconds (None: not within `waited` s) lies in
        low..high."""
        if took is None:
            self.problem("%s: not within %.1f s (expected %.1f..%.1f s)" % (what, waited, low, high))
        elif took < low:
            self.problem("%s: %.2f s (expected %.1f..%.1f s)" % (what, took, low, high))
        elif took > high:
            self.late("%s: %.2f s (expected %.1f..%.1f s)" % (what, took, low, high))

    def plain(self, value):
        """A comparable form of what a call returned."""
        if isinstance(value, Lease):
            self.learn(value.id)
            return ("Lease", self.plain_id(value.id), value.ttl)
        if isinstance(value, KVMetadata):
            return {"key": value.key, "create_revision": value.create_revision,
                    "mod_revision": value.mod_revision, "version": value.version,
                    "lease": self.plain_id(value.lease_id)}
        if isinstance(value, Message):
            return self.plain_message(value)
        if isinstance(value, (list, tuple)):
            return [self.plain(v) for v in value]
        return value

    def plain_id(self, lease_id):
        if lease_id in self.leases:
            return "<L%d>" % (self.leases.index(lease_id) + 1)
        return lease_id

    def plain_message(self, msg):
        name = msg.DESCRIPTOR.name
        if name == "LeaseTimeToLiveResponse":
            return {"ID": self.plain_id(msg.ID), "TTL": Remaining(msg.TTL),
                    "grantedTTL": msg.grantedTTL, "keys": sorted(msg.keys),
                    "revision": msg.header.revision}
        if name == "LeaseKeepAliveResponse":
            return {"ID": self.plain_id(msg.ID), "TTL": msg.TTL,
                    "revision": msg.header.revision}
        if name == "PutResponse":
            return {"revision": msg.header.revision,
                    "prev_kv": [self.plain_kv(msg.prev_kv)] if msg.HasField("prev_kv") else []}
        if name == "DeleteRangeResponse":
            return {"revision": msg.header.revision, "deleted": msg.deleted}
        if name == "ResponseOp":
            return self.plain_message(getattr(msg, msg.WhichOneof("response")))
        if name == "RangeResponse":
            return {"revision": msg.header.revision, "kvs": [self.plain_kv(kv) for kv in msg.kvs]}
        return ("unexpected message", name)

    def plain_kv(self, kv):
        return {"key": kv.key, "value": kv.value, "create_revision": kv.create_revision,
                "mod_revision": kv.mod_revision, "version": kv.version,
                "lease": self.plain_id(kv.lease)}

    def get(self, key):
        value, meta = self.client.get(key)
        return [value, self.plain(meta) if meta else None]


def plain_error(exc):
    if isinstance(exc, grpc.RpcError):
        return ("error", exc.code().name, exc.details())
    return ("error", type(exc).__name__, str(exc))


EXPIRY_WAIT = 12     # seconds: how long the expiry steps wait for a lease to go


def wait_gone(s, key, timeout):
    """Seconds until `key` is gone (polled every 50 ms), or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if s.client.get(key)[0] is None:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


# --------------------------------------------------------------------------
# Lease steps
# --------------------------------------------------------------------------

def grant(name, ttl, lease_id=None):
    def fn(s):
        lease = s.client.lease(ttl, lease_id)
        s.saved[name] = lease
        return lease
    return fn


def lease_of(name):
    return lambda s: s.saved[name]


def refresh_after_wait(s):
    """A 10 s lease: 2 s later about 8 s remain; refresh() restores 10 s."""
    lease = s.client.lease(10)
    s.learn(lease.id)
    s.client.put("r", "refreshed", lease=lease)
    time.sleep(2.0)
    before = lease.remaining_ttl
    responses = lease.refresh()
    after = lease.remaining_ttl
    if not 7 <= before <= 8:
        s.problem("remaining_ttl 2 s after a 10 s grant is %d (expected 7..8)" % before)
    if after < 9:
        s.problem("remaining_ttl right after refresh() is %d (expected 9..10)" % after)
    return [Remaining(before), s.plain(responses), Remaining(after), lease.granted_ttl,
            sorted(lease.keys)]


def expire_by_itself(s):
    """A lease of the minimum TTL (2 s) and its key: the key is there after
    1 s and gone within TTL + 1.5 s of the grant."""
    lease = s.client.lease(2)
    s.learn(lease.id)
    granted = time.monotonic()
    s.client.put("short", "lived", lease=lease)
    time.sleep(1.0)
    present = s.client.get("short")[0]
    gone = wait_gone(s, "short", EXPIRY_WAIT)
    if gone is not None:
        gone = time.monotonic() - granted
    s.window("from a 2 s lease's grant to its key's going", gone, 1.5, 3.5, EXPIRY_WAIT)
    harness.log("%s: a 2 s lease's key was gone %.2fs after the grant"
                % (s.server.kind, gone or -1))
    info = s.client.get_lease_info(lease.id)
    return [present, s.plain(info)]


LEASE_STEPS = [
    ("lease(600)", grant("l1", 600)),
    ("lease(300, lease_id=7001)", grant("l2", 300, 7001)),
    ("lease(300, lease_id=7001) again", grant("dup", 300, 7001)),
    ("lease(1): minimum TTL", grant("l3", 1)),
    ("revoke the minimum-TTL lease", lambda s: s.client.revoke_lease(s.saved["l3"].id)),
    ("lease(9000000001): too large", grant("big", 9000000001)),
    ("put k1 with Lease object", lambda s: s.client.put("k1", "v1", lease=s.saved["l1"])),
    ("put k2 with lease ID", lambda s: s.client.put("k2", "v2", lease=s.saved["l1"].id)),
    ("put k3 with explicit-ID lease", lambda s: s.client.put("k3", "v3", lease=7001)),
    ("put k4 with an unknown lease", lambda s: s.client.put("k4", "v4", lease=4242)),
    ("put k1 prev_kv", lambda s: s.client.put("k1", "v1b", lease=s.saved["l1"], prev_kv=True)),
    ("get k1", lambda s: s.get("k1")),
    ("get k3", lambda s: s.get("k3")),
    ("get_prefix k", lambda s: [[v, s.plain(m)] for v, m in s.client.get_prefix("k")]),
    ("l1.remaining_ttl", lambda s: Remaining(s.saved["l1"].remaining_ttl)),
    ("l1.granted_ttl", lambda s: s.saved["l1"].granted_ttl),
    ("l1.keys", lambda s: sorted(s.saved["l1"].keys)),
    ("l1.id, l1.ttl", lease_of("l1")),
    ("get_lease_info(l1)", lambda s: s.client.get_lease_info(s.saved["l1"].id)),
    ("get_lease_info(7001)", lambda s: s.client.get_lease_info(7001)),
    ("get_lease_info(unknown)", lambda s: s.client.get_lease_info(4242)),
    ("l1.refresh()", lambda s: s.saved["l1"].refresh()),
    ("refresh_lease(unknown)", lambda s: list(s.client.refresh_lease(4242))),
    ("refresh restores the TTL", refresh_after_wait),
    ("txn: put with a lease", lambda s: s.client.transaction(
        compare=[t.version("k1") > 0],
        success=[t.put("k5", "v5", lease=s.saved["l1"]), t.get("k5")],
        failure=[])),
    ("get k5", lambda s: s.get("k5")),
    ("put k2 without a lease (detaches)", lambda s: s.client.put("k2", "v2b")),
    ("l1.keys after detach", lambda s: sorted(s.saved["l1"].keys)),
    ("revoke_lease(7001)", lambda s: s.client.revoke_lease(7001)),
    ("get k3 after revoke", lambda s: s.get("k3")),
    ("revoke_lease(7001) again", lambda s: s.client.revoke_lease(7001)),
    ("get_lease_info(revoked)", lambda s: s.client.get_lease_info(7001)),
    ("l1.revoke()", lambda s: s.saved["l1"].revoke()),
    ("get_prefix k after l1.revoke()", lambda s: [[v, s.plain(m)]
                                                 for v, m in s.client.get_prefix("k")]),
    ("l1.remaining_ttl after revoke", lambda s: s.saved["l1"].remaining_ttl),
    ("l1.keys after revoke", lambda s: list(s.saved["l1"].keys)),
    ("a lease that expires by itself", expire_by_itself),
]


# --------------------------------------------------------------------------
# Lock steps
# --------------------------------------------------------------------------

def lock_basic(s):
    lock = s.client.lock("basic", ttl=10)
    acquired = lock.acquire(timeout=5)
    s.learn(lock.lease.id if lock.lease else 0)
    value, meta = s.client.get("/locks/basic")
    held = lock.is_acquired()
    info = s.client.get_lease_info(lock.lease.id)
    released = lock.release()
    after = [lock.is_acquired(), s.client.get("/locks/basic")[0]]
    return [acquired, held, value == lock.uuid, s.plain(meta), s.plain(info), released, after]


def lock_contended(s):
    holder = s.client.lock("contended", ttl=10)
    result = [holder.acquire(timeout=5)]
    s.learn(holder.lease.id)
    # a second lock gives up after its timeout
    second = s.client.lock("contended", ttl=10)
    started = time.monotonic()
    result.append(second.acquire(timeout=1))
    waited = time.monotonic() - started
    if not 0.9 <= waited <= 3.0:
        s.problem("lock.acquire(timeout=1) on a held lock returned after %.2f s" % waited)
    # a third waits in a thread and gets the lock once the holder releases it
    third = s.client.lock("contended", ttl=10)
    got = {}

    def wait_for_lock():
        got["acquired"] = third.acquire(timeout=15)
        got["at"] = time.monotonic()

    waiter = threading.Thread(target=wait_for_lock)
    waiter.start()
    time.sleep(1.0)
    result.append(("waiter still waiting after 1 s", waiter.is_alive()))
    released_at = time.monotonic()
    result.append(("holder released", holder.release()))
    waiter.join(16)
    result.append(("waiter acquired", got.get("acquired")))
    if "at" in got:
        handover = got["at"] - released_at
        harness.log("%s: python-etcd3 lock handed over %.3fs after release"
                    % (s.server.kind, handover))
        if handover > 3.0:
            s.problem("the waiting lock got the lock %.2f s after the release (max 3 s)"
                      % handover)
    result.append(("holder.release() again (not the holder)", holder.release()))
    result.append(("third.is_acquired()", third.is_acquired()))
    result.append(("third.release()", third.release()))
    return result


def lock_refreshed(s):
    """ttl=2, refreshed every 0.5 s: still held after 3 s; then not
    refreshed: gone within TTL + 1.5 s."""
    lock = s.client.lock("refreshed", ttl=2)
    result = [lock.acquire(timeout=5)]
    s.learn(lock.lease.id)
    for _ in range(6):
        time.sleep(0.5)
        responses = lock.refresh()
        last_refresh = time.monotonic()
    result.append(("refresh() answer", s.plain(responses)))
    result.append(("held after 3 s of refreshes", lock.is_acquired()))
    gone = wait_gone(s, "/locks/refreshed", EXPIRY_WAIT)
    if gone is not None:
        gone = time.monotonic() - last_refresh
    s.window("from the ttl=2 lock's last refresh to its key's going", gone, 1.5, 3.5, EXPIRY_WAIT)
    result.append(("held once not refreshed", lock.is_acquired()))
    return result


def lock_expires(s):
    """The holder (ttl=2) stops refreshing: a waiter gets the lock once the
    holder's lease expires."""
    holder = s.client.lock("expiring", ttl=2)
    result = [holder.acquire(timeout=5)]
    acquired_at = time.monotonic()
    s.learn(holder.lease.id)
    waiter = s.client.lock("expiring", ttl=10)
    acquired = waiter.acquire(timeout=EXPIRY_WAIT)
    result.append(("waiter.acquire(timeout=%d)" % EXPIRY_WAIT, acquired))
    took = time.monotonic() - acquired_at
    harness.log("%s: a ttl=2 lock was taken over %.2fs after its acquire" % (s.server.kind, took))
    s.window("from a ttl=2 lock's acquire to its take-over", took if acquired else None,
             1.5, 4.5, EXPIRY_WAIT)
    result.append(("holder.is_acquired()", holder.is_acquired()))
    result.append(("waiter.is_acquired()", waiter.is_acquired()))
    result.append(("holder.release()", holder.release()))
    result.append(("waiter.release()", waiter.release()))
    return result


def lock_context(s):
    with s.client.lock("ctx", ttl=10) as lock:
        inside = [lock.is_acquired(), s.client.get("/locks/ctx")[0] == lock.uuid]
    return [inside, lock.is_acquired(), s.client.get("/locks/ctx")[0]]


LOCK_STEPS = [
    ("lock acquire/release", lock_basic),
    ("lock contended", lock_contended),
    ("lock refreshed, then expires", lock_refreshed),
    ("lock taken over after expiry", lock_expires),
    ("lock as context manager", lock_context),
]


def run_all(server, reference):
    s = Session(server, reference)
    results = []
    try:
        for description, fn in LEASE_STEPS + LOCK_STEPS:
            try:
                results.append((description, s.plain(fn(s))))
            except (grpc.RpcError, etcd3.exceptions.Etcd3Exception) as exc:
                results.append((description, plain_error(exc)))
    finally:
        s.client.close()
    return results, s.problems


def _ignore_closed_channel(args):
    """etcd3's watch thread (lock.acquire waits with watch_once) opens a new
    stream when its stream ends; after client.close() that raises "Channel
    closed" in the thread: not a result."""
    if args.exc_type is ValueError and "Channel closed" in str(args.exc_value) and \
            args.thread is not None and args.thread.name.startswith("etcd3_watch"):
        return
    _default_excepthook(args)


_default_excepthook = threading.excepthook


def main():
    threading.excepthook = _ignore_closed_channel
    failures = Failures()
    with harness.Server(kind="etcd") as ref, harness.Server() as cand:
        outcome = {}

        def body(name, server):
            try:
                outcome[name] = run_all(server, name == "etcd")
            except Exception as exc:
                outcome[name] = exc

        threads = [threading.Thread(target=body, args=(n, srv))
                   for n, srv in (("etcd", ref), ("candidate", cand))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(150)
            harness.check(not th.is_alive(), "a client thread did not finish within 150 s")
        for name in ("etcd", "candidate"):
            if isinstance(outcome[name], Exception):
                raise outcome[name]
        (want, want_problems), (got, got_problems) = outcome["etcd"], outcome["candidate"]
        for problem in want_problems:
            failures.add("on the reference etcd: " + problem)
        for problem in got_problems:
            failures.add("candidate: " + problem)
        for (description, w), (_, g) in zip(want, got):
            failures.check(w == g, "%s:\n    etcd:      %r\n    candidate: %r"
                           % (description, w, g))
        harness.check(cand.running(), "candidate exited; log:\n%s" % cand.log_tail())
    harness.log("%d python-etcd3 lease/lock steps compared" % len(want))
    failures.raise_if_any()


if __name__ == "__main__":
    harness.run(main)
