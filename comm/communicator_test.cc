#include "comm/communicator.h"

#include <ATen/ATen.h>

#include <atomic>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace moec::comm {
namespace {

using Group = std::vector<std::unique_ptr<Communicator>>;

// Forms a group of `size` over Gloo (threads of this process, real TCP on loopback) or in memory.
Group MakeGroup(bool gloo, int size, absl::Duration timeout = absl::Seconds(30)) {
  if (!gloo) return NewLocalGroup(size, timeout);
  auto store = NewMemoryRendezvousStore();
  Group group(size);
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      GlooOptions o;
      o.rank = r;
      o.size = size;
      o.timeout = timeout;
      auto c = NewGlooCommunicator(store, o);
      EXPECT_TRUE(c.ok()) << c.status();
      if (c.ok()) group[r] = std::move(*c);
    });
  }
  for (auto& t : threads) t.join();
  return group;
}

// Runs fn(rank) on one thread per rank.
void OnAllRanks(Group& group, const std::function<void(Communicator&)>& fn) {
  std::vector<std::thread> threads;
  for (auto& c : group) threads.emplace_back([&fn, &c] { fn(*c); });
  for (auto& t : threads) t.join();
}

class CommunicatorTest : public ::testing::TestWithParam<bool> {};

TEST_P(CommunicatorTest, AllToAllWithVariableSplits) {
  for (int size : {1, 2, 3}) {
    Group group = MakeGroup(GetParam(), size);
    ASSERT_EQ(group.size(), static_cast<size_t>(size));
    OnAllRanks(group, [size](Communicator& c) {
      // Rank r sends (r + j) % 3 rows to rank j; row values encode (source, destination, row).
      const int r = c.rank();
      std::vector<int64_t> counts;
      std::vector<at::Tensor> rows;
      for (int j = 0; j < size; ++j) {
        counts.push_back((r + j) % 3);
        for (int64_t i = 0; i < counts.back(); ++i) {
          rows.push_back(at::full({1, 2}, 100.0 * r + 10.0 * j + i, at::kDouble));
        }
      }
      at::Tensor input = rows.empty() ? at::empty({0, 2}, at::kDouble) : at::cat(rows, 0);
      std::vector<int64_t> received;
      auto out = c.AllToAll(input, counts, &received);
      ASSERT_TRUE(out.ok()) << out.status();
      int64_t row = 0;
      for (int src = 0; src < size; ++src) {
        EXPECT_EQ(received[src], (src + r) % 3) << "from " << src;
        for (int64_t i = 0; i < (src + r) % 3; ++i, ++row) {
          EXPECT_EQ((*out)[row][1].item<double>(), 100.0 * src + 10.0 * r + i);
        }
      }
      EXPECT_EQ(out->size(0), row);
    });
  }
}

// A rank with nothing to send or receive still takes part while the others exchange rows.
TEST_P(CommunicatorTest, AllToAllWhereOneRankHasNoRowsAtAll) {
  Group group = MakeGroup(GetParam(), 3);
  for (int repeat = 0; repeat < 3; ++repeat) {
    OnAllRanks(group, [](Communicator& c) {
      // Ranks 0 and 1 swap 2 rows; rank 2 neither sends nor receives.
      std::vector<int64_t> counts(3, 0);
      if (c.rank() < 2) counts[1 - c.rank()] = 2;
      at::Tensor in = at::full({c.rank() < 2 ? 2 : 0, 4}, static_cast<float>(c.rank()));
      std::vector<int64_t> got;
      auto out = c.AllToAll(in, counts, &got);
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_EQ(out->size(0), c.rank() < 2 ? 2 : 0);
      if (c.rank() < 2) {
        EXPECT_EQ((*out)[0][0].item<float>(), 1 - c.rank());
      }
    });
  }
}

