"""A Kubernetes-style client on the official Go clientv3 passes against etcd and the candidate.

test/clients/k8s/ is a Go program that uses go.etcd.io/etcd/clientv3 (etcd 3.4)
the way the apiserver's etcd3 storage layer does (k8s.io/apiserver/pkg/storage/
etcd3: store.go, watcher.go, compact.go, the lease manager), with keys under
/registry/ and opaque binary values.  Its steps, in groups:

  kv       create-if-absent Txn (If mod_revision==0, Then OpPut, Else OpGet);
           GuaranteedUpdate (optimistic Txn on mod_revision, retry from the Else
           OpGet) against a concurrent writer and under real concurrency;
           delete with a mod_revision precondition (prev_kv); paginated list
           (WithRange+WithLimit, continue at last key + "\\x00" WithRev) with
           More/Count checked while other writes happen; WithCountOnly
  lease    Grant + Put WithLease (event TTL), TimeToLive with attached keys,
           Revoke, expiry of a 2 s lease, Put with an unknown lease
  watch    WithPrefix+WithRev+WithPrevKV+WithProgressNotify on a WithRequireLeader
           context (history and live events, exact prev_kv, nothing outside the
           range), RequestProgress, cancel by context
  compact  compact.go's compactor Txn on compact_rev_key + Compact; ErrCompacted
           from Get, a paginated list, Compact and Watch at old revisions

It is built offline from Debian packages (golang-go, golang-etcd-server-dev)
into $BALLAST_BUILD_DIR/k8s-clientv3/ and run against a fresh etcd 3.4.23 and a
fresh candidate.  The test fails if any step fails on either; the program's
output (one PASS/FAIL line per step) is printed.

The bound on the 2 s lease's expiry (8 s) binds the candidate only.  The
reference runs with -reference: a later expiry there is reported in its PASS
line and logged, not counted (harness.late_expiry).
"""

import os
import shutil
import subprocess
import time

import harness
from harness import check, log

GO_SOURCE = os.path.join(harness.SOURCE_DIR, "test", "clients", "k8s")
GOPATH = "/usr/share/gocode"
CLIENTV3_DIR = os.path.join(GOPATH, "src", "go.etcd.io", "etcd", "clientv3")
DEBIAN_PACKAGES = "golang-go golang-etcd-server-dev"
BUILD_TIMEOUT = 300     # a cold build takes ~35 s on 2 cores; a cached one ~1 s
RUN_TIMEOUT = 90        # the program bounds each step (10 s) and all (60 s); it takes ~4 s


def output_dir():
    path = os.path.join(harness.BUILD_DIR, "k8s-clientv3")
    try:
        os.makedirs(path, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    return harness.make_temp_dir("ballast-k8s-clientv3-")


def build():
    """Builds the Go program offline (GOPATH mode on Debian's Go sources);
    returns the binary's path."""
    go = shutil.which("go") or "/usr/bin/go"
    check(os.access(go, os.X_OK) and os.path.isdir(CLIENTV3_DIR),
          "the Go toolchain or etcd's clientv3 sources are missing (%s, %s): "
          "install the Debian packages %s" % (go, CLIENTV3_DIR, DEBIAN_PACKAGES))
    out = output_dir()
    binary = os.path.join(out, "k8s-clientv3")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", out),
        "GO111MODULE": "off",        # GOPATH mode: no module download, ever
        "GOPATH": GOPATH,
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOENV": "off",              # ignore a user's `go env -w` settings
        "GOCACHE": os.path.join(out, "gocache"),
        "GOTMPDIR": "",
    }
    started = time.monotonic()
    try:
        proc = subprocess.run([go, "build", "-o", binary, "."], cwd=GO_SOURCE, env=env,
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise harness.TestFailure("go build of %s did not finish within %ds"
                                  % (GO_SOURCE, BUILD_TIMEOUT))
    check(proc.returncode == 0,
          "go build of %s failed (exit %d); the Debian packages %s are needed:\n%s%s"
          % (GO_SOURCE, proc.returncode, DEBIAN_PACKAGES, proc.stdout, proc.stderr))
    log("built %s in %.1fs" % (binary, time.monotonic() - started))
    return binary


def run_against(binary, kind, reference):
    """Runs the program against a fresh server of `kind` (`reference`: the
    reference etcd, see the module's docstring); returns ok."""
    with harness.Server(kind=kind) as srv:
        log("running k8s-clientv3 against %s" % srv)
        args = [binary, "-endpoints", srv.endpoint] + (["-reference"] if reference else [])
        try:
            proc = subprocess.run(args, capture_output=True,
                                  text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
            output = proc.stdout.rstrip()
            if proc.stderr.strip():
                output += "\nstderr:\n" + proc.stderr.rstrip()
            ok = proc.returncode == 0
            if not ok:
                output += "\n(exit status %d)" % proc.returncode
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode("utf-8", "replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            ok, output = False, out + "\n(killed: not finished within %ds)" % RUN_TIMEOUT
        # indented, so that no line of it reads as this test's own verdict
        print("\n".join("  [%s] %s" % (kind, line) for line in output.rstrip().splitlines()),
              flush=True)
        if reference and "(LATE:" in output:
            # the program has passed the step; only the log line is left to give
            harness.late_expiry(True, "the 2 s lease expired late (see its PASS line)", None)
    return ok


def main():
    binary = build()
    kinds = ["etcd"]
    if harness.candidate_kind() != "etcd":
        kinds.append(harness.candidate_kind())
    failed = [kind for kind in kinds
              if not run_against(binary, kind, reference=(kind == "etcd" and len(kinds) > 1))]
    check(not failed, "the Kubernetes-style clientv3 program failed against %s "
                      "(its FAIL lines are above)" % " and ".join(failed))


if __name__ == "__main__":
    harness.run(main)
