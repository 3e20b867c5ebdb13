"""Shared pieces of the disk fault tests: a small tmpfs for a member's data
directory, writers that fill it, checks of what was acknowledged, and a
reader of c-raft's segment files.

A tmpfs is mounted with `mount -t tmpfs` (root only: tests skip without
it) on a fresh directory and is unmounted on every exit path: by the test's
own `finally`, and by an atexit handler (lazy unmount) if that did not run.
Members whose data dir lives there must be stopped first (the test's
`finally` does that before closing the mount).
"""

import atexit
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "integration"))
import harness  # noqa: E402
from harness import check, rpc_pb2, rpc_pb2_grpc  # noqa: E402

MIB = 1 << 20
# What a member's log says when it stops for lack of space: Ballast's
# "no space left for the data directory", etcd's "no space left on device".
NO_SPACE_LINE = re.compile(r"^.*no space left.*$", re.IGNORECASE | re.MULTILINE)


def require_root():
    if os.geteuid() != 0:
        raise harness.TestSkipped("mounting a tmpfs needs root (run as root to test a full disk)")


class Tmpfs:
    """A tmpfs of `size_mib` MiB on a new directory, with filler files that
    take its free space away and give it back."""

    def __init__(self, size_mib):
        self.path = tempfile.mkdtemp(prefix="ballast-tmpfs-")
        self.mounted = False
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm,mode=0755" % size_mib,
                              "tmpfs", self.path], capture_output=True, text=True)
        if res.returncode != 0:
            os.rmdir(self.path)
            raise harness.TestFailure("mount -t tmpfs failed: %s" % res.stderr.strip())
        self.mounted = True
        self.fillers = []
        atexit.register(self.close)

    def free_bytes(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill_to(self, leave_bytes):
        """Writes a filler file until at most `leave_bytes` stay free."""
        name = os.path.join(self.path, "filler-%d" % len(self.fillers))
        self.fillers.append(name)
        chunk = b"\xa5" * MIB
        with open(name, "wb") as f:
            for _ in range(1 << 16):
                left = self.free_bytes() - leave_bytes
                if left <= 0:
                    break
                f.write(chunk[:min(len(chunk), left)])
                f.flush()
        return self.free_bytes()

    def remove_fillers(self):
        for name in self.fillers:
            os.unlink(name)
        self.fillers = []
        return self.free_bytes()

    def keep_copy(self, src, dst):
        """With BALLAST_TEST_KEEP, a copy of `src` (in the mount) to `dst`."""
        if os.environ.get("BALLAST_TEST_KEEP") and os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True)
            print("kept a copy of %s in %s" % (src, dst), file=sys.stderr)

    def close(self):
        if self.mounted:
            for _ in range(20):
                if subprocess.run(["umount", self.path], capture_output=True).returncode == 0:
                    break
                time.sleep(0.25)
            else:
                subprocess.run(["umount", "-l", self.path], capture_output=True)
            self.mounted = False
        if os.path.isdir(self.path):
            shutil.rmtree(self.path, ignore_errors=True)


