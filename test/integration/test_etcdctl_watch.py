"""`etcdctl watch` (3.4) prints the same against the candidate as against etcd.

Both servers start empty and go through the same three phases.  In each, a set
of `etcdctl watch` processes is started and, once every one of them has its
connection to the server (plus a settling pause), another etcdctl makes the
same writes on both servers, so revisions match.  Each watcher runs until it
has printed the phase's last write (bounded: 10 s), then it is stopped by its
PID with SIGTERM; a watcher the server cancels exits by itself.  Exit status,
stdout and stderr of every watcher (and of every write) must be equal after
masking cluster_id, member_id and raft_term (json and fields output) and, in
etcdctl's client-side warnings, the timestamp, client UUID and address.

1. live: `watch a` (simple, json, fields), `--prefix`, `--prefix --prev-kv`
   (simple, json), the range `watch a c`, every key (`--prefix ""`), `--hex`,
   an exec watcher (`-- sh -c 'echo $ETCD_WATCH_REVISION ...'`: the response
   header's revision per event), and `watch -i` with `watch a --prev-kv` and
   `watch c --prev-kv` on stdin, then `progress` (one "progress notify: REV"
   line per watch).  Writes: puts, deletes, a txn with three events at one
   revision, a prefix delete with four.
2. history: `--rev` from revision 1, 2, 3 and 5 (simple, json, fields, exec;
   etcd sends the history in one response stamped with the current revision),
   and a `--rev` in the future that only the second of two later writes
   reaches.
3. compacted (after `etcdctl compaction 6`): `--rev` 2 and 3 (simple, json)
   print the compaction error and exit; an empty range `watch b a` prints
   "mvcc: watcher range is empty" and exits; `--rev 7` still gets history;
   `watch -i` with a compacted and a valid `--rev`.
"""

import base64
import os
import time

import harness
from harness import Failures

SETTLE = 1.0            # after every watcher is connected, before the first write
PHASE_TIMEOUT = 10.0    # for every watcher of a phase to print its last write, or exit

EXEC = ["--", "sh", "-c",
        'echo "$ETCD_WATCH_REVISION $ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_KEY $ETCD_WATCH_VALUE"']


def txn_stdin(compares, success, failure):
    return "".join(line + "\n" for block in (compares, success, failure)
                   for line in list(block) + [""])


def printed(value):
    """A predicate: the watcher printed a PUT of `value`, in any output format."""
    forms = ["\n%s\n" % value, base64.b64encode(value.encode()).decode(),
             '"Value" : "%s"' % value, "".join("\\x%02x" % b for b in value.encode()),
             '"%s"' % value]
    return lambda out, err: any(f in out for f in forms)


class Watch:
    """One `etcdctl watch` process.  done(stdout, stderr) says it has printed
    everything the phase expects; exits: the server cancels it, so it must
    exit by itself; stdin: lines written at start; then: (line, done) pairs
    sent one after the other once done() holds."""

    def __init__(self, name, args, done=None, exits=False, stdin=None, then=()):
        self.name, self.args, self.done, self.exits = name, args, done, exits
        self.stdin, self.then = stdin, list(then)
        self.proc = None

    def start(self, server, work_dir):
        self.out_path = os.path.join(work_dir, "%s.out" % self.name)
        self.err_path = os.path.join(work_dir, "%s.err" % self.name)
        self.proc = harness.start_process(
            [harness.ETCDCTL_BIN, "--endpoints", server.endpoint] + self.args,
            self.out_path, self.err_path, stdin_pipe=self.stdin is not None,
            env=harness.etcdctl_env())
        if self.stdin is not None:
            self.send(self.stdin)

    def send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def output(self):
        with open(self.out_path, "rb") as out, open(self.err_path, "rb") as err:
            return (out.read().decode("utf-8", "replace"),
                    err.read().decode("utf-8", "replace"))

    def finished(self):
        if self.exits:
            return self.proc.poll() is not None
        out, err = self.output()
        return self.done(out, err)


