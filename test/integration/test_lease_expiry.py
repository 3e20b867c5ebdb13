"""10,000 leases expire on time, and kept-alive leases do not expire.

The candidate gets 10,000 leases with TTLs of 2..5 s (the TTL of lease i is 2
+ i % 4), granted as fast as the client can (asyncio, 4 channels, 256 grants
in flight), and one key per lease (exp/NNNNN, put with the lease right after
its grant).  Three groups:

  kept     (i % 10 == 0, 1,000): kept alive on LeaseKeepAlive streams every
           TTL/3 for the whole test; they must never expire;
  dropped  (i % 10 == 5, 1,000): kept alive the same way until 1 s after the
           last grant (and until each has had a keep-alive answered), then no
           more; they expire TTL after their last keep-alive;
  plain    (the other 8,000): never kept alive; they expire TTL after their
           grant.

For each lease the client records when it sent and when it got the answer of
its grant and of every keep-alive (time.monotonic(); the server's clock is
the same machine's).  The server starts the TTL somewhere between the two, so
for a non-kept lease whose last grant/keep-alive was sent at S and answered at
R, with TTL T:

  * its key must NOT disappear before S + T - 0.5 s (the 0.5 s tolerance
    covers the lessor's clock read and rounding; a deletion seen earlier than
    S + T would already be a server measuring from before the request came);
  * its key must be gone by R + T + 1 s.

When a key disappears is taken from a watch on exp/ opened before the first
grant (a process of its own): the time its DELETE event arrives (an upper
bound of the deletion, later by the delivery latency; so the early check is
lenient by that latency, and the late check is strict by it).  A Range of
exp/ every second cross-checks the watch: a key missing from a Range must
have had its DELETE event (the event may arrive after the Range; the check is
done at the end), a kept key must be in every Range.  At the end:
LeaseLeases lists exactly the kept leases, LeaseTimeToLive of a sample of
kept leases has its keys and TTL > 0, every keep-alive of a kept lease was
answered with the full TTL.

etcd revokes at most 1,000 expired leases a second (lessor leaseRevokeRate:
at most 500 every 500 ms).  9,000 leases granted as fast as possible expire
within a few seconds of each other, more than that, and etcd then cannot meet
TTL + 1 s (measured on 2 cores, unpaced: 2,700 grants/s, keys gone up to 3.3 s
after R + TTL, 6,231 of 9,000 later than R + TTL + 1 s).  Rather than loosen
the bound, the grants are paced so that expiries come at most
BALLAST_LEASE_EXPIRY_RATE (default 800) a second: leases are granted TTL by
TTL (all TTL 2 s leases first, ...) at a steady rate, so that expiries follow
the grant rate (etcd then: keys gone at most ~0.6-0.8 s after R + TTL).  The
test prints the lateness distribution.  BALLAST_LEASE_EXPIRY_RATE=0 grants
without pacing, in index order (then TTL + 1 s fails on etcd, by its
throttle).

Environment (to shrink or grow the run): BALLAST_LEASE_EXPIRY_LEASES (10000),
_KEPT_EVERY (10: one lease in 10 is kept, one in 10 dropped), _CHANNELS (4),
_INFLIGHT (256), _RATE (800 expiries/s; 0 = unpaced).
"""

import asyncio
import os
import subprocess
import sys
import threading
import time

import grpc
import grpc.aio

import harness
from harness import rpc_pb2, rpc_pb2_grpc

N = int(os.environ.get("BALLAST_LEASE_EXPIRY_LEASES", "10000"))
EVERY = int(os.environ.get("BALLAST_LEASE_EXPIRY_KEPT_EVERY", "10"))
CHANNELS = int(os.environ.get("BALLAST_LEASE_EXPIRY_CHANNELS", "4"))
INFLIGHT = int(os.environ.get("BALLAST_LEASE_EXPIRY_INFLIGHT", "256"))
RATE = float(os.environ.get("BALLAST_LEASE_EXPIRY_RATE", "800"))

