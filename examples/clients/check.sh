#!/usr/bin/env bash
# Trains a small model, serves it with `kiln serve` on loopback, and asks it with the standard
# Python clients of the protocols kiln speaks: tritonclient.http and tritonclient.grpc for the Open
# Inference Protocol (over REST and gRPC), and the mlflow client logging runs as a notebook would
# (read back with kiln's own commands); and kiln's own API against its OpenAPI document.
# CI runs it; locally:
#   python3 -m pip install "tritonclient[http,grpc]" numpy mlflow-skinny pandas pyarrow openapi-spec-validator onnxruntime
# then
#
#   KILN=target/debug/kiln PYTHON=python3 examples/clients/check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
KILN="${KILN:-${CARGO_TARGET_DIR:-target}/debug/kiln}"
PYTHON="${PYTHON:-python3}"
work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

data=examples/data/breast_cancer.csv
"$KILN" --home "$work/home" train --data "$data" --target label --model logistic --epochs 5 \
  --register bc >/dev/null 2>&1
"$KILN" --home "$work/home" models alias set bc champion 1 >/dev/null
# ONNX models from scikit-learn, XGBoost, LightGBM and a torch-style network and CNN, imported
# with the reference data that names their columns.
onnx=tests/fixtures/onnx
onnx_models=()
for spec in logreg:$data forest:$data xgboost:$data mlp:$data pipeline:$onnx/mixed.csv \
  lightgbm:examples/data/digits.csv cnn:examples/data/digits.csv; do
  name=${spec%%:*}
  "$KILN" --home "$work/home" models import "onnx-$name" "$onnx/$name.onnx" --reference "${spec#*:}" >/dev/null
  "$KILN" --home "$work/home" models alias set "onnx-$name" champion 1 >/dev/null
  onnx_models+=("onnx-$name=$name")
done
# Regressors of the mean area from the other columns: their reference is the table without `label`.
cut -d, -f1-30 "$data" > "$work/area.csv"
for name in hgb_regressor lightgbm_regressor; do
  "$KILN" --home "$work/home" models import "onnx-$name" "$onnx/$name.onnx" --reference "$work/area.csv" \
    --target "mean area" >/dev/null
  "$KILN" --home "$work/home" models alias set "onnx-$name" champion 1 >/dev/null
  onnx_models+=("onnx-$name=$name")
done
"$KILN" --home "$work/home" serve --addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --token s3cret \
  >/dev/null 2>"$work/serve.log" &
server=$!
url=""
grpc=""
for _ in $(seq 100); do
  url=$(grep -o 'http://[0-9.:]*' "$work/serve.log" | head -n 1 || true)
  grpc=$(grep -o 'GRPCInferenceService) on [0-9.:]*' "$work/serve.log" | grep -o '[0-9.]*:[0-9]*$' || true)
  [ -n "$url" ] && [ -n "$grpc" ] && break
  sleep 0.1
done
[ -n "$url" ] && [ -n "$grpc" ] || { cat "$work/serve.log" >&2; exit 1; }
"$PYTHON" examples/clients/tritonclient_check.py "$url" bc "$data" label
"$PYTHON" examples/clients/tritonclient_grpc_check.py "$grpc" "$url" bc "$data" label
"$PYTHON" examples/clients/onnx_check.py "$url" "${onnx_models[@]}"
# kiln's own models exported as ONNX answer the same in onnxruntime: a network and trees on the
# bundled data, and a network on mixed click-through columns (imputed, clipped, log-scaled,
# standardized and one-hot, all inside the graph).
"$KILN" data synth ctr --rows 2000 --seed 3 -o "$work/ctr.csv" >/dev/null
cat > "$work/ctr.spec.toml" <<'TOML'
[[features]]
columns = ["i1", "i2", "i5", "i8"]
impute = "median"
clip = [0, 1e9]
log1p = true
encode = "standardize"
[[features]]
columns = ["i3", "i4", "i6", "i7"]
encode = "min_max"
[[features]]
columns = ["c1", "c2", "c5"]
encode = "vocabulary"
min_frequency = 20
oov_buckets = 1
impute = "most_frequent"
TOML
for spec in "net:$data:label:--model mlp --hidden 8" "trees:$data:label:--model gbdt --trees 20" \
  "ctr:$work/ctr.csv:click:--model mlp --hidden 8 --spec $work/ctr.spec.toml"; do
  IFS=: read -r name file target flags <<<"$spec"
  # shellcheck disable=SC2086
  "$KILN" train --data "$file" --target "$target" $flags --epochs 2 --register "export-$name" \
    --server "$url" --token s3cret >/dev/null 2>&1
  "$KILN" models export "export-$name" --version 1 --format onnx -o "$work/$name.onnx" --server "$url" >/dev/null
  "$KILN" predict --model "export-$name:1" --data "$file" -o "$work/$name.predicted.csv" --server "$url" >/dev/null
  "$PYTHON" examples/clients/onnx_export_check.py "$work/$name.onnx" "$file" "$work/$name.predicted.csv"
