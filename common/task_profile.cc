#include "common/task_profile.h"

namespace moec::profile {
namespace {

thread_local TaskProfile* bound = nullptr;

}  // namespace

const char* PhaseName(Phase p) {
  switch (p) {
    case Phase::kOther: return "other";
    case Phase::kLoad: return "load";
    case Phase::kForward: return "forward";
    case Phase::kStatistics: return "statistics";
    case Phase::kSolve: return "solve";
    case Phase::kCommunication: return "communication";
    case Phase::kFactorIo: return "factor_io";
    case Phase::kCount: break;
  }
  return "?";
}

TaskProfile::TaskProfile() : since_(Clock::now()) {}

Phase TaskProfile::Switch(Phase p) {
  const Clock::time_point now = Clock::now();
  totals_[static_cast<int>(current_)].seconds += std::chrono::duration<double>(now - since_).count();
  since_ = now;
  const Phase previous = current_;
  current_ = p;
  return previous;
}

std::array<TaskProfile::Totals, static_cast<int>(Phase::kCount)> TaskProfile::Snapshot() const {
  std::array<Totals, static_cast<int>(Phase::kCount)> t = totals_;
  t[static_cast<int>(current_)].seconds +=
      std::chrono::duration<double>(Clock::now() - since_).count();
  return t;
}

TaskProfile* Current() { return bound; }

BindToThread::BindToThread(TaskProfile* p) : previous_(bound) { bound = p; }

BindToThread::~BindToThread() { bound = previous_; }

}  // namespace moec::profile
