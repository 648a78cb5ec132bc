#!/usr/bin/env bash
# Exports a model's deployment as KServe and Kubernetes manifests (`kiln deploy --export`) and
# validates them offline with the engines' own schemas and models
# (examples/clients/manifests_check.py). CI runs it; locally:
#   python3 -m venv /var/tmp/kiln-k8s
#   /var/tmp/kiln-k8s/bin/pip install kubernetes-validate==1.37.0 kserve==0.21.0
#   KILN=target/debug/kiln PYTHON=/var/tmp/kiln-k8s/bin/python examples/clients/manifests.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
KILN="${KILN:-${CARGO_TARGET_DIR:-target}/debug/kiln}"
PYTHON="${PYTHON:-python3}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
home=(--home "$work/home")
data=examples/data/breast_cancer.csv
"$KILN" "${home[@]}" train --data "$data" --target label --model logistic --epochs 2 --register bc >/dev/null 2>&1
"$KILN" "${home[@]}" models import bc tests/fixtures/onnx/forest.onnx --reference "$data" >/dev/null
"$KILN" "${home[@]}" models promote bc 1 >/dev/null
"$KILN" "${home[@]}" models alias set bc challenger 2 >/dev/null
"$KILN" "${home[@]}" deploy bc --split champion=90,challenger=10 >/dev/null
"$KILN" "${home[@]}" deploy bc --export kserve -o "$work/kserve" --image ghcr.io/example/kiln:0.1.0 \
  --storage-uri s3://models/kiln >/dev/null
"$KILN" "${home[@]}" deploy bc --export kubernetes -o "$work/kubernetes" --image ghcr.io/example/kiln:0.1.0 >/dev/null
"$KILN" "${home[@]}" deploy bc --export kubernetes -o "$work/replicas" --image ghcr.io/example/kiln:0.1.0 \
  --registry http://kiln.kiln.svc:8080 >/dev/null
"$PYTHON" examples/clients/manifests_check.py "$work/kserve" "$work/kubernetes" "$work/replicas"
