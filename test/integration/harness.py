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
import difflib
import os
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
READY_TIMEOUT = 10.0
# big range answers (the server's send limit is math.MaxInt32, like etcd's)
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
STOP_TIMEOUT = 10.0

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


def stop_process(proc, timeout=STOP_TIMEOUT, sig=signal.SIGTERM):
    """Stops one process that this test started, by its PID; returns its exit
    status.  SIGKILL follows if it has not exited within `timeout`."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
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


def port_in_use(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


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


def read_rss_kib(pid):
    """VmRSS of a process in KiB (from /proc/PID/status)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise TestFailure("no VmRSS in /proc/%d/status" % pid)


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
    (e.g. ["--batch-policy", "off"])."""

    def __init__(self, kind=None, data_dir=None, extra_args=(), name="default"):
        self.kind = kind or candidate_kind()
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
        return "127.0.0.1:%d" % self.client_port

    @property
    def client_url(self):
        return "http://127.0.0.1:%d" % self.client_port

    @property
    def peer_url(self):
        return "http://127.0.0.1:%d" % self.peer_port

    @property
    def metrics_url(self):
        return "http://127.0.0.1:%d" % self.metrics_port

    def command(self):
        return [self.binary, "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.client_url,
                "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", "%s=%s" % (self.name, self.peer_url),
                "--listen-metrics-urls", self.metrics_url] + self.extra_args

    # life cycle
    def start(self, wait=True):
        check(self.proc is None or self.proc.poll() is not None,
              "%s already running" % self)
        self.starts += 1
        with open(self.log_path, "ab") as logf:
            logf.write(b"\n===== start %d: %s\n" % (self.starts, " ".join(self.command()).encode()))
        self.proc = spawn(self.command(), self.log_path)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=READY_TIMEOUT):
        """Waits until a gRPC Range of key "health" succeeds."""
        deadline = time.monotonic() + timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TestFailure("%s exited with status %s while starting; end of its log:\n%s"
                                  % (self, self.proc.returncode, self.log_tail()))
            if not port_in_use(self.client_port):
                last = "client port not listening"
                time.sleep(0.05)
                continue
            try:
                self.kv().Range(rpc_pb2.RangeRequest(key=b"health"), timeout=1.0)
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


def prefix_end(prefix):
    """range_end that selects every key starting with `prefix` (non-empty)."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


def range_all(kv, prefix, page=1000, timeout=30):
    """Every KeyValue under `prefix`, read in pages of `page` keys at one
    revision; returns (list of KeyValue, header revision)."""
    end = prefix_end(prefix)
    key, revision, result = prefix, 0, []
    for _ in range(1000000):
        resp = kv.Range(rpc_pb2.RangeRequest(key=key, range_end=end, limit=page,
                                             revision=revision), timeout=timeout)
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
