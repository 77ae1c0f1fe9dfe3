#!/usr/bin/env bash
# Installs every Debian 12 package moec needs to build, test and run (PyPI's PyTorch, for libtorch,
# goes into the project's .venv: deploy/setup-python.sh).
# Idempotent: when everything is already installed it only runs dpkg-query (< 1 s).
# Usage: deploy/setup-debian.sh [--check]   (as root to install; --check only reports what is
# missing: exit 0 when nothing is, 1 otherwise; deploy/ensure-packages.sh picks the right one)
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git clang libclang-rt-14-dev
  # RPC, serialization, base libraries
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libgoogle-glog-dev libgflags-dev libyaml-cpp-dev nlohmann-json3-dev libssl-dev
  prometheus-cpp-dev
  # the dashboard's HTTP server (coordinator/dashboard.h)
  libcivetweb-dev
  # Unicode character classes and normalization for the tokenizer (model/tokenizer/unicode_util.h)
  libicu-dev
  # storage
  librocksdb-dev
  # Gloo's headers, for c10d's ProcessGroupGloo (the library itself is inside libtorch, which
  # comes from PyPI's PyTorch wheel: deploy/setup-python.sh)
  libgloo-dev
  # ILP solver for bit allocation
  coinor-libcbc-dev
  # LAPACK for GPTQ's inverse-Hessian factor (quant/gptq_prepare.cc links liblapack.so.3): OpenBLAS's
  # takes over Debian's alternative. Without it liblapack3 is the unoptimized reference LAPACK,
  # and a 4096-wide factorisation takes 4.5 s instead of 0.22 s.
  libopenblas0-pthread
  # tests and benchmarks; librsvg2-bin renders the report figures for their golden-image test
  libgtest-dev libgmock-dev libbenchmark-dev librsvg2-bin
  # the dashboard's browser test (tests/python/dashboard_e2e_test.py): headless Chromium and
  # the WebDriver that Selenium drives it with
  chromium chromium-driver
  # network-namespace tests, fixtures; python3-venv for the project's .venv (deploy/setup-python.sh)
  iproute2 python3 python3-venv
)

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = "installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-debian: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "setup-debian: missing packages: ${missing[*]}" >&2
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-debian: missing packages: ${missing[*]}" >&2
  echo "setup-debian: run this script as root (sudo $0) to install them" >&2
  exit 1
fi

echo "setup-debian: installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup-debian: done"
