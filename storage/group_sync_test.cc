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

namespace moec::storage {
namespace {

// A sync the test can hold open and make fail.
struct FakeSyncer {
  std::atomic<int> calls{0};
  std::atomic<int> fail_next{0};
  std::atomic<bool> hold{false};
  absl::Mutex mu;
  bool released ABSL_GUARDED_BY(mu) = false;
  std::vector<absl::Time> starts ABSL_GUARDED_BY(mu);
  absl::Status Sync() {
    ++calls;
    {
      absl::MutexLock lock(&mu);
      starts.push_back(absl::Now());
      if (hold.load()) {
        auto open = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return released; };
        mu.Await(absl::Condition(&open));
      }
    }
    if (fail_next.load() > 0) {
      --fail_next;
      return absl::DataLossError("disk gone");
    }
    return absl::OkStatus();
  }
  void Release() {
    absl::MutexLock lock(&mu);
    released = true;
  }
};

TEST(BackgroundSyncTest, AKickReturnsAtOnceAndItsWriteIsSyncedByTheThread) {
  FakeSyncer log;
  log.hold = true;
  BackgroundSync bg([&] { return log.Sync(); }, absl::ZeroDuration());
  bg.Kick();  // returns although the sync it causes is held open
  while (log.calls.load() == 0) absl::SleepFor(absl::Milliseconds(1));
  for (int i = 0; i < 5; ++i) bg.Kick();  // logged during the held sync: not covered by it
  log.Release();
  ASSERT_TRUE(bg.Flush().ok());
  // The held sync, then at least one more for the kicks made while it ran (and Flush's own).
  EXPECT_GE(log.calls.load(), 2);
  EXPECT_LE(log.calls.load(), 3);
  EXPECT_EQ(bg.failures(), 0);
}

TEST(BackgroundSyncTest, SyncsAreAtLeastTheIntervalApartAndKicksInBetweenShareOne) {
  FakeSyncer log;
  const absl::Duration interval = absl::Milliseconds(150);
  BackgroundSync bg([&] { return log.Sync(); }, interval);
  ASSERT_TRUE(bg.Flush().ok());  // the first sync starts at once
  for (int i = 0; i < 10; ++i) bg.Kick();
  ASSERT_TRUE(bg.Flush().ok());
  absl::MutexLock lock(&log.mu);
  ASSERT_EQ(log.starts.size(), 2u);  // ten kicks and a flush: one sync
  EXPECT_GE(log.starts[1] - log.starts[0], interval);
}

TEST(BackgroundSyncTest, TheDestructorSyncsWhatWasKickedWithoutWaitingForTheInterval) {
  FakeSyncer log;
  const absl::Time start = absl::Now();
  {
    BackgroundSync bg([&] { return log.Sync(); }, absl::Seconds(10));
    ASSERT_TRUE(bg.Flush().ok());
    bg.Kick();  // within the interval: the destructor must still sync it, and at once
  }
  EXPECT_EQ(log.calls.load(), 2);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(BackgroundSyncTest, AFailedSyncIsReportedAndCountedAndTheNextKickSyncsAgain) {
  FakeSyncer log;
  log.fail_next = 1;
  BackgroundSync bg([&] { return log.Sync(); }, absl::ZeroDuration());
  EXPECT_EQ(bg.Flush().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(bg.failures(), 1);
  EXPECT_TRUE(bg.Flush().ok());
  EXPECT_EQ(bg.syncs(), 2);
}

TEST(BackgroundSyncTest, AfterSyncCallsBackOnceASyncThatBeganLaterHasEnded) {
  FakeSyncer log;
  log.hold = true;
  BackgroundSync bg([&] { return log.Sync(); }, absl::Seconds(10));
  bg.Kick();  // starts the first sync at once, which is held open
  while (log.calls.load() == 0) absl::SleepFor(absl::Milliseconds(1));
  std::atomic<int> called{0};
  absl::Notification done;
  absl::Status got = absl::UnknownError("not called");
  bg.AfterSync([&](absl::Status s) {  // made during the held sync: that one does not cover it
    got = s;
    ++called;
    done.Notify();
  });  // returns at once although no sync can end now
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(called.load(), 0);
  log.Release();
  // The next sync does not wait out the 10 s interval for a caller that waits for it.
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(called.load(), 1);
  EXPECT_TRUE(got.ok());
  EXPECT_EQ(log.calls.load(), 2);
}

TEST(BackgroundSyncTest, AfterSyncGetsTheFailureAndTheDestructorCallsTheOutstandingOnes) {
  FakeSyncer log;
  log.fail_next = 1;
  std::vector<absl::StatusCode> codes;
  absl::Mutex mu;
  {
    BackgroundSync bg([&] { return log.Sync(); }, absl::ZeroDuration());
    absl::Notification first;
    bg.AfterSync([&](absl::Status s) {
      absl::MutexLock lock(&mu);
      codes.push_back(s.code());
      first.Notify();
    });
    first.WaitForNotification();
    for (int i = 0; i < 3; ++i) {
      bg.AfterSync([&](absl::Status s) {
        absl::MutexLock lock(&mu);
        codes.push_back(s.code());
      });
    }
  }  // the destructor syncs and calls those three
  absl::MutexLock lock(&mu);
  EXPECT_EQ(codes, (std::vector<absl::StatusCode>{absl::StatusCode::kDataLoss, absl::StatusCode::kOk,
                                                  absl::StatusCode::kOk, absl::StatusCode::kOk}));
}

}  // namespace
}  // namespace moec::storage
