"""etcdctl 3.4's lease, lock and elect commands behave the same against the
candidate as against etcd.

Part 1 (one command at a time, etcd first, then the candidate): `lease grant`
(TTLs below the minimum, 0, the maximum and above it, bad arguments), `put
--lease` (and unknown or malformed lease IDs, moving a key to another lease,
`--ignore-lease`, a put without a lease detaching the key), `get -w json`
showing each key's lease, `lease timetolive` with and without `--keys` in
simple, json and fields output (and for unknown leases), `lease list` (etcd
lists leases soonest expiry first), `lease keep-alive --once`, `lease revoke`
(the keys go with it; a second revoke fails) and the usage errors of `lock`
and `elect`.  Exit code, stdout and stderr must be equal after masking:
header ids and etcdctl's warning-line timestamps, client UUIDs and endpoints
(as in test_etcdctl_compare.py), and lease IDs, which servers choose: each
server's ID from grant number n is written <Ln> wherever it appears (hex,
zero-padded hex or decimal), and a command's `@Ln` argument is that server's
own ID.  In `lease timetolive` output the remaining TTL may differ by 1 s;
the list of attached keys is sorted (etcd prints it in Go map order).

Part 2 (long-running etcdctl processes, both servers at the same time, each
stopped by its PID): `lease keep-alive` in simple and json output for 3.5 s
then SIGTERM (same lines with IDs masked, same number of keep-alives within
one, and the lease then has nearly its full TTL); `lease keep-alive` on a
lease that is revoked meanwhile ends by itself with "expired or revoked.".

Part 3 (both servers at the same time): `etcdctl lock` and `etcdctl elect`
with competing clients.  A second `lock` waits while the first holds the lock
(its own key is there, it prints nothing) and gets it within 5 s once the
first releases it (SIGINT: the first unlocks) or once the first is killed
with SIGKILL and its session lease is revoked with `etcdctl lease revoke`; the
same for `elect` (a second and third candidate, SIGINT = resign) with an
`elect -l` observer that must print every leader in turn; `lock NAME
printenv ETCD_LOCK_KEY ETCD_LOCK_REV` runs the command under the lock.  The
session leases that lock and elect create are masked <Sn> in order of
appearance; outputs, exit codes, and the keys left under each prefix must be
the same on both servers.
"""

import json
import os
import re
import signal
import threading
import time

import harness
from harness import Failures, rpc_pb2

# --------------------------------------------------------------------------
# Lease IDs: symbolic names per server
# --------------------------------------------------------------------------


class LeaseIds:
    """One server's lease IDs by symbolic name (L1.. from grants, S1.. from
    lock/elect sessions), and masking of those IDs in etcdctl output."""

    def __init__(self):
        self.ids = {}            # name -> int
        self.sessions = 0

    def add(self, name, lease_id):
        harness.check(name not in self.ids, "lease name %s given twice" % name)
        self.ids[name] = lease_id

    def add_session(self, lease_id):
        """A lease seen in a lock/elect key; named S1, S2.. when new."""
        if lease_id in self.ids.values():
            return
        self.sessions += 1
        self.ids["S%d" % self.sessions] = lease_id

    def learn_sessions(self, text, prefixes):
        for prefix in prefixes:
            for match in re.finditer(r"(?<![\w/])%s/([0-9a-f]+)\b" % re.escape(prefix), text):
                self.add_session(int(match.group(1), 16))

    def hex(self, name):
        harness.check(name in self.ids, "unknown lease %s (known: %s)" % (name, sorted(self.ids)))
        return "%016x" % self.ids[name]

    def args(self, args):
        return [re.sub(r"@([LS]\d+)", lambda m: self.hex(m.group(1)), a) for a in args]

    def mask(self, text):
        for name, lease_id in self.ids.items():
            text = re.sub(r"\b0*%x\b" % lease_id, "<%s>" % name, text)
            text = re.sub(r"\b%d\b" % lease_id, "<%s>" % name, text)
        return text



# the remaining TTL in `lease timetolive` output: simple, json, fields
REMAINING = [re.compile(r"(remaining\()(-?\d+)(s\))"),
             re.compile(r'("ttl":)(-?\d+)()'),
             re.compile(r'("TTL" : )(-?\d+)()')]


