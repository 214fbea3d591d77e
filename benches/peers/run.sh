#!/usr/bin/env bash
# Runs one `tickwire bench` scenario against tickwire and each peer server in
# turn (same synthetic load, same client, back to back), measures the raw
# loopback floor, and prints a comparison table. See README.md.
#
#   benches/peers/run.sh                       # defaults: ~2 minutes
#   CONNECTIONS=1000 DURATION=60 benches/peers/run.sh
#
# Everything is overridable from the environment:
#   CONNECTIONS (200)  SYMBOLS (100)  PER_CONNECTION (10)  RATE (2000 updates/s)
#   ZIPF (0)  DURATION (10 s)  WARMUP (2 s)  THREADS (1 load thread)
#   SERVERS ("tickwire bun node-ws naive-rust")  LOOPBACK (1: measure the floor)
#   BUILD (1: npm ci + cargo build first; 0 to reuse what is built)
#   OUT (target/peers/results/<timestamp>)   TICKWIRE (target/release/tickwire)
#   REPEAT (1: rounds; each round runs every server once, so drift hits all alike)
#   CLOCK (intended: latency from each update's slot on the feed's schedule)
#   EXTRA (more `tickwire bench` flags, e.g. "--slow 100 --stalled 100")
#   SOURCES (127.0.0.1-127.0.0.16: the client's source addresses, taken in
#     turn; from one address, Linux's search for a free port costs the client
#     more than anything else past ~14,000 connections, as in S4)
#   TICKWIRE_WORKERS (tickwire's --workers: half the cores, at least 1, so the
#     load client on the same machine keeps the other half; Bun and Node
#     serve from one thread too)
set -euo pipefail

PEERS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$PEERS_DIR/../.." && pwd)"
cd "$ROOT"

CONNECTIONS="${CONNECTIONS:-200}"
SYMBOLS="${SYMBOLS:-100}"
PER_CONNECTION="${PER_CONNECTION:-10}"
RATE="${RATE:-2000}"
ZIPF="${ZIPF:-0}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
THREADS="${THREADS:-1}"
SERVERS="${SERVERS:-tickwire bun node-ws naive-rust}"
LOOPBACK="${LOOPBACK:-1}"
BUILD="${BUILD:-1}"
REPEAT="${REPEAT:-1}"
CLOCK="${CLOCK:-intended}"
EXTRA="${EXTRA:-}"
SOURCES="${SOURCES:-127.0.0.1-127.0.0.16}"
TICKWIRE_WORKERS="${TICKWIRE_WORKERS:-$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))}"
OUT="${OUT:-$ROOT/target/peers/results/$(date +%Y%m%d-%H%M%S)}"
TICKWIRE="${TICKWIRE:-$ROOT/target/release/tickwire}"
PEER_TARGET="$ROOT/target/peers"
NAIVE="$PEER_TARGET/release/naive-peer"
BUN="$PEERS_DIR/node_modules/@oven/bun-linux-x64/bin/bun"

