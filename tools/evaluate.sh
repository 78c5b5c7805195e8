#!/usr/bin/env bash
# `make evaluate`: the detection sweep over simulated fleets plus the public labelled benchmarks,
# written to out/evaluate/latest.json and the figures section of docs/detection.md.
#
#   make evaluate                     # the full sweep: 20 seeds x fleets of 24 and 200 x 2 and 30 days
#                                     # x bad shares 1% and 10%, each with a control fleet (hours on 2 cores)
#   make evaluate ARGS="--seeds 5"    # fewer seeds (any seqmon-evaluate option passes through)
#   SKAB_DIR=/path/to/SKAB/data make evaluate   # adds SKAB (a checkout's data folder; not fetched here)
#   tools/evaluate.sh --quick         # what `make test` runs: one seed, 24 instruments, 2 days; fails
#                                     # unless every fault is found, with the right part, every slow one
#                                     # before its spec crossing, and the control fleet stays quiet;
#                                     # writes out/evaluate/quick/
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

quick=0
args=()
for a in "$@"; do
  if [ "$a" = "--quick" ]; then quick=1; else args+=("$a"); fi
done

# The quick run uses the debug build `make test` has already made; the sweep wants release.
if [ "$quick" = 1 ]; then bin=target/debug; cargo build -q --bin seqmon-evaluate --bin anomaly-detector
else bin=target/release; cargo build --release -q --bin seqmon-evaluate --bin anomaly-detector; fi
if [ "$quick" = 1 ]; then
  out=out/evaluate/quick
  sweep=(--seeds 1 --fleets 24 --hours 48 --sample-intervals-s 60 --bad-shares 0.1)
  doc=()
else
  out=out/evaluate
  sweep=()
  doc=(--doc docs/detection.md)
fi
mkdir -p "$out"
echo "== simulator sweep (the six stages in one process per fleet)"
"$bin/seqmon-evaluate" "${sweep[@]}" ${args[@]+"${args[@]}"} --out "$out/simulation.json"
echo "== public benchmarks through anomaly-detector score"
python3 tools/benchmark.py --detector "$bin/anomaly-detector" --cache .cache/benchmarks \
  --out "$out/benchmark.json" ${SKAB_DIR:+--skab-dir "$SKAB_DIR"}
python3 tools/evaluate_report.py --simulation "$out/simulation.json" --benchmark "$out/benchmark.json" \
  --json "$out/latest.json" ${doc[@]+"${doc[@]}"} $([ "$quick" = 1 ] && echo --check --quick)
