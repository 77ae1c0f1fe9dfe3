// Planner: a validated recipe and the model's shape become the job's task DAG. Global stages give
// one task; per-layer stages give one task per layer, each after the same stage's previous layer
// (a chain) and after the same layer of any per-layer stage it needs (pipelining). Every task
// gets a content fingerprint, so identical work is recognised across resumes and jobs.
#ifndef MOEC_COORDINATOR_PLANNER_H_
#define MOEC_COORDINATOR_PLANNER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/recipe/recipe.h"
#include "moec/v1/job.pb.h"

namespace moec::coordinator {

// Version of the stage code, part of every task fingerprint: bump it when a stage's results
// change, so stale outputs are not reused.
inline constexpr absl::string_view kCodeVersion = "moec-0.1.0";

struct ModelShape {
  int num_layers = 0;
};

// Reads num_hidden_layers from <model_dir>/config.json (at most 4 MiB).
// Errors: NotFound; InvalidArgument for malformed JSON or a missing/non-positive layer count.
absl::StatusOr<ModelShape> ReadModelShape(const std::string& model_dir);

// Digest of everything a job reads besides the recipe: the model directory's config.json,
// index and safetensors files (name, size, mtime, SHA-256 of the first MiB) and the full
// SHA-256 of the calibration and evaluation files.
absl::StatusOr<std::string> FingerprintJobInputs(const recipe::Recipe& recipe);

// SHA-256 of the canonical recipe and the input digest.
std::string JobFingerprint(const recipe::Recipe& recipe, absl::string_view inputs_fingerprint);

// Expands the recipe into tasks in a topological order (`order` = index), with their inputs
// (AssignInputs). Every task starts BLOCKED, or READY when it has no dependencies. Errors:
// InvalidArgument when the model has no layers and a per-layer stage exists.
absl::StatusOr<std::vector<v1::TaskRecord>> PlanJob(const recipe::Recipe& recipe,
                                                    const ModelShape& shape,
                                                    absl::string_view job_id,
                                                    absl::string_view inputs_fingerprint);

// Sets every task's `inputs` from its dependencies: the tasks of each stage a dependency belongs
// to — all of them for a global task (after a per-layer stage it depends on the last layer only,
// but reads all of them); for a per-layer task at layer l, the global ones and layers l-1 and l
// of per-layer ones (a layer reads its own layer's results and the hidden states entering it),
// so a lease carries O(stages) inputs, not O(tasks). Also used for jobs stored without inputs.
void AssignInputs(std::vector<v1::TaskRecord>* tasks);

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_PLANNER_H_
