#!/usr/bin/env bash
# Builds moec and runs every test (unit, integration, fuzz for MOEC_FUZZ_SECONDS each) with CTest.
# Installs the Debian packages it needs first (deploy/ensure-packages.sh: as root, or through
# sudo when some are missing) and the pinned PyPI packages into .venv (deploy/setup-python.sh:
# PyTorch 2.11 with CUDA, whose libtorch moec builds against; about 3 GB the first time).
# Usage: deploy/test.sh [extra ctest args]      e.g. deploy/test.sh -L unit
# Environment: MOEC_BUILD_DIR (default build), MOEC_FUZZ_SECONDS (default 60),
#              MOEC_ENABLE_CUDA (AUTO|ON|OFF, default AUTO).
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/ensure-packages.sh  # as root, or through sudo only when packages are missing
deploy/setup-python.sh     # the pinned PyTorch (libtorch) and check tools, into .venv

build=${MOEC_BUILD_DIR:-build}
jobs=$(nproc)

tests/checks/sizes.sh .venv/bin/lizard

# A CPU-only build must keep working: build and run the kernel tests with CUDA off.
cmake -S . -B "$build-nocuda" -G Ninja -DMOEC_ENABLE_CUDA=OFF -DMOEC_BUILD_FUZZERS=OFF \
  -DMOEC_BUILD_BENCHMARKS=OFF > /dev/null
cmake --build "$build-nocuda" -j "$jobs" --target kernels_test
"$build-nocuda/kernels/kernels_test" --gtest_brief=1

cmake -S . -B "$build" -G Ninja \
  -DMOEC_ENABLE_CUDA="${MOEC_ENABLE_CUDA:-AUTO}" \
  -DMOEC_FUZZ_SECONDS="${MOEC_FUZZ_SECONDS:-60}"
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs" "$@"
# ThreadSanitizer and clang's lock-annotation analysis over the coordinator, worker, comm and
# storage tests (docs/development.md "Thread safety"); skipped when CTest was given a label filter.
if [ $# -eq 0 ]; then
  tests/checks/tsan.sh "$build-tsan"
fi
