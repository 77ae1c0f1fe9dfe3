// Mixed-precision bit allocation of MC-MoE (ALGORITHMS.md 3.2, decision 5), torch-free: each
// expert (or each MoE layer) gets one width from a candidate list, minimizing
// sum f^alpha * a^beta * Q^gamma under a bit budget, solved exactly as an integer program with
// CBC. Besides MC-MoE's per-layer programs: one model-wide program, and one width per layer
// (engines that fuse a layer's experts). docs/bit_allocation.md describes the program.
#ifndef MOEC_QUANT_BIT_ALLOCATION_H_
#define MOEC_QUANT_BIT_ALLOCATION_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace moec::quant {

// The MC-MoE factors of one MoE layer (ALGORITHMS.md 3.1). All vectors have one entry per
// routed expert of the layer; layers may have different expert counts.
struct LayerFactors {
  // Model layer index; only used in messages.
  int layer = 0;
  // F: activated frequency, (token, slot) pairs routed to the expert. >= 0, sum > 0.
  std::vector<int64_t> frequency;
  // A: activated weight, summed full-softmax routing probability. >= 0, finite, sum > 0.
  std::vector<double> weight;
  // Q: quantization loss, loss[expert][i] for width AllocationOptions::bits[i]. >= 0, finite.
  std::vector<std::vector<double>> loss;
};

struct AllocationOptions {
  enum class Scope {
    kLayer,  // one program per layer, each with its own budget (MC-MoE)
    kModel,  // one program over all layers with one global budget
  };
  enum class Granularity {
    kExpert,  // one width per expert (MC-MoE)
    kLayer,   // all experts of a layer share one width (fused-MoE serving engines)
  };

  // Candidate widths, distinct, 1 .. 32; the loss vectors are indexed in this order.
  std::vector<int> bits = {1, 2, 3};
  // The budget: exactly one of the two.
  // Mean expert width over the experts of the program (a layer, or the model). The program's
  // total is T = floor(average_bits * experts + 1e-9 * max(1, average_bits * experts)) bits and
  // the solution uses at most T. Must lie in [min(bits), max(bits)].
  std::optional<double> average_bits;
  // MC-MoE's K: total width of the experts of each layer (sum_e bits_e <= K). In scope kModel
  // the global total is K times the number of layers. Must lie in
  // [E_l * min(bits), E_l * max(bits)] for every layer l.
  std::optional<int64_t> layer_budget;
  // Exponents of the cost f^alpha * a^beta * Q^gamma (finite, >= 0; 0^0 = 1). The defaults are
  // MC-MoE's numbers (the reference reuses alpha as the loss exponent, decision 5).
  double alpha = 1.0;
  double beta = 1.5;
  double gamma = 1.0;
  Scope scope = Scope::kLayer;
  Granularity granularity = Granularity::kExpert;
  // MC-MoE requires, per layer, at least one expert at the largest width and one at the
  // second-largest ("top and middle": 3 and 2 of {1,2,3}); with two candidate widths only the
  // largest is required, with one nothing. Unset means the reference behaviour: on for
  // granularity kExpert (per layer, in both scopes), off for kLayer. Set to true with kLayer,
  // it applies over the layers of the program (some layer at the top width, another at the
  // middle one), which cannot hold in scope kLayer.
  std::optional<bool> require_top_and_middle;
  // Time limit for all CBC solves of one call, seconds (> 0); each solve gets what is left of
  // it (CBC counts CPU seconds of its thread). When it runs out, the best allocation found is
  // returned with proven_optimal = false.
  double time_limit_s = 60.0;

  // InvalidArgument naming the offending field.
  absl::Status Validate() const;
};

struct Allocation {
  // bits[i][e]: width of expert e of layers[i] (input order).
  std::vector<std::vector<int>> bits;
  // sum over experts of f^alpha * a^beta * Q^gamma at the chosen widths, f and a normalized
  // per layer (MC-MoE's factor 1000 left out); summed layer by layer, expert by expert.
  double objective = 0;
  // Total width of all experts, and its mean over all experts.
  int64_t total_bits = 0;
  double average_bits = 0;
  // Budget T of each program: one per layer in scope kLayer, one in scope kModel.
  std::vector<int64_t> budget_bits;
  // True when every program was solved to proven optimality (always, unless the time ran out).
  bool proven_optimal = false;
};

// Solves the allocation with CBC (single-threaded, silent; two passes per program so that
// CBC's absolute tolerances stay ~1e-13 of the optimum, see docs/bit_allocation.md).
// Deterministic unless the time limit cuts a solve short: the same input gives the same
// allocation. Among allocations of equal cost the solver's choice is returned.
// Thread-safe: concurrent calls are serialized (CBC is not documented as reentrant).
// Possible errors:
//   InvalidArgument: malformed options or factors (sizes, negative or non-finite values,
//     a layer whose frequencies or weights sum to 0), a budget outside the candidate range.
//   FailedPrecondition: a budget in range that the constraints cannot meet (e.g. below the
//     minimum that "top and middle" needs); the message gives the budget and feasible range.
//   DeadlineExceeded: the time ran out before any feasible allocation was found.
//   Internal: CBC returned something that violates the program.
absl::StatusOr<Allocation> AllocateBits(absl::Span<const LayerFactors> layers,
                                        const AllocationOptions& options);

// The same program solved by enumerating every assignment of every program (the test oracle).
// Ties go to the lexicographically first assignment (unit order, candidate order of `bits`).
// Same errors as AllocateBits, plus ResourceExhausted when one program has more than 2^22
// assignments.
absl::StatusOr<Allocation> AllocateBitsExhaustive(absl::Span<const LayerFactors> layers,
                                                  const AllocationOptions& options);

}  // namespace moec::quant

#endif  // MOEC_QUANT_BIT_ALLOCATION_H_
