// GroupSync: group commit for a write-ahead log. Writers append to the log without syncing
// (each write gets an increasing sequence number), then call Sync(): one caller at a time
// syncs the log, covering every write logged before its sync began, and callers whose writes
// that sync covers return without syncing themselves. A caller waits for at most the sync in
// progress plus one more, so N concurrent committers share ~1-2 syncs instead of queueing for N.
//
// This is what lets the coordinator commit a completion under its mutex without syncing (so the
// mutex is held for a memtable insert, not an fdatasync) and make it durable after releasing the
// mutex: the log is append-only and in commit order, so a sync that covers a write covers every
// write before it (a machine crash leaves a prefix of the commits, never a hole).
#ifndef MOEC_STORAGE_GROUP_SYNC_H_
#define MOEC_STORAGE_GROUP_SYNC_H_

#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace moec::storage {

// Thread-safe.
class GroupSync {
 public:
  // `last_sequence`: the sequence number of the latest write that has reached the log (every
  // write with a smaller or equal number has too). `sync_log`: makes everything in the log
  // durable (fdatasync); called by one thread at a time.
  GroupSync(std::function<uint64_t()> last_sequence, std::function<absl::Status()> sync_log)
      : last_sequence_(std::move(last_sequence)), sync_log_(std::move(sync_log)) {}

  // Returns once every write that reached the log before this call is durable. Errors: those of
  // sync_log (each caller whose writes a failed sync would have covered syncs again itself, so
  // an error reaches every caller it concerns).
  absl::Status Sync();

  int64_t syncs() const;  // sync_log calls so far
  absl::Duration sync_time() const;  // time spent in them

 private:
  const std::function<uint64_t()> last_sequence_;
  const std::function<absl::Status()> sync_log_;
  mutable absl::Mutex mu_;
  bool syncing_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t synced_ ABSL_GUARDED_BY(mu_) = 0;  // every write up to this sequence is durable
  int64_t syncs_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration sync_time_ ABSL_GUARDED_BY(mu_);
};

// Keeps a log synced without anyone waiting for it: a writer logs without syncing and calls
// Kick(); a thread of this class then syncs (through `sync`, typically KvStore::SyncLog, so its
// syncs are shared with callers that do wait). Syncs run back to back while writes keep coming,
// at least `min_interval` apart, so a kicked write is durable within about one interval plus two
// syncs. A failed sync is logged and counted; the next kick syncs again (RocksDB refuses further
// writes after a failed WAL sync, so the writers see the error themselves).
// Thread-safe. The destructor syncs what was kicked before it, then joins the thread.
class BackgroundSync {
 public:
  BackgroundSync(std::function<absl::Status()> sync, absl::Duration min_interval);
  ~BackgroundSync();
  BackgroundSync(const BackgroundSync&) = delete;
  BackgroundSync& operator=(const BackgroundSync&) = delete;

  // Asks for a sync that begins after this call.
  void Kick();
  // Returns once a sync that began after this call has ended (for tests and shutdown paths).
  absl::Status Flush();
  // Calls `done` with the result of a sync that begins after this call, on this class's thread,
  // without blocking the caller (for gRPC callback handlers, which must not wait on a disk).
  // That sync starts without waiting out the interval. `done` must be quick and must not call
  // this object; the destructor calls the outstanding ones after its last sync.
  void AfterSync(std::function<void(absl::Status)> done);

  int64_t syncs() const;
  int64_t failures() const;

 private:
  void Loop();

  const std::function<absl::Status()> sync_;
  const absl::Duration min_interval_;
  mutable absl::Mutex mu_;
  uint64_t kicked_ ABSL_GUARDED_BY(mu_) = 0;    // kicks so far
  uint64_t covered_ ABSL_GUARDED_BY(mu_) = 0;   // kicks before the start of the last ended sync
  absl::Status last_ ABSL_GUARDED_BY(mu_);      // result of the last ended sync
  std::vector<std::function<void(absl::Status)>> after_ ABSL_GUARDED_BY(mu_);  // AfterSync
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool exited_ ABSL_GUARDED_BY(mu_) = false;
  int64_t syncs_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t failures_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

}  // namespace moec::storage

#endif  // MOEC_STORAGE_GROUP_SYNC_H_