def sort_attached_keys(text):
    """etcd prints a lease's keys in Go map order: sort them."""
    def simple(match):
        return "attached keys([%s])" % " ".join(sorted(match.group(1).split()))
    text = re.sub(r"attached keys\(\[([^\]]*)\]\)", simple, text)

    def js(match):
        return '"keys":%s' % json.dumps(sorted(json.loads(match.group(1))),
                                        separators=(",", ":"))
    text = re.sub(r'"keys":(\[[^\]]*\])', js, text)
    lines, out, keys = text.split("\n"), [], []
    for line in lines + [None]:                 # fields: consecutive "Key" lines
        if line is not None and line.startswith('"Key" : '):
            keys.append(line)
            continue
        out.extend(sorted(keys))
        keys = []
        if line is not None:
            out.append(line)
    return "\n".join(out)


def normalise(text, ids):
    return sort_attached_keys(ids.mask(harness.mask_etcdctl(text)))


# clientv3 logs a retry warning when a call of its own is cut short by the
# client's context (etcdctl interrupted by SIGINT in the middle of a call):
# whether one is in flight at that moment is timing, not a server answer
OWN_CANCELLATION = re.compile(r".*retrying of unary invoker failed.*"
                              r"code = Canceled desc = context canceled.*\n?")


def drop_own_cancellations(text):
    return OWN_CANCELLATION.sub("", text)


def remaining_ttls(text):
    return [int(m.group(2)) for p in REMAINING for m in p.finditer(text)]


def mask_remaining(text):
    for pattern in REMAINING:
        text = pattern.sub(lambda m: m.group(1) + "<remaining>" + m.group(3), text)
    return text


# --------------------------------------------------------------------------
# Part 1: one command at a time
# --------------------------------------------------------------------------

def step(*args, grant=None, stdin=None, ttl=False):
    """args of etcdctl; grant: name of the lease this command grants; ttl:
    the output holds a remaining TTL (±1 s)."""
    return {"args": list(args), "grant": grant, "stdin": stdin, "ttl": ttl}


STEPS = [
    step("lease", "list"),
    step("lease", "grant", "600", grant="L1"),
    step("lease", "grant", "300", "-w", "json", grant="L2"),
    step("lease", "grant", "900", grant="L3"),
    step("lease", "grant", "1", grant="L4"),                  # raised to the minimum TTL
    step("lease", "revoke", "@L4"),
    step("lease", "grant", "0", "-w", "json", grant="L5"),
    step("lease", "revoke", "@L5", "-w", "json"),
    step("lease", "grant", "9000000000", grant="L6"),         # etcd's maximum TTL
    step("lease", "timetolive", "@L6", ttl=True),
    step("lease", "revoke", "@L6"),
    step("lease", "grant", "9000000001"),                     # too large
    step("lease", "grant", "x"),
    step("lease", "grant"),
    step("lease", "grant", "-5"),
    step("lease", "grant", "10", "20"),
    step("put", "a", "1", "--lease", "@L1"),
    step("put", "a/x", "2", "--lease=@L1"),
    step("put", "b", "3", "--lease", "@L2"),
    step("put", "b/x", "4", "--lease", "@L2", "--prev-kv", "-w", "json"),
    step("put", "c", "5"),
    step("put", "d", "6", "--lease", "1234"),                 # no such lease
    step("put", "d", "6", "--lease", "zz"),                   # not hex
    step("put", "d", "6", "--lease", "0"),                    # no lease
    step("get", "a", "-w", "json"),
    step("get", "", "--from-key", "-w", "json"),
    step("get", "a", "--prefix", "-w", "fields"),
    step("lease", "timetolive", "@L1", ttl=True),
    step("lease", "timetolive", "@L1", "--keys", ttl=True),
    step("lease", "timetolive", "@L1", "--keys", "-w", "json", ttl=True),
    step("lease", "timetolive", "@L2", "--keys", "-w", "fields", ttl=True),
    step("lease", "timetolive", "@L3", "--keys", ttl=True),
    step("lease", "timetolive", "1234"),
    step("lease", "timetolive", "1234", "--keys", "-w", "json"),
    step("lease", "timetolive", "zz"),
    step("lease", "timetolive"),
    step("lease", "list"),                                    # L2, L1, L3: by expiry
    step("lease", "list", "-w", "json"),
    step("lease", "list", "-w", "fields"),
    step("lease", "keep-alive", "--once", "@L1"),
    step("lease", "keep-alive", "--once", "@L2", "-w", "json"),
    step("lease", "keep-alive", "--once", "1234"),
    step("lease", "keep-alive", "1234"),                      # not found: ends at once
    step("lease", "keep-alive"),
    # moving keys between leases
    step("put", "a", "7"),                                    # no --lease: detached
    step("put", "b", "8", "--lease", "@L1"),                  # from L2 to L1
    step("put", "b/x", "9", "--ignore-lease"),                # keeps L2
    step("put", "c", "--ignore-value", "--lease", "@L3"),
    step("put", "nokey", "--ignore-lease"),                   # key not found
    step("get", "", "--from-key", "-w", "json"),
    step("lease", "timetolive", "@L1", "--keys", ttl=True),
    step("lease", "timetolive", "@L2", "--keys", ttl=True),
    step("lease", "timetolive", "@L3", "--keys", "-w", "json", ttl=True),
    step("txn", stdin='value("a") = "7"\n\nput t1 x --lease=@L3\nget t1\n\nput t2 y\n\n'),
    step("lease", "timetolive", "@L3", "--keys", ttl=True),
    # revoke: the keys go with the lease
    step("lease", "revoke", "@L1"),
    step("get", "", "--from-key", "-w", "json"),
    step("lease", "revoke", "@L1"),                           # not found
    step("lease", "revoke", "@L1", "-w", "json"),
    step("lease", "revoke", "zz"),
    step("lease", "revoke"),
    step("lease", "timetolive", "@L1", "--keys"),             # already expired
    step("lease", "keep-alive", "--once", "@L1"),
    step("put", "e", "1", "--lease", "@L1"),                  # revoked lease
    step("lease", "list"),
    step("lease", "revoke", "@L3", "-w", "json"),
    step("get", "", "--from-key", "-w", "fields"),
    step("lease", "list", "-w", "json"),
    # lock / elect usage errors
    step("lock"),
    step("elect"),
    step("elect", "ele"),
    step("elect", "-l"),
]