TEST_P(CommunicatorTest, ReduceBroadcastGatherBarrier) {
  Group group = MakeGroup(GetParam(), 3);
  OnAllRanks(group, [](Communicator& c) {
    at::Tensor counts = at::full({4}, int64_t{c.rank() + 1}, at::kLong);
    ASSERT_TRUE(c.AllReduceSum(counts).ok());
    EXPECT_TRUE(at::equal(counts, at::full({4}, int64_t{6}, at::kLong)));

    at::Tensor b = at::full({2, 2}, static_cast<float>(c.rank()), at::kFloat);
    ASSERT_TRUE(c.Broadcast(b, 2).ok());
    EXPECT_TRUE(at::equal(b, at::full({2, 2}, 2.0f, at::kFloat)));

    auto all = c.AllGather(at::full({c.rank() + 1, 3}, c.rank(), at::kInt));
    ASSERT_TRUE(all.ok()) << all.status();
    ASSERT_EQ(all->size(), 3u);
    for (int j = 0; j < 3; ++j) {
      EXPECT_TRUE(at::equal((*all)[j], at::full({j + 1, 3}, j, at::kInt))) << j;
    }
    EXPECT_TRUE(c.Barrier().ok());
  });
}

TEST_P(CommunicatorTest, RejectsBadArguments) {
  Group group = MakeGroup(GetParam(), 1);
  auto out = group[0]->AllToAll(at::zeros({3, 2}), {2}, nullptr);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  out = group[0]->AllToAll(at::zeros({3, 2}), {1, 2}, nullptr);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  at::Tensor t = at::zeros({2});
  EXPECT_EQ(group[0]->Broadcast(t, 1).code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(CommunicatorTest, AbsentPeerTimesOutInsteadOfHanging) {
  Group group = MakeGroup(GetParam(), 2, absl::Seconds(1));
  if (group[0] == nullptr) GTEST_SKIP() << "group did not form";
  // Only rank 0 calls: the collective must fail within the timeout.
  const absl::Time start = absl::Now();
  at::Tensor t = at::ones({4});
  absl::Status s = group[0]->AllReduceSum(t);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.code(), ::testing::AnyOf(absl::StatusCode::kDeadlineExceeded,
                                         absl::StatusCode::kUnavailable)) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
}

INSTANTIATE_TEST_SUITE_P(Impl, CommunicatorTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Gloo" : "Local"; });

TEST(GlooTest, RendezvousWithoutPeersIsDeadlineExceeded) {
  GlooOptions o;
  o.rank = 0;
  o.size = 2;
  o.timeout = absl::Seconds(1);
  auto c = NewGlooCommunicator(NewMemoryRendezvousStore(), o);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kDeadlineExceeded) << c.status();
}

// A rendezvous store whose first write of an attempt-0 key fails: the rank that makes it cannot
// connect (as a socket closed mid-handshake on a loaded machine does).
class FlakyStore : public RendezvousStore {
 public:
  FlakyStore() : inner_(NewMemoryRendezvousStore()) {}
  absl::Status Set(const std::string& key, const std::string& value) override {
    if (key.rfind("try0/", 0) == 0 && !failed_.exchange(true)) {
      return absl::UnavailableError("Connection closed by peer");
    }
    return inner_->Set(key, value);
  }
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override {
    return inner_->Get(key, timeout);
  }
  absl::StatusOr<int64_t> Add(const std::string& key, int64_t delta) override {
    return inner_->Add(key, delta);
  }

 private:
  std::shared_ptr<RendezvousStore> inner_;
  std::atomic<bool> failed_{false};
};

// One rank failing to connect makes every rank give up that attempt at once (not after the
// timeout) and form the group again: a loaded machine slows a gang but does not fail it.
TEST(GlooTest, AFailedConnectionAttemptIsRetriedByEveryRankTogether) {
  auto store = std::make_shared<FlakyStore>();
  const absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(3);
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      GlooOptions o;
      o.rank = r;
      o.size = 3;
      o.timeout = absl::Seconds(60);
      absl::StatusOr<std::unique_ptr<Communicator>> c = NewGlooCommunicator(store, o);
      if (!c.ok()) {
        results[r] = c.status();
        return;
      }
      at::Tensor t = at::full({2}, static_cast<float>(r + 1));
      results[r] = (*c)->AllReduceSum(t);
      if (results[r].ok() && t[0].item<float>() != 6.0f) results[r] = absl::InternalError("sum");
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 3; ++r) EXPECT_OK(results[r]) << "rank " << r;
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));  // not a timeout's worth
  // Attempt 0 failed for everyone (its failure was published), attempt 1 connected.
  EXPECT_TRUE(store->Get("abort0", absl::ZeroDuration()).ok());
  for (int r = 0; r < 3; ++r) {
    EXPECT_THAT(store->Get(absl::StrCat("outcome1/", r), absl::ZeroDuration()),
                ::moec::testing::IsOkAndHolds("1"));
  }
}

