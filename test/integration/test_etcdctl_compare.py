"""etcdctl 3.4 gives the same output against the candidate as against etcd.

Both servers start empty and get the same sequence of etcdctl commands: put,
get (every selection and ordering flag), del, txn from stdin, compaction, and
the errors of each.  For every command the exit code, stdout and stderr must be
equal after masking what identifies a server or a client process: cluster_id,
member_id and raft_term in response headers, and in etcdctl's client-side
warning lines the timestamp, the client UUID and the server's address.
Revisions are compared as they are.
"""


import harness
from harness import Failures

def txn_stdin(compares, success, failure):
    """etcdctl txn's non-interactive input: three blocks ended by blank lines."""
    return "".join(line + "\n" for block in (compares, success, failure)
                   for line in list(block) + [""])


PUTS = [f"k{i:03d}" for i in range(129)]

# put/get/del/txn/compaction, in order; each step is (args, stdin or None)
STEPS = [
    # put, with --prev-kv and --ignore-value
    (["put", "a", "1"], None),
    (["put", "a", "2", "--prev-kv"], None),
    (["put", "a", "--ignore-value"], None),
    (["put", "a", "--ignore-value", "--prev-kv"], None),
    (["put", "a/x", "10"], None),
    (["put", "a/y", "11"], None),
    (["put", "b", "20"], None),
    (["put", "b/x", "21"], None),
    (["put", "c", "30"], None),
    (["put", "a/x", "12", "--prev-kv"], None),
    (["put", "b", "22", "-w", "simple"], None),
    (["put", "nosuchkey", "--ignore-value"], None),             # key not found
    (["put", "", "v"], None),                                    # key not provided
    (["put", "", "--ignore-value"], None),
    # get: selection, limits, history, ordering, projections
    (["get", "a"], None),
    (["get", "a", "-w", "simple"], None),
    (["get", "a", "--prefix"], None),
    (["get", "a/", "--prefix", "--limit", "1"], None),
    (["get", "b", "--from-key"], None),
    (["get", "", "--from-key", "--limit", "3"], None),
    (["get", "a", "b"], None),                                   # [a, b)
    (["get", "b", "a"], None),                                   # empty range
    (["get", "a", "--rev", "2"], None),
    (["get", "a", "--prefix", "--rev", "6"], None),
    (["get", "a", "--prefix", "--order", "DESCEND"], None),
    (["get", "", "--from-key", "--order", "ASCEND", "--sort-by", "KEY"], None),
    (["get", "", "--from-key", "--order", "DESCEND", "--sort-by", "KEY"], None),
    (["get", "", "--from-key", "--sort-by", "CREATE", "--order", "DESCEND"], None),
    (["get", "", "--from-key", "--sort-by", "MODIFY"], None),
    (["get", "", "--from-key", "--sort-by", "MODIFY", "--order", "DESCEND"], None),
    (["get", "", "--from-key", "--sort-by", "VALUE", "--order", "DESCEND"], None),
    (["get", "", "--from-key", "--sort-by", "VERSION", "--order", "DESCEND"], None),
    (["get", "a", "--prefix", "--sort-by", "VERSION", "--limit", "2"], None),
    (["get", "", "--from-key", "--keys-only"], None),
    (["get", "a", "--prefix", "--keys-only", "--limit", "2"], None),
    (["get", "", "--from-key", "--count-only"], None),   # not a 3.4 flag: same error
    (["get", "a", "--prefix", "--print-value-only", "-w", "simple"], None),
    (["get", "a", "--print-value-only", "-w", "simple"], None),
    (["get", "a", "--prefix", "--keys-only", "-w", "simple"], None),
    (["get", "nosuchkey"], None),
    (["get", ""], None),                                         # key not provided
    (["get", "a", "--rev", "1000"], None),                       # future revision
    # del
    (["del", "a/y", "--prev-kv"], None),
    (["del", "nosuchkey"], None),
    (["del", "b", "--prefix", "--prev-kv"], None),
    (["del", ""], None),                                         # key not provided
    (["put", "b", "23"], None),
    (["put", "b/y", "24"], None),
    # txn from stdin (non-interactive): success, failure, errors
    (["txn"], txn_stdin(['value("a") = "2"'], ["put b 25", "get a"], ["put c 31"])),
    (["txn"], txn_stdin(['value("a") = "9"'], ["put b 26"],
                        ["put c 32", "del a/x --prev-kv", "get b --prefix"])),
    (["txn"], txn_stdin(['version("b") > "1"', 'create("c") < "100"'],
                        ["put txn/1 x"], ["put txn/2 y"])),
    (["txn"], txn_stdin(['mod("c") = "0"'], ["get c"], ["put txn/3 z"])),
    (["txn"], txn_stdin([], ["put t/%s v" % k for k in PUTS[:128]], [])),   # 128 ops: ok
    (["txn"], txn_stdin([], ["put t/%s v" % k for k in PUTS], [])),         # 129 ops
    (["txn"], txn_stdin([], [], ["put t/%s v" % k for k in PUTS])),         # 129 failure ops
    (["txn"], txn_stdin([], ["put dup 1", "put dup 2"], [])),               # duplicate key
    (["txn", "-w", "simple"], txn_stdin(['value("b") = "25"'], ["get b"], ["get c"])),
    (["del", "t/", "--prefix"], None),
    # compaction and its errors
    (["get", "a", "--rev", "3"], None),
    (["compaction", "5"], None),
    (["get", "a", "--rev", "3"], None),                          # compacted
    (["get", "a", "--rev", "5"], None),
    (["get", "a", "--prefix", "--rev", "6"], None),
    (["compaction", "5"], None),                                 # already compacted
    (["compaction", "3"], None),
    (["compaction", "1000"], None),                              # future revision
    (["compaction", "9", "--physical"], None),
    (["get", "", "--from-key", "--rev", "9", "--keys-only"], None),
    (["get", "", "--from-key", "--rev", "8"], None),
    (["put", "a", "after-compaction", "--prev-kv"], None),
    (["get", "", "--from-key"], None),
    (["del", "", "--prefix", "--prev-kv"], None),                # every key
    (["get", "", "--from-key", "--rev", "10"], None),
    (["get", "", "--from-key"], None),
]

