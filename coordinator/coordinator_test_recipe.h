// The recipe the coordinator's unit tests submit (coordinator_test, coordinator_durability_test):
// a chained per-layer calibrate stage and one global stage after it — on a 2-layer model, three
// tasks: stats/L0 -> stats/L1 -> bits.
#ifndef MOEC_COORDINATOR_COORDINATOR_TEST_RECIPE_H_
#define MOEC_COORDINATOR_COORDINATOR_TEST_RECIPE_H_

namespace moec::coordinator {

inline constexpr char kTinyRecipe[] = R"(name: tiny
model: m
output: out
workers: 1
stages:
  - {id: stats, kind: calibrate}
  - {id: bits, kind: allocate_bits, needs: [stats], with: {average_bits: 2.0}}
)";

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_COORDINATOR_TEST_RECIPE_H_