EARLY_TOLERANCE = 0.5     # s before S + T
LATE_ALLOWANCE = 1.0      # s after R + T
TTLS = (2, 3, 4, 5)
DROP_AFTER = 1.0          # s after the last grant: stop keeping the dropped group alive
EXTRA_WAIT = 15.0         # s past the last deadline we keep watching (to measure lateness)
POLL_EVERY = 1.0
KEEPALIVE_STREAMS = 4
PREFIX = b"exp/"

KEPT, DROPPED, PLAIN = "kept", "dropped", "plain"


def group_of(i):
    if i % EVERY == 0:
        return KEPT
    if i % EVERY == EVERY // 2:
        return DROPPED
    return PLAIN


def ttl_of(i):
    return TTLS[i % len(TTLS)]


def key_of(i):
    return PREFIX + b"%05d" % i


class Lease:
    __slots__ = ("i", "ttl", "group", "id", "sent", "answered", "ka_sent", "ka_answered",
                 "ka_count", "ka_max_gap", "ka_bad", "put_error", "deleted", "deleted_rev",
                 "first_missing")

    def __init__(self, i):
        self.i = i
        self.ttl = ttl_of(i)
        self.group = group_of(i)
        self.id = 0
        self.sent = self.answered = None          # grant, or the last answered keep-alive
        self.ka_sent = None                       # last keep-alive sent
        self.ka_answered = None
        self.ka_count = 0
        self.ka_max_gap = 0.0                     # longest time without a keep-alive sent
        self.ka_bad = None                        # a keep-alive answered with TTL != granted
        self.put_error = None
        self.deleted = None                       # when its DELETE event arrived
        self.deleted_rev = None
        self.first_missing = None                 # the first Range that did not have it


def grant_order():
    """The order of the grants.  Paced (RATE > 0): the plain and dropped
    leases go TTL by TTL, shortest first, so that leases granted together
    expire together and the expiries follow the grant rate; the kept ones are
    spread among them.  Unpaced: in index order."""
    if RATE <= 0:
        return list(range(N))
    order = []
    by_ttl = {ttl: [i for i in range(N) if ttl_of(i) == ttl] for ttl in TTLS}
    for ttl in TTLS:
        order.extend(by_ttl[ttl])
    return order


class Watcher:
    """A watch on exp/ in a process of its own (this file run with --watch):
    the arrival time of every DELETE event, by key.  The child takes the
    times (time.monotonic() is the machine's CLOCK_MONOTONIC, the same in
    both processes), so they do not depend on when this busy process (the
    grants, the keep-alives) gets to run: in a thread here the events were
    read up to 2 s late while Python's GIL was held by the asyncio clients,
    and keys looked late that the server had deleted on time."""

    def __init__(self, server, start_revision):
        self.endpoint = server.endpoint
        self.start_revision = start_revision
        self.deleted = {}            # key -> (time, mod_revision)
        self.duplicates = []
        self.created = threading.Event()
        self.error = None
        self._stopping = False
        self._proc = None
        self._reader = None

    def start(self):
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--watch", self.endpoint,
             str(self.start_revision)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        harness.register_process(self._proc)
        self._reader = threading.Thread(target=self._read, name="exp-watch", daemon=True)
        self._reader.start()

    def _read(self):
        try:
            for line in self._proc.stdout:
                kind, _, rest = line.rstrip("\n").partition(" ")
                if kind == "D":
                    key, when, revision = rest.split(" ")
                    key = bytes.fromhex(key)
                    if key in self.deleted:
                        self.duplicates.append(key)
                    else:
                        self.deleted[key] = (float(when), int(revision))
                elif kind == "C":
                    self.created.set()
                elif kind == "E" and not self._stopping:
                    self.error = rest
        finally:
            if self._proc.wait() != 0 and not self._stopping and not self.error:
                self.error = "the watch process exited with %d" % self._proc.returncode
            self.created.set()

    def stop(self):
        self._stopping = True
        try:
            self._proc.stdin.close()     # the child ends its stream and exits
        except OSError:
            pass
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._reader.join(10)


