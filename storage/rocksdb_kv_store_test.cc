// RocksDB-specific behaviour: persistence across reopen, crash semantics of kSync and kDeferred
// writes (a forked child that dies without closing the database), locking, schema checks.
#include "storage/rocksdb_kv_store.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "storage/kv_store_test_util.h"
#include "tests/testing/crash_child.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::storage {
namespace {

using ::moec::storage::testing::StoreHolder;
using ::moec::testing::IsOkAndHolds;
using ::moec::testing::StatusIs;
using ::moec::testing::TempDir;

MOEC_CRASH_CHILD(WriteThenCrash) {
  auto kv = RocksDbKvStore::Open(StoreHolder::Options(arg));
  if (!kv.ok()) return 1;
  if (!(*kv)->Put("factors", "flushed", "a", Durability::kDeferred).ok()) return 2;
  if (!(*kv)->Flush("factors").ok()) return 3;
  if (!(*kv)->Put("meta", "synced", "b", Durability::kSync).ok()) return 4;
  if (!(*kv)->Put("factors", "unflushed", "c", Durability::kDeferred).ok()) return 5;
  if (!(*kv)->Put("meta", "buffered", "d", Durability::kBuffered).ok()) return 6;
  _exit(0);  // crash: the database is never closed, nothing is flushed
}

TEST(RocksDbKvStoreTest, SyncWritesSurviveReopen) {
  TempDir dir;
  auto opts = StoreHolder::Options(dir.path());
  {
    ASSERT_OK_AND_ASSIGN(auto kv, RocksDbKvStore::Open(opts));
    KvWriteBatch b;
    b.Put("meta", "job/1", "running");
    b.Put("factors", "f", std::string(100000, 'x'));
    ASSERT_OK(kv->Write(b, Durability::kSync));
  }
  ASSERT_OK_AND_ASSIGN(auto kv, RocksDbKvStore::Open(opts));
  EXPECT_THAT(kv->Get("meta", "job/1"), IsOkAndHolds("running"));
  EXPECT_THAT(kv->Get("factors", "f"), IsOkAndHolds(std::string(100000, 'x')));
}

TEST(RocksDbKvStoreTest, CrashKeepsSyncBufferedAndFlushedWritesAndDropsUnflushedDeferredOnes) {
  TempDir dir;
  auto opts = StoreHolder::Options(dir.path());
  ASSERT_EQ(::moec::testing::RunCrashChild("WriteThenCrash", dir.path()), 0);
  ASSERT_OK_AND_ASSIGN(auto kv, RocksDbKvStore::Open(opts));
  EXPECT_THAT(kv->Get("factors", "flushed"), IsOkAndHolds("a"));
  EXPECT_THAT(kv->Get("meta", "synced"), IsOkAndHolds("b"));
  EXPECT_THAT(kv->Get("factors", "unflushed"), StatusIs(absl::StatusCode::kNotFound));
  // A process crash (not a machine crash) keeps WAL writes that were not fsynced.
  EXPECT_THAT(kv->Get("meta", "buffered"), IsOkAndHolds("d"));
}

// Buffered writes from several threads, each made durable by SyncLog (the coordinator's group
// commit): every write is kept, and the log was synced at most once per call (the real WAL's
// syncs are shared when calls overlap; storage/group_sync_test.cc checks the sharing itself).
TEST(RocksDbKvStoreTest, SyncLogFromManyThreadsKeepsEveryWrite) {
  TempDir dir;
  auto opts = StoreHolder::Options(dir.path());
  constexpr int kThreads = 4, kEach = 50;
  {
    ASSERT_OK_AND_ASSIGN(auto kv, RocksDbKvStore::Open(opts));
    ASSERT_OK(kv->SyncLog());  // nothing logged yet: no sync needed
    EXPECT_EQ(kv->log_syncs(), 0);
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kEach; ++i) {
          KvWriteBatch b;
          b.Put("meta", absl::StrCat("k", t, "/", i), "v");
          if (!kv->Write(b, Durability::kBuffered).ok() || !kv->SyncLog().ok()) ++failures;
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_GE(kv->log_syncs(), 1);
    EXPECT_LE(kv->log_syncs(), kThreads * kEach);
    const int64_t syncs = kv->log_syncs();
    ASSERT_OK(kv->SyncLog());  // everything is synced already
    EXPECT_EQ(kv->log_syncs(), syncs);
  }
  ASSERT_OK_AND_ASSIGN(auto kv, RocksDbKvStore::Open(opts));
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kEach; ++i) EXPECT_THAT(kv->Get("meta", absl::StrCat("k", t, "/", i)), IsOkAndHolds("v"));
  }
}

TEST(RocksDbKvStoreTest, SecondOpenOfSameDatabaseFails) {
  TempDir dir;
  auto opts = StoreHolder::Options(dir.path());
  ASSERT_OK_AND_ASSIGN(auto kv, RocksDbKvStore::Open(opts));
  EXPECT_THAT(RocksDbKvStore::Open(opts), StatusIs(absl::StatusCode::kFailedPrecondition, "lock"));
}

TEST(RocksDbKvStoreTest, RefusesUnknownColumnFamiliesAndBadOptions) {
  TempDir dir;
  auto opts = StoreHolder::Options(dir.path());
  { ASSERT_OK_AND_ASSIGN(auto kv, RocksDbKvStore::Open(opts)); }
  auto fewer = opts;
  fewer.column_families = {{"meta", false}};
  EXPECT_THAT(RocksDbKvStore::Open(fewer),
              StatusIs(absl::StatusCode::kFailedPrecondition, "'factors'"));
  auto dup = opts;
  dup.column_families.push_back({"meta", false});
  EXPECT_THAT(RocksDbKvStore::Open(dup), StatusIs(absl::StatusCode::kInvalidArgument, "duplicate"));
  RocksDbKvStoreOptions empty;
  EXPECT_THAT(RocksDbKvStore::Open(empty), StatusIs(absl::StatusCode::kInvalidArgument, "path"));
}

}  // namespace
}  // namespace moec::storage
