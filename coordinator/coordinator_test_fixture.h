// The fixture of the Coordinator's unit tests (coordinator_test.cc, coordinator_recovery_test.cc):
// a Coordinator over an in-memory store with a 2-layer model "m", a settable clock and a short
// retry policy (2 attempts, 100 ms backoff, 1 s leases); Restart() re-creates it over the same
// store as a process restart would.
#ifndef MOEC_COORDINATOR_COORDINATOR_TEST_FIXTURE_H_
#define MOEC_COORDINATOR_COORDINATOR_TEST_FIXTURE_H_

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/coordinator.h"
#include "coordinator/coordinator_test_recipe.h"
#include "gtest/gtest.h"
#include "proto/event_kind.h"
#include "storage/in_memory_kv_store.h"
#include "tests/testing/temp_dir.h"

namespace moec::coordinator {

class CoordinatorTest : public ::testing::Test {
 protected:
  static std::vector<std::string> Families() {
    auto cfs = JobStoreColumnFamilies();
    cfs.push_back("factors");
    return cfs;
  }
  CoordinatorTest() : kv_(Families()) {
    std::filesystem::create_directories(dir_.Join("m"));
    dir_.WriteFile("m/config.json", R"({"num_hidden_layers": 2})");
    store_ = *JobStore::Open(&kv_);
    storage::FactorStoreOptions fo;
    fo.chunk_bytes = 4;  // several chunks even for tiny test tensors
    factors_ = *storage::FactorStore::Open(&kv_, fo);
    policy_.max_attempts = 2;
    policy_.base_backoff_ms = 100;
    policy_.lease_ms = 1000;
    Restart();
  }
  void Restart() {
    coord_.reset();
    CoordinatorOptions o;
    o.retry = policy_;
    auto c = Coordinator::Create(store_.get(), o, [this] { return now_; }, factors_.get());
    ASSERT_TRUE(c.ok()) << c.status();
    coord_ = *std::move(c);
  }
  SubmitResult Submit(const std::string& yaml = kTinyRecipe,
                      std::vector<std::string> overrides = {}) {
    auto r = coord_->SubmitJob(yaml, dir_.Join("recipe.yaml"), overrides);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : SubmitResult{};
  }
  std::optional<LeasedTask> Lease(const std::string& w) {
    auto l = coord_->LeaseTask(w);
    EXPECT_TRUE(l.ok()) << l.status();
    return l.ok() ? *l : std::nullopt;
  }
  std::vector<std::string> EventKinds(const std::string& job) {
    std::vector<std::string> kinds;
    auto events = coord_->ReadEvents(job, 0, 1000);
    EXPECT_TRUE(events.ok()) << events.status();
    for (const auto& e : *events) kinds.push_back(EventKindName(KindOf(e)));
    return kinds;
  }
  void Advance(int64_t ms) { now_ += absl::Milliseconds(ms); }

  ::moec::testing::TempDir dir_;
  storage::InMemoryKvStore kv_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<storage::FactorStore> factors_;
  RetryPolicy policy_;
  absl::Time now_ = absl::FromUnixSeconds(1000);
  std::unique_ptr<Coordinator> coord_;
};

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_COORDINATOR_TEST_FIXTURE_H_
