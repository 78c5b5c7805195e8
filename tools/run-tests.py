#!/usr/bin/env python3
"""Runs every test binary of the workspace, a few at a time.

`cargo test` runs its test binaries one after another; most of ours spend their time waiting on
a broker, an HTTP server or a child process, so on a 2-core machine two binaries at a time take
about half as long. This script asks cargo for the binaries it built (`cargo test --no-run
--message-format=json`), runs them as cargo would (working directory = the package's folder,
CARGO_MANIFEST_DIR and CARGO_PKG_NAME set), longest first by the durations of the previous run
(.cache/test-durations.json, else
tools/test-durations.json), and prints each binary's output whole when it ends, so logs do not
interleave. Doc tests run last through cargo. Exit status 1 if any binary failed, with the list.

Usage: tools/run-tests.py [--jobs N] [-- ARGS for every test binary]
Environment: TEST_JOBS (default 2).
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DURATIONS = ROOT / ".cache" / "test-durations.json"
# The order for a clean clone (no .cache yet): durations of a run on a 2-core machine.
SEED_DURATIONS = ROOT / "tools" / "test-durations.json"
LOGS = ROOT / "out" / "tests"
# A binary never seen before is assumed to be long, so it starts early rather than last.
UNKNOWN_SECONDS = 60.0


def test_binaries():
    """(label, executable, package folder, package name) of every test binary cargo built."""
    out = subprocess.run(
        ["cargo", "test", "--workspace", "--no-run", "--message-format=json-render-diagnostics"],
        cwd=ROOT, stdout=subprocess.PIPE, check=True, text=True,
    ).stdout
    found = []
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg.get("profile", {}).get("test"):
            continue
        target = msg["target"]
        manifest = Path(msg["manifest_path"])
        package = manifest.parent.name if not msg.get("package_id") else package_name(msg["package_id"])
        kind = target["kind"][0]
        label = f"{package} {kind} {target['name']}"
        found.append((label, msg["executable"], str(manifest.parent), package))
    return found


def package_name(package_id):
    # "path+file:///work/main/services/admin#seqmon-admin@0.1.0" or "name version (source)".
    if "#" in package_id:
        tail = package_id.rsplit("#", 1)[1]
        return tail.split("@", 1)[0] if "@" in tail else Path(package_id.split("#")[0]).name
    return package_id.split(" ", 1)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("TEST_JOBS", "2")))
    parser.add_argument("args", nargs="*", help="arguments for every test binary")
    opts = parser.parse_args()

    binaries = test_binaries()
    previous = {}
    for path in (SEED_DURATIONS, DURATIONS):
        try:
            previous.update(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass
    binaries.sort(key=lambda b: -float(previous.get(b[0], UNKNOWN_SECONDS)))
    LOGS.mkdir(parents=True, exist_ok=True)

    lock = threading.Lock()
    queue = list(binaries)
    results = {}

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                label, exe, folder, package = queue.pop(0)
            env = dict(os.environ)
            env["CARGO_MANIFEST_DIR"] = folder
            env["CARGO_PKG_NAME"] = package
            env.setdefault("CARGO", "cargo")
            log = LOGS / (label.replace(" ", "-") + ".log")
            start = time.monotonic()
            with open(log, "w") as f:
                code = subprocess.call([exe, *opts.args], cwd=folder, env=env,
                                       stdout=f, stderr=subprocess.STDOUT)
            seconds = time.monotonic() - start
            with lock:
                results[label] = (code, seconds)
                status = "ok" if code == 0 else f"FAILED (exit {code})"
                print(f"\n== {label}: {status} in {seconds:.1f} s", flush=True)
                sys.stdout.write(log.read_text(errors="replace"))
                sys.stdout.flush()

    threads = [threading.Thread(target=worker) for _ in range(max(1, opts.jobs))]
    wall = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - wall

    print("\n== doc tests", flush=True)
    doc = subprocess.call(["cargo", "test", "--workspace", "--doc", "-q"], cwd=ROOT)
    results["doc tests"] = (doc, 0.0)

    DURATIONS.parent.mkdir(parents=True, exist_ok=True)
    merged = dict(previous)
    merged.update({k: round(v[1], 1) for k, v in results.items() if k != "doc tests"})
    DURATIONS.write_text(json.dumps(merged, indent=1, sort_keys=True))

    total = sum(v[1] for v in results.values())
    slowest = sorted(results.items(), key=lambda kv: -kv[1][1])[:8]
    print(f"\n== {len(results)} test binaries: {total:.0f} s of tests in {wall:.0f} s on "
          f"{opts.jobs} job(s); slowest: "
          + ", ".join(f"{k.split(' ')[-1]} {v[1]:.0f} s" for k, v in slowest))
    failed = [k for k, (code, _) in results.items() if code != 0]
    if failed:
        print("== FAILED: " + "; ".join(failed) + f" (logs in {LOGS.relative_to(ROOT)}/)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
