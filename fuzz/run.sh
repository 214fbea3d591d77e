#!/usr/bin/env bash
# Runs every fuzz target for a fixed time budget, growing fuzz/corpus/<target>.
#
#   fuzz/run.sh            # 60 s per target
#   fuzz/run.sh 600        # 10 min per target
#   fuzz/run.sh 30 request # one target
#
# cargo-fuzz builds with sanitizer flags that only nightly compilers accept;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. A crash stops the
# run with the input in fuzz/artifacts/<target>/; reproduce it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`, fix it, and copy the
# file into fuzz/corpus/<target>/ so it stays a regression input.
set -euo pipefail
cd "$(dirname "$0")/.."

budget="${1:-60}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(request frame_decoder binance coinbase native tardis)
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

for target in "${targets[@]}"; do
  echo "--- $target: ${budget}s"
  # -malloc_limit_mb turns any single allocation above it into a crash:
  # parsers must stay bounded whatever the input claims.
  log="fuzz/target/$target.log"
  mkdir -p fuzz/target
  status=0
  cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$budget" -max_len=16384 -rss_limit_mb=1024 -malloc_limit_mb=128 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|artifact_prefix|Test unit written)" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "$target failed (exit $status); full log in $log" >&2
    exit 1
  fi
done
echo "--- every target ran ${budget}s without a crash"
