// Internal to moec_bit_allocation: the integer programs of an allocation and the steps shared by
// bit_allocation.cc (the plan, assembling the result), bit_allocation_validate.cc (input
// checks), bit_allocation_cbc.cc (the CBC solve) and bit_allocation_exhaustive.cc (the oracle).
#ifndef MOEC_QUANT_BIT_ALLOCATION_INTERNAL_H_
#define MOEC_QUANT_BIT_ALLOCATION_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "quant/bit_allocation.h"

namespace moec::quant::internal {

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

bool FiniteNonNegative(double v);

// "{1,2,3}".
std::string BitsText(const std::vector<int>& bits);

// InvalidArgument for malformed factors (sizes, negative or non-finite values, zero sums).
absl::Status ValidateFactors(absl::Span<const LayerFactors> layers, size_t num_bits);

// Validates options and factors, computes the costs and splits the allocation into programs,
// each checked feasible.
absl::StatusOr<Plan> BuildPlan(absl::Span<const LayerFactors> layers, const AllocationOptions& o);

// True when `option` satisfies the budget and group constraints of `p`.
bool Satisfies(const Program& p, const std::vector<int>& option, const std::vector<int>& bits,
               const Plan& plan);

// Solves p with CBC within `deadline`.
absl::StatusOr<Choice> SolveWithCbc(const Program& p, const std::vector<int>& bits,
                                    const Plan& plan, absl::Time deadline);

// Solves p by enumerating every assignment (lexicographically first of equal cost).
absl::StatusOr<Choice> SolveExhaustively(const Program& p, const std::vector<int>& bits,
                                         const Plan& plan);

// Turns per-program choices into the per-layer widths, checking every constraint again.
absl::StatusOr<Allocation> Assemble(absl::Span<const LayerFactors> layers,
                                    const AllocationOptions& o, const Plan& plan,
                                    const std::vector<Choice>& choices);

}  // namespace moec::quant::internal

#endif  // MOEC_QUANT_BIT_ALLOCATION_INTERNAL_H_
