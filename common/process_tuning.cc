#include "common/process_tuning.h"

#include <malloc.h>
#include <unistd.h>

#include <cstdlib>
#include <utility>

#include "absl/synchronization/mutex.h"

namespace moec {

void TuneMallocForLargeBuffers() {
  // 32 MiB is the largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

void SkipMutexDeadlockDetection() {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

namespace {
constexpr std::pair<const char*, const char*> kPassiveThreadWait[] = {
    {"OMP_WAIT_POLICY", "PASSIVE"}, {"OPENBLAS_THREAD_TIMEOUT", "4"}};
}  // namespace

std::vector<std::string> PassiveThreadWaitEnvironment() {
  std::vector<std::string> missing;
  for (const auto& [name, value] : kPassiveThreadWait) {
    if (std::getenv(name) == nullptr) missing.push_back(std::string(name) + "=" + value);
  }
  return missing;
}

void UsePassiveThreadWait(char** argv) {
  bool changed = false;
  for (const auto& [name, value] : kPassiveThreadWait) {
    if (std::getenv(name) != nullptr) continue;  // the user's own setting is kept
    setenv(name, value, 1);
    changed = true;
  }
  if (!changed) return;
  execv("/proc/self/exe", argv);  // returns only on failure: run on with the spinning defaults
}

}  // namespace moec
