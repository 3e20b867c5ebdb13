"""A linearizability checker for histories of etcd KV operations.

A history is what concurrent clients saw: for each operation, when it was
invoked, when its answer came back (or that it never came back), and the
answer.  The checker searches for one sequential order of the operations
that (1) keeps every operation between its invocation and its return and
(2) gives every answer that the clients saw when the operations are applied,
in that order, to a model of etcd's MVCC store.  That is the Wing & Gong
search with Lowe's memoisation of (set of linearized operations, model
state) pairs already explored.

The model is etcd's, not a register per key: one revision counter for the
whole store, incremented by every write (a Put, a Txn whose taken branch
puts), and for every key its value, create_revision, mod_revision and
version.  Answers carry revisions (the Put's header revision, a read's
header revision, the mod_revision of what it read), and a revision orders
operations on *different* keys: a Put on "a" answered with revision 10 that
returned before a Put on "b" answered with revision 9 was invoked is not
linearizable although each key alone is.  So splitting the history per key
(P-compositionality) is not sound once revisions are checked; the checker
searches the whole history as one object, with a bound on the search.  The
revisions also make that search cheap: a write can only go where the store's
revision is one less than its answer, a read only where it equals the read's
header revision.

Operations whose outcome is unknown (the client got an error or a timeout:
the server may have applied the write, maybe later) are "pending forever":
they may be linearized at any point after their invocation, or never.
Reads that failed have no effect and are simply left out by the recorder.
Writes give unique values (the recorder's job), so a value seen by a read
names the one write that wrote it: the checker uses that to pin an unknown
write to the mod_revision it was seen with (a consequence of the model, not
an extra assumption: it only prunes the search).

Operations (History.invoke(kind, ...), then ok(...) or fail()):
  put(key, value)                  -> ok(revision=header revision)
  get(key)                         -> ok(revision=header revision,
                                         kv=(value, create_rev, mod_rev, version) or None)
  cas(key, value, compare=("value", v) or ("mod", rev))
                                   -> ok(revision=header revision, succeeded=bool)
      a Txn: if the compare holds, Put(key, value), else nothing.  etcd
      compares a value of an absent key as false, its mod_revision as 0.
  range(prefix)                    -> ok(revision=header revision,
                                         kvs={key: (value, create, mod, version)})
      a linearizable Range over a whole prefix.
"""

import threading
import time

INF = float("inf")


class Op:
    __slots__ = ("index", "client", "kind", "key", "value", "compare", "invoked", "returned",
                 "revision", "kv", "kvs", "succeeded", "pinned")

    def __init__(self, client, kind, key, value=None, compare=None):
        self.index = -1
        self.client = client
        self.kind = kind
        self.key = key
        self.value = value
        self.compare = compare
        self.invoked = None
        self.returned = INF          # INF: no answer (pending forever)
        self.revision = None
        self.kv = None
        self.kvs = None
        self.succeeded = None
        self.pinned = None           # revision an unknown write must take, if seen by a read

    @property
    def pending(self):
        return self.returned == INF

    def __repr__(self):
        what = {"put": "put(%r, %r)" % (self.key, self.value),
                "get": "get(%r)" % (self.key,),
                "cas": "cas(%r, %r if %s == %r)" % (self.key, self.value,
                                                   *(self.compare or (None, None))),
                "range": "range(%r*)" % (self.key,)}[self.kind]
        if self.pending:
            answer = "unknown outcome" + (" (seen at revision %d)" % self.pinned
                                          if self.pinned else "")
        elif self.kind == "get":
            answer = "rev %d -> %r" % (self.revision, self.kv)
        elif self.kind == "cas":
            answer = "rev %d succeeded=%s" % (self.revision, self.succeeded)
        elif self.kind == "range":
            answer = "rev %d -> %d keys" % (self.revision, len(self.kvs))
        else:
            answer = "rev %d" % self.revision
        end = "inf" if self.pending else "%.6f" % self.returned
        return "#%d client %s [%.6f, %s] %s: %s" % (self.index, self.client, self.invoked,
                                                    end, what, answer)


