#!/usr/bin/env bash
# The benchmark scenarios S1-S5 of docs/benchmarks.md, tickwire and its peers
# back to back, each through benches/peers/run.sh (same synthetic load, same
# `tickwire bench` client). Writes every report, log and plot under OUT, and
# OUT/results.md with the tables; with PUBLISH=1 also docs/benchmark-results.md
# and the plots in docs/bench/.
#
#   benches/scenarios.sh                 # all five, ~30 minutes
#   benches/scenarios.sh S1 S3           # a subset
#   REPEAT=1 SHORT=1 benches/scenarios.sh   # one round, short windows: a smoke run
#
# Environment: REPEAT (3 rounds of S1/S3), SHORT (0), SERVERS (all four),
# PUBLISH (0), OUT (target/bench/<timestamp>), BUILD (1), TICKWIRE_WORKERS
# (tickwire's --workers; half the cores by default, see benches/peers/run.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SCENARIOS=("$@")
[[ ${#SCENARIOS[@]} -gt 0 ]] || SCENARIOS=(S1 S2 S3 S4 S5)
REPEAT="${REPEAT:-3}"
SHORT="${SHORT:-0}"
PUBLISH="${PUBLISH:-0}"
BUILD="${BUILD:-1}"
SERVERS="${SERVERS:-tickwire bun node-ws naive-rust}"
OUT="${OUT:-$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}"
TICKWIRE="$ROOT/target/release/tickwire"
export TICKWIRE_WORKERS="${TICKWIRE_WORKERS:-$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))}"
CAPTURES=(spot="$ROOT/../shared/data/binance/spot_btcusdt_20240808.gz"
          usdm="$ROOT/../shared/data/binance/usdm_btcusdt_20240808.gz")
mkdir -p "$OUT"
log() { printf '\n#### %s\n' "$*" >&2; }

if [[ "$BUILD" == 1 ]]; then
  log "building tickwire and the peers"
  (cd benches/peers && npm ci --no-audit --no-fund --loglevel=error)
  cargo build --release --manifest-path benches/peers/naive-rust/Cargo.toml --target-dir target/peers
  cargo build --release --bin tickwire
fi
# Windows: 30 s for tail figures (BENCHMARKS.md), or 8 s for a smoke run.
if [[ "$SHORT" == 1 ]]; then LONG=8; STEP=5; else LONG=30; STEP=10; fi

# run.sh with BUILD=0 and the scenario's settings; $1 is the results folder.
scenario() {
  local dir="$1"; shift
  env "$@" BUILD=0 SERVERS="$SERVERS" OUT="$dir" benches/peers/run.sh
}

for s in "${SCENARIOS[@]}"; do
  # Which code a scenario measured: a subset run into an existing folder
  # leaves the other scenarios' results (and commits) as they were.
  if [[ "$s" =~ ^S[1-5]$ ]]; then
    mkdir -p "$OUT/$s"
    git describe --always --dirty --abbrev=7 >"$OUT/$s/commit" 2>/dev/null || echo "?" >"$OUT/$s/commit"
    echo "$TICKWIRE_WORKERS" >"$OUT/$s/workers"
  fi
  case "$s" in
    S1)
      log "S1 dashboards: 1,000 clients x 10 of 100 symbols (Zipf), 2,000 updates/s"
      scenario "$OUT/S1" CONNECTIONS=1000 SYMBOLS=100 PER_CONNECTION=10 ZIPF=1 RATE=2000 \
        DURATION=$LONG WARMUP=5 REPEAT="$REPEAT" TITLE="S1 dashboards, latency from intended time"
      ;;
    S2)
      # Stepped up until delivered/s stops growing; each step is its own run.
      for rate in 1000 2000 5000 10000 20000 40000; do
        log "S2 firehose: 100 clients x all 100 symbols at $rate updates/s"
        scenario "$OUT/S2/rate-$rate" CONNECTIONS=100 SYMBOLS=100 PER_CONNECTION=100 \
          RATE="$rate" DURATION=$STEP WARMUP=3 REPEAT=1 LOOPBACK=0 \
          TITLE="S2 firehose at $rate updates/s"
      done
      ;;
    S3)
      log "S3 slow consumers: S1 plus 100 stalled and 100 one-message-a-second clients"
      scenario "$OUT/S3" CONNECTIONS=1000 SYMBOLS=100 PER_CONNECTION=10 ZIPF=1 RATE=2000 \
        DURATION=$LONG WARMUP=5 REPEAT="$REPEAT" EXTRA="--slow 100 --stalled 100" \
        TITLE="S3 slow consumers (healthy clients), latency from intended time"
      ;;
    S4)
      # Each side needs a descriptor per connection, plus the churn's and a
      # few more: where the hard open-file limit is below that, fewer.
      s4_connections=20000
      fd_limit="$(ulimit -Hn)"
      if [[ "$fd_limit" != unlimited && "$fd_limit" -lt $((s4_connections + 5000)) ]]; then
        s4_connections=$((fd_limit - 5000))
        log "S4: the open-file limit is $fd_limit per process, so $s4_connections connections, not 20,000"
      fi
      log "S4 connections: $s4_connections x 5 subscriptions, then 1,000 connect/disconnect per second"
      scenario "$OUT/S4" CONNECTIONS="$s4_connections" SYMBOLS=100 PER_CONNECTION=5 ZIPF=1 RATE=100 \
        DURATION=$LONG WARMUP=2 REPEAT=1 THREADS=2 LOOPBACK=0 \
        EXTRA="--churn 1000 --connect-timeout 120 --settle 30" TITLE="S4 connections"
      ;;
    S5)
      log "S5 replay ingest: the full Binance captures at --speed max, no clients"
      mkdir -p "$OUT/S5"
      for round in $(seq "$REPEAT"); do
        python3 benches/ingest.py --tickwire "$TICKWIRE" --json "$OUT/S5/gzip.r$round.json" "${CAPTURES[@]}"
      done
      # The same lines without gzip: parse + book alone.
      plain=()
      for capture in "${CAPTURES[@]}"; do
        prefix="${capture%%=*}"
        gzip -dc "${capture#*=}" >"$OUT/S5/$prefix.ndjson"
        plain+=("$prefix=$OUT/S5/$prefix.ndjson")
      done
      for round in $(seq "$REPEAT"); do
        python3 benches/ingest.py --tickwire "$TICKWIRE" --json "$OUT/S5/plain.r$round.json" "${plain[@]}"
      done
      rm -f "$OUT"/S5/*.ndjson
      log "S5 with 100 clients on both symbols, the captures looping at --speed max"
      port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
      RUST_LOG=warn "$TICKWIRE" serve --listen "127.0.0.1:$port" --workers "$TICKWIRE_WORKERS" --speed max --loop \
        --replay "${CAPTURES[0]}" --replay "${CAPTURES[1]}" >"$OUT/S5/serve.log" 2>&1 &
      pid=$!
      sleep 2
      "$TICKWIRE" bench "ws://127.0.0.1:$port" --connections 100 --symbols spot:BTCUSDT,usdm:BTCUSDT \
        --duration $STEP --warmup 3 --server-pid "$pid" --label tickwire \
        --json "$OUT/S5/clients.json" | tee "$OUT/S5/clients.txt" || true
      kill "$pid"; wait "$pid" 2>/dev/null || true
      ;;
    *)
      echo "unknown scenario $s (S1..S5)" >&2
      exit 2
      ;;
  esac
done

python3 benches/summarize.py "$OUT" >"$OUT/results.md"
log "results: $OUT/results.md"
if [[ "$PUBLISH" == 1 ]]; then
  mkdir -p docs/bench
  cp "$OUT/results.md" docs/benchmark-results.md
  for s in S1 S3 S4; do
    [[ -f "$OUT/$s/latency.svg" ]] && cp "$OUT/$s/latency.svg" "docs/bench/$s-latency.svg"
  done
  log "published docs/benchmark-results.md and docs/bench/"
fi
