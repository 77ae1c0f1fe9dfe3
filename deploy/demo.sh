#!/usr/bin/env bash
# The main job, end to end, on a fresh Debian 12 machine: installs the packages moec needs,
# builds it, trains (or reuses) the tiny Mixtral-style model on local English text, then runs
# `moec run recipes/mc-moe-2.5.yaml` — an embedded coordinator with 2 local worker processes:
# router statistics, per-expert quantization losses, the exact CBC bit allocation at 2.5 average
# expert bits, mixed-precision GPTQ, a GPTQ-format export in out/mc-moe-2.5 — and prints the
# report (perplexity and size against the original).
# Usage: deploy/demo.sh   (as root, or as a user with sudo)   Environment: MOEC_BUILD_DIR (default build).
# Running it again reuses the trained model and the finished job (--overwrite: a previous
# out/mc-moe-2.5 from a different job, e.g. after the model changed, is replaced).
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/ensure-packages.sh  # as root, or through sudo only when packages are missing
deploy/setup-python.sh     # the pinned PyTorch (libtorch) and check tools, into .venv

build=${MOEC_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DMOEC_BUILD_FUZZERS=OFF -DMOEC_BUILD_BENCHMARKS=OFF > /dev/null
cmake --build "$build" -j "$(nproc)" --target moec moec-coordinator moec-worker

"$build/client/moec" make-tiny-model models/tiny-mixtral --arch mixtral --trained
"$build/client/moec" run recipes/mc-moe-2.5.yaml --workers 2 --overwrite