def watch_main(endpoint, start_revision):
    """The child of Watcher: one line per event on stdout ("C" once created,
    "D <key hex> <arrival time> <mod_revision>" per DELETE, "E <why>" when the
    stream fails); it stops when its stdin closes."""
    channel = grpc.insecure_channel(endpoint)
    stop = threading.Event()

    def requests():
        yield rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=PREFIX, range_end=harness.prefix_end(PREFIX), start_revision=start_revision))
        stop.wait()

    responses = rpc_pb2_grpc.WatchStub(channel).Watch(requests())

    def wait_for_stop():
        sys.stdin.read()
        stop.set()
        responses.cancel()           # no event after the parent stops watching

    threading.Thread(target=wait_for_stop, daemon=True).start()
    out = sys.stdout
    try:
        for resp in responses:
            now = time.monotonic()
            if resp.created:
                out.write("C\n")
            for ev in resp.events:
                if ev.type == ev.DELETE:
                    out.write("D %s %.6f %d\n" % (ev.kv.key.hex(), now, ev.kv.mod_revision))
            if resp.canceled:
                out.write("E watch canceled: %s\n" % resp.cancel_reason)
                break
            out.flush()
    except grpc.RpcError as exc:
        if not stop.is_set():
            out.write("E watch stream failed: %s %s\n" % (exc.code(), exc.details()))
    out.flush()
    channel.close()


