#!/usr/bin/env bash
# How many replicas one central kiln serves: starts a central `kiln serve` with a model, then
# REPLICAS `kiln serve --registry` replicas on loopback, and measures
#   - the time until every replica is ready (each fetches the bundle once, digest-checked),
#   - after each of MOVES champion moves, the time until every replica answers with the new
#     version (the /api/changes fan-out plus each replica's load and swap),
#   - the memory of the central server and of one replica.
#
#   cargo build --release --bin kiln
#   REPLICAS=50 MOVES=10 benches/replicas.sh
#
# Everything listens on 127.0.0.1 and every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
KILN=${KILN:-$TARGET/release/kiln}
REPLICAS=${REPLICAS:-50}
MOVES=${MOVES:-10}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

home="$work/home"
data=examples/data/breast_cancer.csv
"$KILN" --home "$home" train --data "$data" --target label --model logistic --epochs 2 --register bc >/dev/null 2>&1
"$KILN" --home "$home" train --data "$data" --target label --model gbdt --trees 100 --register bc >/dev/null 2>&1
"$KILN" --home "$home" models promote bc 1 >/dev/null
"$KILN" --home "$home" serve --addr 127.0.0.1:0 --log-sample 0 >/dev/null 2>"$work/central.log" &
pids+=($!)
central_pid=$!
url=""
for _ in $(seq 200); do
  url=$(grep -o 'http://[0-9.:]*' "$work/central.log" | head -n 1 || true)
  [ -n "$url" ] && break
  sleep 0.05
done

start=$(date +%s.%N)
for i in $(seq "$REPLICAS"); do
  RAYON_NUM_THREADS=1 "$KILN" --home "$work/none-$i" serve --registry "$url" --addr 127.0.0.1:0 \
    --cache "$work/cache-$i" >/dev/null 2>"$work/replica-$i.log" &
  pids+=($!)
done
python3 - "$work" "$REPLICAS" "$MOVES" "$KILN" "$home" "$url" "$start" <<'PY'
import json, re, subprocess, sys, time, urllib.request
work, n, moves, kiln, home, central, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], float(sys.argv[7])

def url_of(i):
    while True:
        m = re.search(r"http://[0-9.:]+", open(f"{work}/replica-{i}.log").read())
        if m:
            return m.group(0)
        time.sleep(0.02)

urls = [url_of(i) for i in range(1, n + 1)]
def ready(u):
    try:
        return urllib.request.urlopen(f"{u}/v2/health/ready", timeout=2).status == 200
    except Exception:
        return False
pending = set(urls)
while pending:
    pending = {u for u in pending if not ready(u)}
    time.sleep(0.02)
print(f"{n} replicas started and ready (bundle fetched, loaded, warmed up) in {time.time() - start:.2f} s")

row = [float(v) for v in open("examples/data/breast_cancer.csv").readlines()[1].strip().split(",")[:30]]
body = json.dumps({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": row}]}).encode()
def version(u):
    r = urllib.request.urlopen(urllib.request.Request(f"{u}/v2/models/bc/infer", data=body, headers={"Content-Type": "application/json"}), timeout=5)
    return json.loads(r.read())["model_version"]
# The baseline: one command-line round trip to the central server, no replica involved.
base = []
for _ in range(5):
    t = time.time()
    subprocess.run([kiln, "models", "list", "--server", central], check=True, capture_output=True)
    base.append(time.time() - t)
base.sort()
print(f"baseline: a `kiln models list --server` round trip takes {base[2]*1000:.0f} ms")
times = []
for k in range(moves):
    target = "2" if k % 2 == 0 else "1"
    t = time.time()
    subprocess.run([kiln, "models", "promote", "bc", target, "--server", central], check=True, capture_output=True)
    pending = set(urls)
    while pending:
        pending = {u for u in pending if version(u) != target}
    times.append(time.time() - t)
times.sort()
print(f"champion moves: all {n} replicas answer the new version within median {times[len(times)//2]*1000:.0f} ms, worst {times[-1]*1000:.0f} ms ({moves} moves, each including the promote command)")
PY
rss() { awk '/VmRSS/ {print $2 / 1024 " MiB"}' "/proc/$1/status"; }
echo "central server RSS: $(rss "$central_pid"); one replica RSS: $(rss "${pids[1]}")"
