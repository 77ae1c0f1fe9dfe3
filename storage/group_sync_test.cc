// GroupSync's group commit, with a fake log whose syncs the test holds open: which calls sync,
// which share a sync, and that a write logged while a sync runs is never taken as covered by it.
#include "storage/group_sync.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace moec::storage {
namespace {

// A log: `seq` is the last logged write; the first sync blocks until `release` (when armed).
struct FakeLog {
  std::atomic<uint64_t> seq{0};
  std::atomic<int> fail_next{0};
  absl::Notification entered, release;
  std::atomic<bool> hold_first{false};
  std::atomic<int> calls{0};
  GroupSync sync{[this] { return seq.load(); },
                 [this]() -> absl::Status {
                   const int n = ++calls;
                   if (n == 1 && hold_first.load()) {
                     entered.Notify();
                     release.WaitForNotification();
                   }
                   if (fail_next.load() > 0) {
                     --fail_next;
                     return absl::DataLossError("disk gone");
                   }
                   return absl::OkStatus();
                 }};
};

TEST(GroupSyncTest, SyncsOnceForWritesLoggedBeforeAndNotAgainWithoutNewWrites) {
  FakeLog log;
  log.seq = 3;
  ASSERT_TRUE(log.sync.Sync().ok());
  EXPECT_EQ(log.sync.syncs(), 1);
  ASSERT_TRUE(log.sync.Sync().ok());  // nothing new was logged
  EXPECT_EQ(log.sync.syncs(), 1);
  log.seq = 4;
  ASSERT_TRUE(log.sync.Sync().ok());
  EXPECT_EQ(log.sync.syncs(), 2);
}

TEST(GroupSyncTest, AWriteLoggedDuringASyncIsNotCoveredByIt) {
  FakeLog log;
  log.hold_first = true;
  log.seq = 1;
  std::thread first([&] { EXPECT_TRUE(log.sync.Sync().ok()); });
  log.entered.WaitForNotification();  // the first sync runs
  log.seq = 2;                        // logged after it began
  std::atomic<bool> second_done{false};
  std::thread second([&] {
    EXPECT_TRUE(log.sync.Sync().ok());
    second_done = true;
  });
  log.release.Notify();
  first.join();
  second.join();
  EXPECT_TRUE(second_done.load());
  EXPECT_EQ(log.sync.syncs(), 2);  // the second caller's write needed a sync of its own
}

TEST(GroupSyncTest, CallersArrivingDuringASyncShareTheNextOne) {
  FakeLog log;
  log.hold_first = true;
  log.seq = 1;
  std::thread first([&] { EXPECT_TRUE(log.sync.Sync().ok()); });
  log.entered.WaitForNotification();
  std::vector<std::thread> later;
  for (int i = 0; i < 6; ++i) {
    ++log.seq;  // six writes logged while the first sync runs
    later.emplace_back([&] { EXPECT_TRUE(log.sync.Sync().ok()); });
  }
  log.release.Notify();
  first.join();
  for (auto& t : later) t.join();
  // However the six interleave, the first of them to sync covers all six.
  EXPECT_EQ(log.sync.syncs(), 2);
}

TEST(GroupSyncTest, AFailedSyncReachesTheCallerAndTheNextCallSyncsAgain) {
  FakeLog log;
  log.seq = 5;
  log.fail_next = 1;
  absl::Status s = log.sync.Sync();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(log.sync.Sync().ok());  // not marked synced by the failure
  EXPECT_EQ(log.sync.syncs(), 2);
}

}  // namespace
}  // namespace moec::storage