def run_step(server, ids, st):
    args = ids.args(st["args"])
    stdin = st["stdin"]
    if stdin is not None:
        stdin = re.sub(r"@([LS]\d+)", lambda m: ids.hex(m.group(1)), stdin)
    res = server.etcdctl(*args, stdin=stdin)
    if st["grant"] and res.returncode == 0:
        match = (re.search(r"lease ([0-9a-f]{16}) granted", res.stdout)
                 or re.search(r'"ID":(\d+)', res.stdout))
        harness.check(match, "%s: no lease ID in the output of %s: %r"
                      % (server, args, res.stdout))
        text = match.group(1)
        ids.add(st["grant"], int(text, 16) if len(text) == 16 and "ID" not in match.group(0)
                else int(text))
    return res.returncode, normalise(res.stdout, ids), normalise(res.stderr, ids)


def describe(st):
    text = "etcdctl " + " ".join(repr(a) if a == "" or " " in a else a for a in st["args"])
    if st["stdin"] is not None:
        text += " <<< %r" % st["stdin"]
    return text


def compare_outputs(failures, what, want, got, ttl):
    """want/got: (exit code, stdout, stderr), normalised."""
    if ttl:
        w_ttls = remaining_ttls(want[1])
        g_ttls = remaining_ttls(got[1])
        if len(w_ttls) != len(g_ttls) or any(abs(w - g) > 1 for w, g in zip(w_ttls, g_ttls)):
            failures.add("%s: remaining TTL differs by more than 1 s: etcd %s, candidate %s"
                         % (what, w_ttls, g_ttls))
        want = (want[0], mask_remaining(want[1]), want[2])
        got = (got[0], mask_remaining(got[1]), got[2])
    if want == got:
        return
    details = []
    if want[0] != got[0]:
        details.append("exit code: etcd %s, candidate %s" % (want[0], got[0]))
    for label, w, g in (("stdout", want[1], got[1]), ("stderr", want[2], got[2])):
        if w != g:
            details.append("%s differs:\n%s" % (label, harness.text_diff(w, g)))
    failures.add(what + "\n" + "\n".join(details))


def part1(failures, servers):
    for number, st in enumerate(STEPS, 1):
        want, got = [run_step(srv, ids, st) for srv, ids in servers]
        compare_outputs(failures, "step %d: %s" % (number, describe(st)), want, got, st["ttl"])
    harness.log("part 1: %d etcdctl commands compared" % len(STEPS))


# --------------------------------------------------------------------------
# Long-running etcdctl processes
# --------------------------------------------------------------------------

