// Task ids: "<job_id>/<stage_id>" for a global task, "<job_id>/<stage_id>/L<layer>" for layer
// `layer` of a per-layer one. Job ids and stage ids never hold '/' (recipe validation), so an id
// formats and parses one way. Factor keys are "<task fingerprint>/<output name>" (FactorKey).
#ifndef MOEC_COMMON_TASK_ID_H_
#define MOEC_COMMON_TASK_ID_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moec {

struct TaskId {
  std::string job;
  std::string stage;
  int layer = -1;  // -1: a global task

  std::string ToString() const;
  // Errors: InvalidArgument for anything but the two forms above.
  static absl::StatusOr<TaskId> Parse(absl::string_view id);
  // The job id of a task id (everything before its first '/'), without parsing the rest.
  static absl::string_view JobOf(absl::string_view id);
  bool operator==(const TaskId& o) const {
    return job == o.job && stage == o.stage && layer == o.layer;
  }
};

// The two halves of a factor key "<task fingerprint>/<output name>".
struct FactorKey {
  std::string fingerprint;
  std::string name;
  std::string ToString() const { return fingerprint + "/" + name; }
  // Errors: InvalidArgument when `key` has no '/' or an empty half.
  static absl::StatusOr<FactorKey> Parse(absl::string_view key);
};

}  // namespace moec

#endif  // MOEC_COMMON_TASK_ID_H_
