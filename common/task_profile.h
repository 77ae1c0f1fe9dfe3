// Where a task's time goes (docs/cli.md "report"): the worker binds a TaskProfile to the thread
// that runs a stage, and the code the stage calls marks its phases (load and convert weights,
// forward, statistics, solve, communication, factor reads and writes) with ScopedPhase and
// counts the floating-point operations it issues with AddFlops. Phases partition the stage's
// wall time: a phase entered inside another pauses the outer one (a Hessian accumulated inside
// a forward is statistics, not forward), and time outside every phase is kOther. FLOPs belong
// to the phase that is current when they are counted.
//
// With no profile bound to the calling thread (tests, the prefetch thread, ATen's pool) every
// call here is a no-op, so the instrumented code runs unchanged anywhere. Counts are made on
// the thread that issues the work, never inside a parallel region. Torch-free.
#ifndef MOEC_COMMON_TASK_PROFILE_H_
#define MOEC_COMMON_TASK_PROFILE_H_

#include <array>
#include <chrono>
#include <cstdint>

namespace moec::profile {

enum class Phase : int {
  kOther = 0,
  kLoad,           // reading and converting weights (the wait for the prefetched layer)
  kForward,        // the model's layers: attention, routing, experts, head
  kStatistics,     // what observers collect: Hessians, norms, router statistics, captures
  kSolve,          // GPTQ, SparseGPT, Wanda, round-to-nearest, subset search
  kCommunication,  // collectives of a gang
  kFactorIo,       // reading inputs from and writing outputs to the factor store
  kCount,
};

// "other", "load", "forward", "statistics", "solve", "communication", "factor_io".
const char* PhaseName(Phase p);

// One task's time and FLOPs per phase. Single-threaded: only the bound thread touches it.
class TaskProfile {
 public:
  using Clock = std::chrono::steady_clock;
  struct Totals {
    double seconds = 0;
    double flops = 0;
  };

  TaskProfile();
  // Charges the time since the last switch to the current phase and makes `p` current.
  // Returns the phase that was current.
  Phase Switch(Phase p);
  void AddFlops(double flops) { totals_[static_cast<int>(current_)].flops += flops; }
  Phase current() const { return current_; }
  // The totals so far, the current phase charged up to now.
  std::array<Totals, static_cast<int>(Phase::kCount)> Snapshot() const;

 private:
  Phase current_ = Phase::kOther;
  Clock::time_point since_;
  std::array<Totals, static_cast<int>(Phase::kCount)> totals_{};
};

// The profile bound to the calling thread, or null.
TaskProfile* Current();

// Binds `p` to the calling thread for its lifetime (the previous binding comes back after).
class BindToThread {
 public:
  explicit BindToThread(TaskProfile* p);
  ~BindToThread();
  BindToThread(const BindToThread&) = delete;
  BindToThread& operator=(const BindToThread&) = delete;

 private:
  TaskProfile* previous_;
};

// Makes `p` the current phase of the bound profile until the scope ends.
class ScopedPhase {
 public:
  explicit ScopedPhase(Phase p) : profile_(Current()) {
    if (profile_ != nullptr) previous_ = profile_->Switch(p);
  }
  ~ScopedPhase() {
    if (profile_ != nullptr) profile_->Switch(previous_);
  }
  ScopedPhase(const ScopedPhase&) = delete;
  ScopedPhase& operator=(const ScopedPhase&) = delete;

 private:
  TaskProfile* profile_;
  Phase previous_ = Phase::kOther;
};

// Counts `flops` into the bound profile's current phase.
inline void AddFlops(double flops) {
  if (TaskProfile* p = Current()) p->AddFlops(flops);
}

// 2 m n k: the FLOPs of an [m, k] x [k, n] product.
inline double MatmulFlops(int64_t m, int64_t n, int64_t k) {
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
}

}  // namespace moec::profile

#endif  // MOEC_COMMON_TASK_PROFILE_H_
