#!/usr/bin/env bash
# `make fuzz`: fuzzes the decoders and parsers (crates/fuzz: Avro single-object, ingest frames,
# JSON lines, InterOp, RunInfo/RunParameters XML, the privacy grammars and templates) for
# --runs executions in total (default 10,000,000), shared out over the targets by their speed
# (the stable driver: evenly) and run one target at a time.
#
# Engine: libFuzzer through cargo-fuzz (coverage-guided, AddressSanitizer, overflow checks on)
# when a nightly toolchain is installed; cargo-fuzz itself is installed into .cache/cargo-fuzz
# on first use. Without nightly (or with --engine stable) the stable mutation driver
# (`seqmon-fuzz run`, not coverage-guided) runs the same targets instead.
# Limits: -rss_limit_mb / --rss-limit-mb 2048, -malloc_limit_mb 1024 (one allocation), a
# per-target -max_len, -timeout 20 s per input. Each target starts from the committed corpus
# fuzz/corpus/<target>/; libFuzzer's new inputs go to out/fuzz/corpus/<target>/ (not committed).
# --update-corpus minimises seeds + new inputs (`cargo fuzz cmin`) back into fuzz/corpus/.
# Results: out/fuzz/latest.json (per target: executions, seconds, panics, peak RSS, corpus
# size, when it finished; a target not run this time keeps its earlier entry) and
# out/fuzz/logs/; crashing inputs: out/fuzz/artifacts/<target>/ (libFuzzer; an earlier run's
# are moved to <target>.previous/) or out/fuzz/crashes/ (stable driver). Exits non-zero if any
# input crashed, leaked memory past the limits or timed out.
#
# Options: --runs N, --target NAME (repeatable), --engine libfuzzer|stable, --update-corpus.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

runs=10000000
engine=auto
update=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --target) targets+=("$2"); shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    --update-corpus) update=1; shift ;;
    *) echo "unknown option $1 (--runs N, --target NAME, --engine libfuzzer|stable, --update-corpus)"; exit 2 ;;
  esac
done
all=(avro avro_body ingest_frame jsonl interop runinfo runparameters templates log_message grammar)
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
# Share of the runs per target: the fast targets get more of them (about 50,000 inputs/s under
# libFuzzer), the slow ones (JSON lines: 11 schemas a line; template catalogues) fewer, so the
# whole run takes about half an hour on one core.
weight() {
  case "$1" in
    ingest_frame | log_message | grammar) echo 8 ;;
    avro | avro_body) echo 4 ;;
    interop | runinfo | runparameters) echo 2 ;;
    *) echo 1 ;;
  esac
}
total_weight=0
for t in "${targets[@]}"; do total_weight=$(( total_weight + $(weight "$t") )); done
share() { echo $(( runs * $(weight "$1") / total_weight )); }
per=$(( runs / ${#targets[@]} ))

# Longest input per target: a few times the largest real one.
max_len() {
  case "$1" in
    runinfo | runparameters) echo 65536 ;;
    interop | templates) echo 16384 ;;
    avro | avro_body | ingest_frame | jsonl) echo 8192 ;;
    log_message) echo 2048 ;;
    *) echo 512 ;;
  esac
}

# Longest input kept when minimising into the committed corpus: smaller, so fuzz/corpus/ stays a
# few MB (a longer input is cut there; what only it covers is lost from the seeds, not the run).
corpus_max_len() {
  case "$1" in
    runinfo | runparameters) echo 4096 ;;
    interop) echo 3072 ;;
    jsonl) echo 1536 ;;
    *) max_len "$1" ;;
  esac
}

if [ "$engine" = auto ]; then
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then engine=libfuzzer; else engine=stable; fi
fi
mkdir -p out/fuzz/logs
json=out/fuzz/latest.json

if [ "$engine" = stable ]; then
  echo "== stable mutation driver (no nightly toolchain for libFuzzer): $per inputs per target"
  args=()
  for t in "${targets[@]}"; do args+=(--target "$t"); done
  cargo run -q -p seqmon-fuzz --bin seqmon-fuzz -- run "${args[@]}" --inputs "$per" --seed "${FUZZ_SEED:-1}" \
    --json "$json" --max-len 65536 --rss-limit-mb 2048 --timeout-s 20
  echo "== results: $json"
  exit 0
fi