TEST(GlooTest, DeadPeerBreaksTheCollectiveWithARetriableError) {
  Group group = MakeGroup(true, 2, absl::Seconds(5));
  ASSERT_NE(group[1], nullptr);
  group[1].reset();  // rank 1 "dies": its connections close
  at::Tensor t = at::ones({1024});
  absl::Status s = group[0]->AllReduceSum(t);
  EXPECT_THAT(s.code(), ::testing::AnyOf(absl::StatusCode::kDeadlineExceeded,
                                         absl::StatusCode::kUnavailable)) << s;
}

TEST(GlooTest, CountsBytesSentToOtherRanks) {
  Group group = MakeGroup(true, 2);
  OnAllRanks(group, [](Communicator& c) {
    at::Tensor rows = at::zeros({5, 4}, at::kFloat);  // 16 bytes per row
    std::vector<int64_t> counts = c.rank() == 0 ? std::vector<int64_t>{2, 3}
                                                : std::vector<int64_t>{5, 0};
    ASSERT_TRUE(c.AllToAll(rows, counts, nullptr).ok());
    EXPECT_EQ(c.bytes_sent(), c.rank() == 0 ? 3 * 16 : 5 * 16);
  });
}

// NCCL: a one-rank group runs every collective on a GPU; without one (or without CUDA in the
// build) forming the group is a clear error.
TEST(NcclTest, OneRankGroupOrAClearError) {
  NcclOptions o;
  o.timeout = absl::Seconds(30);
  auto c = NewNcclCommunicator(NewMemoryRendezvousStore(), o);
  if (!NcclBuilt()) {
    EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented) << c.status();
    GTEST_SKIP() << "built without CUDA";
  }
  if (c.status().code() == absl::StatusCode::kFailedPrecondition) {
    GTEST_SKIP() << "no CUDA device: " << c.status();
  }
  ASSERT_TRUE(c.ok()) << c.status();
  at::Tensor rows = at::arange(12, at::kFloat).reshape({6, 2});
  std::vector<int64_t> got;
  auto out = (*c)->AllToAll(rows, {6}, &got);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(at::equal(*out, rows));
  EXPECT_EQ(got, std::vector<int64_t>{6});
  at::Tensor t = at::full({3}, int64_t{7}, at::kLong);
  ASSERT_TRUE((*c)->AllReduceSum(t).ok());
  EXPECT_TRUE(at::equal(t, at::full({3}, int64_t{7}, at::kLong)));
  ASSERT_TRUE((*c)->Broadcast(t, 0).ok());
  EXPECT_TRUE((*c)->Barrier().ok());
}

TEST(LazyTest, ConnectsOnFirstUseOnly) {
  int made = 0;
  LazyCommunicator lazy(0, 1, [&]() -> absl::StatusOr<std::unique_ptr<Communicator>> {
    ++made;
    return NewSingleRankCommunicator();
  });
  EXPECT_FALSE(lazy.connected());
  EXPECT_EQ(made, 0);
  ASSERT_TRUE(lazy.Barrier().ok());
  ASSERT_TRUE(lazy.Barrier().ok());
  EXPECT_EQ(made, 1);
  LazyCommunicator failing(0, 2, []() -> absl::StatusOr<std::unique_ptr<Communicator>> {
    return absl::UnavailableError("no peers");
  });
  EXPECT_EQ(failing.Barrier().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace moec::comm
