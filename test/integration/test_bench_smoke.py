"""ballast-bench works against the server: every workload completes its
requests without error and reports figures that hold together.

Not a benchmark (scripts/bench is): small totals, no timing bound.  For each
workload of ballast-bench (put, range l and s, range of a missing key,
txn-put, txn-mixed, lease-keepalive, watch-get, watch), one run with a few
clients over two channels; its JSON line must show every request done
(ok == total; for watch, one event per Put), no error, latencies in order
(p50 <= p90 <= p99 <= p99.9 <= max, all > 0) and a throughput consistent
with ok / seconds.  The keys the put run wrote must be in the store.
"""

import json
import os

import harness
from harness import check, rpc_pb2

RUNS = [
    ("put", ["--total", "2000", "--key-space-size", "500", "--sequential-keys",
             "--val-size", "64"], 2000),
    ("range", ["--total", "2000", "--key-space-size", "500", "--consistency", "l"], 2000),
    ("range", ["--total", "2000", "--key-space-size", "500", "--consistency", "s"], 2000),
    ("range", ["--total", "1000", "--consistency", "s", "--range-key", "missing"], 1000),
    ("txn-put", ["--total", "500", "--txn-ops", "4", "--key-space-size", "500"], 500),
    ("txn-mixed", ["--total", "1000", "--rw-ratio", "3", "--key-space-size", "500"], 1000),
    ("lease-keepalive", ["--total", "2000"], 2000),
    ("watch-get", ["--total", "1000", "--watchers", "200", "--streams", "4",
                   "--key-space-size", "200"], 1000),
    ("watch", ["--total", "500", "--watchers", "1000", "--streams", "10",
               "--put-rate", "500"], 500),
]


def main():
    bench = os.path.join(harness.BUILD_DIR, "ballast-bench")
    check(os.access(bench, os.X_OK), "%s is not built" % bench)
    server = harness.Server()
    with server:
        for workload, args, expect in RUNS:
            cmd = [bench, workload, "--endpoints", server.endpoint, "--clients", "8",
                   "--conns", "2", "--json", "-", "--label", "smoke"] + args
            out = harness.run_command(cmd, timeout=120)
            check(out.returncode == 0, "%s exited %d:\n%s%s" % (" ".join(cmd), out.returncode,
                                                              out.stdout, out.stderr))
            check("slow " not in out.stderr, "%s logged slow requests without --slow-ms:\n%s"
                  % (workload, out.stderr))
            lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
            check(len(lines) == 1, "%s wrote %d JSON lines:\n%s" % (workload, len(lines),
                                                                    out.stdout))
            r = json.loads(lines[0])
            check(r["workload"] == workload and r["label"] == "smoke", "JSON names: %s" % r)
            check(r["ok"] == expect and r["errors"] == 0,
                  "%s: ok %d (want %d), errors %d, first error %r"
                  % (workload, r["ok"], expect, r["errors"], r["first_error"]))
            lat = r["latency_us"]
            order = [lat["p50"], lat["p90"], lat["p99"], lat["p999"], lat["max"]]
            check(order == sorted(order) and order[0] > 0, "%s: latencies out of order: %s"
                  % (workload, lat))
            check(r["seconds"] > 0 and abs(r["throughput"] - r["ok"] / r["seconds"]) <=
                  0.01 * r["throughput"] + 1, "%s: throughput %s vs %d ok in %s s"
                  % (workload, r["throughput"], r["ok"], r["seconds"]))
            if workload == "watch":
                check(r["puts_ok"] == expect, "watch: %d puts acknowledged" % r["puts_ok"])
            harness.log("%-16s %6d ok  %8.0f/s  p50 %6.0f us  p99 %6.0f us"
                        % (workload + ("" if workload != "range" else " " + r["consistency"]),
                           r["ok"], r["throughput"], lat["p50"], lat["p99"]))
        # --slow-ms: a threshold below every request logs each one (with its
        # clocks); none is logged without the option (the runs above)
        cmd = [bench, "put", "--endpoints", server.endpoint, "--total", "20",
               "--slow-ms", "0.001"]
        out = harness.run_command(cmd, timeout=60)
        check(out.returncode == 0, "%s exited %d:\n%s" % (" ".join(cmd), out.returncode, out.stderr))
        slow = [l for l in out.stderr.splitlines() if l.startswith("slow put ")]
        check(len(slow) == 20 and all(" ms, done at monotonic " in l and ", wall " in l
                                      for l in slow), "--slow-ms 0.001 logged:\n%s" % out.stderr)
        # the put run's keys (sequential over 500) are all there
        resp = server.kv().Range(rpc_pb2.RangeRequest(key=b"00000000", range_end=b"00000500",
                                                      count_only=True), timeout=10)
        check(resp.count == 500, "the put run left %d of its 500 keys" % resp.count)


if __name__ == "__main__":
    harness.run(main)