cargo_fuzz="$root/.cache/cargo-fuzz/bin/cargo-fuzz"
if [ ! -x "$cargo_fuzz" ]; then
  echo "== installing cargo-fuzz into .cache/cargo-fuzz (once)"
  cargo install -q --root "$root/.cache/cargo-fuzz" cargo-fuzz
fi
fuzz() { (cd fuzz && RUSTUP_TOOLCHAIN=nightly "$cargo_fuzz" "$@"); }

echo "== building the libFuzzer targets (nightly, AddressSanitizer, debug assertions)"
fuzz build -a

failed=0
results=()
for t in "${targets[@]}"; do
  work="$root/out/fuzz/corpus/$t"
  artifacts="$root/out/fuzz/artifacts/$t"
  # Artifacts are this run's: those of an earlier run are moved aside.
  if [ -d "$artifacts" ] && [ -n "$(ls -A "$artifacts")" ]; then
    rm -rf "$artifacts.previous" && mv "$artifacts" "$artifacts.previous"
  fi
  mkdir -p "$work" "$artifacts"
  log="$root/out/fuzz/logs/$t.log"
  echo "== $t: $(share "$t") executions (max_len $(max_len "$t"))"
  start=$(date +%s.%N)
  status=0
  fuzz run -a "$t" "$work" "$root/fuzz/corpus/$t" -- \
    -runs="$(share "$t")" -max_len="$(max_len "$t")" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=20 \
    -dict="$root/fuzz/dicts/$t.dict" -artifact_prefix="$artifacts/" -print_final_stats=1 \
    -close_fd_mask=1 >"$log" 2>&1 || status=$?
  end=$(date +%s.%N)
  stat() { awk -v k="stat::$1:" '$1 == k { print $2 }' "$log" | tail -1; }
  executions=$(stat number_of_executed_units)
  peak=$(stat peak_rss_mb)
  crashes=$(find "$artifacts" -type f | wc -l)
  corpus=$(find "$work" "$root/fuzz/corpus/$t" -type f | wc -l)
  seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  if [ "$status" != 0 ] || [ "$crashes" != 0 ]; then
    failed=1
    echo "   FAILED (exit $status): see $log and $artifacts/"
    grep -E "^==[0-9]+==ERROR|panicked at|SUMMARY" "$log" | head -5 || true
  fi
  printf '   %s executions in %.0f s, peak RSS %s MiB, corpus %s\n' "${executions:-0}" "$seconds" "${peak:-?}" "$corpus"
  results+=("$t ${executions:-0} $seconds $crashes ${peak:-0} $corpus $status $(date -u +%Y-%m-%dT%H:%M:%SZ)")
  if [ "$update" = 1 ]; then
    echo "   minimising seeds + new inputs into fuzz/corpus/$t (cargo fuzz cmin)"
    cp -n "$root/fuzz/corpus/$t"/* "$work"/ 2>/dev/null || true
    fuzz cmin -a "$t" "$work" -- -max_len="$(corpus_max_len "$t")" -rss_limit_mb=2048 >>"$log" 2>&1
    rm -rf "$root/fuzz/corpus/$t" && cp -r "$work" "$root/fuzz/corpus/$t"
  fi
done

# Targets not run this time keep their entry (and its date) from the previous results.
printf '%s\n' "${results[@]}" | python3 -c '
import json, os, sys
targets = {}
if os.path.exists(sys.argv[1]):
    old = json.load(open(sys.argv[1]))
    if old.get("engine", "").startswith("libFuzzer"):
        targets = old.get("targets", {})
for line in sys.stdin:
    t, ex, sec, crashes, peak, corpus, status, finished = line.split()
    targets[t] = {"executions": int(ex), "seconds": round(float(sec), 1), "panics": int(crashes),
                  "peak_rss_mb": int(peak), "corpus": int(corpus), "exit_status": int(status),
                  "finished": finished}
doc = {"engine": "libFuzzer (cargo-fuzz, nightly, AddressSanitizer, debug assertions)",
       "total_executions": sum(v["executions"] for v in targets.values()),
       "total_seconds": round(sum(v["seconds"] for v in targets.values()), 1),
       "panics": sum(v["panics"] for v in targets.values()),
       "targets": targets}
json.dump(doc, open(sys.argv[1], "w"), indent=2)
print("== total: %d executions in %.0f s, %d crashing inputs; results: %s" % (
    doc["total_executions"], doc["total_seconds"], doc["panics"], sys.argv[1]))
' "$json"
exit "$failed"