class KeepAliver:
    """Keeps leases alive on a few LeaseKeepAlive streams: a lease is sent a
    keep-alive when TTL/3 has passed since the last one was sent."""

    def __init__(self, channels, leases_by_id):
        self.streams = [rpc_pb2_grpc.LeaseStub(ch).LeaseKeepAlive() for ch in channels]
        self.by_id = leases_by_id
        self.active = {}             # id -> Lease, kept alive now
        self.pending = {}            # id -> [send times not yet answered]
        self.errors = []
        self.stopped = False
        self.tasks = []

    def start(self):
        self.tasks = [asyncio.ensure_future(self._reader(s)) for s in self.streams]
        self.tasks.append(asyncio.ensure_future(self._writer()))

    def add(self, lease):
        self.active[lease.id] = lease

    def drop(self, leases):
        for lease in leases:
            self.active.pop(lease.id, None)

    def unanswered(self, leases):
        return sum(len(self.pending.get(l.id, ())) for l in leases)

    async def _writer(self):
        n = len(self.streams)
        while not self.stopped:
            now = time.monotonic()
            for lease in list(self.active.values()):
                last = lease.ka_sent or lease.answered
                if now - last < lease.ttl / 3.0:
                    continue
                lease.ka_max_gap = max(lease.ka_max_gap, now - last)
                lease.ka_sent = now
                self.pending.setdefault(lease.id, []).append(now)
                try:
                    await self.streams[lease.id % n].write(
                        rpc_pb2.LeaseKeepAliveRequest(ID=lease.id))
                except Exception as exc:             # a stream that failed
                    self.errors.append("keep-alive write: %s" % exc)
                    return
            await asyncio.sleep(0.05)

    async def _reader(self, stream):
        try:
            while True:
                resp = await stream.read()
                if resp is grpc.aio.EOF:
                    if not self.stopped:
                        self.errors.append("a LeaseKeepAlive stream ended")
                    return
                now = time.monotonic()
                lease = self.by_id.get(resp.ID)
                if lease is None:
                    self.errors.append("keep-alive answer for unknown lease %d" % resp.ID)
                    continue
                sends = self.pending.get(resp.ID)
                sent = sends.pop(0) if sends else None
                if resp.TTL != lease.ttl and lease.ka_bad is None:
                    lease.ka_bad = (now, resp.TTL)
                if resp.TTL > 0 and sent is not None:
                    lease.sent, lease.answered = sent, now
                    lease.ka_answered = now
                    lease.ka_count += 1
        except grpc.aio.AioRpcError as exc:
            if not self.stopped:
                self.errors.append("keep-alive stream: %s %s" % (exc.code(), exc.details()))
        except asyncio.CancelledError:
            pass

    async def stop(self):
        self.stopped = True
        for stream in self.streams:
            try:
                await stream.done_writing()
            except Exception:
                pass
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def grant_all(stubs, kvs, leases, order, keeper, stats):
    """Grants every lease (INFLIGHT at a time), puts its key, hands the kept
    and dropped ones to the keeper.  Paced to RATE expiries a second."""
    next_index = [0]
    # paced: each grant takes the next free slot, 1 / rate after the one
    # before and never in the past, where rate is chosen so that the
    # expiries (all but kept) come at RATE a second.  A slot missed while the
    # client or the server was held up is not made up later: catching up
    # would send grants (and so expiries) in bursts faster than RATE, beyond
    # the lessor's revoke rate (1,000/s, etcd's), and their keys would go late
    # because of the test's own burst.
    next_slot = [time.monotonic()]
    non_kept_share = sum(1 for i in range(N) if group_of(i) != KEPT) / float(N)
    rate = RATE / non_kept_share if RATE > 0 else 0

    async def worker(w):
        stub, kv = stubs[w % len(stubs)], kvs[w % len(kvs)]
        while True:
            k = next_index[0]
            if k >= len(order):
                return
            next_index[0] += 1
            if rate:
                now = time.monotonic()
                slot = max(next_slot[0], now)
                next_slot[0] = slot + 1.0 / rate
                if slot > now:
                    await asyncio.sleep(slot - now)
            lease = leases[order[k]]
            lease.sent = time.monotonic()
            try:
                resp = await stub.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=lease.ttl), timeout=30)
            except grpc.aio.AioRpcError as exc:
                stats["grant errors"].append("%d: %s %s" % (lease.i, exc.code(), exc.details()))
                continue
            lease.answered = time.monotonic()
            lease.id = resp.ID
            keeper.by_id[resp.ID] = lease
            if resp.TTL != lease.ttl:
                stats["grant errors"].append("%d: granted TTL %d, asked %d"
                                             % (lease.i, resp.TTL, lease.ttl))
            if lease.group != PLAIN:
                keeper.add(lease)
            try:
                await kv.Put(rpc_pb2.PutRequest(key=key_of(lease.i), value=b"v", lease=resp.ID),
                             timeout=30)
            except grpc.aio.AioRpcError as exc:
                lease.put_error = "%s %s" % (exc.code(), exc.details())

    await asyncio.gather(*[worker(w) for w in range(INFLIGHT)])


async def poll(kv, leases, when, poll_stats):
    """One Range of exp/: kept keys must be there; note the first Range each
    non-kept key was missing from."""
    sent = time.monotonic()
    keys = set()
    start, end = PREFIX, harness.prefix_end(PREFIX)
    revision = 0
    while True:
        resp = await kv.Range(rpc_pb2.RangeRequest(key=start, range_end=end, keys_only=True,
                                                   revision=revision, limit=5000), timeout=30)
        revision = resp.header.revision
        keys.update(k.key for k in resp.kvs)
        if not resp.more or not resp.kvs:
            break
        start = resp.kvs[-1].key + b"\0"
    answered = time.monotonic()
    poll_stats["polls"] += 1
    for lease in leases:
        if lease.id == 0 or lease.put_error:
            continue
        present = key_of(lease.i) in keys
        if lease.group == KEPT:
            if not present and lease.first_missing is None:
                lease.first_missing = (sent, answered, when)
        elif not present and lease.first_missing is None and lease.answered is not None:
            lease.first_missing = (sent, answered, when)
    return len(keys)


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100.0 * len(values)))]


