// Test helper: runs a function on every rank of a gang, one thread per rank.
#ifndef MOEC_COMM_GANG_TEST_UTIL_H_
#define MOEC_COMM_GANG_TEST_UTIL_H_

#include <functional>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "gtest/gtest.h"

namespace moec::comm {

// Runs fn(rank) on one thread per rank of a group of `size`: in memory, or real Gloo over
// loopback TCP.
inline void OnRanks(int size, const std::function<void(Communicator&)>& fn, bool gloo = false) {
  std::vector<std::thread> threads;
  if (!gloo) {
    auto group = NewLocalGroup(size);
    for (auto& c : group) threads.emplace_back([&fn, &c] { fn(*c); });
    for (auto& t : threads) t.join();
    return;
  }
  auto store = NewMemoryRendezvousStore();
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      GlooOptions o;
      o.rank = r;
      o.size = size;
      o.timeout = absl::Seconds(30);
      auto c = NewGlooCommunicator(store, o);
      ASSERT_TRUE(c.ok()) << c.status();
      fn(**c);
    });
  }
  for (auto& t : threads) t.join();
}

}  // namespace moec::comm

#endif  // MOEC_COMM_GANG_TEST_UTIL_H_
