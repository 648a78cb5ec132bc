#!/usr/bin/env bash
# What a step costs when an engine runs it (`kiln pipeline step` in a process of its own, as each
# container runs it) against kiln's local executor (`kiln pipeline run`, every step in one
# process), on the same pipeline: STEPS chained `run` steps that each report a value, and the
# same with a component step (`ingest` of a 2,000-row CSV) in every link.
#
#   cargo build --release --bin kiln
#   STEPS=20 ROUNDS=3 benches/engine_steps.sh
#
# It measures kiln's side only: an engine adds its pod start and artifact transfer on top.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
KILN=${KILN:-$TARGET/release/kiln}
KILN=$(realpath "$KILN")
STEPS=${STEPS:-20}
ROUNDS=${ROUNDS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$KILN" data synth ctr --rows 2000 --seed 1 -o "$work/ctr.csv" >/dev/null 2>&1

write() { # write FILE KIND
  {
    echo 'name = "chain"'
    for i in $(seq 1 "$STEPS"); do
      echo '[[steps]]'
      echo "id = \"s$i\""
      [ "$i" -gt 1 ] && echo "needs = [\"s$((i - 1))\"]"
      if [ "$2" = run ]; then
        echo "run = \"echo n=$i >> \$KILN_VALUES\""
      else
        echo 'uses = "ingest"'
        echo "with = { path = \"$work/ctr.csv\" }"
      fi
    done
  } > "$1"
}

now() { date +%s%N; }

for kind in run ingest; do
  file="$work/$kind.toml"
  write "$file" "$kind"
  for r in $(seq 1 "$ROUNDS"); do
    home="$work/home-$kind-$r"
    t0=$(now)
    "$KILN" --home "$home" pipeline run "$file" --force-all >/dev/null 2>&1
    t1=$(now)
    out="$work/out-$kind-$r"
    for i in $(seq 1 "$STEPS"); do
      "$KILN" --home "$home" pipeline step "$file" "s$i" --inputs "$out" --outputs "$out/s$i" >/dev/null 2>&1
    done
    t2=$(now)
    local_ms=$(( (t1 - t0) / 1000000 ))
    alone_ms=$(( (t2 - t1) / 1000000 ))
    awk -v k="$kind" -v n="$STEPS" -v l="$local_ms" -v a="$alone_ms" 'BEGIN {
      printf "%-7s %d steps: kiln pipeline run %5d ms (%6.1f ms a step)   kiln pipeline step %5d ms (%6.1f ms a step)   %.1fx\n",
        k, n, l, l / n, a, a / n, a / l }'
  done
done
