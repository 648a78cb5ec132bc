#!/usr/bin/env bash
# Exports pipelines and a sweep for Argo Workflows and Kubeflow Pipelines (`kiln pipeline export`,
# `kiln sweep --export`) and
# validates them offline with the engines' own models (examples/clients/pipelines_check.py).
# CI runs it; locally:
#   python3 -m venv /var/tmp/kiln-k8s
#   /var/tmp/kiln-k8s/bin/pip install hera==7.1.0 kfp==2.17.3 kfp-kubernetes==2.17.3
#   KILN=target/debug/kiln PYTHON=/var/tmp/kiln-k8s/bin/python examples/clients/pipelines.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
KILN="${KILN:-${CARGO_TARGET_DIR:-target}/debug/kiln}"
PYTHON="${PYTHON:-python3}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
image=ghcr.io/example/kiln:0.1.0
# The example (a schedule, a GPU-able train step, retries, timeouts, an `if`), with and
# without a central kiln; and a fan-out over a list parameter with a GPU step.
cat > "$work/fan.toml" <<'TOML'
name = "fan_out"
[params]
markets = ["us", "eu"]
rows = 500
[[steps]]
id = "make"
for_each = "${params.markets}"
run = "kiln data synth ctr --rows ${params.rows} -o ${outputs}/${item}.csv"
retries = 2
[[steps]]
id = "fit"
needs = ["make"]
run = "echo fitting > ${outputs}/log"
gpu = true
timeout = "10m"
TOML
# Failure handlers: Argo's exit handler (Kubeflow refuses them).
cat > "$work/handlers.toml" <<'TOML'
name = "handlers"
[[steps]]
id = "work"
run = "exit 3"
[[on_failure]]
id = "page"
run = "echo \"$KILN_FAILED_STEP: $KILN_FAILED_ERROR\" > ${outputs}/page.txt"
TOML
"$KILN" pipeline export "$work/handlers.toml" --to argo --image "$image" -o "$work/handlers-argo.yaml" 2>/dev/null
"$PYTHON" examples/clients/pipelines_check.py argo "$work/handlers-argo.yaml"
grep -q '"onExit": "on-failure"' "$work/handlers-argo.yaml"
for engine in argo kfp; do
  "$KILN" pipeline export examples/pipelines/retrain.toml --to "$engine" --image "$image" \
    --registry http://kiln.kiln.svc:8080 -o "$work/retrain-$engine.yaml" 2>/dev/null
  "$KILN" pipeline export examples/pipelines/retrain.toml --to "$engine" --image "$image" \
    -o "$work/alone-$engine.yaml" 2>/dev/null
  "$KILN" pipeline export "$work/fan.toml" --to "$engine" --image "$image" \
    -o "$work/fan-$engine.yaml" 2>/dev/null
  "$KILN" sweep --config examples/breast_cancer.sweep.toml --data examples/data/breast_cancer.csv \
    --target label --register bc --export "$engine" -o "$work/sweep" --image "$image" \
    --registry http://kiln.kiln.svc:8080 2>/dev/null
  "$PYTHON" examples/clients/pipelines_check.py "$engine" \
    "$work/retrain-$engine.yaml" "$work/alone-$engine.yaml" "$work/fan-$engine.yaml" \
    "$work/sweep/sweep-breast-cancer-sweep.$engine.yaml"
done
grep -q '"nvidia.com/gpu": "1"' "$work/fan-argo.yaml"
grep -q 'CronWorkflow' "$work/retrain-argo.yaml"
