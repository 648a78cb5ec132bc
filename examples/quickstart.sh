#!/usr/bin/env bash
# kiln's main job on bundled data: describe a dataset, infer and check its schema, fit feature
# transforms and write model-ready features; then the same on synthetic click-through data;
# then train a model on it, register it, promote it to production and score the file with it;
# then run the retraining pipeline (examples/pipelines/retrain.toml: generate, ingest, statistics,
# validate, transform, train, evaluate, infra-validate, push) twice, the second time from its cache;
# then start `kiln up` (registry, scheduler and server on one port) and ask both models over
# TF Serving's, MLflow's and the Open Inference Protocol, and the pipeline API.
#
#   KILN           the kiln binary (default: the release build in $CARGO_TARGET_DIR or target/)
#   OUT            where results go (default: target/quickstart)
#   PIPELINE_ARGS  extra arguments for `kiln pipeline run` (e.g. --param rows=3000)
set -euo pipefail
cd "$(dirname "$0")/.."
KILN="${KILN:-${CARGO_TARGET_DIR:-target}/release/kiln}"
if [ ! -x "$KILN" ]; then
  echo "no kiln binary at $KILN; build it with \`cargo build --release\` or set KILN" >&2
  exit 1
fi
OUT="${OUT:-target/quickstart}"
mkdir -p "$OUT"
data=examples/data/breast_cancer.csv

echo "== statistics of $data"
"$KILN" data describe "$data"

echo; echo "== schema, inferred and checked"
"$KILN" data schema "$data" -o "$OUT/breast_cancer.schema.json"
"$KILN" data validate "$data" --schema "$OUT/breast_cancer.schema.json"

echo; echo "== features: fit the spec, save the fitted transform, write features"
"$KILN" data transform "$data" --spec examples/breast_cancer.spec.toml \
  --fit-out "$OUT/breast_cancer.fitted.json" -o "$OUT/breast_cancer.features.parquet"

echo; echo "== synthetic click-through data: numbers, vocabularies, hashing"
"$KILN" data synth ctr --rows 20000 --seed 7 -o "$OUT/ctr.csv"
"$KILN" data describe "$OUT/ctr.csv"
"$KILN" data transform "$OUT/ctr.csv" --spec examples/ctr.spec.toml \
  --fit-out "$OUT/ctr.fitted.json" -o "$OUT/ctr.features.csv"

echo; echo "== train, register, promote and score"
HOME_DIR="$OUT/home"
rm -rf "$HOME_DIR"
"$KILN" --home "$HOME_DIR" train --data "$data" --target label --experiment quickstart \
  --spec examples/breast_cancer.spec.toml --epochs 40 --register breast-cancer
"$KILN" --home "$HOME_DIR" models promote breast-cancer 1 --expect none --reason "first version"
"$KILN" --home "$HOME_DIR" models show breast-cancer
"$KILN" --home "$HOME_DIR" predict --model breast-cancer --data "$data" -o "$OUT/breast_cancer.predictions.csv"

echo; echo "== the retraining pipeline: every step, then the same run again from the cache"
pipeline=examples/pipelines/retrain.toml
# shellcheck disable=SC2086
"$KILN" --home "$HOME_DIR" pipeline run "$pipeline" ${PIPELINE_ARGS:-}
# shellcheck disable=SC2086
"$KILN" --home "$HOME_DIR" pipeline run "$pipeline" ${PIPELINE_ARGS:-}
"$KILN" --home "$HOME_DIR" pipeline runs

echo; echo "== kiln up: both models served, the pipeline scheduled, then stop"
"$KILN" --home "$HOME_DIR" up --pipeline "$pipeline" --addr 127.0.0.1:0 2>"$OUT/serve.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
url=""
for _ in $(seq 100); do
  url=$(grep -o 'http://[0-9.:]*' "$OUT/serve.log" | head -n 1 || true)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { cat "$OUT/serve.log" >&2; exit 1; }
row=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) name[i] = $i }
  NR == 2 { s = ""; for (i = 1; i <= NF; i++) if (name[i] != "label") s = s (s == "" ? "" : ", ") "\"" name[i] "\": " $i
    print "{" s "}"; exit }' "$data")
echo "TF Serving:  $(curl -sf "$url/v1/models/breast-cancer:predict" -d "{\"instances\": [$row]}")"
echo "MLflow:      $(curl -sf "$url/invocations?model=breast-cancer" -H 'content-type: application/json' -d "{\"dataframe_records\": [$row]}")"
echo "V2 metadata: $(curl -sf "$url/v2/models/breast-cancer" | head -c 120)…"
ctr='{"i1": 1, "i2": 3, "i3": 0.3, "i4": null, "i5": 120, "i6": 4, "i7": 900, "i8": 0.001, "c1": "c1_0", "c2": "c2_0", "c3": "c3_3", "c4": "c4_1", "c5": "c5_d"}'
echo "ctr (pushed by the pipeline), MLflow: $(curl -sf "$url/invocations?model=ctr" -H 'content-type: application/json' -d "{\"dataframe_records\": [$ctr]}")"
echo "pipelines:   $(curl -sf "$url/api/pipelines")"
echo "web UI:      $url/ui ($(curl -sf -o /dev/null -w '%{http_code}' "$url/ui/models"))"
kill -TERM "$server"
wait "$server"
