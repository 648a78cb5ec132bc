#!/usr/bin/env bash
# kiln's main job on bundled data: describe a dataset, infer and check its schema, fit feature
# transforms and write model-ready features; then the same on synthetic click-through data;
# then train a model on it, register it, promote it to production and score the file with it.
#
#   KILN   the kiln binary (default: the release build in $CARGO_TARGET_DIR or target/)
#   OUT    where results go (default: target/quickstart)
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
"$KILN" --home "$HOME_DIR" predict --model breast-cancer@production --data "$data" -o "$OUT/breast_cancer.predictions.csv"
