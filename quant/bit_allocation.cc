#include "quant/bit_allocation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "CbcModel.hpp"
#include "CglClique.hpp"
#include "CglGomory.hpp"
#include "CglKnapsackCover.hpp"
#include "CglMixedIntegerRounding2.hpp"
#include "CglProbing.hpp"
#include "CoinPackedMatrix.hpp"
#include "OsiClpSolverInterface.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_macros.h"

namespace moec::quant {
namespace {

using Granularity = AllocationOptions::Granularity;
using Scope = AllocationOptions::Scope;

// One decision of a program: an expert (expert >= 0) or a whole layer (expert == -1), whose
// width counts `multiplicity` times against the budget.
struct Unit {
  int layer_index = 0;  // index into the input span
  int expert = -1;
  int64_t multiplicity = 1;
};

// One integer program: choose one candidate per unit, sum of multiplicity * width <= budget,
// and in every group at least one unit at the top width and one at the middle width.
struct Program {
  std::string name;
  std::vector<Unit> units;
  std::vector<std::vector<double>> cost;  // [unit][candidate]
  std::vector<std::vector<int>> groups;   // unit indices
  int64_t budget = 0;
};

struct Plan {
  std::vector<Program> programs;
  std::vector<std::vector<std::vector<double>>> expert_cost;  // [layer][expert][candidate]
  int top = -1;     // candidate index of the largest width
  int middle = -1;  // candidate index of the second-largest width; -1: not required
};

// The option chosen for each unit of a program.
struct Choice {
  std::vector<int> option;
  bool optimal = false;
};

bool FiniteNonNegative(double v) { return std::isfinite(v) && v >= 0; }

absl::Status ValidateFactors(absl::Span<const LayerFactors> layers, size_t num_bits) {
  if (layers.empty()) return absl::InvalidArgumentError("no MoE layers to allocate");
  for (const LayerFactors& l : layers) {
    const std::string where = absl::StrCat("layer ", l.layer, ": ");
    const size_t e = l.frequency.size();
    if (e == 0) return absl::InvalidArgumentError(where + "no experts");
    if (l.weight.size() != e || l.loss.size() != e) {
      return absl::InvalidArgumentError(absl::StrCat(where, e, " frequencies, ", l.weight.size(),
                                                     " weights, ", l.loss.size(), " losses"));
    }
    int64_t f_sum = 0;
    double a_sum = 0;
    for (size_t i = 0; i < e; ++i) {
      if (l.frequency[i] < 0 || !FiniteNonNegative(l.weight[i])) {
        return absl::InvalidArgumentError(absl::StrCat(where, "expert ", i, " has frequency ",
                                                       l.frequency[i], ", weight ", l.weight[i]));
      }
      if (l.loss[i].size() != num_bits) {
        return absl::InvalidArgumentError(absl::StrCat(where, "expert ", i, " has ",
                                                       l.loss[i].size(), " losses for ", num_bits,
                                                       " candidate widths"));
      }
      for (double q : l.loss[i]) {
        if (!FiniteNonNegative(q)) {
          return absl::InvalidArgumentError(absl::StrCat(where, "expert ", i, " loss ", q));
        }
      }
      if (l.frequency[i] > std::numeric_limits<int64_t>::max() - f_sum) {
        return absl::InvalidArgumentError(where + "frequency sum overflows");
      }
      f_sum += l.frequency[i];
      a_sum += l.weight[i];
    }
    if (f_sum == 0 || !(a_sum > 0) || !std::isfinite(a_sum)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "frequencies sum to ", f_sum, " and weights to ", a_sum, "; both must be > 0"));
    }
  }
  return absl::OkStatus();
}

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

