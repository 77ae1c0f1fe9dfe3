// Timing on a device for the benches that run on `--device` (forward_bench, gptq_bench): every
// measurement waits for the device's queued work before and after. Includes ATen.
#ifndef MOEC_TESTS_BENCH_DEVICE_TIMING_H_
#define MOEC_TESTS_BENCH_DEVICE_TIMING_H_

#include <ATen/ATen.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <chrono>

namespace moec::bench {

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Waits for the device's queued work (nothing on the CPU).
inline void Sync(at::Device d) {
  if (!d.is_cpu()) c10::impl::VirtualGuardImpl(d.type()).getStream(d).synchronize();
}

// Seconds of one call of f, synchronized on `d`.
template <typename F>
double TimeOnce(at::Device d, F&& f) {
  Sync(d);
  const auto t0 = Clock::now();
  f();
  Sync(d);
  return Seconds(Clock::now() - t0);
}

// The best of `repeats` calls.
template <typename F>
double BestOf(int repeats, at::Device d, F&& f) {
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) best = std::min(best, TimeOnce(d, f));
  return best;
}

}  // namespace moec::bench

#endif  // MOEC_TESTS_BENCH_DEVICE_TIMING_H_
