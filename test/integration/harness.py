"""Shared harness of Ballast's integration tests.

Every test_*.py in this folder imports this module.  It starts servers (Ballast
or etcd 3.4.23, with etcd's command line), runs etcdctl, talks gRPC through the
stubs that Debian's python3-etcd3 ships, reads Ballast's /metrics, and cleans up:
every process a test starts is stopped by its PID and every temporary directory
is removed, on success, on failure and on SIGTERM/SIGINT.

The server under test (the "candidate") is Ballast (env BALLAST_BIN) unless
BALLAST_TEST_SERVER=etcd, which swaps in /usr/bin/etcd with the same flags.  That
mode exists to prove a test against the reference before Ballast can pass it.

Usage in a test:

    import harness
    from harness import check

    def main():
        with harness.Server() as srv:          # the candidate
            srv.kv().Put(harness.rpc_pb2.PutRequest(key=b"a", value=b"1"))
            check(..., "what went wrong")

    harness.run(main)

A server must be started and stopped from the same thread (the main thread or
one worker): it is started under PR_SET_PDEATHSIG so that it dies with the
thread that started it if the test itself is killed (ctest timeout).
"""

import atexit
import contextlib
import difflib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

import grpc
from etcd3.etcdrpc import rpc_pb2, rpc_pb2_grpc

ETCD_BIN = "/usr/bin/etcd"
ETCDCTL_BIN = "/usr/bin/etcdctl"
PYTHON = "/usr/bin/python3"
SETPRIV = "/usr/bin/setpriv"
# BALLAST_TEST_TIME_SCALE (scripts/test --tsan sets it): a server built with
# a sanitizer runs several times slower; the harness's own waits for it (to
# start, stop, elect, answer after an abuse) grow by this factor.  A test's
# assertions about etcd's timing stay as they are.
TIME_SCALE = max(1.0, float(os.environ.get("BALLAST_TEST_TIME_SCALE", "1")))
READY_TIMEOUT = 10.0 * TIME_SCALE
# how long a healthy server may take to answer a Put or a Range after an abuse
HEALTH_TIMEOUT = 5.0 * TIME_SCALE
# big range answers (the server's send limit is math.MaxInt32, like etcd's)
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
STOP_TIMEOUT = 10.0 * TIME_SCALE

SOURCE_DIR = os.environ.get(
    "BALLAST_SOURCE_DIR",
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD_DIR = os.environ.get("BALLAST_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))


class TestFailure(Exception):
    """A check failed: the message says what was expected and what happened."""


class TestSkipped(Exception):
    """The test does not apply to this candidate (only ever for etcd)."""


def check(condition, message):
    if not condition:
        raise TestFailure(message)


def log(message):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), message), flush=True)


def late_expiry(reference, text, fail):
    """An upper time bound of a lease's expiry was missed.  On the candidate
    that is a failure: fail(text).  On the reference etcd it is logged, not
    counted: etcd 3.4's lessor looks for due leases every 500 ms and, once it
    has handed a lease out for revoke, looks at it again only 3 s later; on a
    loaded 2-core CI host etcd has left a 2 s lease's key in place 8-9 s after
    its grant.  Lower bounds bind both servers."""
    if reference:
        log("reference etcd: %s; not counted (see harness.late_expiry)" % text)
    else:
        fail(text)


class Failures:
    """Collects several independent mismatches and fails once at the end."""

    def __init__(self):
        self.items = []

    def add(self, message):
        self.items.append(message)
        print("MISMATCH: " + message, flush=True)

    def check(self, condition, message):
        if not condition:
            self.add(message)
        return condition

    def raise_if_any(self):
        if self.items:
            raise TestFailure("%d mismatch(es):\n%s" % (
                len(self.items), "\n".join("  - " + m.splitlines()[0] for m in self.items)))


def text_diff(expected, actual, expected_name="etcd", actual_name="candidate"):
    return "".join(difflib.unified_diff(
        expected.splitlines(True), actual.splitlines(True),
        fromfile=expected_name, tofile=actual_name))


# --------------------------------------------------------------------------
# Clean-up of everything a test creates
# --------------------------------------------------------------------------

_lock = threading.Lock()
_processes = []          # subprocess.Popen objects this test started
_servers = []            # Server objects, newest last (their logs on failure)
_temp_dirs = []


def register_process(proc):
    with _lock:
        _processes.append(proc)
    return proc


def all_threads_stopped(pid):
    """Every thread of process `pid` is in the stopped state (T) of /proc."""
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except FileNotFoundError:
        return True  # the process is gone
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                stat = f.read()
        except FileNotFoundError:
            continue  # that thread has exited
        if stat[stat.rindex(")") + 2] not in "Tt":
            return False
    return True