std::string BitsText(const std::vector<int>& bits) {
  return absl::StrCat("{", absl::StrJoin(bits, ","), "}");
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

// True when `option` satisfies the budget and group constraints of `p`.
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

// The rows of a program over columns u * m + i (unit u takes candidate i).
void BuildRows(const Program& p, const std::vector<int>& bits, const Plan& plan,
               CoinPackedMatrix* matrix, std::vector<double>* row_lo, std::vector<double>* row_hi) {
  const int m = static_cast<int>(bits.size());
  matrix->setDimensions(0, static_cast<int>(p.units.size()) * m);
  std::vector<int> idx;
  std::vector<double> val;
  auto add_row = [&](double lo, double hi) {
    matrix->appendRow(static_cast<int>(idx.size()), idx.data(), val.data());
    row_lo->push_back(lo);
    row_hi->push_back(hi);
    idx.clear();
    val.clear();
  };
  for (size_t u = 0; u < p.units.size(); ++u) {  // exactly one candidate per unit
    for (int i = 0; i < m; ++i) idx.push_back(u * m + i), val.push_back(1.0);
    add_row(1.0, 1.0);
  }
  for (size_t u = 0; u < p.units.size(); ++u) {  // the budget
    for (int i = 0; i < m; ++i) {
      idx.push_back(u * m + i);
      val.push_back(static_cast<double>(p.units[u].multiplicity * bits[i]));
    }
  }
  add_row(-COIN_DBL_MAX, static_cast<double>(p.budget));
  for (const std::vector<int>& g : p.groups) {  // top and middle
    for (int which : {plan.top, plan.middle}) {
      if (which < 0) continue;
      for (int u : g) idx.push_back(u * m + which), val.push_back(1.0);
      add_row(1.0, COIN_DBL_MAX);
    }
  }
}

// One CBC run on objective `shifted` * 1e3 / `reference`; candidates whose shifted cost
// exceeds `bound` are fixed to 0. `start` (may be null) is a feasible incumbent.
absl::StatusOr<Choice> RunCbc(const Program& p, const std::vector<int>& bits, const Plan& plan,
                              const std::vector<double>& shifted, double reference, double bound,
                              const std::vector<int>* start, double seconds) {
  const int m = static_cast<int>(bits.size());
  const int n_cols = static_cast<int>(shifted.size());
  const double scale = reference > 0 ? 1e3 / reference : 1.0;
  std::vector<double> obj(n_cols), col_hi(n_cols);
  for (int c = 0; c < n_cols; ++c) {
    obj[c] = shifted[c] * scale;
    col_hi[c] = shifted[c] > bound ? 0.0 : 1.0;
  }
  CoinPackedMatrix matrix(false, 0, 0);
  std::vector<double> row_lo, row_hi;
  BuildRows(p, bits, plan, &matrix, &row_lo, &row_hi);

  OsiClpSolverInterface solver;
  solver.messageHandler()->setLogLevel(0);
  solver.loadProblem(matrix, std::vector<double>(n_cols, 0.0).data(), col_hi.data(), obj.data(),
                     row_lo.data(), row_hi.data());
  for (int c = 0; c < n_cols; ++c) solver.setInteger(c);
  // Tighter than Clp's 1e-7 defaults: reduced costs below the tolerance are treated as 0.
  solver.setDblParam(OsiDualTolerance, 1e-10);
  solver.setDblParam(OsiPrimalTolerance, 1e-10);

  CbcModel model(solver);
  model.setLogLevel(0);
  model.messageHandler()->setLogLevel(0);
  model.solver()->messageHandler()->setLogLevel(0);
  model.setNumberThreads(0);
  model.setRandomSeed(1);
  model.setMaximumSeconds(seconds);
  model.setAllowableGap(0);
  model.setAllowableFractionGap(0);
  model.setAllowablePercentageGap(0);
  model.setCutoffIncrement(1e-9);
  CglProbing probing;
  probing.setUsingObjective(true);
  CglGomory gomory;
  CglKnapsackCover knapsack;
  CglClique clique;
  clique.setStarCliqueReport(false);
  clique.setRowCliqueReport(false);
  CglMixedIntegerRounding2 mir;
  model.addCutGenerator(&probing, -1, "Probing");
  model.addCutGenerator(&gomory, -1, "Gomory");
  model.addCutGenerator(&knapsack, -1, "Knapsack");
  model.addCutGenerator(&clique, -1, "Clique");
  model.addCutGenerator(&mir, -1, "MixedIntegerRounding2");
  if (start != nullptr) {
    std::vector<double> x(n_cols, 0.0);
    double value = 0;
    for (size_t u = 0; u < start->size(); ++u) {
      x[u * m + (*start)[u]] = 1.0;
      value += obj[u * m + (*start)[u]];
    }
    model.setBestSolution(x.data(), n_cols, value, /*check=*/false);
  }
  model.initialSolve();
  model.branchAndBound();

  const double* x = model.bestSolution();
  if (x == nullptr) {
    if (model.isProvenInfeasible()) {
      return absl::FailedPreconditionError(p.name + ": the integer program is infeasible");
    }
    return absl::DeadlineExceededError(
        absl::StrCat(p.name, ": no feasible allocation found within ", seconds, " s"));
  }
  Choice choice;
  choice.optimal = model.isProvenOptimal();
  choice.option.assign(p.units.size(), -1);
  for (size_t u = 0; u < p.units.size(); ++u) {
    for (int i = 0; i < m; ++i) {
      if (x[u * m + i] > 0.5) choice.option[u] = i;
    }
  }
  if (!Satisfies(p, choice.option, bits, plan)) {
    return absl::InternalError(p.name + ": CBC returned an infeasible allocation");
  }
  return choice;
}

// CBC's tolerances are absolute, so the objective is shifted (each unit's cheapest candidate
// subtracted: a constant, every unit takes one) and scaled. Pass 1 scales the largest cost to
// 1e3. Its solution costs U; no candidate dearer than U can be in an optimal allocation, so
// pass 2 fixes those to 0 and scales U to 1e3, which puts the tolerances at ~1e-13 of the
// optimum even when costs span many orders of magnitude.
absl::StatusOr<Choice> SolveWithCbc(const Program& p, const std::vector<int>& bits,
                                    const Plan& plan, absl::Time deadline) {
  const int m = static_cast<int>(bits.size());
  std::vector<double> shifted(p.units.size() * m);
  double largest = 0;
  for (size_t u = 0; u < p.units.size(); ++u) {
    const double lo = *std::min_element(p.cost[u].begin(), p.cost[u].end());
    for (int i = 0; i < m; ++i) {
      shifted[u * m + i] = p.cost[u][i] - lo;
      largest = std::max(largest, shifted[u * m + i]);
    }
  }
  auto seconds_left = [&] { return std::max(1e-3, absl::ToDoubleSeconds(deadline - absl::Now())); };
  auto value = [&](const Choice& c) {
    double v = 0;
    for (size_t u = 0; u < c.option.size(); ++u) v += shifted[u * m + c.option[u]];
    return v;
  };
  const double inf = std::numeric_limits<double>::infinity();
  MOEC_ASSIGN_OR_RETURN(Choice first,
                        RunCbc(p, bits, plan, shifted, largest, inf, nullptr, seconds_left()));
  const double u_first = value(first);
  const double bound = u_first * (1 + 1e-9);
  if (!(u_first > 0) || largest <= bound || absl::Now() >= deadline) return first;
  MOEC_ASSIGN_OR_RETURN(
      Choice second, RunCbc(p, bits, plan, shifted, u_first, bound, &first.option, seconds_left()));
  return value(second) <= u_first ? second : first;
}

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

// Turns per-program choices into the per-layer widths, checking every constraint again.
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

}  // namespace

