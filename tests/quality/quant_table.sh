#!/usr/bin/env bash
# Re-measures the quantization table of docs/results.md on the tiny trained Mixtral: RTN and GPTQ
# at 4/3/2 bits (GPTQ over calibration seeds 0-3, with and without act-order / MSE range search),
# GPTQ with mixed expert/attention widths, MC-MoE 2.25/2.5/2.75 (+ODP), 2.0 and 1.5, block drop
# + GPTQ W4. Each configuration is one `moec run` in one fresh data directory (task fingerprints
# cover the calibration settings, so seeds never share outputs); held-out perplexity from the
# job's report, train-text perplexity from `moec eval` (40 windows of 128 tokens).
# Usage: tests/quality/quant_table.sh [BUILD_DIR]   (about 9 minutes on 2 cores; not run by CTest)
# Needs models/tiny-mixtral (moec make-tiny-model models/tiny-mixtral --arch mixtral --trained).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
M=$B/client/moec
TM=models/tiny-mixtral
[ -f $TM/config.json ] || { echo "no $TM: moec make-tiny-model $TM --arch mixtral --trained" >&2; exit 1; }
W=$(mktemp -d /tmp/moec-quant-table.XXXXXX)
D=$W/data; O=$W/out; mkdir -p "$O"
ppl() { grep -E '^\| eval' "$O/$1.log" | grep -v original | head -1 | cut -d'|' -f4 | tr -d ' '; }
train() {
  $M eval "$O/$1" --text $TM/train.txt --seqlen 128 --max-windows 40 --json 2>/dev/null |
    sed -n 's/.*"perplexity":\([0-9.]*\).*/\1/p'
}
run() {
  local name=$1; shift
  $M run "$@" --data-dir "$D" --set output="$O/$name" --set name="$name" > "$O/$name.log" 2>&1 ||
    { cat "$O/$name.log" >&2; echo "FAILED $name" >&2; exit 1; }
  printf '%s heldout=%s train=%s\n' "$name" "$(ppl "$name")" "$(train "$name")"
}
# U: the overrides for every linear at width $1.
uniform() { U=(--set "stages.quant.with.bits=$1" --set "stages.quant.with.attn_bits=$1" --set "stages.quant.with.shared_bits=$1"); }
for b in 4 3 2; do
  run rtn-w$b recipes/rtn-uniform.yaml --set stages.quant.with.bits=$b --set stages.quant.with.attn_bits=$b
  run rtn-w$b-mse recipes/rtn-uniform.yaml --set stages.quant.with.bits=$b --set stages.quant.with.attn_bits=$b \
    --set stages.quant.with.mse=true
  uniform $b
  for s in 0 1 2 3; do
    run gptq-w$b-s$s recipes/gptq-uniform.yaml "${U[@]}" --set calibration.seed=$s
    run gptq-w$b-mse-s$s recipes/gptq-uniform.yaml "${U[@]}" --set calibration.seed=$s --set stages.quant.with.mse=true
    run gptq-w$b-act-s$s recipes/gptq-uniform.yaml "${U[@]}" --set calibration.seed=$s --set stages.quant.with.act_order=true
  done
done
uniform 2; run gptq-e2-a4 recipes/gptq-uniform.yaml "${U[@]}" --set stages.quant.with.attn_bits=4
uniform 3; run gptq-e3-a4 recipes/gptq-uniform.yaml "${U[@]}" --set stages.quant.with.attn_bits=4
uniform 4; run gptq-e4-a3 recipes/gptq-uniform.yaml "${U[@]}" --set stages.quant.with.attn_bits=3
for a in 2.25 2.5 2.75; do run mcmoe-$a recipes/mc-moe-2.5.yaml --set stages.bits.with.average_bits=$a; done
run mcmoe-2.5-odp recipes/mc-moe-2.5-odp.yaml
run mcmoe-2.0 recipes/mc-moe-2.0.yaml
run mcmoe-1.5 recipes/mc-moe-1.5.yaml
run bdrop-gptq recipes/block-drop-gptq.yaml
rm -rf "$W"