async def run_async(server, leases, watcher):
    channels = [grpc.aio.insecure_channel(server.endpoint, options=harness.CHANNEL_OPTIONS)
                for _ in range(CHANNELS)]
    ka_channels = [grpc.aio.insecure_channel(server.endpoint, options=harness.CHANNEL_OPTIONS)
                   for _ in range(KEEPALIVE_STREAMS)]
    stubs = [rpc_pb2_grpc.LeaseStub(ch) for ch in channels]
    kvs = [rpc_pb2_grpc.KVStub(ch) for ch in channels]
    keeper = KeepAliver(ka_channels, {})
    keeper.start()
    stats = {"grant errors": [], "polls": 0}
    try:
        started = time.monotonic()
        await grant_all(stubs, kvs, leases, grant_order(), keeper, stats)
        granted = time.monotonic()
        stats["grant seconds"] = granted - started
        harness.log("granted %d leases and put %d keys in %.1fs (%.0f leases/s)%s"
                    % (N, N, granted - started, N / (granted - started),
                       "" if RATE <= 0 else ", paced for %.0f expiries/s" % RATE))
        # drop the dropped group 1 s after the last grant, once each of
        # them has had a keep-alive answered (at most TTL/3 s after its
        # grant); wait for the answers of keep-alives already sent (the
        # last renewal is one of them)
        dropped = [l for l in leases if l.group == DROPPED and l.id]
        drop_at = granted + DROP_AFTER
        while time.monotonic() < drop_at + max(TTLS):
            if time.monotonic() >= drop_at and all(l.ka_count for l in dropped):
                break
            await asyncio.sleep(0.05)
        keeper.drop(dropped)
        drop_deadline = time.monotonic() + 2.0
        while keeper.unanswered(dropped) and time.monotonic() < drop_deadline:
            await asyncio.sleep(0.01)
        stats["dropped unanswered"] = keeper.unanswered(dropped)
        # watch until every non-kept key is gone, or EXTRA_WAIT past the
        # last deadline
        non_kept = [l for l in leases if l.group != KEPT and l.id and not l.put_error]
        last_deadline = max(l.answered + l.ttl + LATE_ALLOWANCE for l in non_kept)
        stop_at = last_deadline + EXTRA_WAIT
        next_poll = time.monotonic()
        while time.monotonic() < stop_at:
            if time.monotonic() >= next_poll:
                await poll(kvs[0], leases, time.monotonic(), stats)
                next_poll = time.monotonic() + POLL_EVERY
                gone = sum(1 for l in non_kept if key_of(l.i) in watcher.deleted)
                if gone == len(non_kept) and time.monotonic() > last_deadline:
                    break
                if watcher.error:
                    break
            await asyncio.sleep(0.05)
        stats["watch seconds"] = time.monotonic() - granted
        # one more poll, then the kept leases: still there, with their keys
        await poll(kvs[0], leases, time.monotonic(), stats)
        resp = await stubs[0].LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=30)
        stats["leases listed"] = set(l.ID for l in resp.leases)
        sample = [l for l in leases if l.group == KEPT and l.id][:50]
        stats["kept sample"] = []
        for lease in sample:
            ttl = await stubs[0].LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(
                ID=lease.id, keys=True), timeout=30)
            stats["kept sample"].append((lease, ttl.TTL, ttl.grantedTTL, list(ttl.keys)))
        stats["keeper errors"] = list(keeper.errors)
    finally:
        await keeper.stop()
        for ch in channels + ka_channels:
            await ch.close()
    return stats


def main():
    harness.check(N > 0 and EVERY >= 2, "bad BALLAST_LEASE_EXPIRY_* settings")
    failures = harness.Failures()
    with harness.Server() as server:
        leases = [Lease(i) for i in range(N)]
        start_rev = server.kv().Range(rpc_pb2.RangeRequest(key=b"x"), timeout=10).header.revision
        watcher = Watcher(server, start_rev + 1)
        watcher.start()
        harness.check(watcher.created.wait(10) and not watcher.error,
                      "the watch on exp/ was not created: %s" % watcher.error)
        stats = asyncio.run(run_async(server, leases, watcher))
        time.sleep(0.3)                     # late DELETE events of the last poll
        watcher.stop()
        harness.check(server.running(), "%s exited during the test; log:\n%s"
                      % (server, server.log_tail()))
    check_results(failures, leases, stats, watcher)
    failures.raise_if_any()


