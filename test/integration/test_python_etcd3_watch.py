"""The watch calls of python3-etcd3 (Debian's 0.12) see the same from the
candidate as from etcd.

The same sequence of etcd3.client calls runs against a fresh etcd 3.4.23 and a
fresh candidate: watch (one key, a range, history from a start_revision),
watch_prefix (prev_kv), watch_response and watch_prefix_response (history in
one response, stamped with the current revision), watch_once and
watch_prefix_once (with a timeout that expires, with one that does not, and
without a timeout), watch_once_response, add_watch_callback and
add_watch_prefix_callback (prev_kv), cancel_watch and
the cancel function of watch() (no event after it), and a start_revision that
compaction removed (RevisionCompactedError, from the iterator and to the
callback).  Every call's result is compared as plain data: event class, key,
value, create/mod revision, version, lease and prev_kv, response header
revision, watch ids, exception class and compacted revision.  Writes are made
by the same client between the calls, so revisions match.  Every wait is
bounded (5 s for the expected events, then 0.3 s for extra ones).
"""

import threading
import time

import etcd3
from etcd3.events import Event
from etcd3.watch import WatchResponse
from google.protobuf import text_format

import harness
from harness import Failures

WAIT = 5.0          # for the events a step expects
EXTRA = 0.3         # then, for events it should not get


def plain_event(ev):
    return (type(ev).__name__, text_format.MessageToString(ev._event, as_one_line=True))


def plain(value):
    if isinstance(value, Event):
        return plain_event(value)
    if isinstance(value, WatchResponse):
        return ("response", value.header.revision, [plain_event(e) for e in value.events])
    if isinstance(value, etcd3.exceptions.RevisionCompactedError):
        return ("RevisionCompactedError", value.compacted_revision)
    if isinstance(value, BaseException):
        return ("error", type(value).__name__, str(value))
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def event_count(items):
    return sum(len(i.events) if isinstance(i, WatchResponse) else 1 for i in items)


def collect(iterator, cancel, events):
    """Reads `iterator` in a thread until it has given `events` events (or
    WAIT s), then EXTRA s more, then cancels; returns what it gave, and the
    exception that ended it, if any."""
    items = []

    def read():
        try:
            for item in iterator:
                items.append(item)
        except Exception as exc:     # part of the result (e.g. a compaction)
            items.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while event_count([i for i in items if not isinstance(i, Exception)]) < events and \
            thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(EXTRA)
    cancel()
    thread.join(2)
    return plain(list(items))


def wait_callback(items, events):
    deadline = time.monotonic() + WAIT
    while event_count([i for i in items if not isinstance(i, Exception)]) < events and \
            not any(isinstance(i, Exception) for i in items) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(EXTRA)


