#!/usr/bin/env bash
# Re-measures the structural table of docs/results.md on the tiny trained Mixtral: Lu et al.'s
# subset search (layerwise, progressive; r = 6, 4) and dynamic skipping, He et al.'s expert drop
# (layerwise, global, seeded random), layer and block drop, expert weight pruning. Each
# configuration is one `moec run` in one fresh data directory; prints the report's row for the
# result: perplexity, size, average bits, parameters, activated parameters (static, measured).
# The subset search also runs as a gang of 2 workers, whose export must be the same bytes.
# Usage: tests/quality/structural_table.sh [BUILD_DIR]   (about 3 minutes on 2 cores)
# Needs models/tiny-mixtral (moec make-tiny-model models/tiny-mixtral --arch mixtral --trained).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
M=$B/client/moec
[ -f models/tiny-mixtral/config.json ] ||
  { echo "no models/tiny-mixtral: moec make-tiny-model models/tiny-mixtral --arch mixtral --trained" >&2; exit 1; }
W=$(mktemp -d /tmp/moec-structural-table.XXXXXX)
D=$W/data; O=$W/out; mkdir -p "$O"
run() {
  local name=$1; shift
  $M run "$@" --data-dir "$D" --set output="$O/$name" --set name="$name" > "$O/$name.log" 2>&1 ||
    { cat "$O/$name.log" >&2; echo "FAILED $name" >&2; exit 1; }
  printf '%-22s %s\n' "$name" "$(grep -E '^\| eval' "$O/$name.log" | grep -v original | head -1)"
}
for r in 6 4; do
  for mode in layerwise progressive; do
    run prune-r$r-$mode recipes/expert-prune.yaml --set stages.prune.with.keep=$r --set stages.prune.with.mode=$mode
  done
  run drop-r$r recipes/expert-drop.yaml --set stages.drop.with.keep=$r
  run drop-r$r-global recipes/expert-drop.yaml --set stages.drop.with.keep=$r --set stages.drop.with.mode=global
  for s in 0 1; do
    run random-r$r-s$s recipes/expert-drop.yaml --set stages.drop.with.keep=$r --set stages.drop.with.random=true \
      --set stages.drop.with.seed=$s
  done
done
# The data plane: the same search as a gang of 2 worker processes exports the same bytes.
$M run recipes/expert-prune.yaml --set stages.prune.with.keep=4 --set stages.prune.with.mode=progressive \
  --set workers=2 --workers 2 --data-dir "$W/gang" --set output="$O/prune-gang2" > "$O/prune-gang2.log" 2>&1 ||
  { cat "$O/prune-gang2.log" >&2; exit 1; }
if cmp -s "$O/prune-gang2/model.safetensors" "$O/prune-r4-progressive/model.safetensors"; then
  echo "prune-r4-progressive on a gang of 2: the same bytes"
else
  echo "prune-r4-progressive on a gang of 2 differs from 1 worker" >&2; exit 1
fi
run dynamic-skip recipes/lu-dynamic-skip.yaml
for n in 1 2; do
  run layer-drop-$n recipes/layer-drop.yaml --set stages.ldrop.with.drop=$n
  run block-drop-$n recipes/block-drop.yaml --set stages.bdrop.with.drop=$n
done
run block-drop-2-consecutive recipes/block-drop.yaml --set stages.bdrop.with.drop=2 --set stages.bdrop.with.mode=consecutive
for method in wanda sparsegpt; do
  for pattern in unstructured 2:4; do
    run "$method-${pattern/:/of}" recipes/prune-weights.yaml --set stages.slim.with.method=$method \
      --set stages.slim.with.pattern=$pattern
  done
done
run magnitude recipes/prune-weights.yaml --set stages.slim.with.method=magnitude
rm -rf "$W"
