"""The etcd-oracle finds no divergence in KV, Txn and Compact.

For each seed (default 1..20) a fresh candidate with an empty data dir is
started and `etcd-oracle run --start-reference --seed S --ops N --mix
kv,txn,compact` compares it step by step with a private etcd 3.4.23.  Two seeds
run at a time.  Any seed that diverges (or cannot run) fails the test; the
report shows the end of the oracle's output and the path of its reproduction
file, which is kept under the build dir's integration-artifacts/oracle_kv/.

Environment: BALLAST_ORACLE_SEEDS ("1-20", "3", "1,5,7") and BALLAST_ORACLE_OPS
(2000) shorten or lengthen the run; BALLAST_ORACLE_PARALLEL (2);
BALLAST_ORACLE_BIN (default: shared/etcd-oracle/etcd-oracle beside the repo).
"""

import concurrent.futures
import os
import subprocess
import time

import harness

MIX = "kv,txn,compact"
SEED_TIMEOUT = 120          # one seed of 2000 ops takes ~5-15 s
BUDGET = 700                # all seeds (ctest's TIMEOUT is 900 s)


def parse_seeds(text):
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            first, last = part.split("-", 1)
            seeds.extend(range(int(first), int(last) + 1))
        elif part:
            seeds.append(int(part))
    return seeds


def oracle_path():
    """$BALLAST_ORACLE_BIN, else shared/etcd-oracle beside the repo."""
    candidates = [os.environ.get("BALLAST_ORACLE_BIN"),
                  os.path.join(os.path.dirname(os.path.abspath(harness.SOURCE_DIR)),
                               "shared", "etcd-oracle", "etcd-oracle"),
                  "/work/shared/etcd-oracle/etcd-oracle"]
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    raise harness.TestFailure("etcd-oracle not found in %s (set BALLAST_ORACLE_BIN)"
                              % [p for p in candidates if p])


def run_seed(seed, ops, oracle, artifacts, deadline):
    """Returns None on success, else a failure message."""
    if time.monotonic() > deadline:
        return "seed %d: not run, the time budget of %ds was used up" % (seed, BUDGET)
    repro = os.path.join(artifacts, "repro-seed%d.txt" % seed)
    if os.path.exists(repro):
        os.remove(repro)
    server = harness.Server()
    output_path = os.path.join(server.work_dir, "oracle.out")
    started = time.monotonic()
    try:
        server.start()
        cmd = [harness.PYTHON, oracle, "run", "--candidate", server.endpoint,
               "--start-reference", "--seed", str(seed), "--ops", str(ops),
               "--mix", MIX, "--repro", repro]
        proc = harness.spawn(cmd, output_path, cwd=server.work_dir, death_signal="TERM")
        try:
            timeout = max(1.0, min(SEED_TIMEOUT, deadline - time.monotonic()))
            status = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            harness.stop_process(proc)        # SIGTERM: the oracle stops its etcd
            status = "timeout after %ds" % timeout
        with open(output_path, "rb") as f:
            output = f.read().decode("utf-8", "replace")
        last = output.strip().splitlines()[-1] if output.strip() else "(no output)"
        alive = server.running()
        harness.log("seed %d: %s (%.1fs)" % (seed, last, time.monotonic() - started))
        if status == 0 and alive and last.endswith(" passed, 0 failed"):
            return None
        message = "seed %d: oracle exit status %s, candidate %s\n%s" % (
            seed, status, "running" if alive else "exited (status %s)" % server.proc.returncode,
            "\n".join(output.splitlines()[-60:]))
        if os.path.exists(repro):
            message += "\nreproduction file: %s" % repro
        if not alive:
            message += "\nend of the candidate's log:\n%s" % server.log_tail()
        return message
    finally:
        server.stop()


def main():
    oracle = oracle_path()
    seeds = parse_seeds(os.environ.get("BALLAST_ORACLE_SEEDS", "1-20"))
    ops = int(os.environ.get("BALLAST_ORACLE_OPS", "2000"))
    parallel = int(os.environ.get("BALLAST_ORACLE_PARALLEL", "2"))
    harness.check(seeds and ops > 0, "no seeds or ops to run")
    artifacts = harness.artifacts_dir("oracle_kv")
    harness.log("%d seeds x %d ops, mix %s, %d at a time" % (len(seeds), ops, MIX, parallel))
    deadline = time.monotonic() + BUDGET
    pool = concurrent.futures.ThreadPoolExecutor(parallel)
    try:
        results = list(pool.map(lambda s: run_seed(s, ops, oracle, artifacts, deadline), seeds))
    finally:
        # on SIGTERM, don't wait here for the running seeds: harness clean-up
        # stops their processes, which ends them
        pool.shutdown(wait=False, cancel_futures=True)
    failed = [r for r in results if r]
    for message in failed:
        print("=" * 70 + "\n" + message)
    harness.check(not failed, "%d of %d seeds diverged or failed: %s" % (
        len(failed), len(seeds), ", ".join(m.split(":")[0] for m in failed)))


if __name__ == "__main__":
    harness.run(main)