def bounded(fn):
    """Runs fn() in a thread for at most WAIT + 5 s (watch_once without a
    timeout blocks until an event comes)."""
    result = []

    def run():
        try:
            result.append(plain(fn()))
        except Exception as exc:
            result.append(plain(exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT + 5)
    return result[0] if result else ("did not return within %.0fs" % (WAIT + 5))


def revision(c):
    return c.get_response("nosuchkey").header.revision


def later(c, *writes):
    """Makes the writes from another thread 0.2 s from now."""
    def run():
        for key, value in writes:
            c.put(key, value)
    timer = threading.Timer(0.2, run)
    timer.start()
    return timer


# ---- the steps: each takes the client and returns plain data -------------

def watch_key(c):
    it, cancel = c.watch("a")
    c.put("a", "1")
    c.put("b", "x")
    c.put("a", "2")
    c.delete("a")
    c.put("a/x", "y")
    return collect(it, cancel, 3)


def watch_cancel_then_write(c):
    it, cancel = c.watch("k")
    c.put("k", "1")
    first = collect(it, cancel, 1)
    c.put("k", "2")                 # after cancel: nobody gets it
    return first


def watch_range(c):
    it, cancel = c.watch("b", range_end="d")
    for key in ("b", "c", "d", "bb", "a"):
        c.put(key, "r-" + key)
    return collect(it, cancel, 3)


def watch_prefix_prev_kv(c):
    it, cancel = c.watch_prefix("a/", prev_kv=True)
    c.put("a/x", "1")
    c.put("a/y", "2")
    c.put("a/x", "3")
    c.put("a", "4")
    c.delete_prefix("a/")
    return collect(it, cancel, 5)


def watch_history(c):
    it, cancel = c.watch("a", start_revision=2)
    return collect(it, cancel, 5)


def watch_prefix_history_prev_kv(c):
    it, cancel = c.watch_prefix("a", start_revision=5, prev_kv=True)
    return collect(it, cancel, 9)


def watch_response_live(c):
    it, cancel = c.watch_response("r")
    c.put("r", "1")
    c.put("r", "2")
    c.delete("r")
    return collect(it, cancel, 3)


def watch_prefix_response_history(c):
    it, cancel = c.watch_prefix_response("a", start_revision=1)
    return collect(it, cancel, 11)


def watch_response_txn(c):
    it, cancel = c.watch_prefix_response("t/")
    t = c.transactions
    c.transaction(compare=[], success=[t.put("t/1", "a"), t.put("t/2", "b"), t.put("u", "c")],
                  failure=[])
    c.transaction(compare=[], success=[t.delete("t/1"), t.delete("t/2")], failure=[])
    return collect(it, cancel, 4)


def watch_once_times_out(c):
    try:
        return plain(c.watch_once("never", timeout=0.5))
    except etcd3.exceptions.WatchTimedOut as exc:
        return ("WatchTimedOut", str(exc))


def watch_once_with_timeout(c):
    rev = revision(c)
    timer = later(c, ("o1", "v1"), ("o1", "v2"))
    result = bounded(lambda: c.watch_once("o1", timeout=WAIT, start_revision=rev + 1))
    timer.join()
    return result


def watch_once_without_timeout(c):
    rev = revision(c)
    timer = later(c, ("o2", "v"))
    result = bounded(lambda: c.watch_once("o2", start_revision=rev + 1))
    timer.join()
    return result


def watch_prefix_once(c):
    rev = revision(c)
    timer = later(c, ("o3", "no"), ("o/1", "yes"))
    result = bounded(lambda: c.watch_prefix_once("o/", timeout=WAIT, start_revision=rev + 1))
    timer.join()
    return result


def watch_once_response(c):
    rev = revision(c)
    timer = later(c, ("o4", "v"))
    result = bounded(lambda: c.watch_once_response("o4", timeout=WAIT, start_revision=rev + 1))
    timer.join()
    return result


def watch_once_history(c):
    return bounded(lambda: c.watch_once("a", timeout=WAIT, start_revision=2))


def add_watch_callback(c):
    items = []
    watch_id = c.add_watch_callback("cb", items.append)
    c.put("cb", "1")
    c.put("cb", "2")
    wait_callback(items, 2)
    c.cancel_watch(watch_id)
    c.put("cb", "3")                # after cancel_watch: not delivered
    time.sleep(EXTRA)
    return ("watch_id", watch_id, plain(items))


def add_watch_prefix_callback(c):
    plain_items, prev_kv_items = [], []
    ids = [c.add_watch_prefix_callback("f/", plain_items.append),
           c.add_watch_prefix_callback("f/", prev_kv_items.append, prev_kv=True)]
    c.put("f/1", "a")
    c.put("f/2", "b")
    c.put("f/1", "c")
    c.delete_prefix("f/")
    wait_callback(plain_items, 5)
    wait_callback(prev_kv_items, 5)
    for watch_id in ids:
        c.cancel_watch(watch_id)
    return ("watch_ids", ids, plain(plain_items), plain(prev_kv_items))


def add_watch_callback_history(c):
    items = []
    watch_id = c.add_watch_callback("a", items.append, range_end="b", start_revision=3)
    wait_callback(items, 10)
    c.cancel_watch(watch_id)
    return ("watch_id", watch_id, plain(items))


def compact(c):
    rev = revision(c)
    c.compact(rev - 5)
    return ("compacted at", rev - 5)


def watch_compacted(c):
    it, cancel = c.watch("a", start_revision=2)
    return collect(it, cancel, 1)


def watch_response_compacted(c):
    it, cancel = c.watch_prefix_response("a", start_revision=3)
    return collect(it, cancel, 1)


def add_watch_callback_compacted(c):
    items = []
    watch_id = c.add_watch_callback("a", items.append, start_revision=2)
    wait_callback(items, 1)
    return ("watch_id", watch_id, plain(items))


def watch_after_compaction(c):
    rev = revision(c)
    # every key, from the compacted revision + 1
    it, cancel = c.watch("\0", range_end="\0", start_revision=rev - 4)
    return collect(it, cancel, 5)


def still_serving(c):
    it, cancel = c.watch("last")
    c.put("last", "1")
    return (collect(it, cancel, 1), c.get("last")[0])


STEPS = [watch_key, watch_cancel_then_write, watch_range, watch_prefix_prev_kv, watch_history,
         watch_prefix_history_prev_kv, watch_response_live, watch_prefix_response_history,
         watch_response_txn, watch_once_times_out, watch_once_with_timeout,
         watch_once_without_timeout, watch_prefix_once, watch_once_response,
         watch_once_history, add_watch_callback, add_watch_prefix_callback,
         add_watch_callback_history, compact, watch_compacted, watch_response_compacted,
         add_watch_callback_compacted, watch_after_compaction, still_serving]


def _ignore_closed_channel(args):
    """etcd3's watch thread opens a new stream when its stream ends; after
    client.close() that raises "Channel closed" in the thread: not a result."""
    if args.exc_type is ValueError and "Channel closed" in str(args.exc_value) and \
            args.thread is not None and args.thread.name.startswith("etcd3_watch"):
        return
    _default_excepthook(args)


_default_excepthook = threading.excepthook


def run_all(server):
    client = etcd3.client("127.0.0.1", server.client_port, timeout=10)
    results = []
    try:
        for step in STEPS:
            try:
                results.append((step.__name__, step(client)))
            except Exception as exc:                # a result too
                results.append((step.__name__, plain(exc)))
    finally:
        client.close()
    return results


def main():
    threading.excepthook = _ignore_closed_channel
    failures = Failures()
    with harness.Server(kind="etcd") as ref, harness.Server() as cand:
        started = time.monotonic()
        want = run_all(ref)
        harness.log("etcd: %.1fs" % (time.monotonic() - started))
        started = time.monotonic()
        got = run_all(cand)
        harness.log("candidate: %.1fs" % (time.monotonic() - started))
        for (name, w), (_, g) in zip(want, got):
            failures.check(w == g, "%s:\n    etcd:      %r\n    candidate: %r" % (name, w, g))
        harness.check(cand.running(), "candidate exited; log:\n%s" % cand.log_tail())
    harness.log("%d python-etcd3 watch steps compared" % len(want))
    failures.raise_if_any()


if __name__ == "__main__":
    harness.run(main)
