#include "quant/bit_allocation.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "quant/bit_allocation_internal.h"

namespace moec::quant {
namespace internal {
namespace {

using Granularity = AllocationOptions::Granularity;
using Scope = AllocationOptions::Scope;

// c[e][i] = f_e^alpha * a_e^beta * Q[e][i]^gamma with f, a normalized over the layer.
absl::StatusOr<std::vector<std::vector<double>>> ExpertCosts(const LayerFactors& l,
                                                             const AllocationOptions& o) {
  double f_sum = 0, a_sum = 0;
  for (size_t e = 0; e < l.frequency.size(); ++e) {
    f_sum += static_cast<double>(l.frequency[e]);
    a_sum += l.weight[e];
  }
  std::vector<std::vector<double>> c(l.frequency.size());
  for (size_t e = 0; e < c.size(); ++e) {
    const double fa = std::pow(static_cast<double>(l.frequency[e]) / f_sum, o.alpha) *
                      std::pow(l.weight[e] / a_sum, o.beta);
    for (double q : l.loss[e]) {
      c[e].push_back(fa * std::pow(q, o.gamma));
      if (!std::isfinite(c[e].back())) {
        return absl::InvalidArgumentError(
            absl::StrCat("layer ", l.layer, ": expert ", e, " cost is not finite"));
      }
    }
  }
  return c;
}

// Smallest total width a program can have: every unit at the smallest width, plus, per group,
// the cheapest two distinct units lifted to the top and middle widths (the smallest
// multiplicity takes the larger lift). -1 when some group has too few units.
int64_t MinimumTotal(const Program& p, const std::vector<int>& bits, const Plan& plan) {
  const int b_min = *std::min_element(bits.begin(), bits.end());
  int64_t total = 0;
  for (const Unit& u : p.units) total += u.multiplicity * b_min;
  const size_t needed = plan.middle >= 0 ? 2 : 1;
  for (const std::vector<int>& g : p.groups) {
    if (g.size() < needed) return -1;
    std::vector<int64_t> m;
    for (int u : g) m.push_back(p.units[u].multiplicity);
    std::sort(m.begin(), m.end());
    total += m[0] * (bits[plan.top] - b_min);
    if (plan.middle >= 0) total += m[1] * (bits[plan.middle] - b_min);
  }
  return total;
}

// Budget T of a program of `experts` experts over `programs_layers` layers.
int64_t ProgramBudget(const AllocationOptions& o, int64_t experts, int64_t programs_layers) {
  if (o.average_bits) {
    const double raw = *o.average_bits * static_cast<double>(experts);
    return static_cast<int64_t>(std::floor(raw + 1e-9 * std::max(1.0, raw)));
  }
  return *o.layer_budget * programs_layers;
}

absl::Status CheckFeasible(const Program& p, int64_t experts, const AllocationOptions& o,
                           const Plan& plan) {
  const int64_t min_total = MinimumTotal(p, o.bits, plan);
  const int b_max = *std::max_element(o.bits.begin(), o.bits.end());
  const std::string rule =
      plan.middle >= 0
          ? absl::StrCat(" with at least one ",
                         o.granularity == Granularity::kExpert ? "expert" : "layer", " at ",
                         o.bits[plan.top], " and one at ", o.bits[plan.middle], " bits")
      : plan.top >= 0 ? absl::StrCat(" with at least one at ", o.bits[plan.top], " bits")
                      : std::string();
  if (min_total < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(p.name, ": widths ", BitsText(o.bits), rule, " cannot be met",
                     o.granularity == Granularity::kExpert ? " (too few experts)"
                     : o.scope == Scope::kLayer ? " (one width per layer, one layer per program)"
                                                : " (too few layers)"));
  }
  if (p.budget < min_total) {
    return absl::FailedPreconditionError(absl::StrCat(
        p.name, ": budget ", p.budget, " bits for ", experts, " experts (average ",
        static_cast<double>(p.budget) / experts, ") is below the minimum ", min_total,
        " bits that widths ", BitsText(o.bits), rule, " need; feasible budgets: ", min_total,
        " .. ", experts * b_max, " bits (average ", static_cast<double>(min_total) / experts,
        " .. ", b_max, ")"));
  }
  return absl::OkStatus();
}

// Splits the allocation into programs (one per layer, or one) of units (experts, or layers),
// with their budgets, and checks that each can be met.
absl::Status BuildPrograms(absl::Span<const LayerFactors> layers, const AllocationOptions& o,
                           Plan* plan) {
  const bool per_layer = o.scope == Scope::kLayer;
  Program* p = nullptr;
  std::vector<int64_t> experts;
  for (size_t li = 0; li < layers.size(); ++li) {
    if (per_layer || p == nullptr) {
      plan->programs.emplace_back();
      p = &plan->programs.back();
      p->name = per_layer ? absl::StrCat("layer ", layers[li].layer) : "model";
      experts.push_back(0);
    }
    const auto& c = plan->expert_cost[li];
    const int64_t e = static_cast<int64_t>(c.size());
    experts.back() += e;
    if (o.granularity == Granularity::kExpert) {
      std::vector<int> group;
      for (int64_t x = 0; x < e; ++x) {
        group.push_back(static_cast<int>(p->units.size()));
        p->units.push_back({static_cast<int>(li), static_cast<int>(x), 1});
        p->cost.push_back(c[x]);
      }
      if (plan->top >= 0) p->groups.push_back(std::move(group));
    } else {
      std::vector<double> sum(o.bits.size(), 0.0);
      for (const auto& ce : c) {
        for (size_t i = 0; i < sum.size(); ++i) sum[i] += ce[i];
      }
      p->units.push_back({static_cast<int>(li), -1, e});
      p->cost.push_back(std::move(sum));
    }
  }
  for (size_t pi = 0; pi < plan->programs.size(); ++pi) {
    Program& prog = plan->programs[pi];
    if (o.granularity == Granularity::kLayer && plan->top >= 0) {
      prog.groups.emplace_back();
      for (size_t u = 0; u < prog.units.size(); ++u) prog.groups.back().push_back(u);
    }
    const int64_t n_layers = per_layer ? 1 : static_cast<int64_t>(layers.size());
    prog.budget = ProgramBudget(o, experts[pi], n_layers);
    MOEC_RETURN_IF_ERROR(CheckFeasible(prog, experts[pi], o, *plan));
  }
  return absl::OkStatus();
}

}  // namespace

std::string BitsText(const std::vector<int>& bits) {
  return absl::StrCat("{", absl::StrJoin(bits, ","), "}");
}

absl::StatusOr<Plan> BuildPlan(absl::Span<const LayerFactors> layers, const AllocationOptions& o) {
  MOEC_RETURN_IF_ERROR(o.Validate());
  MOEC_RETURN_IF_ERROR(ValidateFactors(layers, o.bits.size()));
  Plan plan;
  std::vector<int> order(o.bits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return o.bits[a] > o.bits[b]; });
  const bool require = o.require_top_and_middle.value_or(o.granularity == Granularity::kExpert);
  if (require && order.size() >= 2) plan.top = order[0];
  if (require && order.size() >= 3) plan.middle = order[1];
  const int b_min = o.bits[order.back()], b_max = o.bits[order.front()];

