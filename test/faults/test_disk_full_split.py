"""A member whose store or raft log sits on its own small file system that
fills up (Ballast only: the kv/ and raft/ folders are Ballast's layout).

A member is started once (it creates data/ballast/kv and .../raft), stopped,
and one of the two folders is moved onto a 64 MiB tmpfs mounted in its
place.  8 clients Put 32 KiB values until the member stops; it must stop
with a status > 0 (no crash, no abort) and a "no space left" line:
  store: the data dir's own file system has room, so the free-space check
      does not see it coming; RocksDB's failed write must stop apply with
      RocksDB's reason in the FATAL line (before the fixes: an assertion in
      RocksDB's info LOG aborted the process, or the line gave no reason);
  raft:  the free-space check watches the raft log's file system too and
      stops the member while c-raft can still create its segments (c-raft
      0.15 crashes when it cannot).
The tmpfs is then grown to 512 MiB (remount) and the member started: every
acknowledged Put is there with its value and mod_revision and new Puts
work.  Needs root (mount); skips otherwise.
"""

import os
import shutil
import subprocess
import time

import disk_fault
from disk_fault import MIB, check, harness, rpc_pb2

SMALL_MIB = 64
LARGE_MIB = 512
FILL_TIMEOUT = 180.0


def move_onto_tmpfs(folder):
    """Mounts a SMALL_MIB tmpfs on `folder`, keeping its files."""
    saved = folder + ".saved"
    os.rename(folder, saved)
    os.mkdir(folder, 0o700)
    tmpfs = disk_fault.Tmpfs(SMALL_MIB)
    # the mount goes on `folder` itself: bind the fresh tmpfs there
    res = subprocess.run(["mount", "--move", tmpfs.path, folder], capture_output=True, text=True)
    if res.returncode != 0:
        tmpfs.close()
        raise harness.TestFailure("mount --move failed: %s" % res.stderr.strip())
    os.rmdir(tmpfs.path)
    tmpfs.path = folder
    for name in os.listdir(saved):
        shutil.move(os.path.join(saved, name), os.path.join(folder, name))
    os.rmdir(saved)
    return tmpfs


def one_case(part):
    srv = harness.Server().start()
    srv.kv().Put(rpc_pb2.PutRequest(key=b"before", value=b"1"), timeout=10)
    srv.stop()
    folder = os.path.join(srv.data_dir, "ballast", part)
    tmpfs = move_onto_tmpfs(folder)
    try:
        srv.start()
        writers = disk_fault.Writers([srv], b"%s/" % part.encode()).start()
        started = time.monotonic()
        while srv.proc.poll() is None:
            check(time.monotonic() - started < FILL_TIMEOUT, "after %.0fs of writes the member "
                  "with its %s on a %d MiB tmpfs has not stopped (%d MiB free)"
                  % (FILL_TIMEOUT, part, SMALL_MIB, tmpfs.free_bytes() // MIB))
            time.sleep(0.05)
        stopped = time.monotonic() - started
        writers.stop()
        status = srv.proc.returncode
        line = disk_fault.NO_SPACE_LINE.search(srv.log_tail(20000))
        check(status > 0, "with its %s full the member died from signal %d (a crash, not a "
              "clean stop); end of its log:\n%s" % (part, -status, srv.log_tail()))
        check(line, "with its %s full the member exited with status %d and no line saying "
              "why:\n%s" % (part, status, srv.log_tail()))
        harness.log("%s on a %d MiB tmpfs: stopped after %.1fs, %d Puts acknowledged, status "
                    "%d: %s" % (part, SMALL_MIB, stopped, len(writers.acked), status,
                                line.group(0).strip()))
        check(writers.acked, "no Put was acknowledged before the %s filled" % part)
        res = subprocess.run(["mount", "-o", "remount,size=%dm" % LARGE_MIB, folder],
                             capture_output=True, text=True)
        check(res.returncode == 0, "remount failed: %s" % res.stderr)
        grown = time.monotonic()
        srv.start()
        disk_fault.check_acked(srv, writers)
        top = max(rev for _, rev, _ in writers.acked)
        resp = srv.kv().Put(rpc_pb2.PutRequest(key=b"after", value=b"v"), timeout=10)
        check(resp.header.revision > top, "a new Put got revision %d, not above %d"
              % (resp.header.revision, top))
        harness.log("%s grown to %d MiB: serving %.2fs later, all %d acknowledged Puts there"
                    % (part, LARGE_MIB, time.monotonic() - grown, len(writers.acked)))
        srv.stop()
    finally:
        if srv.running():
            srv.stop()
        tmpfs.keep_copy(folder, os.path.join(srv.work_dir, "%s-from-tmpfs" % part))
        tmpfs.close()


def main():
    harness.skip_unless_ballast("kv/ and raft/ are Ballast's data dir layout")
    disk_fault.require_root()
    one_case("kv")
    one_case("raft")


if __name__ == "__main__":
    harness.run(main)