class History:
    """Thread-safe recorder.  Times come from time.monotonic(): take the
    invocation time before sending and the return time after the answer,
    so each operation's real interval lies inside the recorded one."""

    def __init__(self, clock=time.monotonic):
        self.ops = []
        self.clock = clock
        self._lock = threading.Lock()

    def invoke(self, client, kind, key, value=None, compare=None, at=None):
        op = Op(client, kind, key, value, compare)
        op.invoked = self.clock() if at is None else at
        with self._lock:
            op.index = len(self.ops)
            self.ops.append(op)
        return op

    def ok(self, op, revision, kv=None, kvs=None, succeeded=None, at=None):
        op.revision = revision
        op.kv = kv
        op.kvs = kvs
        op.succeeded = succeeded
        op.returned = self.clock() if at is None else at

    def fail(self, op):
        """The operation got no answer or an error.  A write stays in the
        history with an unknown outcome; a read is dropped (it changed
        nothing and told nothing)."""
        if op.kind in ("get", "range"):
            with self._lock:
                op.kind = None
        op.returned = INF

    def operations(self):
        with self._lock:
            return [op for op in self.ops if op.kind is not None]


class Result:
    def __init__(self, ok, reason, ops, steps, seconds, pending):
        self.ok = ok
        self.reason = reason
        self.ops = ops
        self.steps = steps
        self.seconds = seconds
        self.pending = pending

    def __str__(self):
        return "%s: %d operations (%d with unknown outcome), %d search steps, %.2fs%s" % (
            "linearizable" if self.ok else "NOT linearizable", self.ops, self.pending,
            self.steps, self.seconds, "" if self.ok else "\n" + self.reason)


class _Model:
    """etcd's store: one revision, and per key (value, create, mod, version).
    Changed in place with an undo log; `digest` is a hash of the key table
    kept up to date incrementally (XOR of the entries' hashes)."""

    def __init__(self, taken=()):
        self.revision = 1            # etcd's revision of an empty store
        self.keys = {}
        self.digest = 0
        # revisions that answers name as some write's: an unknown write that
        # was not seen cannot have made any of them
        self.taken = frozenset(taken)

    def _set(self, key, entry):
        old = self.keys.get(key)
        if old is not None:
            self.digest ^= hash((key, old))
        self.digest ^= hash((key, entry))
        self.keys[key] = entry
        return old

    def _restore(self, key, old):
        entry = self.keys[key]
        self.digest ^= hash((key, entry))
        if old is None:
            del self.keys[key]
        else:
            self.digest ^= hash((key, old))
            self.keys[key] = old

    def compare_holds(self, key, compare):
        target, expected = compare
        entry = self.keys.get(key)
        if target == "value":
            return entry is not None and entry[0] == expected
        return (entry[2] if entry is not None else 0) == expected

    def write(self, key, value):
        """Puts `value` at the next revision; returns the undo record."""
        old = self.keys.get(key)
        self.revision += 1
        if old is None:
            entry = (value, self.revision, self.revision, 1)
        else:
            entry = (value, old[1], self.revision, old[3] + 1)
        self._set(key, entry)
        return key, old

    def undo(self, record):
        key, old = record
        self._restore(key, old)
        self.revision -= 1

    def _free_for(self, op):
        """Whether the unknown write `op` may take the next revision."""
        if op.pinned is not None:
            return op.pinned == self.revision + 1
        return self.revision + 1 not in self.taken

    def step(self, op):
        """Applies `op` if the answer it got is what the model answers now.
        Returns (legal, undo record or None)."""
        if op.kind == "put":
            if op.pending:
                if not self._free_for(op):
                    return False, None
            elif op.revision != self.revision + 1:
                return False, None
            return True, self.write(op.key, op.value)
        if op.kind == "get":
            return op.revision == self.revision and self.keys.get(op.key) == op.kv, None
        if op.kind == "cas":
            holds = self.compare_holds(op.key, op.compare)
            if op.pending:
                # a Txn whose compare fails changes nothing: linearizing it is
                # the same as leaving it out
                if not holds or not self._free_for(op):
                    return False, None
                return True, self.write(op.key, op.value)
            if holds != op.succeeded:
                return False, None
            if not holds:
                return op.revision == self.revision, None
            if op.revision != self.revision + 1:
                return False, None
            return True, self.write(op.key, op.value)
        if op.kind == "range":
            if op.revision != self.revision:
                return False, None
            seen = {k: v for k, v in self.keys.items() if k.startswith(op.key)}
            return seen == op.kvs, None
        raise ValueError("unknown operation kind %r" % op.kind)


