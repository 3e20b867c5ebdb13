"""Load helpers of the watch scale and memory tests: consumer processes that
hold many raw Watch streams (watch_h2) and check every event they get, and a
put generator that keeps a window of Puts in flight.

A consumer runs in a child process of its own ("spawn" start method: a fresh
interpreter, no grpc state inherited), so that parsing millions of
WatchResponses does not take the writer's GIL.  It dies with its parent
(PR_SET_PDEATHSIG) and has a deadline of its own, so nothing outlives a test.
"""

import collections
import ctypes
import multiprocessing
import os
import signal
import time

import grpc
from etcd3.etcdrpc import kv_pb2, rpc_pb2, rpc_pb2_grpc

import watch_h2

PUT = kv_pb2.Event.PUT
_parse_watch_response = rpc_pb2.WatchResponse.FromString
MAX_ERRORS = 20


def _die_with_parent():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)          # PR_SET_PDEATHSIG
    except OSError:
        pass


def create_request(key, range_end=b"", start_revision=0, prev_kv=False):
    return rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
        key=key, range_end=range_end, start_revision=start_revision, prev_kv=prev_kv))


class WatchChecker:
    """Checks the responses of the watchers of some streams, all watching the
    same keys and all expecting every event from revision `first_rev` on, once
    and in order (consecutive revisions: only this load writes them).

    state[(stream, watch_id)] = [next expected revision, events received]."""

    def __init__(self, first_rev, key=None, prev_kv=False):
        self.first_rev = first_rev
        self.key = key                 # None: any key (a prefix watch)
        self.prev_kv = prev_kv
        self.state = {}
        self.errors = []
        self.error_count = 0
        self.events = 0
        self.messages = 0

    def error(self, text):
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(text)

    def handle(self, conn, payload):
        resp = _parse_watch_response(payload)
        self.messages += 1
        events = resp.events
        if resp.created or resp.canceled or resp.compact_revision or not events:
            self._handle_other(conn, resp)
            return
        state = self.state.get((conn.label, resp.watch_id))
        if state is None:
            self.error("%s: events for unknown watch %d" % (conn.label, resp.watch_id))
            return
        expected = state[0]
        key, prev_kv = self.key, self.prev_kv
        for ev in events:               # the hot path: millions of events
            kv = ev.kv
            rev = kv.mod_revision
            if rev != expected or ev.type != PUT or (key is not None and kv.key != key):
                self.error("%s watch %d: expected a PUT at revision %d, got %s %r at %d" % (
                    conn.label, resp.watch_id, expected, kv_pb2.Event.EventType.Name(ev.type),
                    kv.key, rev))
            if prev_kv and rev > 2 and not ev.HasField("prev_kv"):
                self.error("%s watch %d: no prev_kv at revision %d" % (conn.label,
                                                                       resp.watch_id, rev))
            expected = rev + 1
        state[0] = expected
        state[1] += len(events)
        self.events += len(events)

    def _handle_other(self, conn, resp):
        wid = (conn.label, resp.watch_id)
        if resp.created:
            if resp.canceled or wid in self.state or resp.events:
                self.error("%s: bad created reply: %s" % (conn.label, resp))
                return
            self.state[wid] = [self.first_rev, 0]
        elif resp.canceled or resp.compact_revision:
            self.error("%s: watch %d canceled: %s" % (conn.label, resp.watch_id, resp))
        else:
            self.error("%s: a response without events: %s" % (conn.label, resp))

    def created(self):
        return len(self.state)

    def complete(self, last_rev):
        """How many watchers have every event up to last_rev."""
        return sum(1 for s in self.state.values() if s[0] > last_rev)

    def lagging(self, last_rev, count=5):
        return sorted(((k, s[0] - 1) for k, s in self.state.items() if s[0] <= last_rev),
                      key=lambda x: x[1])[:count]


def consumer_main(pipe, port, stream_labels, per_stream, key, first_rev, lifetime,
                  prev_kv=False, window=watch_h2.BIG_WINDOW):
    """Child process: opens one WatchConnection per label (announcing `window`),
    `per_stream` watchers on `key` each, then reads and checks until told to
    stop.  It sends ("ready", summary) once every watcher is created; then:
      ("target", last_rev, timeout) -> ("reached", summary) when every watcher
          has all events up to last_rev, or at the timeout;
      ("stall",) -> stops reading every stream -> ("stalled", summary);
      ("resume", last_rev, timeout) -> reads again (windows unchanged), then
          as "target";
      ("stop",) -> exits."""
    _die_with_parent()
    end_of_life = time.monotonic() + lifetime
    checker = WatchChecker(first_rev, key, prev_kv=prev_kv)
    conns = []
    try:
        for label in stream_labels:
            conn = watch_h2.WatchConnection("127.0.0.1", port, window=window, label=label)
            conns.append(conn)
            for _ in range(per_stream):
                conn.send(create_request(key, prev_kv=prev_kv))
        want = len(stream_labels) * per_stream
        watch_h2.pump(conns, checker.handle, lambda: checker.created() >= want or
                      any(c.closed for c in conns), min(end_of_life, time.monotonic() + 30))
        pipe.send(("ready", _summary(checker, conns, None)))
        target = [None, 0.0, 0.0]      # last_rev, deadline, when the target came

        def until():
            if pipe.poll():
                msg = pipe.recv()
                if msg[0] == "stop":
                    return True
                if msg[0] == "stall":
                    for conn in conns:
                        conn.stop_reading()
                    pipe.send(("stalled", _summary(checker, conns, None)))
                    return False
                if msg[0] == "resume":
                    for conn in conns:
                        conn.resume_reading(open_window=False)
                target[:] = [msg[1], time.monotonic() + msg[2], time.monotonic()]
            if target[0] is None:
                return False
            if checker.complete(target[0]) >= want or time.monotonic() > target[1] or \
                    any(c.closed for c in conns):
                summary = _summary(checker, conns, target[0])
                summary["seconds_after_target"] = time.monotonic() - target[2]
                pipe.send(("reached", summary))
                target[0] = None
            return False

        while time.monotonic() < end_of_life:
            if watch_h2.pump(conns, checker.handle, until, end_of_life):
                break
    finally:
        for conn in conns:
            conn.close()