done
"$KILN" models export bc --output "$work/bundle" --server "$url" >/dev/null
run=$(MLFLOW_TRACKING_TOKEN=s3cret "$PYTHON" examples/clients/mlflow_check.py "$url" "$work/bundle" "$data" \
  | tail -n 1)
# The large file went up in parts through kiln's upload area, which it left empty.
[ -d "$work/home/uploads" ] && [ -z "$(ls -A "$work/home/uploads")" ] \
  || { echo "the multipart upload did not go through kiln's upload area" >&2; exit 1; }
shown=$("$KILN" runs show "$run" --server "$url" --json)
"$PYTHON" - "$shown" <<'PY'
import json, math, sys
run = json.loads(sys.argv[1])
assert run["name"] == "first", run
assert run["params"] == {"lr": "0.01", "layers": "2", "optimizer": "adam", "batch_size": "64"}, run
assert run["tags"]["team"] == "growth" and run["tags"]["stage"] == "prototype", run
assert run["metrics"]["loss"]["value"] == 0.2 and run["metrics"]["loss"]["step"] == 4, run
assert run["metrics"]["diverged"]["value"] == "NaN", run
assert run["status"] == "finished", run
kinds = {a["name"]: a["kind"] for a in run["artifacts"]}
assert kinds == {"notes.txt": "file", "report": "directory"}, run["artifacts"]
PY
model=$("$KILN" models show notebook-model --server "$url" --json)
"$PYTHON" - "$model" <<'PY'
import json, sys
model = json.loads(sys.argv[1])
assert model["aliases"] == {"champion": 1, "staging": 1}, model
assert model["versions"][0]["version"]["artifact"]["name"] == "report", model
PY
"$PYTHON" examples/clients/openapi_check.py "$url" s3cret
# pyarrow reads the features kiln writes, with every codec kiln offers (zstd by default), and
# finds the values kiln's CSV output holds.
"$KILN" data transform "$data" --spec examples/breast_cancer.spec.toml -o "$work/features.csv" >/dev/null
for codec in default none snappy gzip lz4; do
  flag=()
  [ "$codec" = default ] || flag=(--compression "$codec")
  "$KILN" data transform "$data" --spec examples/breast_cancer.spec.toml \
    -o "$work/features-$codec.parquet" "${flag[@]}" >/dev/null
  "$PYTHON" - "$work/features-$codec.parquet" "$work/features.csv" "$codec" <<'PY'
import csv, sys
import pyarrow.parquet as pq
path, reference, codec = sys.argv[1:]
table = pq.read_table(path)
written = pq.ParquetFile(path).metadata.row_group(0).column(0).compression
# pyarrow names Parquet's LZ4_RAW codec LZ4.
expected = {"default": "ZSTD", "none": "UNCOMPRESSED", "snappy": "SNAPPY", "gzip": "GZIP", "lz4": "LZ4"}[codec]
assert written == expected, (codec, written)
with open(reference) as f:
    rows = list(csv.DictReader(f))
assert table.num_rows == len(rows) == 569, table.num_rows
assert table.column_names == list(rows[0].keys()), table.column_names
for name in table.column_names:
    got = table.column(name).to_pylist()
    assert all(abs(float(r[name]) - g) < 1e-6 for r, g in zip(rows, got)), name
PY
done
echo "pyarrow: kiln's Parquet features read back the same with zstd, none, snappy, gzip and lz4"
echo "mlflow: run $run and model notebook-model logged by the mlflow client read back the same through kiln's own commands"
kill -TERM "$server"
wait "$server"
server=""
