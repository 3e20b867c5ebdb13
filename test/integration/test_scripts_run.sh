#!/bin/bash
# scripts/run serves etcdctl on 127.0.0.1:2379.
#
# Starts $BALLAST_SOURCE_DIR/scripts/run in a temporary working directory with
# BALLAST_SKIP_SETUP=1 (no apt/build steps: everything is installed and built)
# and BALLAST_BUILD_DIR, waits until `etcdctl endpoint health` succeeds on
# 127.0.0.1:2379, then checks that `etcdctl put a 1 && etcdctl get a` prints
# OK / a 1.  scripts/run execs the server, so the PID started here is the
# server's: it is stopped by that PID (SIGTERM, then SIGKILL), and port 2379
# must be free again afterwards.  Fails with a clear message if port 2379 is
# already in use.  Everything is bounded in time.
set -u

SOURCE_DIR=${BALLAST_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BUILD_DIR=${BALLAST_BUILD_DIR:-$SOURCE_DIR/build}
RUN="$SOURCE_DIR/scripts/run"
ENDPOINT=127.0.0.1:2379
READY_SECONDS=60
STOP_SECONDS=10

fail() {
    echo "FAIL test_scripts_run.sh: $*"
    if [ -n "${WORK:-}" ] && [ -f "$WORK/run.log" ]; then
        echo "---- end of scripts/run output ----"
        tail -n 40 "$WORK/run.log"
    fi
    exit 1
}

port_busy() {   # is anything listening on 127.0.0.1:$1 (or on all addresses)?
    ss -Hltn "sport = :$1" | grep -q .
}

ctl() {
    ETCDCTL_API=3 timeout 15 etcdctl --endpoints "$ENDPOINT" --dial-timeout=2s \
        --command-timeout=5s "$@"
}

PID=
WORK=
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null
        for _ in $(seq $((STOP_SECONDS * 10))); do
            kill -0 "$PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$PID" 2>/dev/null && kill -KILL "$PID" 2>/dev/null
        wait "$PID" 2>/dev/null
    fi
    # the script ran in a session of its own: anything it left behind (it
    # should have exec'd the server, leaving nothing) is ours to stop
    if [ -n "$PID" ]; then
        for pid in $(ps -o pid= -s "$PID" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null
        done
    fi
    [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

[ -f "$RUN" ] || fail "$RUN does not exist"
command -v etcdctl >/dev/null || fail "etcdctl not installed (apt-get install etcd-client)"
if port_busy 2379; then
    fail "port 2379 on 127.0.0.1 is already in use (another etcd or ballast?);" \
         "scripts/run serves on 2379, stop that server first: $(ss -Hltnp 'sport = :2379')"
fi

WORK=$(mktemp -d /tmp/ballast-scripts-run-XXXXXX)
cd "$WORK" || fail "cannot enter $WORK"

# setsid: a session of its own, so that cleanup can find every process it
# started.  setsid execs (this background job is not a group leader), so $! is
# the script's PID, and the server's once scripts/run has exec'd it.
BALLAST_SKIP_SETUP=1 BALLAST_BUILD_DIR="$BUILD_DIR" setsid bash "$RUN" \
    </dev/null >"$WORK/run.log" 2>&1 &
PID=$!

ready=no
deadline=$((SECONDS + READY_SECONDS))
while [ $SECONDS -lt $deadline ]; do
    if ! kill -0 "$PID" 2>/dev/null; then
        wait "$PID"
        fail "scripts/run exited (status $?) before serving"
    fi
    if ctl endpoint health >/dev/null 2>&1; then
        ready=yes
        break
    fi
    sleep 0.2
done
[ $ready = yes ] || fail "no healthy server on $ENDPOINT within ${READY_SECONDS}s"

put=$(ctl put a 1 2>&1) || fail "etcdctl put a 1 failed: $put"
[ "$put" = "OK" ] || fail "etcdctl put a 1 printed '$put', want 'OK'"
got=$(ctl get a 2>&1) || fail "etcdctl get a failed: $got"
[ "$got" = $'a\n1' ] || fail "etcdctl get a printed '$got', want 'a' and '1' on two lines"

# the server is the process scripts/run became: stopping that PID frees 2379
listener=$(ss -Hltnp 'sport = :2379')
if echo "$listener" | grep -q "pid="; then     # ss shows owners (as root)
    echo "$listener" | grep -q "pid=$PID," ||
        fail "the process listening on 2379 is not the PID scripts/run started ($PID): $listener"
fi
kill -TERM "$PID"
for _ in $(seq $((STOP_SECONDS * 10))); do
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$PID" 2>/dev/null && fail "the server did not stop within ${STOP_SECONDS}s of SIGTERM"
for _ in $(seq 20); do
    port_busy 2379 || break
    sleep 0.1
done
port_busy 2379 && fail "port 2379 still in use after the server (PID $PID) stopped"

echo "PASS test_scripts_run.sh"
exit 0