absl::Status AllocationOptions::Validate() const {
  if (bits.empty()) return absl::InvalidArgumentError("bits: no candidate widths");
  for (size_t i = 0; i < bits.size(); ++i) {
    if (bits[i] < 1 || bits[i] > 32) {
      return absl::InvalidArgumentError(absl::StrCat("bits: width ", bits[i], " not in 1 .. 32"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (bits[j] == bits[i]) {
        return absl::InvalidArgumentError(absl::StrCat("bits: width ", bits[i], " repeated"));
      }
    }
  }
  if (average_bits.has_value() == layer_budget.has_value()) {
    return absl::InvalidArgumentError("exactly one of average_bits and layer_budget must be given");
  }
  const int b_min = *std::min_element(bits.begin(), bits.end());
  const int b_max = *std::max_element(bits.begin(), bits.end());
  if (average_bits && !(*average_bits >= b_min && *average_bits <= b_max)) {
    return absl::InvalidArgumentError(absl::StrCat("average_bits ", *average_bits,
                                                   " is outside the feasible range ", b_min, " .. ",
                                                   b_max, " of widths ", BitsText(bits)));
  }
  for (auto [name, v] :
       {std::pair<const char*, double>{"alpha", alpha}, {"beta", beta}, {"gamma", gamma}}) {
    if (!FiniteNonNegative(v)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " ", v, " must be finite and >= 0"));
    }
  }
  if (!(time_limit_s > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("time_limit_s ", time_limit_s, " must be > 0"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Allocation> AllocateBits(absl::Span<const LayerFactors> layers,
                                        const AllocationOptions& options) {
  MOEC_ASSIGN_OR_RETURN(Plan plan, BuildPlan(layers, options));
  // CBC 2.10 does not document CbcModel as reentrant; solves take milliseconds, so calls are
  // serialized rather than audited.
  static absl::Mutex* const cbc_mu = new absl::Mutex;
  absl::MutexLock lock(cbc_mu);
  const absl::Time deadline = absl::Now() + absl::Seconds(options.time_limit_s);
  std::vector<Choice> choices;
  for (const Program& p : plan.programs) {
    MOEC_ASSIGN_OR_RETURN(Choice c, SolveWithCbc(p, options.bits, plan, deadline));
    choices.push_back(std::move(c));
  }
  return Assemble(layers, options, plan, choices);
}

absl::StatusOr<Allocation> AllocateBitsExhaustive(absl::Span<const LayerFactors> layers,
                                                  const AllocationOptions& options) {
  MOEC_ASSIGN_OR_RETURN(Plan plan, BuildPlan(layers, options));
  std::vector<Choice> choices;
  for (const Program& p : plan.programs) {
    MOEC_ASSIGN_OR_RETURN(Choice c, SolveExhaustively(p, options.bits, plan));
    choices.push_back(std::move(c));
  }
  return Assemble(layers, options, plan, choices);
}

}  // namespace moec::quant