normalise = harness.mask_etcdctl


def run_step(server, args, stdin):
    res = server.etcdctl(*(["-w", "json"] + args), stdin=stdin)
    return res.returncode, normalise(res.stdout), normalise(res.stderr)


def describe(args, stdin):
    text = "etcdctl " + " ".join(repr(a) if a == "" or " " in a else a for a in args)
    if stdin is not None:
        lines = stdin.count("\n")
        text += " <<< %s" % (repr(stdin) if lines < 8 else "(%d stdin lines)" % lines)
    return text


def main():
    failures = Failures()
    with harness.Server(kind="etcd", name="ref") as ref, harness.Server() as cand:
        for number, (args, stdin) in enumerate(STEPS, 1):
            want = run_step(ref, args, stdin)
            got = run_step(cand, args, stdin)
            if want == got:
                continue
            what = "step %d: %s" % (number, describe(args, stdin))
            details = []
            if want[0] != got[0]:
                details.append("exit code: etcd %d, candidate %d" % (want[0], got[0]))
            for label, w, g in (("stdout", want[1], got[1]), ("stderr", want[2], got[2])):
                if w != g:
                    details.append("%s differs:\n%s" % (label, harness.text_diff(w, g)))
            failures.add(what + "\n" + "\n".join(details))
        harness.check(ref.running() and cand.running(),
                      "a server exited during the run: etcd %s, candidate %s\n%s"
                      % (ref.running(), cand.running(), cand.log_tail()))
    harness.log("%d etcdctl commands compared" % len(STEPS))
    failures.raise_if_any()


if __name__ == "__main__":
    harness.run(main)
