#include "common/task_profile.h"

#include <thread>

#include "gtest/gtest.h"

namespace moec::profile {
namespace {

void Spin(double seconds) {
  const auto end = TaskProfile::Clock::now() + std::chrono::duration<double>(seconds);
  while (TaskProfile::Clock::now() < end) {
  }
}

double Seconds(const TaskProfile& p, Phase phase) {
  return p.Snapshot()[static_cast<int>(phase)].seconds;
}

TEST(TaskProfileTest, WithoutABoundProfileEverythingIsANoOp) {
  ASSERT_EQ(Current(), nullptr);
  ScopedPhase s(Phase::kSolve);
  AddFlops(1e9);
  EXPECT_EQ(Current(), nullptr);
}

// A phase entered inside another pauses it: the phases partition the wall time.
TEST(TaskProfileTest, NestedPhasesAreExclusiveAndPartitionTheTime) {
  TaskProfile p;
  const auto start = TaskProfile::Clock::now();
  {
    BindToThread bind(&p);
    ScopedPhase forward(Phase::kForward);
    Spin(0.02);
    {
      ScopedPhase stats(Phase::kStatistics);
      Spin(0.03);
      EXPECT_EQ(p.current(), Phase::kStatistics);
    }
    EXPECT_EQ(p.current(), Phase::kForward);
    Spin(0.02);
  }
  EXPECT_EQ(p.current(), Phase::kOther);
  EXPECT_EQ(Current(), nullptr);
  const double wall = std::chrono::duration<double>(TaskProfile::Clock::now() - start).count();
  EXPECT_GE(Seconds(p, Phase::kForward), 0.04);
  EXPECT_GE(Seconds(p, Phase::kStatistics), 0.03);
  // Counting the statistics inside the forward as forward too would exceed the wall time.
  double sum = 0;
  for (const TaskProfile::Totals& t : p.Snapshot()) sum += t.seconds;
  EXPECT_LE(sum, wall + 1e-3);
  EXPECT_LE(Seconds(p, Phase::kForward) + Seconds(p, Phase::kStatistics), wall + 1e-3);
}

TEST(TaskProfileTest, FlopsGoToTheCurrentPhase) {
  TaskProfile p;
  BindToThread bind(&p);
  AddFlops(5);
  {
    ScopedPhase solve(Phase::kSolve);
    AddFlops(MatmulFlops(2, 3, 4));
    {
      ScopedPhase io(Phase::kFactorIo);
      AddFlops(7);
    }
    AddFlops(1);
  }
  const auto t = p.Snapshot();
  EXPECT_EQ(t[static_cast<int>(Phase::kOther)].flops, 5);
  EXPECT_EQ(t[static_cast<int>(Phase::kSolve)].flops, 49);
  EXPECT_EQ(t[static_cast<int>(Phase::kFactorIo)].flops, 7);
  EXPECT_EQ(t[static_cast<int>(Phase::kForward)].flops, 0);
}

// The binding is per thread: other threads (a prefetcher, a pool) neither see nor change it.
TEST(TaskProfileTest, BindingIsPerThread) {
  TaskProfile p;
  BindToThread bind(&p);
  std::thread other([] {
    EXPECT_EQ(Current(), nullptr);
    ScopedPhase s(Phase::kLoad);
    AddFlops(1e9);
  });
  other.join();
  EXPECT_EQ(Current(), &p);
  double flops = 0;
  for (const TaskProfile::Totals& t : p.Snapshot()) flops += t.flops;
  EXPECT_EQ(flops, 0);
  {
    TaskProfile inner;
    BindToThread rebind(&inner);
    EXPECT_EQ(Current(), &inner);
  }
  EXPECT_EQ(Current(), &p);
}

TEST(TaskProfileTest, PhaseNames) {
  EXPECT_STREQ(PhaseName(Phase::kFactorIo), "factor_io");
  EXPECT_STREQ(PhaseName(Phase::kCommunication), "communication");
  EXPECT_STREQ(PhaseName(Phase::kOther), "other");
}

}  // namespace
}  // namespace moec::profile
