// Lu et al.'s expert subset search (stages/expert_prune_stage.h) on a synthetic MoE layer:
// hidden 1024, 8 experts of width 2816, top-2, 2048 tokens in one batch. Prints the time to
// score every candidate (r = 6: 28 drop sets, r = 4: 70) divided by the time of one dense
// forward of all 8 experts over the same tokens (the expert outputs the search reuses), both
// measured in this run. Target <= 2.
//
// Usage: expert_prune_bench [--tokens N] [--repeats N]
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/process_tuning.h"
#include "model/runtime/layers.h"
#include "stages/expert_prune_stage.h"

namespace {
using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
}  // namespace

int main(int argc, char** argv) {
  moec::UsePassiveThreadWait(argv);
  int64_t tokens = 2048;
  int repeats = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--tokens") == 0) tokens = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--repeats") == 0) repeats = std::atoi(argv[i + 1]);
  }
  const int64_t hidden = 1024, ffn = 2816;
  const int experts = 8;
  at::manual_seed(0);
  moec::model::MoeWeights w;
  w.router = at::randn({experts, hidden}) * 0.05;
  for (int e = 0; e < experts; ++e) {
    w.experts.push_back({at::randn({ffn, hidden}) * 0.02, at::randn({ffn, hidden}) * 0.02,
                         at::randn({hidden, ffn}) * 0.02});
  }
  moec::model::RoutingRule rule;
  rule.top_k = 2;
  moec::stages::PruneBatch b;
  b.x = at::randn({tokens, hidden});
  double dense = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    std::vector<at::Tensor> ys;
    for (int e = 0; e < experts; ++e) {
      ys.push_back(moec::model::Mlp(w.experts[e], b.x, 0, moec::model::LinearKind::kExpertGate, e,
                                    nullptr));
    }
    b.y = at::stack(ys);
    dense = std::min(dense, Since(t0));
  }
  std::vector<int> all = {0, 1, 2, 3, 4, 5, 6, 7};
  b.z = moec::stages::MaskedBlockOutput(b, w.router, rule, all, tokens);
  std::printf("expert subset search, hidden %lld, 8 experts x %lld, top-2, %lld tokens\n",
              static_cast<long long>(hidden), static_cast<long long>(ffn),
              static_cast<long long>(tokens));
  std::printf("  dense forward of all 8 experts: %.3f s\n", dense);
  for (int keep : {6, 4}) {
    double search = 1e30;
    size_t candidates = 0;
    for (int r = 0; r < repeats; ++r) {
      const auto t0 = Clock::now();
      auto result = moec::stages::SearchExpertSubset({b}, w.router, rule, keep, 100000, tokens);
      search = std::min(search, Since(t0));
      if (!result.ok()) return 1;
      candidates = result->losses.size();
    }
    std::printf("  r=%d: %zu candidates scored in %.3f s = %.2fx the dense forward (target <= 2)\n",
                keep, candidates, search, search / dense);
  }
  return 0;
}
