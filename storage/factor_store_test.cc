#include "storage/factor_store.h"

#include <random>

#include "common/status_payloads.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/factor_record.h"
#include "storage/kv_store_test_util.h"
#include "tests/testing/crash_child.h"
#include "tests/testing/status_matchers.h"

namespace moec::storage {
namespace {

using ::moec::storage::testing::Backend;
using ::moec::storage::testing::StoreHolder;
using ::moec::testing::IsOkAndHolds;
using ::moec::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

size_t CountChunks(KvStore& kv) {
  size_t n = 0;
  EXPECT_OK(ScanPrefix(kv, "factors", kFactorChunkPrefix, [&](absl::string_view, absl::string_view) {
    ++n;
    return true;
  }));
  return n;
}

class FactorStoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  FactorStoreTest() : holder_(GetParam()) { Open(); }
  void Open(uint64_t chunk_bytes = 1000) {
    store_.reset();
    FactorStoreOptions opts;
    opts.chunk_bytes = chunk_bytes;
    auto s = FactorStore::Open(holder_.store(), opts);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
  }
  KvStore& kv() { return *holder_.store(); }
  StoreHolder holder_;
  std::unique_ptr<FactorStore> store_;
};

TEST_P(FactorStoreTest, PutCommitGetRoundTripsChunkedTensors) {
  std::string data = RandomBytes(4096 * 4, 1);  // 17 chunks of 1000 bytes
  auto txn = store_->NewTransaction();
  ASSERT_OK(txn->Put("layer.0/hessian", DType::kF32, {64, 64}, data));
  ASSERT_OK(txn->Put("layer.0/empty", DType::kBF16, {0, 3}, ""));
  EXPECT_THAT(store_->Stat("layer.0/hessian"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(txn->Commit());
  ASSERT_OK_AND_ASSIGN(Factor f, store_->Get("layer.0/hessian"));
  EXPECT_EQ(f.data, data);
  EXPECT_EQ(f.info.dtype, DType::kF32);
  EXPECT_THAT(f.info.shape, ElementsAre(64, 64));
  EXPECT_EQ(f.info.num_chunks(), 17u);
  ASSERT_OK_AND_ASSIGN(Factor e, store_->Get("layer.0/empty"));
  EXPECT_TRUE(e.data.empty());
  EXPECT_THAT(e.info.shape, ElementsAre(0, 3));
  std::string buf(data.size(), '\0');
  ASSERT_OK(store_->ReadInto("layer.0/hessian",
                             absl::MakeSpan(reinterpret_cast<uint8_t*>(buf.data()), buf.size())));
  EXPECT_EQ(buf, data);
  EXPECT_THAT(store_->ReadInto("layer.0/hessian", absl::Span<uint8_t>()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store_->List("layer.0/"), IsOkAndHolds(ElementsAre("layer.0/empty", "layer.0/hessian")));
}

TEST_P(FactorStoreTest, StreamingAppendEqualsOneShotPut) {
  std::string data = RandomBytes(3 * 1000 + 17, 2);
  auto txn = store_->NewTransaction();
  ASSERT_OK(txn->Begin("s", DType::kU8, {static_cast<int64_t>(data.size())}));
  size_t pos = 0;
  for (size_t piece : {1, 999, 1, 1500, 333}) {
    ASSERT_OK(txn->Append(absl::string_view(data).substr(pos, piece)));
    pos += piece;
  }
  EXPECT_THAT(txn->End(), StatusIs(absl::StatusCode::kFailedPrecondition, "ended after"));
  ASSERT_OK(txn->Append(absl::string_view(data).substr(pos)));
  EXPECT_THAT(txn->Append("x"), StatusIs(absl::StatusCode::kInvalidArgument, "runs past"));
  ASSERT_OK(txn->End());
  ASSERT_OK(txn->Commit());
  EXPECT_THAT(store_->Get("s"), IsOkAndHolds(::testing::Field(&Factor::data, data)));
}

TEST_P(FactorStoreTest, AbortCurrentDropsThePartialTensorAndChunksReadOneByOne) {
  auto txn = store_->NewTransaction();
  ASSERT_OK(txn->Begin("partial", DType::kU8, {3000}));
  ASSERT_OK(txn->Append(RandomBytes(2500, 12)));
  txn->AbortCurrent();
  ASSERT_OK(txn->Put("whole", DType::kU8, {2500}, RandomBytes(2500, 13)));
  ASSERT_OK(txn->Commit());
  EXPECT_THAT(store_->Stat("partial"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(CountChunks(kv()), 3u);
  ASSERT_OK_AND_ASSIGN(FactorInfo info, store_->Stat("whole"));
  std::string chunk(info.ChunkBytes(2), '\0');
  ASSERT_OK(store_->ReadChunkInto("whole", info, 2,
                                  absl::MakeSpan(reinterpret_cast<uint8_t*>(chunk.data()), chunk.size())));
  EXPECT_EQ(chunk, RandomBytes(2500, 13).substr(2000));
  EXPECT_THAT(store_->ReadChunkInto("whole", info, 3, absl::Span<uint8_t>()),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_P(FactorStoreTest, ExtraWritesCommitWithTensors) {
  auto txn = store_->NewTransaction();
  ASSERT_OK(txn->Put("out", DType::kI32, {2}, std::string(8, '\1')));
  txn->extra_writes().Put("meta", "task/7", "done");
  EXPECT_THAT(kv().Get("meta", "task/7"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(txn->Commit());
  EXPECT_THAT(kv().Get("meta", "task/7"), IsOkAndHolds("done"));
  EXPECT_THAT(txn->Commit(), StatusIs(absl::StatusCode::kFailedPrecondition, "twice"));
}

TEST_P(FactorStoreTest, AbandonedTransactionLeavesNothing) {
  {
    auto txn = store_->NewTransaction();
    ASSERT_OK(txn->Put("a", DType::kU8, {5000}, RandomBytes(5000, 3)));
    ASSERT_OK(txn->Begin("b", DType::kU8, {5000}));
    ASSERT_OK(txn->Append(RandomBytes(2500, 4)));
    EXPECT_THAT(store_->CollectGarbage(), StatusIs(absl::StatusCode::kFailedPrecondition));
  }
  EXPECT_EQ(CountChunks(kv()), 0u);
  EXPECT_THAT(store_->Stat("a"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(FactorStoreTest, OverwriteReplacesGenerationAndDeletesOldChunks) {
  for (uint32_t seed : {5u, 6u}) {
    auto txn = store_->NewTransaction();
    ASSERT_OK(txn->Put("w", DType::kU8, {2500}, RandomBytes(2500, seed)));
    ASSERT_OK(txn->Commit());
  }
  EXPECT_EQ(CountChunks(kv()), 3u);
  EXPECT_EQ(store_->Get("w")->data, RandomBytes(2500, 6));
  ASSERT_OK(store_->Delete("w"));
  EXPECT_EQ(CountChunks(kv()), 0u);
  EXPECT_THAT(store_->Get("w"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(store_->Delete("w"));  // idempotent
}

TEST_P(FactorStoreTest, GarbageCollectionRemovesOrphanChunks) {
  auto txn = store_->NewTransaction();
  ASSERT_OK(txn->Put("live", DType::kU8, {1500}, RandomBytes(1500, 7)));
  ASSERT_OK(txn->Commit());
  txn.reset();
  // Orphans as a crash leaves them: chunks of an uncommitted generation and of an unknown key.
  ASSERT_OK(kv().Put("factors", FactorChunkKey("live", 12345, 0), "x", Durability::kSync));
  ASSERT_OK(kv().Put("factors", FactorChunkKey("dead", 1, 0), "y", Durability::kSync));
  ASSERT_OK(kv().Put("factors", "c/garbage", "z", Durability::kSync));
  EXPECT_THAT(store_->CollectGarbage(), IsOkAndHolds(3u));
  EXPECT_EQ(CountChunks(kv()), 2u);
  EXPECT_EQ(store_->Get("live")->data, RandomBytes(1500, 7));
  EXPECT_THAT(store_->CollectGarbage(), IsOkAndHolds(0u));
}

TEST_P(FactorStoreTest, CorruptionIsDataLossNamingTheKey) {
  auto txn = store_->NewTransaction();
  ASSERT_OK(txn->Put("layer.3/q", DType::kU8, {2500}, RandomBytes(2500, 8)));
  ASSERT_OK(txn->Commit());
  ASSERT_OK_AND_ASSIGN(FactorInfo info, store_->Stat("layer.3/q"));
  std::string chunk1 = FactorChunkKey("layer.3/q", info.generation, 1);
  // A flipped byte in a chunk.
  ASSERT_OK_AND_ASSIGN(std::string bytes, kv().Get("factors", chunk1));
  bytes[10] ^= 0x40;
  ASSERT_OK(kv().Put("factors", chunk1, bytes, Durability::kSync));
  EXPECT_THAT(store_->Get("layer.3/q"),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("'layer.3/q' chunk 1: CRC32C")));
  // Every such error carries the key as a payload (the coordinator re-runs its producer).
  auto key_of = [](const absl::Status& s) { return FactorKeyOf(s).value_or("(none)"); };
  EXPECT_EQ(key_of(store_->Get("layer.3/q").status()), "layer.3/q");
  // A truncated chunk.
  ASSERT_OK(kv().Put("factors", chunk1, "short", Durability::kSync));
  EXPECT_THAT(store_->Get("layer.3/q"), StatusIs(absl::StatusCode::kDataLoss, "has 5 bytes"));
  EXPECT_EQ(key_of(store_->Get("layer.3/q").status()), "layer.3/q");
  // A missing chunk.
  KvWriteBatch del;
  del.Delete("factors", chunk1);
  ASSERT_OK(kv().Write(del, Durability::kSync));
  EXPECT_THAT(store_->Get("layer.3/q"), StatusIs(absl::StatusCode::kDataLoss, "chunk 1 is missing"));
  EXPECT_EQ(key_of(store_->Get("layer.3/q").status()), "layer.3/q");
  // A corrupt header.
  ASSERT_OK(kv().Put("factors", FactorHeaderKey("layer.3/q"), "\xff\xff garbage", Durability::kSync));
  EXPECT_THAT(store_->Stat("layer.3/q"), StatusIs(absl::StatusCode::kDataLoss, "'layer.3/q'"));
  EXPECT_EQ(key_of(store_->Get("layer.3/q").status()), "layer.3/q");
  // Other errors carry none.
  EXPECT_EQ(key_of(store_->Get("absent/x").status()), "(none)");
}

TEST_P(FactorStoreTest, RejectsBadInput) {
  auto txn = store_->NewTransaction();
  EXPECT_THAT(txn->Put("k", DType::kF32, {3}, "abc"),
              StatusIs(absl::StatusCode::kInvalidArgument, "data has 3"));
  EXPECT_THAT(txn->Put("", DType::kF32, {0}, ""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(txn->Put(std::string("a\0b", 3), DType::kF32, {0}, ""),
              StatusIs(absl::StatusCode::kInvalidArgument, "NUL"));
  EXPECT_THAT(txn->Put("k", DType::kF32, {-1}, ""), StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_OK(txn->Put("k", DType::kF32, {1}, "abcd"));
  EXPECT_THAT(txn->Put("k", DType::kF32, {1}, "abcd"),
              StatusIs(absl::StatusCode::kInvalidArgument, "staged twice"));
  ASSERT_OK(txn->Begin("open", DType::kU8, {2}));
  EXPECT_THAT(txn->Commit(), StatusIs(absl::StatusCode::kFailedPrecondition, "unfinished"));
  EXPECT_THAT(store_->Get(std::string(2000, 'k')), StatusIs(absl::StatusCode::kInvalidArgument));
  FactorStoreOptions bad;
  bad.column_family = "nope";
  EXPECT_THAT(FactorStore::Open(&kv(), bad), StatusIs(absl::StatusCode::kInvalidArgument, "nope"));
}

TEST_P(FactorStoreTest, HeldHeadersRecordTensorsOtherStoresKeep) {
  const std::string data = RandomBytes(2500, 3);
  auto txn = store_->NewTransaction();
  const std::vector<std::string> holders = {"as-1", "as-2"};
  ASSERT_OK(txn->PutHeld("fp/hidden.c00000", DType::kF32, {25, 25}, 1234u, holders));
  EXPECT_THAT(txn->PutHeld("fp/x", DType::kF32, {1}, 0u, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("holders")));
  EXPECT_THAT(txn->PutHeld("fp/y", DType::kF32, {3}, 0u, {std::string(200, 'a')}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("holder id")));
  ASSERT_OK(txn->Put("fp/stats", DType::kU8, {2500}, data));
  ASSERT_OK(txn->Commit());
  txn.reset();
  ASSERT_OK_AND_ASSIGN(FactorInfo info, store_->Stat("fp/hidden.c00000"));
  EXPECT_TRUE(info.held());
  EXPECT_THAT(info.holders, ElementsAre("as-1", "as-2"));
  EXPECT_EQ(info.byte_size, 2500u);
  EXPECT_EQ(info.crc32c, 1234u);
  EXPECT_EQ(info.num_chunks(), 0u);
  EXPECT_EQ(CountChunks(kv()), 3u);  // the stored tensor's only
  // Its bytes are not here: a clear refusal, not a checksum error.
  EXPECT_THAT(store_->Get("fp/hidden.c00000"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("as-1,as-2")));
  std::string buf(2500, '\0');
  EXPECT_THAT(store_->ReadInto("fp/hidden.c00000",
                               absl::MakeSpan(reinterpret_cast<uint8_t*>(buf.data()), buf.size())),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  // Listed, deleted and collected like any tensor (a producer's re-run deletes its outputs).
  EXPECT_THAT(store_->List("fp/"), IsOkAndHolds(ElementsAre("fp/hidden.c00000", "fp/stats")));
  ASSERT_OK(store_->Delete("fp/hidden.c00000"));
  EXPECT_THAT(store_->Stat("fp/hidden.c00000"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->CollectGarbage(), IsOkAndHolds(0u));
}

TEST(FactorRecordTest, HeldHeadersRoundTripAndBadOnesAreRefused) {
  FactorInfo info;
  info.dtype = DType::kF32;
  info.shape = {4, 4};
  info.byte_size = 64;
  info.crc32c = 7;
  info.holders = {"as-9"};
  ASSERT_OK_AND_ASSIGN(FactorInfo back, DecodeFactorHeader(EncodeFactorHeader(info), "k"));
  EXPECT_THAT(back.holders, ElementsAre("as-9"));
  EXPECT_EQ(back.num_chunks(), 0u);
  FactorInfo with_chunks = info;  // a held header carries no chunk list
  with_chunks.chunk_size = 16;
  with_chunks.chunk_crc32c = {1, 2, 3, 4};
  EXPECT_THAT(DecodeFactorHeader(EncodeFactorHeader(with_chunks), "k"),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("chunk checksums")));
  FactorInfo many = info;
  many.holders.assign(kMaxFactorHolders + 1, "as-1");
  EXPECT_THAT(DecodeFactorHeader(EncodeFactorHeader(many), "k"),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("holders")));
}

INSTANTIATE_TEST_SUITE_P(AllBackends, FactorStoreTest,
                         ::testing::Values(Backend::kInMemory, Backend::kRocksDb),
                         storage::testing::BackendName);

// RocksDB only: crash in the middle of a transaction and after a commit.
MOEC_CRASH_CHILD(CommitOneThenCrashMidTransaction) {
  auto kv = RocksDbKvStore::Open(StoreHolder::Options(arg));
  if (!kv.ok()) return 1;
  FactorStoreOptions fo;
  fo.chunk_bytes = 1000;
  auto fs = FactorStore::Open(kv->get(), fo);
  if (!fs.ok()) return 2;
  auto t1 = (*fs)->NewTransaction();
  if (!t1->Put("done", DType::kU8, {3000}, RandomBytes(3000, 9)).ok() || !t1->Commit().ok()) return 3;
  auto t2 = (*fs)->NewTransaction();
  if (!t2->Put("half", DType::kU8, {3000}, RandomBytes(3000, 10)).ok()) return 4;
  if (!(*kv)->Flush("factors").ok()) return 5;  // the chunks reach disk, the header never does
  _exit(0);  // crash: no commit, no destructors (a `return` would run them)
}

TEST(FactorStoreCrashTest, UncommittedChunksAreCollectedAndCommittedDataSurvives) {
  ::moec::testing::TempDir dir;
  auto db_opts = StoreHolder::Options(dir.path());
  ASSERT_EQ(::moec::testing::RunCrashChild("CommitOneThenCrashMidTransaction", dir.path()), 0);
  ASSERT_OK_AND_ASSIGN(auto kv, RocksDbKvStore::Open(db_opts));
  EXPECT_EQ(CountChunks(*kv), 6u);  // 3 committed + 3 orphans before collection
  FactorStoreOptions fo;
  fo.chunk_bytes = 1000;
  ASSERT_OK_AND_ASSIGN(auto fs, FactorStore::Open(kv.get(), fo));  // collects at open
  EXPECT_EQ(CountChunks(*kv), 3u);
  EXPECT_THAT(fs->Stat("half"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(fs->Get("done")->data, RandomBytes(3000, 9));
}

TEST(FactorStoreLargeTest, ValuesOver64MiBAreChunkedWithDefaults) {
  StoreHolder holder(Backend::kRocksDb);
  ASSERT_OK_AND_ASSIGN(auto fs, FactorStore::Open(holder.store()));  // default 16 MiB chunks
  std::string data = RandomBytes((64u << 20) + 4096, 11);
  auto txn = fs->NewTransaction();
  ASSERT_OK(txn->Put("big", DType::kU8, {static_cast<int64_t>(data.size())}, data));
  ASSERT_OK(txn->Commit());
  ASSERT_OK_AND_ASSIGN(FactorInfo info, fs->Stat("big"));
  EXPECT_EQ(info.num_chunks(), 5u);
  EXPECT_EQ(info.ChunkBytes(4), 4096u);
  EXPECT_EQ(fs->Get("big")->data, data);
}

}  // namespace
}  // namespace moec::storage
