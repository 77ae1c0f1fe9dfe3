// Process-wide settings that every moec binary applies first thing in main().
#ifndef MOEC_COMMON_PROCESS_TUNING_H_
#define MOEC_COMMON_PROCESS_TUNING_H_

#include <string>
#include <vector>

namespace moec {

// Configures glibc malloc for a process that moves large buffers (factor chunks, tensors):
// buffers up to 32 MiB come from the heap instead of fresh mmaps, and up to 256 MiB of freed
// heap is kept for reuse instead of being returned to the kernel at every free. Without it each
// multi-MiB read pays page faults and page zeroing for a new mapping (measured: RocksDB reads of
// 4 MiB values at ~1 GiB/s instead of ~12 GiB/s; see docs/benchmarks.md). Idempotent.
void TuneMallocForLargeBuffers();

// Turns off absl::Mutex's lock-order graph. Debian builds absl without NDEBUG, so every
// Mutex acquisition in a moec binary updates a process-wide graph of lock orders under a global
// lock (absl's own release default is off); the control plane takes several per RPC. Daemons
// and benchmarks call this; tests keep the detection.
void SkipMutexDeadlockDetection();

// Makes the idle threads of both thread pools in a process that computes with libtorch sleep
// instead of spinning: libgomp's (OMP_WAIT_POLICY=PASSIVE), which libtorch and MKL run on, and
// OpenBLAS's (OPENBLAS_THREAD_TIMEOUT=4, 2^4 cycles instead of 2^28), which GPTQ's LAPACK
// factorisation runs on. Spinning threads of one pool starve the other's and moec's own row
// threads: a GPTQ layer task ran 2.8x slower with 2 threads than with 1
// (tests/bench/expert_parallel_bench), the GPTQ panel phase 1.8x slower, and with OpenBLAS's
// default timeout the lazy updates after a factorisation lost 5-10% (tests/bench/gptq_bench;
// docs/benchmarks.md). Both libraries read the variables when they load, before main, so when
// one is unset this sets it and re-executes the binary with the same arguments (once; a user's
// own settings are kept). Returns only when no re-exec happened.
void UsePassiveThreadWait(char** argv);

// The variables UsePassiveThreadWait sets, as "NAME=VALUE", for those the environment does not
// set: a parent that starts a computing binary passes them in its environment, so the child
// starts once (a re-exec loads libtorch a second time: 0.4 s of a worker's start-up here).
std::vector<std::string> PassiveThreadWaitEnvironment();

}  // namespace moec

#endif  // MOEC_COMMON_PROCESS_TUNING_H_
