"""Ballast runs with glibc's heaps on transparent huge pages (Ballast only).

On a kernel whose transparent huge pages are "madvise", the server starts
itself again with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (server/heap_pages.c):
the process we started (same PID) must have the tunable in its environment,
huge pages in its memory (the memtable reserve is mapped at start-up, so
AnonHugePages of /proc/PID/smaps_rollup is far above zero), and serve
requests.  A user's own GLIBC_TUNABLES is kept with the tunable put before
it, and a user's own glibc.malloc.hugetlb (here =0) wins: no restart, no huge
pages.

Skipped where the kernel's mode is not "madvise" (nothing is restarted there),
and when the candidate is etcd.  The huge-page counts are not checked in a
sanitizer build (its allocator is not glibc's malloc).
"""

import os

import harness
from harness import check

THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
TUNABLE = "glibc.malloc.hugetlb"


def sanitized_build():
    cache = os.path.join(os.environ.get("BALLAST_BUILD_DIR", ""), "CMakeCache.txt")
    try:
        with open(cache) as f:
            text = f.read()
    except OSError:
        return False
    return any("%s:BOOL=ON" % opt in text for opt in ("BALLAST_SANITIZE", "BALLAST_TSAN"))


def process_tunables(pid):
    """GLIBC_TUNABLES as the process got it.  glibc's loader cuts it in place
    at each ':' while it reads it, so in /proc/PID/environ the tunables after
    the first follow as items of their own (names with dots, unlike
    variables): they are joined again here."""
    with open("/proc/%d/environ" % pid, "rb") as f:
        items = f.read().decode().split("\0")
    for i, item in enumerate(items):
        if item.startswith("GLIBC_TUNABLES="):
            parts = [item[len("GLIBC_TUNABLES="):]]
            for more in items[i + 1:]:
                if not more.startswith("glibc."):
                    break
                parts.append(more)
            return ":".join(parts)
    return None


def run_with_tunables(value):
    """Starts a server with GLIBC_TUNABLES set to `value` (None: unset), checks
    that it serves a put and a get, and returns (its GLIBC_TUNABLES, its
    AnonHugePages in KiB)."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if value is not None:
        env["GLIBC_TUNABLES"] = value
    srv = harness.Server(env=env).start()
    try:
        pid = srv.proc.pid
        put = harness.etcdctl(srv.endpoint, "put", "heap", "pages")
        check(put.returncode == 0, "put failed: %s" % put.stderr)
        get = harness.etcdctl(srv.endpoint, "get", "heap", "--print-value-only")
        check(get.stdout.strip() == "pages", "get returned %r" % get.stdout)
        tunables = process_tunables(pid)
        huge = harness.read_proc_kib(pid, "smaps_rollup", "AnonHugePages")
        harness.log("GLIBC_TUNABLES=%r: the server has %r, AnonHugePages %d kB"
                    % (value, tunables, huge))
        check(srv.proc.poll() is None, "%s exited" % srv)
    finally:
        srv.stop()
    srv.check_log_clean()
    return tunables, huge


def main():
    harness.skip_unless_ballast("etcd does not start itself again")
    try:
        with open(THP_MODE_FILE) as f:
            mode = f.read().strip()
    except OSError:
        mode = "(no %s)" % THP_MODE_FILE
    if "[madvise]" not in mode:
        raise harness.TestSkipped("transparent huge pages are %r here, not madvise" % mode)
    if os.environ.get("LD_PRELOAD"):
        raise harness.TestSkipped("LD_PRELOAD is set: the server does not restart under it")
    sanitized = sanitized_build()

    # the default: restarted with the tunable, the memtable reserve on huge pages
    tunables, huge = run_with_tunables(None)
    check(tunables == TUNABLE + "=1",
          "the server's GLIBC_TUNABLES is %r, expected %s=1" % (tunables, TUNABLE))
    if not sanitized:
        check(huge >= 16 * 1024, "AnonHugePages %d kB with the tunable: expected the "
              "memtable reserve (128 MiB) mostly on huge pages" % huge)

    # the user's other tunables stay, the server's goes first
    tunables, _ = run_with_tunables("glibc.malloc.arena_max=4")
    check(tunables == "%s=1:glibc.malloc.arena_max=4" % TUNABLE,
          "the server's GLIBC_TUNABLES is %r" % tunables)

    # the user's own setting wins
    tunables, huge = run_with_tunables(TUNABLE + "=0")
    check(tunables == TUNABLE + "=0", "the server's GLIBC_TUNABLES is %r" % tunables)
    if not sanitized:
        check(huge == 0, "AnonHugePages %d kB with %s=0: expected none" % (huge, TUNABLE))


if __name__ == "__main__":
    harness.run(main)
