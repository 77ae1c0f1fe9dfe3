// Test-only: random and hand-made MC-MoE factors, and checks of an Allocation computed
// independently of the library (bit_allocation_test.cc, bit_allocation_random_test.cc).
#ifndef MOEC_QUANT_BIT_ALLOCATION_TEST_UTIL_H_
#define MOEC_QUANT_BIT_ALLOCATION_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "quant/bit_allocation.h"

namespace moec::quant::allocation_testing {

// Random factors shaped like MC-MoE's: skewed routing counts (some experts unused when
// `zeros`), routing mass correlated with the counts, and losses that fall with the width
// (or, when `monotone` is false, arbitrary positive losses).
std::vector<LayerFactors> RandomFactors(std::mt19937_64& rng, int layers, int min_e, int max_e,
                                        size_t num_bits, bool monotone, bool zeros);

// The cost of an allocation computed independently of the library.
double Objective(const std::vector<LayerFactors>& layers, const AllocationOptions& o,
                 const std::vector<std::vector<int>>& bits);

// Checks every constraint of the program on `a`, independently of the library.
void ExpectValid(const std::vector<LayerFactors>& layers, const AllocationOptions& o,
                 const Allocation& a, const std::string& what);

bool SameObjective(double x, double y);

// One layer, f and a uniform, so the cost is proportional to Q; budget K = 8 for 4 experts.
std::vector<LayerFactors> HandCase();

// Exact reference for the expert-granularity model-wide program by dynamic programming over
// total width: per layer (with the top/middle flags as state), then over layers. Bits {1,2,3}.
double DynamicProgramOptimum(const std::vector<LayerFactors>& layers, const AllocationOptions& o,
                             int64_t budget);

}  // namespace moec::quant::allocation_testing

#endif  // MOEC_QUANT_BIT_ALLOCATION_TEST_UTIL_H_
