// The plan of a job (`moec plan RECIPE`, and the coordinator's GPU memory bounds): a dry run. From the validated recipe and the model's config.json (no
// weights are read, no coordinator is needed): the stage DAG with the tasks each stage expands
// to (per-layer stages: one task per layer, each a gang of `workers`), and estimates of the peak
// memory of one worker, of the factor-store bytes the job persists, and of the output's size.
// The estimates are a documented model (docs/cli.md "plan"), not a measurement.
#ifndef MOEC_PLAN_JOB_PLAN_H_
#define MOEC_PLAN_JOB_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/recipe/recipe.h"
#include "nlohmann/json.hpp"

namespace moec::plan {

struct PlannedStage {
  std::string id, kind;
  bool per_layer = false;
  int tasks = 0;
  int gang = 1;                      // workers per task
  std::vector<std::string> needs;
  std::string view;                  // the restructure stage it runs after, if any
  int64_t memory_bytes = 0;          // peak per worker while one of its tasks runs
  // Peak GPU memory of a GPU worker running one of its tasks (0: the stage runs on the host);
  // the coordinator leases its tasks only to GPUs at least this large.
  int64_t device_memory_bytes = 0;
  int64_t factor_bytes = 0;          // persisted outputs of all its tasks
  // Of them, the bulk outputs (hidden-state chunks, codes and scales, pruned weights) that
  // workers with an activation store keep themselves (docs/data_plane.md).
  int64_t bulk_bytes = 0;
  std::string memory_note;           // what dominates memory_bytes
};

struct JobPlan {
  std::string name, model, output, model_type;
  int layers = 0;
  int workers = 1;
  int64_t parameters = 0;
  int64_t model_bytes = 0;           // the checkpoint's tensors at its dtype
  int total_tasks = 0;
  std::vector<PlannedStage> stages;
  int64_t peak_memory_bytes = 0;     // max over stages
  int64_t peak_device_memory_bytes = 0;  // max over stages, on a GPU worker
  int64_t factor_bytes = 0;          // sum over stages
  int64_t bulk_bytes = 0;            // sum over stages
  int64_t output_bytes = 0;          // 0 when the recipe exports nothing
  std::string output_format;
};

// Errors: those of reading the model's config.json.
absl::StatusOr<JobPlan> PlanRecipe(const recipe::Recipe& recipe);

// What a GPU worker needs beside a task's tensors: the CUDA context, cuBLAS workspaces and the
// caching allocator's slack.
inline constexpr int64_t kDeviceOverheadBytes = int64_t{1} << 30;

nlohmann::json PlanJson(const JobPlan& plan);
std::string PlanText(const JobPlan& plan);

}  // namespace moec::plan

#endif  // MOEC_PLAN_JOB_PLAN_H_