def stop_process(proc, timeout=STOP_TIMEOUT, sig=signal.SIGTERM):
    """Stops one process that this test started, by its PID; returns its exit
    status.  SIGKILL follows if it has not exited within `timeout`."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
            # a SIGSTOPped process (see Member.sigstop) only acts on `sig` once continued
            os.kill(proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def make_temp_dir(prefix="ballast-it-"):
    path = tempfile.mkdtemp(prefix=prefix)
    with _lock:
        _temp_dirs.append(path)
    return path


def cleanup():
    with _lock:
        procs, dirs = list(_processes), list(_temp_dirs)
        _processes.clear()
        _temp_dirs.clear()
    for proc in procs:
        try:
            stop_process(proc, timeout=5)
        except Exception as exc:  # keep cleaning the rest
            print("cleanup: could not stop pid %d: %s" % (proc.pid, exc), file=sys.stderr)
    if os.environ.get("BALLAST_TEST_KEEP"):     # for a post-mortem: data and logs stay
        for path in dirs:
            print("kept %s" % path, file=sys.stderr)
        return
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)


atexit.register(cleanup)


def _exit_on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def print_server_logs(count=3, max_bytes=3000):
    """The end of the logs of the last `count` servers this test started."""
    with _lock:
        servers = _servers[-count:]
    for server in servers:
        print("---- end of the log of %s (%s) ----\n%s" % (server, server.log_path,
                                                         server.log_tail(max_bytes)))


def run(main):
    """Runs a test's main(): exit 0 on pass or skip, 1 on failure."""
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    name = os.path.basename(sys.argv[0])
    started = time.monotonic()
    code = 1
    try:
        main()
        print("PASS %s (%.1fs)" % (name, time.monotonic() - started))
        code = 0
    except TestSkipped as exc:
        print("SKIP %s: %s" % (name, exc))
        code = 0
    except TestFailure as exc:
        print_server_logs()
        print("FAIL %s: %s" % (name, exc))
    except Exception:
        traceback.print_exc()
        print_server_logs()
        print("FAIL %s: unexpected exception (above)" % name)
    finally:
        sys.stdout.flush()
        cleanup()
    sys.exit(code)


# --------------------------------------------------------------------------
# Ports, binaries
# --------------------------------------------------------------------------

_ports_given = set()


def free_port():
    """A port that was free on 127.0.0.1 a moment ago (never the same twice)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with _lock:
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise TestFailure("could not find a free port")


def port_in_use(port, host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def candidate_kind():
    kind = os.environ.get("BALLAST_TEST_SERVER", "ballast")
    if kind not in ("ballast", "etcd"):
        raise TestFailure("BALLAST_TEST_SERVER must be 'ballast' or 'etcd', not %r" % kind)
    return kind


def ballast_binary():
    path = os.environ.get("BALLAST_BIN") or os.path.join(BUILD_DIR, "ballast")
    if not os.access(path, os.X_OK):
        raise TestFailure("ballast binary not found or not executable: %s "
                          "(build it, or set BALLAST_BIN)" % path)
    return path


def binary_for(kind):
    return ballast_binary() if kind == "ballast" else ETCD_BIN


def skip_unless_ballast(reason):
    """Skips the test when the candidate is etcd; never skips for Ballast."""
    if candidate_kind() != "ballast":
        raise TestSkipped("candidate is %s: %s" % (candidate_kind(), reason))


def _with_pdeathsig(cmd, signal_name):
    # setpriv execs the command: the PID we get is the command's own PID
    if os.access(SETPRIV, os.X_OK):
        return [SETPRIV, "--pdeathsig", signal_name, "--"] + list(cmd)
    return list(cmd)


def spawn(cmd, log_path, cwd=None, env=None, death_signal="KILL"):
    """Starts a process with stdout+stderr going to log_path, registered for
    clean-up.  It gets `death_signal` if the thread that started it dies
    (use "TERM" for a process that must clean up its own children)."""
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(_with_pdeathsig(cmd, death_signal), stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    return register_process(proc)


def start_process(cmd, stdout_path, stderr_path, stdin_pipe=False, cwd=None, env=None,
                  death_signal="KILL"):
    """Starts a long-running process (e.g. `etcdctl watch`) with stdout and
    stderr in two files and, if stdin_pipe, a pipe on its stdin (binary);
    registered for clean-up like spawn()."""
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(_with_pdeathsig(cmd, death_signal),
                                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                                stdout=out, stderr=err, cwd=cwd, env=env)
    return register_process(proc)


def etcdctl_env():
    """The environment etcdctl runs with: ETCDCTL_API=3 and no other ETCDCTL_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL")}
    env["ETCDCTL_API"] = "3"
    return env