# each phase: (name, writes before the watchers start, watchers, writes after)
def phases():
    live_end = printed("END")
    return [
        ("live", [], [
            Watch("key", ["watch", "a"], live_end),
            Watch("key-json", ["watch", "a", "-w", "json"], live_end),
            Watch("key-fields", ["watch", "a", "-w", "fields"], live_end),
            Watch("prefix", ["watch", "a", "--prefix"], live_end),
            Watch("prefix-prev-kv", ["watch", "a", "--prefix", "--prev-kv"], live_end),
            Watch("prefix-prev-kv-json", ["watch", "a", "--prefix", "--prev-kv", "-w", "json"],
                  live_end),
            Watch("range", ["watch", "a", "c"], live_end),
            Watch("all-keys", ["watch", "--prefix", ""], live_end),
            Watch("hex", ["watch", "a", "--prefix", "--hex", "--prev-kv"], live_end),
            Watch("exec", ["watch", "a"] + EXEC, live_end),
            # two watches of one process print from two goroutines: they watch
            # keys that no single write touches, so the order of lines is fixed
            Watch("interactive", ["watch", "-i"], live_end,
                  stdin="watch a --prev-kv\nwatch c --prev-kv\n",
                  then=[("progress\n", lambda out, err: out.count("progress notify:") >= 2)]),
        ], [
            (["put", "a", "1"], None),
            (["put", "a/x", "2"], None),
            (["put", "b", "3"], None),
            (["put", "a", "4"], None),
            (["put", "ab", "5"], None),
            (["put", "c", "6"], None),
            (["put", "b/y", "7"], None),
            (["del", "a/x"], None),
            (["txn"], txn_stdin([], ["put a 8", "put a/y 9", "del b"], [])),
            (["put", "a/x", "10"], None),
            (["del", "a", "--prefix"], None),
            (["put", "a", "END"], None),                          # revision 13
        ]),
        ("history", [], [
            Watch("history-prefix", ["watch", "a", "--prefix", "--rev", "2"], printed("F2")),
            Watch("history-all-json", ["watch", "--prefix", "", "--rev", "1", "-w", "json"],
                  printed("F2")),
            Watch("history-key-prev-kv", ["watch", "a", "--rev", "5", "--prev-kv"],
                  printed("F2")),
            Watch("history-range-fields", ["watch", "a", "c", "--rev", "3", "-w", "fields"],
                  printed("F2")),
            Watch("history-exec", ["watch", "a", "--prefix", "--rev", "2"] + EXEC,
                  printed("F2")),
            Watch("future", ["watch", "a", "--rev", "15"], printed("F2")),
        ], [
            (["put", "a", "F1"], None),                           # 14
            (["put", "a", "F2"], None),                           # 15
        ]),
        ("compacted", [(["compaction", "6"], None)], [
            Watch("compacted-key", ["watch", "a", "--rev", "2"], exits=True),
            Watch("compacted-prefix-json", ["watch", "a", "--prefix", "--rev", "3", "-w", "json"],
                  exits=True),
            Watch("empty-range", ["watch", "b", "a"], exits=True),
            Watch("after-compaction", ["watch", "a", "--prefix", "--rev", "7"], printed("G1")),
            Watch("interactive-compacted", ["watch", "-i"],
                  lambda out, err: "watch was canceled" in err and printed("G1")(out, err),
                  stdin="watch c --rev 2\nwatch a --rev 7\n"),
        ], [
            (["put", "a", "G1"], None),                           # 16
        ]),
    ]


normalise = harness.mask_etcdctl


def write(server, args, stdin):
    res = server.etcdctl(*args, stdin=stdin)
    return ("etcdctl " + " ".join(args), res.returncode, normalise(res.stdout),
            normalise(res.stderr))


def run_phase(server, name, before, watches, writes):
    """Returns ([write results], {watch name: (exit status, stdout, stderr)},
    [problems: what did not happen in time])."""
    work_dir = harness.make_temp_dir("ballast-etcdctl-watch-")
    problems = []
    results = [write(server, args, stdin) for args, stdin in before]
    for w in watches:
        w.start(server, work_dir)
    deadline = time.monotonic() + PHASE_TIMEOUT
    for w in watches:
        while not w.exits and w.proc.poll() is None and \
                not harness.tcp_connected(w.proc.pid, server.client_port):
            if time.monotonic() > deadline:
                problems.append("%s: watcher %s did not connect" % (name, w.name))
                break
            time.sleep(0.02)
    time.sleep(SETTLE)
    results += [write(server, args, stdin) for args, stdin in writes]
    deadline = time.monotonic() + PHASE_TIMEOUT
    pending = list(watches)
    while pending and time.monotonic() < deadline:
        for w in list(pending):
            if not w.finished():
                continue
            if w.then:
                line, done = w.then.pop(0)
                w.send(line)
                w.done = done
            else:
                pending.remove(w)
        time.sleep(0.05)
    for w in pending:
        problems.append("%s: watcher %s did not %s within %.0fs" % (
            name, w.name, "exit" if w.exits else "print what it should", PHASE_TIMEOUT))
    outputs = {}
    for w in watches:
        harness.stop_process(w.proc)
        if w.proc.stdin:
            w.proc.stdin.close()
        out, err = w.output()
        outputs[w.name] = (w.proc.returncode, normalise(out), normalise(err))
    return results, outputs, problems


def run_all(server):
    return [(name,) + run_phase(server, name, before, watches, writes)
            for name, before, watches, writes in phases()]


def main():
    failures = Failures()
    with harness.Server(kind="etcd", name="ref") as ref, harness.Server() as cand:
        started = time.monotonic()
        want = run_all(ref)
        harness.log("etcd: %.1fs" % (time.monotonic() - started))
        started = time.monotonic()
        got = run_all(cand)
        harness.log("candidate: %.1fs" % (time.monotonic() - started))
        for (phase, w_writes, w_out, w_problems), (_, g_writes, g_out, g_problems) in \
                zip(want, got):
            harness.check(not w_problems, "the reference etcd did not behave as this test "
                          "expects (a bug in the test): %s" % w_problems)
            for problem in g_problems:
                failures.add("candidate: " + problem)
            for w, g in zip(w_writes, g_writes):
                failures.check(w == g, "%s: %s: etcd %r, candidate %r" % (phase, w[0], w[1:],
                                                                          g[1:]))
            for name, w in w_out.items():
                g = g_out[name]
                if w == g:
                    continue
                details = []
                if w[0] != g[0]:
                    details.append("exit status: etcd %s, candidate %s" % (w[0], g[0]))
                for label, wt, gt in (("stdout", w[1], g[1]), ("stderr", w[2], g[2])):
                    if wt != gt:
                        details.append("%s differs:\n%s" % (label, harness.text_diff(wt, gt)))
                failures.add("%s: watcher %s\n%s" % (phase, name, "\n".join(details)))
        harness.check(ref.running() and cand.running(),
                      "a server exited during the run: etcd %s, candidate %s"
                      % (ref.running(), cand.running()))
    harness.log("%d etcdctl watchers compared" % sum(len(out) for _, _, out, _ in want))
    failures.raise_if_any()


if __name__ == "__main__":
    harness.run(main)