def _summary(checker, conns, last_rev):
    return {"created": checker.created(), "events": checker.events,
            "messages": checker.messages, "errors": checker.errors,
            "error_count": checker.error_count,
            "complete": None if last_rev is None else checker.complete(last_rev),
            "lagging": [] if last_rev is None else checker.lagging(last_rev),
            "closed": [(c.label, c.closed) for c in conns if c.closed],
            "data_bytes": sum(c.data_bytes for c in conns)}


class Consumers:
    """`procs` consumer processes sharing `streams` streams of `per_stream`
    watchers each on `key` (see consumer_main)."""

    def __init__(self, port, streams, per_stream, procs, key, first_rev, lifetime,
                 name="stream", prev_kv=False, window=watch_h2.BIG_WINDOW):
        ctx = multiprocessing.get_context("spawn")
        self.children = []
        for p in range(procs):
            labels = ["%s %d" % (name, i) for i in range(p, streams, procs)]
            if not labels:
                continue
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=consumer_main, daemon=True, args=(
                child_end, port, labels, per_stream, key, first_rev, lifetime, prev_kv,
                window))
            proc.start()
            self.children.append((proc, parent_end, len(labels) * per_stream))

    def _send_all(self, msg):
        for _, pipe, _ in self.children:
            pipe.send(msg)

    def _recv_all(self, kind, timeout):
        results = []
        deadline = time.monotonic() + timeout
        for proc, pipe, _ in self.children:
            while not pipe.poll(0.2):
                if not proc.is_alive():
                    raise RuntimeError("consumer process %d exited (status %s)"
                                       % (proc.pid, proc.exitcode))
                if time.monotonic() > deadline:
                    raise RuntimeError("consumer process %d did not answer %r within %ds"
                                       % (proc.pid, kind, timeout))
            msg = pipe.recv()
            assert msg[0] == kind, msg
            results.append(msg[1])
        return self._merge(results)

    def wait_ready(self, timeout=60):
        return self._recv_all("ready", timeout)

    def start_target(self, last_rev, timeout):
        self._send_all(("target", last_rev, timeout))

    def start_resume(self, last_rev, timeout):
        self._send_all(("resume", last_rev, timeout))

    def wait_reached(self, timeout):
        return self._recv_all("reached", timeout + 30)

    def wait_target(self, last_rev, timeout):
        self.start_target(last_rev, timeout)
        return self.wait_reached(timeout)

    def stall(self, timeout=30):
        self._send_all(("stall",))
        return self._recv_all("stalled", timeout)

    @property
    def watchers(self):
        return sum(n for _, _, n in self.children)

    @staticmethod
    def _merge(summaries):
        total = {"created": 0, "events": 0, "messages": 0, "errors": [], "error_count": 0,
                 "complete": 0, "lagging": [], "closed": [], "seconds_after_target": 0.0,
                 "data_bytes": 0}
        for s in summaries:
            for k in ("created", "events", "messages", "error_count", "data_bytes"):
                total[k] += s[k]
            total["complete"] += s["complete"] or 0
            total["errors"] += s["errors"]
            total["lagging"] += s["lagging"]
            total["closed"] += s["closed"]
            total["seconds_after_target"] = max(total["seconds_after_target"],
                                                s.get("seconds_after_target", 0.0))
        return total

    def stop(self):
        for proc, pipe, _ in self.children:
            try:
                pipe.send(("stop",))
            except OSError:
                pass
        for proc, _, _ in self.children:
            proc.join(5)
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
                proc.join(5)


def put_load(channel, items, inflight=64, timeout=60):
    """Puts every (key, value) of `items` keeping `inflight` Puts in flight on
    `channel`; returns (seconds, the revision of each item's Put in the order
    of `items` (Puts in flight may be applied in any order), the longest time
    one Put took from its call to its reply, in seconds)."""
    stub = rpc_pb2_grpc.KVStub(channel)
    pending = collections.deque()
    revisions = []
    slowest = 0.0

    def reply(call):
        # call = [future, sent, replied]: a callback notes the reply's arrival,
        # which may be well before this thread takes the result of a Put
        # queued behind others
        nonlocal slowest
        revisions.append(call[0].result().header.revision)
        slowest = max(slowest, (call[2] or time.monotonic()) - call[1])

    started = time.monotonic()
    for key, value in items:
        if len(pending) >= inflight:
            reply(pending.popleft())
        call = [None, time.monotonic(), None]
        call[0] = stub.Put.future(rpc_pb2.PutRequest(key=key, value=value), timeout=timeout)
        call[0].add_done_callback(lambda _, c=call: c.__setitem__(2, time.monotonic()))
        pending.append(call)
    while pending:
        reply(pending.popleft())
    return time.monotonic() - started, revisions, slowest


def rpc_error_text(exc):
    if isinstance(exc, grpc.RpcError):
        return "%s: %s" % (exc.code(), exc.details())
    return str(exc)