def tcp_connected(pid, port):
    """True when process `pid` has an established TCP connection to
    127.0.0.1:`port` (from /proc: its socket inodes and /proc/net/tcp)."""
    inodes = set()
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "01" and fields[9] in inodes and \
                    int(fields[2].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def read_proc_kib(pid, name, field):
    """The "FIELD: N kB" line of /proc/PID/NAME (status, smaps_rollup, ...), in KiB."""
    with open("/proc/%d/%s" % (pid, name)) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise TestFailure("no %s in /proc/%d/%s" % (field, pid, name))


def read_rss_kib(pid):
    """VmRSS of a process in KiB (from /proc/PID/status)."""
    return read_proc_kib(pid, "status", "VmRSS")


def run_command(cmd, timeout=30, stdin=None, env=None, cwd=None):
    """Runs a short command to completion; returns CompletedProcess (text)."""
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise TestFailure("command did not finish within %ss: %s" % (timeout, " ".join(cmd)))


def etcdctl(endpoint, *args, stdin=None, timeout=30):
    """Runs `ETCDCTL_API=3 etcdctl --endpoints ENDPOINT ARGS...`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL")}
    env["ETCDCTL_API"] = "3"
    return run_command([ETCDCTL_BIN, "--endpoints", endpoint] + list(args),
                       timeout=timeout, stdin=stdin, env=env)


# --------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------

class Server:
    """One single-member server (Ballast or etcd) on free loopback ports.

    kind: "ballast", "etcd", or None for the candidate.  data_dir: reuse a
    directory (e.g. to restart), else a new empty one.  extra_args: more flags
    (e.g. ["--batch-policy", "off"]).  host: the loopback address it listens
    on; command_prefix: what runs it (e.g. ["ip", "netns", "exec", NS], which
    execs the server: the PID stays the server's); env: the whole environment
    it starts with (None: this process's)."""

    def __init__(self, kind=None, data_dir=None, extra_args=(), name="default",
                 host="127.0.0.1", command_prefix=(), env=None):
        self.kind = kind or candidate_kind()
        self.host = host
        self.command_prefix = list(command_prefix)
        self.env = env
        self.binary = binary_for(self.kind)
        self.name = name
        self.work_dir = make_temp_dir("ballast-it-%s-" % self.kind)
        if data_dir is None:
            data_dir = os.path.join(self.work_dir, "data")
            os.mkdir(data_dir, 0o700)
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.metrics_port = free_port()
        self.log_path = os.path.join(self.work_dir, "server.log")
        self.proc = None
        self.starts = 0
        self._channel = None
        with _lock:
            _servers.append(self)

    # addresses
    @property
    def endpoint(self):
        return "%s:%d" % (self.host, self.client_port)

    @property
    def client_url(self):
        return "http://%s:%d" % (self.host, self.client_port)

    @property
    def peer_url(self):
        return "http://%s:%d" % (self.host, self.peer_port)

    @property
    def metrics_url(self):
        return "http://%s:%d" % (self.host, self.metrics_port)

    def command(self):
        return [self.binary, "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.client_url,
                "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.listen_peer_urls(),
                "--initial-advertise-peer-urls", self.peer_url,
                "--listen-metrics-urls", self.metrics_url] + self.cluster_args() + self.extra_args

    def listen_peer_urls(self):
        return self.peer_url

    def cluster_args(self):
        """The flags that say which cluster this server is in: alone here (a
        Member of a Cluster lists every member)."""
        return ["--initial-cluster", "%s=%s" % (self.name, self.peer_url)]

    # life cycle
    def start(self, wait=True):
        check(self.proc is None or self.proc.poll() is not None,
              "%s already running" % self)
        self.starts += 1
        with open(self.log_path, "ab") as logf:
            logf.write(b"\n===== start %d: %s\n" % (self.starts, " ".join(self.command()).encode()))
        self.proc = spawn(self.command_prefix + self.command(), self.log_path, env=self.env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=READY_TIMEOUT, serializable=False):
        """Waits until a gRPC Range of key "health" succeeds (a linearizable
        one unless `serializable`)."""
        deadline = time.monotonic() + timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TestFailure("%s exited with status %s while starting; end of its log:\n%s"
                                  % (self, self.proc.returncode, self.log_tail()))
            if not port_in_use(self.client_port, self.host):
                last = "client port not listening"
                time.sleep(0.05)
                continue
            try:
                with self.fresh_channel_if_unavailable():
                    self.kv().Range(rpc_pb2.RangeRequest(key=b"health",
                                                         serializable=serializable), timeout=1.0)
                if self.proc.poll() is None:
                    return
            except grpc.RpcError as exc:
                last = "%s: %s" % (exc.code(), exc.details())
                time.sleep(0.1)
        raise TestFailure("%s not ready within %.0fs (last: %s); end of its log:\n%s"
                          % (self, timeout, last, self.log_tail()))

    def stop(self, timeout=STOP_TIMEOUT):
        """Graceful stop (SIGTERM, then SIGKILL after `timeout`). A ballast
        that was running must exit 0 (an orderly shutdown) and its log must
        hold no sanitizer report."""
        self._close_channel()
        if self.proc is None:
            return None
        was_running = self.proc.poll() is None
        code = stop_process(self.proc, timeout)
        if self.kind == "ballast":
            self.check_log_clean()
            check(not was_running or code == 0,
                  "%s exited with status %s after SIGTERM (expected an orderly exit 0); log:\n%s"
                  % (self, code, self.log_tail()))
        return code

    SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                         "ThreadSanitizer", "runtime error:")

    def check_log_clean(self):
        """Fails when the server's log holds a sanitizer report."""
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return
        for marker in self.SANITIZER_MARKERS:
            check(marker not in text, "%s: sanitizer report in its log (%s):\n%s"
                  % (self, self.log_path, text[text.find(marker) - 200:][:6000]))

    def kill9(self):
        self._close_channel()
        check(self.proc is not None and self.proc.poll() is None,
              "%s is not running (exit status %s) when it should be killed; log:\n%s"
              % (self, self.proc and self.proc.returncode, self.log_tail()))
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT)
        if self.kind == "ballast":
            self.check_log_clean()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def __str__(self):
        return "%s (%s, pid %s)" % (self.kind, self.endpoint, self.proc and self.proc.pid)

    def log_tail(self, max_bytes=4000):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError as exc:
            return "(no log: %s)" % exc

    # gRPC
    def channel(self):
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.endpoint, options=CHANNEL_OPTIONS)
        return self._channel

    def new_channel(self):
        """A channel of its own (the caller closes it)."""
        return grpc.insecure_channel(self.endpoint, options=CHANNEL_OPTIONS)

    @contextlib.contextmanager
    def fresh_channel_if_unavailable(self):
        """A channel that once failed to connect (the member was restarting)
        was seen to stay in failure for 5-10 s after the member listened, in
        python3-grpcio: after UNAVAILABLE, the next call gets a new channel."""
        try:
            yield
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                self._close_channel()
            raise

    def _close_channel(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def kv(self):
        return rpc_pb2_grpc.KVStub(self.channel())

    def maintenance(self):
        return rpc_pb2_grpc.MaintenanceStub(self.channel())

    def raft_index(self):
        return self.maintenance().Status(rpc_pb2.StatusRequest(), timeout=10).raftIndex

    def etcdctl(self, *args, stdin=None, timeout=30):
        return etcdctl(self.endpoint, *args, stdin=stdin, timeout=timeout)

    def check_healthy(self, what, timeout=HEALTH_TIMEOUT):
        """After an abuse (`what`): the server still runs and, on a
        connection of its own, answers a Put and then a linearizable Range
        that sees it, each within `timeout` seconds.  Returns the Put's
        revision."""
        self._health_puts = getattr(self, "_health_puts", 0) + 1
        key = b"health/%d" % self._health_puts
        channel = self.new_channel()
        try:
            kv = rpc_pb2_grpc.KVStub(channel)
            started = time.monotonic()
            rev = kv.Put(rpc_pb2.PutRequest(key=key, value=b"ok"), timeout=timeout).header.revision
            put_seconds = time.monotonic() - started
            started = time.monotonic()
            resp = kv.Range(rpc_pb2.RangeRequest(key=key), timeout=timeout)
            range_seconds = time.monotonic() - started
        except grpc.RpcError as exc:
            raise TestFailure("%s unhealthy after %s: %s %s; end of its log:\n%s"
                              % (self, what, exc.code().name, exc.details(), self.log_tail()))
        finally:
            channel.close()
        check(self.running(), "%s exited after %s; end of its log:\n%s"
              % (self, what, self.log_tail()))
        check(len(resp.kvs) == 1 and resp.kvs[0].mod_revision == rev,
              "%s after %s: a linearizable Range of %r did not see the Put at revision %d: %s"
              % (self, what, key, rev, resp))
        if put_seconds + range_seconds > timeout / 2:
            log("%s after %s: Put %.2fs, Range %.2fs" % (self, what, put_seconds,
                                                        range_seconds))
        return rev

    # HTTP
    def http_get(self, path, timeout=5):
        with urllib.request.urlopen(self.metrics_url + path, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")

    def metrics(self):
        status, body = self.http_get("/metrics")
        check(status == 200, "GET /metrics on %s answered %s" % (self, status))
        return Metrics(body)


HEADER_ID_FIELDS = ("cluster_id", "member_id", "raft_term")


def strip_header_ids(message):
    """A copy of a protobuf message with cluster_id, member_id and raft_term
    cleared in every ResponseHeader inside it (they identify a server; the
    revision is kept)."""
    copy = type(message)()
    copy.CopyFrom(message)
    _strip_ids(copy)
    return copy


def _strip_ids(message):
    if message.DESCRIPTOR.full_name == "etcdserverpb.ResponseHeader":
        for name in HEADER_ID_FIELDS:
            message.ClearField(name)
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.label == field.LABEL_REPEATED:
            for item in value:
                _strip_ids(item)
        else:
            _strip_ids(value)


# What differs between two servers in etcdctl's output by nature: member and
# cluster IDs, terms (json and fields output), log timestamps, client ids,
# endpoints.
ETCDCTL_MASKS = [
    (re.compile(r'"(cluster_id|member_id|raft_term)":\d+'), r'"\1":<masked>'),
    (re.compile(r'"(ClusterID|MemberID|RaftTerm)" : \d+'), r'"\1" : <masked>'),
    (re.compile(r'"ts":"[^"]*"'), '"ts":<masked>'),
    (re.compile(r"client-[0-9a-f-]{36}"), "client-<masked>"),
    (re.compile(r"127\.0\.0\.1:\d+"), "<endpoint>"),
]


def mask_etcdctl(text):
    """etcdctl output with ETCDCTL_MASKS applied."""
    for pattern, replacement in ETCDCTL_MASKS:
        text = pattern.sub(replacement, text)
    return text


def prefix_end(prefix):
    """range_end that selects every key starting with `prefix` (non-empty)."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


def range_all(kv, prefix, page=1000, timeout=30, serializable=False):
    """Every KeyValue under `prefix`, read in pages of `page` keys at one
    revision; returns (list of KeyValue, header revision)."""
    end = prefix_end(prefix)
    key, revision, result = prefix, 0, []
    for _ in range(1000000):
        resp = kv.Range(rpc_pb2.RangeRequest(key=key, range_end=end, limit=page,
                                             revision=revision, serializable=serializable),
                        timeout=timeout)
        revision = revision or resp.header.revision
        result.extend(resp.kvs)
        if not resp.more or not resp.kvs:
            return result, revision
        key = resp.kvs[-1].key + b"\0"
    raise TestFailure("range_all(%r) did not end" % prefix)


class Metrics:
    """Prometheus text format, parsed: get(name, label=value...)."""

    def __init__(self, text):
        self.text = text
        self.samples = []          # (name, {label: value}, float)
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "{" in line:
                name, _, rest = line.partition("{")
                label_text, _, tail = rest.rpartition("}")
                labels = dict(_parse_label(p) for p in _split_labels(label_text))
            else:
                name, _, tail = line.partition(" ")
                labels = {}
            fields = tail.split()      # value [timestamp]
            try:
                self.samples.append((name.strip(), labels, float(fields[0])))
            except (IndexError, ValueError):
                continue

    def get(self, name, **labels):
        """The sample's value, or None if the server does not export it."""
        for sample_name, sample_labels, value in self.samples:
            if sample_name == name and all(sample_labels.get(k) == v
                                           for k, v in labels.items()):
                return value
        return None

    def require(self, name, **labels):
        value = self.get(name, **labels)
        check(value is not None, "metric %s%s not found on /metrics" % (
            name, "{%s}" % ",".join('%s="%s"' % kv for kv in labels.items()) if labels else ""))
        return value


def _split_labels(text):
    parts, current, quoted = [], "", False
    for ch in text:
        if ch == '"' and not current.endswith("\\"):
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current:
        parts.append(current)
    return parts


def _parse_label(text):
    key, _, value = text.partition("=")
    return key.strip(), value.strip().strip('"')


def artifacts_dir(name):
    """A directory that survives the test (repro files, logs of failures)."""
    path = os.path.join(BUILD_DIR, "integration-artifacts", name)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        path = tempfile.mkdtemp(prefix="ballast-%s-" % name)
    return path


# --------------------------------------------------------------------------
# Clusters of several members
# --------------------------------------------------------------------------

# etcd's flags for a quick test cluster: 100 ms heartbeats, elections after 1 s
# (also etcd's defaults, given explicitly so that both kinds agree)
CLUSTER_TIMING_ARGS = ["--heartbeat-interval", "100", "--election-timeout", "1000"]
CLUSTER_READY_TIMEOUT = 30.0 * TIME_SCALE

# fields of etcd 3.4 messages that python3-etcd3's (etcd 3.3) stubs do not know
STATUS_RAFT_APPLIED_INDEX = 7      # StatusResponse.raftAppliedIndex
STATUS_IS_LEARNER = 10             # StatusResponse.isLearner


def proto_varint_fields(message):
    """The top-level varint fields of a protobuf message, known to the stubs
    or not, as {field number: value} (the last occurrence wins)."""
    data = message.SerializeToString()
    fields, pos = {}, 0

    def varint():
        nonlocal pos
        value, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(data):
        tag = varint()
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            fields[number] = varint()
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length = varint()
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise TestFailure("cannot parse wire type %d in %s" % (wire, type(message).__name__))
    return fields


def applied_index(status):
    """StatusResponse.raftAppliedIndex (0 when the server does not send it)."""
    return proto_varint_fields(status).get(STATUS_RAFT_APPLIED_INDEX, 0)


class Member(Server):
    """One member of a Cluster: a Server whose --initial-cluster lists every
    member, with the cluster's token and timing flags.  It can also be
    SIGSTOPped (harness clean-up always continues it before stopping it)."""

    def __init__(self, cluster, name, initial_cluster_state="new", extra_args=(),
                 learner=False, spare_peer_port=False, host="127.0.0.1", command_prefix=()):
        super().__init__(kind=cluster.kind, extra_args=extra_args, name=name, host=host,
                         command_prefix=command_prefix)
        # a second peer port it also listens on, to move to (`member update`)
        self.spare_peer_port = free_port() if spare_peer_port else None
        self.cluster = cluster
        self.initial_cluster_state = initial_cluster_state
        self.initial_cluster = None      # "name=peer-url,...", set by the Cluster
        self.member_id = None            # from a response header, once known
        self.learner = learner
        self.paused = False              # SIGSTOPped

    @property
    def spare_peer_url(self):
        return "http://%s:%d" % (self.host, self.spare_peer_port)

    def listen_peer_urls(self):
        if self.spare_peer_port is None:
            return self.peer_url
        return "%s,%s" % (self.peer_url, self.spare_peer_url)

    def move_to_spare_peer_port(self):
        """From the next start on, listen (and advertise) only the spare
        peer port: after `member update` gave it as the peer URL."""
        check(self.spare_peer_port is not None, "%s has no spare peer port" % self)
        self.peer_port, self.spare_peer_port = self.spare_peer_port, None

    def cluster_args(self):
        return ["--initial-cluster", self.initial_cluster,
                "--initial-cluster-state", self.initial_cluster_state,
                "--initial-cluster-token", self.cluster.token] + CLUSTER_TIMING_ARGS

    def start(self, wait=True):
        self.paused = False
        return super().start(wait)

    def wait_ready(self, timeout=CLUSTER_READY_TIMEOUT, serializable=None):
        """A learner answers only serializable reads (etcd 3.4)."""
        super().wait_ready(timeout, self.learner if serializable is None else serializable)

    def stop(self, timeout=STOP_TIMEOUT):
        self.paused = False              # stop_process continues it
        return super().stop(timeout)

    def kill9(self):
        self.paused = False              # SIGKILL ends a stopped process too
        super().kill9()

    def sigstop(self):
        check(self.running() and not self.paused, "%s is not running, cannot SIGSTOP it" % self)
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True
        # kill() only queues the signal: wait until every thread has stopped,
        # so that nothing the test sends afterwards can still be answered
        deadline = time.monotonic() + 5
        while not all_threads_stopped(self.proc.pid):
            check(time.monotonic() < deadline, "%s: not stopped 5 s after SIGSTOP" % self)
            time.sleep(0.001)

    def sigcont(self):
        if self.running():
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def live(self):
        """Running and not SIGSTOPped."""
        return self.running() and not self.paused

    def status(self, timeout=5.0):
        """Maintenance.Status; remembers the member ID of its header."""
        with self.fresh_channel_if_unavailable():
            resp = self.maintenance().Status(rpc_pb2.StatusRequest(), timeout=timeout)
        self.member_id = resp.header.member_id
        return resp

    def get(self, key, serializable=False, timeout=10.0):
        """The KeyValue of `key` (None if absent) and the header revision."""
        with self.fresh_channel_if_unavailable():
            resp = self.kv().Range(rpc_pb2.RangeRequest(key=key, serializable=serializable),
                                   timeout=timeout)
        return (resp.kvs[0] if resp.kvs else None), resp.header.revision

    def __str__(self):
        return "%s %s (%s, pid %s%s)" % (self.kind, self.name, self.endpoint,
                                        self.proc and self.proc.pid,
                                        ", stopped" if self.paused else "")


class Cluster:
    """`size` members of the candidate kind (or `kind`) on free loopback ports,
    each with its own data dir and client, peer and metrics ports, all in one
    --initial-cluster with --initial-cluster-state new.

        with harness.Cluster(3) as cluster:      # started, a leader elected
            leader = cluster.leader()
            cluster.etcdctl("put", "a", "1")      # --endpoints = every live member

    Members are started and stopped from the thread that created the Cluster
    (see Server).  `extra_args` go to every member (e.g. ["--snapshot-count",
    "1000"]).  With `spare_peer_ports` every member also listens on a second
    peer port (Member.spare_peer_url), one `member update` can move it to.
    `placement(i)`, if given, says where member i runs: (host, command_prefix)
    as for Server (the fault tests put each member in a network namespace)."""

    def __init__(self, size=3, kind=None, extra_args=(), name_prefix="m",
                 spare_peer_ports=False, placement=None):
        self.kind = kind or candidate_kind()
        self.token = "ballast-it-%s" % os.urandom(4).hex()
        self.extra_args = list(extra_args)
        self.name_prefix = name_prefix
        self.members = [Member(self, "%s%d" % (name_prefix, i + 1), "new", extra_args,
                               spare_peer_port=spare_peer_ports,
                               **(dict(zip(("host", "command_prefix"), placement(i)))
                                  if placement else {}))
                        for i in range(size)]
        self.removed = []                # members taken out by remove_member()
        initial = self.initial_cluster_of(self.members)
        for member in self.members:
            member.initial_cluster = initial

    @staticmethod
    def initial_cluster_of(members):
        return ",".join("%s=%s" % (m.name, m.peer_url) for m in members)

    # life cycle
    def start(self, timeout=CLUSTER_READY_TIMEOUT):
        """Starts every member at once (each waits for the others), then
        waits until a leader is known and every member answers."""
        for member in self.members:
            member.start(wait=False)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=CLUSTER_READY_TIMEOUT):
        """Waits until every live member answers a Range (linearizable unless
        it is a learner) and they agree on a leader; returns the leader."""
        deadline = time.monotonic() + timeout
        for member in self.live():
            member.wait_ready(max(1.0, deadline - time.monotonic()))
        return self.leader(max(1.0, deadline - time.monotonic()))

    def stop(self):
        errors = []
        for member in self.members + self.removed:
            try:
                member.stop()
            except TestFailure as exc:
                errors.append(str(exc))
        check(not errors, "\n".join(errors))

    def __enter__(self):
        if not any(m.proc for m in self.members):
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # who is who
    def live(self):
        return [m for m in self.members if m.live()]

    def member_by_id(self, member_id):
        for member in self.members + self.removed:
            if member.member_id == member_id:
                return member
        return None

    def statuses(self, members=None, timeout=2.0):
        """{member: StatusResponse or the grpc.RpcError it gave}."""
        result = {}
        for member in members if members is not None else self.live():
            try:
                result[member] = member.status(timeout)
            except grpc.RpcError as exc:
                result[member] = exc
        return result

    def leader(self, timeout=10.0, members=None):
        """The member whose header member_id is the `leader` of Status, once
        every live member (or every one of `members`) answers Status and
        names that same, live, leader."""
        deadline = time.monotonic() + timeout
        last = "no attempt"
        while True:
            asked = members if members is not None else self.live()
            statuses = self.statuses(asked)
            errors = ["%s: %s %s" % (m.name, s.code(), s.details())
                      for m, s in statuses.items() if isinstance(s, grpc.RpcError)]
            leaders = {s.leader for s in statuses.values() if not isinstance(s, grpc.RpcError)}
            if errors:
                last = "; ".join(errors)
            elif len(leaders) != 1 or 0 in leaders:
                last = "leaders named: %s" % sorted(leaders)
            else:
                leader = self.member_by_id(leaders.pop())
                if leader is not None and leader in asked:
                    return leader
                last = "the leader named is not among %s" % [m.name for m in asked]
            if time.monotonic() > deadline:
                raise TestFailure("no leader agreed on within %.0fs (last: %s)" % (timeout, last))
            time.sleep(0.05)

    def followers(self):
        leader = self.leader()
        return [m for m in self.live() if m is not leader]

    @property
    def endpoints(self):
        """Every member's client address, comma-joined (for etcdctl)."""
        return self.endpoints_of(self.members)

    @staticmethod
    def endpoints_of(members):
        return ",".join(m.endpoint for m in members)

    def etcdctl(self, *args, members=None, stdin=None, timeout=30):
        """etcdctl with --endpoints = `members` (default: every member)."""
        return etcdctl(self.endpoints_of(members if members is not None else self.members),
                       *args, stdin=stdin, timeout=timeout)

    # comparing members
    def hashkv(self, member, revision, timeout=30.0):
        """Maintenance.HashKV of `member` at `revision`: (hash, compact_revision)."""
        resp = member.maintenance().HashKV(rpc_pb2.HashKVRequest(revision=revision),
                                           timeout=timeout)
        return resp.hash, resp.compact_revision

    def check_hashkv_equal(self, revision, members=None):
        """HashKV at `revision` is the same on every live member (or `members`)."""
        members = members if members is not None else self.live()
        hashes = {m.name: self.hashkv(m, revision) for m in members}
        check(len(set(hashes.values())) == 1,
              "HashKV at revision %d differs between members: %s" % (revision, hashes))
        return hashes

    def wait_applied_equal(self, members=None, timeout=30.0):
        """Waits until every live member (or `members`) reports the same
        raftAppliedIndex in Status, at least the leader's raftIndex seen
        before; returns that index.  Call it when no one is writing.  (etcd
        3.4 does not advance raftAppliedIndex when it applies a snapshot from
        the leader, only with the next entry it applies: after a catch-up by
        snapshot, write something first.)"""
        members = members if members is not None else self.live()
        deadline = time.monotonic() + timeout
        target = self.leader(timeout).status().raftIndex
        last = "no attempt"
        while True:
            statuses = self.statuses(members)
            applied = {m.name: (applied_index(s) if not isinstance(s, grpc.RpcError)
                                else "%s" % s.code()) for m, s in statuses.items()}
            values = set(applied.values())
            if len(values) == 1 and isinstance(min(values), int) and min(values) >= target:
                return values.pop()
            last = "applied indexes %s, leader's raftIndex %d" % (applied, target)
            if time.monotonic() > deadline:
                raise TestFailure("members did not reach the same applied index within "
                                  "%.0fs (%s)" % (timeout, last))
            time.sleep(0.1)

    # membership
    def add_member(self, name, learner=False, extra_args=None, start=True,
                   timeout=CLUSTER_READY_TIMEOUT):
        """`etcdctl member add NAME --peer-urls=... [--learner]` through the
        live members, then (if `start`) starts the new member with
        --initial-cluster-state existing and the --initial-cluster that
        etcdctl printed, and waits until it answers.  Returns the Member.
        While etcd answers "unhealthy cluster" (a voter connected for less
        than 5 s: nothing was proposed) the add is retried."""
        member = Member(self, name, "existing",
                        self.extra_args if extra_args is None else extra_args, learner)
        args = ["member", "add", name, "--peer-urls=%s" % member.peer_url]
        if learner:
            args.append("--learner")
        # etcd (--strict-reconfig-check) refuses a new member until every
        # voter has been connected for 5 s, before it proposes anything
        deadline = time.monotonic() + timeout
        while True:
            res = self.etcdctl(*args, members=self.live())
            if res.returncode == 0 or "etcdserver: unhealthy cluster" not in res.stderr or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.5)
        check(res.returncode == 0, "etcdctl %s failed (%d): %s%s"
              % (" ".join(args), res.returncode, res.stdout, res.stderr))
        for line in res.stdout.splitlines():
            if line.startswith("ETCD_INITIAL_CLUSTER="):
                member.initial_cluster = line.split("=", 1)[1].strip('"')
            if line.startswith("Member ") and " added to cluster " in line:
                member.member_id = int(line.split()[1], 16)
        check(member.initial_cluster and member.member_id,
              "etcdctl member add printed no member ID or ETCD_INITIAL_CLUSTER:\n%s" % res.stdout)
        self.members.append(member)
        if start:
            member.start(wait=False)
            member.wait_ready(timeout)
        return member

    def remove_member(self, member):
        """`etcdctl member remove ID` through the other live members, then
        stops the removed member (etcd exits by itself once removed)."""
        others = [m for m in self.live() if m is not member]
        res = self.etcdctl("member", "remove", "%x" % member.member_id, members=others)
        check(res.returncode == 0, "etcdctl member remove %x failed (%d): %s%s"
              % (member.member_id, res.returncode, res.stdout, res.stderr))
        self.members.remove(member)
        self.removed.append(member)
        return res


