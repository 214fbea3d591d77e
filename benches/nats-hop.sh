#!/usr/bin/env bash
# Measures the latency the NATS hop adds: the same synthetic load and the same
# `tickwire bench` client, first against a standalone `tickwire serve`, then
# against a gateway (`tickwire serve --source nats://...`) fed by
# `tickwire ingest` through a local nats-server. Latency is client receive
# time − ingest_ts_ns, which the gateway keeps from the ingest node, so the
# second run includes publish → NATS → gateway. See docs/scale-out.md.
#
#   benches/nats-hop.sh
#   CONNECTIONS=500 DURATION=30 RUNS=3 benches/nats-hop.sh
#
# A paired run then benches the ingest's own WebSocket (the origin: a
# standalone server that also publishes) and a gateway at the same time, so
# both see the same background noise.
#
# Overridable: CONNECTIONS (200) SYMBOLS (100) PER_CONNECTION (10)
#   RATE (2000 updates/s) DURATION (15 s) WARMUP (3 s) RUNS (2 of each, alternating)
#   PAIRED (1: also the simultaneous origin/gateway run)
#   OUT (target/nats-hop/<timestamp>) TICKWIRE (target/release/tickwire)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONNECTIONS="${CONNECTIONS:-200}"
SYMBOLS="${SYMBOLS:-100}"
PER_CONNECTION="${PER_CONNECTION:-10}"
RATE="${RATE:-2000}"
DURATION="${DURATION:-15}"
WARMUP="${WARMUP:-3}"
RUNS="${RUNS:-2}"
PAIRED="${PAIRED:-1}"
OUT="${OUT:-$ROOT/target/nats-hop/$(date +%Y%m%d-%H%M%S)}"
TICKWIRE="${TICKWIRE:-$ROOT/target/release/tickwire}"
[[ -x "$TICKWIRE" ]] || { echo "missing $TICKWIRE (cargo build --release)" >&2; exit 1; }
command -v nats-server >/dev/null || { echo "missing nats-server (apt-get install nats-server)" >&2; exit 1; }
mkdir -p "$OUT"

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_http() {
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$1/healthz" && return 0
    sleep 0.1
  done
  echo "nothing answers on port $1" >&2
  return 1
}

FEED_FILE="$OUT/synthetic.toml"
cat >"$FEED_FILE" <<EOF
name = "synthetic"
kind = "synthetic"
symbols = $SYMBOLS
rate = $RATE.0
mode = "steady"
seed = 1
EOF
SYMBOL_LIST="$(python3 -c "
n = $SYMBOLS; w = max(3, len(str(n - 1)))
print(','.join(f'SYN{i:0{w}d}' for i in range(n)))")"

# Runs the bench against port $2 (server pid $3), results named $1.
bench() {
  "$TICKWIRE" bench "ws://127.0.0.1:$2" --connections "$CONNECTIONS" --symbols "$SYMBOL_LIST" \
    --per-connection "$PER_CONNECTION" --duration "$DURATION" --warmup "$WARMUP" \
    --server-pid "$3" --json "$OUT/$1.json" >"$OUT/$1.txt" 2>&1 \
    || echo "bench $1 exited with an error (see $OUT/$1.txt)" >&2
}

standalone() {
  local port
  port="$(free_port)"
  RUST_LOG=warn "$TICKWIRE" serve --listen "127.0.0.1:$port" --feed "$FEED_FILE" \
    --max-connections $((CONNECTIONS + 100)) >"$OUT/standalone-$1.log" 2>&1 &
  PIDS+=($!)
  wait_http "$port"
  bench "standalone-$1" "$port" "${PIDS[-1]}"
  cleanup
}

via_nats() {
  local nats_dir="$OUT/nats-$1" ingest_port gateway_port nats_port
  mkdir -p "$nats_dir"
  nats-server -a 127.0.0.1 -p -1 -js -sd "$nats_dir/store" --ports_file_dir "$nats_dir" \
    >"$nats_dir/server.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    [[ -s "$nats_dir/nats-server_${PIDS[-1]}.ports" ]] && break
    sleep 0.1
  done
  nats_port="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['nats'][0].rsplit(':',1)[1])" \
    "$nats_dir/nats-server_${PIDS[-1]}.ports")"
  ingest_port="$(free_port)"
  RUST_LOG=warn "$TICKWIRE" ingest --nats "nats://127.0.0.1:$nats_port" --listen "127.0.0.1:$ingest_port" \
    --feed "$FEED_FILE" >"$OUT/ingest-$1.log" 2>&1 &
  PIDS+=($!)
  wait_http "$ingest_port"
  gateway_port="$(free_port)"
  RUST_LOG=warn "$TICKWIRE" serve --source "nats://127.0.0.1:$nats_port" --listen "127.0.0.1:$gateway_port" \
    --max-connections $((CONNECTIONS + 100)) >"$OUT/gateway-$1.log" 2>&1 &
  PIDS+=($!)
  wait_http "$gateway_port"
  if [[ "$1" == paired ]]; then
    bench "origin-paired" "$ingest_port" "${PIDS[-2]}" &
    bench "gateway-paired" "$gateway_port" "${PIDS[-1]}"
    wait $!
  else
    bench "gateway-$1" "$gateway_port" "${PIDS[-1]}"
  fi
  curl -s "http://127.0.0.1:$ingest_port/metrics" | grep -E '^tickwire_(book_updates|cluster_published)_total' \
    >"$OUT/ingest-$1.metrics" || true
  curl -s "http://127.0.0.1:$gateway_port/metrics" | grep -E '^tickwire_cluster_hop_latency_seconds' \
    >"$OUT/gateway-$1.hop" || true
  cleanup
}

echo "$CONNECTIONS connections x $PER_CONNECTION of $SYMBOLS symbols, $RATE updates/s, ${DURATION}s windows; results in $OUT" >&2
for run in $(seq "$RUNS"); do
  standalone "$run"
  via_nats "$run"
done
[[ "$PAIRED" == 1 ]] && via_nats paired

python3 - "$OUT" "$RUNS" <<'EOF'
import json, sys
out, runs = sys.argv[1], int(sys.argv[2])
print(f"{'run':<16}{'delivered/s':>12}{'p50 µs':>9}{'p90 µs':>9}{'p99 µs':>9}{'p99.9 µs':>10}{'max µs':>9}")
names = [f"{kind}-{run}" for kind in ("standalone", "gateway") for run in range(1, runs + 1)]
for name in names + ["origin-paired", "gateway-paired"]:
    try:
        report = json.load(open(f"{out}/{name}.json"))
    except OSError:
        continue
    lat = report["latency_us"]
    print(f"{name:<16}{report['delivered_per_sec']:>12.0f}{lat['p50']:>9.0f}"
          f"{lat['p90']:>9.0f}{lat['p99']:>9.0f}{lat['p999']:>10.0f}{lat['max']:>9.0f}")

print("\nNATS hop alone (gateway /metrics: ingest -> read off the subscription), µs:")
for name in [f"gateway-{run}" for run in range(1, runs + 1)] + ["gateway-paired"]:
    try:
        lines = open(f"{out}/{name}.hop").read().split("\n")
    except OSError:
        continue
    quantiles = {}
    for line in lines:
        if 'quantile="' in line:
            q = line.split('quantile="')[1].split('"')[0]
            quantiles[q] = float(line.rsplit(" ", 1)[1]) * 1e6
    print(f"{name:<16}" + "  ".join(f"p{q} {v:,.0f}" for q, v in quantiles.items()))
EOF
