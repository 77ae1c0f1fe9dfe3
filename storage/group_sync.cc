#include "storage/group_sync.h"

#include <algorithm>

#include "glog/logging.h"

namespace moec::storage {

absl::Status GroupSync::Sync() {
  const uint64_t mine = last_sequence_();  // covers every write that returned before the call
  absl::MutexLock lock(&mu_);
  while (synced_ < mine) {
    if (syncing_) {
      // A sync is in flight: it may cover us (it began after our write) or not; wait for it,
      // then look again.
      auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !syncing_; };
      mu_.Await(absl::Condition(&idle));
      continue;
    }
    syncing_ = true;
    ++syncs_;
    // Everything logged by now is in the log file: the sync below covers it all (writes logged
    // once it has begun are not counted as covered; their callers sync again).
    const uint64_t upto = std::max(mine, last_sequence_());
    mu_.Unlock();
    const absl::Time started = absl::Now();
    absl::Status s = sync_log_();
    const absl::Duration took = absl::Now() - started;
    mu_.Lock();
    sync_time_ += took;
    syncing_ = false;
    if (!s.ok()) return s;
    synced_ = std::max(synced_, upto);
  }
  return absl::OkStatus();
}

int64_t GroupSync::syncs() const {
  absl::MutexLock lock(&mu_);
  return syncs_;
}

absl::Duration GroupSync::sync_time() const {
  absl::MutexLock lock(&mu_);
  return sync_time_;
}

BackgroundSync::BackgroundSync(std::function<absl::Status()> sync, absl::Duration min_interval)
    : sync_(std::move(sync)), min_interval_(min_interval) {
  thread_ = std::thread([this] { Loop(); });
}

BackgroundSync::~BackgroundSync() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void BackgroundSync::Kick() {
  absl::MutexLock lock(&mu_);
  ++kicked_;
}

void BackgroundSync::AfterSync(std::function<void(absl::Status)> done) {
  absl::MutexLock lock(&mu_);
  ++kicked_;
  after_.push_back(std::move(done));
}

absl::Status BackgroundSync::Flush() {
  absl::MutexLock lock(&mu_);
  const uint64_t mine = ++kicked_;
  auto done = [this, mine]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return covered_ >= mine || exited_; };
  mu_.Await(absl::Condition(&done));
  return covered_ >= mine ? last_ : absl::CancelledError("background sync stopped");
}

void BackgroundSync::Loop() {
  absl::Time last_start = absl::InfinitePast();
  absl::MutexLock lock(&mu_);
  while (true) {
    auto pending = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return kicked_ > covered_ || stop_; };
    mu_.Await(absl::Condition(&pending));
    if (kicked_ == covered_) {  // stopping with nothing left to sync
      exited_ = true;
      return;
    }
    if (!stop_ && min_interval_ > absl::ZeroDuration() && after_.empty()) {
      // Let the writes of the rest of the interval join this sync (stopping, or someone waiting
      // for it, does not wait).
      auto hurry = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !after_.empty(); };
      mu_.AwaitWithDeadline(absl::Condition(&hurry), last_start + min_interval_);
    }
    const uint64_t upto = kicked_;  // every kick so far was made after its write was logged
    std::vector<std::function<void(absl::Status)>> after;
    after.swap(after_);  // all of them kicked by now: this sync covers them
    last_start = absl::Now();
    mu_.Unlock();
    absl::Status s = sync_();
    for (auto& done : after) done(s);
    mu_.Lock();
    ++syncs_;
    if (!s.ok()) {
      ++failures_;
      LOG(ERROR) << "background log sync: " << s;
    }
    last_ = s;
    covered_ = upto;
  }
}

int64_t BackgroundSync::syncs() const {
  absl::MutexLock lock(&mu_);
  return syncs_;
}

int64_t BackgroundSync::failures() const {
  absl::MutexLock lock(&mu_);
  return failures_;
}

}  // namespace moec::storage