class ClusterWriter(threading.Thread):
    """A client that Puts unique keys PREFIX<n> = TOKEN-<n>, one at a time,
    through the members of a cluster like a client given several endpoints:
    it starts at members[first] and moves on to the next member after an
    error.  It records every acknowledged Put as (key, value, revision) and
    every failed one (maybe applied, maybe not) in `uncertain`.  It stops when
    `stop` is set, after `max_seconds` or after `max_puts`."""

    def __init__(self, members, prefix, stop, first=0, max_seconds=60.0, max_puts=200000,
                 put_timeout=5.0):
        super().__init__(daemon=True)
        self.members = list(members)
        self.prefix = prefix
        self.stop = stop
        self.index = first % len(self.members)
        self.max_seconds = max_seconds
        self.max_puts = max_puts
        self.put_timeout = put_timeout
        self.token = os.urandom(4).hex().encode()
        self.acked = []              # (key, value, revision)
        self.ack_times = []          # time.monotonic() of each ack
        self.uncertain = []          # (key, value) of failed Puts
        self.errors = []             # (time.monotonic(), member name, code, details)

    def run(self):
        channels = [m.new_channel() for m in self.members]
        stubs = [rpc_pb2_grpc.KVStub(c) for c in channels]
        deadline = time.monotonic() + self.max_seconds
        try:
            for n in range(self.max_puts):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                key = b"%s%07d" % (self.prefix, n)
                value = b"%s-%d" % (self.token, n)
                try:
                    resp = stubs[self.index].Put(rpc_pb2.PutRequest(key=key, value=value),
                                                 timeout=self.put_timeout)
                except grpc.RpcError as exc:
                    self.uncertain.append((key, value))
                    self.errors.append((time.monotonic(), self.members[self.index].name,
                                        exc.code(), exc.details()))
                    self.index = (self.index + 1) % len(self.members)
                    self.stop.wait(0.05)
                    continue
                self.acked.append((key, value, resp.header.revision))
                self.ack_times.append(time.monotonic())
        finally:
            for channel in channels:
                channel.close()


