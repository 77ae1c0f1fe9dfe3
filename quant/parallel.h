// Internal: a row-parallel loop on std::threads. libtorch's at::parallel_for runs on one thread in
// this build (at::get_num_threads() == 1; OpenBLAS threads the BLAS calls itself), so the
// element-wise loops of moec_quant split their rows over hardware threads here.
#ifndef MOEC_QUANT_PARALLEL_H_
#define MOEC_QUANT_PARALLEL_H_

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace moec::quant::internal {

// Number of worker threads: std::thread::hardware_concurrency() (at least 1).
inline int HardwareThreads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

// Calls fn(begin, end, chunk) on `chunks` disjoint contiguous ranges covering [0, n), with
// chunks = min(threads, ceil(n / min_grain)); chunk 0 runs on the calling thread. fn must be
// thread-safe across chunks. threads <= 0: HardwareThreads().
template <typename F>
void ParallelFor(int64_t n, int64_t min_grain, int threads, F&& fn) {
  if (n <= 0) return;
  if (threads <= 0) threads = HardwareThreads();
  const int64_t by_grain = (n + std::max<int64_t>(min_grain, 1) - 1) / std::max<int64_t>(min_grain, 1);
  const int chunks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, by_grain)));
  if (chunks == 1) {
    fn(int64_t{0}, n, 0);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(chunks - 1);
  const int64_t step = (n + chunks - 1) / chunks;
  for (int c = 1; c < chunks; ++c) {
    const int64_t b = std::min(n, c * step), e = std::min(n, (c + 1) * step);
    if (b < e) workers.emplace_back([&fn, b, e, c] { fn(b, e, c); });
  }
  fn(int64_t{0}, std::min(n, step), 0);
  for (std::thread& t : workers) t.join();
}

}  // namespace moec::quant::internal

#endif  // MOEC_QUANT_PARALLEL_H_