def value_for(key, size):
    """The value written to `key`: checkable without keeping it."""
    seed = hashlib.sha256(key).digest()
    return (seed * (size // len(seed) + 1))[:size]


class Writers:
    """`clients` threads Put PREFIX<client>/<n> = value_for(key, value_size)
    through `servers` (thread i uses servers[i % len]) until stopped.  Every
    acknowledged Put is kept as (key, revision, time); every failed one as
    uncertain (it may or may not have been applied)."""

    def __init__(self, servers, prefix, clients=8, value_size=32 * 1024, put_timeout=10.0):
        self.servers = list(servers)
        self.prefix = prefix
        self.value_size = value_size
        self.put_timeout = put_timeout
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.acked = []          # (key, revision, time.monotonic())
        self.uncertain = set()
        self.errors = []         # (time.monotonic(), code, details)
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True)
                        for c in range(clients)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(self.put_timeout + 10)
        check(not any(t.is_alive() for t in self.threads), "a writer thread did not stop")

    def acked_count(self):
        with self.lock:
            return len(self.acked)

    def _run(self, client):
        server = self.servers[client % len(self.servers)]
        channel = server.new_channel()
        kv = rpc_pb2_grpc.KVStub(channel)
        try:
            for n in range(10 ** 7):
                if self.stop_event.is_set():
                    return
                key = b"%s%02d/%07d" % (self.prefix, client, n)
                try:
                    resp = kv.Put(rpc_pb2.PutRequest(key=key, value=value_for(key, self.value_size)),
                                  timeout=self.put_timeout)
                except grpc.RpcError as exc:
                    with self.lock:
                        self.uncertain.add(key)
                        self.errors.append((time.monotonic(), exc.code(), exc.details()))
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        # the member went away: a new channel once it is back
                        channel.close()
                        channel = server.new_channel()
                        kv = rpc_pb2_grpc.KVStub(channel)
                    self.stop_event.wait(0.1)
                    continue
                with self.lock:
                    self.acked.append((key, resp.header.revision, time.monotonic()))
        finally:
            channel.close()


def check_acked(server, writers, serializable=False):
    """Every acknowledged Put of `writers` is on `server` with its value and
    mod_revision = the acknowledged revision; acknowledged revisions are
    distinct; every other key under the prefix is an uncertain Put with its
    own value.  Returns the number of keys stored."""
    revisions = [rev for _, rev, _ in writers.acked]
    check(len(set(revisions)) == len(revisions), "%d acknowledged Puts share a revision"
          % (len(revisions) - len(set(revisions))))
    stored, _ = harness.range_all(server.kv(), writers.prefix, page=200,
                                  serializable=serializable)
    by_key = {kv.key: kv for kv in stored}
    missing, wrong = [], []
    for key, rev, _ in writers.acked:
        kv = by_key.pop(key, None)
        if kv is None:
            missing.append(key)
        elif kv.mod_revision != rev or kv.value != value_for(key, writers.value_size):
            wrong.append("%s: acknowledged at revision %d, found mod_revision %d, value %s"
                         % (key.decode(), rev, kv.mod_revision,
                            "intact" if kv.value == value_for(key, writers.value_size)
                            else "different"))
    foreign = [k for k, kv in by_key.items()
               if k not in writers.uncertain or kv.value != value_for(k, writers.value_size)]
    check(not missing, "%s: %d of %d acknowledged Puts missing, e.g. %s"
          % (server, len(missing), len(writers.acked), [k.decode() for k in missing[:5]]))
    check(not wrong, "%s: %d acknowledged Puts differ:\n  %s"
          % (server, len(wrong), "\n  ".join(wrong[:5])))
    check(not foreign, "%s: %d keys no one wrote (or with a wrong value), e.g. %s"
          % (server, len(foreign), foreign[:5]))
    return len(stored)


def wait_exit(server, timeout):
    """Waits until `server`'s process has exited; returns its status or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return server.proc.returncode
        time.sleep(0.05)
    return None


def log_since(server, offset):
    with open(server.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def log_size(server):
    try:
        return os.path.getsize(server.log_path)
    except OSError:
        return 0


def alarms(server):
    """The active alarms (AlarmResponse.alarms) as [(member_id, alarm type)]."""
    resp = server.maintenance().Alarm(rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET),
                                      timeout=5)
    return [(a.memberID, a.alarm) for a in resp.alarms]


# --------------------------------------------------------------------------
# c-raft (0.15) segment files
#
# A segment file starts with an 8-byte format version (1), then batches:
#   u32 CRC-32 of the batch header, u32 CRC-32 of the batch data,
#   header: u64 entry count n, then per entry u64 term, u8 type, 3 unused
#           bytes, u32 data length;
#   data:   each entry's bytes (Ballast pads every entry to 8 bytes).
# All little-endian.  An open segment ("open-N") is preallocated (8 MiB of
# zeros) and written batch by batch; c-raft acknowledges an append once its
# write is durable.  Closed segments ("FIRST-LAST") are open ones cut to
# their last batch and renamed.
# --------------------------------------------------------------------------

SEGMENT_HEADER = 8


def segment_batches(data):
    """[(start, end, entries)] of the batches of a segment's bytes, up to
    the first place that is not a whole batch (zeros, a cut or garbage)."""
    out, off = [], SEGMENT_HEADER
    while off + 16 <= len(data):
        n = struct.unpack_from("<Q", data, off + 8)[0]
        if n == 0 or n > 1 << 16:
            break
        header_end = off + 16 + 16 * n
        if header_end > len(data):
            break
        length = sum(struct.unpack_from("<I", data, off + 16 + 16 * i + 12)[0] for i in range(n))
        if header_end + length > len(data):
            break
        out.append((off, header_end + length, n))
        off = header_end + length
    return out


def segment_files(raft_dir):
    """(closed, open) segment file names of a raft dir, each in log order."""
    names = os.listdir(raft_dir)
    closed = sorted((n for n in names if re.fullmatch(r"\d{16}-\d{16}", n)),
                    key=lambda n: int(n.split("-")[0]))
    opened = sorted((n for n in names if re.fullmatch(r"open-\d+", n)),
                    key=lambda n: int(n.split("-")[1]))
    return closed, opened


def last_written_segment(raft_dir):
    """The path of the last segment that holds batches (the newest open
    segment with data, else the last closed one) and its batches."""
    closed, opened = segment_files(raft_dir)
    for name in reversed(opened):
        path = os.path.join(raft_dir, name)
        with open(path, "rb") as f:
            batches = segment_batches(f.read())
        if batches:
            return path, batches
    check(closed, "no raft segment with entries in %s (%s)" % (raft_dir, os.listdir(raft_dir)))
    path = os.path.join(raft_dir, closed[-1])
    with open(path, "rb") as f:
        return path, segment_batches(f.read())