def check_acked_on_members(members, prefix, acked, uncertain=()):
    """Every acknowledged Put (key, value, revision) is on each of `members`
    (serializable reads: call Cluster.wait_applied_equal first) with its value
    and mod_revision = the acknowledged revision; acknowledged revisions are
    distinct; an uncertain Put is there with its value or not at all."""
    revisions = [rev for _, _, rev in acked]
    check(len(set(revisions)) == len(revisions), "%d acknowledged Puts share a revision"
          % (len(revisions) - len(set(revisions))))
    for member in members:
        stored, _ = range_all(member.kv(), prefix, serializable=True)
        by_key = {kv.key: kv for kv in stored}
        missing, wrong = [], []
        for key, value, rev in acked:
            kv = by_key.get(key)
            if kv is None:
                missing.append(key)
            elif kv.value != value or kv.mod_revision != rev:
                wrong.append("%s: acknowledged %r at revision %d, found %r at mod_revision %d"
                             % (key.decode(), value, rev, kv.value, kv.mod_revision))
        for key, value in uncertain:
            kv = by_key.get(key)
            if kv is not None and kv.value != value:
                wrong.append("%s: a failed Put of %r, found %r" % (key.decode(), value, kv.value))
        check(not missing, "%s: %d of %d acknowledged Puts missing, e.g. %s"
              % (member, len(missing), len(acked), [k.decode() for k in missing[:5]]))
        check(not wrong, "%s: %d Puts differ, e.g.\n  %s" % (member, len(wrong),
                                                             "\n  ".join(wrong[:5])))
        acked_keys = {key for key, _, _ in acked}
        uncertain_keys = {key for key, _ in uncertain}
        extra = [k for k in by_key if k not in acked_keys and k not in uncertain_keys]
        check(not extra, "%s: %d keys that no one wrote, e.g. %s" % (member, len(extra),
                                                                     extra[:5]))
    return len(acked)