class Etcdctl:
    """A long-running etcdctl (keep-alive, lock, elect) on one server."""

    def __init__(self, server, name, *args):
        self.name = name
        self.out = os.path.join(server.work_dir, "etcdctl-%s.out" % name)
        self.err = os.path.join(server.work_dir, "etcdctl-%s.err" % name)
        self.proc = harness.start_process(
            [harness.ETCDCTL_BIN, "--endpoints", server.endpoint] + list(args),
            self.out, self.err, env=harness.etcdctl_env())

    def stdout(self):
        with open(self.out, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr(self):
        with open(self.err, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_output(self, lines, timeout):
        """Waits until stdout has `lines` non-empty lines; True if it does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len([l for l in self.stdout().splitlines() if l.strip()]) >= lines:
                return True
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        return len([l for l in self.stdout().splitlines() if l.strip()]) >= lines

    def send(self, sig):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except Exception:
            return "still running after %.0fs" % timeout

    def stop(self, sig=signal.SIGINT, timeout=5):
        self.send(sig)
        code = self.wait_exit(timeout)
        if self.proc.poll() is None:
            harness.stop_process(self.proc)
        return code


def keys_under(server, prefix):
    key = prefix.encode()
    resp = server.kv().Range(rpc_pb2.RangeRequest(key=key, range_end=harness.prefix_end(key),
                                                  keys_only=True), timeout=10)
    return [kv.key.decode() for kv in resp.kvs]


def wait_keys(server, prefix, count, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(keys_under(server, prefix)) >= count:
            return True
        time.sleep(0.02)
    return False


class Record:
    """What one server's scenario produced, compared between the servers."""

    def __init__(self, server, ids):
        self.server, self.ids = server, ids
        self.items = []          # (label, value)
        self.problems = []       # absolute failures on this server

    def add(self, label, value):
        self.items.append((label, value))

    def problem(self, text):
        self.problems.append("%s: %s" % (self.server.kind, text))

    def output(self, label, ctl, prefixes=()):
        text = ctl.stdout()
        self.ids.learn_sessions(text, prefixes)
        self.add(label + " stdout", normalise(text, self.ids))
        self.add(label + " stderr", normalise(drop_own_cancellations(ctl.stderr()), self.ids))


def keepalive_scenario(server, ids, rec):
    def grant(name, ttl):
        res = server.etcdctl("lease", "grant", str(ttl))
        match = re.search(r"lease ([0-9a-f]{16}) granted", res.stdout)
        harness.check(match, "%s: lease grant: %r %r" % (server, res.stdout, res.stderr))
        ids.add(name, int(match.group(1), 16))

    grant("K1", 6)
    grant("K2", 6)
    grant("K3", 6)
    plain = Etcdctl(server, "keepalive", "lease", "keep-alive", ids.hex("K1"))
    as_json = Etcdctl(server, "keepalive-json", "lease", "keep-alive", "-w", "json", ids.hex("K2"))
    time.sleep(3.5)
    for label, ctl in (("keep-alive", plain), ("keep-alive -w json", as_json)):
        rec.add(label + " exit after SIGTERM", ctl.stop(signal.SIGTERM))
        lines = [l for l in normalise(ctl.stdout(), ids).splitlines() if l]
        rec.add(label + " distinct lines", sorted(set(lines)))
        rec.add(label + " line count (±1)", len(lines))
        if len(lines) < 2:
            rec.problem("%s printed %d lines in 3.5 s (TTL 6 s: one at once, one after 2 s)"
                        % (label, len(lines)))
        rec.add(label + " stderr", normalise(ctl.stderr(), ids))
    res = server.etcdctl("lease", "timetolive", ids.hex("K1"))
    rec.add("timetolive after keep-alive (±1)", normalise(res.stdout, ids))
    # a lease revoked while etcdctl keeps it alive: etcdctl notices and ends
    revoked = Etcdctl(server, "keepalive-revoked", "lease", "keep-alive", ids.hex("K3"))
    if not revoked.wait_output(1, 5):
        rec.problem("keep-alive of K3 printed nothing within 5 s")
    res = server.etcdctl("lease", "revoke", ids.hex("K3"))
    rec.add("revoke K3", (res.returncode, normalise(res.stdout, ids)))
    code = revoked.wait_exit(8)
    rec.add("keep-alive of a revoked lease: exit", code)
    rec.add("keep-alive of a revoked lease: stdout", normalise(revoked.stdout(), ids))
    if revoked.proc.poll() is None:
        revoked.stop(signal.SIGTERM)


WAIT = 5.0          # how long a waiter may take once the lock/leadership is free
HOLD = 1.0          # how long a waiter must keep waiting while it is not free


def lock_scenario(server, ids, rec):
    # 1: the holder releases (SIGINT: etcdctl unlocks)
    first = Etcdctl(server, "lock-a", "lock", "mylock")
    if not first.wait_output(1, 10):
        rec.problem("the first `lock mylock` did not get the free lock within 10 s")
    second = Etcdctl(server, "lock-b", "lock", "mylock")
    if not wait_keys(server, "mylock/", 2):
        rec.problem("the second `lock mylock` did not create its key within 10 s")
    time.sleep(HOLD)
    if second.stdout().strip():
        rec.problem("the second `lock mylock` got the lock while the first held it: %r"
                    % second.stdout())
    rec.add("keys under mylock/ while both wait (count)", len(keys_under(server, "mylock/")))
    released = time.monotonic()
    rec.add("first lock: exit after SIGINT", first.stop(signal.SIGINT))
    if not second.wait_output(1, WAIT):
        rec.problem("the second `lock mylock` did not get the lock within %.0f s of the "
                    "first's release" % WAIT)
    else:
        harness.log("%s: lock handed over %.2fs after SIGINT" % (server.kind,
                                                                 time.monotonic() - released))
    rec.output("first lock", first, ["mylock"])
    rec.output("second lock", second, ["mylock"])
    rec.add("second lock: exit after SIGINT", second.stop(signal.SIGINT))
    rec.add("keys under mylock/ after both",
            normalise(" ".join(keys_under(server, "mylock/")), ids))

    # 2: the holder is killed; its session lease is revoked by hand
    first = Etcdctl(server, "lock2-a", "lock", "--ttl", "60", "mylock2")
    if not first.wait_output(1, 10):
        rec.problem("`lock mylock2` did not get the free lock within 10 s")
    second = Etcdctl(server, "lock2-b", "lock", "--ttl", "60", "mylock2")
    if not wait_keys(server, "mylock2/", 2):
        rec.problem("the second `lock mylock2` did not create its key within 10 s")
    rec.output("lock2 holder", first, ["mylock2"])
    first.stop(signal.SIGKILL)
    time.sleep(HOLD)
    if second.stdout().strip():
        rec.problem("the second `lock mylock2` got the lock while the killed holder's "
                    "session lease was alive: %r" % second.stdout())
    holder = re.search(r"mylock2/([0-9a-f]+)", first.stdout())
    if holder:
        res = server.etcdctl("lease", "revoke", "%016x" % int(holder.group(1), 16))
        rec.add("revoke the killed holder's lease", (res.returncode, normalise(res.stdout, ids)))
        revoked = time.monotonic()
        if not second.wait_output(1, WAIT):
            rec.problem("the second `lock mylock2` did not get the lock within %.0f s of the "
                        "revoke of the holder's lease" % WAIT)
        else:
            harness.log("%s: lock handed over %.2fs after the revoke"
                        % (server.kind, time.monotonic() - revoked))
    else:
        rec.problem("no lock key in the output of `lock mylock2`: %r" % first.stdout())
    rec.output("lock2 waiter", second, ["mylock2"])
    rec.add("lock2 waiter: exit after SIGINT", second.stop(signal.SIGINT))

    # 3: a command run under the lock
    res = server.etcdctl("lock", "mylock3", "printenv", "ETCD_LOCK_KEY", "ETCD_LOCK_REV")
    ids.learn_sessions(res.stdout, ["mylock3"])
    rec.add("lock with a command", (res.returncode, normalise(res.stdout, ids),
                                     normalise(res.stderr, ids)))
    rec.add("keys under mylock", normalise(" ".join(keys_under(server, "mylock")), ids))


def elect_scenario(server, ids, rec):
    first = Etcdctl(server, "elect-1", "elect", "ele", "p1")
    if not first.wait_output(2, 10):
        rec.problem("`elect ele p1` was not elected within 10 s")
    observer = Etcdctl(server, "elect-observer", "elect", "-l", "ele")
    if not observer.wait_output(2, 10):
        rec.problem("`elect -l ele` printed no leader within 10 s")
    second = Etcdctl(server, "elect-2", "elect", "ele", "p2")
    if not wait_keys(server, "ele/", 2):
        rec.problem("`elect ele p2` did not create its key within 10 s")
    time.sleep(HOLD)
    if second.stdout().strip():
        rec.problem("`elect ele p2` was elected while p1 led: %r" % second.stdout())
    resigned = time.monotonic()
    rec.add("p1: exit after SIGINT (resign)", first.stop(signal.SIGINT))
    if not second.wait_output(2, WAIT):
        rec.problem("p2 was not elected within %.0f s of p1's resignation" % WAIT)
    else:
        harness.log("%s: p2 elected %.2fs after p1 resigned"
                    % (server.kind, time.monotonic() - resigned))
    rec.output("p1", first, ["ele"])
    rec.output("p2", second, ["ele"])
    third = Etcdctl(server, "elect-3", "elect", "ele", "p3")
    if not wait_keys(server, "ele/", 2):
        rec.problem("`elect ele p3` did not create its key within 10 s")
    second.stop(signal.SIGKILL)
    time.sleep(HOLD)
    if third.stdout().strip():
        rec.problem("p3 was elected while killed p2's session lease was alive: %r"
                    % third.stdout())
    leader = re.search(r"ele/([0-9a-f]+)", second.stdout())
    if leader:
        res = server.etcdctl("lease", "revoke", "%016x" % int(leader.group(1), 16))
        rec.add("revoke p2's lease", (res.returncode, normalise(res.stdout, ids)))
        revoked = time.monotonic()
        if not third.wait_output(2, WAIT):
            rec.problem("p3 was not elected within %.0f s of the revoke of p2's lease" % WAIT)
        else:
            harness.log("%s: p3 elected %.2fs after the revoke"
                        % (server.kind, time.monotonic() - revoked))
    if not observer.wait_output(6, WAIT):
        rec.problem("`elect -l` did not print three leaders: %r" % observer.stdout())
    rec.output("p3", third, ["ele"])
    rec.add("p3: exit after SIGINT (resign)", third.stop(signal.SIGINT))
    rec.add("observer: exit after SIGINT", observer.stop(signal.SIGINT))
    rec.output("observer", observer, ["ele"])
    rec.add("keys under ele/", normalise(" ".join(keys_under(server, "ele/")), ids))


def run_concurrently(scenario, servers):
    """Runs scenario(server, ids, record) on every server at the same time;
    returns the records."""
    records = [Record(srv, ids) for srv, ids in servers]
    errors = []

    def body(rec):
        try:
            scenario(rec.server, rec.ids, rec)
        except Exception as exc:       # reported by the main thread
            errors.append("%s: %s: %s" % (rec.server.kind, type(exc).__name__, exc))

    threads = [threading.Thread(target=body, args=(rec,)) for rec in records]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        harness.check(not t.is_alive(), "%s did not finish within 120 s" % scenario.__name__)
    harness.check(not errors, "; ".join(errors))
    return records


def compare_records(failures, title, records):
    want, got = records
    for problem in want.problems:
        failures.add("%s on the reference: %s" % (title, problem))
    for problem in got.problems:
        failures.add("%s: %s" % (title, problem))
    for (label, w), (_, g) in zip(want.items, got.items):
        if "(±1)" in label:
            if isinstance(w, int):
                same = isinstance(g, int) and abs(w - g) <= 1
            else:
                same = len(remaining_ttls(w)) == len(remaining_ttls(g)) and all(
                    abs(a - b) <= 1 for a, b in zip(remaining_ttls(w), remaining_ttls(g))) \
                    and mask_remaining(w) == mask_remaining(g)
        else:
            same = w == g
        if not same:
            if isinstance(w, str) and isinstance(g, str):
                failures.add("%s: %s differs:\n%s" % (title, label, harness.text_diff(w, g)))
            else:
                failures.add("%s: %s: etcd %r, candidate %r" % (title, label, w, g))
    failures.check(len(want.items) == len(got.items), "%s: %d results from etcd, %d from the "
                   "candidate" % (title, len(want.items), len(got.items)))


def main():
    failures = Failures()
    with harness.Server(kind="etcd", name="ref") as ref, harness.Server() as cand:
        servers = [(ref, LeaseIds()), (cand, LeaseIds())]
        part1(failures, servers)
        for title, scenario in (("keep-alive", keepalive_scenario),
                                ("lock", lock_scenario),
                                ("elect", elect_scenario)):
            started = time.monotonic()
            compare_records(failures, title, run_concurrently(scenario, servers))
            harness.log("%s compared (%.1fs)" % (title, time.monotonic() - started))
        harness.check(ref.running() and cand.running(),
                      "a server exited during the run: etcd %s, candidate %s\n%s"
                      % (ref.running(), cand.running(), cand.log_tail()))
    failures.raise_if_any()


if __name__ == "__main__":
    harness.run(main)
