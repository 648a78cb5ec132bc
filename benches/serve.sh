#!/usr/bin/env bash
# Load test of `kiln serve` on loopback with wrk, against the ceiling of the HTTP stack (an axum
# handler answering a constant JSON, server/examples/ceiling.rs) in the same run.
#
# V2 `infer` of a logistic model on breast cancer: 1-row requests at 1, 16 and 64 connections,
# 32-row requests at 16, and dynamic batching on vs off at 64. Prints requests/s and p50/p99.
#
#   cargo build --release --bin kiln && cargo build --release -p kiln-server --example ceiling
#   DURATION=10s benches/serve.sh
#   SERVE_ARGS="--log-sample 0" benches/serve.sh    # extra `kiln serve` options (the prediction log)
#   TRAIN_ARGS="--config benches/trees31.toml" benches/serve.sh
#                                                   # another model: 100 trees of 31 leaves
#
# wrk comes from Debian's packages (apt-get install wrk). Both servers listen on 127.0.0.1 only,
# each load runs for DURATION, and every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
KILN=${KILN:-$TARGET/release/kiln}
CEILING=${CEILING:-$TARGET/release/examples/ceiling}
DURATION=${DURATION:-10s}
read -r -a serve_args <<<"${SERVE_ARGS:-}"
# On a small machine the load generator and the server fight over the same cores, and the
# scheduler's noise swamps both servers' tail latency; by default each server gets core 0 and
# wrk core 1 (set SERVER_CPUS and LOAD_CPUS, or empty to not pin).
SERVER_CPUS=${SERVER_CPUS-0}
LOAD_CPUS=${LOAD_CPUS-1}
on_server=()
on_load=()
[ -n "$SERVER_CPUS" ] && on_server=(taskset -c "$SERVER_CPUS")
[ -n "$LOAD_CPUS" ] && on_load=(taskset -c "$LOAD_CPUS")
KILN_ADDR=127.0.0.1:18180
CEILING_ADDR=127.0.0.1:18181

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

home="$work/home"
read -r -a train_args <<<"${TRAIN_ARGS:---spec examples/breast_cancer.spec.toml --model logistic --epochs 20}"
"$KILN" --home "$home" train --data examples/data/breast_cancer.csv --target label \
  "${train_args[@]}" --register bc >/dev/null
"$KILN" --home "$home" models alias set bc champion 1 >/dev/null

python3 - "$work" <<'PY'
import csv, json, sys
rows = list(csv.DictReader(open("examples/data/breast_cancer.csv")))
cols = [c for c in rows[0] if c != "label"]
for n in (1, 32):
    data = [float(r[c]) for r in rows[:n] for c in cols]
    body = {"inputs": [{"name": "x", "shape": [n, len(cols)], "datatype": "FP32", "data": data}]}
    open(f"{sys.argv[1]}/rows{n}.json", "w").write(json.dumps(body))
PY
for n in 1 32; do
  cat > "$work/rows$n.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/rows$n.json", "r")
wrk.body = f:read("*a")
f:close()
LUA
done

"${on_server[@]}" "$KILN" --home "$home" serve --addr "$KILN_ADDR" "${serve_args[@]}" >/dev/null 2>"$work/kiln.log" &
pids+=($!)
"${on_server[@]}" "$CEILING" "$CEILING_ADDR" >/dev/null 2>"$work/ceiling.log" &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://$KILN_ADDR/v2/health/ready" >/dev/null 2>&1 && curl -s -o /dev/null "http://$CEILING_ADDR/" && break
  sleep 0.1
done

# Prints: requests/s p50 p99 (latencies as wrk writes them).
load() {
  local addr=$1 rows=$2 conns=$3 threads=2
  [ "$conns" = 1 ] && threads=1
  "${on_load[@]}" wrk -t"$threads" -c"$conns" -d"$DURATION" --latency -s "$work/rows$rows.lua" \
    "http://$addr/v2/models/bc/infer" >"$work/wrk.out"
  if grep -q "Non-2xx" "$work/wrk.out"; then
    echo "non-2xx answers:" >&2
    cat "$work/wrk.out" >&2
    exit 1
  fi
  local rps p50 p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.out")
  p50=$(awk '$1 == "50%" {print $2}' "$work/wrk.out")
  p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.out")
  echo "$rps $p50 $p99"
}

printf "%-34s %12s %9s %9s %12s %9s %9s %8s\n" case "kiln req/s" p50 p99 "ceiling r/s" p50 p99 ratio
row() {
  local name=$1 rows=$2 conns=$3
  read -r krps kp50 kp99 <<<"$(load "$KILN_ADDR" "$rows" "$conns")"
  read -r crps cp50 cp99 <<<"$(load "$CEILING_ADDR" "$rows" "$conns")"
  printf "%-34s %12s %9s %9s %12s %9s %9s %8.2f\n" "$name" "$krps" "$kp50" "$kp99" "$crps" "$cp50" "$cp99" \
    "$(echo "$krps / $crps" | bc -l)"
}
row "1 row, 1 connection" 1 1
row "1 row, 16 connections" 1 16
row "1 row, 64 connections" 1 64
row "32 rows, 16 connections" 32 16

# Dynamic batching on, through the management API of the running server.
"$KILN" deploy bc --split champion=100 --batch 64 --batch-delay-us 200 --server "http://$KILN_ADDR" >/dev/null
row "1 row, 64 conns, batching 64/200µs" 1 64
row "1 row, 16 conns, batching 64/200µs" 1 16
