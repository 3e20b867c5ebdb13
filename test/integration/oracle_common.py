"""Running etcd-oracle seeds against fresh candidates (shared by test_oracle_*.py).

For each seed a fresh candidate with an empty data dir is started and
`etcd-oracle run --start-reference --seed S --ops N --mix MIX` compares it step
by step with a private etcd 3.4.23 that the oracle starts itself.  Several
seeds run at a time.  Any seed that diverges (or cannot run) fails the test;
the report shows the end of the oracle's output and the path of its
reproduction file, kept under the build dir's integration-artifacts/NAME/.
"""

import concurrent.futures
import os
import subprocess
import time

import harness


def parse_seeds(text):
    """"1-20", "3", "1,5,7" -> a list of ints."""
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


def env_first(names, default):
    """The value of the first of `names` that is set (and not empty)."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return default


def run_seed(seed, ops, mix, oracle, artifacts, deadline, seed_timeout, budget,
             extra_args=()):
    """One seed against a fresh candidate; returns None on success, else a
    failure message."""
    if time.monotonic() > deadline:
        return "seed %d: not run, the time budget of %ds was used up" % (seed, budget)
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
               "--mix", mix, "--repro", repro] + list(extra_args)
        proc = harness.spawn(cmd, output_path, cwd=server.work_dir, death_signal="TERM")
        try:
            timeout = max(1.0, min(seed_timeout, deadline - time.monotonic()))
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


def run_seeds(name, mix, seeds, ops, parallel, seed_timeout, budget, extra_args=()):
    """Runs every seed (`parallel` at a time, all within `budget` seconds) and
    fails the test if any of them diverged or could not run."""
    oracle = oracle_path()
    harness.check(seeds and ops > 0 and parallel > 0, "no seeds or ops to run")
    artifacts = harness.artifacts_dir(name)
    harness.log("%d seeds x %d ops, mix %s, %d at a time" % (len(seeds), ops, mix, parallel))
    deadline = time.monotonic() + budget
    pool = concurrent.futures.ThreadPoolExecutor(parallel)
    try:
        results = list(pool.map(
            lambda s: run_seed(s, ops, mix, oracle, artifacts, deadline, seed_timeout, budget,
                               extra_args), seeds))
    finally:
        # on SIGTERM, don't wait here for the running seeds: harness clean-up
        # stops their processes, which ends them
        pool.shutdown(wait=False, cancel_futures=True)
    failed = [r for r in results if r]
    for message in failed:
        print("=" * 70 + "\n" + message)
    harness.check(not failed, "%d of %d seeds diverged or failed: %s" % (
        len(failed), len(seeds), ", ".join(m.split(":")[0] for m in failed)))


def run_mix(name, mix, env_key=None, seed_timeout=150, budget=700):
    """Runs seeds of `mix` as test `name`, sized by BALLAST_ORACLE_<KEY>_SEEDS,
    _OPS and _PARALLEL (KEY = env_key), each falling back to the shared
    BALLAST_ORACLE_SEEDS / _OPS / _PARALLEL, then to 1-20 seeds x 2000 ops, two
    at a time."""
    def setting(suffix, default):
        names = ["BALLAST_ORACLE_%s_%s" % (env_key, suffix)] if env_key else []
        return env_first(names + ["BALLAST_ORACLE_%s" % suffix], default)

    run_seeds(name, mix,
              seeds=parse_seeds(setting("SEEDS", "1-20")),
              ops=int(setting("OPS", "2000")),
              parallel=int(setting("PARALLEL", "2")),
              seed_timeout=seed_timeout, budget=budget)
