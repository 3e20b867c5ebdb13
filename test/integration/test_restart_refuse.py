"""Ballast refuses an etcd data dir untouched; its command line behaves.

1. Real etcd runs once on a temp data dir (creating member/snap/db and
   member/wal), writes a key and stops.  Ballast started with that --data-dir
   must exit non-zero within 10 s, with a message that says why (it names the
   directory, etcd or bbolt), without ever serving, and must leave every file
   and directory as it was (names, sizes, modes, mtimes and SHA-256 of each).
   (Skipped when the candidate is etcd, which of course accepts its own data.)
2. An unknown flag: exit status 2 and a message naming the flag.
3. --version and --help: exit status 0 and some output.
"""

import hashlib
import os
import time

import harness
from harness import check, rpc_pb2

REFUSE_TIMEOUT = 10.0


def tree_listing(root):
    """{relative path: (kind, size, mode, mtime_ns, sha256)} of a whole tree."""
    listing = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = None
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            kind = "dir" if os.path.isdir(path) else "file"
            listing[os.path.relpath(path, root)] = (kind, st.st_size, st.st_mode,
                                                    st.st_mtime_ns, digest)
    st = os.stat(root)
    listing["."] = ("dir", st.st_size, st.st_mode, st.st_mtime_ns, None)
    return listing


def listing_diff(before, after):
    lines = []
    for path in sorted(set(before) | set(after)):
        if before.get(path) != after.get(path):
            lines.append("  %s: %s -> %s" % (path, before.get(path), after.get(path)))
    return "\n".join(lines)


def make_etcd_data_dir():
    etcd = harness.Server(kind="etcd")
    with etcd:
        etcd.kv().Put(rpc_pb2.PutRequest(key=b"written-by", value=b"etcd"), timeout=10)
    for part in ("member/snap/db", "member/wal"):
        check(os.path.exists(os.path.join(etcd.data_dir, part)),
              "etcd did not create %s in %s" % (part, etcd.data_dir))
    return etcd.data_dir


def check_refuses_etcd_data_dir():
    data_dir = make_etcd_data_dir()
    before = tree_listing(data_dir)
    time.sleep(0.05)           # a write now would get a different mtime
    server = harness.Server(data_dir=data_dir)
    server.start(wait=False)
    deadline = time.monotonic() + REFUSE_TIMEOUT
    served = False
    while server.running() and time.monotonic() < deadline:
        served = served or harness.port_in_use(server.client_port)
        time.sleep(0.05)
    running = server.running()
    server.stop()
    log = server.log_tail()
    after = tree_listing(data_dir)
    check(not running, "ballast still running %.0fs after it was started on an etcd data dir"
          % REFUSE_TIMEOUT)
    check(server.proc.returncode != 0, "ballast exited with status 0 on an etcd data dir")
    check(not served, "ballast listened on its client port with an etcd data dir")
    output = log.split("\n===== start", 1)[-1].split("\n", 1)[-1]
    words = [data_dir, "etcd", "bolt"]
    check(any(w.lower() in output.lower() for w in words),
          "ballast's message does not say why it refused (mentions none of %s):\n%s"
          % (words, output))
    check(before == after, "ballast changed the etcd data dir:\n%s" % listing_diff(before, after))
    harness.log("refused the etcd data dir (status %d): %s"
                % (server.proc.returncode, output.strip().splitlines()[-1][:200]))


def run_binary(*args):
    cwd = harness.make_temp_dir("ballast-cli-")
    res = harness.run_command([harness.binary_for(harness.candidate_kind())] + list(args),
                              timeout=10, cwd=cwd)
    check(os.listdir(cwd) == [], "`%s` created files in its working dir: %s"
          % (" ".join(args), os.listdir(cwd)))
    return res


def check_command_line():
    res = run_binary("--no-such-flag-xyz")
    check(res.returncode == 2, "unknown flag: exit status %d, want 2" % res.returncode)
    check("no-such-flag-xyz" in res.stdout + res.stderr,
          "unknown flag: the message does not name it:\n%s%s" % (res.stdout, res.stderr))
    for flag in ("--version", "--help"):
        res = run_binary(flag)
        check(res.returncode == 0, "%s: exit status %d, want 0\n%s%s"
              % (flag, res.returncode, res.stdout, res.stderr))
        check((res.stdout + res.stderr).strip(), "%s printed nothing" % flag)


def main():
    check_command_line()
    if harness.candidate_kind() == "ballast":
        check_refuses_etcd_data_dir()
    else:
        harness.log("SKIP the etcd-data-dir part: the candidate is etcd, which accepts it")
        make_etcd_data_dir()      # still proves the setup works


if __name__ == "__main__":
    harness.run(main)
