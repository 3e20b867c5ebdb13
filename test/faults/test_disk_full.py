"""A single member whose disk fills up: it stops cleanly or raises NOSPACE,
never corrupts, and serves everything again once space returns.

The member's data dir is on a 320 MiB tmpfs where a filler file leaves
160 MiB free.  8 clients Put 32 KiB values (each checkable from its key)
until the member stops (or raises the NOSPACE alarm); then:
  1. it stopped with a status > 0 (not a signal: no crash) and its log
     names the cause ("no space left"), or it raised NOSPACE;
  2. the filler is rewritten to leave 12 MiB free and the member is
     started again: Ballast refuses to start with the same line (etcd
     too, or it stays up); c-raft 0.15 alone would crash there (SIGSEGV
     when it cannot create a log segment);
  3. the fillers are removed and the member is started: every acknowledged
     Put is there with its value and mod_revision, nothing else is (a
     failed Put is there with its own value or not at all), HashKV at the
     current revision is the same after a further restart, and new Puts
     work (after `alarm disarm` if NOSPACE was raised).
Needs root (mount); skips otherwise.
"""

import os
import time

import disk_fault
from disk_fault import MIB, check, harness, rpc_pb2

TMPFS_MIB = 320
FREE_AT_START = 160 * MIB
FREE_WHEN_FULL = 12 * MIB
FILL_TIMEOUT = 180.0       # seconds of writing before the disk must be "full"
STOP_TIMEOUT = 30.0        # a member that refuses to start must exit within this


def wait_full(srv, writers, tmpfs):
    """Writes until the member exits or NOSPACE is raised; returns
    ("stopped", status) or ("alarm", alarms)."""
    deadline = time.monotonic() + FILL_TIMEOUT
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            return "stopped", srv.proc.returncode
        with writers.lock:
            failing = len(writers.errors) > 20
        if failing:
            try:
                active = disk_fault.alarms(srv)
            except Exception:      # stopping meanwhile: the next turn sees it
                active = []
            if any(kind == rpc_pb2.AlarmType.Value("NOSPACE") for _, kind in active):
                return "alarm", active
        time.sleep(0.05)
    raise harness.TestFailure("after %.0fs of writes the member neither stopped nor raised "
                              "NOSPACE (%d Puts acknowledged, %d MiB free)"
                              % (FILL_TIMEOUT, writers.acked_count(), tmpfs.free_bytes() // MIB))


def main():
    disk_fault.require_root()
    tmpfs = disk_fault.Tmpfs(TMPFS_MIB)
    srv = None
    try:
        data_dir = os.path.join(tmpfs.path, "data")
        os.mkdir(data_dir, 0o700)
        tmpfs.fill_to(FREE_AT_START)
        srv = harness.Server(data_dir=data_dir).start()
        harness.log("%s on a %d MiB tmpfs with %d MiB free" % (srv, TMPFS_MIB,
                                                             tmpfs.free_bytes() // MIB))
        writers = disk_fault.Writers([srv], b"full/").start()
        started = time.monotonic()
        outcome, detail = wait_full(srv, writers, tmpfs)
        fill_seconds = time.monotonic() - started
        writers.stop()
        harness.log("disk full after %.1fs: %s %s, %d Puts acknowledged, %d failed, %d MiB free"
                    % (fill_seconds, outcome, detail, len(writers.acked), len(writers.uncertain),
                       tmpfs.free_bytes() // MIB))
        check(writers.acked, "no Put was acknowledged before the disk filled")
        if outcome == "stopped":
            line = disk_fault.NO_SPACE_LINE.search(srv.log_tail(20000))
            check(detail > 0, "the member died from signal %d when its disk filled (a crash, "
                  "not a clean stop); end of its log:\n%s" % (-detail, srv.log_tail()))
            check(line, "the member exited with status %d but its log does not say the disk "
                  "is full:\n%s" % (detail, srv.log_tail()))
            harness.log("it stopped with status %d: %s" % (detail, line.group(0).strip()))
        else:
            srv.stop()

        # still short of space: start again with exactly FREE_WHEN_FULL free
        tmpfs.remove_fillers()
        free_mib = tmpfs.fill_to(FREE_WHEN_FULL) // MIB
        offset = disk_fault.log_size(srv)
        srv.start(wait=False)
        status = disk_fault.wait_exit(srv, STOP_TIMEOUT)
        if status is None:
            check(srv.kind != "ballast", "Ballast started with %d MiB free (its reserve is "
                  "32 MiB)" % free_mib)
            harness.log("%s runs, started with %d MiB free; stopping it" % (srv, free_mib))
            srv.stop()
        else:
            text = disk_fault.log_since(srv, offset)
            line = disk_fault.NO_SPACE_LINE.search(text)
            check(status > 0 and line, "started with %d MiB free, the member exited with "
                  "status %s and no line about space:\n%s"
                  % (free_mib, status, text[-3000:]))
            harness.log("with %d MiB free it does not start (status %d): %s"
                        % (free_mib, status, line.group(0).strip()))

        # space returns
        tmpfs.remove_fillers()
        freed = time.monotonic()
        srv.start()
        recovery = time.monotonic() - freed
        stored = disk_fault.check_acked(srv, writers)
        harness.log("space freed (%d MiB free): serving again after %.2fs; all %d acknowledged "
                    "Puts there (%d keys stored)" % (tmpfs.free_bytes() // MIB, recovery,
                                                    len(writers.acked), stored))
        if outcome == "alarm":
            res = srv.etcdctl("alarm", "disarm")
            check(res.returncode == 0, "alarm disarm failed: %s%s" % (res.stdout, res.stderr))
        check(disk_fault.alarms(srv) == [], "alarms still active: %s" % disk_fault.alarms(srv))
        revision = srv.kv().Range(rpc_pb2.RangeRequest(key=b"full/"), timeout=10).header.revision
        before = srv.maintenance().HashKV(rpc_pb2.HashKVRequest(revision=revision), timeout=30)
        srv.stop()
        srv.start()
        after = srv.maintenance().HashKV(rpc_pb2.HashKVRequest(revision=revision), timeout=30)
        check(before.hash == after.hash, "HashKV at revision %d changed across a restart: %d, "
              "then %d" % (revision, before.hash, after.hash))
        top = max(rev for _, rev, _ in writers.acked)
        for i in range(10):
            resp = srv.kv().Put(rpc_pb2.PutRequest(key=b"after/%d" % i, value=b"v"), timeout=10)
            check(resp.header.revision > top, "a new Put got revision %d, not above the last "
                  "acknowledged %d" % (resp.header.revision, top))
            got = srv.kv().Range(rpc_pb2.RangeRequest(key=b"after/%d" % i), timeout=10)
            check(len(got.kvs) == 1 and got.kvs[0].mod_revision == resp.header.revision,
                  "a new Put is not readable: %s" % got)
        harness.log("HashKV %d at revision %d unchanged across a restart; new Puts work"
                    % (after.hash, revision))
    finally:
        if srv is not None and srv.running():
            srv.stop()
        if srv is not None:
            tmpfs.keep_copy(srv.data_dir, os.path.join(srv.work_dir, "data-from-tmpfs"))
        tmpfs.close()


if __name__ == "__main__":
    harness.run(main)
