#!/usr/bin/env bash
# Builds the coordinator, worker, comm and storage tests (and the tokenizer and model runtime's
# annotated code) with clang, ThreadSanitizer and -Wthread-safety as errors, then runs the tests:
# a data race or a lock-annotation violation fails it. `.ci/run` runs it (through deploy/test.sh).
# Usage: tests/checks/tsan.sh [BUILD_DIR]   (default build-tsan)
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build-tsan}
cmake -S . -B "$B" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DMOEC_TSAN=ON -DCMAKE_DISABLE_PRECOMPILE_HEADERS=ON -DMOEC_ENABLE_CUDA=OFF -DMOEC_BUILD_FUZZERS=OFF -DMOEC_BUILD_BENCHMARKS=OFF \
  > /dev/null
targets=(coordinator_test storage_test worker_test comm_test tokenizer_test
         model/runtime/CMakeFiles/moec_model_runtime.dir/forward.cc.o)
cmake --build "$B" -j "$(nproc)" --target "${targets[@]}"
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/checks/tsan.supp"
export OMP_NUM_THREADS=1  # libgomp's barriers are not visible to TSan
# RocksDB's write group has one thread copy the others' batches, ordered by RocksDB's own
# (uninstrumented) synchronization: the tests of many threads writing to RocksDB at once are left
# out (their in-memory twins run).
# Likewise Gloo's groups live in libtorch's threads: comm_test runs its in-memory groups (moec's
# own code); worker_test still forms a Gloo gang through the coordinator.
declare -A FILTER=(
  [storage/storage_test]=-RocksDbKvStoreTest.SyncLogFromManyThreadsKeepsEveryWrite:*/KvStoreParityTest.ConcurrentWritersAllLand/RocksDb
  [comm/comm_test]=-*Gloo*)
status=0
for t in coordinator/coordinator_test storage/storage_test worker/worker_test comm/comm_test; do
  echo "== $t under ThreadSanitizer"
  "$B/$t" --gtest_brief=1 --gtest_filter="${FILTER[$t]:-*}" || status=1
done
exit $status
