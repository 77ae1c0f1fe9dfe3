#!/usr/bin/env bash
# Makes the bundle the GPU check carries to a lent GPU machine (tests/gpu/README.md): moec's
# binaries and test programs, stripped, with the shared libraries they need except libtorch's and
# CUDA's (the GPU machine's own PyTorch provides those), the tiny trained Mixtral and the recipes.
# Usage: tests/gpu/make_bundle.sh [BUILD_DIR] [OUT_DIR]   (default build, gpu-bundle)
# OUT_DIR is replaced and packed as OUT_DIR.tar.xz, what travels; that must stay under 64 MiB
# (checked). Needs a build with CUDA
# (MOEC_ENABLE_CUDA=ON or AUTO on a machine with /usr/local/cuda) and models/tiny-mixtral.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
OUT=${2:-gpu-bundle}
limit=$((64 << 20))
grep -q 'MOEC_WITH_CUDA:INTERNAL=ON\|MOEC_WITH_CUDA:BOOL=ON' "$B/CMakeCache.txt" 2>/dev/null ||
  grep -q '^MOEC_ENABLE_CUDA:STRING=\(ON\|AUTO\)' "$B/CMakeCache.txt" ||
  { echo "make_bundle: $B is not a CUDA build" >&2; exit 1; }
[ -f models/tiny-mixtral/config.json ] ||
  { echo "make_bundle: no models/tiny-mixtral ($B/client/moec make-tiny-model models/tiny-mixtral --arch mixtral --trained)" >&2; exit 1; }

bins=(client/moec client/libmoec_torch_commands.so coordinator/moec-coordinator worker/moec-worker kernels/kernels_test
      kernels/kernels_cuda_test tests/gpu_stage_test tests/bench/forward_bench
      tests/bench/gptq_bench)
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/lib" "$OUT/models" "$OUT/recipes"
for b in "${bins[@]}"; do
  [ -x "$B/$b" ] || { echo "make_bundle: $B/$b is missing (build it first)" >&2; exit 1; }
  cp "$B/$b" "$OUT/bin/"
  strip --strip-unneeded "$OUT/bin/$(basename "$b")"
done
# Shared libraries outside libtorch, CUDA and the C runtime: what the GPU machine lacks.
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libstdc\+\+|libgcc_s|libtorch|libc10|libcuda|libcudart|libnccl|libcublas|libcusparse|libcufft|libcurand|libcusolver|libnv|libcupti|libcudnn|libcufile|libgomp|libshm|libcaffe2)'
for b in "${bins[@]}"; do ldd "$B/$b"; done | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
  while read -r name path; do
    if ! [[ $name =~ $skip ]]; then cp -L "$path" "$OUT/lib/$name"; fi
  done
strip --strip-unneeded "$OUT"/lib/* 2>/dev/null || true
cp -r models/tiny-mixtral "$OUT/models/"
rm -f "$OUT/models/tiny-mixtral/moec_training.json"
cp recipes/*.yaml "$OUT/recipes/"
cp tests/gpu/run.sh "$OUT/"
git rev-parse HEAD > "$OUT/COMMIT" 2>/dev/null || true
.venv/bin/python3 -c 'import torch; print(torch.__version__)' > "$OUT/TORCH_VERSION"
tar -C "$(dirname "$OUT")" -cf - "$(basename "$OUT")" | xz -T0 -6 > "$OUT.tar.xz"
size=$(stat -c %s "$OUT.tar.xz")
echo "make_bundle: $OUT.tar.xz is $((size >> 20)) MiB ($(du -sm "$OUT" | cut -f1) MiB unpacked, $(ls "$OUT/lib" | wc -l) libraries), built for torch $(cat "$OUT/TORCH_VERSION")"
[ "$size" -le "$limit" ] || { echo "make_bundle: over the 64 MiB a GPU machine accepts" >&2; exit 1; }
