// One suite, run against every KvStore backend.
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/kv_store.h"
#include "storage/kv_store_test_util.h"
#include "tests/testing/status_matchers.h"

namespace moec::storage {
namespace {

using ::moec::storage::testing::Backend;
using ::moec::storage::testing::StoreHolder;
using ::moec::testing::IsOkAndHolds;
using ::moec::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::Pair;

class KvStoreParityTest : public ::testing::TestWithParam<Backend> {
 protected:
  KvStoreParityTest() : holder_(GetParam()) {}
  KvStore& kv() { return *holder_.store(); }
  std::vector<std::pair<std::string, std::string>> All(absl::string_view cf,
                                                       absl::string_view prefix = "") {
    std::vector<std::pair<std::string, std::string>> rows;
    EXPECT_OK(ScanPrefix(kv(), cf, prefix, [&](absl::string_view k, absl::string_view v) {
      rows.emplace_back(k, v);
      return true;
    }));
    return rows;
  }
  StoreHolder holder_;
};

TEST_P(KvStoreParityTest, PutGetAndNotFound) {
  EXPECT_THAT(kv().ColumnFamilies(), ElementsAre("meta", "factors"));
  ASSERT_OK(kv().Put("meta", "k", "v", Durability::kSync));
  EXPECT_THAT(kv().Get("meta", "k"), IsOkAndHolds("v"));
  EXPECT_THAT(kv().Get("meta", "nope"), StatusIs(absl::StatusCode::kNotFound, "nope"));
  EXPECT_THAT(kv().Get("factors", "k"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(kv().Get("bogus", "k"), StatusIs(absl::StatusCode::kInvalidArgument, "bogus"));
  EXPECT_THAT(kv().Put("bogus", "k", "v", Durability::kSync),
              StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_OK(kv().Put("meta", "k", "v2", Durability::kSync));
  EXPECT_THAT(kv().Get("meta", "k"), IsOkAndHolds("v2"));
  ASSERT_OK(kv().Put("meta", std::string("a\0b", 3), std::string("\0\1", 2), Durability::kSync));
  EXPECT_THAT(kv().Get("meta", std::string("a\0b", 3)), IsOkAndHolds(std::string("\0\1", 2)));
}

TEST_P(KvStoreParityTest, ReadPassesViewAndReturnsCallbackStatus) {
  ASSERT_OK(kv().Put("factors", "big", std::string(8 << 20, 'z'), Durability::kSync));
  size_t seen = 0;
  EXPECT_OK(kv().Read("factors", "big", [&](absl::string_view v) {
    seen = v.size();
    return absl::OkStatus();
  }));
  EXPECT_EQ(seen, 8u << 20);
  EXPECT_THAT(kv().Read("factors", "big", [](absl::string_view) { return absl::AbortedError("x"); }),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(kv().Read("factors", "none", [](absl::string_view) { return absl::OkStatus(); }),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(KvStoreParityTest, BatchAppliesInOrderAcrossColumnFamilies) {
  ASSERT_OK(kv().Put("meta", "gone", "1", Durability::kSync));
  KvWriteBatch b;
  b.Put("meta", "a", "1");
  b.Put("factors", "a", "2");
  b.Put("meta", "x", "first");
  b.Delete("meta", "x");
  b.Delete("meta", "gone");
  b.Put("meta", "y", "old");
  b.Put("meta", "y", "new");
  EXPECT_GT(b.ByteSize(), 0u);
  ASSERT_OK(kv().Write(b, Durability::kSync));
  EXPECT_THAT(All("meta"), ElementsAre(Pair("a", "1"), Pair("y", "new")));
  EXPECT_THAT(All("factors"), ElementsAre(Pair("a", "2")));
}

// A batch of Puts alone (RocksDB skips the overwritten ones): the last Put of a key wins, per
// family, whatever lies between.
TEST_P(KvStoreParityTest, PutsOfOneKeyInABatchLeaveTheLastValue) {
  KvWriteBatch b;
  b.Put("meta", "job", "v1");
  b.Put("factors", "job", "other family");
  b.Put("meta", "task", "ready");
  b.Put("meta", "job", "v2");
  b.Put("meta", "task", "leased");
  b.Put("meta", "job", "v3");
  ASSERT_OK(kv().Write(b, Durability::kSync));
  EXPECT_THAT(All("meta"), ElementsAre(Pair("job", "v3"), Pair("task", "leased")));
  EXPECT_THAT(All("factors"), ElementsAre(Pair("job", "other family")));
}

TEST_P(KvStoreParityTest, BatchWithUnknownFamilyAppliesNothing) {
  KvWriteBatch b;
  b.Put("meta", "a", "1");
  b.Put("nope", "b", "2");
  EXPECT_THAT(kv().Write(b, Durability::kSync), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(kv().Get("meta", "a"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(KvStoreParityTest, DeleteRangeIsHalfOpen) {
  for (const char* k : {"a", "b", "b1", "c", "d"}) ASSERT_OK(kv().Put("meta", k, k, Durability::kSync));
  KvWriteBatch b;
  b.DeleteRange("meta", "b", "d");
  b.DeleteRange("meta", "z", "a");  // empty range: no-op
  ASSERT_OK(kv().Write(b, Durability::kSync));
  EXPECT_THAT(All("meta"), ElementsAre(Pair("a", "a"), Pair("d", "d")));
}

TEST_P(KvStoreParityTest, IteratorSeeksInOrderOverSnapshot) {
  for (const char* k : {"k3", "k1", "k2", "j9", "l0"}) ASSERT_OK(kv().Put("meta", k, k, Durability::kSync));
  auto it = kv().NewIterator("meta");
  ASSERT_OK(kv().Put("meta", "k15", "late", Durability::kSync));  // after the snapshot
  it->Seek("k");
  std::vector<std::string> keys;
  for (; it->Valid(); it->Next()) keys.emplace_back(it->key());
  EXPECT_OK(it->status());
  EXPECT_THAT(keys, ElementsAre("k1", "k2", "k3", "l0"));
  EXPECT_THAT(All("meta", "k"), ElementsAre(Pair("k1", "k1"), Pair("k15", "late"), Pair("k2", "k2"),
                                            Pair("k3", "k3")));
  auto bad = kv().NewIterator("bogus");
  bad->Seek("");
  EXPECT_FALSE(bad->Valid());
  EXPECT_THAT(bad->status(), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_P(KvStoreParityTest, DeferredWritesAreVisibleAndFlushSucceeds) {
  ASSERT_OK(kv().Put("factors", "c", "chunk", Durability::kDeferred));
  KvWriteBatch b;
  b.Put("factors", "d", "chunk2");
  ASSERT_OK(kv().Write(b, Durability::kDeferred));
  ASSERT_OK(kv().Put("meta", "buffered", "x", Durability::kBuffered));
  EXPECT_THAT(kv().Get("meta", "buffered"), IsOkAndHolds("x"));
  EXPECT_THAT(kv().Get("factors", "c"), IsOkAndHolds("chunk"));
  EXPECT_THAT(kv().Get("factors", "d"), IsOkAndHolds("chunk2"));
  EXPECT_OK(kv().Flush("factors"));
  EXPECT_THAT(kv().Flush("bogus"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_P(KvStoreParityTest, ConcurrentWritersAllLand) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([this, t] {
      for (int i = 0; i < 50; ++i) {
        KvWriteBatch b;
        b.Put("meta", absl::StrCat("t", t, "/", i), "v");
        EXPECT_OK(kv().Write(b, Durability::kSync));
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(All("meta").size(), 200u);
}

TEST(PrefixSuccessorTest, Cases) {
  EXPECT_EQ(PrefixSuccessor("ab"), "ac");
  EXPECT_EQ(PrefixSuccessor(std::string("a\xff", 2)), "b");
  EXPECT_EQ(PrefixSuccessor(std::string("\xff\xff", 2)), "");
  EXPECT_EQ(PrefixSuccessor(std::string("a\0", 2)), std::string("a\1", 2));
}

INSTANTIATE_TEST_SUITE_P(AllBackends, KvStoreParityTest,
                         ::testing::Values(Backend::kInMemory, Backend::kRocksDb),
                         storage::testing::BackendName);

}  // namespace
}  // namespace moec::storage
