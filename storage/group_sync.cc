#include "storage/group_sync.h"

#include <algorithm>

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

}  // namespace moec::storage
