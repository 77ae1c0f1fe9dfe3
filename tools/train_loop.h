// The training loop of the tiny-model trainer (trainer.h), internal to it: the trainable
// parameters and their initialization, AdamW steps on random windows of a corpus through the
// forward's building blocks under autograd, and the checkpoint of the result.
#ifndef MOEC_TOOLS_TRAIN_LOOP_H_
#define MOEC_TOOLS_TRAIN_LOOP_H_

#include <ATen/ATen.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/config/config.h"
#include "model/runtime/weights.h"
#include "tools/trainer.h"

namespace moec::tools::internal {

// A model's trainable parameters (requiring gradients).
struct Model {
  model::ModelConfig config;
  std::vector<model::NamedTensor> params;  // ModelTensors order
  std::map<std::string, at::Tensor> by_name;
};

// Every tensor of `config` drawn from the torch generator seeded with `seed`: norms ones, other
// vectors zeros, matrices N(0, 0.02^2).
Model InitModel(const model::ModelConfig& config, uint64_t seed);

// Trains `m` for o.steps steps on random windows of `corpus` (token ids, int64); returns the
// cross-entropies of the last (at most) 10 steps. `progress` (if set) follows every step, with
// the seconds since `start`.
std::vector<double> TrainSteps(const TrainOptions& o, const at::Tensor& corpus, Model* m,
                               const TrainProgressFn& progress,
                               std::chrono::steady_clock::time_point start);

// Writes the trained parameters (without a tied lm_head) as the checkpoint in `dir`.
absl::Status WriteTrainedCheckpoint(const Model& m, const std::string& dir);

double SecondsSince(std::chrono::steady_clock::time_point start);

}  // namespace moec::tools::internal

#endif  // MOEC_TOOLS_TRAIN_LOOP_H_
