// The exhaustive reference of a bit allocation: every assignment of every program enumerated
// (the test oracle of AllocateBits).
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/bit_allocation.h"
#include "quant/bit_allocation_internal.h"

namespace moec::quant {
namespace internal {

absl::StatusOr<Choice> SolveExhaustively(const Program& p, const std::vector<int>& bits,
                                         const Plan& plan) {
  const size_t n = p.units.size(), m = bits.size();
  double combos = std::pow(static_cast<double>(m), static_cast<double>(n));
  if (combos > static_cast<double>(1 << 22)) {
    return absl::ResourceExhaustedError(
        absl::StrCat(p.name, ": ", m, "^", n, " assignments exceed the exhaustive limit 2^22"));
  }
  Choice best;
  best.optimal = true;
  double best_cost = std::numeric_limits<double>::infinity();
  std::vector<int> option(n, 0);
  while (true) {
    if (Satisfies(p, option, bits, plan)) {
      double cost = 0;
      for (size_t u = 0; u < n; ++u) cost += p.cost[u][option[u]];
      if (cost < best_cost) {
        best_cost = cost;
        best.option = option;
      }
    }
    size_t u = n;  // odometer, last unit fastest: lexicographic order
    while (u > 0 && option[u - 1] == static_cast<int>(m) - 1) option[--u] = 0;
    if (u == 0) break;
    ++option[u - 1];
  }
  if (best.option.empty()) {
    return absl::FailedPreconditionError(p.name + ": no assignment meets the constraints");
  }
  return best;
}

}  // namespace internal

absl::StatusOr<Allocation> AllocateBitsExhaustive(absl::Span<const LayerFactors> layers,
                                                  const AllocationOptions& options) {
  MOEC_ASSIGN_OR_RETURN(internal::Plan plan, internal::BuildPlan(layers, options));
  std::vector<internal::Choice> choices;
  for (const internal::Program& p : plan.programs) {
    MOEC_ASSIGN_OR_RETURN(internal::Choice c, internal::SolveExhaustively(p, options.bits, plan));
    choices.push_back(std::move(c));
  }
  return internal::Assemble(layers, options, plan, choices);
}

}  // namespace moec::quant
