#!/usr/bin/env bash
# The GPU check, run from an unpacked bundle (tests/gpu/make_bundle.sh) on a machine with one GPU
# and its own PyTorch 2.x (whose libtorch the bundle's binaries load). Prints and writes to
# $OUT (default ./gpu-check-out) a log per step and summary.txt; every step has a time limit and
# the whole check is meant to finish in under 8 minutes on one H100.
# Usage: ./run.sh [--device cuda|cpu]   (cpu: the same steps with the GPU swapped for the CPU, to
#        check the script and the bundle on a machine without a GPU)
# Environment: PYTHON (default python3, must import torch), OUT.
set -uo pipefail
cd "$(dirname "$0")"
DEVICE=cuda
[ "${1:-}" = "--device" ] && DEVICE=${2:?--device cuda|cpu}
OUT=${OUT:-$PWD/gpu-check-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
summary=$OUT/summary.txt
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

torch_lib=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') ||
  { echo "run.sh: $PY cannot import torch" >&2; exit 1; }
site=$(dirname "$(dirname "$torch_lib")")
nvidia_libs=$(ls -d "$site"/nvidia/*/lib "$site"/nvidia/*/*/lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="$PWD/lib:$torch_lib:$nvidia_libs${LD_LIBRARY_PATH:-}"
export OMP_WAIT_POLICY=PASSIVE
note "gpu check: bundle $(cat COMMIT 2>/dev/null) built for torch $(cat TORCH_VERSION); here torch $("$PY" -c 'import torch; print(torch.__version__)'), device $DEVICE"
"$PY" -c 'import torch; print("gpu:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")' | tee -a "$summary"

# step NAME SECONDS CMD...: runs CMD with a time limit, its output in $OUT/NAME.log.
failed=0
step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || failed=$((failed + 1))
  note "$(printf '%-28s %s in %ds' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")" $((SECONDS - t0)))"
  return $rc
}

# 1. CUDA kernels against their CPU references, and the CPU references themselves.
step kernels_cpu 60 bin/kernels_test --gtest_brief=1
step kernels_cuda 60 bin/kernels_cuda_test --gtest_brief=1
# 2. Stage-level GPU against CPU on tiny random models (skips itself without a GPU).
step gpu_stage_test 180 bin/gpu_stage_test --gtest_brief=1
grep -h "SKIPPED\|PASSED\|FAILED" "$OUT/gpu_stage_test.log" | tail -3 >> "$summary"

# 3. moec run of recipes that together use every stage, CPU workers then workers on the device;
#    perplexities within 0.5%: MC-MoE 2.5 with ODP (calibrate, quant_loss, allocate_bits, gptq,
#    odp, export, evaluate), uniform GPTQ W4 (the ATen solve, quant/gptq_aten.cc), expert
#    pruning (expert_prune's subset search), weight pruning (prune_weights) and block drop with
#    GPTQ (block_drop, restructure).
ppl() { grep -E '^\| eval \| ' "$1" | grep -v 'original:' | awk -F' [|] ' '{print $3}' | head -1; }
for recipe in mc-moe-2.5-odp gptq-uniform expert-prune prune-weights block-drop-gptq; do
  for where in cpu device; do
    dev=$([ $where = cpu ] && echo cpu || echo "$DEVICE")
    step "${recipe}_$where" 240 bin/moec run "recipes/$recipe.yaml" --workers 1 --device "$dev" \
      --data-dir "$OUT/data-$recipe-$where" --set output="$OUT/out-$recipe-$where"
  done
  pc=$(ppl "$OUT/${recipe}_cpu.log"); pg=$(ppl "$OUT/${recipe}_device.log")
  if [ -n "$pc" ] && [ -n "$pg" ]; then
    rel=$(awk -v a="$pc" -v b="$pg" 'BEGIN { d = (b - a) / a; if (d < 0) d = -d; printf "%.5f", d }')
    ok=$(awk -v r="$rel" 'BEGIN { print (r <= 0.005) ? "ok" : "FAILED" }')
    [ "$ok" = ok ] || failed=$((failed + 1))
    note "$recipe perplexity: cpu $pc, $DEVICE $pg, relative difference $rel ($ok, tolerance 0.005)"
  else
    note "$recipe perplexity: not reported (cpu '$pc', $DEVICE '$pg')"
    failed=$((failed + 1))
  fi
done

# 4. Benches on the device, each against that device's fp32 (and bf16) GEMM measured in the same
#    run (docs/benchmarks.md): one layer's forward, the streamed forward with layers loaded ahead
#    (the achieved host-to-device copy overlap), and GPTQ's solve on 4096 x 4096 and 14336 x 4096.
step forward_bench 150 bin/forward_bench --repeats 3 --device "$DEVICE"
step gptq_bench 150 bin/gptq_bench --repeats 2 --device "$DEVICE"
grep -h "ratio\|GFLOP\|overlap" "$OUT/forward_bench.log" "$OUT/gptq_bench.log" | head -20 >> "$summary"

note "gpu check: $failed step(s) failed"
[ $failed -eq 0 ]
