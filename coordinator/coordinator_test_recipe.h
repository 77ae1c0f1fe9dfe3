// The recipe the coordinator's unit tests submit (coordinator_test, coordinator_durability_test):
// a chained per-layer stage and one global stage after it — on a 2-layer model, three tasks:
// stats/L0 -> stats/L1 -> bits. Kinds that need no data (noop, an hf export): nothing runs them.
#ifndef MOEC_COORDINATOR_COORDINATOR_TEST_RECIPE_H_
#define MOEC_COORDINATOR_COORDINATOR_TEST_RECIPE_H_

namespace moec::coordinator {

inline constexpr char kTinyRecipe[] = R"(name: tiny
model: m
output: out
workers: 1
stages:
  - {id: stats, kind: noop}
  - {id: bits, kind: export, needs: [stats], with: {format: hf, max_shard_mib: 2}}
)";

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_COORDINATOR_TEST_RECIPE_H_
