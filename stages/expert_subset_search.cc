// The expert subset search of `expert_prune` (expert_prune_stage.h), independent of the data
// plane: the masked block output, a candidate's loss and the exhaustive or greedy search.
#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "stages/expert_prune_stage.h"

namespace moec::stages {

int64_t CappedBinomial(int n, int k, int64_t limit) {
  k = std::min(k, n - k);
  double c = 1;
  for (int i = 1; i <= k; ++i) {
    c = c * (n - k + i) / i;
    if (c > static_cast<double>(limit)) return limit + 1;
  }
  return static_cast<int64_t>(c + 0.5);
}

at::Tensor MaskedBlockOutput(const PruneBatch& b, const at::Tensor& router,
                             const model::RoutingRule& rule, const std::vector<int>& kept,
                             int64_t seq) {
  model::RoutingRule r = rule;
  r.top_k = std::min<int>(rule.top_k, static_cast<int>(kept.size()));
  const at::Tensor ids =
      at::tensor(std::vector<int64_t>(kept.begin(), kept.end()), at::kLong).to(router.device());
  model::Routing routing = model::Route(router.index_select(0, ids), b.x, r, at::Tensor(), seq);
  const int64_t tokens = b.x.size(0), k = routing.experts.size(1);
  const at::Tensor experts = ids.index_select(0, routing.experts.reshape(-1)).reshape({tokens, k});
  const at::Tensor token =
      at::arange(tokens, ids.options()).unsqueeze(1).expand({tokens, k});
  const at::Tensor picked = b.y.index({experts, token});  // [tokens, k, hidden]
  at::Tensor out = (picked * routing.weights.to(picked.scalar_type()).unsqueeze(-1)).sum(1);
  if (b.shared.defined()) out = out + b.shared;
  return out;
}

double BatchLoss(const PruneBatch& b, const at::Tensor& router, const model::RoutingRule& rule,
                 const std::vector<int>& kept, int64_t seq) {
  return (b.z - MaskedBlockOutput(b, router, rule, kept, seq)).to(at::kDouble).norm().item<double>();
}

namespace {

// Scores `candidates` in blocks of `block`, appending to `losses`; returns the index of the first
// best one (ties: the first, as the reference's strict `<`).
absl::StatusOr<size_t> ScoreAll(const CandidateScorer& score, size_t block,
                                const std::vector<std::vector<int>>& candidates,
                                std::vector<double>* all_losses) {
  size_t best = 0;
  double best_loss = std::numeric_limits<double>::infinity();
  for (size_t s = 0; s < candidates.size(); s += block) {
    const std::vector<std::vector<int>> part(
        candidates.begin() + s, candidates.begin() + std::min(candidates.size(), s + block));
    MOEC_ASSIGN_OR_RETURN(std::vector<double> losses, score(part));
    if (losses.size() != part.size()) {
      return absl::InternalError(absl::StrCat("scorer returned ", losses.size(), " losses for ",
                                              part.size(), " candidates"));
    }
    for (size_t i = 0; i < losses.size(); ++i) {
      all_losses->push_back(losses[i]);
      if (losses[i] < best_loss) {
        best_loss = losses[i];
        best = s + i;
      }
    }
  }
  return best;
}

// The experts kept by every set of `drop` of `experts` dropped, the drop sets in lexicographic
// order, as itertools.combinations enumerates them.
std::vector<std::vector<int>> KeptByEveryDropSet(int experts, int drop) {
  std::vector<std::vector<int>> candidates;
  std::vector<int> d(drop);
  std::iota(d.begin(), d.end(), 0);
  while (true) {
    std::vector<int> kept;
    for (int e = 0, j = 0; e < experts; ++e) {
      if (j < drop && d[j] == e) ++j;
      else kept.push_back(e);
    }
    candidates.push_back(std::move(kept));
    int i = drop - 1;
    while (i >= 0 && d[i] == experts - drop + i) --i;
    if (i < 0) break;
    ++d[i];
    for (int j = i + 1; j < drop; ++j) d[j] = d[j - 1] + 1;
  }
  return candidates;
}

}  // namespace

absl::StatusOr<SubsetSearchResult> SearchExpertSubset(int experts, int keep,
                                                      int64_t exhaustive_limit,
                                                      const CandidateScorer& score, size_t block) {
  if (keep < 1 || keep > experts) {
    return absl::InvalidArgumentError(absl::StrCat("keep ", keep, " of ", experts, " experts"));
  }
  block = std::max<size_t>(1, block);
  SubsetSearchResult result;
  result.loss = std::numeric_limits<double>::infinity();
  const int drop = experts - keep;
  if (CappedBinomial(experts, drop, exhaustive_limit) <= exhaustive_limit) {
    const std::vector<std::vector<int>> candidates = KeptByEveryDropSet(experts, drop);
    MOEC_ASSIGN_OR_RETURN(size_t best, ScoreAll(score, block, candidates, &result.losses));
    result.kept = candidates[best];
    result.loss = result.losses[best];
    return result;
  }
  // Greedy: remove, one at a time, the expert whose removal costs least.
  result.exhaustive = false;
  std::vector<int> current(experts);
  std::iota(current.begin(), current.end(), 0);
  while (static_cast<int>(current.size()) > keep) {
    std::vector<std::vector<int>> candidates;
    for (size_t i = 0; i < current.size(); ++i) {
      std::vector<int> candidate = current;
      candidate.erase(candidate.begin() + static_cast<std::ptrdiff_t>(i));
      candidates.push_back(std::move(candidate));
    }
    const size_t first = result.losses.size();
    MOEC_ASSIGN_OR_RETURN(size_t best, ScoreAll(score, block, candidates, &result.losses));
    result.loss = result.losses[first + best];
    current = candidates[best];
  }
  result.kept = current;
  return result;
}

absl::StatusOr<SubsetSearchResult> SearchExpertSubset(const std::vector<PruneBatch>& batches,
                                                      const at::Tensor& router,
                                                      const model::RoutingRule& rule, int keep,
                                                      int64_t exhaustive_limit, int64_t seq) {
  return SearchExpertSubset(
      static_cast<int>(router.size(0)), keep, exhaustive_limit,
      [&](const std::vector<std::vector<int>>& candidates) -> absl::StatusOr<std::vector<double>> {
        std::vector<double> out;
        for (const std::vector<int>& kept : candidates) {
          double sum = 0;
          for (const PruneBatch& b : batches) sum += BatchLoss(b, router, rule, kept, seq);
          out.push_back(sum);
        }
        return out;
      });
}

}  // namespace moec::stages
