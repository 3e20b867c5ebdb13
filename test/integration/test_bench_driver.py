"""scripts/bench --repeat: the rounds, their order and the medians.

Not a benchmark: one workload (put-1c) in --quick mode, 2 rounds, against
etcd and Ballast.  The driver must make four runs, etcd first in round 1 and
Ballast first in round 2, none failed; README.md's figure for each server is
the median of its two runs (taken from results.json), the spread table gives
their lowest and highest, and the per-run table lists all four. Ballast's
runs split their server CPU by thread (queue threads, raft, RocksDB, watch
hub, other), the groups add up to the process's own figure, and the CPU
table gives each group's median per request.
"""

import json
import os
import re
import statistics

import harness
from harness import check


def table_rows(text, first_cell):
    """The cells of the Markdown table rows whose first cell starts with first_cell."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| " + first_cell):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def main():
    harness.skip_unless_ballast("tests Ballast's benchmark driver")
    bench = os.path.join(harness.SOURCE_DIR, "scripts", "bench")
    out = os.path.join(harness.make_temp_dir("ballast-bench-driver-"), "out")
    work = harness.make_temp_dir("ballast-bench-work-")
    cmd = [bench, "--no-setup", "--quick", "--repeat", "2", "--only", "^put-1c$",
           "--build-dir", harness.BUILD_DIR, "--out", out, "--work-dir", work]
    res = harness.run_command(cmd, timeout=300)
    check(res.returncode == 0, "%s exited %d:\n%s%s" % (" ".join(cmd), res.returncode,
                                                      res.stdout, res.stderr))
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    runs = results["runs"]
    order = [(r["server"], r["round"]) for r in runs]
    check(results["repeat"] == 2 and order == [("etcd", 1), ("ballast", 1), ("ballast", 2),
                                               ("etcd", 2)],
          "runs made (server, round): %s" % order)
    check(all(r["error"] is None and r["bench"]["ok"] > 0 for r in runs),
          "a run failed: %s" % [(r["server"], r["round"], r["error"]) for r in runs])
    with open(os.path.join(out, "README.md")) as f:
        readme = f.read()

    # throughput table: | `put-1c` title | etcd | Ballast | B/E | ...
    rows = [r for r in table_rows(readme, "`put-1c` put") if len(r) == 10]
    check(len(rows) == 2, "put-1c rows of the two figure tables: %s" % rows)
    tput = {kind: [r["bench"]["throughput"] for r in runs if r["server"] == kind]
            for kind in ("etcd", "ballast")}
    want = ["{:,.0f}".format(statistics.median(tput[k])) for k in ("etcd", "ballast")]
    check(rows[0][1:3] == want, "throughput in README %s, median of the runs %s (runs %s)"
          % (rows[0][1:3], want, tput))

    # spread table: | `put-1c` | server | runs ok | lowest – highest | ...
    spread = [r for r in table_rows(readme, "`put-1c` |") if len(r) == 7]
    check([r[1] for r in spread] == ["etcd", "ballast"] and
          all(r[2] == "2 of 2" for r in spread), "spread rows: %s" % spread)
    for r in spread:
        lo, hi = min(tput[r[1]]), max(tput[r[1]])
        want = "{:,.0f} – {:,.0f}".format(lo, hi)
        check(r[3] == want, "%s spread %r, runs give %r" % (r[1], r[3], want))

    # per-run table: one row per run, with its round
    per_run = [r for r in table_rows(readme, "`put-1c` |") if len(r) == 8]
    check([(r[1], r[2]) for r in per_run] == [(s, str(n)) for s, n in order],
          "per-run rows: %s" % per_run)
    check(re.search(r"ran 2 times on each server", readme), "README does not say --repeat 2")

    # Ballast's CPU by thread: each run's groups account for its server CPU,
    # and the table gives each group's median per op
    groups = ["rpc-cq", "rpc-stream", "raft", "rocksdb", "watch-hub", "other"]
    per_op = {g: [] for g in groups}
    for r in runs:
        if r["server"] != "ballast":
            check("server_cpu_by_thread_s" not in r, "etcd run split by thread: %s" % r)
            continue
        split = r.get("server_cpu_by_thread_s") or {}
        total = sum(r["server_cpu_s"])
        check(sorted(split) == sorted(groups) and all(v >= 0 for v in split.values()),
              "round %d split: %s" % (r["round"], split))
        # per-thread ticks round on their own: a tick or two either way
        check(abs(sum(split.values()) - total) <= 0.05,
              "round %d: threads %s add up to %.3f s, the process %.3f s"
              % (r["round"], split, sum(split.values()), total))
        check(split["rpc-cq"] > 0 and split["raft"] > 0,
              "round %d: no CPU on the queue or raft threads: %s" % (r["round"], split))
        # a Put's work is on the named threads (other: ~4% here)
        check(split["other"] <= 0.2 * total,
              "round %d: %.3f s of %.3f s on no named thread: %s"
              % (r["round"], split["other"], total, split))
        for g in groups:
            per_op[g].append(split[g] * 1e6 / r["bench"]["ok"])
    cpu_rows = [r for r in table_rows(readme, "`put-1c` put") if len(r) == 2 + len(groups)]
    check(len(cpu_rows) == 1, "put-1c rows of the CPU-by-thread table: %s" % cpu_rows)
    for g, cell in zip(groups, cpu_rows[0][2:]):
        want = statistics.median(per_op[g])
        check(abs(float(cell) - want) <= 0.0051 * want + 1e-9,
              "%s: README %s us/op, median of the runs %.3f (%s)" % (g, cell, want, per_op[g]))
    harness.log("put-1c medians: etcd %s/s, Ballast %s/s"
                % (rows[0][1], rows[0][2]))


if __name__ == "__main__":
    harness.run(main)
