#!/usr/bin/env bash
# kiln's ONNX engine against onnxruntime, measured in the same run on this machine.
#
# In process, one row: 100 trees of 31 leaves on kiln's own tree evaluator, the same trees
# exported to ONNX and run by kiln's ONNX engine, and that file in onnxruntime; skl2onnx's
# logistic regression (tests/fixtures/onnx/logreg.onnx) on kiln's engine and in onnxruntime.
# Over HTTP on loopback (wrk, V2 JSON, one row a request, 1, 16 and 64 connections): that
# logistic regression imported into `kiln serve`, against the same file served the usual Python
# way, FastAPI + onnxruntime under uvicorn with one worker.
#
#   python3 -m venv /var/tmp/kiln-bench
#   /var/tmp/kiln-bench/bin/pip install onnxruntime==1.31.1 fastapi==0.125.0 uvicorn==0.40.0 numpy
#   cargo build --release --bin kiln
#   PYTHON=/var/tmp/kiln-bench/bin/python DURATION=10s benches/compare/onnx.sh
#
# wrk comes from Debian (apt-get install wrk). Servers listen on 127.0.0.1 only, each on core 0
# with wrk on core 1 (SERVER_CPUS, LOAD_CPUS), and everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${CARGO_TARGET_DIR:-target}
KILN=${KILN:-$TARGET/release/kiln}
PYTHON=${PYTHON:-python3}
DURATION=${DURATION:-10s}
SERVER_CPUS=${SERVER_CPUS-0}
LOAD_CPUS=${LOAD_CPUS-1}
on_server=()
on_load=()
[ -n "$SERVER_CPUS" ] && on_server=(taskset -c "$SERVER_CPUS")
[ -n "$LOAD_CPUS" ] && on_load=(taskset -c "$LOAD_CPUS")
KILN_ADDR=127.0.0.1:18190
PY_ADDR=127.0.0.1:18191
model=tests/fixtures/onnx/logreg.onnx

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== in process, one row (criterion, then onnxruntime on the same files and row)"
cargo bench -q -p kiln-server --bench predict -- onnx 2>&1 | grep -E "^onnx/|time:|exported trees" || true
"$PYTHON" - "${TMPDIR:-/tmp}/kiln-bench-trees100.onnx" "$model" <<'PY'
import sys, time
import numpy as np
import onnxruntime as ort
one = np.array([[1.0 + i for i in range(30)]], dtype=np.float32)
for path, what in ((sys.argv[1], "100 trees exported by kiln"), (sys.argv[2], "skl2onnx logistic regression")):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    s = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs = s.get_inputs()
    feeds = ({i.name: one[:, j:j + 1] for j, i in enumerate(inputs)} if len(inputs) > 1
             else {inputs[0].name: one})
    for _ in range(2000):
        s.run(None, feeds)
    best = float("inf")
    for _ in range(5):
        n, t = 20000, time.perf_counter()
        for _ in range(n):
            s.run(None, feeds)
        best = min(best, (time.perf_counter() - t) / n)
    print(f"onnxruntime {ort.__version__}, {what}, 1 row: {best * 1e6:.2f} µs")
PY

echo "== over HTTP: kiln serve against FastAPI + onnxruntime (uvicorn, 1 worker)"
home="$work/home"
"$KILN" --home "$home" models import bc "$model" --reference examples/data/breast_cancer.csv >/dev/null
"$KILN" --home "$home" models alias set bc champion 1 >/dev/null
"$PYTHON" - "$work" <<'PY'
import csv, json, sys
rows = list(csv.DictReader(open("examples/data/breast_cancer.csv")))
cols = [c for c in rows[0] if c != "label"]
body = {"inputs": [{"name": "x", "shape": [1, len(cols)], "datatype": "FP32",
                    "data": [float(rows[0][c]) for c in cols]}]}
open(f"{sys.argv[1]}/row.json", "w").write(json.dumps(body))
PY
cat > "$work/row.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/row.json", "r")
wrk.body = f:read("*a")
f:close()
LUA
"${on_server[@]}" "$KILN" --home "$home" serve --addr "$KILN_ADDR" >/dev/null 2>"$work/kiln.log" &
pids+=($!)
MODEL="$model" "${on_server[@]}" "$PYTHON" -m uvicorn --app-dir benches/compare onnx_fastapi:app \
  --host 127.0.0.1 --port "${PY_ADDR##*:}" --workers 1 --log-level warning >/dev/null 2>"$work/py.log" &
pids+=($!)
for _ in $(seq 200); do
  curl -sf "http://$KILN_ADDR/v2/health/ready" >/dev/null 2>&1 \
    && curl -sf -X POST -H 'Content-Type: application/json' -d @"$work/row.json" \
      "http://$PY_ADDR/v2/models/bc/infer" >/dev/null 2>&1 && break
  sleep 0.1
done
# Both answer the same probabilities.
k=$(curl -s -X POST -H 'Content-Type: application/json' -d @"$work/row.json" "http://$KILN_ADDR/v2/models/bc/infer")
p=$(curl -s -X POST -H 'Content-Type: application/json' -d @"$work/row.json" "http://$PY_ADDR/v2/models/bc/infer")
"$PYTHON" - "$k" "$p" <<'PY'
import json, sys
k, p = (json.loads(a) for a in sys.argv[1:3])
pk = next(o for o in k["outputs"] if o["name"] == "probabilities")["data"]
pp = next(o for o in p["outputs"] if o["name"] == "probabilities")["data"]
assert all(abs(a - b) < 1e-5 for a, b in zip(pk, pp)), (pk, pp)
PY

load() {
  local addr=$1 conns=$2 threads=2
  [ "$conns" = 1 ] && threads=1
  "${on_load[@]}" wrk -t"$threads" -c"$conns" -d"$DURATION" --latency -s "$work/row.lua" \
    "http://$addr/v2/models/bc/infer" >"$work/wrk.out"
  if grep -q "Non-2xx" "$work/wrk.out"; then
    cat "$work/wrk.out" >&2
    exit 1
  fi
  local rps p50 p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.out")
  p50=$(awk '$1 == "50%" {print $2}' "$work/wrk.out")
  p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.out")
  echo "$rps $p50 $p99"
}
printf "%-16s %12s %9s %9s %14s %9s %9s %8s\n" connections "kiln req/s" p50 p99 "fastapi req/s" p50 p99 ratio
for c in 1 16 64; do
  read -r krps kp50 kp99 <<<"$(load "$KILN_ADDR" "$c")"
  read -r prps pp50 pp99 <<<"$(load "$PY_ADDR" "$c")"
  printf "%-16s %12s %9s %9s %14s %9s %9s %8.1f\n" "$c" "$krps" "$kp50" "$kp99" "$prps" "$pp50" "$pp99" \
    "$(echo "$krps / $prps" | bc -l)"
done