mkdir -p "$OUT"
log() { printf '\n== %s\n' "$*" >&2; }
# Thousands of sockets per process, on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [[ "$BUILD" == 1 ]]; then
  log "installing peers from the registries"
  (cd "$PEERS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  cargo build --release --manifest-path "$PEERS_DIR/naive-rust/Cargo.toml" --target-dir "$PEER_TARGET"
  cargo build --release --bin tickwire
fi
for bin in "$TICKWIRE" "$NAIVE" "$BUN"; do
  [[ -x "$bin" ]] || { echo "missing $bin (run with BUILD=1)" >&2; exit 1; }
done

# SYN000,SYN001,... as the servers name them (at least 3 digits).
SYMBOL_LIST="$(python3 -c "
n = $SYMBOLS; w = max(3, len(str(n - 1)))
print(','.join(f'SYN{i:0{w}d}' for i in range(n)))")"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

FEED_FILE="$OUT/synthetic.toml"
cat >"$FEED_FILE" <<EOF
# Written by benches/peers/run.sh: the same load the peers generate.
name = "synthetic"
kind = "synthetic"
symbols = $SYMBOLS
rate = $RATE.0
mode = "steady"
seed = 1
EOF

# Starts server $1 on port $2 in the background, setting SERVER_PID to the
# server process itself (not a wrapper), so its CPU and RSS are what is read.
start_server() {
  local name="$1" port="$2" logfile="$OUT/$1.log"
  case "$name" in
    tickwire)
      RUST_LOG="${RUST_LOG:-warn}" "$TICKWIRE" serve --listen "127.0.0.1:$port" --feed "$FEED_FILE" \
        --workers "$TICKWIRE_WORKERS" --max-connections 100000 --max-connections-per-ip 0 >"$logfile" 2>&1 &
      ;;
    bun)
      "$BUN" "$PEERS_DIR/bun/server.js" --symbols "$SYMBOLS" --rate "$RATE" --port "$port" >"$logfile" 2>&1 &
      ;;
    node-ws)
      node "$PEERS_DIR/node-ws/server.js" --symbols "$SYMBOLS" --rate "$RATE" --port "$port" >"$logfile" 2>&1 &
      ;;
    naive-rust)
      "$NAIVE" --symbols "$SYMBOLS" --rate "$RATE" --port "$port" >"$logfile" 2>&1 &
      ;;
    *)
      echo "unknown server $name" >&2
      return 1
      ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 100); do
    if curl -sf -o /dev/null "http://127.0.0.1:$port/metrics"; then
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "$name exited at start; see $logfile" >&2; return 1; }
    sleep 0.1
  done
  echo "$name did not answer on port $port; see $logfile" >&2
  return 1
}

log "scenario: $CONNECTIONS connections x $PER_CONNECTION of $SYMBOLS symbols, $RATE updates/s, ${DURATION}s after ${WARMUP}s warm-up; results in $OUT"
for round in $(seq "$REPEAT"); do
for name in $SERVERS; do
  port="$(free_port)"
  run="$name.r$round"
  log "$name on 127.0.0.1:$port (round $round of $REPEAT)"
  rm -f "$OUT/$run.json"
  if ! start_server "$name" "$port"; then
    cleanup
    SERVER_PID=""
    continue
  fi
  # A nonzero exit (seq violations, some connections failed) is a finding,
  # not a reason to stop: the JSON is still written and the table shows it.
  # shellcheck disable=SC2206 # EXTRA is a list of flags
  bench=("$TICKWIRE" bench "ws://127.0.0.1:$port" --connections "$CONNECTIONS" --symbols "$SYMBOL_LIST"
    --per-connection "$PER_CONNECTION" --zipf "$ZIPF" --duration "$DURATION" --warmup "$WARMUP"
    --threads "$THREADS" --server-pid "$SERVER_PID" --clock "$CLOCK" --label "$name"
    --source-addresses "$SOURCES" $EXTRA
    --json "$OUT/$run.json" --hgrm "$OUT/$run.hgrm")
  echo "\$ ${bench[*]}" >"$OUT/$run.bench.txt"
  "${bench[@]}" 2>&1 | tee -a "$OUT/$run.bench.txt" || echo "bench against $name exited with an error" >&2
  cleanup
  SERVER_PID=""
  sleep 1
done
done

if [[ "$LOOPBACK" == 1 ]]; then
  log "raw loopback floor"
  python3 "$PEERS_DIR/loopback.py" --json "$OUT/loopback.json"
fi

log "comparison"
python3 "$PEERS_DIR/table.py" "$OUT" $SERVERS | tee "$OUT/table.txt"
curves=()
for name in $SERVERS; do
  [[ -f "$OUT/$name.r1.hgrm" ]] && curves+=("$name=$OUT/$name.r1.hgrm")
done
if [[ "${#curves[@]}" -gt 0 ]]; then
  "$TICKWIRE" plot --out "$OUT/latency.svg" --title "${TITLE:-latency by percentile, first round}" "${curves[@]}"
  log "plot: $OUT/latency.svg"
fi