def _pin_unknown_writes(ops):
    """An unknown write whose unique value a read saw at mod_revision r must
    be the write of revision r."""
    writers = {}
    for op in ops:
        if op.kind in ("put", "cas"):
            writers.setdefault((op.key, op.value), []).append(op)
    for op in ops:
        if op.pending or op.kind not in ("get", "range"):
            continue
        seen = [(op.key, op.kv)] if op.kind == "get" else list(op.kvs.items())
        for key, kv in seen:
            if kv is None:
                continue
            candidates = writers.get((key, kv[0]), ())
            if len(candidates) == 1 and candidates[0].pending:
                candidates[0].pinned = kv[2]


def check(ops, max_steps=5_000_000, max_seconds=600.0):
    """Searches for a linearization of `ops` (History.operations()).
    Returns a Result; a search that hits max_steps or max_seconds is a
    failure that says so (nothing could be concluded)."""
    started = time.monotonic()
    ops = [op for op in ops if op.kind is not None]
    for op in ops:
        op.pinned = None
    _pin_unknown_writes(ops)
    done_ops = sorted((op for op in ops if not op.pending), key=lambda o: o.invoked)
    pending = sorted((op for op in ops if op.pending), key=lambda o: o.invoked)
    n = len(done_ops)
    mentioned = set()                # (key, value) read or compared anywhere
    for op in ops:
        if op.kind == "get" and not op.pending and op.kv is not None:
            mentioned.add((op.key, op.kv[0]))
        elif op.kind == "range" and not op.pending:
            mentioned.update((k, v[0]) for k, v in op.kvs.items())
        elif op.kind == "cas" and op.compare[0] == "value":
            mentioned.add((op.key, op.compare[1]))
    unmentioned = [(op.key, op.value) not in mentioned for op in pending]
    pinned_at = {}
    for i, op in enumerate(pending):
        if op.pinned is not None:
            pinned_at.setdefault(op.pinned, []).append(i)
    invoked = [op.invoked for op in done_ops]
    returned = [op.returned for op in done_ops]
    model = _Model([op.revision for op in done_ops if op.kind == "put" or
                    (op.kind == "cas" and op.succeeded)] +
                   [op.pinned for op in pending if op.pinned is not None])

    # Search state: completed operations before `base` are all linearized,
    # bit j of `window` says whether done_ops[base + j] is; bit i of `pend`
    # whether pending[i] is.  Each frame of the explicit DFS stack keeps the
    # candidates it has still to try and the undo record of the step that
    # led to it.
    seen = set()                     # (base, window, pend, revision, digest) explored
    steps = 0
    best = (0, None)                 # deepest point reached, for the report

    def reads_nothing_changed(op):
        return op.kind in ("get", "range") or (op.kind == "cas" and not op.succeeded)

    def candidates(base, window, pend):
        """Operations that may come next: every unlinearized completed one
        invoked before the earliest return among them, and every pending
        one invoked before that time that may take the next revision (pinned
        ones first, then the others: both orders are explored, this one
        finds a correct order sooner).

        Partial-order reduction: a completed operation that changes nothing
        (a read, a failed compare-and-set) and is legal now is taken at once,
        with no alternative.  That is sound: in any linearization that puts
        it later, only operations that leave the revision alone come between
        (it names the revision), it commutes with them, and no real-time
        order is broken by moving it earlier, since nothing unlinearized
        returned before it was invoked (it is a candidate)."""
        limit = INF
        result = []
        j = 0
        while True:
            rest = window >> j       # skip the linearized ones (a run of 1 bits) at once
            j += ((~rest) & (rest + 1)).bit_length() - 1
            if base + j >= n or invoked[base + j] >= limit:
                break
            limit = min(limit, returned[base + j])
            result.append(("d", base + j))
            j += 1
        result = [c for c in result if invoked[c[1]] < limit]
        for c in result:
            op = done_ops[c[1]]
            if reads_nothing_changed(op) and model.step(op)[0]:
                return [c]
        # an unknown write can only take the next revision: the one it is
        # pinned to, or (unpinned) one that no answer names
        following = model.revision + 1
        for i in pinned_at.get(following, ()):
            if pending[i].invoked < limit and not (pend >> i) & 1:
                result.append(("p", i))
        if following in model.taken:
            return result
        late, classes = [], set()
        for i, op in enumerate(pending):
            if op.invoked >= limit:
                break
            if (pend >> i) & 1 or op.pinned is not None:
                continue
            if unmentioned[i]:
                # symmetry: unknown writes of values that appear nowhere else,
                # of the same kind, key and compare, all invoked already and
                # never returning, can stand in for each other: try one
                if (op.kind, op.key, op.compare) not in classes:
                    classes.add((op.kind, op.key, op.compare))
                    late.append(("p", i))
            else:
                late.append(("p", i))
        return result + late

    # a frame: [base, window, pend, candidates, next candidate, undo record
    # of the step that led to this frame]
    stack = [[0, 0, 0, candidates(0, 0, 0), 0, None]]
    while stack:
        frame = stack[-1]
        base, window, pend, cands, pos, _ = frame
        if base == n:
            return Result(True, "", len(ops), steps, time.monotonic() - started, len(pending))
        if pos == len(cands):
            stack.pop()
            if frame[5] is not None:
                model.undo(frame[5])
            continue
        frame[4] = pos + 1
        steps += 1
        if steps > max_steps or (steps & 0xFFF == 0 and
                                 time.monotonic() - started > max_seconds):
            return Result(False, "search bound reached (%d steps, %.0fs) at %s: no conclusion"
                          % (steps, time.monotonic() - started, _where(best, done_ops)),
                          len(ops), steps, time.monotonic() - started, len(pending))
        which, i = cands[pos]
        op = done_ops[i] if which == "d" else pending[i]
        legal, undo = model.step(op)
        if not legal:
            continue
        if which == "d":
            w = window | (1 << (i - base))
            ones = ((~w) & (w + 1)).bit_length() - 1
            nbase, nwindow, npend = base + ones, w >> ones, pend
        else:
            nbase, nwindow, npend = base, window, pend | (1 << i)
        key = (nbase, nwindow, npend, model.revision, model.digest)
        if key in seen:
            if undo is not None:
                model.undo(undo)
            continue
        seen.add(key)
        if nbase > best[0]:
            best = (nbase, model.revision)
        stack.append([nbase, nwindow, npend, candidates(nbase, nwindow, npend), 0, undo])
    return Result(False, "no order of the operations explains the answers: %s"
                  % _where(best, done_ops), len(ops), steps, time.monotonic() - started,
                  len(pending))


def _where(best, done_ops):
    """The first completed operation that no linearization could place, and
    the ones just before it (in invocation order)."""
    base, info = best
    if base >= len(done_ops):
        return "the end of the history"
    lines = ["the search never got past completed operation %d of %d%s:" % (
        base, len(done_ops), " (store at revision %d there)" % info if info else "")]
    for op in done_ops[max(0, base - 5):base + 6]:
        lines.append("  %s %r" % ("->" if op is done_ops[base] else "  ", op))
    return "\n".join(lines)