  for (const LayerFactors& l : layers) {
    const int64_t e = static_cast<int64_t>(l.frequency.size());
    if (o.layer_budget && (*o.layer_budget < e * b_min || *o.layer_budget > e * b_max)) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", l.layer, ": layer_budget ", *o.layer_budget, " bits for ", e,
                       " experts is outside the range ", e * b_min, " .. ", e * b_max,
                       " of widths ", BitsText(o.bits)));
    }
    MOEC_ASSIGN_OR_RETURN(auto c, ExpertCosts(l, o));
    plan.expert_cost.push_back(std::move(c));
  }

  MOEC_RETURN_IF_ERROR(BuildPrograms(layers, o, &plan));
  return plan;
}

bool Satisfies(const Program& p, const std::vector<int>& option, const std::vector<int>& bits,
               const Plan& plan) {
  if (option.size() != p.units.size()) return false;
  int64_t total = 0;
  for (size_t u = 0; u < option.size(); ++u) {
    if (option[u] < 0 || option[u] >= static_cast<int>(bits.size())) return false;
    total += p.units[u].multiplicity * bits[option[u]];
  }
  if (total > p.budget) return false;
  for (const std::vector<int>& g : p.groups) {
    bool top = false, middle = plan.middle < 0;
    for (int u : g) {
      top |= option[u] == plan.top;
      middle |= option[u] == plan.middle;
    }
    if (!top || !middle) return false;
  }
  return true;
}

absl::StatusOr<Allocation> Assemble(absl::Span<const LayerFactors> layers,
                                    const AllocationOptions& o, const Plan& plan,
                                    const std::vector<Choice>& choices) {
  Allocation out;
  out.proven_optimal = true;
  out.bits.resize(layers.size());
  for (size_t li = 0; li < layers.size(); ++li) out.bits[li].assign(layers[li].frequency.size(), 0);
  std::vector<std::vector<int>> chosen(layers.size());
  for (size_t li = 0; li < layers.size(); ++li) chosen[li].assign(out.bits[li].size(), -1);
  for (size_t pi = 0; pi < plan.programs.size(); ++pi) {
    const Program& p = plan.programs[pi];
    if (!Satisfies(p, choices[pi].option, o.bits, plan)) {
      return absl::InternalError(p.name + ": the solver returned an infeasible allocation");
    }
    out.proven_optimal &= choices[pi].optimal;
    out.budget_bits.push_back(p.budget);
    for (size_t u = 0; u < p.units.size(); ++u) {
      const Unit& unit = p.units[u];
      auto& row = chosen[unit.layer_index];
      if (unit.expert >= 0) {
        row[unit.expert] = choices[pi].option[u];
      } else {
        std::fill(row.begin(), row.end(), choices[pi].option[u]);
      }
    }
  }
  int64_t experts = 0;
  for (size_t li = 0; li < layers.size(); ++li) {
    for (size_t e = 0; e < chosen[li].size(); ++e) {
      const int i = chosen[li][e];
      out.bits[li][e] = o.bits[i];
      out.objective += plan.expert_cost[li][e][i];
      out.total_bits += o.bits[i];
      ++experts;
    }
  }
  out.average_bits = static_cast<double>(out.total_bits) / static_cast<double>(experts);
  return out;
}

}  // namespace internal

absl::StatusOr<Allocation> AllocateBits(absl::Span<const LayerFactors> layers,
                                        const AllocationOptions& options) {
  MOEC_ASSIGN_OR_RETURN(internal::Plan plan, internal::BuildPlan(layers, options));
  // CBC 2.10 does not document CbcModel as reentrant; solves take milliseconds, so calls are
  // serialized rather than audited.
  static absl::Mutex* const cbc_mu = new absl::Mutex;
  absl::MutexLock lock(cbc_mu);
  const absl::Time deadline = absl::Now() + absl::Seconds(options.time_limit_s);
  std::vector<internal::Choice> choices;
  for (const internal::Program& p : plan.programs) {
    MOEC_ASSIGN_OR_RETURN(internal::Choice c,
                          internal::SolveWithCbc(p, options.bits, plan, deadline));
    choices.push_back(std::move(c));
  }
  return internal::Assemble(layers, options, plan, choices);
}

}  // namespace moec::quant
