// The worker's activation store against the real parts: RocksDB under a scratch directory, its
// gRPC server, and a peer reading from it.
#include "worker/activation_store.h"

#include "common/crc32c.h"
#include "common/status_payloads.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::worker {
namespace {

using ::moec::testing::StatusIs;
using ::testing::HasSubstr;

std::string Bytes(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(i * 131 + 7);
  return s;
}

TEST(ActivationStoreTest, KeepsItsIdAndItsTensorsAcrossReopening) {
  moec::testing::TempDir dir;
  std::string id;
  const std::string data = Bytes(4 * 6 * 8);
  {
    ASSERT_OK_AND_ASSIGN(auto store, ActivationStore::Open(dir.path()));
    id = store->id();
    EXPECT_THAT(id, ::testing::StartsWith("as-"));
    ASSERT_OK_AND_ASSIGN(uint32_t crc, store->Put("fp/hidden.c00000", storage::DType::kF32, {6, 8}, data));
    EXPECT_EQ(crc, crc32c::Value(data));
    // A second process on the same directory is refused (RocksDB's lock), not corrupting it.
    EXPECT_FALSE(ActivationStore::Open(dir.path()).ok());
  }
  ASSERT_OK_AND_ASSIGN(auto store, ActivationStore::Open(dir.path()));
  EXPECT_EQ(store->id(), id);
  ASSERT_OK_AND_ASSIGN(std::optional<storage::Factor> f, store->GetIfPresent("fp/hidden.c00000"));
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->data, data);
  ASSERT_OK_AND_ASSIGN(std::optional<storage::Factor> none, store->GetIfPresent("fp/other"));
  EXPECT_FALSE(none.has_value());
  // Another directory is another store.
  moec::testing::TempDir other;
  ASSERT_OK_AND_ASSIGN(auto second, ActivationStore::Open(other.path()));
  EXPECT_NE(second->id(), id);
}

TEST(ActivationStoreTest, PeersReadWhatTheServerHoldsWithTheWorkerTokenOnly) {
  moec::testing::TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto store, ActivationStore::Open(dir.path()));
  const std::string data = Bytes(3 << 20);  // several pieces of the stream
  ASSERT_OK_AND_ASSIGN(uint32_t crc,
                       store->Put("fp/hidden.c00001", storage::DType::kU8, {3 << 20}, data));
  ActivationServerOptions o;
  o.token = "worker-secret";
  ASSERT_OK_AND_ASSIGN(auto server, ActivationServer::Start(store.get(), o));
  EXPECT_THAT(server->address(), ::testing::StartsWith("127.0.0.1:"));
  storage::FactorInfo expected;
  expected.dtype = storage::DType::kU8;
  expected.shape = {3 << 20};
  expected.byte_size = data.size();
  expected.crc32c = crc;

  PeerReader peer({"worker-secret"});
  ASSERT_OK_AND_ASSIGN(storage::Factor f, peer.Get(server->address(), "fp/hidden.c00001", expected));
  EXPECT_EQ(f.data, data);
  EXPECT_EQ(peer.reads(), 1);
  EXPECT_EQ(peer.bytes(), static_cast<int64_t>(data.size()));
  // What the coordinator recorded differs from what the holder has: DataLoss with the key, for
  // the producer's re-run.
  storage::FactorInfo stale = expected;
  stale.crc32c ^= 1;
  absl::StatusOr<storage::Factor> bad = peer.Get(server->address(), "fp/hidden.c00001", stale);
  EXPECT_THAT(bad, StatusIs(absl::StatusCode::kDataLoss, HasSubstr("differs")));
  EXPECT_EQ(FactorKeyOf(bad.status()), "fp/hidden.c00001");
  EXPECT_THAT(peer.Get(server->address(), "fp/missing", expected),
              StatusIs(absl::StatusCode::kNotFound));
  // Another token, or none, is refused.
  PeerReader stranger({"client-secret"});
  EXPECT_THAT(stranger.Get(server->address(), "fp/hidden.c00001", expected),
              StatusIs(absl::StatusCode::kUnauthenticated));
  PeerReader anonymous({});
  EXPECT_THAT(anonymous.Get(server->address(), "fp/hidden.c00001", expected),
              StatusIs(absl::StatusCode::kUnauthenticated));
  // A holder that is gone: Unavailable (the reader waits for it, then gives up).
  const std::string address = server->address();
  server.reset();
  PeerReader late({"worker-secret", "", "", "", 2000});
  const absl::StatusCode gone = late.Get(address, "fp/hidden.c00001", expected).status().code();
  EXPECT_TRUE(gone == absl::StatusCode::kUnavailable || gone == absl::StatusCode::kDeadlineExceeded)
      << gone;
}

TEST(ActivationStoreTest, AServerNeedsATokenOrCertificatesToCheckPeersBy) {
  moec::testing::TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto store, ActivationStore::Open(dir.path()));
  EXPECT_THAT(ActivationServer::Start(store.get(), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("worker token")));
}

}  // namespace
}  // namespace moec::worker