def check_results(failures, leases, stats, watcher):
    errors = stats["grant errors"]
    failures.check(not errors, "%d grants failed or were answered with another TTL: %s"
                   % (len(errors), errors[:5]))
    put_errors = [l for l in leases if l.put_error]
    failures.check(not put_errors, "%d puts with a fresh lease failed, e.g. lease %d: %s"
                   % (len(put_errors), put_errors[0].i if put_errors else 0,
                      put_errors[0].put_error if put_errors else ""))
    failures.check(not watcher.error, "watch: %s" % watcher.error)
    failures.check(not watcher.duplicates, "%d keys had two DELETE events, e.g. %r"
                   % (len(watcher.duplicates), watcher.duplicates[:3]))
    failures.check(not stats["keeper errors"], "keep-alive: %s" % stats["keeper errors"][:3])
    failures.check(stats["dropped unanswered"] == 0,
                   "%d keep-alives of the dropped group were not answered within 2 s"
                   % stats["dropped unanswered"])

    ok = [l for l in leases if l.id and not l.put_error]
    for lease in ok:
        deleted = watcher.deleted.get(key_of(lease.i))
        if deleted:
            lease.deleted, lease.deleted_rev = deleted

    # kept: never expire, every keep-alive answered with the full TTL
    kept = [l for l in ok if l.group == KEPT]
    lost = [l for l in kept if l.deleted or l.first_missing]
    if lost:
        l = lost[0]
        client_late = [x for x in lost if x.ka_max_gap > x.ttl - 0.3]
        failures.add("%d kept-alive leases' keys disappeared, e.g. exp/%05d (TTL %d, %d "
                     "keep-alives, longest gap between keep-alives sent %.2fs, DELETE event "
                     "%s); %d of them had a client-side gap > TTL - 0.3 s (the test's "
                     "client was too slow)"
                     % (len(lost), l.i, l.ttl, l.ka_count, l.ka_max_gap,
                        "at +%.2fs after its last answered keep-alive" % (l.deleted - l.answered)
                        if l.deleted else "none", len(client_late)))
    bad_ka = [l for l in ok if l.ka_bad]
    failures.check(not bad_ka, "%d leases got a keep-alive answer with TTL != granted TTL, "
                   "e.g. exp/%05d: TTL %s" % (len(bad_ka), bad_ka[0].i if bad_ka else 0,
                                              bad_ka[0].ka_bad[1] if bad_ka else ""))
    never_kept = [l for l in kept if l.ka_count == 0]
    failures.check(not never_kept, "%d kept leases never got a keep-alive answer"
                   % len(never_kept))
    max_gap = max((l.ka_max_gap / l.ttl for l in kept), default=0)
    harness.log("kept: %d leases, %d keep-alives answered, longest time between two "
                "keep-alives sent: %.2f TTL (the client aims at 0.33)"
                % (len(kept), sum(l.ka_count for l in kept), max_gap))
    listed = stats["leases listed"]
    kept_ids = set(l.id for l in kept)
    failures.check(listed == kept_ids, "LeaseLeases at the end: %d leases, %d kept-alive; "
                   "missing kept: %d, extra: %d"
                   % (len(listed), len(kept_ids), len(kept_ids - listed), len(listed - kept_ids)))
    for lease, ttl, granted, keys in stats["kept sample"]:
        if not (0 < ttl <= lease.ttl and granted == lease.ttl and keys == [key_of(lease.i)]):
            failures.add("LeaseTimeToLive of kept lease exp/%05d: TTL %d, grantedTTL %d, keys %r"
                         " (expected 0 < TTL <= %d, grantedTTL %d, [%r])"
                         % (lease.i, ttl, granted, keys, lease.ttl, lease.ttl, key_of(lease.i)))
            break

    # non-kept: not before S + T - tolerance, gone by R + T + 1 s
    non_kept = [l for l in ok if l.group != KEPT]
    dropped = [l for l in non_kept if l.group == DROPPED]
    never = [l for l in dropped if l.ka_count == 0]
    failures.check(not never, "%d dropped leases never had a keep-alive answered before the "
                   "drop (the test did not exercise them)" % len(never))
    early, late, missing, no_event = [], [], [], []
    lateness = []                     # deletion - (R + T)
    margins = []                      # deletion - (S + T)
    for l in non_kept:
        if l.deleted is None:
            missing.append(l)
            if l.first_missing:
                no_event.append(l)
            continue
        lateness.append(l.deleted - (l.answered + l.ttl))
        margins.append(l.deleted - (l.sent + l.ttl))
        if l.deleted < l.sent + l.ttl - EARLY_TOLERANCE:
            early.append(l)
        if l.deleted > l.answered + l.ttl + LATE_ALLOWANCE:
            late.append(l)
        if l.first_missing and l.first_missing[1] < l.sent + l.ttl - EARLY_TOLERANCE:
            early.append(l)

    def describe(l):
        return ("exp/%05d (%s, TTL %d): last grant/keep-alive sent +0 s, answered %+.3fs, key "
                "gone at %+.3fs" % (l.i, l.group, l.ttl, l.answered - l.sent,
                                    (l.deleted if l.deleted else float("nan")) - l.sent))

    harness.log("non-kept: %d leases (%d dropped after keep-alives); key gone after "
                "R + TTL: median %+.2fs, p99 %+.2fs, max %+.2fs; after S + TTL: min %+.3fs"
                % (len(non_kept), len(dropped), percentile(lateness, 50),
                   percentile(lateness, 99), max(lateness, default=float("nan")),
                   min(margins, default=float("nan"))))
    for group in (PLAIN, DROPPED):
        values = [l.deleted - (l.answered + l.ttl) for l in non_kept
                  if l.group == group and l.deleted]
        harness.log("  %s: gone after R + TTL: median %+.2fs, p99 %+.2fs, max %+.2fs (%d)"
                    % (group, percentile(values, 50), percentile(values, 99),
                       max(values, default=float("nan")), len(values)))
    seconds = {}
    for l in non_kept:
        if l.deleted:
            seconds[int(l.deleted)] = seconds.get(int(l.deleted), 0) + 1
    harness.log("keys gone per second of the run (max %d/s)" % max(seconds.values(), default=0))
    failures.check(not early, "%d keys disappeared earlier than their last grant/keep-alive "
                   "sent + TTL - %.1fs, e.g. %s" % (len(early), EARLY_TOLERANCE,
                                                   describe(early[0]) if early else ""))
    failures.check(not late, "%d of %d keys were gone later than their last grant/keep-alive "
                   "answered + TTL + %.1fs (max %+.2fs), e.g. %s"
                   % (len(late), len(non_kept), LATE_ALLOWANCE, max(lateness, default=0),
                      describe(max(late, key=lambda l: l.deleted - l.answered - l.ttl))
                      if late else ""))
    failures.check(not missing, "%d of %d non-kept leases' keys had no DELETE event within "
                   "%.0fs past the last deadline (%d of them missing from a Range: deleted "
                   "without an event), e.g. exp/%05d"
                   % (len(missing), len(non_kept), EXTRA_WAIT, len(no_event),
                      missing[0].i if missing else 0))
    harness.log("%d Range polls; %d DELETE events" % (stats["polls"], len(watcher.deleted)))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--watch":
        watch_main(sys.argv[2], int(sys.argv[3]))
    else:
        harness.run(main)
