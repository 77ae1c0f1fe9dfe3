// The CBC solve of one program of a bit allocation (docs/bit_allocation.md).
#include <algorithm>
#include <limits>
#include <vector>

#include "CbcModel.hpp"
#include "CglClique.hpp"
#include "CglGomory.hpp"
#include "CglKnapsackCover.hpp"
#include "CglMixedIntegerRounding2.hpp"
#include "CglProbing.hpp"
#include "CoinPackedMatrix.hpp"
#include "OsiClpSolverInterface.hpp"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "quant/bit_allocation_internal.h"

namespace moec::quant::internal {
namespace {

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

// Loads the program (columns in [0, col_hi], costs obj, all integer) into solver.
void LoadProblem(const CoinPackedMatrix& matrix, const std::vector<double>& row_lo,
                 const std::vector<double>& row_hi, const std::vector<double>& obj,
                 const std::vector<double>& col_hi, OsiClpSolverInterface* solver) {
  const int n_cols = static_cast<int>(obj.size());
  solver->messageHandler()->setLogLevel(0);
  solver->loadProblem(matrix, std::vector<double>(n_cols, 0.0).data(), col_hi.data(), obj.data(),
                      row_lo.data(), row_hi.data());
  for (int c = 0; c < n_cols; ++c) solver->setInteger(c);
  // Tighter than Clp's 1e-7 defaults: reduced costs below the tolerance are treated as 0.
  solver->setDblParam(OsiDualTolerance, 1e-10);
  solver->setDblParam(OsiPrimalTolerance, 1e-10);
}

// Silent, single-threaded, seeded, within `seconds`, and only a proven optimum ends the search.
void ConfigureModel(double seconds, CbcModel* model) {
  model->setLogLevel(0);
  model->messageHandler()->setLogLevel(0);
  model->solver()->messageHandler()->setLogLevel(0);
  model->setNumberThreads(0);
  model->setRandomSeed(1);
  model->setMaximumSeconds(seconds);
  model->setAllowableGap(0);
  model->setAllowableFractionGap(0);
  model->setAllowablePercentageGap(0);
  model->setCutoffIncrement(1e-9);
}

// The cut generators of one CBC run, with their settings.
struct CutGenerators {
  CutGenerators() {
    probing.setUsingObjective(true);
    clique.setStarCliqueReport(false);
    clique.setRowCliqueReport(false);
  }
  void AddTo(CbcModel* model) {
    model->addCutGenerator(&probing, -1, "Probing");
    model->addCutGenerator(&gomory, -1, "Gomory");
    model->addCutGenerator(&knapsack, -1, "Knapsack");
    model->addCutGenerator(&clique, -1, "Clique");
    model->addCutGenerator(&mir, -1, "MixedIntegerRounding2");
  }

  CglProbing probing;
  CglGomory gomory;
  CglKnapsackCover knapsack;
  CglClique clique;
  CglMixedIntegerRounding2 mir;
};

// Gives the model `start` (candidate per unit, m candidates) as its incumbent.
void SetIncumbent(const std::vector<int>& start, const std::vector<double>& obj, int m,
                  CbcModel* model) {
  const int n_cols = static_cast<int>(obj.size());
  std::vector<double> x(n_cols, 0.0);
  double value = 0;
  for (size_t u = 0; u < start.size(); ++u) {
    x[u * m + start[u]] = 1.0;
    value += obj[u * m + start[u]];
  }
  model->setBestSolution(x.data(), n_cols, value, /*check=*/false);
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
  LoadProblem(matrix, row_lo, row_hi, obj, col_hi, &solver);

  CbcModel model(solver);
  ConfigureModel(seconds, &model);
  CutGenerators cuts;
  cuts.AddTo(&model);
  if (start != nullptr) SetIncumbent(*start, obj, m, &model);
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

}  // namespace

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

}  // namespace moec::quant::internal
